//! Shared test support: the Redis under test and fresh layers on it.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use switchboard_core::{Layer, LayerConfig};
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};

/// The Redis the tests run against (`scripts/test` starts one and sets the variable).
pub fn redis_url() -> String {
    std::env::var("SWITCHBOARD_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "SWITCHBOARD_REDIS_URL is not set: these tests need a real redis-server. \
             Run them with scripts/test, or start one and export \
             SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6379"
        )
    })
}

/// A key prefix no other test uses.
pub fn fresh_prefix() -> String {
    format!("sbtest{}", uuid::Uuid::new_v4().simple())
}

pub fn config(layer: LayerConfig) -> RedisConfig {
    RedisConfig::new(redis_url())
        .prefix(fresh_prefix())
        .layer(layer)
}

pub async fn core(cfg: &RedisConfig) -> RedisLayer {
    RedisLayer::connect(cfg.clone()).await.unwrap()
}

pub async fn pubsub(cfg: &RedisConfig) -> RedisPubSubLayer {
    RedisPubSubLayer::connect(cfg.clone()).await.unwrap()
}

/// Two core-layer instances ("processes") on one fresh prefix.
pub async fn make_core(cfg: LayerConfig) -> (Layer, Layer) {
    let rc = config(cfg);
    (Layer::new(core(&rc).await), Layer::new(core(&rc).await))
}

/// Two pub/sub-layer instances ("processes") on one fresh prefix.
pub async fn make_pubsub(cfg: LayerConfig) -> (Layer, Layer) {
    let rc = config(cfg);
    (Layer::new(pubsub(&rc).await), Layer::new(pubsub(&rc).await))
}

/// A plain redis-rs connection to the Redis under test, to look at what the layers store.
pub async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Clients connected to the Redis under test.
pub async fn connected_clients() -> usize {
    let mut c = raw().await;
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Receives within 5 s or fails.
pub async fn recv(layer: &Layer, ch: &switchboard_core::ChannelName) -> switchboard_core::Message {
    tokio::time::timeout(std::time::Duration::from_secs(5), layer.receive(ch))
        .await
        .expect("no message within 5 s")
        .unwrap()
}

/// A message of type `ty` numbered `n`.
pub fn msg(ty: &str, n: i64) -> switchboard_core::Message {
    switchboard_core::Message::builder(ty)
        .field("n", n)
        .build()
        .unwrap()
}

/// A message with every value type Channels carries.
pub fn all_types() -> switchboard_core::Message {
    use switchboard_core::{Map, Value};
    let mut nested = Map::default();
    nested.insert("k".into(), Value::List(vec![Value::Int(1), "two".into()]));
    let mut m = Map::default();
    m.insert("type".into(), "all.types".into());
    m.insert("text".into(), "héllo ✓".into());
    m.insert("bytes".into(), Value::Bytes(vec![0, 1, 254, 255]));
    m.insert("int".into(), Value::Int(-42));
    m.insert("big".into(), Value::UInt(u64::MAX));
    m.insert("float".into(), Value::Float(1.5));
    m.insert("yes".into(), Value::Bool(true));
    m.insert("none".into(), Value::Null);
    m.insert("map".into(), Value::Map(nested));
    switchboard_core::Message::from_map(m).unwrap()
}
