//! A Mastodon hashtag stream: `GET /api/v1/streaming/hashtag?tag=TAG`, server-sent events.
//!
//! Each `update` event carries a status as JSON; reblogs (reposts) are marked and skipped by the
//! hub; `delete`, `status.update` and heartbeat comments are ignored. One connection per term;
//! dropping the stream closes it. A lost or silent connection (not even a heartbeat for
//! `stall_timeout`) is re-opened with exponential backoff: the wait doubles while connections
//! keep failing or ending without delivering an event, and starts again from the first wait
//! after one that delivered an event or stayed up `healthy_after`. An event over
//! [`MAX_EVENT_BYTES`] ends the connection. An access token is optional (some instances require
//! one for streaming).

use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, stream};
use serde::Deserialize;

use super::source::{Backoff, Post, PostStream, Source, SourceEvent, Term, http_client, secs};

/// Where and how to reach a Mastodon instance.
#[derive(Clone, Debug)]
pub struct MastodonConfig {
    /// The instance's base URL (`https://mastodon.social`).
    pub instance: String,
    /// An access token, if the instance wants one for streaming.
    pub token: Option<String>,
    /// Waits between reconnections.
    pub backoff: Backoff,
    /// Re-open the connection when nothing, not even a heartbeat, came for this long.
    pub stall_timeout: Duration,
    /// A connection that stayed up this long was a good one: the backoff starts again from its
    /// first wait when it ends (as it does after a connection that delivered an event).
    pub healthy_after: Duration,
}

impl MastodonConfig {
    /// The defaults for `instance`.
    pub fn new(instance: String, token: Option<String>) -> MastodonConfig {
        MastodonConfig {
            instance,
            token,
            backoff: Backoff::default(),
            stall_timeout: Duration::from_secs(60),
            healthy_after: Duration::from_secs(30),
        }
    }
}

/// The most an event (its lines up to the blank line that ends it) may take, in bytes. A
/// status is a few KiB; a server that sends more without ending the event is cut off (and
/// reconnected to, with backoff) instead of filling memory. The X source caps its lines alike.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// The Mastodon hashtag-stream source.
#[derive(Debug)]
pub struct MastodonSource {
    http: reqwest::Client,
    config: MastodonConfig,
}

impl MastodonSource {
    /// A source for `config`. Fails only if no HTTP client can be built.
    pub fn new(config: MastodonConfig) -> Result<MastodonSource, String> {
        let http = http_client()?;
        Ok(MastodonSource { http, config })
    }
}

type Events = BoxStream<'static, Result<eventsource_stream::Event, String>>;

enum State {
    /// Connect, after waiting `backoff.delay(attempt)` (not at all for attempt 0).
    Connect { attempt: u32 },
    /// Connected after `attempt` failures in a row.
    Read {
        events: Events,
        attempt: u32,
        since: tokio::time::Instant,
        delivered: bool,
    },
}

impl Source for MastodonSource {
    fn describe(&self) -> String {
        format!("Mastodon hashtag stream at {}", self.config.instance)
    }

    fn open(&self, term: &Term) -> Result<PostStream, String> {
        let tag = term.hashtag().ok_or_else(|| {
            format!(
                "Mastodon streams follow one hashtag: search for a single #tag, not {:?}",
                term.text()
            )
        })?;
        let url = format!(
            "{}/api/v1/streaming/hashtag?tag={}",
            self.config.instance.trim_end_matches('/'),
            percent_encoding::utf8_percent_encode(tag, percent_encoding::NON_ALPHANUMERIC)
        );
        let (http, config) = (self.http.clone(), self.config.clone());
        let stream = stream::unfold(State::Connect { attempt: 0 }, move |state| {
            let (http, config, url) = (http.clone(), config.clone(), url.clone());
            async move { Some(step(state, &http, &config, &url).await) }
        })
        .filter_map(|e| async move { e });
        Ok(stream.boxed())
    }
}

/// Measures what the event parser holds, to cap it at [`MAX_EVENT_BYTES`]: the line being
/// received, plus the field lines of the event so far. Comment lines — Mastodon's `:thump`
/// heartbeats, often without a blank line after them — are dropped by the parser and so count
/// only while they are being received. A blank line ends the event; `\r\n`, `\r` and `\n` each
/// end a line.
#[derive(Debug, Default)]
struct EventSize {
    /// Bytes of the event's field lines so far (line ends not counted).
    event: usize,
    /// Bytes of the line being received.
    line: usize,
    /// Whether the line being received is a comment (starts with `:`).
    comment: bool,
    /// Whether the last byte was `\r` (a `\n` right after it ends the same line).
    after_cr: bool,
}

impl EventSize {
    fn take(&mut self, chunk: &[u8]) -> Result<(), String> {
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    if self.line == 0 {
                        self.event = 0; // a blank line: the event ended
                    } else if !self.comment {
                        self.event += self.line;
                    }
                    self.line = 0;
                    self.comment = false;
                }
                _ => {
                    self.after_cr = false;
                    if self.line == 0 {
                        self.comment = b == b':';
                    }
                    self.line += 1;
                    let held = if self.comment {
                        self.line
                    } else {
                        self.event + self.line
                    };
                    if held > MAX_EVENT_BYTES {
                        return Err(format!("sent an event over {} KiB", MAX_EVENT_BYTES / 1024));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The response body, with the two checks `eventsource` does not make: it fails when nothing at
/// all — not even a heartbeat comment, which the parser swallows — comes for `stall`, and when
/// an event grows past [`MAX_EVENT_BYTES`].
fn guarded_body(
    resp: reqwest::Response,
    stall: Duration,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send + 'static {
    let body = resp.bytes_stream().boxed();
    stream::unfold(
        Some((body, EventSize::default())),
        move |state| async move {
            let (mut body, mut size) = state?;
            match tokio::time::timeout(stall, body.next()).await {
                Err(_) => Some((Err(format!("was silent for {}", secs(stall))), None)),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(e.to_string()), None)),
                Ok(Some(Ok(chunk))) => match size.take(&chunk) {
                    Ok(()) => Some((Ok(chunk), Some((body, size)))),
                    Err(why) => Some((Err(why), None)),
                },
            }
        },
    )
}

/// The connection is given up: a status saying why and when the next try comes, and the state
/// that makes it (retry number `next`).
fn reconnect(config: &MastodonConfig, why: &str, next: u32) -> (Option<SourceEvent>, State) {
    let wait = config.backoff.delay(next);
    let msg = format!("Mastodon stream {why}; reconnecting in {}", secs(wait));
    tracing::info!("{msg}");
    (
        Some(SourceEvent::Status(msg)),
        State::Connect { attempt: next },
    )
}

/// One step of the connection's state machine: maybe an event, and the next state.
async fn step(
    state: State,
    http: &reqwest::Client,
    config: &MastodonConfig,
    url: &str,
) -> (Option<SourceEvent>, State) {
    match state {
        State::Connect { attempt } => {
            if attempt > 0 {
                tokio::time::sleep(config.backoff.delay(attempt)).await;
            }
            let mut req = http.get(url).header("accept", "text/event-stream");
            if let Some(token) = &config.token {
                req = req.bearer_auth(token);
            }
            let failed = |why: String| reconnect(config, &why, attempt.saturating_add(1));
            match req.send().await {
                Err(e) => failed(format!("unreachable: {e}")),
                Ok(resp) if !resp.status().is_success() => {
                    let status = resp.status();
                    let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
                        " (this instance wants an access token: set MASTODON_TOKEN)"
                    } else {
                        ""
                    };
                    failed(format!("answered HTTP {status}{hint}"))
                }
                Ok(resp) => {
                    let events = guarded_body(resp, config.stall_timeout)
                        .eventsource()
                        .map(|r| {
                            r.map_err(|e| match e {
                                EventStreamError::Transport(why) => why,
                                other => format!("failed: {other}"),
                            })
                        })
                        .boxed();
                    (
                        None,
                        State::Read {
                            events,
                            attempt,
                            since: tokio::time::Instant::now(),
                            delivered: false,
                        },
                    )
                }
            }
        }
        State::Read {
            mut events,
            attempt,
            since,
            delivered,
        } => {
            let lost = |why: String| {
                // The backoff grows while connections keep ending at once, as when the server
                // accepts and closes straight away; a connection that was good starts it again.
                let good = delivered || since.elapsed() >= config.healthy_after;
                let next = if good { 1 } else { attempt.saturating_add(1) };
                reconnect(config, &why, next)
            };
            let reading = |events| State::Read {
                events,
                attempt,
                since,
                delivered: true,
            };
            match events.next().await {
                None => lost("ended".into()),
                Some(Err(why)) => lost(why),
                Some(Ok(ev)) if ev.event == "update" => {
                    let event = match serde_json::from_str::<Status>(&ev.data) {
                        Ok(s) => Some(SourceEvent::Post(s.into_post())),
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable Mastodon status; skipped");
                            None
                        }
                    };
                    (event, reading(events))
                }
                // delete, status.update, anything else: not for the carousel.
                Some(Ok(_)) => (None, reading(events)),
            }
        }
    }
}

#[derive(Deserialize)]
struct Status {
    id: String,
    created_at: String,
    url: Option<String>,
    uri: Option<String>,
    content: String,
    account: Account,
    reblog: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Account {
    acct: String,
}

impl Status {
    fn into_post(self) -> Post {
        Post {
            url: self.url.or(self.uri).unwrap_or_default(),
            author: format!("@{}", self.account.acct),
            text: html_to_text(&self.content),
            created_at: self.created_at,
            repost: self.reblog.is_some_and(|r| !r.is_null()),
            id: self.id,
        }
    }
}

/// Mastodon sends sanitized HTML (`<p>`, `<br>`, `<a>`, `<span>`): paragraphs and line breaks
/// become newlines, other tags go, entities are decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[open + 1..open + close].to_ascii_lowercase();
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap_or("");
        if (name == "br" || (name == "p" && tag.starts_with('/'))) && !out.ends_with('\n') {
            out.push('\n');
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    html_escape::decode_html_entities(out.trim_end()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_becomes_text() {
        assert_eq!(
            html_to_text(
                "<p>Hello <a href=\"x\">#<span>RustLang</span></a> &amp; friends</p><p>line 2<br>line 3</p>"
            ),
            "Hello #RustLang & friends\nline 2\nline 3"
        );
        assert_eq!(html_to_text("broken <tag"), "broken");
    }

    #[test]
    fn event_size_counts_what_the_parser_holds() {
        let mut size = EventSize::default();
        // Heartbeats without a blank line after them, for as long as a connection may last:
        // the parser drops them, so they add up to nothing.
        for _ in 0..(MAX_EVENT_BYTES / 4) {
            assert_eq!(size.take(b":thump\n"), Ok(()));
        }
        // Events under the cap, however many, with any line end.
        let line = vec![b'x'; MAX_EVENT_BYTES / 2 - 16];
        for end in [&b"\n"[..], b"\r", b"\r\n"] {
            for _ in 0..3 {
                for part in [&b"data: "[..], &line, end, b"data: ", &line, end, end] {
                    assert_eq!(size.take(part), Ok(()));
                }
            }
        }
        // One event over it, a byte at a time or in one piece: an error.
        let mut size = EventSize::default();
        let mut got = Ok(());
        for _ in 0..3 {
            for part in [&b"data: "[..], &line, b"\r\n"] {
                got = got.and_then(|()| size.take(part));
            }
        }
        assert!(got.is_err_and(|e| e.contains("over 1024 KiB")));
        let mut size = EventSize::default();
        assert!(
            size.take(&vec![b':'; MAX_EVENT_BYTES + 1]).is_err(),
            "an endless comment"
        );
        let mut size = EventSize::default();
        // "\r\r" is a line end and a blank line: two events, not one.
        for _ in 0..3 {
            for part in [&b"data: "[..], &line, b"\r\r"] {
                assert_eq!(size.take(part), Ok(()));
            }
        }
    }
}
