//! Background workers, as Django Channels' `runworker`: jobs taken off the request path.
//!
//! A [`Worker`] consumes one or more *named* channels (`thumbnails-generate`, not a process's
//! `specific.…!…` channel), with one typed handler per channel — Channels' `runworker
//! thumbnails-generate` with a `ChannelNameRouter({"thumbnails-generate": ThumbnailConsumer})`.
//! Anyone holding the layer sends it work with a plain `send`:
//!
//! ```python
//! # Django, or a switchboard consumer: layer.send("thumbnails-generate", json!({...}))
//! await channel_layer.send("thumbnails-generate", {"type": "thumbnail.generate", "id": 42})
//! ```
//!
//! - **Typed handlers**: each message is turned into the handler's event type through
//!   [`FromMessage`] — a raw [`Message`], any `Deserialize` type (usually a
//!   `#[serde(tag = "type")]` enum, one variant per message type, as a Channels consumer has one
//!   method per type), or [`Decoded<T>`](switchboard_core::Decoded). A message that does not
//!   decode (an unknown type, a missing field) is logged with its channel and skipped; it never
//!   stops the worker.
//! - **A context** ([`WorkerContext`]) gives the handler the layer — to `group_send` a result
//!   to the pages waiting for it, or `send` it on — and the channel the message came on.
//! - **Concurrency** ([`Worker::concurrency`]): how many handlers run at once, over all the
//!   worker's channels. The default, 1, is Channels' order: a message is taken only after the
//!   previous one's handler has returned. With N > 1, messages are still *taken and started* in
//!   the order they arrive, but they run side by side and *complete* in any order. A worker
//!   takes a message only when it has a free slot, so on the Redis core layer the messages it
//!   cannot start yet stay in Redis, for the other worker processes on the same channel.
//! - **Errors and panics** in a handler are logged (with the channel and the message type) and
//!   counted ([`WorkerStats`]); the worker goes on with the next message.
//! - **At most once**: a message is taken from the layer once, by one worker, and is gone from
//!   the layer when its handler starts. A handler that fails or panics is **not retried**, and a
//!   message taken by a process that dies is lost — as with Channels, whose layers have no
//!   acknowledgement. A job that must not be lost needs its own record (a database row the
//!   handler marks done) and a sweeper that sends the unfinished ones again.
//! - **Graceful stop** ([`Worker::run_until`], [`StopHandle`]): the worker stops taking
//!   messages at once, waits up to [`Worker::stop_timeout`] (default 30 s) for the handlers in
//!   flight, then aborts those still running (counted in [`WorkerStats::abandoned`]). Messages
//!   not yet taken stay in the layer for the next worker.
//!
//! # Named channels on each layer
//!
//! - [`InMemoryLayer`](switchboard_core::InMemoryLayer): one queue per name in the process;
//!   several workers on one name share its messages, each message to one of them.
//! - `RedisLayer` (channels_redis's core layer): the messages wait in the sorted set
//!   `PREFIX` + name, and every process receiving on the name pops from it (`BZPOPMIN` /
//!   `BZMPOP`) only for the receives it has waiting. Several worker processes — Rust or Django —
//!   share the work; each message goes to one of them.
//! - `RedisPubSubLayer` (channels_redis's pub/sub layer): a named channel is a Redis pub/sub
//!   channel, and **every** process subscribed to it gets **every** message: two worker
//!   processes on one name each handle each message. Nothing is stored: a message sent while no
//!   worker is subscribed is lost. Use it for broadcasts, not for sharing work.
//! - `RedisClusterLayer`: a named channel is the shard channel `PREFIX:channel:{name}`, with the
//!   pub/sub layer's semantics (every subscribed process gets every message).
//!
//! # Example
//!
//! ```
//! use serde::Deserialize;
//! use switchboard::worker::{Worker, WorkerContext};
//! use switchboard::{InMemoryLayer, Layer, LayerConfig, Result};
//!
//! #[derive(Deserialize)]
//! #[serde(tag = "type")]
//! enum Job {
//!     #[serde(rename = "thumbnail.generate")]
//!     Generate { id: u64 },
//! }
//!
//! async fn generate(ctx: WorkerContext, job: Job) -> Result<()> {
//!     let Job::Generate { id } = job;
//!     // ... the slow part ...
//!     let done = serde_json::json!({"type": "thumbnail.done", "id": id});
//!     ctx.group_send("thumbnails", done).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
//! let layer = Layer::new(InMemoryLayer::new(LayerConfig::default()));
//! let page = layer.new_channel().await?;
//! layer.group_add("thumbnails", &page).await?;
//!
//! let worker = Worker::new(layer.clone())
//!     .channel("thumbnails-generate", generate)
//!     .concurrency(4);
//! let stop = worker.stop_handle();
//! let running = tokio::spawn(worker.run());
//!
//! layer.send("thumbnails-generate", serde_json::json!({"type": "thumbnail.generate", "id": 7})).await?;
//! let done = layer.receive(&page).await?;
//! assert_eq!(done.get("id").and_then(|v| v.as_i64()), Some(7));
//!
//! stop.stop();
//! let stats = running.await??;
//! assert_eq!(stats.handled, 1);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use switchboard_core::{
    ChannelName, DecodeError, FromMessage, IntoChannelName, IntoGroupName, IntoMessage, Layer,
    LayerError, Message, Receiver,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::Result;

/// How long a stopping worker waits for its handlers in flight, by default.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker waits before it asks the layer again for a channel it could not receive on.
const RECEIVER_RETRY: Duration = Duration::from_secs(1);

/// What a worker's handler gets with each message: the layer, and the channel the message came
/// on (Channels' `self.channel_layer` and `self.scope["channel"]`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerContext {
    layer: Layer,
    channel: ChannelName,
}

impl WorkerContext {
    /// The channel layer: send results on, group_send them to the pages waiting.
    pub fn layer(&self) -> &Layer {
        &self.layer
    }

    /// The named channel this message came on.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// Sends `message` to `channel` ([`Layer::send`]).
    pub async fn send(
        &self,
        channel: impl IntoChannelName,
        message: impl IntoMessage,
    ) -> Result<()> {
        Ok(self.layer.send(channel, message).await?)
    }

    /// Sends `message` to every member of `group` ([`Layer::group_send`]).
    pub async fn group_send(
        &self,
        group: impl IntoGroupName,
        message: impl IntoMessage,
    ) -> Result<()> {
        Ok(self.layer.group_send(group, message).await?)
    }
}

/// Stops a running [`Worker`] from anywhere: it takes no message after [`stop`](Self::stop)
/// and ends once its handlers in flight have finished (or its stop timeout has passed).
/// Cloneable; get one from [`Worker::stop_handle`] before running the worker.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl StopHandle {
    /// Tells the worker to stop. Calling it again, or after the worker ended, does nothing.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

/// What a worker did, returned when it ends. Every message taken is counted once: `received`
/// is the sum of the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Messages taken from the layer.
    pub received: u64,
    /// Handlers that returned `Ok`.
    pub handled: u64,
    /// Handlers that returned an error (logged; not retried).
    pub failed: u64,
    /// Handlers that panicked (logged; not retried).
    pub panicked: u64,
    /// Messages that did not decode into the handler's event type (an unknown `"type"`, a
    /// missing field): logged and skipped.
    pub skipped: u64,
    /// Handlers still running when the stop timeout passed: aborted.
    pub abandoned: u64,
}

/// What happened to a message, for [`WorkerStats`] and the metrics.
#[derive(Clone, Copy)]
enum Counted {
    Received,
    Handled,
    Failed,
    Panicked,
    Skipped,
    Abandoned,
}

impl WorkerStats {
    /// Counts `outcome` here and in `switchboard_worker_messages_total`.
    fn count(&mut self, outcome: Counted) {
        let (field, label) = match outcome {
            Counted::Received => (&mut self.received, "received"),
            Counted::Handled => (&mut self.handled, "handled"),
            Counted::Failed => (&mut self.failed, "failed"),
            Counted::Panicked => (&mut self.panicked, "panicked"),
            Counted::Skipped => (&mut self.skipped, "skipped"),
            Counted::Abandoned => (&mut self.abandoned, "abandoned"),
        };
        *field += 1;
        crate::metrics::worker_message(label);
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A handler with its event type erased: decodes the message and starts the handler.
trait Route: Send + Sync + 'static {
    fn start(&self, ctx: WorkerContext, message: Message) -> Result<HandlerFuture, DecodeError>;
}

struct Typed<E, F> {
    handler: F,
    _event: PhantomData<fn(E)>,
}

impl<E, F, Fut> Route for Typed<E, F>
where
    E: FromMessage,
    F: Fn(WorkerContext, E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    fn start(&self, ctx: WorkerContext, message: Message) -> Result<HandlerFuture, DecodeError> {
        let event = E::from_message(message)?;
        Ok(Box::pin((self.handler)(ctx, event)))
    }
}

struct Channel {
    name: ChannelName,
    route: Arc<dyn Route>,
}

/// A background worker on named channels: Channels' `runworker` with a `ChannelNameRouter`.
/// See the [module docs](self) for the model, and for what each layer does with named
/// channels.
///
/// Built with [`new`](Self::new), [`channel`](Self::channel) (once per channel) and the
/// settings; run with [`run`](Self::run) or [`run_until`](Self::run_until). A bad channel name
/// is reported by the run method, which then takes no message.
pub struct Worker {
    layer: Layer,
    channels: Vec<Channel>,
    invalid: Option<LayerError>,
    concurrency: usize,
    stop_timeout: Duration,
    stop: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field(
                "channels",
                &self.channels.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.concurrency)
            .field("stop_timeout", &self.stop_timeout)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker on `layer`, with no channel yet, one handler at a time, and a 30 s stop
    /// timeout.
    pub fn new(layer: Layer) -> Worker {
        Worker {
            layer,
            channels: Vec::new(),
            invalid: None,
            concurrency: 1,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            stop: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Consumes the named channel `channel` with `handler`: an `async fn(WorkerContext, E) ->
    /// Result<()>`, where `E` is the event type each message is decoded into
    /// ([`FromMessage`]: a [`Message`], a `Deserialize` enum by `"type"`, or
    /// [`Decoded<T>`](switchboard_core::Decoded)).
    ///
    /// The name must be a valid channel name without `!` (a process-local channel is its
    /// process's, not a worker's), and given once; otherwise the run method fails with
    /// [`LayerError::Name`] or [`LayerError::Config`].
    pub fn channel<E, F, Fut>(mut self, channel: impl IntoChannelName, handler: F) -> Worker
    where
        E: FromMessage,
        F: Fn(WorkerContext, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let name = match channel.into_channel_name() {
            Ok(name) => name,
            Err(e) => {
                self.invalid.get_or_insert(LayerError::Name(e));
                return self;
            }
        };
        if name.is_process_local() {
            self.invalid.get_or_insert(LayerError::Config(format!(
                "a worker consumes named channels; {name} is a process-local channel"
            )));
            return self;
        }
        if self.channels.iter().any(|c| c.name == name) {
            self.invalid.get_or_insert(LayerError::Config(format!(
                "the worker was given channel {name} twice"
            )));
            return self;
        }
        self.channels.push(Channel {
            name,
            route: Arc::new(Typed {
                handler,
                _event: PhantomData,
            }),
        });
        self
    }

    /// How many handlers may run at once, over all the worker's channels (0 counts as 1).
    /// Default 1: each message is taken after the previous handler returned, as in Channels.
    /// With more, messages start in the order they are taken and complete in any order.
    pub fn concurrency(mut self, handlers: usize) -> Worker {
        self.concurrency = handlers.max(1);
        self
    }

    /// How long a stopping worker waits for its handlers in flight before it aborts them.
    /// Default 30 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Worker {
        self.stop_timeout = timeout;
        self
    }

    /// A handle that stops the worker once it runs (or at once, if stopped before).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Runs until a [`StopHandle`] fires (or the layer closes), then stops gracefully.
    pub async fn run(self) -> switchboard_core::Result<WorkerStats> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `stop` completes or a [`StopHandle`] fires, then stops taking messages, waits
    /// up to the [stop timeout](Self::stop_timeout) for the handlers in flight, aborts the rest,
    /// and returns what it did.
    ///
    /// Fails at once, having taken nothing, if the worker has no channel or a bad one, or if
    /// the layer cannot receive on one (the pub/sub layers subscribe here, and Redis may be
    /// down). Fails with [`LayerError::Closed`] if the layer is closed under it (after waiting
    /// for its handlers, as for a stop).
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send,
    ) -> switchboard_core::Result<WorkerStats> {
        let Worker {
            layer,
            channels,
            invalid,
            concurrency,
            stop_timeout,
            stop: stop_sender,
        } = self;
        if let Some(e) = invalid {
            return Err(e);
        }
        if channels.is_empty() {
            return Err(LayerError::Config(
                "a worker needs at least one channel to consume".into(),
            ));
        }
        let mut receivers = Vec::with_capacity(channels.len());
        for c in &channels {
            receivers.push(Some(layer.receiver(&c.name).await?));
        }
        let mut run = Run {
            layer,
            channels,
            receivers,
            tasks: JoinSet::new(),
            stats: WorkerStats::default(),
            next: 0,
        };
        tracing::info!(
            channels = ?run.channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            concurrency,
            "worker started"
        );

        let mut stopped = stop_sender.subscribe();
        let stop = async move {
            tokio::select! {
                () = stop => {}
                // The sender lives in `stop_sender` until the end of this function.
                _ = stopped.wait_for(|s| *s) => {}
            }
        };
        tokio::pin!(stop);

        let mut closed = false;
        loop {
            while let Some(done) = run.tasks.try_join_next() {
                run.finished(done);
            }
            let free = run.tasks.len() < concurrency;
            if free && run.receivers.iter().any(Option::is_none) {
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    () = run.reopen() => {}
                }
                continue;
            }
            let next = run.next;
            let step = {
                let receivers = &mut run.receivers;
                let tasks = &mut run.tasks;
                tokio::select! {
                    biased;
                    () = &mut stop => Step::Stop,
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => Step::Done(done),
                    (i, r) = std::future::poll_fn(|cx| poll_any(receivers, next, cx)), if free => {
                        Step::Message(i, r)
                    }
                }
            };
            match step {
                Step::Stop => break,
                Step::Done(done) => run.finished(done),
                Step::Message(i, Ok(message)) => {
                    run.next = (i + 1) % run.channels.len();
                    run.start(i, message);
                    if run.tasks.len() >= concurrency {
                        // No slot left: the other channels' receivers stop asking for messages
                        // (on Redis, for other processes to take), and are made again when a
                        // slot frees.
                        for (j, r) in run.receivers.iter_mut().enumerate() {
                            if j != i {
                                *r = None;
                            }
                        }
                    }
                }
                Step::Message(_, Err(LayerError::Closed)) => {
                    closed = true;
                    break;
                }
                Step::Message(i, Err(e)) => {
                    tracing::warn!(channel = %run.channels[i].name, error = %e, "worker: receiving failed; retrying");
                    run.receivers[i] = None;
                    tokio::select! {
                        biased;
                        () = &mut stop => break,
                        () = tokio::time::sleep(RECEIVER_RETRY) => {}
                    }
                }
            }
        }

        // Stopping: take nothing more, wait for the handlers in flight.
        run.receivers.clear();
        let in_flight = run.tasks.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                timeout = ?stop_timeout,
                "worker stopping: waiting for its handlers"
            );
        }
        let drained = tokio::time::timeout(stop_timeout, async {
            while let Some(done) = run.tasks.join_next().await {
                run.finished(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = run.tasks.len(),
                timeout = ?stop_timeout,
                "worker stopping: handlers still running after the stop timeout are aborted"
            );
            run.tasks.abort_all();
            while let Some(done) = run.tasks.join_next().await {
                match done {
                    Err(e) if e.is_cancelled() => {
                        run.stats.count(Counted::Abandoned);
                    }
                    done => run.finished(done),
                }
            }
        }
        drop(stop_sender);
        tracing::info!(stats = ?run.stats, "worker stopped");
        if closed {
            return Err(LayerError::Closed);
        }
        Ok(run.stats)
    }
}

/// What a handler task ends with: its channel's index, the message type, and how it went.
type Outcome = (usize, String, std::thread::Result<Result<()>>);

enum Step {
    Stop,
    Done(std::result::Result<Outcome, tokio::task::JoinError>),
    Message(usize, switchboard_core::Result<Message>),
}

/// A running worker's state.
struct Run {
    layer: Layer,
    channels: Vec<Channel>,
    /// One per channel; `None` while the worker has no slot for it, or after the layer failed.
    receivers: Vec<Option<Receiver>>,
    tasks: JoinSet<Outcome>,
    stats: WorkerStats,
    /// The channel polled first next time, so that a busy channel does not starve the others.
    next: usize,
}

impl Run {
    /// Makes the receivers that are missing again; waits a little after a failure.
    async fn reopen(&mut self) {
        let mut failed = false;
        for (c, r) in self.channels.iter().zip(self.receivers.iter_mut()) {
            if r.is_some() {
                continue;
            }
            match self.layer.receiver(&c.name).await {
                Ok(rx) => *r = Some(rx),
                Err(e) => {
                    tracing::warn!(channel = %c.name, error = %e, "worker: cannot receive on the channel; retrying");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(RECEIVER_RETRY).await;
        }
    }

    /// Decodes `message`, taken from channel `i`, and starts its handler (or skips it).
    fn start(&mut self, i: usize, message: Message) {
        self.stats.count(Counted::Received);
        let channel = &self.channels[i];
        let message_type = message.message_type().to_owned();
        let ctx = WorkerContext {
            layer: self.layer.clone(),
            channel: channel.name.clone(),
        };
        let route = channel.route.clone();
        // Building the handler's future runs user code (decoding, the handler up to its first
        // await point in a plain `fn` returning a future): a panic there is caught too.
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| route.start(ctx, message)));
        match started {
            Ok(Ok(handler)) => {
                self.tasks.spawn(async move {
                    let outcome = AssertUnwindSafe(handler).catch_unwind().await;
                    (i, message_type, outcome)
                });
            }
            Ok(Err(e)) => {
                self.stats.count(Counted::Skipped);
                tracing::warn!(channel = %channel.name, r#type = %message_type, error = %e, "worker: skipping a message its handler does not take");
            }
            Err(panic) => {
                self.stats.count(Counted::Panicked);
                tracing::error!(channel = %channel.name, r#type = %message_type, panic = panic_text(&*panic), "worker: handler panicked; the message is not retried");
            }
        }
    }

    /// Counts and logs a handler that ended.
    fn finished(&mut self, done: std::result::Result<Outcome, tokio::task::JoinError>) {
        match done {
            Ok((_, _, Ok(Ok(())))) => {
                self.stats.count(Counted::Handled);
            }
            Ok((i, message_type, Ok(Err(e)))) => {
                self.stats.count(Counted::Failed);
                tracing::warn!(channel = %self.channels[i].name, r#type = %message_type, error = %e, "worker: handler failed; the message is not retried");
            }
            Ok((i, message_type, Err(panic))) => {
                self.stats.count(Counted::Panicked);
                tracing::error!(channel = %self.channels[i].name, r#type = %message_type, panic = panic_text(&*panic), "worker: handler panicked; the message is not retried");
            }
            // The task's panic is caught inside it; only an abort ends it otherwise.
            Err(e) => {
                self.stats.count(Counted::Abandoned);
                tracing::warn!(error = %e, "worker: handler task ended abnormally");
            }
        }
    }
}

/// The first message waiting on any receiver, starting from channel `first`.
fn poll_any(
    receivers: &mut [Option<Receiver>],
    first: usize,
    cx: &mut Context<'_>,
) -> Poll<(usize, switchboard_core::Result<Message>)> {
    let n = receivers.len();
    for k in 0..n {
        let i = (first + k) % n;
        if let Some(r) = &mut receivers[i]
            && let Poll::Ready(m) = r.poll_recv(cx)
        {
            return Poll::Ready((i, m));
        }
    }
    Poll::Pending
}

/// A panic's message, when it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
