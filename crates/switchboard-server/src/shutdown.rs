//! Graceful shutdown: stop taking connections, close the open ones with 1001 in batches, let
//! their `disconnect` handlers run and their groups go, then close the layer.
//!
//! A [`Shutdown`] is shared by the endpoints it stops ([`Endpoint::shutdown`]) and by the code
//! that serves them. [`Shutdown::drain`] does the rest, as Phoenix's socket drainer does:
//!
//! 1. new connections are refused (503, `server shutting down`) and [`Shutdown::draining`]
//!    completes — give it to the server as its "stop accepting" signal (axum's
//!    `with_graceful_shutdown`, or [`Server::serve_with_shutdown`]); readiness probes should
//!    answer 503 from here on ([`Shutdown::is_draining`]);
//! 2. the open connections are told to close, [`DrainConfig::batch_size`] at a time every
//!    [`DrainConfig::batch_interval`], so that clients reconnecting elsewhere do not arrive all
//!    at once: each sends its client a 1001 close frame, runs its consumer's `disconnect`, leaves
//!    its groups and discards its channel, and finishes the close handshake (bounded by its
//!    `close_timeout`);
//! 3. it waits until every connection has ended, or until [`DrainConfig::deadline`] has passed
//!    since the drain began;
//! 4. it closes the layers of the endpoints it stopped.
//!
//! axum's graceful shutdown does not wait for upgraded WebSocket connections
//! (tokio-rs/axum#3003): this is what does.
//!
//! Other long-lived responses (an event stream, a long poll) take part through a [`Guard`]:
//! [`Shutdown::guard`] registers one, which is told to close with the connections.
//!
//! ```
//! use std::time::Duration;
//! use switchboard::{DrainConfig, Endpoint, Frame, InMemoryLayer, Message, Scope, Shutdown};
//! # use switchboard::{Connection, Consumer, Result};
//! # struct Echo;
//! # impl Consumer for Echo {
//! #     type Incoming = Frame;
//! #     type Event = Message;
//! #     async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
//! #         conn.send_text(frame.text()?).await
//! #     }
//! # }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let shutdown = Shutdown::new();
//! let endpoint = Endpoint::new(InMemoryLayer::default(), |_: &Scope| Echo).shutdown(&shutdown);
//! // … serve `endpoint`, with `shutdown.draining()` as the server's stop signal …
//! # let _ = endpoint;
//! let report = shutdown
//!     .drain(DrainConfig::default().deadline(Duration::from_secs(10)))
//!     .await;
//! assert_eq!(report.remaining, 0);
//! # }
//! ```
//!
//! [`Endpoint::shutdown`]: crate::Endpoint::shutdown
//! [`Server::serve_with_shutdown`]: crate::standalone::Server::serve_with_shutdown

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use switchboard_core::Layer;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How a [`Shutdown::drain`] paces itself.
///
/// The defaults close 1,000 connections every 100 ms (10,000 a second) and give up waiting
/// after 25 s, inside the 30 s a Kubernetes pod gets between `SIGTERM` and `SIGKILL`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DrainConfig {
    /// Connections told to close at once. Default 1,000.
    pub batch_size: usize,
    /// Pause between batches. Default 100 ms.
    pub batch_interval: Duration,
    /// How long after the drain began to stop waiting for connections to end. Default 25 s.
    pub deadline: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            batch_size: 1000,
            batch_interval: Duration::from_millis(100),
            deadline: Duration::from_secs(25),
        }
    }
}

impl DrainConfig {
    /// Sets [`batch_size`](DrainConfig::batch_size) (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets [`batch_interval`](DrainConfig::batch_interval).
    pub fn batch_interval(mut self, every: Duration) -> Self {
        self.batch_interval = every;
        self
    }

    /// Sets [`deadline`](DrainConfig::deadline).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

/// What a drain did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections (and guards) that were open when the drain began and were told to close.
    pub told: usize,
    /// Connections still open when the drain stopped waiting (0 unless the deadline passed).
    pub remaining: usize,
    /// How long the drain took.
    pub elapsed: Duration,
}

/// A shutdown handle: endpoints that share it refuse new connections and close theirs when it
/// drains. Cheap to clone; every clone is the same handle. See the [module docs](self).
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Becomes `true` when the drain begins (set under `state`'s lock, so that no guard is
    /// registered after a drain took its list).
    draining: watch::Sender<bool>,
    /// Notified when the last registered connection ends.
    empty: Notify,
    /// The layers to close after the connections.
    layers: Mutex<Vec<Layer>>,
}

#[derive(Default)]
struct State {
    next: u64,
    open: BTreeMap<u64, Arc<Slot>>,
}

/// One registration: what the drain sets and wakes, and what the guard removes when dropped.
struct Slot {
    shutdown: Shutdown,
    id: u64,
    closing: AtomicBool,
    waker: AtomicWaker,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("draining", &self.is_draining())
            .field("open", &self.open())
            .finish()
    }
}

impl Shutdown {
    /// A handle with nothing registered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        *self.0.draining.borrow()
    }

    /// Completes when a drain begins: the server's signal to stop accepting.
    pub async fn draining(&self) {
        let mut rx = self.0.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Connections (and guards) open now.
    pub fn open(&self) -> usize {
        self.0.state.lock().open.len()
    }

    /// Registers a long-lived response (a connection, an event stream) that the drain should
    /// close; `None` once the drain has begun (refuse it, with 503). Dropping the guard
    /// deregisters it.
    pub fn guard(&self) -> Option<Guard> {
        let mut s = self.0.state.lock();
        if self.is_draining() {
            return None;
        }
        let id = s.next;
        s.next += 1;
        let slot = Arc::new(Slot {
            shutdown: self.clone(),
            id,
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        s.open.insert(id, slot.clone());
        Some(Guard { slot })
    }

    /// Closes `layer` at the end of a drain (the endpoints given this handle register theirs).
    pub fn close_layer(&self, layer: &Layer) {
        let mut layers = self.0.layers.lock();
        if !layers
            .iter()
            .any(|l| std::ptr::addr_eq(l.backend(), layer.backend()))
        {
            layers.push(layer.clone());
        }
    }

    /// Stops taking connections without closing the open ones (a drain begins with this).
    pub fn begin(&self) {
        let _registering = self.0.state.lock();
        self.0.draining.send_replace(true);
    }

    /// Drains: refuses new connections, closes the open ones in batches, waits for them (until
    /// the deadline) and closes the layers. Calling it again (or concurrently) drains what is
    /// still open.
    pub async fn drain(&self, config: DrainConfig) -> DrainReport {
        let start = Instant::now();
        let deadline = start + config.deadline;
        let told: Vec<Arc<Slot>> = {
            let s = self.0.state.lock();
            self.0.draining.send_replace(true);
            s.open.values().cloned().collect()
        };
        tracing::info!(
            connections = told.len(),
            batch_size = config.batch_size,
            "draining: closing connections"
        );
        let batches = told.chunks(config.batch_size.max(1));
        let count = batches.len();
        for (i, batch) in batches.enumerate() {
            for slot in batch {
                slot.closing.store(true, Ordering::Release);
                slot.waker.wake();
            }
            if i + 1 < count {
                tokio::time::sleep_until(deadline.min(Instant::now() + config.batch_interval))
                    .await;
            }
        }
        loop {
            let notified = self.0.empty.notified();
            if self.open() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let remaining = self.open();
        if remaining > 0 {
            tracing::warn!(
                remaining,
                "drain deadline passed with connections still open"
            );
        }
        let layers = std::mem::take(&mut *self.0.layers.lock());
        for layer in layers {
            if let Err(e) = layer.close().await {
                tracing::warn!(error = %e, "closing the channel layer failed");
            }
        }
        let report = DrainReport {
            told: told.len(),
            remaining,
            elapsed: start.elapsed(),
        };
        tracing::info!(told = report.told, remaining, elapsed = ?report.elapsed, "drained");
        report
    }
}

/// A registration with a [`Shutdown`]: told to close when the drain reaches it, deregistered
/// when dropped. One pointer: every connection's task holds one.
pub struct Guard {
    slot: Arc<Slot>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("id", &self.slot.id)
            .field("closing", &self.is_closing())
            .finish()
    }
}

impl Guard {
    /// Whether the drain has told this one to close.
    pub fn is_closing(&self) -> bool {
        self.slot.closing.load(Ordering::Acquire)
    }

    /// Ready once the drain has told this one to close.
    pub fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closing() {
            return Poll::Ready(());
        }
        self.slot.waker.register(cx.waker());
        if self.is_closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes once the drain has told this one to close.
    pub async fn closing(&self) {
        std::future::poll_fn(|cx| self.poll_closing(cx)).await;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let inner = &self.slot.shutdown.0;
        let empty = {
            let mut s = inner.state.lock();
            s.open.remove(&self.slot.id);
            s.open.is_empty()
        };
        if empty {
            inner.empty.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn closes_in_batches_and_waits_for_every_guard() {
        let shutdown = Shutdown::new();
        let guards: Vec<Guard> = (0..5).map(|_| shutdown.guard().expect("open")).collect(); // ok: test harness, a panic fails the test
        let config = DrainConfig::default()
            .batch_size(2)
            .batch_interval(Duration::from_secs(1))
            .deadline(Duration::from_secs(30));
        let drain = tokio::spawn({
            let s = shutdown.clone();
            async move { s.drain(config).await }
        });
        tokio::task::yield_now().await;
        assert!(shutdown.is_draining());
        assert!(shutdown.guard().is_none(), "no new guard while draining");
        let closing = |gs: &[Guard]| gs.iter().filter(|g| g.is_closing()).count();
        assert_eq!(closing(&guards), 2, "first batch");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(closing(&guards), 4, "second batch, a second later");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(closing(&guards), 5, "third batch");
        assert!(!drain.is_finished(), "waits while guards are open");
        drop(guards);
        let report = drain.await.expect("drain task"); // ok: test harness, a panic fails the test
        assert_eq!(report.told, 5);
        assert_eq!(report.remaining, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_waiting_at_the_deadline() {
        let shutdown = Shutdown::new();
        let _stuck = shutdown.guard().expect("open"); // ok: test harness, a panic fails the test
        let config = DrainConfig::default().deadline(Duration::from_secs(3));
        let report = shutdown.drain(config).await;
        assert_eq!((report.told, report.remaining), (1, 1));
        assert_eq!(report.elapsed, Duration::from_secs(3));
    }

    #[tokio::test]
    async fn closing_wakes_the_waiting_task() {
        let shutdown = Shutdown::new();
        let guard = shutdown.guard().expect("open"); // ok: test harness, a panic fails the test
        let waiter = tokio::spawn(async move {
            guard.closing().await;
        });
        tokio::task::yield_now().await;
        let report = shutdown.drain(DrainConfig::default()).await;
        waiter.await.expect("woken"); // ok: test harness, a panic fails the test
        assert_eq!(report.remaining, 0);
    }
}
