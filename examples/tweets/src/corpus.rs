//! The default source: a corpus of posts replayed in a loop, as if it were a live firehose.
//!
//! The bundled corpus (`data/posts.jsonl`) is synthetic — made up by `data/generate.py` — so the
//! example runs offline with no credentials. The replay walks the corpus in order, one post every
//! `1 / rate` seconds, and yields the posts that match the term; it starts at the first match, so
//! a listener sees one at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;

use super::source::{Post, PostStream, Source, SourceEvent, Term};

/// The corpus shipped with the example.
const BUNDLED: &str = include_str!("../data/posts.jsonl");

/// A corpus of posts and the pace of its replay.
#[derive(Clone, Debug)]
pub struct Corpus {
    posts: Arc<[Post]>,
    /// Time between two consecutive corpus posts in the replay.
    gap: Duration,
    label: String,
}

/// One line of a corpus file.
#[derive(serde::Deserialize)]
struct Line {
    id: String,
    author: String,
    text: String,
    created_at: String,
    #[serde(default)]
    repost: bool,
    #[serde(default)]
    url: Option<String>,
}

impl Corpus {
    /// The bundled synthetic corpus, replayed at `rate` posts per second.
    pub fn bundled(rate: f64) -> Result<Corpus, String> {
        Corpus::parse(BUNDLED, rate, "bundled synthetic corpus")
    }

    /// A corpus from JSON lines (see `data/README.md` for the fields), replayed at `rate` posts
    /// per second. Errors name the line.
    pub fn parse(jsonl: &str, rate: f64, label: &str) -> Result<Corpus, String> {
        if !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0) {
            return Err(format!(
                "replay rate {rate} is out of range: use 0 < rate <= 100000 posts per second"
            ));
        }
        let mut posts = Vec::new();
        for (n, line) in jsonl.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let l: Line =
                serde_json::from_str(line).map_err(|e| format!("corpus line {}: {e}", n + 1))?;
            let url = l
                .url
                .unwrap_or_else(|| format!("/posts/{}", percent_safe(&l.id)));
            posts.push(Post {
                id: l.id,
                url,
                author: format!("@{}", l.author.trim_start_matches('@')),
                text: l.text,
                created_at: l.created_at,
                repost: l.repost,
            });
        }
        if posts.is_empty() {
            return Err("the corpus has no posts".into());
        }
        Ok(Corpus {
            label: format!("{label} ({} posts)", posts.len()),
            posts: posts.into(),
            gap: Duration::from_secs_f64(1.0 / rate),
        })
    }

    /// A post by id.
    pub fn get(&self, id: &str) -> Option<&Post> {
        self.posts.iter().find(|p| p.id == id)
    }
}

// Keep ids usable in a path: the bundled ids are digits; anything else is dropped.
fn percent_safe(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

impl Source for Corpus {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn open(&self, term: &Term) -> Result<PostStream, String> {
        let matching: Vec<usize> = self
            .posts
            .iter()
            .enumerate()
            .filter(|(_, p)| term.matches(&p.text))
            .map(|(i, _)| i)
            .collect();
        // Start at the first original post that matches: the listener gets it at once.
        let Some(start) = matching.iter().position(|&i| !self.posts[i].repost) else {
            let msg = format!(
                "no post in the {} matches {:?}; try a hashtag such as #RustLang or #coffee",
                self.label,
                term.text()
            );
            // Say so once, then stay quiet: there is nothing to replay.
            return Ok(stream::once(async move { SourceEvent::Status(msg) })
                .chain(stream::pending())
                .boxed());
        };
        let (posts, gap, n) = (self.posts.clone(), self.gap, self.posts.len());
        let state = (matching, start, true);
        Ok(stream::unfold(state, move |(matching, k, first)| {
            let posts = posts.clone();
            async move {
                let here = matching[k];
                if !first {
                    // Time in the replay from the previous match to this one.
                    let prev = matching[(k + matching.len() - 1) % matching.len()];
                    let distance = (here + n - prev) % n;
                    let steps = if distance == 0 { n } else { distance };
                    tokio::time::sleep(
                        gap.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX)),
                    )
                    .await;
                }
                let post = posts[here].clone();
                let next = (k + 1) % matching.len();
                Some((SourceEvent::Post(post), (matching, next, false)))
            }
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_corpus_is_synthetic_and_has_hashtags() {
        assert!(BUNDLED.lines().all(|l| l.contains("\"synthetic\": true")));
        let c = Corpus::bundled(40.0).unwrap();
        assert!(c.posts.len() >= 300, "{}", c.posts.len());
        let bitcoin = Term::parse("#Bitcoin").unwrap();
        assert!(c.posts.iter().filter(|p| bitcoin.matches(&p.text)).count() >= 5);
        assert!(c.posts.iter().any(|p| p.repost));
    }

    #[test]
    fn bad_corpus_lines_are_named() {
        let err = Corpus::parse("{\"id\":\"1\"}\n", 1.0, "t").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(Corpus::parse("", 1.0, "t").is_err());
        assert!(Corpus::parse(BUNDLED, 0.0, "t").is_err());
    }
}
