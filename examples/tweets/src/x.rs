//! The X (Twitter) API v2 filtered stream.
//!
//! X allows an app one filtered-stream connection, carrying the posts of every rule the app has
//! set. So this source keeps **one** connection for all terms: opening a term adds a rule
//! (`POST /2/tweets/search/stream/rules`, value `TERM -is:retweet`, tag `<instance>:<term>`);
//! posts arrive as newline-delimited JSON on `GET /2/tweets/search/stream` and are routed to the
//! terms named by their `matching_rules` tags. Dropping a term's stream deletes its rule; when the
//! last term goes, the connection is closed and the task that owned it ends.
//!
//! The connection is re-opened with exponential backoff when it fails, ends, or stays silent
//! longer than the stall timeout (X sends a keep-alive newline every 20 s); HTTP 429 waits at
//! least the rate-limit wait. Authentication is the app's bearer token (`TWITTER_BEARER_TOKEN`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

use super::source::{Backoff, Post, PostStream, Source, SourceEvent, Term, http_client, secs};

/// Longest line accepted from the stream; a longer one is an error and the connection is
/// re-opened.
const MAX_LINE: usize = 1 << 20;

/// Where and how to reach the X API.
#[derive(Clone, Debug)]
pub struct XConfig {
    /// The API base URL (`https://api.x.com`; tests point it at a local server).
    pub api: String,
    /// The app's bearer token.
    pub bearer_token: String,
    /// Waits between reconnections.
    pub backoff: Backoff,
    /// The shortest wait after HTTP 429 (X asks for a minute).
    pub rate_limit_wait: Duration,
    /// Re-open the connection when nothing, not even a keep-alive, came for this long.
    pub stall_timeout: Duration,
}

impl XConfig {
    /// The defaults for the real API with `bearer_token`.
    pub fn new(bearer_token: String) -> XConfig {
        XConfig {
            api: "https://api.x.com".into(),
            bearer_token,
            backoff: Backoff::default(),
            rate_limit_wait: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// The X filtered-stream source. Cheap to share: one connection serves every term.
pub struct XSource {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XSource")
            .field("api", &self.shared.config.api)
            .finish_non_exhaustive()
    }
}

struct Shared {
    http: reqwest::Client,
    config: XConfig,
    /// Tags of this process's rules start with this (`switchboard-<id>:`), so its rules are
    /// told apart.
    tag_prefix: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Commands to the connection task, while it runs.
    commands: Option<mpsc::UnboundedSender<Command>>,
    next_id: u64,
}

enum Command {
    Add {
        id: u64,
        term: Term,
        tx: mpsc::Sender<SourceEvent>,
    },
    Remove {
        id: u64,
    },
}

impl XSource {
    /// A source for `config`. Fails only if no HTTP client can be built.
    pub fn new(config: XConfig) -> Result<XSource, String> {
        let http = http_client()?;
        Ok(XSource {
            shared: Arc::new(Shared {
                http,
                config,
                tag_prefix: format!(
                    "switchboard-{}:",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Whether the connection task is running (it runs exactly while some term is open).
    pub fn is_running(&self) -> bool {
        lock(&self.shared.state)
            .commands
            .as_ref()
            .is_some_and(|c| !c.is_closed())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `Remove` when a term's stream is dropped.
struct RemoveOnDrop {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &lock(&self.shared.state).commands {
            let _ = c.send(Command::Remove { id: self.id });
        }
    }
}

impl Source for XSource {
    fn describe(&self) -> String {
        format!("X filtered stream at {}", self.shared.config.api)
    }

    fn open(&self, term: &Term) -> Result<PostStream, String> {
        let (tx, rx) = mpsc::channel(64);
        let id = {
            let mut st = lock(&self.shared.state);
            let id = st.next_id;
            st.next_id += 1;
            let commands = match &st.commands {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    let (c, r) = mpsc::unbounded_channel();
                    tokio::spawn(run(self.shared.clone(), r));
                    st.commands = Some(c.clone());
                    c
                }
            };
            // Sent under the lock: the task checks for pending commands under it before it ends.
            let add = Command::Add {
                id,
                term: term.clone(),
                tx,
            };
            if commands.send(add).is_err() {
                return Err("the X connection task is gone".into());
            }
            id
        };
        let guard = RemoveOnDrop {
            shared: self.shared.clone(),
            id,
        };
        Ok(
            stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
                .map(move |e| {
                    let _owned = &guard;
                    e
                })
                .boxed(),
        )
    }
}

/// A rule for one term key, and who listens to it.
struct Rule {
    term: Term,
    /// X's id for the rule, once X accepted it.
    x_id: Option<String>,
    subscribers: Vec<u64>,
}

type Lines = FramedRead<
    StreamReader<
        futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
        bytes::Bytes,
    >,
    LinesCodec,
>;

/// The connection task: owns the rules and the one stream connection.
async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let cfg = &shared.config;
    let mut subs: HashMap<u64, (String, mpsc::Sender<SourceEvent>)> = HashMap::new();
    let mut rules: HashMap<String, Rule> = HashMap::new();
    let mut conn: Option<Lines> = None;
    let mut attempt = 0u32;
    let mut retry_at = Instant::now();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Add { id, term, tx }) => {
                    let key = term.key().to_owned();
                    subs.insert(id, (key.clone(), tx));
                    let rule = rules.entry(key.clone()).or_insert_with(|| Rule {
                        term,
                        x_id: None,
                        subscribers: Vec::new(),
                    });
                    rule.subscribers.push(id);
                    if rule.x_id.is_none() {
                        add_rule(&shared, &key, rule, &subs).await;
                    }
                }
                Some(Command::Remove { id }) => {
                    if let Some((key, _)) = subs.remove(&id)
                        && let Some(rule) = rules.get_mut(&key)
                    {
                        rule.subscribers.retain(|s| *s != id);
                        if rule.subscribers.is_empty()
                            && let Some(rule) = rules.remove(&key)
                        {
                            delete_rules(&shared, rule.x_id.into_iter().collect()).await;
                        }
                    }
                }
                None => return,
            },
            line = next_line(&mut conn, cfg.stall_timeout), if conn.is_some() => match line {
                Ok(line) => {
                    attempt = 0;
                    route(&shared, &line, &rules, &subs);
                }
                Err(why) => {
                    conn = None;
                    attempt += 1;
                    let wait = cfg.backoff.delay(attempt);
                    retry_at = Instant::now() + wait;
                    tell_all(&subs, format!("X stream {why}; reconnecting in {}", secs(wait)));
                }
            },
            () = tokio::time::sleep_until(retry_at), if conn.is_none() && !rules.is_empty() => {
                // Rules X has not accepted yet (a failed earlier try) go first.
                for (key, rule) in rules.iter_mut().filter(|(_, r)| r.x_id.is_none()) {
                    add_rule(&shared, key, rule, &subs).await;
                }
                if !rules.values().any(|r| r.x_id.is_some()) {
                    attempt += 1;
                    retry_at = Instant::now() + cfg.backoff.delay(attempt);
                    continue;
                }
                match connect(&shared).await {
                    Ok(lines) => conn = Some(lines),
                    Err((why, rate_limited)) => {
                        attempt += 1;
                        let mut wait = cfg.backoff.delay(attempt);
                        if rate_limited {
                            wait = wait.max(cfg.rate_limit_wait);
                        }
                        retry_at = Instant::now() + wait;
                        tell_all(&subs, format!("{why}; retrying in {}", secs(wait)));
                    }
                }
            },
        }
        if subs.is_empty() {
            conn = None;
            let ids = rules.drain().filter_map(|(_, r)| r.x_id).collect();
            delete_rules(&shared, ids).await;
            let mut st = lock(&shared.state);
            if commands.is_empty() {
                st.commands = None;
                tracing::debug!("no X terms left; the connection task ends");
                return;
            }
        }
    }
}

async fn next_line(conn: &mut Option<Lines>, stall: Duration) -> Result<String, String> {
    let Some(lines) = conn.as_mut() else {
        return Err("not connected".into());
    };
    match tokio::time::timeout(stall, lines.next()).await {
        Err(_) => Err(format!("was silent for {}", secs(stall))),
        Ok(None) => Err("ended".into()),
        Ok(Some(Err(e))) => Err(format!("failed: {e}")),
        Ok(Some(Ok(line))) => Ok(line),
    }
}

fn tell_all(subs: &HashMap<u64, (String, mpsc::Sender<SourceEvent>)>, msg: String) {
    tracing::info!("{msg}");
    for (_, tx) in subs.values() {
        let _ = tx.try_send(SourceEvent::Status(msg.clone()));
    }
}

fn tell(
    subs: &HashMap<u64, (String, mpsc::Sender<SourceEvent>)>,
    rule: &Rule,
    event: &SourceEvent,
) {
    for id in &rule.subscribers {
        if let Some((_, tx)) = subs.get(id) {
            // A full queue means the listener is behind; newer posts will follow.
            let _ = tx.try_send(event.clone());
        }
    }
}

fn rules_url(shared: &Shared) -> String {
    format!(
        "{}/2/tweets/search/stream/rules",
        shared.config.api.trim_end_matches('/')
    )
}

#[derive(Deserialize)]
struct RulesResponse {
    #[serde(default)]
    data: Vec<RuleData>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RuleData {
    id: String,
    #[serde(default)]
    tag: Option<String>,
}

/// Asks X to add the rule for `key`; on failure the subscribers are told why and the rule is
/// retried before the next connection attempt.
async fn add_rule(
    shared: &Shared,
    key: &str,
    rule: &mut Rule,
    subs: &HashMap<u64, (String, mpsc::Sender<SourceEvent>)>,
) {
    let tag = format!("{}{key}", shared.tag_prefix);
    let body = json!({"add": [{"value": format!("{} -is:retweet", rule.term.text()), "tag": tag}]});
    let result = async {
        let resp = shared
            .http
            .post(rules_url(shared))
            .bearer_auth(&shared.config.bearer_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("could not reach X to add a rule: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "X refused to add the rule for {:?}: HTTP {status} {}",
                rule.term.text(),
                short_body(resp).await
            ));
        }
        let parsed: RulesResponse = resp
            .json()
            .await
            .map_err(|e| format!("X answered the rule request with unexpected JSON: {e}"))?;
        parsed
            .data
            .into_iter()
            .find(|d| d.tag.as_deref().is_none_or(|t| t == tag))
            .map(|d| d.id)
            .ok_or_else(|| {
                format!(
                    "X did not accept the rule for {:?}: {}",
                    rule.term.text(),
                    serde_json::Value::from(parsed.errors)
                )
            })
    }
    .await;
    match result {
        Ok(id) => rule.x_id = Some(id),
        Err(msg) => {
            tracing::warn!("{msg}");
            tell(subs, rule, &SourceEvent::Status(msg));
        }
    }
}

async fn delete_rules(shared: &Shared, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let result = shared
        .http
        .post(rules_url(shared))
        .bearer_auth(&shared.config.bearer_token)
        .json(&json!({"delete": {"ids": ids}}))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match result {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!(status = %r.status(), "X refused to delete rules"),
        Err(e) => tracing::warn!(error = %e, "could not reach X to delete rules"),
    }
}

async fn short_body(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    text.chars().take(300).collect()
}

/// Opens the stream. `Err((why, rate_limited))`.
async fn connect(shared: &Shared) -> Result<Lines, (String, bool)> {
    let url = format!(
        "{}/2/tweets/search/stream?tweet.fields=created_at,author_id,referenced_tweets&expansions=author_id&user.fields=username,name",
        shared.config.api.trim_end_matches('/')
    );
    let resp = shared
        .http
        .get(url)
        .bearer_auth(&shared.config.bearer_token)
        .send()
        .await
        .map_err(|e| (format!("could not reach the X stream: {e}"), false))?;
    let status = resp.status();
    if !status.is_success() {
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (check TWITTER_BEARER_TOKEN)"
        } else {
            ""
        };
        return Err((
            format!(
                "X stream answered HTTP {status}{hint} {}",
                short_body(resp).await
            ),
            status == reqwest::StatusCode::TOO_MANY_REQUESTS,
        ));
    }
    let bytes = resp.bytes_stream().map_err(std::io::Error::other).boxed();
    Ok(FramedRead::new(
        StreamReader::new(bytes),
        LinesCodec::new_with_max_length(MAX_LINE),
    ))
}

#[derive(Deserialize)]
struct StreamLine {
    data: Option<Tweet>,
    #[serde(default)]
    includes: Includes,
    #[serde(default)]
    matching_rules: Vec<MatchingRule>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Tweet {
    id: String,
    text: String,
    created_at: Option<String>,
    author_id: Option<String>,
    #[serde(default)]
    referenced_tweets: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
struct Includes {
    #[serde(default)]
    users: Vec<User>,
}

#[derive(Deserialize)]
struct User {
    id: String,
    username: String,
}

#[derive(Deserialize)]
struct MatchingRule {
    id: Option<String>,
    tag: Option<String>,
}

/// Routes one line of the stream to the terms it matched.
fn route(
    shared: &Shared,
    line: &str,
    rules: &HashMap<String, Rule>,
    subs: &HashMap<u64, (String, mpsc::Sender<SourceEvent>)>,
) {
    if line.trim().is_empty() {
        return; // keep-alive
    }
    let parsed: StreamLine = match serde_json::from_str(line) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable line on the X stream; skipped");
            return;
        }
    };
    let Some(tweet) = parsed.data else {
        if !parsed.errors.is_empty() {
            tell_all(
                subs,
                format!("X stream says: {}", serde_json::Value::from(parsed.errors)),
            );
        }
        return;
    };
    let username = tweet.author_id.as_ref().and_then(|a| {
        parsed
            .includes
            .users
            .iter()
            .find(|u| &u.id == a)
            .map(|u| u.username.clone())
    });
    let post = Post {
        url: match &username {
            Some(u) => format!("https://x.com/{u}/status/{}", tweet.id),
            None => format!("https://x.com/i/web/status/{}", tweet.id),
        },
        author: username
            .map(|u| format!("@{u}"))
            .or(tweet.author_id)
            .unwrap_or_else(|| "unknown".into()),
        repost: tweet
            .referenced_tweets
            .iter()
            .any(|r| r.kind == "retweeted"),
        created_at: tweet.created_at.unwrap_or_default(),
        id: tweet.id,
        text: tweet.text,
    };
    let event = SourceEvent::Post(post);
    for m in &parsed.matching_rules {
        let rule = match m
            .tag
            .as_deref()
            .and_then(|t| t.strip_prefix(&shared.tag_prefix))
        {
            Some(key) => rules.get(key),
            None => rules.values().find(|r| r.x_id.is_some() && r.x_id == m.id),
        };
        if let Some(rule) = rule {
            tell(subs, rule, &event);
        }
    }
}
