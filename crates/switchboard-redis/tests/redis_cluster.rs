//! `RedisClusterLayer` against a real Redis Cluster on loopback: the layer conformance suite on
//! three masters (two instances on one fresh prefix stand for two processes), the names' hash
//! tags and their spread over the shards, and a master killed under traffic (three masters,
//! three replicas): a replica takes over and the layer works again with no restart.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchboard_core::{Layer, LayerConfig, LayerError, Value};
use switchboard_redis::{RedisClusterLayer, RedisConfig};
use test_support::cluster::{self, Cluster};
use test_support::layers::msg;
use test_support::redis::fresh_prefix;

async fn cluster_layer(cfg: &RedisConfig) -> Layer {
    Layer::new(RedisClusterLayer::connect(cfg.clone()).await.unwrap())
}

async fn make(layer: LayerConfig) -> Option<(Layer, Layer)> {
    let cfg = RedisConfig::hosts(cluster::shared()?.urls())
        .prefix(fresh_prefix())
        .layer(layer);
    Some((cluster_layer(&cfg).await, cluster_layer(&cfg).await))
}

switchboard_core::layer_conformance_tests!(make);

mod presence {
    switchboard_core::presence_conformance_tests!(super::make);
}

fn slot_of(port: u16, name: &str) -> u16 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(name)
        .query(&mut client.get_connection().unwrap())
        .unwrap()
}

#[tokio::test]
async fn groups_spread_over_the_shards_and_each_stays_in_one_slot() {
    let Some(c) = cluster::shared() else { return };
    let port: u16 = c.urls()[0].rsplit(':').next().unwrap().parse().unwrap();
    let mut per_master: HashMap<u16, usize> = HashMap::new();
    for i in 0..300 {
        let group = format!("chat_room{i}");
        let channel = format!("asgi:group:{{{group}}}");
        // The group's shard channel and its registry key hash alike: one slot per group.
        assert_eq!(
            slot_of(port, &channel),
            slot_of(port, &format!("asgi:cluster:group:{{{group}}}"))
        );
        *per_master.entry(c.master_of(&channel)).or_default() += 1;
    }
    assert_eq!(per_master.len(), 3, "{per_master:?}");
    for (master, n) in &per_master {
        assert!(
            (70..=130).contains(n),
            "master {master} serves {n} of 300 groups: {per_master:?}"
        );
    }
}

#[tokio::test]
async fn sentinel_hosts_and_empty_seeds_are_refused() {
    let e = RedisClusterLayer::connect(RedisConfig::hosts(Vec::<String>::new()))
        .await
        .unwrap_err();
    assert!(matches!(e, LayerError::Config(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_traffic_is_replaced_and_the_layer_works_again() {
    let Some(mut c) = Cluster::start(3, 1) else {
        return;
    };
    let prefix = fresh_prefix();
    let cfg = RedisConfig::hosts(c.urls()).prefix(&prefix);
    let (sender, member) = (cluster_layer(&cfg).await, cluster_layer(&cfg).await);
    let ch = member.new_channel().await.unwrap();
    member.group_add("traffic", &ch).await.unwrap();
    // What the member received, and when.
    let received = Arc::new(Mutex::new(Vec::<(i64, Instant)>::new()));
    let receiving = {
        let (member, ch, received) = (member.clone(), ch.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok(m) = member.receive(&ch).await {
                if let Some(Value::Int(n)) = m.get("n") {
                    received.lock().push((*n, Instant::now()));
                }
            }
        })
    };
    let mut first_after_kill = None;
    let group_channel = format!("{prefix}:group:{{traffic}}");
    let mut acked = Vec::new();
    let (mut failed, mut errors) = (0u32, Vec::new());
    let (mut killed, mut recovered) = (None, None);
    let start = Instant::now();
    for n in 0.. {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "group_send did not work again within 60 s: {errors:?}"
        );
        if killed.is_none() && start.elapsed() > Duration::from_secs(1) {
            let old = c.master_of(&group_channel);
            c.kill(old);
            killed = Some((Instant::now(), old));
            first_after_kill = Some(n);
        }
        match tokio::time::timeout(
            Duration::from_secs(15),
            sender.group_send("traffic", msg("traffic.tick", n)),
        )
        .await
        .expect("a group_send hung for 15 s")
        {
            Ok(()) => {
                acked.push(n);
                if killed.is_some() && recovered.is_none() {
                    recovered = Some(Instant::now());
                }
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 3 {
                    errors.push(e.to_string());
                }
            }
        }
        // Stop 2 s after a message sent after the kill reached the member.
        let delivered = first_after_kill.and_then(|k| {
            received
                .lock()
                .iter()
                .find(|(m, _)| *m >= k)
                .map(|&(_, at)| at)
        });
        if delivered.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ((killed_at, old), recovered_at) = (killed.unwrap(), recovered.unwrap());
    let new = c.wait_for_new_master(&group_channel, old, Duration::from_secs(20));
    // What was acknowledged once the new master serves the group arrives (the member's
    // subscription moved there too).
    let tail: Vec<i64> = acked.iter().rev().take(100).copied().collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let has = |n: &i64| received.lock().iter().any(|(m, _)| m == n);
    while !tail.iter().all(has) {
        assert!(
            Instant::now() < deadline,
            "the last 100 acknowledged messages did not all arrive after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiving.abort();
    let got: Vec<i64> = received.lock().iter().map(|(n, _)| *n).collect();
    let k = first_after_kill.unwrap();
    let delivered_at = received
        .lock()
        .iter()
        .find(|(m, _)| *m >= k)
        .map(|&(_, at)| at)
        .unwrap();
    let lost = acked.iter().filter(|n| !got.contains(n)).count();
    eprintln!(
        "cluster failover: master {old} killed, replica {new} took over; group_send accepted \
         again {} ms after the kill, delivered again {} ms after it; {failed} sends failed \
         (their callers got the error), {} acknowledged, {lost} of them lost (published while \
         the member's subscription had no live node), {} received; first errors: {errors:?}",
        (recovered_at - killed_at).as_millis(),
        (delivered_at - killed_at).as_millis(),
        acked.len(),
        got.len()
    );
    // The registry still answers, from the new master.
    assert_eq!(member.group_channels("traffic").await.unwrap(), [ch]);
}
