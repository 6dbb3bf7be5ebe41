//! The pub/sub layer over two redis-servers of the test's own: each group's channel is
//! subscribed and published on the server channels_redis's hash picks, the process's channel
//! pattern on both, and messages cross between processes whichever server carries them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use switchboard_core::Layer;
use switchboard_redis::{RedisConfig, RedisPubSubLayer};
use test_support::redis::OwnRedis;

/// Group → host for two hosts and prefix `asgi`, from channels_redis's `_consistent_hash` of
/// `asgi__group__<group>` in Python.
const GROUPS: [(&str, usize); 6] = [
    ("room", 1),
    ("lobby", 1),
    ("news", 0),
    ("chat_a", 1),
    ("sports", 0),
    ("g1", 0),
];

async fn subscribed_channels(url: &str) -> Vec<String> {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut c)
        .await
        .unwrap();
    channels.sort();
    channels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_shards_groups_as_channels_redis_does() {
    let (Some(a), Some(b)) = (OwnRedis::start().await, OwnRedis::start().await) else {
        return;
    };
    let servers = [a, b];
    let cfg = RedisConfig::hosts([servers[0].url(), servers[1].url()]);
    let a = Layer::new(RedisPubSubLayer::connect(cfg.clone()).await.unwrap());
    let b = Layer::new(RedisPubSubLayer::connect(cfg).await.unwrap());
    let member = b.new_channel().await.unwrap();
    for (group, _) in GROUPS {
        b.group_add(group, &member).await.unwrap();
    }
    for (host, server) in servers.iter().enumerate() {
        let mut expected: Vec<String> = GROUPS
            .iter()
            .filter(|(_, h)| *h == host)
            .map(|(g, _)| format!("asgi__group__{g}"))
            .collect();
        expected.sort();
        assert_eq!(subscribed_channels(&server.url()).await, expected);
    }
    for (i, (group, _)) in GROUPS.iter().enumerate() {
        a.group_send(*group, json!({"type": "news", "n": i}))
            .await
            .unwrap();
    }
    for i in 0..GROUPS.len() {
        let m = tokio::time::timeout(Duration::from_secs(5), b.receive(&member))
            .await
            .unwrap()
            .unwrap();
        // One publisher, one connection per host: order holds per host, not across hosts.
        assert_eq!(m.message_type(), "news", "{i}");
    }
    // A process's own channels: one pattern per host covers them, wherever a sender hashes.
    for i in 0..20 {
        let ch = b.new_channel().await.unwrap();
        a.send(&ch, json!({"type": "direct", "n": i}))
            .await
            .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), b.receive(&ch))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.get("n").and_then(|v| v.as_i64()), Some(i));
    }
}
