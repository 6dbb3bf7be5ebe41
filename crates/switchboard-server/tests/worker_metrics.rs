//! What a worker reports through the metrics facade, read back from a recorder installed for
//! this test binary: each message's outcome counted once.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::Deserialize;
use serde_json::json;
use switchboard::worker::{Worker, WorkerContext};
use switchboard::{Error, InMemoryLayer, Layer, LayerConfig};

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Job {
    #[serde(rename = "job.run")]
    Run { id: u64 },
}

fn outcomes(snapshotter: &Snapshotter) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "switchboard_worker_messages_total")
        .filter_map(|(k, _, _, v)| {
            let outcome = k.key().labels().find(|l| l.key() == "outcome")?;
            match v {
                DebugValue::Counter(n) => Some((outcome.value().to_owned(), n)),
                _ => None,
            }
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn worker_outcomes_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let layer = Layer::new(InMemoryLayer::new(LayerConfig::default()));
    let worker =
        Worker::new(layer.clone()).channel("jobs", |_ctx: WorkerContext, job: Job| async move {
            let Job::Run { id } = job;
            if id == 3 {
                return Err(Error::protocol("job 3 fails"));
            }
            Ok(())
        });
    let stop = worker.stop_handle();
    let running = tokio::spawn(worker.run());
    for id in 1..=3 {
        layer
            .send("jobs", json!({"type": "job.run", "id": id}))
            .await
            .unwrap();
    }
    layer
        .send("jobs", json!({"type": "job.unknown"}))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let want = vec![
        ("failed".to_owned(), 1),
        ("handled".to_owned(), 2),
        ("received".to_owned(), 4),
        ("skipped".to_owned(), 1),
    ];
    while outcomes(&snapshotter) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            outcomes(&snapshotter)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.stop();
    let stats = running.await.unwrap().unwrap();
    assert_eq!(
        (stats.received, stats.handled, stats.failed, stats.skipped),
        (4, 2, 1, 1)
    );
}
