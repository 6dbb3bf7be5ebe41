//! What a worker reports through the metrics facade, read back from a recorder installed for
//! this test binary: each message's outcome counted once.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

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

#[tokio::test]
async fn worker_outcomes_are_counted() {
    let mut m = test_support::metrics::Recorded::install();

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
    let outcome = |m: &mut test_support::metrics::Recorded, o: &str| {
        m.counter("switchboard_worker_messages_total", &[("outcome", o)])
    };
    while outcome(&mut m, "received") < 4
        || outcome(&mut m, "handled") + outcome(&mut m, "failed") + outcome(&mut m, "skipped") < 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not take its 4 messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got: Vec<u64> = [
        "received",
        "handled",
        "failed",
        "skipped",
        "panicked",
        "abandoned",
    ]
    .iter()
    .map(|o| outcome(&mut m, o))
    .collect();
    assert_eq!(got, [4, 2, 1, 1, 0, 0]);
    stop.stop();
    let stats = running.await.unwrap().unwrap();
    assert_eq!(
        (stats.received, stats.handled, stats.failed, stats.skipped),
        (4, 2, 1, 1)
    );
}
