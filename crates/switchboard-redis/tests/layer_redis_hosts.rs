//! `RedisLayer` sharded over two hosts (two databases of the test server stand for two
//! servers: the core layer's keys never meet across databases): the conformance suite again,
//! and where the keys land.
#![allow(clippy::unwrap_used)]

use redis::AsyncCommands;
use switchboard_core::{Layer, LayerConfig};
use switchboard_redis::{RedisConfig, RedisLayer};
use test_support::redis::fresh_prefix;

/// Two databases of the test server; `None` (a skip) without one.
fn hosts() -> Option<[String; 2]> {
    let url = test_support::redis::url()?;
    let url = url.trim_end_matches('/');
    Some([format!("{url}/1"), format!("{url}/2")])
}

fn config(layer: LayerConfig) -> Option<RedisConfig> {
    Some(
        RedisConfig::hosts(hosts()?)
            .prefix(fresh_prefix())
            .layer(layer),
    )
}

async fn make(cfg: LayerConfig) -> Option<(Layer, Layer)> {
    let rc = config(cfg)?;
    Some((
        Layer::new(RedisLayer::connect(rc.clone()).await.unwrap()),
        Layer::new(RedisLayer::connect(rc).await.unwrap()),
    ))
}

switchboard_core::layer_conformance_tests!(make);

#[tokio::test]
async fn keys_land_on_the_host_their_name_hashes_to() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
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
    let [h1, h2] = cfg.hosts.clone().try_into().unwrap();
    let mut dbs = Vec::new();
    for url in [h1, h2] {
        dbs.push(
            redis::Client::open(url.url().unwrap())
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

/// channels_redis sends a named channel's messages to its hosts in turn, so they sit on every
/// host, and this process reads all of them; but it takes no more messages than it has
/// receives waiting. What nobody here waits for stays in Redis for the other processes.
#[tokio::test]
async fn a_named_channel_takes_no_more_than_its_waiting_receives() {
    use std::time::Duration;
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (
        Layer::new(RedisLayer::connect(cfg.clone()).await.unwrap()),
        Layer::new(RedisLayer::connect(cfg.clone()).await.unwrap()),
    );
    let jobs: switchboard_core::ChannelName = "worker.jobs".parse().unwrap();
    let key = format!("{}worker.jobs", cfg.prefix);
    let mut dbs = Vec::new();
    for url in &cfg.hosts {
        dbs.push(
            redis::Client::open(url.url().unwrap())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        );
    }
    async fn stored(dbs: &mut [redis::aio::MultiplexedConnection], key: &str) -> usize {
        let mut n = 0;
        for db in dbs {
            let c: usize = db.zcard(key).await.unwrap();
            n += c;
        }
        n
    }
    // A stored job to copy: sent to a channel nobody reads (same bytes as for `worker.jobs`).
    a.send("worker.spare", serde_json::json!({"type": "job"}))
        .await
        .unwrap();
    let spare = format!("{}worker.spare", cfg.prefix);
    let mut copies = Vec::new();
    for db in &mut dbs {
        let s: Vec<(Vec<u8>, f64)> = db.zrange_withscores(&spare, 0, -1).await.unwrap();
        copies.extend(s);
    }
    assert_eq!(copies.len(), 1);
    let (mut member, score) = copies.pop().unwrap();
    // A receive that gives up: b's pops on both hosts were already under way.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.receive(&jobs))
            .await
            .is_err()
    );
    // Then jobs on both hosts, as channels_redis's round-robin sends leave them: two on one,
    // one on the other (their 12 random bytes in front differ, as two sends' would).
    for (i, db) in dbs.iter_mut().enumerate() {
        member[0] = i as u8;
        let _: () = db.zadd(&key, &member, score).await.unwrap();
    }
    member[0] = 9;
    let _: () = dbs[0].zadd(&key, &member, score).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored(&mut dbs, &key).await,
        3,
        "no receive waits in b, so b takes nothing"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), b.receive(&jobs))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.message_type(), "job");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored(&mut dbs, &key).await,
        2,
        "one receive in b takes one message"
    );
    for _ in 0..2 {
        let got = tokio::time::timeout(Duration::from_secs(5), a.receive(&jobs))
            .await
            .expect("what b does not wait for stays in Redis for others")
            .unwrap();
        assert_eq!(got.message_type(), "job");
    }
}
