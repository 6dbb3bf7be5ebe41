//! What the worker test binaries share: running a worker in a task, and stopping it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use switchboard::LayerError;
use switchboard::worker::{StopHandle, Worker, WorkerStats};
use tokio::task::JoinHandle;

/// What a worker's run ends with.
pub type Run = std::result::Result<WorkerStats, LayerError>;

/// Runs `worker` in a task; its stop handle and the task.
pub fn spawn(worker: Worker) -> (StopHandle, JoinHandle<Run>) {
    let stop = worker.stop_handle();
    (stop, tokio::spawn(worker.run()))
}

/// Stops the worker and waits (up to `within`) for its stats.
pub async fn stopped(stop: StopHandle, task: JoinHandle<Run>, within: Duration) -> WorkerStats {
    stop.stop();
    tokio::time::timeout(within, task)
        .await
        .unwrap_or_else(|_| panic!("the worker did not stop within {within:?}"))
        .unwrap()
        .unwrap()
}
