//! Subscribers: admission, and the four transports on the layer's subscriptions.
//!
//! Every subscriber, whatever its transport, goes through the same steps:
//!
//! 1. **Admission** ([`Gateway::admit`]): the path's channels are checked (ids, how many), the
//!    resume cursor is read (`Last-Event-ID`, `If-None-Match`, `?last_id=`, `?last_event_id=`),
//!    a subscriber slot is taken on every channel (`--max-subscribers-per-channel`), new channels
//!    are counted against `--max-channels`, and the channels are registered.
//! 2. **Joining** ([`history::join`]): a fresh layer channel joins the group of every push
//!    channel, after the client's position where it gave one — the layer replays what followed
//!    it — or with the last N held messages for a backtrack (`CH.bN`), or from now.
//! 3. **Live**: each message from the layer is written to the client, and moves the cursor
//!    (the position of the last message delivered, per channel). A subscriber that missed
//!    messages gets them from the history: the WebSocket runtime and the `/sub/` stream read
//!    them again at once (`Subscription::recover`); the EventSource stream (the library's
//!    `EventStream`) sends a `gap` event and ends, and the browser resumes from its
//!    `Last-Event-ID`; a long-poll answers before the hole, and the next poll resumes from
//!    its `Etag`. Every channel's messages therefore reach the client once each, in order — as
//!    long as the history still holds them (`--store-messages`, `--message-ttl`).
//!
//! EventSource is the library's [`EventStream`] and the long-poll waits with the library's
//! [`longpoll::collect`]; WebSocket subscribers are consumers on the library's runtime; the
//! `/sub/` stream is this module's own loop ([`Feed`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchboard::endpoint::Authenticate;
use switchboard::http::StatusCode as Status;
use switchboard::longpoll;
use switchboard::sse::{EventStream, SseEvent};
use switchboard::value::Value;
use switchboard::{
    CloseCode, Connection, Consumer, Frame, Message, Position, Refusal, Scope, Subscription,
};
use tokio::time::Instant;

use super::channel::{ChannelSpec, format_cursor, group_of, parse_cursor};
use super::format::{self, field};
use super::history::{self, Start};
use super::registry::now_ms;
use super::{ApiError, Gateway};

/// Subscriber slots held on this gateway; given back when dropped.
pub struct Slots {
    gw: Arc<Gateway>,
    channels: Vec<String>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Slots").field(&self.channels).finish()
    }
}

impl Slots {
    /// The slots `channels` hold on `gw`.
    pub fn new(gw: Arc<Gateway>, channels: Vec<String>) -> Slots {
        Slots { gw, channels }
    }

    /// Gives back the slot of one channel (it was deleted).
    fn release_one(&mut self, channel: &str) {
        if let Some(i) = self.channels.iter().position(|c| c == channel) {
            self.channels.swap_remove(i);
            self.gw.release(&[channel.to_owned()]);
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.gw.release(&self.channels);
    }
}

/// A subscriber let in: its channels, its cursor, its slots.
#[derive(Debug)]
pub struct Admitted {
    /// The channels.
    pub channels: Vec<ChannelSpec>,
    /// Per channel: the position of the last message the client has, if it said.
    pub cursor: Vec<Option<Position>>,
    /// The subscriber slots taken.
    pub slots: Slots,
}

/// The resume cursor a request carries, if any.
fn cursor_text<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
    for name in ["last-event-id", "if-none-match"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.to_owned());
        }
    }
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "last_id" || k == "last_event_id")
        .map(|(_, v)| v.into_owned())
}

impl Gateway {
    /// Admission: see the module docs.
    pub async fn admit(
        self: &Arc<Self>,
        tail: &str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Admitted, ApiError> {
        if !self.origin_allowed(headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this origin may not subscribe (see --allow-origin)",
            ));
        }
        let channels = self.settings.channels(tail, true)?;
        let cursor = match cursor_text(headers, query) {
            Some(text) => parse_cursor(&text, &channels)?,
            None => vec![None; channels.len()],
        };
        let ids: Vec<String> = channels.iter().map(|c| c.id.clone()).collect();
        let (slots, fresh) = self.reserve(&ids)?;
        self.check_channel_limit(&ids, &fresh).await?;
        self.registry
            .touch(&ids)
            .await
            .map_err(|e| ApiError::unavailable("the channel registry", e))?;
        Ok(Admitted {
            channels,
            cursor,
            slots,
        })
    }
}

/// Where a subscriber stands on each of its channels: the position of the last message
/// delivered (`None` without history).
#[derive(Debug)]
pub struct Cursor {
    chans: Vec<(String, Option<Position>)>,
}

impl Cursor {
    /// The cursor text: how far the client got on each channel.
    pub fn text(&self) -> String {
        format_cursor(self.chans.iter().map(|(id, p)| (id.as_str(), p.as_ref())))
    }

    /// `message` is delivered: the cursor moves on past it.
    fn advance(&mut self, message: &Message) {
        if message.message_type() == format::MESSAGE
            && let Some((_, p)) = self
                .chans
                .iter_mut()
                .find(|(id, _)| id == field(message, "channel"))
        {
            history::advance(p, message);
        }
    }

    /// Stops following a deleted channel: whether no channel is left, or `None` if the
    /// subscriber did not follow it.
    fn remove(&mut self, channel: &str) -> Option<bool> {
        let i = self.chans.iter().position(|(id, _)| id == channel)?;
        self.chans.remove(i);
        Some(self.chans.is_empty())
    }
}

/// Joins every channel of `admitted` on `joins` (step 2 of the module docs): the cursor (where
/// the client stands before the held messages), and the held messages to deliver first.
async fn join_all(
    gw: &Gateway,
    joins: &mut impl history::Joins,
    admitted: &Admitted,
) -> switchboard::Result<(Cursor, Vec<Message>)> {
    let mut cursor = Cursor {
        chans: Vec::with_capacity(admitted.channels.len()),
    };
    let mut backlog = Vec::new();
    for (spec, given) in admitted.channels.iter().zip(&admitted.cursor) {
        let start = Start::of(given.clone(), spec.backtrack);
        let joined = history::join(joins, &gw.layer, gw.history, &spec.group, start).await?;
        cursor.chans.push((spec.id.clone(), joined.position));
        backlog.extend(joined.backlog);
    }
    Ok((cursor, backlog))
}

/// A fresh subscription joined to every channel of `admitted` ([`join_all`]): it, the cursor
/// and the held messages to deliver first.
async fn subscribe(
    gw: &Gateway,
    admitted: &Admitted,
) -> Result<(Subscription, Cursor, Vec<Message>), ApiError> {
    let mut sub = gw
        .layer
        .subscribe()
        .await
        .map_err(|e| ApiError::unavailable("the channel layer", e))?;
    let (cursor, backlog) = join_all(gw, &mut sub, admitted)
        .await
        .map_err(|e| ApiError::unavailable("the channel layer", e))?;
    Ok((sub, cursor, backlog))
}

/// What [`Feed::next`] got.
#[derive(Debug)]
pub enum Next {
    /// A message for the client.
    Message(Message),
    /// A followed channel was deleted: the notice, and whether no channel is left.
    Deleted(Message, bool),
    /// The deadline passed first.
    Tick,
    /// The layer closed (the gateway is shutting down).
    Closed,
}

/// A subscription of the stream and long-poll transports: the layer's
/// [`Subscription`] (which refreshes its groups while it lives and leaves them when dropped,
/// however the client went away), the cursor and the slots.
#[derive(Debug)]
pub struct Feed {
    gw: Arc<Gateway>,
    sub: Subscription,
    cursor: Cursor,
    slots: Slots,
}

impl Feed {
    /// Subscribes (step 2 of the module docs); returns the held messages to deliver first.
    pub async fn open(
        gw: &Arc<Gateway>,
        admitted: Admitted,
    ) -> Result<(Feed, Vec<Message>), ApiError> {
        let (sub, mut cursor, backlog) = subscribe(gw, &admitted).await?;
        backlog.iter().for_each(|m| cursor.advance(m));
        Ok((
            Feed {
                gw: gw.clone(),
                sub,
                cursor,
                slots: admitted.slots,
            },
            backlog,
        ))
    }

    /// Waits for what to deliver next, or `deadline` (a deadline that has passed takes what
    /// is ready and waits for nothing). Cancel-safe only while waiting on the layer, so
    /// callers pass the deadline instead of racing this future.
    pub async fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if self.sub.has_missed() {
                // What the history still holds comes next; the rest is gone (the cursor
                // skips it).
                let missed = self.sub.take_missed_and_recover().await;
                tracing::info!(
                    dropped = missed.dropped,
                    interrupted = missed.interrupted,
                    recovered = missed.recovered,
                    "messages for a subscriber were lost"
                );
            }
            let received = tokio::select! {
                biased; // what is ready goes first, even when the deadline has passed
                r = self.sub.recv() => r,
                () = tokio::time::sleep_until(deadline) => return Next::Tick,
            };
            let Ok(msg) = received else {
                return Next::Closed; // the layer closed (the gateway is shutting down)
            };
            match msg.message_type() {
                format::MESSAGE => {
                    self.cursor.advance(&msg);
                    return Next::Message(msg);
                }
                format::DELETE => {
                    let channel = field(&msg, "channel");
                    let Some(last) = self.cursor.remove(channel) else {
                        continue;
                    };
                    self.slots.release_one(channel);
                    if let Some(group) = group_of(channel)
                        && let Err(e) = self.sub.group_discard(group).await
                    {
                        tracing::debug!(channel, error = %e, "group_discard failed");
                    }
                    return Next::Deleted(format::deleted(channel, now_ms()), last);
                }
                other => tracing::debug!(message_type = other, "unexpected layer message ignored"),
            }
        }
    }
}

/// Messages written into one chunk of a stream, or one long-poll answer, at most.
const BATCH: usize = 64;

/// A long time from now, for "no deadline".
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 86_400)
}

// ---------------------------------------------------------------------------------------------
// EventSource: the library's event stream
// ---------------------------------------------------------------------------------------------

/// `GET /ev/CH[/CH2…]`: EventSource — the library's [`EventStream`] on the subscriber's own
/// subscription (its channels joined as for every transport, the held messages first), which
/// batches, keeps the stream alive, ends it on a gap (the browser resumes from its
/// `Last-Event-ID`), on a drain and after `--subscriber-ttl`. Each message is rendered with its
/// cursor as `id:` and its `Event-Type` as `event:`.
pub async fn eventsource(
    State(gw): State<Arc<Gateway>>,
    Path(tail): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    eventsource_inner(gw, &tail, &headers, query.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn eventsource_inner(
    gw: Arc<Gateway>,
    tail: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    drop(draining_guard(&gw)?); // refused in the gateway's words; the stream registers again
    let admitted = gw.admit(tail, headers, query).await?;
    let (sub, mut cursor, backlog) = subscribe(&gw, &admitted).await?;
    let mut slots = admitted.slots;
    Ok(EventStream::subscribed(sub)
        .backlog(backlog)
        .keep_alive(gw.settings.ping_interval)
        .max_duration(gw.settings.subscriber_ttl)
        .shutdown(&gw.settings.shutdown)
        // The slots hold the gateway, and with it the format: nothing is copied per stream.
        .render(move |m| render_event(&mut cursor, &mut slots, m))
        .open()
        .await)
}

/// One EventSource event: `id:` the cursor after the message (none without history),
/// `event:` the publisher's `Event-Type`, the rendered message as `data:` (split into lines by
/// the library, so that a text cannot add fields of its own). The notice of a deletion is the
/// stream's last event: the browser reconnects, with the channels of its URL.
fn render_event(cursor: &mut Cursor, slots: &mut Slots, m: &Message) -> Option<SseEvent> {
    let format = &slots.gw.format;
    match m.message_type() {
        format::MESSAGE => {
            cursor.advance(m);
            let id = Some(cursor.text()).filter(|c| !c.is_empty());
            let event = m
                .get("event_type")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some(SseEvent::new(format.render(m)).id(id).event(event))
        }
        format::DELETE => {
            let channel = field(m, "channel");
            cursor.remove(channel)?;
            let notice = format.render(&format::deleted(channel, now_ms()));
            slots.release_one(channel);
            Some(SseEvent::new(notice).last())
        }
        other => {
            tracing::debug!(message_type = other, "unexpected layer message ignored");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// The state of one `/sub/` streaming body.
struct Streaming {
    feed: Feed,
    pending: VecDeque<Bytes>,
    next_ping: Option<Instant>,
    ping_every: Option<Duration>,
    ends_at: Option<Instant>,
    ended: bool,
    /// Told to close when the server drains: the stream ends, and the client reconnects
    /// (to another process).
    shutdown: switchboard::shutdown::Guard,
}

impl Streaming {
    fn write(&self, messages: &[Message]) -> Bytes {
        let mut out = String::new();
        for m in messages {
            out.push_str(self.feed.gw.format.render(m).as_str());
            out.push('\n');
        }
        Bytes::from(out)
    }

    fn ping(&self) -> Bytes {
        let mut s = self
            .feed
            .gw
            .format
            .render(&format::ping(now_ms()))
            .to_string();
        s.push('\n');
        Bytes::from(s)
    }

    /// The next chunk of the body, or `None` when the subscription ends.
    async fn step(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.ended {
                return None;
            }
            let deadline = [self.next_ping, self.ends_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(far_future);
            let next = tokio::select! {
                next = self.feed.next(deadline) => next,
                () = self.shutdown.closing() => return None,
            };
            match next {
                Next::Message(m) => {
                    // And whatever else is ready, in one chunk.
                    let mut messages = vec![m];
                    let mut last = false;
                    while messages.len() < BATCH {
                        match self.feed.next(Instant::now()).await {
                            Next::Message(m) => messages.push(m),
                            Next::Deleted(notice, end) => {
                                messages.push(notice);
                                last = end;
                                break;
                            }
                            Next::Tick => break,
                            Next::Closed => {
                                last = true;
                                break;
                            }
                        }
                    }
                    self.ended = last;
                    return Some(self.write(&messages));
                }
                Next::Deleted(notice, last) => {
                    self.ended = last;
                    return Some(self.write(&[notice]));
                }
                Next::Closed => return None,
                Next::Tick => {
                    let now = Instant::now();
                    if self.ends_at.is_some_and(|t| now >= t) {
                        return None; // subscriber TTL: the client reconnects
                    }
                    if let (Some(at), Some(every)) = (self.next_ping, self.ping_every)
                        && now >= at
                    {
                        self.next_ping = Some(now + every);
                        return Some(self.ping());
                    }
                }
            }
        }
    }
}

/// A registration with the shutdown handle for a streaming or long-poll subscriber; 503 once the
/// server drains.
fn draining_guard(gw: &Gateway) -> Result<switchboard::shutdown::Guard, ApiError> {
    gw.settings.shutdown.guard().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "server shutting down",
        )
    })
}

/// `GET /sub/CH[/CH2…]`: plain HTTP streaming (chunked), one message per line.
pub async fn stream(
    State(gw): State<Arc<Gateway>>,
    Path(tail): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    stream_inner(gw, &tail, &headers, query.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn stream_inner(
    gw: Arc<Gateway>,
    tail: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let shutdown = draining_guard(&gw)?;
    let admitted = gw.admit(tail, headers, query).await?;
    let (feed, backlog) = Feed::open(&gw, admitted).await?;
    let now = Instant::now();
    let ping_every = gw.settings.ping_interval;
    let mut state = Streaming {
        feed,
        pending: VecDeque::new(),
        next_ping: ping_every.map(|p| now + p),
        ping_every,
        ends_at: gw.settings.subscriber_ttl.map(|t| now + t),
        ended: false,
        shutdown,
    };
    // hyper sends the response head with the first chunk of the body: send one at once, so
    // the client knows it is subscribed before the first message.
    state.pending.push_back(Bytes::from_static(b"\n"));
    if !backlog.is_empty() {
        let chunk = state.write(&backlog);
        state.pending.push_back(chunk);
    }
    let body = Body::from_stream(futures_util::stream::unfold(state, |mut st| async move {
        st.step()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), st))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Long-polling
// ---------------------------------------------------------------------------------------------

/// `GET /lp/CH[/CH2…]`: answers at once with every message newer than the cursor
/// (`If-None-Match` or `?last_id=`), or waits for the next one up to `--longpoll-timeout`
/// (then 304). The answer's `Etag` is the cursor to send next time.
pub async fn long_poll(
    State(gw): State<Arc<Gateway>>,
    Path(tail): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    long_poll_inner(gw, &tail, &headers, query.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn long_poll_inner(
    gw: Arc<Gateway>,
    tail: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let shutdown = draining_guard(&gw)?;
    let admitted = gw.admit(tail, headers, query).await?;
    let (mut sub, mut cursor, backlog) = subscribe(&gw, &admitted).await?;
    // The held messages, what the history replays after the cursor, or — when there is none of
    // either — the next message within --longpoll-timeout (a drain answers at once, as the
    // timeout would: 304 with the cursor, and the client polls again, on another process):
    // the library's long-poll wait. The next poll, from the answer's cursor, gets the rest.
    let most = gw.settings.store_messages.max(BATCH);
    let wait = if backlog.is_empty() {
        gw.settings.longpoll_timeout
    } else {
        Duration::ZERO
    };
    let mut received = backlog;
    received.extend(longpoll::collect(&mut sub, wait, most, Some(&shutdown)).await);
    let mut items = Vec::with_capacity(received.len());
    for m in received {
        match m.message_type() {
            format::MESSAGE => {
                cursor.advance(&m);
                items.push(m);
            }
            format::DELETE => {
                let channel = field(&m, "channel");
                if cursor.remove(channel).is_some() {
                    items.push(format::deleted(channel, now_ms()));
                    break; // the poll answers with the notice
                }
            }
            _ => {}
        }
    }
    sub.close().await;
    drop(admitted.slots);
    // No cursor without history: no Etag.
    let cursor = cursor.text();
    let etag = (!cursor.is_empty())
        .then(|| HeaderValue::from_str(&format!("\"{cursor}\"")).ok())
        .flatten();
    let mut response = if items.is_empty() {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let rendered: Vec<String> = items
            .iter()
            .map(|m| gw.format.render(m).to_string())
            .collect();
        let (body, content_type) = match gw.format {
            format::Format::Json => (format!("[{}]", rendered.join(",")), "application/json"),
            format::Format::Template(_) => (rendered.join("\n"), "text/plain; charset=utf-8"),
        };
        let mut r = Response::new(Body::from(body));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = response.headers_mut();
    if let Some(etag) = etag {
        h.insert(header::ETAG, etag);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// The admission of a WebSocket, run by the endpoint during the handshake: refusals get their
/// status and reason; the admitted subscription travels to the consumer in the scope.
#[derive(Debug)]
pub struct WsAdmission(pub Arc<Gateway>);

/// An admitted subscription on its way from the handshake to the consumer.
#[derive(Clone)]
struct Ticket(Arc<parking_lot::Mutex<Option<Admitted>>>);

impl Authenticate for WsAdmission {
    async fn authenticate(&self, scope: &mut Scope) -> Result<(), Refusal> {
        let tail = scope.param("channels").unwrap_or("").to_owned();
        let query = scope.query_string().to_owned();
        let query = (!query.is_empty()).then_some(query);
        let headers = scope.to_header_map();
        match self.0.admit(&tail, &headers, query.as_deref()).await {
            Ok(admitted) => {
                scope
                    .extensions_mut()
                    .insert(Ticket(Arc::new(parking_lot::Mutex::new(Some(admitted)))));
                Ok(())
            }
            Err(e) => Err(Refusal::new(
                Status::from_u16(e.status.as_u16()).unwrap_or(Status::FORBIDDEN),
                e.message,
            )),
        }
    }
}

/// The consumer factory of `/ws/…`.
pub fn ws_factory(gw: Arc<Gateway>) -> impl Fn(&Scope) -> WsSubscriber + Send + Sync {
    move |scope: &Scope| WsSubscriber {
        gw: gw.clone(),
        admitted: scope
            .extensions()
            .get::<Ticket>()
            .and_then(|t| t.0.lock().take()),
        cursor: None,
        slots: None,
        ttl: None,
    }
}

/// One WebSocket subscriber, on switchboard's consumer runtime (which does the pings, the
/// bounded outbound queue and the group clean-up).
#[derive(Debug)]
pub struct WsSubscriber {
    gw: Arc<Gateway>,
    admitted: Option<Admitted>,
    cursor: Option<Cursor>,
    slots: Option<Slots>,
    ttl: Option<tokio::task::AbortHandle>,
}

impl Consumer for WsSubscriber {
    type Incoming = Frame;
    type Event = Message;

    async fn connect(&mut self, conn: &mut Connection) -> switchboard::Result<()> {
        let Some(admitted) = self.admitted.take() else {
            return conn.close(CloseCode(4400), "not admitted").await;
        };
        // Admission read what it needed from the request: an idle subscriber keeps none of it.
        let scope = conn.scope_mut();
        *scope.headers_mut() = HeaderMap::new();
        *scope.extensions_mut() = axum::http::Extensions::new();
        let (cursor, backlog) = join_all(&self.gw, conn, &admitted).await?;
        self.slots = Some(admitted.slots);
        conn.accept().await?;
        for message in &backlog {
            conn.send_text(self.gw.format.render(message)).await?;
        }
        self.cursor = Some(cursor);
        if let Some(ttl) = self.gw.settings.subscriber_ttl {
            let (layer, me) = (conn.layer().clone(), conn.channel_name().clone());
            let task = tokio::spawn(async move {
                tokio::time::sleep(ttl).await;
                let ttl_msg = serde_json::json!({"type": format::TTL});
                if let Err(e) = layer.send(&me, ttl_msg).await {
                    tracing::debug!(error = %e, "subscriber TTL notice not sent");
                }
            });
            self.ttl = Some(task.abort_handle());
        }
        Ok(())
    }

    /// Subscribers only listen; what they send is ignored.
    async fn receive(&mut self, _conn: &mut Connection, _frame: Frame) -> switchboard::Result<()> {
        Ok(())
    }

    async fn event(&mut self, conn: &mut Connection, msg: Message) -> switchboard::Result<()> {
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(());
        };
        match msg.message_type() {
            format::MESSAGE => conn.send_text(self.gw.format.render(&msg)).await?,
            format::DELETE => {
                let channel = field(&msg, "channel");
                let Some(last) = cursor.remove(channel) else {
                    return Ok(());
                };
                if let Some(slots) = self.slots.as_mut() {
                    slots.release_one(channel);
                }
                if let Some(group) = group_of(channel) {
                    conn.group_discard(group).await?;
                }
                let notice = format::deleted(channel, now_ms());
                conn.send_text(self.gw.format.render(&notice)).await?;
                if last {
                    conn.close(CloseCode::NORMAL, "channel deleted").await?;
                }
            }
            format::TTL => {
                conn.close(CloseCode::NORMAL, "subscriber TTL reached")
                    .await?
            }
            other => tracing::debug!(message_type = other, "unexpected layer message ignored"),
        }
        Ok(())
    }

    async fn disconnect(
        &mut self,
        _conn: &mut Connection,
        _code: CloseCode,
    ) -> switchboard::Result<()> {
        if let Some(task) = self.ttl.take() {
            task.abort();
        }
        self.slots = None;
        Ok(())
    }
}
