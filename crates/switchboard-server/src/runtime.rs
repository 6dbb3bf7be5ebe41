//! The consumer runtime: drives one consumer over one WebSocket.
//!
//! One task per connection. It waits for whichever comes first — a client frame, a message on
//! the consumer's channel, a keep-alive tick — and runs the matching handler to completion
//! before taking the next input, so a consumer's handlers never overlap and see inputs in
//! arrival order. While a handler runs (awaiting a database, say), the task keeps writing the
//! frames the handler already queued, so a "working…" frame reaches the client before the
//! handler finishes.
//!
//! Frames a handler sends go into a bounded queue. A client that does not read fills it, and is
//! closed with 1008 instead of growing the server's memory.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::consumer::{CloseCode, Consumer, Context, Event, Frame, Incoming, Out, Outbound, Phase};
use crate::error::Error;
use crate::message::Message;

/// What to do with a client frame that does not decode, or a layer message whose type the
/// consumer does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BadInput {
    /// Log it and send the client `{"type":"error","error":"…"}`; the connection stays up.
    #[default]
    ErrorFrame,
    /// Log it and close the connection with this code (e.g. 4400).
    Close(u16),
}

/// Per-connection settings: limits and keep-alive. The defaults suit many small connections.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Largest message a client may send; bigger ones close the connection with 1009.
    /// Default 64 KiB.
    pub max_message_size: usize,
    /// Read buffer per connection, allocated (and touched) up front; a longer frame grows it.
    /// Default 1 KiB: chat-sized frames fit, and idle connections stay cheap.
    pub read_buffer_size: usize,
    /// Frames are batched up to this size before a write. Default 4 KiB.
    pub write_buffer_size: usize,
    /// Frames a connection may have queued for its client. Default 1,024.
    pub outbound_frames: usize,
    /// Bytes a connection may have queued for its client. Default 1 MiB.
    pub outbound_bytes: usize,
    /// How often to ping the client; `None` disables pings. Default 20 s.
    pub ping_interval: Option<Duration>,
    /// Close the connection (1001) when nothing — no frame, no pong — came from the client for
    /// this long. Default 60 s.
    pub idle_timeout: Duration,
    /// How long to wait for the client's reply to our close frame. Default 2 s.
    pub close_timeout: Duration,
    /// Bad client frames and unknown event types. Default: error frame, stay connected.
    pub bad_input: BadInput,
    /// Re-join the connection's groups every `group_expiry / 2`, so a connection that lives
    /// longer than `group_expiry` keeps its memberships (Channels lets them lapse). Default on.
    pub refresh_groups: bool,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_message_size: 64 * 1024,
            read_buffer_size: 1024,
            write_buffer_size: 4 * 1024,
            outbound_frames: 1024,
            outbound_bytes: 1024 * 1024,
            ping_interval: Some(Duration::from_secs(20)),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(2),
            bad_input: BadInput::ErrorFrame,
            refresh_groups: true,
        }
    }
}

impl ConnectionConfig {
    /// The tungstenite settings these limits imply.
    pub(crate) fn websocket_config(
        &self,
    ) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(self.write_buffer_size)
            .max_write_buffer_size(
                self.write_buffer_size + self.max_message_size.max(self.outbound_bytes) + 1024,
            )
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }

    pub(crate) fn out_limits(&self) -> crate::consumer::OutLimits {
        crate::consumer::OutLimits {
            frames: self.outbound_frames,
            bytes: self.outbound_bytes,
        }
    }
}

/// How the handshake ended.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// Accepted: answer 101 with this subprotocol.
    Accepted(Option<String>),
    /// Refused: answer with this HTTP status.
    Refused(u16),
}

/// Runs `connect`. On refusal, the groups it joined are left and its channel is discarded.
pub(crate) async fn handshake<C: Consumer>(consumer: &mut C, cx: &mut Context) -> Handshake {
    let result = AssertUnwindSafe(consumer.connect(cx)).catch_unwind().await;
    let (phase, subprotocol, was_accepted) = {
        let out = cx.out.lock();
        let accepted = out.phase == Phase::Open
            || (out.phase == Phase::Closed
                && out.frames.iter().any(|f| matches!(f, Out::Close(..))));
        (out.phase, out.subprotocol.clone(), accepted)
    };
    let refusal = match result {
        Ok(Ok(())) if was_accepted => return Handshake::Accepted(subprotocol),
        Ok(Ok(())) => {
            tracing::debug!(
                path = cx.scope().path(),
                ?phase,
                "consumer refused the connection"
            );
            403
        }
        Ok(Err(e)) => {
            tracing::warn!(path = cx.scope().path(), error = %e, "consumer connect failed");
            if was_accepted {
                let _ = cx.close(CloseCode::INTERNAL, "connect failed").await;
                return Handshake::Accepted(subprotocol);
            }
            500
        }
        Err(_) => {
            tracing::error!(path = cx.scope().path(), "consumer connect panicked");
            500
        }
    };
    cleanup(cx).await;
    Handshake::Refused(refusal)
}

/// Leaves the groups joined through `cx` and tells the layer its channel is gone.
pub(crate) async fn cleanup(cx: &mut Context) {
    let layer = cx.layer().clone();
    let channel = cx.channel_name().clone();
    for group in cx.take_groups() {
        if let Err(e) = layer.backend().group_discard(&group, &channel).await {
            tracing::warn!(%group, %channel, error = %e, "group_discard on disconnect failed");
        }
    }
    if let Err(e) = layer.backend().discard_channel(&channel).await {
        tracing::debug!(%channel, error = %e, "discard_channel failed");
    }
}

enum Input {
    Frame(WsMessage),
    SocketError(WsError),
    SocketEnd,
    WriteError(WsError),
    Event(crate::Result<Message>),
    Tick,
}

/// Drains the outbound queue into the socket, then flushes.
struct Writer {
    need_flush: bool,
}

impl Writer {
    fn poll_write<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        ws: &mut T,
        out: &Mutex<Outbound>,
    ) -> Poll<Result<(), WsError>>
    where
        T: Sink<WsMessage, Error = WsError> + Unpin,
    {
        loop {
            if out.lock().frames.is_empty() {
                if self.need_flush {
                    ready!(ws.poll_flush_unpin(cx))?;
                    self.need_flush = false;
                }
                return Poll::Ready(Ok(()));
            }
            ready!(ws.poll_ready_unpin(cx))?;
            let item = {
                let mut o = out.lock();
                let Some(item) = o.frames.pop_front() else {
                    continue;
                };
                if let Out::Frame(f) = &item {
                    o.bytes -= f.len();
                }
                item
            };
            let msg = match item {
                Out::Frame(Frame::Text(t)) => WsMessage::Text(t),
                Out::Frame(Frame::Binary(b)) => WsMessage::Binary(b),
                Out::Close(code, reason) => WsMessage::Close(Some(CloseFrame {
                    code: code.0.into(),
                    reason: reason.into(),
                })),
                Out::Ping => WsMessage::Ping(bytes::Bytes::new()),
            };
            ws.start_send_unpin(msg)?;
            self.need_flush = true;
        }
    }
}

/// Runs `fut` (a handler) to completion while writing what it queues.
async fn drive<F, T>(
    fut: F,
    ws: &mut T,
    out: &Mutex<Outbound>,
    writer: &mut Writer,
    broken: &mut bool,
) -> std::thread::Result<F::Output>
where
    F: Future,
    T: Sink<WsMessage, Error = WsError> + Unpin,
{
    let mut fut = std::pin::pin!(AssertUnwindSafe(fut).catch_unwind());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if !*broken && let Poll::Ready(Err(_)) = writer.poll_write(cx, ws, out) {
            // The reader will see the dead socket next; stop writing until then.
            *broken = true;
        }
        Poll::Pending
    })
    .await
}

/// Queued frames past which the runtime writes before taking more input (see also the byte
/// threshold in `run`).
const WRITE_BATCH: usize = 32;

/// Why the connection loop ended, and the code `disconnect` is given.
struct Ending {
    code: CloseCode,
    /// Whether we still owe the client a close frame.
    send_close: Option<String>,
}

/// Drives an accepted consumer until the connection ends, then runs `disconnect` and cleans up.
pub(crate) async fn run<C, T>(
    mut consumer: C,
    mut cx: Context,
    mut ws: T,
    config: Arc<ConnectionConfig>,
) where
    C: Consumer,
    T: Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Unpin + Send,
{
    let out = cx.out.clone();
    let layer = cx.layer().clone();
    let channel = cx.channel_name().clone();
    let mut writer = Writer { need_flush: false };
    let mut broken = false;
    let mut receiver = layer.receiver(&channel);
    // After a failed receive (the backend is down), wait before the next attempt.
    let mut recv_backoff: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut last_heard = Instant::now();
    let mut last_ping = last_heard;
    let mut last_refresh = last_heard;
    let group_refresh = (layer.config().group_expiry / 2).max(Duration::from_secs(1));
    let timer = tokio::time::sleep_until(next_deadline(
        &config,
        last_heard,
        last_ping,
        last_refresh,
        group_refresh,
    ));
    let mut timer = std::pin::pin!(timer);
    let mut socket_first = true;
    // Write once this much is queued even if more input is ready (well under the queue's limit).
    let batch_bytes = (config.outbound_bytes / 4).clamp(1, 64 * 1024);

    let ending = loop {
        {
            let o = out.lock();
            if o.overflow {
                drop(o);
                tracing::info!(%channel, "client is not reading; closing with 1008");
                break Ending {
                    code: CloseCode::POLICY,
                    send_close: Some("outbound queue full".into()),
                };
            }
            if let (Phase::Closed, Some((code, _))) = (o.phase, &o.close) {
                break Ending {
                    code: *code,
                    send_close: None,
                };
            }
        }
        if broken {
            break Ending {
                code: CloseCode::ABNORMAL,
                send_close: None,
            };
        }
        socket_first = !socket_first;
        let input = std::future::poll_fn(|tcx| {
            // Inputs first, writes when nothing more is ready (or a backlog has built up): the
            // frames a burst of events produces go out in one write, not one syscall each.
            if !broken
                && {
                    let o = out.lock();
                    o.frames.len() >= WRITE_BATCH || o.bytes >= batch_bytes
                }
                && let Poll::Ready(Err(e)) = writer.poll_write(tcx, &mut ws, &out)
            {
                return Poll::Ready(Input::WriteError(e));
            }
            let mut poll_socket = |tcx: &mut TaskContext<'_>| match ws.poll_next_unpin(tcx) {
                Poll::Ready(Some(Ok(m))) => Some(Input::Frame(m)),
                Poll::Ready(Some(Err(e))) => Some(Input::SocketError(e)),
                Poll::Ready(None) => Some(Input::SocketEnd),
                Poll::Pending => None,
            };
            if socket_first && let Some(i) = poll_socket(tcx) {
                return Poll::Ready(i);
            }
            if let Some(b) = recv_backoff.as_mut()
                && b.as_mut().poll(tcx).is_ready()
            {
                recv_backoff = None;
            }
            if recv_backoff.is_none()
                && let Poll::Ready(r) = receiver.poll_recv(tcx)
            {
                return Poll::Ready(Input::Event(r));
            }
            if !socket_first && let Some(i) = poll_socket(tcx) {
                return Poll::Ready(i);
            }
            if timer.as_mut().poll(tcx).is_ready() {
                return Poll::Ready(Input::Tick);
            }
            if !broken && let Poll::Ready(Err(e)) = writer.poll_write(tcx, &mut ws, &out) {
                return Poll::Ready(Input::WriteError(e));
            }
            Poll::Pending
        })
        .await;

        match input {
            Input::Frame(m) => {
                last_heard = Instant::now();
                let frame = match m {
                    WsMessage::Text(t) => Frame::Text(t),
                    WsMessage::Binary(b) => Frame::Binary(b),
                    WsMessage::Ping(_) | WsMessage::Pong(_) => {
                        // tungstenite queued the pong reply; make sure it is flushed.
                        writer.need_flush = true;
                        continue;
                    }
                    WsMessage::Close(frame) => {
                        writer.need_flush = true;
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        break Ending {
                            code: CloseCode(code),
                            send_close: None,
                        };
                    }
                    WsMessage::Frame(_) => continue,
                };
                let decoded = C::Incoming::from_frame(frame);
                let result = match decoded {
                    Ok(msg) => {
                        drive(
                            consumer.receive(&mut cx, msg),
                            &mut ws,
                            &out,
                            &mut writer,
                            &mut broken,
                        )
                        .await
                    }
                    Err(e) => {
                        if let Some(end) = bad_input(&mut cx, &config, "client frame", e).await {
                            break end;
                        }
                        continue;
                    }
                };
                if let Some(end) = after_handler(&mut cx, result, "receive").await {
                    break end;
                }
                // Let the consumers this frame woke (a group send) run before this connection
                // takes its next frame: a fast sender then waits in its own TCP buffer instead
                // of overflowing its listeners' channels.
                tokio::task::yield_now().await;
            }
            Input::Event(Ok(message)) => match C::Event::from_message(message) {
                Ok(ev) => {
                    let result = drive(
                        consumer.event(&mut cx, ev),
                        &mut ws,
                        &out,
                        &mut writer,
                        &mut broken,
                    )
                    .await;
                    if let Some(end) = after_handler(&mut cx, result, "event").await {
                        break end;
                    }
                }
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "layer message not understood by the consumer");
                    if let Some(end) = bad_input(&mut cx, &config, "event", e).await {
                        break end;
                    }
                }
            },
            Input::Event(Err(Error::LayerClosed)) => {
                break Ending {
                    code: CloseCode::GOING_AWAY,
                    send_close: Some("server shutting down".into()),
                };
            }
            Input::Event(Err(e)) => {
                // The backend is unavailable (Redis restarting): keep the socket, retry later.
                tracing::warn!(%channel, error = %e, "receive from the channel layer failed; retrying in 1 s");
                recv_backoff = Some(Box::pin(tokio::time::sleep(Duration::from_secs(1))));
            }
            Input::SocketError(e) => {
                use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
                let (code, reason) = match e {
                    WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                        tracing::info!(%channel, size, max_size, "client message too big");
                        (
                            CloseCode::TOO_BIG,
                            format!("message of {size} bytes is over the {max_size}-byte limit"),
                        )
                    }
                    WsError::Capacity(e) => (CloseCode::TOO_BIG, e.to_string()),
                    WsError::Utf8(_) => {
                        (CloseCode(1007), "invalid UTF-8 in a text frame".to_owned())
                    }
                    WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                    | WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Io(_) => {
                        break Ending {
                            code: CloseCode::ABNORMAL,
                            send_close: None,
                        };
                    }
                    WsError::Protocol(p) => (CloseCode::PROTOCOL, p.to_string()),
                    other => {
                        tracing::debug!(%channel, error = %other, "websocket error");
                        break Ending {
                            code: CloseCode::ABNORMAL,
                            send_close: None,
                        };
                    }
                };
                break Ending {
                    code,
                    send_close: Some(reason),
                };
            }
            Input::SocketEnd => {
                break Ending {
                    code: CloseCode::ABNORMAL,
                    send_close: None,
                };
            }
            Input::WriteError(e) => {
                tracing::debug!(%channel, error = %e, "write to the client failed");
                break Ending {
                    code: CloseCode::ABNORMAL,
                    send_close: None,
                };
            }
            Input::Tick => {
                let now = Instant::now();
                if now.duration_since(last_heard) >= config.idle_timeout {
                    tracing::debug!(%channel, "idle timeout");
                    break Ending {
                        code: CloseCode::GOING_AWAY,
                        send_close: Some("idle timeout".into()),
                    };
                }
                if let Some(every) = config.ping_interval
                    && now.duration_since(last_ping) >= every
                {
                    out.lock().frames.push_back(Out::Ping);
                    last_ping = now;
                }
                if config.refresh_groups && now.duration_since(last_refresh) >= group_refresh {
                    last_refresh = now;
                    for group in cx.groups().to_vec() {
                        if let Err(e) = layer.backend().group_add(&group, &channel).await {
                            tracing::warn!(%group, %channel, error = %e, "refreshing group membership failed");
                        }
                    }
                }
                timer.as_mut().reset(next_deadline(
                    &config,
                    last_heard,
                    last_ping,
                    last_refresh,
                    group_refresh,
                ));
            }
        }
    };

    // The connection is over for the consumer: no more sends, then disconnect and cleanup.
    {
        let mut o = out.lock();
        if let Some(reason) = &ending.send_close
            && o.phase != Phase::Closed
        {
            o.frames.push_back(Out::Close(ending.code, reason.clone()));
        }
        o.phase = Phase::Closed;
    }
    match AssertUnwindSafe(consumer.disconnect(&mut cx, ending.code))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%channel, error = %e, "consumer disconnect failed"),
        Err(_) => tracing::error!(%channel, "consumer disconnect panicked"),
    }
    cleanup(&mut cx).await;
    drop(receiver);

    if ending.code != CloseCode::ABNORMAL && !broken {
        // Finish the close handshake: write our close frame (or the reply tungstenite queued)
        // and wait, bounded, for the client to end the connection.
        let finish = async {
            let _ = std::future::poll_fn(|tcx| writer.poll_write(tcx, &mut ws, &out)).await;
            while let Some(Ok(_)) = ws.next().await {}
        };
        let _ = tokio::time::timeout(config.close_timeout, finish).await;
    }
}

fn next_deadline(
    config: &ConnectionConfig,
    heard: Instant,
    pinged: Instant,
    refreshed: Instant,
    refresh: Duration,
) -> Instant {
    let mut d = heard + config.idle_timeout;
    if let Some(p) = config.ping_interval {
        d = d.min(pinged + p);
    }
    if config.refresh_groups {
        d = d.min(refreshed + refresh);
    }
    d
}

/// Reports a handler's outcome; returns how the connection ends if it must.
async fn after_handler(
    cx: &mut Context,
    result: std::thread::Result<crate::Result<()>>,
    which: &str,
) -> Option<Ending> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::warn!(channel = %cx.channel_name(), handler = which, error = %e, "consumer handler failed");
            let _ = cx.send_error(&e).await;
            None
        }
        Err(_) => {
            tracing::error!(channel = %cx.channel_name(), handler = which, "consumer handler panicked; closing with 1011");
            Some(Ending {
                code: CloseCode::INTERNAL,
                send_close: Some("internal error".into()),
            })
        }
    }
}

async fn bad_input(
    cx: &mut Context,
    config: &ConnectionConfig,
    what: &str,
    e: Error,
) -> Option<Ending> {
    tracing::info!(channel = %cx.channel_name(), what, error = %e, "bad input");
    match config.bad_input {
        BadInput::ErrorFrame => {
            let _ = cx.send_error(&e).await;
            None
        }
        BadInput::Close(code) => Some(Ending {
            code: CloseCode(code),
            send_close: Some(e.to_string()),
        }),
    }
}

/// An in-process WebSocket transport: what the [`Communicator`](crate::testing::Communicator)
/// plugs into the runtime in place of a socket.
pub(crate) struct MemoryTransport {
    pub(crate) incoming: futures_channel::mpsc::UnboundedReceiver<WsMessage>,
    pub(crate) outgoing: futures_channel::mpsc::UnboundedSender<WsMessage>,
}

impl Stream for MemoryTransport {
    type Item = Result<WsMessage, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_next_unpin(cx).map(|m| m.map(Ok))
    }
}

impl Sink<WsMessage> for MemoryTransport {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), WsError>> {
        self.outgoing
            .poll_ready(cx)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), WsError> {
        self.outgoing
            .start_send(item)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Result<(), WsError>> {
        self.outgoing.close_channel();
        Poll::Ready(Ok(()))
    }
}
