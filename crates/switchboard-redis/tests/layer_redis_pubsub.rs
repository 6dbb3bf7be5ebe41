//! `RedisPubSubLayer` against a real redis-server: the layer conformance suite (two instances
//! on one fresh key prefix stand for two processes), then what is particular to pub/sub.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use switchboard_core::{Layer, LayerConfig, LayerError};
use test_support::layers::{all_value_types, config, make_pubsub, msg, pubsub, raw, recv};

async fn make(cfg: LayerConfig) -> Option<(Layer, Layer)> {
    Some(make_pubsub(config(cfg)?).await)
}

switchboard_core::layer_conformance_tests!(make);

mod presence {
    switchboard_core::presence_conformance_tests!(super::make);
}

mod history {
    switchboard_core::history_conformance_tests!(super::make);
}

/// A group with history: the message published carries its position as one more msgpack key
/// (what a Django subscriber sees), the same bytes are kept in the group's Stream under ID
/// `0-<offset>`, and the hash holds the epoch and the last offset.
#[tokio::test]
async fn history_is_a_stream_beside_the_channels_redis_names() {
    let Some(cfg) = config(switchboard_core::layer::conformance::history_config()) else {
        return;
    };
    let layer = Layer::new(pubsub(&cfg).await);
    let client = redis::Client::open(cfg.hosts[0].url().unwrap()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    let group_channel = format!("{}__group__hist_wire", cfg.prefix);
    sub.subscribe(&group_channel).await.unwrap();
    for n in 1..=3 {
        layer
            .group_send("hist_wire", msg("numbered", n))
            .await
            .unwrap();
    }
    let mut stream = sub.on_message();
    let mut published = Vec::new();
    for _ in 1..=3 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        published.push(m.get_payload_bytes().to_vec());
    }
    drop(stream);
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let meta: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{}:history:hist_wire", cfg.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(meta.get("top").map(String::as_str), Some("3"), "{meta:?}");
    let epoch = meta.get("epoch").unwrap().clone();
    for (i, bytes) in published.iter().enumerate() {
        let v: serde_json::Value = rmp_serde::from_slice(bytes).unwrap();
        assert_eq!(v["type"], "numbered");
        assert_eq!(v["n"], i as i64 + 1);
        assert_eq!(
            v["__switchboard_position__"],
            format!("{epoch}:{}", i + 1),
            "the position travels in the message: {v}"
        );
    }
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(format!("{}:history:hist_wire:log", cfg.prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["0-1", "0-2", "0-3"]);
    for ((_, fields), bytes) in entries.iter().zip(&published) {
        let kept = fields.iter().find(|(k, _)| k == "p").map(|(_, v)| v);
        assert_eq!(kept, Some(bytes), "the Stream keeps the bytes published");
    }
    // Both keys live for the history's ttl (60 s) after the last send.
    for key in ["", ":log"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{}:history:hist_wire{key}", cfg.prefix))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!((50_000..=60_000).contains(&ttl), "{key}: {ttl}");
    }
}

/// A message sent by a Django process (no position) to a group with history reaches the
/// members live, without a position, and is not in the history.
#[tokio::test]
async fn a_message_published_without_the_script_has_no_position() {
    let Some(cfg) = config(switchboard_core::layer::conformance::history_config()) else {
        return;
    };
    let layer = Layer::new(pubsub(&cfg).await);
    let mut s = layer.subscribe().await.unwrap();
    let resumed = s.group_add_since("hist_django", None).await.unwrap();
    let client = redis::Client::open(cfg.hosts[0].url().unwrap()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    // channels_redis's bytes: a bare msgpack map.
    let bytes =
        rmp_serde::to_vec_named(&serde_json::json!({"type": "from.django", "n": 1})).unwrap();
    let _: () = redis::cmd("PUBLISH")
        .arg(format!("{}__group__hist_django", cfg.prefix))
        .arg(bytes)
        .query_async(&mut c)
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.message_type(), "from.django");
    assert!(m.position().is_none(), "{m:?}");
    let mut again = layer.subscribe().await.unwrap();
    let r = again
        .group_add_since("hist_django", Some(&resumed.position))
        .await
        .unwrap();
    assert!(r.recovered && r.replayed == 0, "{r:?}");
}

/// Group history cannot number encrypted messages (Redis would have to write inside the
/// Fernet token): a configuration asking for both is refused, saying why.
#[tokio::test]
async fn history_with_encryption_is_refused() {
    let Some(cfg) = config(switchboard_core::layer::conformance::history_config()) else {
        return;
    };
    let cfg = cfg.symmetric_encryption_keys([b"key".to_vec()]);
    match switchboard_redis::RedisPubSubLayer::connect(cfg).await {
        Err(LayerError::Config(e)) => assert!(e.contains("encrypt"), "{e}"),
        other => panic!("history with encryption: {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn publishes_bare_msgpack_on_channels_redis_names() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let layer = Layer::new(pubsub(&cfg).await);
    let client = redis::Client::open(cfg.hosts[0].url().unwrap()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    let group_channel = format!("{}__group__room", cfg.prefix);
    sub.subscribe(&group_channel).await.unwrap();
    sub.subscribe("asgispecific.abc").await.unwrap();
    layer.group_send("room", msg("grouped", 1)).await.unwrap();
    layer
        .send("asgispecific.abc", msg("direct", 2))
        .await
        .unwrap();
    let mut stream = sub.on_message();
    for (channel, ty, n) in [
        (group_channel.as_str(), "grouped", 1),
        ("asgispecific.abc", "direct", 2),
    ] {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.get_channel_name(), channel);
        let mut de = rmp_serde::Deserializer::new(m.get_payload_bytes());
        let v: switchboard_core::Value = serde::Deserialize::deserialize(&mut de).unwrap();
        assert_eq!(v.to_json(), serde_json::json!({"type": ty, "n": n}));
    }
}

#[tokio::test]
async fn every_value_type_crosses_redis_between_processes() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (
        Layer::new(pubsub(&cfg).await),
        Layer::new(pubsub(&cfg).await),
    );
    let ch = b.new_channel().await.unwrap();
    b.group_add("typed", &ch).await.unwrap();
    a.send(&ch, all_value_types()).await.unwrap();
    a.group_send("typed", all_value_types()).await.unwrap();
    assert_eq!(recv(&b, &ch).await, all_value_types());
    assert_eq!(recv(&b, &ch).await, all_value_types());
}

#[tokio::test]
async fn group_channels_sees_members_of_every_process() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (
        Layer::new(pubsub(&cfg).await),
        Layer::new(pubsub(&cfg).await),
    );
    let (x, y) = (
        a.new_channel().await.unwrap(),
        b.new_channel().await.unwrap(),
    );
    a.group_add("room", &x).await.unwrap();
    b.group_add("room", &y).await.unwrap();
    let mut members = a.group_channels("room").await.unwrap();
    members.sort();
    let mut expected = vec![x, y.clone()];
    expected.sort();
    assert_eq!(members, expected);
    b.discard_channel(&y).await.unwrap();
    assert_eq!(a.group_channels("room").await.unwrap().len(), 1);
    let mut r = raw(cfg.hosts[0].url().unwrap()).await;
    let subscribers: Vec<(String, usize)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{}__group__room", cfg.prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        subscribers[0].1, 1,
        "b unsubscribed when its last member left"
    );
}

#[tokio::test]
async fn group_add_of_another_process_channel_is_refused() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (
        Layer::new(pubsub(&cfg).await),
        Layer::new(pubsub(&cfg).await),
    );
    let theirs = b.new_channel().await.unwrap();
    match a.group_add("room", &theirs).await {
        Err(LayerError::Unsupported(e)) => assert!(e.contains("owns the channel"), "{e}"),
        other => panic!("expected a clear refusal, got {other:?}"),
    }
    match a.receive(&theirs).await {
        Err(LayerError::Unsupported(e)) => assert!(e.contains("another process"), "{e}"),
        other => panic!("expected a clear refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn named_channels_are_subscribed_on_receive() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (
        Layer::new(pubsub(&cfg).await),
        Layer::new(pubsub(&cfg).await),
    );
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.receive("broadcast.news").await })
    };
    // Subscriptions are asynchronous: publish until the receiver has subscribed.
    for i in 0.. {
        a.send("broadcast.news", msg("news", i)).await.unwrap();
        if waiting.is_finished() || i > 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.message_type(), "news");
}

/// The fan-out runs in the subscription, after the publish: a group send waits for the
/// members it left lagging, so a fast sender drops far fewer deliveries than without
/// back-pressure. (Messages still in flight between the publish and the fan-out are not seen
/// by the sender, so this layer does not promise none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_pushes_back_on_a_fast_sender_for_local_members() {
    use switchboard_core::layer::conformance::fast_sender_slow_members;
    let cfg = |wait| LayerConfig::default().capacity(10).group_backpressure(wait);
    let Some(with) = config(cfg(Duration::from_secs(1))) else {
        return;
    };
    let Some(without) = config(cfg(Duration::ZERO)) else {
        return;
    };
    let with = fast_sender_slow_members(&Layer::new(pubsub(&with).await), 20, 100).await;
    let without = fast_sender_slow_members(&Layer::new(pubsub(&without).await), 20, 100).await;
    assert!(
        without > 0 && with * 4 <= without,
        "back-pressure: {with} drops with it, {without} without"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_recovers_a_subscriber_that_fell_behind() {
    switchboard_core::layer::conformance::history_recovers_a_subscriber_that_fell_behind(make).await
}
