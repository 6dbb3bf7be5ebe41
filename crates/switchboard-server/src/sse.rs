//! Server-sent events: a group's messages as a `text/event-stream` response, resumable from
//! the group's history — a live feed for browsers without WebSocket (`new EventSource(url)`).
//!
//! An [`EventStream`] is built in an axum handler, which decides which group the request may
//! follow (from the path, the user), and answered with [`EventStream::open`]:
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, extract::{Path, State}, response::Response, routing::get};
//! use switchboard::{InMemoryLayer, Layer, LayerConfig, Shutdown};
//! use switchboard::feed::Since;
//! use switchboard::sse::EventStream;
//!
//! #[derive(Clone)]
//! struct App { layer: Layer, shutdown: Shutdown }
//!
//! async fn events(State(app): State<App>, Path(room): Path<String>, Since(since): Since) -> Response {
//!     EventStream::new(app.layer, format!("chat_{room}"))
//!         .since(since)
//!         .shutdown(&app.shutdown)
//!         .open()
//!         .await
//! }
//!
//! # fn main() -> switchboard::Result<()> {
//! let cfg = LayerConfig::default().group_history("chat_*", 100, Duration::from_secs(300))?;
//! let app = App { layer: Layer::new(InMemoryLayer::new(cfg)), shutdown: Shutdown::new() };
//! let router: Router = Router::new().route("/events/{room}", get(events)).with_state(app);
//! # Ok(()) }
//! ```
//!
//! # The stream
//!
//! The response is `200`, `Content-Type: text/event-stream`, `Cache-Control: no-store`,
//! `X-Accel-Buffering: no` (nginx passes it on at once). Its body:
//!
//! 1. `: ok` — a comment, so the client has the response head at once — and, when set with
//!    [`retry`](EventStream::retry), `retry: MILLISECONDS`;
//! 2. for a group that keeps history ([`LayerConfig::group_history`]), one `recovery` event
//!    (left out for a group without history and no position asked for):
//!    ```text
//!    id: k3x9:42
//!    event: recovery
//!    data: {"recovered":true,"replayed":3,"position":"k3x9:45"}
//!    ```
//!    `recovered` is `false` when the position the client gave (`Last-Event-ID`, `?since=`) is
//!    from another epoch, older than the history holds, or ahead of it: nothing is replayed
//!    and the app should reload its state instead of showing a hole. `position` is the group's
//!    position at the join (`null` for a group without history). The event's `id:` is where
//!    the browser resumes from if the connection drops now: the position it gave when
//!    recovered (the replay follows), else the group's position;
//! 3. the replayed messages, oldest first, then the live ones, one event each:
//!    ```text
//!    id: k3x9:43
//!    event: chat.message
//!    data: {"type":"chat.message","text":"hi","position":"k3x9:43"}
//!    ```
//!    `id:` is the message's [`position`](switchboard_core::Message::position) (a message of a
//!    group without history has none, and no `id:` line: the browser keeps the last one);
//!    `event:` is the message's type — listen with `addEventListener("chat.message", …)` — or
//!    absent with [`typed_events(false)`](EventStream::typed_events), for `onmessage`; `data:`
//!    is the message as JSON ([`Message::to_json_text`](switchboard_core::Message::to_json_text)).
//!    No message is delivered twice, and none of the group's is skipped across the switch from
//!    replay to live ([`Subscription::group_add_since`]);
//! 4. `: keep-alive` every [`keep_alive`](EventStream::keep_alive) interval (15 s by default),
//!    so that proxies do not close an idle stream;
//! 5. a `gap` event when the subscription's bounded queue dropped messages or the layer's
//!    connection was interrupted ([`Subscription::take_missed`]):
//!    `id:` the last message delivered / `event: gap` /
//!    `data: {"dropped":12,"interrupted":false}`, after which the stream **ends**: the browser
//!    reconnects with that `Last-Event-ID`, and the history replays what was dropped (if it
//!    still holds it; else the `recovery` event says `recovered: false`). The queue tells a
//!    hole when the receiver reaches it but not whether it lies just before or just after the
//!    message received with it, so that message is left to the replay too (a message without
//!    a position, which nothing could replay, is delivered before the `gap`).
//!
//! The stream ends (the body finishes) when a [`Shutdown`] given with
//! [`shutdown`](EventStream::shutdown) drains, when the layer is closed, after a gap, after
//! [`max_duration`](EventStream::max_duration), and when the client goes away (the
//! subscription leaves its group and discards its channel on drop). A browser's EventSource
//! reconnects by itself after an end, with `Last-Event-ID`.
//!
//! # Your own subscription and events
//!
//! [`EventStream::subscribed`] streams a [`Subscription`] the handler joined itself — to several
//! groups, "since" positions it chose, with presence — and [`render`](EventStream::render)
//! decides what each message becomes: its `id:` (a cursor over several groups, say), its
//! `event:`, its `data:` (HTML for htmx's SSE extension, a template…), nothing at all, or the
//! last event of the stream. Messages given to [`backlog`](EventStream::backlog) (history the
//! handler read) go first. Everything else — batching, keep-alive, the `gap` event and the end
//! (with the `id:` of the last event rendered), drain, metrics — is as above; no `recovery`
//! event is sent (the handler knows what it replayed). The push gateway example's EventSource
//! transport is one (`examples/push/src/subscribe.rs`).
//!
//! # Refusals
//!
//! Plain-text answers, nothing internal in them (the layer's error is logged at `warn`):
//! `400 bad group name` for a group the layer refuses (a name built from a bad path segment),
//! `503 server shutting down` once the drain has begun or the layer is closed, `503 service
//! unavailable` when the layer fails. A bad `Last-Event-ID` or `since` is refused by the [`Since`](crate::feed::Since)
//! extractor (`400`) before the handler runs.
//!
//! # Memory
//!
//! Per stream: the subscription's channel, bounded by the layer's
//! [`capacity`](switchboard_core::LayerConfig::capacity) (what does not fit is dropped by the
//! layer and told as a `gap`), and at most 64 messages rendered into one body chunk. When the
//! client stops reading, hyper stops asking the body for chunks once its write buffer is full:
//! nothing more is read from the subscription, its queue fills, the layer drops what does not
//! fit, and when the client reads again it gets what was queued, then the `gap` event, then the
//! end. While it does not read at all, its connection stays open until TCP gives up on it —
//! unless the server has a [`write_timeout`](crate::HttpLimits::write_timeout), which closes a
//! connection whose writes have made no progress for that long.
//!
//! [`LayerConfig::group_history`]: switchboard_core::LayerConfig::group_history
//! [`Subscription::group_add_since`]: switchboard_core::Subscription::group_add_since
//! [`Subscription::take_missed`]: switchboard_core::Subscription::take_missed

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{HeaderValue, header};
use switchboard_core::{Layer, LayerError, Message, Position, Subscription, Text};
use tokio::time::Instant;

use crate::feed::refuse;
use crate::shutdown::{Guard, Shutdown};

/// Messages rendered into one body chunk at most.
const BATCH: usize = 64;

/// What [`EventStream::render`] makes of a message: one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: Text,
    last: bool,
}

impl SseEvent {
    /// An event carrying `data` (split into `data:` lines by [`write_event`]).
    pub fn new(data: impl Into<Text>) -> SseEvent {
        SseEvent {
            id: None,
            event: None,
            data: data.into(),
            last: false,
        }
    }

    /// Its `id:` — what the browser sends back as `Last-Event-ID`; `None`: no `id:` line (the
    /// browser keeps the last one).
    pub fn id(mut self, id: Option<String>) -> SseEvent {
        self.id = id;
        self
    }

    /// Its `event:` (`None`: a plain `message` event).
    pub fn event(mut self, event: Option<String>) -> SseEvent {
        self.event = event;
        self
    }

    /// Ends the stream after this event.
    pub fn last(mut self) -> SseEvent {
        self.last = true;
        self
    }
}

/// How messages become events ([`EventStream::render`]).
type Renderer = Box<dyn FnMut(&Message) -> Option<SseEvent> + Send>;

/// What a stream follows.
enum Source {
    /// One group, joined at `open`.
    Group(String),
    /// A subscription the handler joined, and what to send before what it receives.
    Subscribed(Box<Subscription>, Vec<Message>),
}

/// A `text/event-stream` response following a group (or a subscription): see the
/// [module docs](self).
pub struct EventStream {
    layer: Layer,
    source: Source,
    since: Option<Position>,
    keep_alive: Option<Duration>,
    typed: bool,
    retry: Option<Duration>,
    shutdown: Option<Shutdown>,
    render: Option<Renderer>,
    max_duration: Option<Duration>,
    hold: Option<Box<dyn std::any::Any + Send>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Group(g) => format!("group {g}"),
            Source::Subscribed(sub, backlog) => {
                format!("{} (backlog {})", sub.channel_name(), backlog.len())
            }
        };
        f.debug_struct("EventStream")
            .field("source", &source)
            .field("since", &self.since)
            .field("keep_alive", &self.keep_alive)
            .field("typed", &self.typed)
            .field("retry", &self.retry)
            .field("render", &self.render.is_some())
            .field("max_duration", &self.max_duration)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// A stream of `group`'s messages on `layer`, from now.
    pub fn new(layer: impl Into<Layer>, group: impl Into<String>) -> EventStream {
        EventStream::from_source(layer.into(), Source::Group(group.into()))
    }

    /// A stream of what `sub` receives: groups the handler joined itself (see the
    /// [module docs](self#your-own-subscription-and-events)). [`since`](EventStream::since)
    /// does not apply: the handler joined "since" what it chose.
    ///
    /// A user's feed — their own group and the site-wide one — as HTML fragments for htmx's SSE
    /// extension (`sse-swap="message"`):
    ///
    /// ```
    /// use axum::{extract::State, http::StatusCode, response::{IntoResponse, Response}};
    /// use switchboard::Layer;
    /// use switchboard::sse::{EventStream, SseEvent};
    ///
    /// fn escape(s: &str) -> String {
    ///     s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    /// }
    ///
    /// async fn feed(State(layer): State<Layer>) -> Response {
    ///     let Ok(mut sub) = layer.subscribe().await else {
    ///         return (StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response();
    ///     };
    ///     for group in ["user.7", "site"] {
    ///         if sub.group_add(group).await.is_err() {
    ///             return (StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response();
    ///         }
    ///     }
    ///     EventStream::subscribed(sub)
    ///         .render(|m| {
    ///             let text = m.get("text")?.as_str()?;
    ///             let html = format!("<li>{}</li>", escape(text));
    ///             Some(SseEvent::new(html).event(Some("message".into())))
    ///         })
    ///         .open()
    ///         .await
    /// }
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/feed", axum::routing::get(feed))
    ///     .with_state(Layer::new(switchboard::InMemoryLayer::default()));
    /// ```
    pub fn subscribed(sub: Subscription) -> EventStream {
        let layer = sub.layer().clone();
        EventStream::from_source(layer, Source::Subscribed(Box::new(sub), Vec::new()))
    }

    fn from_source(layer: Layer, source: Source) -> EventStream {
        EventStream {
            layer,
            source,
            since: None,
            keep_alive: Some(Duration::from_secs(15)),
            typed: true,
            retry: None,
            shutdown: None,
            render: None,
            max_duration: None,
            hold: None,
        }
    }

    /// Messages to send first, oldest first (history the handler read; for a stream made with
    /// [`subscribed`](EventStream::subscribed) only).
    pub fn backlog(mut self, messages: Vec<Message>) -> EventStream {
        if let Source::Subscribed(_, backlog) = &mut self.source {
            *backlog = messages;
        }
        self
    }

    /// What each message becomes: an [`SseEvent`], or `None` to send nothing for it. Without
    /// it, a message is the event the [module docs](self) describe (`id:` its position,
    /// `event:` its type, `data:` its JSON).
    pub fn render(
        mut self,
        render: impl FnMut(&Message) -> Option<SseEvent> + Send + 'static,
    ) -> EventStream {
        self.render = Some(Box::new(render));
        self
    }

    /// Ends the stream after this long (`None`: never, the default): the browser reconnects
    /// with `Last-Event-ID` — to another process, maybe, behind a load balancer.
    pub fn max_duration(mut self, after: Option<Duration>) -> EventStream {
        self.max_duration = after;
        self
    }

    /// Keeps `value` as long as the stream lives, and drops it when the stream ends or the
    /// client goes away (a slot, a permit, a count of subscribers).
    pub fn hold(mut self, value: impl Send + 'static) -> EventStream {
        self.hold = Some(Box::new(value));
        self
    }

    /// Sends `retry:` first: how long a browser waits before it reconnects after the stream
    /// ended or broke (browsers default to a few seconds). Default: not sent.
    pub fn retry(mut self, after: Option<Duration>) -> EventStream {
        self.retry = after;
        self
    }

    /// Resumes after `since` (the client's `Last-Event-ID` or `since`, as the
    /// [`Since`](crate::feed::Since) extractor reads them): the group's history after it is
    /// replayed first.
    pub fn since(mut self, since: Option<Position>) -> EventStream {
        self.since = since;
        self
    }

    /// The keep-alive comment's interval (`None`, or zero: none). Default 15 s.
    pub fn keep_alive(mut self, every: Option<Duration>) -> EventStream {
        self.keep_alive = every.filter(|d| !d.is_zero());
        self
    }

    /// Whether each message's event carries `event: TYPE` (default `true`); without it every
    /// message is a plain `message` event, for `onmessage`. The `recovery` and `gap` events
    /// are named either way.
    pub fn typed_events(mut self, typed: bool) -> EventStream {
        self.typed = typed;
        self
    }

    /// Registers the stream with `shutdown`: refused with 503 once it drains, ended when the
    /// drain reaches it.
    pub fn shutdown(mut self, shutdown: &Shutdown) -> EventStream {
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// Subscribes and answers: the event stream, or a plain-text refusal (see the
    /// [module docs](self)).
    pub async fn open(self) -> Response {
        let (guard, mut sub, backlog, group) = match self.source {
            Source::Group(group) => {
                match crate::feed::start(&self.layer, self.shutdown.as_ref(), "event stream").await
                {
                    Ok((guard, sub)) => (guard, sub, Vec::new(), Some(group)),
                    Err(refused) => return refused,
                }
            }
            Source::Subscribed(sub, backlog) => match crate::feed::guard(self.shutdown.as_ref()) {
                Ok(guard) => (guard, *sub, backlog, None),
                Err(crate::feed::Draining) => return crate::feed::shutting_down(),
            },
        };
        let mut head = String::from(": ok\n\n");
        if let Some(after) = self.retry {
            let _ = write!(head, "retry: {}\n\n", after.as_millis());
        }
        let mut last = None;
        if let Some(group) = group {
            match join(&mut sub, &group, self.since.as_ref(), &mut head).await {
                Ok(id) => last = id,
                Err(refused) => return refused,
            }
        }
        let now = Instant::now();
        let mut state = State {
            sub,
            guard,
            typed: self.typed,
            keep_alive: self.keep_alive,
            next_ping: self.keep_alive.and_then(|every| now.checked_add(every)),
            ends_at: self.max_duration.and_then(|d| now.checked_add(d)),
            pending: VecDeque::new(),
            ended: false,
            last,
            end: None,
            render: self.render,
            _hold: self.hold,
        };
        crate::metrics::http_stream_opened();
        for m in &backlog {
            if state.ended {
                break;
            }
            state.write(&mut head, m);
        }
        state.pending.push_back(Bytes::from(head));
        // The replay is in the subscription already: render it at once, behind the head.
        if !state.ended {
            state.drain_ready();
        }
        let body = Body::from_stream(futures_util::stream::unfold(state, |mut st| async move {
            st.step()
                .await
                .map(|chunk| (Ok::<_, Infallible>(chunk), st))
        }));
        let mut response = Response::new(body);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

/// Joins `group` "since" the client's position, writing the `recovery` event into `head`; the
/// `id:` the stream starts from, or the refusal.
async fn join(
    sub: &mut Subscription,
    group: &str,
    since: Option<&Position>,
    head: &mut String,
) -> Result<Option<String>, Response> {
    let mut last = None;
    match sub.group_add_since(group, since).await {
        Ok(resumed) => {
            let id = match (since, resumed.recovered) {
                (Some(since), true) => since.to_string(),
                _ => resumed.position.to_string(),
            };
            last = Some(id.clone());
            let data = serde_json::json!({
                "recovered": resumed.recovered,
                "replayed": resumed.replayed,
                "position": resumed.position.to_string(),
            });
            write_event(head, Some(&id), Some("recovery"), &data.to_string());
        }
        Err(LayerError::Unsupported(_)) => {
            // A group without history: live only.
            if let Err(e) = sub.group_add(group).await {
                return Err(refuse("event stream", &e));
            }
            if since.is_some() {
                let data = r#"{"recovered":false,"replayed":0,"position":null}"#;
                write_event(head, None, Some("recovery"), data);
            }
        }
        Err(e) => return Err(refuse("event stream", &e)),
    }
    Ok(last)
}

/// Appends one server-sent event to `out`: `id:` and `event:` lines when given, one `data:`
/// line per line of `data`, and the blank line that ends the event.
///
/// Contents cannot break the framing: `data` is split where a browser's EventSource parser ends
/// a line (`\r\n`, `\r` and `\n` alike), so the client receives each line break as `\n`
/// and no line of `data` can add a field of its own; an `id` or `event` containing a line break
/// (or an `id` with a NUL, which browsers ignore) is left out.
///
/// ```
/// let mut out = String::new();
/// switchboard::sse::write_event(&mut out, Some("e1:7"), Some("chat"), "one\r\ntwo");
/// assert_eq!(out, "id: e1:7\nevent: chat\ndata: one\ndata: two\n\n");
/// ```
pub fn write_event(out: &mut String, id: Option<&str>, event: Option<&str>, data: &str) {
    if let Some(id) = id.filter(|i| !i.contains(['\r', '\n', '\0'])) {
        let _ = writeln!(out, "id: {id}");
    }
    if let Some(event) = event.filter(|e| !e.is_empty() && !e.contains(['\r', '\n'])) {
        let _ = writeln!(out, "event: {event}");
    }
    let mut rest = data;
    loop {
        match rest.find(['\r', '\n']) {
            Some(i) => {
                let _ = writeln!(out, "data: {}", &rest[..i]);
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                let _ = writeln!(out, "data: {rest}");
                break;
            }
        }
    }
    out.push('\n');
}

struct State {
    sub: Subscription,
    guard: Option<Guard>,
    typed: bool,
    keep_alive: Option<Duration>,
    next_ping: Option<Instant>,
    /// When [`EventStream::max_duration`] ends the stream.
    ends_at: Option<Instant>,
    pending: VecDeque<Bytes>,
    ended: bool,
    /// The position of the last message delivered (or the one the stream started from).
    last: Option<String>,
    /// Why the stream ended, for the metrics (`None` when the response was dropped first: the
    /// client went away).
    end: Option<&'static str>,
    render: Option<Renderer>,
    /// [`EventStream::hold`]: dropped with the stream.
    _hold: Option<Box<dyn std::any::Any + Send>>,
}

impl Drop for State {
    fn drop(&mut self) {
        crate::metrics::http_stream_closed(self.end.unwrap_or("client"));
    }
}

impl State {
    /// Renders `first` and whatever else is ready (up to [`BATCH`]) into one chunk; after a
    /// gap, the `gap` event and the end.
    fn render(&mut self, first: Option<Message>) {
        let mut out = String::new();
        let mut next = first;
        for _ in 0..BATCH {
            let m = match next.take() {
                Some(m) => m,
                None => {
                    if self.sub.has_missed() {
                        self.gap(&mut out); // a hole before the next message
                        break;
                    }
                    match self.sub.recv().now_or_never() {
                        Some(Ok(m)) => m,
                        Some(Err(_)) => {
                            self.ended = true; // the layer closed
                            self.end = Some("shutdown");
                            break;
                        }
                        None => break,
                    }
                }
            };
            if self.sub.has_missed() {
                // A hole right before `m` or right after it: which, the queue cannot say. A
                // message with a position is left to the history (the client resumes from
                // the one before it); one without is delivered, as nothing could replay it.
                if m.position().is_none() {
                    self.write(&mut out, &m);
                }
                if !self.ended {
                    self.gap(&mut out);
                }
                break;
            }
            self.write(&mut out, &m);
            if self.ended {
                break; // the renderer's last event
            }
        }
        if !out.is_empty() {
            self.pending.push_back(Bytes::from(out));
        }
    }

    fn write(&mut self, out: &mut String, m: &Message) {
        if let Some(render) = &mut self.render {
            let Some(ev) = render(m) else { return };
            write_event(out, ev.id.as_deref(), ev.event.as_deref(), ev.data.as_str());
            if ev.id.is_some() {
                self.last = ev.id;
            }
            if ev.last {
                self.ended = true;
                self.end = Some("server");
            }
            return;
        }
        let id = m.position().map(Position::to_string);
        let event = self.typed.then(|| m.message_type());
        write_event(out, id.as_deref(), event, m.to_json_text().as_str());
        if id.is_some() {
            self.last = id;
        }
    }

    /// The `gap` event, with the `id:` of the last message delivered (where the client resumes
    /// from), and the end.
    fn gap(&mut self, out: &mut String) {
        let missed = self.sub.take_missed();
        crate::metrics::missed(missed);
        let data = serde_json::json!({
            "dropped": missed.dropped,
            "interrupted": missed.interrupted,
        });
        write_event(out, self.last.as_deref(), Some("gap"), &data.to_string());
        self.ended = true;
        self.end = Some("gap");
    }

    /// Renders what is ready without waiting.
    fn drain_ready(&mut self) {
        self.render(None);
    }

    /// The next chunk of the body, or `None` when the stream ends.
    async fn step(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.ended {
                return None;
            }
            let ping_at = self.next_ping;
            let guard = &self.guard;
            let closing = async {
                match guard {
                    Some(g) => g.closing().await,
                    None => std::future::pending().await,
                }
            };
            let ping = async {
                match ping_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let ends_at = self.ends_at;
            let expired = async {
                match ends_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = closing => {
                    self.end = Some("shutdown");
                    return None;
                }
                r = self.sub.recv() => match r {
                    Ok(m) => self.render(Some(m)),
                    Err(_) => {
                        self.end = Some("shutdown"); // the layer closed
                        return None;
                    }
                },
                () = expired => {
                    self.end = Some("max_duration");
                    return None;
                }
                () = ping => {
                    self.next_ping = self
                        .keep_alive
                        .and_then(|every| Instant::now().checked_add(every));
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::write_event;

    #[test]
    fn events_cannot_be_broken_by_their_contents() {
        let mut out = String::new();
        write_event(
            &mut out,
            Some("e:1"),
            Some("a\nid: x"),
            "one\ntwo\rthree\r\n\nfour",
        );
        assert_eq!(
            out,
            "id: e:1\ndata: one\ndata: two\ndata: three\ndata: \ndata: four\n\n"
        );
        let mut out = String::new();
        write_event(&mut out, Some("x\r"), None, "");
        assert_eq!(out, "data: \n\n");
    }
}
