//! The core layer's group messages with group history (`history.rs`'s script writes every
//! process's copy): a switchboard process's copy names the group, as without history
//! (`redis_group_route.rs`), served from the receiver's index or from Redis when the index
//! disagrees; every member gets every message once, in offset order. A group smaller than 32
//! members at its last send lists its channels, as before. On the real redis-server
//! at `SWITCHBOARD_REDIS_URL`, with the routes counted through the metrics facade (its own test
//! binary: a process has one recorder).
#![allow(clippy::unwrap_used)]

use switchboard_core::{ChannelName, Layer};
use switchboard_redis::{RedisConfig, RedisLayer};
use test_support::layers::{contains, msg, nothing, recv, stored};
use test_support::metrics::Recorded;
use test_support::redis::{fresh_prefix, url};

const ROUTES: &str = "switchboard_redis_group_routes_total";

/// The `n` of a message and its history offset.
fn numbered(m: &switchboard_core::Message) -> (Option<i64>, Option<u64>) {
    (
        m.get("n").and_then(|v| v.as_i64()),
        m.position().map(|p| p.offset()),
    )
}

/// Every one of `members` (channels of `layer`) receives message `n`, at offset `n`.
async fn all_get(layer: &Layer, members: &[&ChannelName], n: i64) {
    for ch in members {
        assert_eq!(numbered(&recv(layer, ch).await), (Some(n), Some(n as u64)));
    }
}

/// `n` new channels of `layer`, each added to `group`.
async fn join(layer: &Layer, group: &str, n: usize) -> Vec<ChannelName> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = layer.new_channel().await.unwrap();
        layer.group_add(group, &ch).await.unwrap();
        channels.push(ch);
    }
    channels
}

/// Members a group needs (at its last send) for its copies to name it.
const LARGE: usize = 32;

/// With group history the script that numbers a message writes every process's copy: for a
/// switchboard process it names the group too (the sender's read of the members gives the
/// digest), served from the receiver's index, or from Redis when the index disagrees; every
/// member gets every message once, in offset order. Other queues, and every queue of a small
/// group, still list their channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_with_history_name_the_group_too() {
    let mut m = Recorded::install();
    let Some(server) = url() else { return };
    let prefix = fresh_prefix();
    let history = switchboard_core::layer::conformance::history_config();
    let connect = || {
        RedisLayer::connect(
            RedisConfig::new(server.as_str())
                .prefix(prefix.as_str())
                .layer(history.clone()),
        )
    };
    let (a, b) = (
        Layer::new(connect().await.unwrap()),
        Layer::new(connect().await.unwrap()),
    );
    let index = |m: &mut Recorded| m.counter(ROUTES, &[("served", "index")]);
    let redis = |m: &mut Recorded| m.counter(ROUTES, &[("served", "redis")]);
    let hex = "6e5706f2d491421f9398739aef024fb7";
    let absent_queue = format!("{prefix}specific.sb-{hex}!");

    // A small group: its copies list the channels, whatever the process.
    let small = b.new_channel().await.unwrap();
    b.group_add("long_small", &small).await.unwrap();
    let lonely = ChannelName::new(format!("specific.sb-{hex}!lonely-member")).unwrap();
    a.group_add("long_small", &lonely).await.unwrap();
    for n in 1..=2 {
        a.group_send("long_small", msg("small", n)).await.unwrap();
        all_get(&b, &[&small], n).await;
    }
    assert_eq!((index(&mut m), redis(&mut m)), (0, 0));
    let listed = stored(&server, &absent_queue).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|e| contains(e, "lonely-member")));
    a.group_discard("long_small", &lonely).await.unwrap();
    raw_clear(&server, &absent_queue).await;

    // A large group: the first send learns its size (and lists), the next ones name it.
    let members = join(&b, "long_room", LARGE).await;
    let all: Vec<&ChannelName> = members.iter().collect();
    a.group_send("long_room", msg("first", 1)).await.unwrap();
    all_get(&b, &all, 1).await;
    assert_eq!((index(&mut m), redis(&mut m)), (0, 0));
    for n in 2..=21 {
        a.group_send("long_room", msg("steady", n)).await.unwrap();
    }
    for n in 2..=21 {
        all_get(&b, &all, n).await;
    }
    assert_eq!((index(&mut m), redis(&mut m)), (20, 0));

    // A adds one of B's channels, which B's index does not hold: B reads the members.
    let added = b.new_channel().await.unwrap();
    a.group_add("long_room", &added).await.unwrap();
    a.group_send("long_room", msg("added", 22)).await.unwrap();
    let mut with_added = all.clone();
    with_added.push(&added);
    all_get(&b, &with_added, 22).await;
    assert_eq!(redis(&mut m), 1);

    // A takes one of B's members out (B's index still holds it): nothing for it.
    a.group_discard("long_room", &members[1]).await.unwrap();
    a.group_send("long_room", msg("left", 23)).await.unwrap();
    let mut staying = with_added.clone();
    staying.remove(1);
    all_get(&b, &staying, 23).await;
    assert!(nothing(&b, &members[1]).await, "a member that left got it");
    assert_eq!(redis(&mut m), 2);

    // What is stored: the absent switchboard process's copy names the group and carries the
    // position; the channels_redis process's lists its channel.
    let django = format!("specific.{hex}!django-member");
    for ch in [lonely.as_str(), &django] {
        a.group_add("long_room", &ChannelName::new(ch).unwrap())
            .await
            .unwrap();
    }
    a.group_send("long_room", msg("wire", 24)).await.unwrap();
    let named = stored(&server, &absent_queue).await;
    assert_eq!(named.len(), 1);
    assert!(contains(&named[0], "long_room"));
    assert!(contains(&named[0], "digest"));
    assert!(contains(&named[0], "__switchboard_position__"));
    assert!(!contains(&named[0], "lonely-member"));
    let to_django = stored(&server, &format!("{prefix}specific.{hex}!")).await;
    assert_eq!(to_django.len(), 1);
    assert!(contains(&to_django[0], &django), "the channel is listed");
    all_get(&b, &staying, 24).await;

    // The sender's own members go through its own queue, in the same order, and are served
    // from its index once the group is known to be large.
    let own = join(&a, "long_lobby", LARGE).await;
    let own: Vec<&ChannelName> = own.iter().collect();
    let before = index(&mut m);
    for n in 1..=4 {
        a.group_send("long_lobby", msg("own", n)).await.unwrap();
        all_get(&a, &own, n).await;
    }
    assert_eq!(
        index(&mut m),
        before + 3,
        "the first send lists, the next three name the group"
    );
}

/// Empties the queue at `key`.
async fn raw_clear(server: &str, key: &str) {
    let _: () = redis::AsyncCommands::del(&mut test_support::layers::raw(server).await, key)
        .await
        .unwrap();
}
