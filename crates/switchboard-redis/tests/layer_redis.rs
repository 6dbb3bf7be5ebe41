//! `RedisLayer` against a real redis-server: the layer conformance suite (two instances on one
//! fresh key prefix stand for two processes), then what is particular to the Redis core layer.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use redis::AsyncCommands;
use switchboard_core::{Layer, LayerConfig};
use test_support::layers::{all_value_types, config, core, make_core, msg, raw, recv};

async fn make(cfg: LayerConfig) -> Option<(Layer, Layer)> {
    Some(make_core(config(cfg)?).await)
}

switchboard_core::layer_conformance_tests!(make);

mod presence {
    switchboard_core::presence_conformance_tests!(super::make);
}

mod history {
    switchboard_core::history_conformance_tests!(super::make);
}

#[tokio::test]
async fn stores_what_channels_redis_stores() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (Layer::new(core(&cfg).await), core(&cfg).await);
    let client = b.client_id().to_owned();
    let b = Layer::new(b);
    let ch = b.new_channel().await.unwrap();
    assert!(ch.as_str().starts_with(&format!("specific.{client}!")));
    // channels_redis's 74 (`specific.`, 32 hex digits, `!`, 32 more), and `sb-` before the
    // client id, which tells other switchboard processes what this one is.
    assert!(client.starts_with("sb-"), "{client}");
    assert_eq!(ch.as_str().len(), 77);
    b.group_add("room", &ch).await.unwrap();
    // Nobody receives on b yet, so what a sends stays in Redis to look at.
    a.send(&ch, msg("direct", 1)).await.unwrap();
    a.group_send("room", msg("grouped", 2)).await.unwrap();

    let mut r = raw(cfg.hosts[0].url().unwrap()).await;
    let key = format!("{}specific.{client}!", cfg.prefix);
    let stored: Vec<(Vec<u8>, f64)> = r.zrange_withscores(&key, 0, -1).await.unwrap();
    assert_eq!(stored.len(), 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (member, score) in &stored {
        assert!(
            (now - score).abs() < 5.0,
            "scores are send times in Unix seconds"
        );
        let decoded: serde_json::Value = rmp_serde_value(&member[12..]);
        assert!(decoded.get("type").is_some(), "{decoded}");
    }
    let direct = rmp_serde_value(&stored[0].0[12..]);
    assert_eq!(direct["__asgi_channel__"], serde_json::json!(ch.as_str()));
    // Between two switchboard processes a group message names the group (a channels_redis
    // process's copy lists its channels: `redis_group_route.rs`, `interop_django.rs`).
    let grouped = rmp_serde_value(&stored[1].0[12..]);
    assert_eq!(
        grouped["__asgi_channel__"],
        serde_json::json!({
            "group": "room",
            "members": 1,
            "digest": switchboard_core::engine::member_digest(ch.as_str()),
        })
    );
    let ttl: i64 = r.ttl(&key).await.unwrap();
    assert!(ttl > 60 && ttl <= 120, "queue TTL {ttl}");
    let group_key = format!("{}:group:room", cfg.prefix);
    let score: Option<f64> = r.zscore(&group_key, ch.as_str()).await.unwrap();
    assert!(score.is_some_and(|s| (now - s).abs() < 5.0));
    let ttl: i64 = r.ttl(&group_key).await.unwrap();
    assert!(ttl > 86_000, "group TTL {ttl}");

    assert_eq!(recv(&b, &ch).await, msg("direct", 1));
    assert_eq!(recv(&b, &ch).await, msg("grouped", 2));
}

/// Decodes msgpack for assertions (bytes become lists of numbers).
fn rmp_serde_value(bytes: &[u8]) -> serde_json::Value {
    let v: switchboard_core::Value = rmp_serde_from_slice(bytes);
    v.to_json()
}

fn rmp_serde_from_slice(bytes: &[u8]) -> switchboard_core::Value {
    // The layer's own decoder is private; go through a message-less path: msgpack -> Value.
    let mut de = rmp_serde::Deserializer::new(bytes);
    serde::Deserialize::deserialize(&mut de).unwrap()
}

#[tokio::test]
async fn every_value_type_crosses_redis_between_processes() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (Layer::new(core(&cfg).await), Layer::new(core(&cfg).await));
    let ch = b.new_channel().await.unwrap();
    b.group_add("typed", &ch).await.unwrap();
    a.send(&ch, all_value_types()).await.unwrap();
    a.group_send("typed", all_value_types()).await.unwrap();
    assert_eq!(recv(&b, &ch).await, all_value_types());
    assert_eq!(recv(&b, &ch).await, all_value_types());
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_skipped() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (Layer::new(core(&cfg).await), core(&cfg).await);
    let client = b.client_id().to_owned();
    let b = Layer::new(b);
    let ch = b.new_channel().await.unwrap();
    let mut r = raw(cfg.hosts[0].url().unwrap()).await;
    let key = format!("{}specific.{client}!", cfg.prefix);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let _: () = r
        .zadd(&key, b"123456789012 not msgpack at all".to_vec(), now)
        .await
        .unwrap();
    a.send(&ch, msg("after.garbage", 1)).await.unwrap();
    assert_eq!(recv(&b, &ch).await, msg("after.garbage", 1));
}

#[tokio::test]
async fn a_process_that_stopped_reading_leaves_its_groups() {
    let Some(cfg) = config(LayerConfig::default().expiry(Duration::from_secs(1))) else {
        return;
    };
    let (a, b) = (Layer::new(core(&cfg).await), Layer::new(core(&cfg).await));
    let live = a.new_channel().await.unwrap();
    let dead = b.new_channel().await.unwrap();
    a.group_add("room", &live).await.unwrap();
    b.group_add("room", &dead).await.unwrap();
    b.close().await.unwrap(); // the process is gone; its membership is not
    a.group_send("room", msg("first", 1)).await.unwrap();
    assert_eq!(a.group_channels("room").await.unwrap().len(), 2);
    assert_eq!(recv(&a, &live).await, msg("first", 1));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    a.group_send("room", msg("second", 2)).await.unwrap();
    assert_eq!(a.group_channels("room").await.unwrap(), vec![live.clone()]);
    assert_eq!(recv(&a, &live).await, msg("second", 2));
}

#[tokio::test]
async fn stalled_members_stay_when_asked_to() {
    let Some(cfg) = config(LayerConfig::default().expiry(Duration::from_secs(1))) else {
        return;
    };
    let cfg = cfg.drop_stalled_members(false);
    let (a, b) = (Layer::new(core(&cfg).await), Layer::new(core(&cfg).await));
    let dead = b.new_channel().await.unwrap();
    b.group_add("room", &dead).await.unwrap();
    b.close().await.unwrap();
    a.group_send("room", msg("first", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    a.group_send("room", msg("second", 2)).await.unwrap();
    assert_eq!(a.group_channels("room").await.unwrap(), vec![dead]);
}

#[tokio::test]
async fn named_channels_share_work_between_processes() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b, c) = (
        Layer::new(core(&cfg).await),
        Layer::new(core(&cfg).await),
        Layer::new(core(&cfg).await),
    );
    for i in 0..20 {
        a.send("worker.jobs", msg("job", i)).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(recv(&b, &"worker.jobs".parse().unwrap()).await);
        got.push(recv(&c, &"worker.jobs".parse().unwrap()).await);
    }
    let mut ns: Vec<i64> = got
        .iter()
        .map(|m| m.get("n").and_then(|v| v.as_i64()).unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..20).collect::<Vec<_>>(), "each job exactly once");
}

#[tokio::test]
async fn encrypted_messages_need_the_key() {
    let Some(base) = config(LayerConfig::default()) else {
        return;
    };
    let keyed = base.clone().symmetric_encryption_keys(["k1"]);
    let rotated = base.clone().symmetric_encryption_keys(["k2", "k1"]);
    let wrong = base.clone().symmetric_encryption_keys(["nope"]);
    let sender = Layer::new(core(&keyed).await);
    let reader = Layer::new(core(&rotated).await);
    let stranger = Layer::new(core(&wrong).await);
    let ch = reader.new_channel().await.unwrap();
    let other = stranger.new_channel().await.unwrap();
    sender.send(&ch, all_value_types()).await.unwrap();
    assert_eq!(recv(&reader, &ch).await, all_value_types());
    sender.send(&other, msg("secret", 1)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stranger.receive(&other))
            .await
            .is_err(),
        "a message under another key must not be delivered"
    );
}

#[tokio::test]
async fn a_channel_whose_messages_expire_here_leaves_its_groups() {
    let Some(cfg) = config(LayerConfig::default().expiry(Duration::from_secs(1))) else {
        return;
    };
    let (a, b) = (Layer::new(core(&cfg).await), Layer::new(core(&cfg).await));
    let (idle, busy) = (
        a.new_channel().await.unwrap(),
        a.new_channel().await.unwrap(),
    );
    a.group_add("room", &idle).await.unwrap();
    // A receive waits on `busy`, so the process drains its queue: `idle`'s message sits in the
    // local queue, unread.
    let waiting = {
        let (a, busy) = (a.clone(), busy.clone());
        tokio::spawn(async move { a.receive(&busy).await })
    };
    b.group_send("room", msg("unread", 1)).await.unwrap();
    let left = async {
        while !a.group_channels("room").await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(4), left)
        .await
        .expect("the channel must leave its group once its message expired");
    assert!(a.stats().expired_messages >= 1);
    waiting.abort();
}

/// A named channel this process received on is shared with every other process: a group
/// message for it goes through Redis, where any of them (here: another one) can take it.
#[tokio::test]
async fn group_messages_for_a_named_channel_reach_other_processes() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (Layer::new(core(&cfg).await), Layer::new(core(&cfg).await));
    let jobs: switchboard_core::ChannelName = "worker.jobs".parse().unwrap();
    a.send(&jobs, msg("job", 1)).await.unwrap();
    assert_eq!(recv(&a, &jobs).await, msg("job", 1)); // a now knows the channel locally
    a.group_add("workers", &jobs).await.unwrap();
    a.group_send("workers", msg("job", 2)).await.unwrap();
    a.send(&jobs, msg("job", 3)).await.unwrap();
    assert_eq!(recv(&b, &jobs).await, msg("job", 2));
    assert_eq!(recv(&b, &jobs).await, msg("job", 3));
}

/// A score of `-inf` or far in the past (Redis takes any float; Django or a script may write
/// one) is an expired message: dropped, and the receive loop goes on.
#[tokio::test]
async fn a_message_scored_minus_infinity_is_dropped_as_expired() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = (Layer::new(core(&cfg).await), core(&cfg).await);
    let client = b.client_id().to_owned();
    let b = Layer::new(b);
    let ch = b.new_channel().await.unwrap();
    // Nobody receives on b yet: the messages stay in Redis, where their scores are rewritten.
    a.send(&ch, msg("minus.inf", 1)).await.unwrap();
    a.send(&ch, msg("ancient", 2)).await.unwrap();
    a.send(&ch, msg("fine", 3)).await.unwrap();
    // (After the last send: a send trims expired messages.)
    let mut r = raw(cfg.hosts[0].url().unwrap()).await;
    let key = format!("{}specific.{client}!", cfg.prefix);
    let stored: Vec<Vec<u8>> = r.zrange(&key, 0, -1).await.unwrap();
    assert_eq!(stored.len(), 3);
    for (member, score) in stored.iter().zip(["-inf", "-1e300"]) {
        let _: () = redis::cmd("ZADD")
            .arg(&key)
            .arg("XX")
            .arg(score)
            .arg(member)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    assert_eq!(recv(&b, &ch).await, msg("fine", 3));
    assert_eq!(b.stats().expired_messages, 2);
    // The loop still runs.
    a.send(&ch, msg("later", 4)).await.unwrap();
    assert_eq!(recv(&b, &ch).await, msg("later", 4));
}

/// This process's members of a group that lag make a fast sender wait (they are fed without
/// Redis), so nothing is dropped; without back-pressure the same sender overflows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_pushes_back_on_a_fast_sender_for_local_members() {
    use switchboard_core::layer::conformance::fast_sender_slow_members;
    let cfg = |wait| LayerConfig::default().capacity(10).group_backpressure(wait);
    let Some(with) = config(cfg(Duration::from_secs(1))) else {
        return;
    };
    let layer = Layer::new(core(&with).await);
    assert_eq!(fast_sender_slow_members(&layer, 20, 100).await, 0);
    let Some(without) = config(cfg(Duration::ZERO)) else {
        return;
    };
    let layer = Layer::new(core(&without).await);
    assert!(
        fast_sender_slow_members(&layer, 20, 100).await > 0,
        "without back-pressure a fast sender overflows slow members"
    );
}

/// A group send with history is one script on one Redis: the core layer refuses group history
/// with several hosts, and with encryption keys (Redis cannot number a Fernet token), saying so.
#[tokio::test]
async fn the_core_layer_refuses_history_on_several_hosts_or_encrypted() {
    let Some(cfg) = config(switchboard_core::layer::conformance::history_config()) else {
        return;
    };
    let url = cfg.hosts[0].url().unwrap();
    let two = switchboard_redis::RedisConfig::hosts([url, url])
        .prefix(cfg.prefix.clone())
        .layer(cfg.layer.clone());
    let encrypted = cfg.symmetric_encryption_keys([b"key".to_vec()]);
    for (what, cfg, says) in [
        ("two hosts", two, "one host"),
        ("encrypted", encrypted, "encrypt"),
    ] {
        match switchboard_redis::RedisLayer::connect(cfg).await {
            Err(switchboard_core::LayerError::Config(e)) => {
                assert!(e.contains(says), "{what}: {e}")
            }
            other => panic!(
                "RedisLayer with group history, {what}: {:?}",
                other.map(|_| ())
            ),
        }
    }
}

/// A group with history on the core layer: one queue entry per process, its msgpack map
/// carrying `__asgi_channel__` (the member channels, as channels_redis writes it) and the
/// position; the Stream keeps the unrouted bytes; scores grow in offset order.
#[tokio::test]
async fn history_messages_are_channels_redis_queue_entries_with_a_position() {
    let Some(cfg) = config(switchboard_core::layer::conformance::history_config()) else {
        return;
    };
    let (a, b) = make_core(cfg.clone()).await;
    let mut c = raw(cfg.hosts[0].url().unwrap()).await;
    // A Django-style member of another process: nobody reads its queue here.
    let django = "specific.django0000000000000000000000000000!abc";
    let _: () = c
        .zadd(format!("{}:group:hist_q", cfg.prefix), django, 1.0e12)
        .await
        .unwrap();
    let mut s = b.subscribe().await.unwrap();
    s.group_add_since("hist_q", None).await.unwrap();
    for n in 1..=3 {
        a.group_send("hist_q", msg("numbered", n)).await.unwrap();
    }
    for n in 1..=3 {
        let m = recv_sub(&mut s).await;
        assert_eq!(m.get("n").and_then(|v| v.as_i64()), Some(n));
        assert_eq!(m.position().map(|p| p.offset()), Some(n as u64));
    }
    let queue = format!("{}specific.django0000000000000000000000000000!", cfg.prefix);
    let entries: Vec<(Vec<u8>, f64)> = c.zrange_withscores(&queue, 0, -1).await.unwrap();
    assert_eq!(entries.len(), 3);
    for (i, (bytes, _)) in entries.iter().enumerate() {
        let v: serde_json::Value = rmp_serde::from_slice(&bytes[12..]).unwrap();
        assert_eq!(v["__asgi_channel__"], serde_json::json!([django]), "{v}");
        assert_eq!(v["n"], i as i64 + 1);
        let p = v["__switchboard_position__"].as_str().unwrap();
        assert!(p.ends_with(&format!(":{}", i + 1)), "{p}");
    }
    assert!(
        entries.windows(2).all(|w| w[0].1 < w[1].1),
        "scores in offset order"
    );
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let log: Vec<Entry> = redis::cmd("XRANGE")
        .arg(format!("{}:history:hist_q:log", cfg.prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(log.len(), 3);
    let kept: serde_json::Value = rmp_serde::from_slice(&log[0].1[1].1[12..]).unwrap();
    assert!(kept.get("__asgi_channel__").is_none(), "{kept}");
    s.close().await;
}

async fn recv_sub(s: &mut switchboard_core::Subscription) -> switchboard_core::Message {
    tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .unwrap()
        .unwrap()
}

/// Presence lives beside channels_redis's keys: a hash of entries and a sorted set of when each
/// expires, both expiring `presence_ttl` after the last heartbeat.
#[tokio::test]
async fn presence_is_a_hash_and_a_sorted_set_beside_the_channels_redis_keys() {
    let Some(cfg) = config(LayerConfig::default().presence_ttl(Duration::from_secs(30))) else {
        return;
    };
    let layer = Layer::new(core(&cfg).await);
    let mut s = layer.subscribe().await.unwrap();
    s.presence_join(
        "room",
        switchboard_core::PresenceInfo::new("tab-1").user("ann"),
    )
    .await
    .unwrap();
    let mut c = raw(cfg.hosts[0].url().unwrap()).await;
    let hash = format!("{}:presence:room", cfg.prefix);
    let json: String = redis::cmd("HGET")
        .arg(&hash)
        .arg(s.channel_name().as_str())
        .query_async(&mut c)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["client_id"], "tab-1");
    assert_eq!(v["user"], "ann");
    assert_eq!(v["channel"], s.channel_name().as_str());
    let (expires, now): (f64, Vec<String>) = redis::pipe()
        .cmd("ZSCORE")
        .arg(format!("{hash}:exp"))
        .arg(s.channel_name().as_str())
        .cmd("TIME")
        .query_async(&mut c)
        .await
        .unwrap();
    let now_ms = now[0].parse::<f64>().unwrap() * 1000.0 + now[1].parse::<f64>().unwrap() / 1000.0;
    assert!(
        (29_000.0..=30_500.0).contains(&(expires - now_ms)),
        "{}",
        expires - now_ms
    );
    for key in [hash.clone(), format!("{hash}:exp")] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!((29_000..=30_000).contains(&ttl), "{key}: {ttl}");
    }
    s.close().await;
    let left: i64 = redis::cmd("HLEN")
        .arg(&hash)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
