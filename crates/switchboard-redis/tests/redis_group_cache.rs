//! The core layer's group members cache (client tracking; `members.rs`): hits counted through
//! the metrics facade, and no change of membership missed by it — made by another layer
//! instance, or written into Redis directly as a Django process would — on the real
//! redis-server at `SWITCHBOARD_REDIS_URL`.
#![allow(clippy::unwrap_used)]

use switchboard_core::Layer;
use switchboard_redis::{RedisConfig, RedisLayer};
use test_support::layers::{msg, nothing, recv};
use test_support::metrics::Recorded;
use test_support::redis::{fresh_prefix, url};

const GROUP_CACHE: &str = "switchboard_redis_group_cache_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_are_cached_and_no_change_is_missed() {
    let mut m = Recorded::install();
    let Some(server) = url() else { return };
    let prefix = fresh_prefix();
    let connect = || RedisLayer::connect(RedisConfig::new(server.as_str()).prefix(prefix.as_str()));
    let (a, b) = (
        Layer::new(connect().await.unwrap()),
        Layer::new(connect().await.unwrap()),
    );
    let stays = a.new_channel().await.unwrap();
    a.group_add("room", &stays).await.unwrap();
    for i in 0..50 {
        b.group_send("room", msg("steady", i)).await.unwrap();
        assert_eq!(recv(&a, &stays).await, msg("steady", i));
    }
    let hits = m.counter(GROUP_CACHE, &[("result", "hit")]);
    assert!(hits >= 49, "{hits} of 50 sends from the cache");

    // Members that come and go on the other instance: each send sees the change made just
    // before it.
    for i in 0..30 {
        let comer = a.new_channel().await.unwrap();
        a.group_add("room", &comer).await.unwrap();
        b.group_send("room", msg("joined", i)).await.unwrap();
        assert_eq!(recv(&a, &comer).await, msg("joined", i), "round {i}");
        a.group_discard("room", &comer).await.unwrap();
        b.group_send("room", msg("left", i)).await.unwrap();
        assert!(
            nothing(&a, &comer).await,
            "round {i}: a member that left got a message"
        );
        assert_eq!(recv(&a, &stays).await, msg("joined", i));
        assert_eq!(recv(&a, &stays).await, msg("left", i));
    }

    // Written into Redis by someone else (a Django process's group_add is this ZADD).
    let mut raw = redis::Client::open(server.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let outsider = a.new_channel().await.unwrap();
    let key = format!("{prefix}:group:room");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let _: () = redis::cmd("ZADD")
        .arg(&key)
        .arg(now)
        .arg(outsider.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    b.group_send("room", msg("raw", 1)).await.unwrap();
    assert_eq!(recv(&a, &outsider).await, msg("raw", 1));
    assert_eq!(recv(&a, &stays).await, msg("raw", 1));
    let _: () = redis::cmd("ZREM")
        .arg(&key)
        .arg(outsider.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    b.group_send("room", msg("raw", 2)).await.unwrap();
    assert!(nothing(&a, &outsider).await);
    assert_eq!(recv(&a, &stays).await, msg("raw", 2));
    // A flush empties every group: nobody gets the next send.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    b.group_send("room", msg("flushed", 1)).await.unwrap();
    assert!(nothing(&a, &stays).await);
    assert!(
        m.counter(GROUP_CACHE, &[("result", "miss")]) >= 60,
        "every change read again"
    );
}
