//! Opt-in concurrent handlers (`Consumer::CONCURRENCY`, `Connection::spawn`): with the default
//! a spawned task runs to its end before the next input, as Channels does; with N, up to N − 1
//! tasks run while the consumer takes its next inputs, never more; a task's frames keep their
//! order; a task's error is an error frame and its panic a 1011; disconnect waits for tasks.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchboard::testing::Communicator;
use switchboard::{
    CloseCode, Connection, Consumer, Error, Frame, InMemoryLayer, Message, Result, Scope,
};

/// "slow NAME": a task that waits 200 ms, then sends "NAME 1", "NAME 2"; "fast": "fast" at
/// once; "fail": a task that fails; "panic": a task that panics.
struct Worker<const N: usize> {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    disconnected_with_running: Arc<AtomicUsize>,
}

impl<const N: usize> Consumer for Worker<N> {
    type Incoming = Frame;
    type Event = Message;
    const CONCURRENCY: usize = N;

    async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
        let text = frame.text()?.to_owned();
        let client = conn.handle();
        let (running, most) = (self.running.clone(), self.most.clone());
        match text.split_once(' ') {
            Some(("slow", name)) => {
                let name = name.to_owned();
                conn.spawn(async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    client.send_text(format!("{name} 1")).await?;
                    client.send_text(format!("{name} 2")).await?;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }
            _ if text == "fail" => {
                conn.spawn(async { Err(Error::protocol("the task failed")) })
                    .await
            }
            _ if text == "panic" => conn.spawn(async { panic!("a task panicked") }).await,
            _ => conn.send_text(text).await,
        }
    }

    async fn disconnect(&mut self, _conn: &mut Connection, _code: CloseCode) -> Result<()> {
        self.disconnected_with_running
            .store(self.running.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(())
    }
}

struct Probe<const N: usize> {
    comm: Communicator<Worker<N>>,
    most: Arc<AtomicUsize>,
    disconnected_with_running: Arc<AtomicUsize>,
}

async fn start<const N: usize>() -> Probe<N> {
    let most = Arc::new(AtomicUsize::new(0));
    let disconnected_with_running = Arc::new(AtomicUsize::new(usize::MAX));
    let worker = Worker::<N> {
        running: Arc::new(AtomicUsize::new(0)),
        most: most.clone(),
        disconnected_with_running: disconnected_with_running.clone(),
    };
    let mut comm = Communicator::new(InMemoryLayer::default(), Scope::new("/ws/"), worker)
        .with_timeout(Duration::from_secs(5));
    assert!(comm.connect().await.is_accepted());
    Probe {
        comm,
        most,
        disconnected_with_running,
    }
}

async fn texts<const N: usize>(p: &mut Probe<N>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(p.comm.receive_text().await.unwrap());
    }
    out
}

#[tokio::test]
async fn by_default_a_spawned_task_ends_before_the_next_input() {
    let mut p = start::<1>().await;
    p.comm.send_text("slow a").await.unwrap();
    p.comm.send_text("fast").await.unwrap();
    assert_eq!(texts(&mut p, 3).await, ["a 1", "a 2", "fast"]);
    assert_eq!(p.most.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn with_concurrency_tasks_run_beside_the_next_inputs_and_never_more_than_allowed() {
    let mut p = start::<3>().await;
    for name in ["a", "b", "c", "d"] {
        p.comm.send_text(format!("slow {name}")).await.unwrap();
    }
    p.comm.send_text("fast").await.unwrap();
    let got = texts(&mut p, 9).await;
    // Two tasks at most beside the handler: "slow c" waited for a or b to end, and "fast"
    // (after "slow d") waited for room too, so it comes after the first task's frames.
    assert_eq!(p.most.load(Ordering::SeqCst), 2, "{got:?}");
    let pos = |t: &str| got.iter().position(|g| g == t).unwrap();
    assert!(pos("fast") < pos("d 1"), "fast did not wait for d: {got:?}");
    assert!(pos("fast") > pos("a 1").min(pos("b 1")), "{got:?}");
    // Each task's own frames stay in order.
    for name in ["a", "b", "c", "d"] {
        assert!(
            pos(&format!("{name} 1")) < pos(&format!("{name} 2")),
            "{got:?}"
        );
    }
}

#[tokio::test]
async fn a_fast_input_overtakes_a_slow_task() {
    let mut p = start::<2>().await;
    p.comm.send_text("slow a").await.unwrap();
    p.comm.send_text("fast").await.unwrap();
    assert_eq!(texts(&mut p, 3).await, ["fast", "a 1", "a 2"]);
}

#[tokio::test]
async fn a_failing_task_is_an_error_frame_and_a_panicking_one_closes_with_1011() {
    let mut p = start::<2>().await;
    p.comm.send_text("fail").await.unwrap();
    let err = p.comm.receive_json().await.unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"], "the task failed");
    p.comm.send_text("fast").await.unwrap();
    assert_eq!(p.comm.receive_text().await.unwrap(), "fast");
    p.comm.send_text("panic").await.unwrap();
    let (code, _) = p.comm.receive_close().await.unwrap();
    assert_eq!(code, CloseCode::INTERNAL);
}

#[tokio::test]
async fn disconnect_runs_after_the_tasks() {
    let mut p = start::<3>().await;
    p.comm.send_text("slow a").await.unwrap();
    p.comm.send_text("slow b").await.unwrap();
    p.comm.send_text("fast").await.unwrap();
    assert_eq!(p.comm.receive_text().await.unwrap(), "fast");
    p.comm.disconnect(CloseCode::NORMAL).await;
    p.comm.wait().await;
    assert_eq!(p.disconnected_with_running.load(Ordering::SeqCst), 0);
}
