//! What every upstream source has in common: the [`Source`] trait, the [`Post`] it yields, the
//! search [`Term`] and the reconnect [`Backoff`].

use std::time::Duration;

use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// One post, as the page shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// The upstream's id.
    pub id: String,
    /// Where to read it.
    pub url: String,
    /// Who wrote it (`@handle`).
    pub author: String,
    /// Its text (plain text, no markup).
    pub text: String,
    /// When it was written (RFC 3339).
    pub created_at: String,
    /// Whether it is a repost (retweet, reblog) of someone else's post. Reposts are skipped.
    #[serde(default)]
    pub repost: bool,
}

/// What a source's stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// A post matching the term.
    Post(Post),
    /// Something listeners should know about the upstream ("reconnecting in 4 s: HTTP 503").
    Status(String),
}

/// A stream of posts for one term. Dropping it ends the upstream subscription: connections are
/// closed, and rules registered for the term are removed.
pub type PostStream = BoxStream<'static, SourceEvent>;

/// Where posts come from.
///
/// `open` is cheap and does no I/O: the stream connects when first polled and reconnects with
/// backoff by itself, reporting trouble as [`SourceEvent::Status`]. It ends only if the source
/// gives up for good.
pub trait Source: Send + Sync + 'static {
    /// A short description for logs and the page ("bundled synthetic corpus", "X filtered stream").
    fn describe(&self) -> String;

    /// Opens a stream of posts matching `term`; `Err` if this source cannot search for it (a
    /// message for the user).
    fn open(&self, term: &Term) -> Result<PostStream, String>;
}

/// A search term, as a listener typed it.
///
/// Matching is case-insensitive and by whole words: `bitcoin` matches "Bitcoin" and "#bitcoin"
/// but not "bitcoins"; `#bitcoin` matches only the hashtag. Several words must all appear
/// (`#rustlang tokio`), in any order — as X's filtered-stream rules do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    text: String,
    key: String,
    words: Vec<Word>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Word {
    text: String,
    hashtag: bool,
}

/// The longest term accepted, in characters.
pub const MAX_TERM_CHARS: usize = 100;

impl Term {
    /// Checks a term typed by a user.
    pub fn parse(input: &str) -> Result<Term, String> {
        let text = input.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            return Err("type a word or a #hashtag to search for".into());
        }
        if text.chars().count() > MAX_TERM_CHARS {
            return Err(format!(
                "a search term has at most {MAX_TERM_CHARS} characters"
            ));
        }
        let words = words(&text);
        if words.is_empty() {
            return Err(format!(
                "{text:?} has no letters or digits: type a word or a #hashtag"
            ));
        }
        Ok(Term {
            key: text.to_lowercase(),
            text,
            words,
        })
    }

    /// The term as typed, with whitespace collapsed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The term lowercased: terms with the same key share one upstream.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether `text` contains every word of the term.
    pub fn matches(&self, text: &str) -> bool {
        let have = words(text);
        self.words.iter().all(|w| {
            have.iter()
                .any(|h| h.text == w.text && (h.hashtag || !w.hashtag))
        })
    }

    /// The single hashtag (or word) this term follows, for sources that follow one hashtag.
    pub fn hashtag(&self) -> Option<&str> {
        match self.words.as_slice() {
            [w] if self.text.trim_start_matches('#').chars().all(is_word_char) => {
                Some(w.text.as_str())
            }
            _ => None,
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The words of `text`, lowercased, each marked as a hashtag or not.
fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut hashtag = false;
    let mut prev = ' ';
    for c in text.chars() {
        if is_word_char(c) {
            if current.is_empty() {
                hashtag = prev == '#';
            }
            current.extend(c.to_lowercase());
        } else if !current.is_empty() {
            out.push(Word {
                text: std::mem::take(&mut current),
                hashtag,
            });
        }
        prev = c;
    }
    if !current.is_empty() {
        out.push(Word {
            text: current,
            hashtag,
        });
    }
    out
}

/// Exponential backoff between reconnection attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(64),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (1 for the first retry): `initial`, doubled each
    /// time, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// The HTTP client every network source uses: a connect timeout, and a user agent naming
/// this example. Fails only if no client can be built.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!(
            "switchboard-tweets-example/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| format!("could not build the HTTP client: {e}"))
}

/// Seconds with one decimal when under ten ("0.5 s", "12 s"), for status lines.
pub fn secs(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_match_whole_words_and_hashtags() {
        let t = Term::parse("  #Bitcoin ").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.text(), "#Bitcoin");
        assert_eq!(t.key(), "#bitcoin");
        assert!(t.matches("all in on #bitcoin today"));
        assert!(!t.matches("all in on bitcoin today"));
        assert!(!t.matches("#bitcoins"));
        let w = Term::parse("bitcoin").unwrap_or_else(|e| panic!("{e}"));
        assert!(w.matches("#Bitcoin!") && w.matches("Bitcoin, again"));
        let two = Term::parse("#RustLang  tokio").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(two.text(), "#RustLang tokio");
        assert!(two.matches("tokio and #rustlang"));
        assert!(!two.matches("#rustlang only"));
        assert_eq!(two.hashtag(), None);
        assert_eq!(t.hashtag(), Some("bitcoin"));
        assert!(Term::parse("   ").is_err());
        assert!(Term::parse("!!!").is_err());
        assert!(Term::parse(&"a".repeat(101)).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let d: Vec<_> = (1..=6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(1000), Duration::from_millis(1000));
    }
}
