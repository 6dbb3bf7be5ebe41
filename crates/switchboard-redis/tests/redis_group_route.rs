//! A core layer group message between switchboard processes names the group, not its channels
//! (`layer/fanout.rs`): the receiver serves it from its own index of the group when it holds
//! the member set the sender saw, and from the group's members in Redis when it does not (a
//! member another process added, one that left) — nobody missed, nobody extra; so does the
//! sender for its own members. A copy for a
//! channels_redis process still lists its channels. On the real redis-server at
//! `SWITCHBOARD_REDIS_URL`, with the routes counted through the metrics facade.
#![allow(clippy::unwrap_used)]

use switchboard_core::{ChannelName, Layer};
use switchboard_redis::{RedisConfig, RedisLayer};
use test_support::layers::{contains, msg, nothing, recv, stored};
use test_support::metrics::Recorded;
use test_support::redis::{fresh_prefix, url};

const ROUTES: &str = "switchboard_redis_group_routes_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_between_switchboard_processes_name_the_group() {
    let mut m = Recorded::install();
    let Some(server) = url() else { return };
    let prefix = fresh_prefix();
    let connect = || RedisLayer::connect(RedisConfig::new(server.as_str()).prefix(prefix.as_str()));
    let (a, b) = (
        Layer::new(connect().await.unwrap()),
        Layer::new(connect().await.unwrap()),
    );
    let mut members = Vec::new();
    for _ in 0..3 {
        let ch = b.new_channel().await.unwrap();
        b.group_add("room", &ch).await.unwrap();
        members.push(ch);
    }

    // B holds the member set A sees: served from B's index, every message to every member.
    for i in 0..20 {
        a.group_send("room", msg("steady", i)).await.unwrap();
    }
    for ch in &members {
        for i in 0..20 {
            assert_eq!(recv(&b, ch).await, msg("steady", i));
        }
    }
    assert_eq!(m.counter(ROUTES, &[("served", "index")]), 20);
    assert_eq!(m.counter(ROUTES, &[("served", "redis")]), 0);

    // A adds one of B's channels: B's index does not hold it, so B reads the members.
    let added = b.new_channel().await.unwrap();
    a.group_add("room", &added).await.unwrap();
    a.group_send("room", msg("four", 0)).await.unwrap();
    for ch in members.iter().chain([&added]) {
        assert_eq!(recv(&b, ch).await, msg("four", 0));
    }
    assert_eq!(m.counter(ROUTES, &[("served", "redis")]), 1);

    // A takes one of B's own members out (B's index still holds it): nothing for it.
    a.group_discard("room", &members[1]).await.unwrap();
    a.group_send("room", msg("three", 0)).await.unwrap();
    for ch in [&members[0], &members[2], &added] {
        assert_eq!(recv(&b, ch).await, msg("three", 0));
    }
    assert!(nothing(&b, &members[1]).await, "a member that left got it");
    assert_eq!(m.counter(ROUTES, &[("served", "redis")]), 2);

    // The queue of a switchboard process that is not running (nothing pops it): what is
    // stored names the group, not the channel. A channels_redis process's lists its channel.
    let hex = "6e5706f2d491421f9398739aef024fb7";
    let absent = format!("specific.sb-{hex}!lonely-member");
    let django = format!("specific.{hex}!django-member");
    for ch in [&absent, &django] {
        a.group_add("room", &ChannelName::new(ch.as_str()).unwrap())
            .await
            .unwrap();
    }
    a.group_send("room", msg("wire", 0)).await.unwrap();
    let to_switchboard = stored(&server, &format!("{prefix}specific.sb-{hex}!")).await;
    assert_eq!(to_switchboard.len(), 1);
    assert!(contains(&to_switchboard[0], "room"));
    assert!(!contains(&to_switchboard[0], "lonely-member"));
    assert!(
        to_switchboard[0].len() < 200,
        "{} bytes",
        to_switchboard[0].len()
    );
    let to_django = stored(&server, &format!("{prefix}specific.{hex}!")).await;
    assert_eq!(to_django.len(), 1);
    assert!(contains(&to_django[0], &django), "the channel is listed");
    for ch in [&members[0], &members[2], &added] {
        assert_eq!(recv(&b, ch).await, msg("wire", 0));
    }

    // The sender's own members: served from its index while that holds them all, one by one
    // when another process added one of its channels (which its index does not hold).
    let own = a.new_channel().await.unwrap();
    a.group_add("lobby", &own).await.unwrap();
    a.group_send("lobby", msg("own", 0)).await.unwrap();
    assert_eq!(recv(&a, &own).await, msg("own", 0));
    let added_by_b = a.new_channel().await.unwrap();
    b.group_add("lobby", &added_by_b).await.unwrap();
    for i in 1..3 {
        a.group_send("lobby", msg("own", i)).await.unwrap();
        for ch in [&own, &added_by_b] {
            assert_eq!(recv(&a, ch).await, msg("own", i));
        }
    }
    a.group_discard("lobby", &own).await.unwrap();
    a.group_send("lobby", msg("own", 3)).await.unwrap();
    assert_eq!(recv(&a, &added_by_b).await, msg("own", 3));
    assert!(nothing(&a, &own).await, "a member that left got it");
}
