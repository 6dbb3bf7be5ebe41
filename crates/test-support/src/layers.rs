//! Fresh Redis layers on the Redis under test, and what tests send through them.

use switchboard_core::{Layer, LayerConfig};
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};

use crate::redis::{fresh_prefix, url};

/// Settings for a layer on the Redis under test, on a fresh prefix; `None` (a skip) without
/// one.
pub fn config(layer: LayerConfig) -> Option<RedisConfig> {
    Some(RedisConfig::new(url()?).prefix(fresh_prefix()).layer(layer))
}

pub async fn core(cfg: &RedisConfig) -> RedisLayer {
    RedisLayer::connect(cfg.clone()).await.unwrap() // ok: test harness, a panic fails the calling test
}

pub async fn pubsub(cfg: &RedisConfig) -> RedisPubSubLayer {
    RedisPubSubLayer::connect(cfg.clone()).await.unwrap() // ok: test harness, a panic fails the calling test
}

/// Two core-layer instances ("processes") on one fresh prefix.
pub async fn make_core(rc: RedisConfig) -> (Layer, Layer) {
    (Layer::new(core(&rc).await), Layer::new(core(&rc).await))
}

/// Two pub/sub-layer instances ("processes") on one fresh prefix.
pub async fn make_pubsub(rc: RedisConfig) -> (Layer, Layer) {
    (Layer::new(pubsub(&rc).await), Layer::new(pubsub(&rc).await))
}

/// A plain redis-rs connection to the Redis at `url`, to look at what the layers store.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap() // ok: test harness, a panic fails the calling test
        .get_multiplexed_async_connection()
        .await
        .unwrap() // ok: test harness, a panic fails the calling test
}

/// What the sorted set `key` (a core-layer queue) holds on the Redis at `url`, as stored.
pub async fn stored(url: &str, key: &str) -> Vec<Vec<u8>> {
    redis::AsyncCommands::zrange(&mut raw(url).await, key, 0, -1)
        .await
        .unwrap() // ok: test harness, a panic fails the calling test
}

/// Whether `needle` occurs in the stored bytes `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Clients connected to the Redis at `url`.
pub async fn connected_clients(url: &str) -> usize {
    let mut c = raw(url).await;
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut c)
        .await
        .unwrap(); // ok: test harness, a panic fails the calling test
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap() // ok: test harness, a panic fails the calling test
}

/// Receives within 5 s or fails.
pub async fn recv(layer: &Layer, ch: &switchboard_core::ChannelName) -> switchboard_core::Message {
    tokio::time::timeout(std::time::Duration::from_secs(5), layer.receive(ch))
        .await
        .expect("no message within 5 s") // ok: test harness, a panic fails the calling test
        .unwrap() // ok: test harness, a panic fails the calling test
}

/// Whether nothing is received on `ch` within 100 ms.
pub async fn nothing(layer: &Layer, ch: &switchboard_core::ChannelName) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(100), layer.receive(ch))
        .await
        .is_err()
}

pub use switchboard_core::layer::conformance::{all_value_types, msg};

/// How many members the sorted set `key` holds on the Redis at `url` (a core-layer channel's
/// queue: the messages waiting in Redis).
pub async fn zcard(url: &str, key: &str) -> usize {
    let mut c = raw(url).await;
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap() // ok: test harness, a panic fails the calling test
}

/// `n` cluster-layer instances ("processes") on the binary's shared Redis Cluster and one fresh
/// prefix; `None` (a skip) without the binaries to make a cluster.
pub async fn cluster(n: usize) -> Option<Vec<Layer>> {
    let cfg = RedisConfig::hosts(crate::cluster::shared()?.urls()).prefix(fresh_prefix());
    let mut layers = Vec::with_capacity(n);
    for _ in 0..n {
        let layer = switchboard_redis::RedisClusterLayer::connect(cfg.clone()).await;
        layers.push(Layer::new(layer.unwrap())); // ok: test harness, a panic fails the calling test
    }
    Some(layers)
}
