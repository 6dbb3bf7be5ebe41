//! Both Redis layers behind Sentinel, against real processes on loopback: one master, one
//! replica, three sentinels (`test_support::sentinel`). The layers find the master through the
//! sentinels; under traffic the master is killed; the replica takes over and the layers follow
//! it with no restart, and a Django process configured with the same sentinels shares a group
//! with Rust before and after.
//!
//! Each test prints what it measured: how long group_send failed, how many sends failed (their
//! callers got the error), how many acknowledged messages were lost (Redis replicates
//! asynchronously: what the old master acknowledged but had not passed on is gone).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::json;
use switchboard_core::{Layer, LayerError, Value};
use switchboard_redis::{RedisConfig, RedisLayer, SentinelHost};
use test_support::django::{Django, Kind, exchange, rust_layer_with};
use test_support::layers::{msg, raw};
use test_support::redis::fresh_prefix;
use test_support::sentinel::{MASTER, SentinelSet};

/// One group send every `PACE` while the test runs.
const PACE: Duration = Duration::from_millis(5);

fn numbered(n: i64) -> switchboard_core::Message {
    msg("traffic.tick", n)
}

async fn follows_a_failover(kind: Kind) {
    let Some(mut set) = SentinelSet::start().await else {
        return;
    };
    let prefix = fresh_prefix();
    let cfg = RedisConfig::new(SentinelHost::new(set.sentinel_addrs(), MASTER)).prefix(&prefix);
    let sender = rust_layer_with(kind, cfg.clone()).await;
    let member = rust_layer_with(kind, cfg.clone()).await;
    // channels_redis's host for Sentinel: {"sentinels": [(host, port), …], "master_name": …}.
    let django_host = json!({
        "sentinels": set.sentinel_ports().iter().map(|p| json!(["127.0.0.1", p])).collect::<Vec<_>>(),
        "master_name": MASTER,
    })
    .to_string();
    let Some(mut django) = Django::start(kind, &django_host, &prefix, &[]).await else {
        return;
    };
    exchange(&mut django, &sender).await;

    // Traffic: one member in the group on `member`, a group_send every PACE from `sender`.
    let ch = member.new_channel().await.unwrap();
    member.group_add("traffic", &ch).await.unwrap();
    let received = Arc::new(Mutex::new(Vec::<i64>::new()));
    let receiving = {
        let (member, ch, received) = (member.clone(), ch.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                match member.receive(&ch).await {
                    Ok(m) => {
                        if let Some(Value::Int(n)) = m.get("n") {
                            received.lock().push(*n);
                        }
                    }
                    Err(e) => panic!("receive failed: {e}"),
                }
            }
        })
    };
    let mut acked = Vec::new();
    let mut failed = 0u32;
    let mut killed_at = None;
    let mut switched = None;
    let mut recovered_at = None;
    let mut errors = Vec::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(40);
    for n in 0.. {
        let now = Instant::now();
        assert!(
            now < deadline,
            "group_send did not work again within 40 s; errors: {errors:?}"
        );
        if killed_at.is_none() && now - start > Duration::from_secs(1) {
            let old = set.kill_master().await;
            killed_at = Some(Instant::now());
            switched = Some(tokio::spawn(
                set.master_changed(old, Duration::from_secs(40)),
            ));
        }
        match tokio::time::timeout(
            Duration::from_secs(10),
            sender.group_send("traffic", numbered(n)),
        )
        .await
        {
            Ok(Ok(())) => {
                acked.push(n);
                if killed_at.is_some() && recovered_at.is_none() {
                    recovered_at = Some(Instant::now());
                }
            }
            Ok(Err(e)) => {
                assert!(
                    matches!(e, LayerError::Backend(_) | LayerError::Timeout(_)),
                    "{e:?}"
                );
                failed += 1;
                if errors.len() < 3 {
                    errors.push(e.to_string());
                }
            }
            Err(_) => panic!("a group_send hung for 10 s"),
        }
        if recovered_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        tokio::time::sleep(PACE).await;
    }
    let (killed_at, recovered_at) = (killed_at.unwrap(), recovered_at.unwrap());
    // Everything acknowledged after the switch arrives.
    let after_switch: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|&n| n > acked[acked.len() / 2])
        .collect();
    let wait = Instant::now() + Duration::from_secs(10);
    loop {
        let got = received.lock().clone();
        if acked.iter().rev().take(50).all(|n| got.contains(n)) || Instant::now() > wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiving.abort();
    let got = received.lock().clone();
    let lost: Vec<i64> = acked.iter().copied().filter(|n| !got.contains(n)).collect();
    let recovered_after = recovered_at - killed_at;
    let switched_at = switched
        .unwrap()
        .await
        .unwrap()
        .expect("the sentinels named no new master");
    eprintln!(
        "sentinel failover ({kind:?}): the sentinels named the new master {} ms after the \
         master was killed; group_send worked again {} ms after the kill ({} ms after the \
         sentinels); {failed} sends failed (their callers got the error), {} acknowledged, {} \
         of them lost, {} received; first errors: {errors:?}",
        (switched_at - killed_at).as_millis(),
        recovered_after.as_millis(),
        recovered_at
            .saturating_duration_since(switched_at)
            .as_millis(),
        acked.len(),
        lost.len(),
        got.len(),
    );
    let last_acked = *acked.last().unwrap();
    assert!(
        lost.iter().all(|&n| n < last_acked - 50) && !after_switch.is_empty(),
        "messages acknowledged after the switch were lost: {lost:?}"
    );

    // The member's membership is on the new master, and the sentinels agree on it.
    let master = set.wait_for_new_master(0, Duration::from_secs(1)).await;
    if kind == Kind::Core {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}:group:traffic"))
            .arg(0)
            .arg(-1)
            .query_async(&mut raw(&SentinelSet::url(master)).await)
            .await
            .unwrap();
        assert!(members.contains(&ch.as_str().to_owned()), "{members:?}");
    }

    // After: Django (once redis-py has asked the sentinels again) and Rust share a group.
    let py = django.new_channel().await;
    django
        .group_add_retrying("after", &py, Duration::from_secs(20))
        .await;
    exchange(&mut django, &sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_follows_a_failover_under_traffic() {
    follows_a_failover(Kind::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_follows_a_failover_under_traffic() {
    follows_a_failover(Kind::PubSub).await;
}

#[tokio::test]
async fn a_master_name_the_sentinels_do_not_know_fails_at_connect() {
    let Some(set) = SentinelSet::start().await else {
        return;
    };
    let cfg = RedisConfig::new(SentinelHost::new(set.sentinel_addrs(), "nosuchmaster"))
        .prefix(fresh_prefix());
    let e = RedisLayer::connect(cfg).await.unwrap_err().to_string();
    assert!(e.contains("sentinel master nosuchmaster"), "{e}");
    let cfg = RedisConfig::new(SentinelHost::new(["127.0.0.1:notaport"], MASTER));
    match RedisLayer::connect(cfg).await.unwrap_err() {
        LayerError::Config(e) => assert!(e.contains("bad sentinel address"), "{e}"),
        e => panic!("{e:?}"),
    }
    drop(Layer::new(
        RedisLayer::connect(
            RedisConfig::new(SentinelHost::new(set.sentinel_addrs(), MASTER))
                .prefix(fresh_prefix()),
        )
        .await
        .unwrap(),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_on_the_master_and_on_the_sentinels() {
    let (master_pw, sentinel_pw) = ("pw-master-7f3a", "pw-sentinel-91c2");
    let Some(set) = SentinelSet::start_with(Some(master_pw), Some(sentinel_pw)).await else {
        return;
    };
    let host = SentinelHost::new(set.sentinel_addrs(), MASTER);
    let cfg = |h: SentinelHost| RedisConfig::new(h).prefix(fresh_prefix());
    let right = host
        .clone()
        .password(master_pw)
        .sentinel_password(sentinel_pw);
    for kind in [Kind::Core, Kind::PubSub] {
        let layer = rust_layer_with(kind, cfg(right.clone())).await;
        let ch = layer.new_channel().await.unwrap();
        layer.group_add("room", &ch).await.unwrap();
        layer.group_send("room", msg("hi", 1)).await.unwrap();
        assert_eq!(test_support::layers::recv(&layer, &ch).await, msg("hi", 1));
        assert!(!format!("{layer:?}").contains("pw-"), "{layer:?}");
    }
    for (what, h) in [
        (
            "a wrong master password",
            host.clone()
                .password("pw-wrong")
                .sentinel_password(sentinel_pw),
        ),
        ("no sentinel password", host.clone().password(master_pw)),
    ] {
        let e = RedisLayer::connect(cfg(h)).await.unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(
            e.to_string().contains("refused the credentials"),
            "{what}: {shown}"
        );
        assert!(
            !shown.contains("pw-"),
            "{what}: the password shows: {shown}"
        );
    }
}

/// Group history across a failover: Redis replicates asynchronously, so the new master may
/// lack the last messages of a history, and their offsets would be given out again. The layer
/// that sees its master move replaces the host's era, so the history starts a new epoch there:
/// a position from before the failover is answered "not recovered" instead of recovered with
/// a hole, and the new epoch numbers from 1.
async fn history_starts_a_new_epoch_after_a_failover(kind: Kind) {
    let Some(mut set) = SentinelSet::start().await else {
        return;
    };
    let cfg = RedisConfig::new(SentinelHost::new(set.sentinel_addrs(), MASTER))
        .prefix(fresh_prefix())
        .layer(switchboard_core::layer::conformance::history_config());
    let layer = rust_layer_with(kind, cfg).await;
    let mut sub = layer.subscribe().await.unwrap();
    let start = sub.group_add_since("hist_fo", None).await.unwrap();
    for n in 1..=3 {
        layer.group_send("hist_fo", msg("before", n)).await.unwrap();
    }
    let mut before = None;
    for _ in 1..=3 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap()
            .unwrap();
        before = m.position().cloned();
    }
    let before = before.unwrap();
    assert_eq!(before.epoch(), start.position.epoch());
    assert_eq!(before.offset(), 3);

    let old = set.kill_master().await;
    set.wait_for_new_master(old, Duration::from_secs(40)).await;
    // Sends until one is numbered in a new epoch (the first ones after the switch may come
    // before the layer has seen its master move).
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        assert!(
            Instant::now() < deadline,
            "no new epoch 30 s after the failover"
        );
        if layer.group_send("hist_fo", msg("after", 1)).await.is_ok() {
            let mut probe = layer.subscribe().await.unwrap();
            let r = probe.group_add_since("hist_fo", None).await.unwrap();
            if r.position.epoch() != before.epoch() {
                break r.position;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut again = layer.subscribe().await.unwrap();
    let r = again
        .group_add_since("hist_fo", Some(&before))
        .await
        .unwrap();
    assert!(!r.recovered, "a position from before the failover: {r:?}");
    assert_eq!(r.position.epoch(), after.epoch());
    layer.group_send("hist_fo", msg("after", 2)).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), again.recv())
        .await
        .unwrap()
        .unwrap();
    let p = m.position().unwrap();
    assert_eq!(p.epoch(), after.epoch());
    assert!(p.offset() <= 3, "the new epoch numbers from 1: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_history_starts_a_new_epoch_after_a_failover() {
    history_starts_a_new_epoch_after_a_failover(Kind::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_history_starts_a_new_epoch_after_a_failover() {
    history_starts_a_new_epoch_after_a_failover(Kind::PubSub).await;
}
