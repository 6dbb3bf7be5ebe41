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
//!
//! The consumer's layer side is its connection's [`Subscription`](switchboard_core::Subscription),
//! polled from the same task: no future per event, and its groups are refreshed while it lives
//! and left when the connection ends.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use http::StatusCode;
use parking_lot::Mutex;
use switchboard_core::{FromMessage, Layer, LayerError, Message, Text};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::config::{BadInput, ConnectionConfig};
use crate::connection::{Connection, Out, OutLimits, Outbound, Phase};
use crate::consumer::{CloseCode, Consumer, Frame, FromFrame};
use crate::error::{Error, reference, reference_for};
use crate::metrics;
use crate::scope::Scope;
use crate::shutdown::Guard;

/// A WebSocket as the runtime drives it: frames both ways, and the raw bytes under them.
pub(crate) trait Transport:
    Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Unpin + Send
{
    /// Reads raw bytes the client sent and discards them; `Ready(Ok(0))` at the end of the
    /// stream. Used after our close frame once the frames can no longer be read (a frame over
    /// the size limit leaves the rest of itself unread).
    fn poll_discard(&mut self, cx: &mut task::Context<'_>) -> Poll<std::io::Result<usize>>;
}

impl<S> Transport for tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    fn poll_discard(&mut self, cx: &mut task::Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut buf = [0u8; 8192];
        let mut read = tokio::io::ReadBuf::new(&mut buf);
        ready!(std::pin::Pin::new(self.get_mut()).poll_read(cx, &mut read))?;
        Poll::Ready(Ok(read.filled().len()))
    }
}

/// Bytes of a client's unread input the runtime reads and discards after its close frame, at
/// most (and for `close_timeout` at most).
const DISCARD_LIMIT: usize = 64 << 20;

/// Opens a connection for `consumer`, as both servers and the `Communicator` do: its channel
/// (a layer subscription), then the handshake (`connect`). `Ok` holds the connection and the
/// subprotocol to answer 101 with; `Err` the HTTP status and body the client is refused with.
pub(crate) async fn open<C: Consumer>(
    layer: &Layer,
    scope: Scope,
    consumer: &mut C,
    limits: OutLimits,
) -> Result<(Connection, Option<String>), (StatusCode, String)> {
    let sub = match layer.subscribe().await {
        Ok(s) => s,
        Err(e) => {
            let r = reference();
            tracing::warn!(path = scope.path(), error = %e, reference = %r, "no channel for a new consumer");
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the server cannot take connections now (reference {r})"),
            ));
        }
    };
    let limits = OutLimits {
        concurrency: u16::try_from(C::CONCURRENCY.max(1)).unwrap_or(u16::MAX),
        ..limits
    };
    let mut conn = Connection::new(sub, scope, limits);
    match handshake(consumer, &mut conn).await {
        Handshake::Accepted(subprotocol) => Ok((conn, subprotocol)),
        Handshake::Refused(status, reason) => Err((status, reason)),
    }
}

/// How the handshake ended.
#[derive(Debug)]
enum Handshake {
    /// Accepted: answer 101 with this subprotocol.
    Accepted(Option<String>),
    /// Refused: answer with this HTTP status and body.
    Refused(StatusCode, String),
}

/// Runs `connect`. On refusal, the groups it joined are left and its channel is discarded.
async fn handshake<C: Consumer>(consumer: &mut C, conn: &mut Connection) -> Handshake {
    let result = AssertUnwindSafe(consumer.connect(conn))
        .catch_unwind()
        .await;
    let (phase, subprotocol, was_accepted, reason) = {
        let out = conn.out.lock();
        let accepted = out.phase == Phase::Open
            || (out.phase == Phase::Closed
                && out.frames.iter().any(|f| matches!(f, Out::Close(..))));
        let reason = out.close.as_ref().map(|(_, r)| r.clone());
        (out.phase, out.subprotocol.clone(), accepted, reason)
    };
    let refusal = match result {
        Ok(Ok(())) if was_accepted => return Handshake::Accepted(subprotocol),
        Ok(Ok(())) => {
            let reason = reason
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "the consumer did not accept the connection".to_owned());
            tracing::warn!(path = conn.scope().path(), ?phase, %reason, "consumer refused the connection");
            (StatusCode::FORBIDDEN, reason)
        }
        Ok(Err(e)) => {
            metrics::handler_error("connect", false);
            let r = reference();
            tracing::warn!(path = conn.scope().path(), error = %e, reference = %r, "consumer connect failed");
            if was_accepted {
                let _ = conn.close(CloseCode::INTERNAL, "connect failed").await;
                return Handshake::Accepted(subprotocol);
            }
            let status = if e.is_internal() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            (status, e.client_message(&r).into_owned())
        }
        Err(_) => {
            metrics::handler_error("connect", true);
            let r = reference();
            tracing::error!(path = conn.scope().path(), reference = %r, "consumer connect panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal server error (reference {r})"),
            )
        }
    };
    conn.subscription().close().await;
    Handshake::Refused(refusal.0, refusal.1)
}

enum Input {
    Frame(WsMessage),
    SocketError(WsError),
    SocketEnd,
    WriteError(WsError),
    Event(switchboard_core::Result<Message>),
    /// Messages for the consumer were lost at this point of its stream.
    Missed,
    /// Go round the loop again: the backlog drained, or messages for the consumer are being
    /// dropped while it is not taking them.
    Again,
    Tick,
    Shutdown,
    /// A task handed to `Connection::spawn` ended.
    Task(Result<crate::Result<()>, tokio::task::JoinError>),
}

/// Drains the outbound queue into the socket, then flushes.
struct Writer {
    need_flush: bool,
    /// Data frames and their bytes written since the last report to the metrics.
    frames: u64,
    bytes: u64,
}

impl Writer {
    fn poll_write<T>(
        &mut self,
        cx: &mut task::Context<'_>,
        ws: &mut T,
        out: &Mutex<Outbound>,
    ) -> Poll<Result<(), WsError>>
    where
        T: Sink<WsMessage, Error = WsError> + Unpin,
    {
        loop {
            let empty = {
                let mut o = out.lock();
                let empty = o.frames.is_empty();
                // What a burst grew the queue to is given back once it is written: an idle
                // connection keeps no room for frames.
                if empty && o.frames.capacity() > SMALL_OUTBOUND {
                    o.frames.shrink_to_fit();
                }
                empty
            };
            if empty {
                if self.need_flush {
                    ready!(ws.poll_flush_unpin(cx))?;
                    self.need_flush = false;
                }
                self.report();
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
                    self.frames += 1;
                    self.bytes += f.len() as u64;
                }
                item
            };
            ws.start_send_unpin(to_websocket(item))?;
            self.need_flush = true;
        }
    }
}

/// The room (frames) an empty outbound queue may keep; past it, the writer frees it.
const SMALL_OUTBOUND: usize = 8;

impl Writer {
    fn new() -> Writer {
        Writer {
            need_flush: false,
            frames: 0,
            bytes: 0,
        }
    }

    /// Adds what was written since the last report to the metrics: once per write batch, not
    /// per frame, so that fan-out does not contend on the shared counters.
    fn report(&mut self) {
        if self.frames > 0 {
            let m = metrics::handles();
            m.frames_out.increment(std::mem::take(&mut self.frames));
            m.bytes_out.increment(std::mem::take(&mut self.bytes));
        }
    }
}

/// The tungstenite message for a queued item. Text goes out as a raw text frame of its bytes:
/// a message's JSON, shared by every connection it is relayed to, is not checked for UTF-8
/// again (or copied) per socket.
fn to_websocket(item: Out) -> WsMessage {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    match item {
        Out::Frame(Frame::Text(t)) => WsMessage::Frame(WsFrame::message(
            t.into_bytes(),
            OpCode::Data(Data::Text),
            true,
        )),
        Out::Frame(Frame::Binary(b)) => WsMessage::Binary(b),
        Out::Close(code, mut reason) => {
            // A close frame carries at most 123 bytes of reason (RFC 6455 §5.5): cut every
            // reason here, on a char boundary, whoever closes (a handler, or the runtime with a
            // decode error that may quote the client's input).
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            WsMessage::Close(Some(CloseFrame {
                code: code.0.into(),
                reason: reason.into(),
            }))
        }
        Out::Ping => WsMessage::Ping(Bytes::new()),
    }
}

/// Runs `fut` (a handler) to completion while writing what it queues. It takes the handler
/// pinned where the caller made it, so that the handler's future is kept once in the
/// connection's task (moved in here, it would be kept twice: as the argument and as the pinned
/// local). A plain function returning a `poll_fn`, not an `async fn`, for the same reason: its
/// state is the closure's captures, kept once.
fn drive<'a, F, T>(
    fut: Pin<&'a mut F>,
    ws: &'a mut T,
    out: &'a Mutex<Outbound>,
    writer: &'a mut Writer,
    broken: &'a mut bool,
) -> impl Future<Output = std::thread::Result<F::Output>> + 'a
where
    F: Future,
    T: Sink<WsMessage, Error = WsError> + Unpin,
{
    let mut fut = AssertUnwindSafe(fut).catch_unwind();
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(r) = Pin::new(&mut fut).poll(cx) {
            return Poll::Ready(r);
        }
        if !*broken && let Poll::Ready(Err(_)) = writer.poll_write(cx, ws, out) {
            // The reader will see the dead socket next; stop writing until then.
            *broken = true;
        }
        Poll::Pending
    })
}

/// Queued frames past which the runtime writes before taking more input (see also
/// [`batch_bytes`]).
const WRITE_BATCH: usize = 32;

/// Queued bytes past which the runtime writes even if more input is ready (well under the
/// queue's limit). Worked out where it is needed, not kept: the task holds every local for the
/// connection's life.
fn batch_bytes(config: &ConnectionConfig) -> usize {
    (config.outbound_bytes / 4).clamp(1, 64 * 1024)
}

/// Why the connection loop ended, and the code `disconnect` is given.
struct Ending {
    code: CloseCode,
    /// Why, for `switchboard_connections_closed_total`.
    why: &'static str,
    /// The reason of the close frame we still owe the client, if we owe one.
    send_close: Option<String>,
    /// The client's input stopped parsing as frames (a frame over the limit, a protocol
    /// error): what is left of it is read as raw bytes, and discarded.
    unread_input: bool,
}

/// A client frame as the consumer sees it; `None` for control frames.
fn data_frame(m: WsMessage) -> Option<Result<Frame, Ending>> {
    match m {
        // tungstenite checked the UTF-8 already; the check here only converts the type.
        WsMessage::Text(t) => Some(
            Text::try_from(Bytes::from(t))
                .map(Frame::Text)
                .map_err(|_| Ending {
                    code: CloseCode::INVALID_DATA,
                    why: "bad_input",
                    send_close: Some("invalid UTF-8 in a text frame".into()),
                    unread_input: false,
                }),
        ),
        WsMessage::Binary(b) => Some(Ok(Frame::Binary(b))),
        _ => None,
    }
}

/// Drives an accepted consumer until the connection ends, then runs `disconnect` and cleans up.
///
/// `transport` yields the socket (the HTTP upgrade completing), or `None` if the client went
/// before it did: `disconnect` runs then too, as for a client that vanished.
///
/// The returned future is what every idle connection's task holds, so its size is memory per
/// connection. It is an `async` block, not an `async fn`: an `async fn` keeps its arguments
/// twice in its state (as it received them and as the locals they are moved into), where the
/// block's captures are used in place. `transport` is boxed (it is done with once the socket is
/// up, and would otherwise keep its room all along), and so are the handlers that run once or
/// rarely (`receive`, `missed`, `disconnect`); reporting an error only queues a frame, and is a
/// plain function. What is left is the loop's locals and the event handler's future.
pub(crate) fn run<C, T>(
    mut consumer: C,
    mut conn: Connection,
    transport: impl Future<Output = Option<T>>,
    config: Arc<ConnectionConfig>,
    guard: Option<Guard>,
) -> impl Future<Output = ()>
where
    C: Consumer,
    T: Transport,
{
    let transport = Box::pin(transport);
    async move {
        let Some(mut ws) = transport.await else {
            Box::pin(disconnect(&mut consumer, &mut conn, CloseCode::ABNORMAL)).await;
            drop(guard);
            return;
        };
        let out = conn.out.clone();
        if !config.refresh_groups {
            conn.subscription().set_refresh(None);
        }
        let mut writer = Writer::new();
        metrics::handles().total.increment(1);
        metrics::handles().open.increment(1.0);
        tracing::debug!("connection accepted");
        let mut broken = false;
        let mut last_heard = Instant::now();
        let mut last_ping = last_heard;
        let timer = tokio::time::sleep_until(next_deadline(&config, last_heard, last_ping));
        let mut timer = std::pin::pin!(timer);
        let mut socket_first = true;
        let mut dropped_seen = conn.subscription().dropped();
        // A client over its rates is not read for a while (see `Rates`).
        let mut rates = Rates::new(&config);

        let ending = loop {
            let backlogged = {
                let o = out.lock();
                if o.overflow {
                    drop(o);
                    tracing::info!(channel = %conn.channel_name(), "client is not reading; closing with 1008");
                    break Ending {
                        code: CloseCode::POLICY,
                        why: "slow_client",
                        send_close: Some("outbound queue full".into()),
                        unread_input: false,
                    };
                }
                if let (Phase::Closed, Some((code, _))) = (o.phase, &o.close) {
                    break Ending {
                        code: *code,
                        why: "server",
                        send_close: None,
                        unread_input: false,
                    };
                }
                is_backlogged(&o, &config)
            };
            if conn.tasks.as_ref().is_some_and(|t| !t.ended.is_empty())
                && let Some(end) = tasks_ended(&mut conn)
            {
                break end;
            }
            if broken {
                break Ending {
                    code: CloseCode::ABNORMAL,
                    why: "client",
                    send_close: None,
                    unread_input: false,
                };
            }
            if backlogged {
                // Not taking events, and its channel overflowing: the client is not keeping up
                // with its group, and would only see what it missed after the backlog. Cut it off.
                let dropped = conn.subscription().dropped();
                if dropped > dropped_seen {
                    tracing::info!(channel = %conn.channel_name(), missed = dropped - dropped_seen, "client fell behind its group; closing with 1008");
                    break Ending {
                        code: CloseCode::POLICY,
                        why: "slow_client",
                        send_close: Some("outbound queue full".into()),
                        unread_input: false,
                    };
                }
            } else {
                dropped_seen = conn.subscription().dropped();
            }
            socket_first = !socket_first;
            let input = std::future::poll_fn(|tcx| {
                // Inputs first, writes when nothing more is ready (or a backlog has built up): the
                // frames a burst of events produces go out in one write, not one syscall each.
                if !broken
                    && {
                        let o = out.lock();
                        o.frames.len() >= WRITE_BATCH || o.bytes >= batch_bytes(&config)
                    }
                    && let Poll::Ready(Err(e)) = writer.poll_write(tcx, &mut ws, &out)
                {
                    return Poll::Ready(Input::WriteError(e));
                }
                let mut poll_socket = |tcx: &mut task::Context<'_>| match ws.poll_next_unpin(tcx) {
                    Poll::Ready(Some(Ok(m))) => Some(Input::Frame(m)),
                    Poll::Ready(Some(Err(e))) => Some(Input::SocketError(e)),
                    Poll::Ready(None) => Some(Input::SocketEnd),
                    Poll::Pending => None,
                };
                let reading = rates.as_ref().is_none_or(|r| r.paused_until.is_none());
                // Again here if it was backlogged: the write above may have drained it. (Only
                // handlers, which run outside this poll, add much to it: a connection that was not
                // backlogged is not checked again.)
                let backlogged = backlogged && is_backlogged(&out.lock(), &config);
                if reading
                    && socket_first
                    && let Some(i) = poll_socket(tcx)
                {
                    return Poll::Ready(i);
                }
                if !backlogged {
                    if conn.subscription().has_missed() {
                        return Poll::Ready(Input::Missed);
                    }
                    if let Poll::Ready(r) = conn.subscription().poll_recv(tcx) {
                        return Poll::Ready(Input::Event(r));
                    }
                } else if conn
                    .subscription()
                    .poll_dropped(tcx, dropped_seen)
                    .is_ready()
                {
                    // Checked at the top of the loop: it is cut off.
                    return Poll::Ready(Input::Again);
                }
                if reading
                    && !socket_first
                    && let Some(i) = poll_socket(tcx)
                {
                    return Poll::Ready(i);
                }
                if timer.as_mut().poll(tcx).is_ready() {
                    return Poll::Ready(Input::Tick);
                }
                if let Some(g) = &guard
                    && g.poll_closing(tcx).is_ready()
                {
                    return Poll::Ready(Input::Shutdown);
                }
                if let Some(tasks) = conn.tasks.as_mut()
                    && let Poll::Ready(Some(ended)) = tasks.set.poll_join_next(tcx)
                {
                    return Poll::Ready(Input::Task(ended));
                }
                if !broken && let Poll::Ready(Err(e)) = writer.poll_write(tcx, &mut ws, &out) {
                    return Poll::Ready(Input::WriteError(e));
                }
                if backlogged && !is_backlogged(&out.lock(), &config) {
                    // That write drained the backlog: take events again (nothing else would wake
                    // this task for them, its channel's waker was not registered).
                    return Poll::Ready(Input::Again);
                }
                Poll::Pending
            })
            .await;

            match input {
                Input::Frame(m) => {
                    last_heard = Instant::now();
                    let frame = match m {
                        WsMessage::Ping(_) | WsMessage::Pong(_) => {
                            // tungstenite queued the pong reply; make sure it is flushed.
                            writer.need_flush = true;
                            continue;
                        }
                        WsMessage::Close(frame) => {
                            writer.need_flush = true;
                            let code = frame
                                .map_or(CloseCode::NO_STATUS, |f| CloseCode(u16::from(f.code)));
                            break Ending {
                                code,
                                why: "client",
                                send_close: None,
                                unread_input: false,
                            };
                        }
                        other => match data_frame(other) {
                            Some(Ok(f)) => {
                                metrics::handles().frames_in.increment(1);
                                metrics::handles().bytes_in.increment(f.len() as u64);
                                if let Some(r) = rates.as_mut()
                                    && let Some(until) = r.take(f.len())
                                {
                                    let next = next_deadline(&config, last_heard, last_ping);
                                    timer.as_mut().reset(next.min(until));
                                }
                                f
                            }
                            Some(Err(end)) => break end,
                            None => continue,
                        },
                    };
                    let msg = match C::Incoming::from_frame(frame) {
                        Ok(msg) => msg,
                        Err(e) => {
                            if let Some(end) = bad_input(&mut conn, &config, Error::BadFrame(e)) {
                                break end;
                            }
                            continue;
                        }
                    };
                    // Boxed: a client frame is rare beside the events it causes, and the handler's
                    // future inline would make every idle connection's task larger by its size.
                    let result = drive(
                        Box::pin(consumer.receive(&mut conn, msg)).as_mut(),
                        &mut ws,
                        &out,
                        &mut writer,
                        &mut broken,
                    )
                    .await;
                    if let Some(end) = after_handler(&mut conn, result, "receive") {
                        break end;
                    }
                    // No yield here: the next frame is taken while the listeners this one woke
                    // (a group send) wait their turn, so a burst reaches each of them as a
                    // batch, one `write` for several frames. (Yielding after every frame halved
                    // a blast's deliveries/s and doubled its CPU per delivery, on the server and
                    // in the clients, by making each message a `write` and a `read` of its own.)
                    // A sender cannot overflow its listeners: a group send waits for members it
                    // left more than half full, and tokio's budget ends a long run of frames.
                }
                Input::Event(Ok(message)) => {
                    // Bound by `let`, not matched on: a match's scrutinee would be kept in the
                    // task beside the handler's future (which holds the event) while it runs.
                    let ev = match C::Event::from_message(message) {
                        Ok(ev) => ev,
                        Err(source) => {
                            let e = Error::BadEvent(source);
                            if let Some(end) = bad_input(&mut conn, &config, e) {
                                break end;
                            }
                            continue;
                        }
                    };
                    // Inline, not boxed (the hot path): its size is in every connection's task.
                    let result = drive(
                        std::pin::pin!(consumer.event(&mut conn, ev)),
                        &mut ws,
                        &out,
                        &mut writer,
                        &mut broken,
                    )
                    .await;
                    if let Some(end) = after_handler(&mut conn, result, "event") {
                        break end;
                    }
                }
                Input::Again => continue,
                Input::Missed => {
                    // Where the groups keep history, what was missed is read again (boxed: rare).
                    let missed = Box::pin(conn.subscription().take_missed_and_recover()).await;
                    tracing::info!(channel = %conn.channel_name(), dropped = missed.dropped, interrupted = missed.interrupted, recovered = missed.recovered, "messages for this connection were lost");
                    metrics::missed(missed);
                    // Boxed: rare, as `receive`'s future is.
                    let result = drive(
                        Box::pin(consumer.missed(&mut conn, missed)).as_mut(),
                        &mut ws,
                        &out,
                        &mut writer,
                        &mut broken,
                    )
                    .await;
                    if let Some(end) = after_handler(&mut conn, result, "missed") {
                        break end;
                    }
                    let o = out.lock();
                    if let (Phase::Closed, Some((code, _))) = (o.phase, &o.close) {
                        break Ending {
                            code: *code,
                            why: "missed",
                            send_close: None,
                            unread_input: false,
                        };
                    }
                }
                Input::Event(Err(e)) => {
                    // The layer closed (the server is shutting down), or the subscription did.
                    if !matches!(e, LayerError::Closed) {
                        tracing::warn!(channel = %conn.channel_name(), error = %e, "receiving from the channel layer failed");
                    }
                    break Ending {
                        code: CloseCode::GOING_AWAY,
                        why: "shutdown",
                        send_close: Some("server shutting down".into()),
                        unread_input: false,
                    };
                }
                Input::SocketError(e) => {
                    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
                    let (code, reason) = match e {
                        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                            tracing::info!(channel = %conn.channel_name(), size, max_size, "client message too big");
                            (
                                CloseCode::TOO_BIG,
                                format!(
                                    "message of {size} bytes is over the {max_size}-byte limit"
                                ),
                            )
                        }
                        WsError::Capacity(e) => (CloseCode::TOO_BIG, e.to_string()),
                        WsError::Utf8(_) => (
                            CloseCode::INVALID_DATA,
                            "invalid UTF-8 in a text frame".to_owned(),
                        ),
                        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                        | WsError::ConnectionClosed
                        | WsError::AlreadyClosed
                        | WsError::Io(_) => {
                            break Ending {
                                code: CloseCode::ABNORMAL,
                                why: "client",
                                send_close: None,
                                unread_input: false,
                            };
                        }
                        WsError::Protocol(p) => (CloseCode::PROTOCOL, p.to_string()),
                        other => {
                            tracing::debug!(channel = %conn.channel_name(), error = %other, "websocket error");
                            break Ending {
                                code: CloseCode::ABNORMAL,
                                why: "client",
                                send_close: None,
                                unread_input: false,
                            };
                        }
                    };
                    let why = if code == CloseCode::TOO_BIG {
                        "too_big"
                    } else {
                        "bad_input"
                    };
                    break Ending {
                        code,
                        why,
                        send_close: Some(reason),
                        unread_input: true,
                    };
                }
                Input::SocketEnd => {
                    break Ending {
                        code: CloseCode::ABNORMAL,
                        why: "client",
                        send_close: None,
                        unread_input: false,
                    };
                }
                Input::WriteError(e) => {
                    tracing::debug!(channel = %conn.channel_name(), error = %e, "write to the client failed");
                    break Ending {
                        code: CloseCode::ABNORMAL,
                        why: "client",
                        send_close: None,
                        unread_input: false,
                    };
                }
                Input::Task(ended) => {
                    if let Some(t) = conn.tasks.as_mut() {
                        t.ended.push(ended);
                    }
                    if let Some(end) = tasks_ended(&mut conn) {
                        break end;
                    }
                }
                Input::Shutdown => {
                    break Ending {
                        code: CloseCode::GOING_AWAY,
                        why: "shutdown",
                        send_close: Some("server shutting down".into()),
                        unread_input: false,
                    };
                }
                Input::Tick => {
                    let now = Instant::now();
                    let paused_until = rates.as_mut().and_then(|r| {
                        if r.paused_until.is_some_and(|t| now >= t) {
                            r.paused_until = None;
                        }
                        r.paused_until
                    });
                    if now.duration_since(last_heard) >= config.idle_timeout {
                        tracing::debug!(channel = %conn.channel_name(), "idle timeout");
                        break Ending {
                            code: CloseCode::GOING_AWAY,
                            why: "idle",
                            send_close: Some("idle timeout".into()),
                            unread_input: false,
                        };
                    }
                    if let Some(every) = config.ping_interval
                        && now.duration_since(last_ping) >= every
                    {
                        out.lock().frames.push_back(Out::Ping);
                        last_ping = now;
                    }
                    let next = next_deadline(&config, last_heard, last_ping);
                    timer
                        .as_mut()
                        .reset(paused_until.map_or(next, |t| next.min(t)));
                }
            }
        };

        // Spawned tasks get `close_timeout` to finish (their sends still reach an open socket),
        // then are cancelled; `disconnect` comes after them.
        if let Some(tasks) = conn.tasks.take() {
            // Boxed: rare, and its timer would otherwise take room in every connection's task.
            Box::pin(finish_tasks(
                *tasks,
                conn.channel_name(),
                config.close_timeout,
            ))
            .await;
        }
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
        Box::pin(disconnect(&mut consumer, &mut conn, ending.code)).await;

        if ending.code != CloseCode::ABNORMAL && !broken {
            // Finish the close handshake: write our close frame (or the reply tungstenite queued)
            // and wait, bounded, for the client to end the connection. Its input is read to the
            // end — as frames while they parse, then as raw bytes — because closing a socket with
            // unread input makes the kernel send a reset, and a client still writing (a message
            // over the limit, sent whole) would get that instead of our close frame.
            let finish = async {
                let _ = std::future::poll_fn(|tcx| writer.poll_write(tcx, &mut ws, &out)).await;
                let mut raw = ending.unread_input;
                while !raw {
                    match ws.next().await {
                        Some(Ok(_)) => {}
                        // The close handshake is done: the server closes the TCP connection first
                        // (RFC 6455 §7.1.1), now.
                        None => break,
                        Some(Err(_)) => raw = true,
                    }
                }
                let mut discarded = 0;
                while raw && discarded < DISCARD_LIMIT {
                    match std::future::poll_fn(|tcx| ws.poll_discard(tcx)).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => discarded += n,
                    }
                }
            };
            let _ = tokio::time::timeout(config.close_timeout, finish).await;
        }
        writer.report();
        metrics::handles().open.decrement(1.0);
        metrics::closed(ending.why);
        tracing::debug!(
            code = ending.code.0,
            reason = ending.why,
            "connection closed"
        );
        drop(guard);
    }
}

/// Gives a connection's spawned tasks `limit` to finish (their errors logged and counted), then
/// cancels the rest.
async fn finish_tasks(
    tasks: crate::connection::Tasks,
    channel: &switchboard_core::ChannelName,
    limit: Duration,
) {
    let crate::connection::Tasks {
        set: mut tasks,
        ended,
    } = tasks;
    let finish = async {
        let mut ended = ended.into_iter();
        loop {
            let Some(ended) = (match ended.next() {
                Some(e) => Some(e),
                None => tasks.join_next().await,
            }) else {
                break;
            };
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    metrics::handler_error("task", false);
                    tracing::warn!(%channel, error = %e, "a connection task failed after the connection ended");
                }
                Err(e) => {
                    metrics::handler_error("task", e.is_panic());
                    tracing::error!(%channel, "a connection task panicked after the connection ended");
                }
            }
        }
    };
    if tokio::time::timeout(limit, finish).await.is_err() {
        tracing::info!(%channel, running = tasks.len(), "cancelling the connection's tasks");
    }
    tasks.abort_all();
}

/// The end of a connection for its consumer: `disconnect` with `code` (its error or panic
/// logged), then the subscription closed (groups left, channel discarded).
pub(crate) async fn disconnect<C: Consumer>(
    consumer: &mut C,
    conn: &mut Connection,
    code: CloseCode,
) {
    let channel = conn.channel_name().clone();
    conn.out.lock().phase = Phase::Closed;
    // Boxed as `receive` is: it runs once, and need not take room in the task all along.
    match AssertUnwindSafe(Box::pin(consumer.disconnect(conn, code)))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            metrics::handler_error("disconnect", false);
            tracing::warn!(%channel, error = %e, "consumer disconnect failed");
        }
        Err(_) => {
            metrics::handler_error("disconnect", true);
            tracing::error!(%channel, "consumer disconnect panicked");
        }
    }
    conn.subscription().close().await;
}

/// Whether the outbound backlog is past half its limits: the connection then stops taking
/// events, which wait in its channel, whose back-pressure slows the group's senders to this
/// client's pace.
fn is_backlogged(o: &Outbound, config: &ConnectionConfig) -> bool {
    o.frames.len() >= (config.outbound_frames / 2).max(1)
        || o.bytes >= (config.outbound_bytes / 2).max(1)
}

/// Token buckets for a client's message and byte rates
/// ([`ConnectionConfig::max_messages_per_second`], `max_bytes_per_second`): each holds up to a
/// second's worth, and a message that leaves one in debt pauses reading until it is paid.
struct Rates {
    /// (rate per second, tokens) for messages, then bytes.
    buckets: [Option<(f64, f64)>; 2],
    last: Instant,
    /// The client is not read until then.
    paused_until: Option<Instant>,
}

impl Rates {
    /// `None` when no rate is limited (boxed: most connections have none, and the task of
    /// every idle connection holds this).
    fn new(config: &ConnectionConfig) -> Option<Box<Rates>> {
        let messages = config.max_messages_per_second.map(f64::from);
        // A byte rate is far below 2^53: the conversion is exact enough.
        let bytes = config.max_bytes_per_second.map(|b| b as f64);
        if messages.is_none() && bytes.is_none() {
            return None;
        }
        let full = |rate: f64| (rate.max(1.0), rate.max(1.0));
        Some(Box::new(Rates {
            buckets: [messages.map(full), bytes.map(full)],
            last: Instant::now(),
            paused_until: None,
        }))
    }

    /// Takes one message of `len` bytes; if a bucket is in debt, pauses reading and returns
    /// the instant it may resume.
    fn take(&mut self, len: usize) -> Option<Instant> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let mut wait = 0f64;
        for (bucket, cost) in self.buckets.iter_mut().zip([1.0, len as f64]) {
            if let Some((rate, tokens)) = bucket {
                *tokens = (*tokens + *rate * elapsed).min(*rate) - cost;
                if *tokens < 0.0 {
                    wait = wait.max(-*tokens / *rate);
                }
            }
        }
        self.paused_until = (wait > 0.0).then(|| now + Duration::from_secs_f64(wait.min(3600.0)));
        self.paused_until
    }
}

fn next_deadline(config: &ConnectionConfig, heard: Instant, pinged: Instant) -> Instant {
    // A very long timeout (`Duration::MAX` to mean "never") must not overflow the clock.
    let far = || heard + Duration::from_secs(86_400 * 365);
    let mut d = heard.checked_add(config.idle_timeout).unwrap_or_else(far);
    if let Some(p) = config.ping_interval {
        d = d.min(pinged.checked_add(p).unwrap_or_else(far));
    }
    d
}

/// Tells the client about a handler's error (its text, or a reference for an internal one,
/// which the log line carries too).
fn report(conn: &mut Connection, e: &Error, what: &str) {
    let r = reference_for(e);
    if e.is_internal() {
        tracing::warn!(channel = %conn.channel_name(), what, error = %e, reference = %r, "internal error");
    } else {
        tracing::info!(channel = %conn.channel_name(), what, error = %e, "client error");
    }
    let _ = conn.push_error(e.client_message(&r));
}

/// Reports how spawned tasks ended (those the runtime saw end, and those `spawn` reaped while it
/// waited for room); returns how the connection ends if one panicked.
fn tasks_ended(conn: &mut Connection) -> Option<Ending> {
    let mut end = None;
    let ended = conn
        .tasks
        .as_mut()
        .map(|t| std::mem::take(&mut t.ended))
        .unwrap_or_default();
    for e in ended {
        let result = match e {
            Ok(r) => Ok(r),
            Err(join) => match join.try_into_panic() {
                Ok(payload) => Err(payload),
                Err(_) => continue, // cancelled: only when the connection ends
            },
        };
        if let Some(e) = after_handler(conn, result, "task") {
            end.get_or_insert(e);
        }
    }
    end
}

/// Reports a handler's outcome; returns how the connection ends if it must.
fn after_handler(
    conn: &mut Connection,
    result: std::thread::Result<crate::Result<()>>,
    which: &'static str,
) -> Option<Ending> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            metrics::handler_error(which, false);
            report(conn, &e, which);
            None
        }
        Err(_) => {
            metrics::handler_error(which, true);
            tracing::error!(channel = %conn.channel_name(), handler = which, "consumer handler panicked; closing with 1011");
            Some(Ending {
                code: CloseCode::INTERNAL,
                why: "handler_panic",
                send_close: Some("internal error".into()),
                unread_input: false,
            })
        }
    }
}

fn bad_input(conn: &mut Connection, config: &ConnectionConfig, e: Error) -> Option<Ending> {
    match config.bad_input {
        BadInput::ErrorFrame => {
            report(conn, &e, "bad input");
            None
        }
        BadInput::Close(code) => {
            let r = reference_for(&e);
            tracing::info!(channel = %conn.channel_name(), error = %e, reference = %r, "bad input; closing");
            Some(Ending {
                code,
                why: "bad_input",
                send_close: Some(e.client_message(&r).into_owned()),
                unread_input: false,
            })
        }
    }
}
