//! Background workers on the in-memory layer: typed dispatch, the concurrency limit, graceful
//! stop, failures that do not stop the worker, at-most-once.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{spawn, stopped};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use switchboard::worker::{Worker, WorkerContext};
use switchboard::{Error, InMemoryLayer, Layer, LayerConfig, LayerError, Message, Result};
use test_support::eventually;
use tokio::sync::Semaphore;

#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
enum Job {
    #[serde(rename = "thumbnail.generate")]
    Generate { id: u64 },
    #[serde(rename = "thumbnail.delete")]
    Delete { id: u64 },
}

fn layer() -> Layer {
    Layer::new(InMemoryLayer::new(LayerConfig::default()))
}

fn job(id: u64) -> serde_json::Value {
    json!({"type": "thumbnail.generate", "id": id})
}

const WITHIN: Duration = Duration::from_secs(5);

/// Receives within 5 s.
async fn recv(layer: &Layer, ch: impl switchboard::name::IntoChannelName) -> Message {
    tokio::time::timeout(WITHIN, layer.receive(ch))
        .await
        .expect("nothing within 5 s")
        .unwrap()
}

/// Whether `ch` holds a message (waiting 50 ms for one).
async fn holds_message(layer: &Layer, ch: &str) -> bool {
    tokio::time::timeout(Duration::from_millis(50), layer.receive(ch))
        .await
        .is_ok()
}

#[tokio::test]
async fn messages_are_decoded_by_type_and_results_group_sent() {
    let layer = layer();
    let page = layer.new_channel().await.unwrap();
    layer.group_add("thumbnails", &page).await.unwrap();
    let worker = Worker::new(layer.clone())
        .channel(
            "thumbnails-generate",
            |ctx: WorkerContext, job: Job| async move {
                let (what, id) = match job {
                    Job::Generate { id } => ("generated", id),
                    Job::Delete { id } => ("deleted", id),
                };
                let done = json!({"type": "thumbnail.done", "what": what, "id": id, "on": ctx.channel().as_str()});
                ctx.group_send("thumbnails", done).await
            },
        )
        // A second channel, with raw messages.
        .channel("audit", |ctx: WorkerContext, m: Message| async move {
            let seen = json!({"type": "audit.seen", "of": m.message_type(), "on": ctx.channel().as_str()});
            ctx.group_send("thumbnails", seen).await
        });
    let (stop, task) = spawn(worker);

    layer.send("thumbnails-generate", job(1)).await.unwrap();
    assert_eq!(
        recv(&layer, &page).await.to_json(),
        json!({"type": "thumbnail.done", "what": "generated", "id": 1, "on": "thumbnails-generate"})
    );
    layer
        .send(
            "thumbnails-generate",
            json!({"type": "thumbnail.delete", "id": 2}),
        )
        .await
        .unwrap();
    assert_eq!(
        recv(&layer, &page).await.get("what").unwrap().as_str(),
        Some("deleted")
    );
    // An unknown type, and a known type without its field: logged and skipped.
    layer
        .send(
            "thumbnails-generate",
            json!({"type": "thumbnail.frobnicate"}),
        )
        .await
        .unwrap();
    layer
        .send("thumbnails-generate", json!({"type": "thumbnail.generate"}))
        .await
        .unwrap();
    layer.send("thumbnails-generate", job(3)).await.unwrap();
    assert_eq!(
        recv(&layer, &page).await.get("id").unwrap().as_i64(),
        Some(3)
    );
    layer
        .send("audit", json!({"type": "anything.at.all"}))
        .await
        .unwrap();
    assert_eq!(
        recv(&layer, &page).await.to_json(),
        json!({"type": "audit.seen", "of": "anything.at.all", "on": "audit"})
    );

    let stats = stopped(stop, task, WITHIN).await;
    assert_eq!(
        (
            stats.received,
            stats.handled,
            stats.skipped,
            stats.failed,
            stats.panicked
        ),
        (6, 4, 2, 0, 0)
    );
}

/// A handler that counts how many run at once, and records the order they start and end in.
#[derive(Default)]
struct Probe {
    running: AtomicUsize,
    most: AtomicUsize,
    started: Mutex<Vec<u64>>,
    ended: Mutex<Vec<u64>>,
}

impl Probe {
    async fn run(&self, id: u64, pause: Duration) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.started.lock().push(id);
        tokio::time::sleep(pause).await;
        self.ended.lock().push(id);
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

fn probed(layer: &Layer, probe: &Arc<Probe>, concurrency: usize) -> Worker {
    let probe = probe.clone();
    Worker::new(layer.clone())
        .channel("jobs", move |_ctx: WorkerContext, job: Job| {
            let probe = probe.clone();
            async move {
                let Job::Generate { id } = job else {
                    return Ok(());
                };
                // Later jobs are quicker: with room for several, they end first.
                probe.run(id, Duration::from_millis(60 - 4 * id)).await;
                Ok(())
            }
        })
        .concurrency(concurrency)
}

#[tokio::test]
async fn the_concurrency_limit_bounds_the_handlers_in_flight() {
    let layer = layer();
    let probe = Arc::new(Probe::default());
    for id in 0..12 {
        layer.send("jobs", job(id)).await.unwrap();
    }
    let (stop, task) = spawn(probed(&layer, &probe, 3));
    eventually("12 handled", WITHIN, || probe.ended.lock().len() == 12).await;
    let stats = stopped(stop, task, WITHIN).await;
    assert_eq!(stats.handled, 12);
    assert_eq!(
        probe.most.load(Ordering::SeqCst),
        3,
        "never more than 3 at once, and 3 were"
    );
    assert_eq!(
        *probe.started.lock(),
        (0..12).collect::<Vec<_>>(),
        "started in the order sent"
    );
    assert_ne!(
        *probe.ended.lock(),
        (0..12).collect::<Vec<_>>(),
        "completed in any order"
    );
}

#[tokio::test]
async fn by_default_one_handler_at_a_time_in_order() {
    let layer = layer();
    let probe = Arc::new(Probe::default());
    for id in 0..6 {
        layer.send("jobs", job(id)).await.unwrap();
    }
    let (stop, task) = spawn(probed(&layer, &probe, 1));
    eventually("6 handled", WITHIN, || probe.ended.lock().len() == 6).await;
    stopped(stop, task, WITHIN).await;
    assert_eq!(probe.most.load(Ordering::SeqCst), 1);
    assert_eq!(
        *probe.ended.lock(),
        (0..6).collect::<Vec<_>>(),
        "Channels' order"
    );
}

/// A worker whose handlers each wait for a permit of `gate`, counting those that started.
fn gated(
    layer: &Layer,
    channel: &str,
    gate: &Arc<Semaphore>,
    started: &Arc<AtomicUsize>,
) -> Worker {
    let (gate, started) = (gate.clone(), started.clone());
    Worker::new(layer.clone()).channel(channel, move |_ctx: WorkerContext, _m: Message| {
        let (gate, started) = (gate.clone(), started.clone());
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            Ok(())
        }
    })
}

#[tokio::test]
async fn a_busy_worker_leaves_messages_in_the_layer_for_other_workers() {
    let layer = layer();
    let gate = Arc::new(Semaphore::new(0));
    let (started_a, started_b) = (Arc::default(), Arc::default());
    for id in 0..5 {
        layer.send("jobs", job(id)).await.unwrap();
    }
    let (stop_a, a) = spawn(gated(&layer, "jobs", &gate, &started_a).concurrency(2));
    eventually("a took 2", WITHIN, || started_a.load(Ordering::SeqCst) == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        started_a.load(Ordering::SeqCst),
        2,
        "a takes no message it has no slot for"
    );

    let (stop_b, b) = spawn(gated(&layer, "jobs", &gate, &started_b).concurrency(10));
    eventually("b took the other 3", WITHIN, || {
        started_b.load(Ordering::SeqCst) == 3
    })
    .await;
    gate.add_permits(5);
    let (a, b) = (
        stopped(stop_a, a, WITHIN).await,
        stopped(stop_b, b, WITHIN).await,
    );
    assert_eq!((a.handled, b.handled), (2, 3), "each message to one worker");
    assert!(!holds_message(&layer, "jobs").await);
}

#[tokio::test]
async fn stopping_waits_for_the_handlers_in_flight_and_takes_nothing_more() {
    let layer = layer();
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    for id in 0..3 {
        layer.send("jobs", job(id)).await.unwrap();
    }
    let (stop, task) = spawn(gated(&layer, "jobs", &gate, &started));
    eventually("one started", WITHIN, || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;

    stop.stop();
    assert!(stop.is_stopped());
    layer.send("jobs", job(3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!task.is_finished(), "the worker waits for its handler");
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "and takes nothing after the stop"
    );

    gate.add_permits(1);
    let stats = tokio::time::timeout(WITHIN, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((stats.received, stats.handled, stats.abandoned), (1, 1, 0));
    // The messages not taken are still in the layer, in order, for the next worker.
    for id in 1..4 {
        assert_eq!(
            recv(&layer, "jobs").await.get("id").unwrap().as_i64(),
            Some(id)
        );
    }
}

#[tokio::test]
async fn a_stop_future_stops_it_and_the_stop_timeout_bounds_the_wait() {
    let layer = layer();
    let started = Arc::new(AtomicUsize::new(0));
    let never = Arc::new(Semaphore::new(0));
    layer.send("jobs", job(1)).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let worker = gated(&layer, "jobs", &never, &started).stop_timeout(Duration::from_millis(200));
    let task = tokio::spawn(worker.run_until(async {
        let _ = rx.await;
    }));
    eventually("started", WITHIN, || started.load(Ordering::SeqCst) == 1).await;
    let at = tokio::time::Instant::now();
    tx.send(()).unwrap();
    let stats = tokio::time::timeout(WITHIN, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        at.elapsed() >= Duration::from_millis(200),
        "it waited out the timeout"
    );
    assert_eq!((stats.received, stats.handled, stats.abandoned), (1, 0, 1));
}

#[tokio::test]
async fn errors_and_panics_are_counted_not_retried_and_do_not_stop_the_worker() {
    let layer = layer();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let worker =
        Worker::new(layer.clone()).channel("jobs", move |_ctx: WorkerContext, job: Job| {
            let seen = seen.clone();
            async move {
                let Job::Generate { id } = job else {
                    return Ok(());
                };
                seen.lock().push(id);
                match id {
                    1 => Err(Error::other(std::io::Error::other("disk full"))),
                    2 => panic!("handler bug on job 2"),
                    _ => Ok(()),
                }
            }
        });
    let (stop, task) = spawn(worker);
    for id in 0..5 {
        layer.send("jobs", job(id)).await.unwrap();
    }
    eventually("all seen", WITHIN, || calls.lock().len() == 5).await;
    // Nothing comes back: a failed message is not retried.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = stopped(stop, task, WITHIN).await;
    assert_eq!(
        *calls.lock(),
        vec![0, 1, 2, 3, 4],
        "each message handled once"
    );
    assert_eq!(
        (stats.received, stats.handled, stats.failed, stats.panicked),
        (5, 3, 1, 1)
    );
}

#[tokio::test]
async fn two_workers_on_one_channel_share_its_messages() {
    let layer = layer();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let worker = |seen: Arc<Mutex<Vec<u64>>>| {
        Worker::new(layer.clone())
            .channel("jobs", move |_ctx: WorkerContext, job: Job| {
                let seen = seen.clone();
                async move {
                    if let Job::Generate { id } = job {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        seen.lock().push(id);
                    }
                    Ok(())
                }
            })
            .concurrency(2)
    };
    let (stop_a, a) = spawn(worker(seen.clone()));
    let (stop_b, b) = spawn(worker(seen.clone()));
    for id in 0..40 {
        layer.send("jobs", job(id)).await.unwrap();
    }
    eventually("40 handled", WITHIN, || seen.lock().len() == 40).await;
    let (a, b) = (
        stopped(stop_a, a, WITHIN).await,
        stopped(stop_b, b, WITHIN).await,
    );
    let mut ids = seen.lock().clone();
    ids.sort_unstable();
    assert_eq!(ids, (0..40).collect::<Vec<_>>(), "every message once");
    assert_eq!(a.handled + b.handled, 40);
    assert!(
        a.handled > 0 && b.handled > 0,
        "both took a share: {a:?} {b:?}"
    );
}

#[tokio::test]
async fn a_bad_configuration_fails_before_taking_anything() {
    let layer = layer();
    let noop = |_ctx: WorkerContext, _m: Message| async { Ok(()) };
    let run = |w: Worker| async move { w.run().await.unwrap_err() };

    assert!(matches!(
        run(Worker::new(layer.clone())).await,
        LayerError::Config(_)
    ));
    assert!(matches!(
        run(Worker::new(layer.clone()).channel("bad name", noop)).await,
        LayerError::Name(_)
    ));
    let local = layer.new_channel().await.unwrap();
    let e = run(Worker::new(layer.clone()).channel(&local, noop)).await;
    assert!(e.to_string().contains("process-local"), "{e}");
    let e = run(Worker::new(layer.clone())
        .channel("jobs", noop)
        .channel("jobs", noop))
    .await;
    assert!(e.to_string().contains("twice"), "{e}");

    layer.send("jobs", job(1)).await.unwrap();
    run(Worker::new(layer.clone())
        .channel("jobs", noop)
        .channel("bad name", noop))
    .await;
    assert!(holds_message(&layer, "jobs").await, "nothing was taken");
}

#[tokio::test]
async fn a_closed_layer_ends_the_worker_with_closed() {
    let layer = layer();
    let (_stop, task) = spawn(
        Worker::new(layer.clone()).channel("jobs", |_ctx: WorkerContext, _m: Message| async {
            Ok::<(), Error>(())
        }),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    layer.close().await.unwrap();
    let r = tokio::time::timeout(WITHIN, task).await.unwrap().unwrap();
    assert!(matches!(r, Err(LayerError::Closed)), "{r:?}");
}

#[tokio::test]
async fn a_handler_returning_result_can_use_the_question_mark_on_layer_calls() -> Result<()> {
    // Compiles: the handler's `?` turns a LayerError into the handler Error.
    let layer = layer();
    let worker =
        Worker::new(layer.clone()).channel("jobs", |ctx: WorkerContext, _m: Message| async move {
            ctx.send("results", json!({"type": "result"})).await?;
            Ok(())
        });
    let (stop, task) = spawn(worker);
    layer.send("jobs", job(1)).await?;
    recv(&layer, "results").await;
    assert_eq!(stopped(stop, task, WITHIN).await.handled, 1);
    Ok(())
}
