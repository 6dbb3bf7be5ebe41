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
//! [`shutdown`](EventStream::shutdown) drains, when the layer is closed, after a gap, and when
//! the client goes away (the subscription leaves its group and discards its channel on drop).
//! A browser's EventSource reconnects by itself after an end, with `Last-Event-ID`.
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
use switchboard_core::{Layer, LayerError, Message, Position, Subscription};
use tokio::time::Instant;

use crate::feed::refuse;
use crate::shutdown::{Guard, Shutdown};

/// Messages rendered into one body chunk at most.
const BATCH: usize = 64;

/// A `text/event-stream` response following one group: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct EventStream {
    layer: Layer,
    group: String,
    since: Option<Position>,
    keep_alive: Option<Duration>,
    typed: bool,
    retry: Option<Duration>,
    shutdown: Option<Shutdown>,
}

impl EventStream {
    /// A stream of `group`'s messages on `layer`, from now.
    pub fn new(layer: impl Into<Layer>, group: impl Into<String>) -> EventStream {
        EventStream {
            layer: layer.into(),
            group: group.into(),
            since: None,
            keep_alive: Some(Duration::from_secs(15)),
            typed: true,
            retry: None,
            shutdown: None,
        }
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
        let (guard, mut sub) =
            match crate::feed::start(&self.layer, self.shutdown.as_ref(), "event stream").await {
                Ok(started) => started,
                Err(refused) => return refused,
            };
        let mut head = String::from(": ok\n\n");
        if let Some(after) = self.retry {
            let _ = write!(head, "retry: {}\n\n", after.as_millis());
        }
        let mut last = None;
        match sub
            .group_add_since(self.group.as_str(), self.since.as_ref())
            .await
        {
            Ok(resumed) => {
                let id = match (&self.since, resumed.recovered) {
                    (Some(since), true) => since.to_string(),
                    _ => resumed.position.to_string(),
                };
                last = Some(id.clone());
                let data = serde_json::json!({
                    "recovered": resumed.recovered,
                    "replayed": resumed.replayed,
                    "position": resumed.position.to_string(),
                });
                write_event(&mut head, Some(&id), Some("recovery"), &data.to_string());
            }
            Err(LayerError::Unsupported(_)) => {
                // A group without history: live only.
                if let Err(e) = sub.group_add(self.group.as_str()).await {
                    return refuse("event stream", &e);
                }
                if self.since.is_some() {
                    let data = r#"{"recovered":false,"replayed":0,"position":null}"#;
                    write_event(&mut head, None, Some("recovery"), data);
                }
            }
            Err(e) => return refuse("event stream", &e),
        }
        let now = Instant::now();
        let mut state = State {
            sub,
            guard,
            typed: self.typed,
            keep_alive: self.keep_alive,
            next_ping: self.keep_alive.and_then(|every| now.checked_add(every)),
            pending: VecDeque::from([Bytes::from(head)]),
            ended: false,
            last,
            end: None,
        };
        crate::metrics::http_stream_opened();
        // The replay is in the subscription already: render it at once, behind the head.
        state.drain_ready();
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
    pending: VecDeque<Bytes>,
    ended: bool,
    /// The position of the last message delivered (or the one the stream started from).
    last: Option<String>,
    /// Why the stream ended, for the metrics (`None` when the response was dropped first: the
    /// client went away).
    end: Option<&'static str>,
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
                self.gap(&mut out);
                break;
            }
            self.write(&mut out, &m);
        }
        if !out.is_empty() {
            self.pending.push_back(Bytes::from(out));
        }
    }

    fn write(&mut self, out: &mut String, m: &Message) {
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
