//! Long-polling: `GET …?since=POS` answers with a group's messages after a history position,
//! waiting for the next one when there is none yet — a live feed for clients that can do
//! nothing but plain requests.
//!
//! A [`LongPoll`] is built in an axum handler, like an [`EventStream`](crate::sse::EventStream),
//! and answered with [`LongPoll::open`]:
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, extract::{Path, State}, response::Response, routing::get};
//! use switchboard::{InMemoryLayer, Layer, LayerConfig};
//! use switchboard::feed::Since;
//! use switchboard::longpoll::LongPoll;
//!
//! async fn poll(State(layer): State<Layer>, Path(room): Path<String>, Since(since): Since) -> Response {
//!     LongPoll::new(layer, format!("chat_{room}"))
//!         .since(since)
//!         .timeout(Duration::from_secs(25))
//!         .open()
//!         .await
//! }
//!
//! # fn main() -> switchboard::Result<()> {
//! let cfg = LayerConfig::default().group_history("chat_*", 100, Duration::from_secs(300))?;
//! let layer = Layer::new(InMemoryLayer::new(cfg));
//! let router: Router = Router::new().route("/poll/{room}", get(poll)).with_state(layer);
//! # Ok(()) }
//! ```
//!
//! # The answer
//!
//! Always `200`, JSON, `Cache-Control: no-store`:
//!
//! ```json
//! {"messages":[{"type":"chat.message","text":"hi","position":"k3x9:43"}],"position":"k3x9:43","recovered":true}
//! ```
//!
//! - without `since` (the client's first poll): at once, no messages, the group's position
//!   now — where the client polls from next;
//! - with `since`, when the history has messages after it: at once, those (oldest first, at
//!   most [`max_messages`](LongPoll::max_messages)), and `position` the last one's;
//! - with `since` and nothing after it yet: it waits until a message arrives (then answers
//!   with it, and whatever else is ready) or [`timeout`](LongPoll::timeout) passes (30 s by
//!   default; then an empty list and the same position). A drain of the
//!   [`shutdown`](LongPoll::shutdown) handle, or the layer closing, answers a waiting poll as
//!   the timeout does, so the client polls again (elsewhere);
//! - `recovered: false` (at once, no messages, the group's position now) when the history
//!   cannot give everything after `since` — another epoch, older than it holds, ahead of it:
//!   the app reloads its state and polls on from `position`.
//!
//! The client loops: `since = answer.position`. Each poll joins the group since the position
//! and leaves it when it answers ([`Subscription::group_add_since`]), so nothing published
//! between two polls is lost while the history holds it, and nothing is answered twice. When
//! the subscription's queue dropped messages while the poll waited (or the layer's connection
//! was interrupted), the answer stops before the hole — and before the message received with
//! it, which may lie on either side — and the next poll gets the rest from history.
//!
//! The group must keep history ([`LayerConfig::group_history`]); for one that does not, the
//! answer is `500 feed without history` (a server configuration error; logged). Other
//! refusals are the event stream's: `400 bad group name`, `503 server shutting down`, `503
//! service unavailable` (the layer failed; logged); a bad `since` is a `400` from the
//! [`Since`](crate::feed::Since) extractor.
//!
//! [`LayerConfig::group_history`]: switchboard_core::LayerConfig::group_history
//! [`Subscription::group_add_since`]: switchboard_core::Subscription::group_add_since

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use http::{HeaderValue, StatusCode, header};
use switchboard_core::{Layer, LayerError, Message, Position, Subscription};
use tokio::time::Instant;

use crate::feed::{plain, refuse};
use crate::shutdown::{Guard, Shutdown};

/// A long-poll answer for one group: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct LongPoll {
    layer: Layer,
    group: String,
    since: Option<Position>,
    timeout: Duration,
    max_messages: usize,
    shutdown: Option<Shutdown>,
}

impl LongPoll {
    /// A poll of `group`'s messages on `layer`.
    pub fn new(layer: impl Into<Layer>, group: impl Into<String>) -> LongPoll {
        LongPoll {
            layer: layer.into(),
            group: group.into(),
            since: None,
            timeout: Duration::from_secs(30),
            max_messages: 100,
            shutdown: None,
        }
    }

    /// The position the client has (its last answer's `position`).
    pub fn since(mut self, since: Option<Position>) -> LongPoll {
        self.since = since;
        self
    }

    /// How long to wait for a message. Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> LongPoll {
        self.timeout = timeout;
        self
    }

    /// The most messages in one answer (at least 1). Default 100.
    pub fn max_messages(mut self, n: usize) -> LongPoll {
        self.max_messages = n.max(1);
        self
    }

    /// Registers the poll with `shutdown`: refused with 503 once it drains, answered at once
    /// when the drain reaches it.
    pub fn shutdown(mut self, shutdown: &Shutdown) -> LongPoll {
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// Waits as the [module docs](self) say, and answers.
    pub async fn open(self) -> Response {
        let (guard, mut sub) =
            match crate::feed::start(&self.layer, self.shutdown.as_ref(), "long poll").await {
                Ok(started) => started,
                Err(refused) => return refused,
            };
        let resumed = match sub
            .group_add_since(self.group.as_str(), self.since.as_ref())
            .await
        {
            Ok(r) => r,
            Err(LayerError::Unsupported(_)) => {
                tracing::error!(group = %self.group, "long poll on a group without history (see LayerConfig::group_history)");
                crate::metrics::http_refused("no_history");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "feed without history");
            }
            Err(e) => return refuse("long poll", &e),
        };
        let mut messages: Vec<Message> = Vec::new();
        let mut position = resumed.position.clone();
        if let (Some(since), true) = (&self.since, resumed.recovered) {
            messages = collect(&mut sub, self.timeout, self.max_messages, guard.as_ref()).await;
            // Until a message is taken, the client is where it said.
            position = messages
                .iter()
                .rev()
                .find_map(Message::position)
                .unwrap_or(since)
                .clone();
        }
        sub.close().await;
        drop(guard);
        crate::metrics::http_poll(match (resumed.recovered, messages.is_empty()) {
            (false, _) => "not_recovered",
            (true, true) => "empty",
            (true, false) => "messages",
        });
        answer(&messages, &position, resumed.recovered)
    }
}

/// What one poll answers with, from a subscription the caller joined: what is ready now (a
/// replay from history, say) or, when nothing is, the first message to arrive within `timeout`
/// and whatever came with it — at most `max` (at least 1), oldest first. A drain reaching
/// `shutdown` ends the wait, as the timeout does. A hole (the subscription's queue dropped
/// messages, the layer's connection was interrupted) ends the answer before it — and before the
/// message received with it, which may lie on either side — so that a client polling again
/// from the last position answered gets the rest from history. [`LongPoll`] answers with it;
/// the push gateway example's long-poll, with its own protocol, too.
pub async fn collect(
    sub: &mut Subscription,
    timeout: Duration,
    max: usize,
    shutdown: Option<&Guard>,
) -> Vec<Message> {
    let max = max.max(1);
    let mut messages = Vec::new();
    if ready(sub, &mut messages, max) || !messages.is_empty() {
        return messages;
    }
    // A timeout too long to add is no timeout.
    let deadline = Instant::now().checked_add(timeout);
    let closing = async {
        match shutdown {
            Some(g) => g.closing().await,
            None => std::future::pending().await,
        }
    };
    let hole = tokio::select! {
        biased;
        () = closing => true,
        r = sub.recv() => match r {
            Ok(m) => take(&mut messages, m, sub),
            Err(_) => true, // the layer closed: answer as a timeout does
        },
        () = sleep_until(deadline) => true,
    };
    if !hole {
        // What came with the first, without waiting.
        ready(sub, &mut messages, max);
    }
    messages
}

/// Takes what is ready without waiting, up to `max` and the first hole; whether it met a hole.
fn ready(sub: &mut Subscription, messages: &mut Vec<Message>, max: usize) -> bool {
    while messages.len() < max {
        if sub.has_missed() {
            crate::metrics::missed(sub.take_missed());
            return true; // a hole before the next message
        }
        match sub.recv().now_or_never() {
            Some(Ok(m)) => {
                if take(messages, m, sub) {
                    return true;
                }
            }
            _ => return false,
        }
    }
    false
}

/// Keeps `m`, unless a hole is next to it (before or after: the queue cannot say which), in
/// which case `m` is left to the next poll's replay. Whether there was a hole.
fn take(messages: &mut Vec<Message>, m: Message, sub: &Subscription) -> bool {
    if sub.has_missed() {
        crate::metrics::missed(sub.take_missed());
        return true;
    }
    messages.push(m);
    false
}

/// Sleeps until `deadline`, or for ever.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn answer(messages: &[Message], position: &Position, recovered: bool) -> Response {
    let mut body = String::from("{\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(m.to_json_text().as_str());
    }
    // A position's text is letters, digits, '-', '_' and ':': nothing to escape.
    body.push_str(&format!(
        "],\"position\":\"{position}\",\"recovered\":{recovered}}}"
    ));
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
