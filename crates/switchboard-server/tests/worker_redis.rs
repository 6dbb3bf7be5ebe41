//! Background workers on the Redis layers: on the core layer, worker processes share a named
//! channel's messages (each to one of them) and a busy worker leaves its queue in Redis; on the
//! pub/sub and cluster layers, every subscribed worker gets every message, as documented.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{spawn, stopped};
use parking_lot::Mutex;
use serde_json::json;
use switchboard::worker::{Worker, WorkerContext};
use switchboard::{Layer, LayerConfig, Message};
use test_support::eventually;
use test_support::layers::{cluster, config, make_core, make_pubsub, zcard};
use tokio::sync::Semaphore;

const WITHIN: Duration = Duration::from_secs(10);

/// A worker on `channel` that records the `id` of each message in `seen`, taking `pause`.
fn recording(layer: &Layer, channel: &str, seen: &Arc<Mutex<Vec<i64>>>, pause: Duration) -> Worker {
    let seen = seen.clone();
    Worker::new(layer.clone()).channel(channel, move |_ctx: WorkerContext, m: Message| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(pause).await;
            seen.lock()
                .push(m.get("id").and_then(|v| v.as_i64()).unwrap_or(-1));
            Ok(())
        }
    })
}

fn sorted(v: &Mutex<Vec<i64>>) -> Vec<i64> {
    let mut v = v.lock().clone();
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_two_worker_processes_share_a_named_channel() {
    let Some(rc) = config(LayerConfig::default()) else {
        return;
    };
    // Two processes with a worker each; a third sends.
    let (a, b) = make_core(rc.clone()).await;
    let (sender, _) = make_core(rc).await;
    let (seen_a, seen_b) = (Arc::default(), Arc::default());
    let pause = Duration::from_millis(20);
    let (stop_a, task_a) =
        spawn(recording(&a, "thumbnails-generate", &seen_a, pause).concurrency(2));
    let (stop_b, task_b) =
        spawn(recording(&b, "thumbnails-generate", &seen_b, pause).concurrency(2));
    for id in 0..40 {
        sender
            .send(
                "thumbnails-generate",
                json!({"type": "thumbnail.generate", "id": id}),
            )
            .await
            .unwrap();
    }
    eventually("40 handled", WITHIN, || {
        seen_a.lock().len() + seen_b.lock().len() >= 40
    })
    .await;
    // Nothing more arrives: no message was handled twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sa, sb) = (
        stopped(stop_a, task_a, WITHIN).await,
        stopped(stop_b, task_b, WITHIN).await,
    );
    let mut all = sorted(&seen_a);
    all.extend(sorted(&seen_b));
    all.sort_unstable();
    assert_eq!(
        all,
        (0..40).collect::<Vec<_>>(),
        "every message once, over both"
    );
    assert_eq!(sa.received + sb.received, 40);
    assert!(
        sa.handled > 0 && sb.handled > 0,
        "both took a share: {sa:?} {sb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_a_busy_worker_leaves_the_queue_in_redis() {
    let Some(rc) = config(LayerConfig::default()) else {
        return;
    };
    let url = rc.hosts[0].url().unwrap().to_owned();
    let key = format!("{}jobs", rc.prefix);
    let (layer, other) = make_core(rc).await;
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (gate, started) = (gate.clone(), started.clone());
        Worker::new(layer.clone()).channel("jobs", move |_ctx: WorkerContext, _m: Message| {
            let (gate, started) = (gate.clone(), started.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                Ok(())
            }
        })
    };
    for id in 0..3 {
        layer
            .send("jobs", json!({"type": "job", "id": id}))
            .await
            .unwrap();
    }
    let (stop, task) = spawn(worker);
    eventually("one started", WITHIN, || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        zcard(&url, &key).await,
        2,
        "the two not started wait in Redis"
    );

    // Stop while the handler runs: the worker takes nothing more, the queue stays in Redis
    // for the next worker (here another process).
    stop.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(zcard(&url, &key).await, 2);
    gate.add_permits(1);
    let stats = tokio::time::timeout(WITHIN, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((stats.received, stats.handled), (1, 1));
    for id in 1..3 {
        let m = tokio::time::timeout(WITHIN, other.receive("jobs"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.get("id").unwrap().as_i64(), Some(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_every_subscribed_worker_gets_every_message() {
    let Some(rc) = config(LayerConfig::default()) else {
        return;
    };
    let (a, b) = make_pubsub(rc.clone()).await;
    let (sender, _) = make_pubsub(rc).await;
    every_subscribed_worker_gets_every_message(a, b, sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_layer_every_subscribed_worker_gets_every_message() {
    let Some(layers) = cluster(3).await else {
        return;
    };
    let [a, b, sender]: [Layer; 3] = layers.try_into().unwrap();
    every_subscribed_worker_gets_every_message(a, b, sender).await;
}

/// Two worker processes `a` and `b` on one named channel of a pub/sub kind of layer: each
/// handles each of the 5 messages `sender` sends.
async fn every_subscribed_worker_gets_every_message(a: Layer, b: Layer, sender: Layer) {
    let (seen_a, seen_b) = (Arc::default(), Arc::default());
    // Pub/sub stores nothing: send only once both are subscribed. A receiver's making
    // subscribes its layer to the channel (once per process) and returns when Redis has
    // confirmed; the workers' receivers then share that subscription. (Not polled, these take
    // no message.)
    let (_ra, _rb) = (
        a.receiver("broadcast").await.unwrap(),
        b.receiver("broadcast").await.unwrap(),
    );
    let (stop_a, task_a) = spawn(recording(&a, "broadcast", &seen_a, Duration::ZERO));
    let (stop_b, task_b) = spawn(recording(&b, "broadcast", &seen_b, Duration::ZERO));
    for id in 0..5 {
        sender
            .send("broadcast", json!({"type": "note", "id": id}))
            .await
            .unwrap();
    }
    eventually("both handled all 5", WITHIN, || {
        seen_a.lock().len() >= 5 && seen_b.lock().len() >= 5
    })
    .await;
    let (sa, sb) = (
        stopped(stop_a, task_a, WITHIN).await,
        stopped(stop_b, task_b, WITHIN).await,
    );
    assert_eq!(sorted(&seen_a), (0..5).collect::<Vec<_>>());
    assert_eq!(sorted(&seen_b), (0..5).collect::<Vec<_>>());
    assert_eq!((sa.handled, sb.handled), (5, 5));
}
