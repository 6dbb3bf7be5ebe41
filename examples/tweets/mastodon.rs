//! A Mastodon hashtag stream: `GET /api/v1/streaming/hashtag?tag=TAG`, server-sent events.
//!
//! Each `update` event carries a status as JSON; reblogs (reposts) are marked and skipped by the
//! hub; `delete`, `status.update` and heartbeat comments are ignored. One connection per term;
//! dropping the stream closes it. A lost or silent connection is re-opened with exponential
//! backoff. An access token is optional (some instances require one for streaming).

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, stream};
use serde::Deserialize;

use super::source::{Backoff, Post, PostStream, Source, SourceEvent, Term, secs};

/// Where and how to reach a Mastodon instance.
#[derive(Clone, Debug)]
pub(crate) struct MastodonConfig {
    /// The instance's base URL (`https://mastodon.social`).
    pub(crate) instance: String,
    /// An access token, if the instance wants one for streaming.
    pub(crate) token: Option<String>,
    /// Waits between reconnections.
    pub(crate) backoff: Backoff,
    /// Re-open the connection when nothing, not even a heartbeat, came for this long.
    pub(crate) stall_timeout: Duration,
}

impl MastodonConfig {
    /// The defaults for `instance`.
    pub(crate) fn new(instance: String, token: Option<String>) -> MastodonConfig {
        MastodonConfig {
            instance,
            token,
            backoff: Backoff::default(),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// The Mastodon hashtag-stream source.
#[derive(Debug)]
pub(crate) struct MastodonSource {
    http: reqwest::Client,
    config: MastodonConfig,
}

impl MastodonSource {
    /// A source for `config`. Fails only if no HTTP client can be built.
    pub(crate) fn new(config: MastodonConfig) -> Result<MastodonSource, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!(
                "switchboard-tweets-example/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("could not build the HTTP client: {e}"))?;
        Ok(MastodonSource { http, config })
    }
}

type Events = BoxStream<'static, Result<eventsource_stream::Event, String>>;

enum State {
    Connect { attempt: u32 },
    Read { events: Events },
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
            let failed = |why: String| {
                let wait = config.backoff.delay(attempt + 1);
                let msg = format!("Mastodon stream {why}; reconnecting in {}", secs(wait));
                tracing::info!("{msg}");
                (
                    Some(SourceEvent::Status(msg)),
                    State::Connect {
                        attempt: attempt + 1,
                    },
                )
            };
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
                    let events = resp
                        .bytes_stream()
                        .eventsource()
                        .map(|r| r.map_err(|e| e.to_string()))
                        .boxed();
                    (None, State::Read { events })
                }
            }
        }
        State::Read { mut events } => {
            let lost = |why: String| {
                let wait = config.backoff.delay(1);
                let msg = format!("Mastodon stream {why}; reconnecting in {}", secs(wait));
                tracing::info!("{msg}");
                (
                    Some(SourceEvent::Status(msg)),
                    State::Connect { attempt: 1 },
                )
            };
            match tokio::time::timeout(config.stall_timeout, events.next()).await {
                Err(_) => lost(format!("was silent for {}", secs(config.stall_timeout))),
                Ok(None) => lost("ended".into()),
                Ok(Some(Err(e))) => lost(format!("failed: {e}")),
                Ok(Some(Ok(ev))) if ev.event == "update" => {
                    let event = match serde_json::from_str::<Status>(&ev.data) {
                        Ok(s) => Some(SourceEvent::Post(s.into_post())),
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable Mastodon status; skipped");
                            None
                        }
                    };
                    (event, State::Read { events })
                }
                // delete, status.update, anything else: not for the carousel.
                Ok(Some(Ok(_))) => (None, State::Read { events }),
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
pub(crate) fn html_to_text(html: &str) -> String {
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
}
