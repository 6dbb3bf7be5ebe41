//! `RedisLayer` sharded over two hosts (two databases of the test server stand for two
//! servers: the core layer's keys never meet across databases): the conformance suite again,
//! and where the keys land.
#![allow(clippy::unwrap_used)]

mod common;

use redis::AsyncCommands;
use switchboard_core::{Layer, LayerConfig};
use switchboard_redis::{RedisConfig, RedisLayer};

fn hosts() -> [String; 2] {
    let url = common::redis_url();
    let url = url.trim_end_matches('/');
    [format!("{url}/1"), format!("{url}/2")]
}

fn config(layer: LayerConfig) -> RedisConfig {
    RedisConfig::hosts(hosts())
        .prefix(common::fresh_prefix())
        .layer(layer)
}

async fn make(cfg: LayerConfig) -> (Layer, Layer) {
    let rc = config(cfg);
    (
        Layer::new(RedisLayer::connect(rc.clone()).await.unwrap()),
        Layer::new(RedisLayer::connect(rc).await.unwrap()),
    )
}

switchboard_core::layer_conformance_tests!(make);

#[tokio::test]
async fn keys_land_on_the_host_their_name_hashes_to() {
    let cfg = config(LayerConfig::default());
    let (a, b) = (
        Layer::new(RedisLayer::connect(cfg.clone()).await.unwrap()),
        RedisLayer::connect(cfg.clone()).await.unwrap(),
    );
    let client = b.client_id().to_owned();
    let b = Layer::new(b);
    let ch = b.new_channel().await.unwrap();
    // Groups named so that both hosts hold some (checked against channels_redis's hash in
    // the unit tests: "room" -> 0, "chat_lobby" -> 1 for two hosts).
    for group in ["room", "chat_lobby"] {
        b.group_add(group, &ch).await.unwrap();
    }
    a.send(&ch, serde_json::json!({"type": "direct"}))
        .await
        .unwrap();
    let [h1, h2] = hosts();
    let mut dbs = Vec::new();
    for url in [h1, h2] {
        dbs.push(
            redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        );
    }
    let has = async |db: usize, key: String| -> bool {
        let mut c = dbs[db].clone();
        c.exists(key).await.unwrap()
    };
    assert!(has(0, format!("{}:group:room", cfg.prefix)).await);
    assert!(!has(1, format!("{}:group:room", cfg.prefix)).await);
    assert!(has(1, format!("{}:group:chat_lobby", cfg.prefix)).await);
    assert!(!has(0, format!("{}:group:chat_lobby", cfg.prefix)).await);
    // The process queue sits where its non-local name hashes, for send and receive alike.
    let queue = format!("{}specific.{client}!", cfg.prefix);
    let (on0, on1) = (has(0, queue.clone()).await, has(1, queue).await);
    assert!(on0 ^ on1, "the process queue is on exactly one host");
    assert_eq!(
        b.receive(&ch).await.unwrap().message_type(),
        "direct",
        "the receive loop reads where sends write"
    );
}
