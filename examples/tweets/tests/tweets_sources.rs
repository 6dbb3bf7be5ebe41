//! The tweets example's network sources against local servers that speak their wire formats
//! (tests have no internet): the X API v2 filtered stream (rules, newline-delimited JSON,
//! keep-alives, reconnect with backoff) and a Mastodon hashtag stream (server-sent events).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::{InMemoryLayer, Layer};
use test_support::{eventually, ws};
use tokio::sync::mpsc;
use tweets::hub::Hub;
use tweets::mastodon::{MastodonConfig, MastodonSource};
use tweets::source::{Backoff, PostStream, Source, SourceEvent, Term};
use tweets::x::{XConfig, XSource};

const TOKEN: &str = "test-bearer-token";

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    }
}

/// Counts open response bodies: decremented when the server drops one (the client went away).
struct OpenBody(Arc<AtomicUsize>);
impl Drop for OpenBody {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The current streaming connection's feed, and bookkeeping shared by both fake servers.
#[derive(Default)]
struct Feed {
    /// Lines (X) or events (Mastodon) for the open connection; dropping it ends the response.
    tx: Mutex<Option<mpsc::UnboundedSender<String>>>,
    connections: AtomicUsize,
    open: Arc<AtomicUsize>,
    requests: Mutex<Vec<String>>,
}

impl Feed {
    fn push(&self, chunk: &str) {
        let tx = self.tx.lock().unwrap();
        tx.as_ref()
            .expect("no open stream connection")
            .send(chunk.to_owned())
            .unwrap();
    }

    /// Ends the current response, as a server restart or a network cut would.
    fn cut(&self) {
        self.tx.lock().unwrap().take();
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A streaming body fed by `push`, with `keepalive` every 50 ms so a vanished client is
    /// noticed (the write fails and the body is dropped).
    fn body(&self, keepalive: &'static str) -> Body {
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        *self.tx.lock().unwrap() = Some(tx);
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenBody(self.open.clone());
        let tick = tokio::time::interval(Duration::from_millis(50));
        let stream = futures_util::stream::unfold(
            (rx, tick, guard),
            move |(mut rx, mut tick, guard)| async move {
                tokio::select! {
                    chunk = rx.recv() => chunk.map(|c| (Ok::<_, std::io::Error>(c), (rx, tick, guard))),
                    _ = tick.tick() => Some((Ok(keepalive.to_owned()), (rx, tick, guard))),
                }
            },
        );
        Body::from_stream(stream)
    }
}

// ---------------------------------------------------------------------------------------------
// A fake X API v2: stream rules and the filtered stream.

#[derive(Default)]
struct FakeX {
    feed: Feed,
    /// id → (value, tag)
    rules: Mutex<HashMap<String, (String, String)>>,
    next_rule: AtomicU64,
    deleted: Mutex<Vec<String>>,
}

/// Whether `headers` carry `token` as a bearer token.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"})),
    )
        .into_response()
}

async fn x_stream(State(x): State<Arc<FakeX>>, headers: HeaderMap) -> Response {
    x.feed.requests.lock().unwrap().push("GET stream".into());
    if !authorized(&headers, TOKEN) {
        return unauthorized();
    }
    ([("content-type", "application/json")], x.feed.body("\r\n")).into_response()
}

async fn x_rules(State(x): State<Arc<FakeX>>, headers: HeaderMap, body: String) -> Response {
    if !authorized(&headers, TOKEN) {
        return unauthorized();
    }
    let body: Value = serde_json::from_str(&body).unwrap();
    x.feed
        .requests
        .lock()
        .unwrap()
        .push(format!("POST rules {body}"));
    if let Some(add) = body["add"].as_array() {
        let mut data = Vec::new();
        let mut errors = Vec::new();
        for rule in add {
            let value = rule["value"].as_str().unwrap().to_owned();
            let tag = rule["tag"].as_str().unwrap().to_owned();
            if value.contains("INVALID") {
                errors.push(json!({"value": value, "title": "UnprocessableEntity", "detail": "invalid rule"}));
                continue;
            }
            let id = (1_000 + x.next_rule.fetch_add(1, Ordering::SeqCst)).to_string();
            x.rules
                .lock()
                .unwrap()
                .insert(id.clone(), (value.clone(), tag.clone()));
            data.push(json!({"id": id, "value": value, "tag": tag}));
        }
        let created = data.len();
        let mut resp = json!({"data": data, "meta": {"sent": "2026-01-01T00:00:00.000Z", "summary": {"created": created, "not_created": errors.len(), "valid": created, "invalid": errors.len()}}});
        if !errors.is_empty() {
            resp["errors"] = json!(errors);
        }
        return axum::Json(resp).into_response();
    }
    if let Some(ids) = body["delete"]["ids"].as_array() {
        let mut deleted = 0;
        for id in ids {
            let id = id.as_str().unwrap();
            if x.rules.lock().unwrap().remove(id).is_some() {
                deleted += 1;
            }
            x.deleted.lock().unwrap().push(id.to_owned());
        }
        return axum::Json(json!({"meta": {"sent": "2026-01-01T00:00:00.000Z", "summary": {"deleted": deleted, "not_deleted": 0}}})).into_response();
    }
    (StatusCode::BAD_REQUEST, "bad rules request").into_response()
}

impl FakeX {
    async fn start() -> (Arc<FakeX>, SocketAddr) {
        let x = Arc::new(FakeX::default());
        let router = Router::new()
            .route("/2/tweets/search/stream", get(x_stream))
            .route(
                "/2/tweets/search/stream/rules",
                axum::routing::post(x_rules),
            )
            .with_state(x.clone());
        (x.clone(), test_support::serve(router).await)
    }

    fn tag_of(&self, value_prefix: &str) -> Option<(String, String)> {
        self.rules
            .lock()
            .unwrap()
            .iter()
            .find(|(_, (v, _))| v.starts_with(value_prefix))
            .map(|(id, (_, tag))| (id.clone(), tag.clone()))
    }

    fn rule_count(&self) -> usize {
        self.rules.lock().unwrap().len()
    }

    /// One line of the stream: an original post by `user` matching one rule (id, tag).
    fn post(id: &str, user: &str, text: &str, rule: &(String, String)) -> String {
        FakeX::tweet(id, user, text, std::slice::from_ref(rule), false)
    }

    /// One line of the stream: a post by `user` matching the rules `matching` (id, tag).
    fn tweet(
        id: &str,
        user: &str,
        text: &str,
        matching: &[(String, String)],
        retweet: bool,
    ) -> String {
        let mut data = json!({"id": id, "text": text, "created_at": "2026-03-14T09:00:00.000Z", "author_id": format!("u-{user}"), "edit_history_tweet_ids": [id]});
        if retweet {
            data["referenced_tweets"] = json!([{"type": "retweeted", "id": "42"}]);
        }
        let rules: Vec<Value> = matching
            .iter()
            .map(|(id, tag)| json!({"id": id, "tag": tag}))
            .collect();
        let line = json!({
            "data": data,
            "includes": {"users": [{"id": format!("u-{user}"), "name": user.to_uppercase(), "username": user}]},
            "matching_rules": rules,
        });
        format!("{line}\r\n")
    }
}

fn x_source(addr: SocketAddr, token: &str) -> XSource {
    let mut cfg = XConfig::new(token.to_owned());
    cfg.api = format!("http://{addr}");
    cfg.backoff = fast_backoff();
    cfg.rate_limit_wait = Duration::from_millis(200);
    cfg.stall_timeout = Duration::from_secs(2);
    XSource::new(cfg).unwrap()
}

async fn next_event(s: &mut PostStream) -> SourceEvent {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("no event within 5 s")
        .expect("the stream ended")
}

fn status_of(e: SourceEvent) -> String {
    match e {
        SourceEvent::Status(m) => m,
        other => panic!("expected a status, got {other:?}"),
    }
}

async fn next_post(s: &mut PostStream) -> tweets::source::Post {
    loop {
        match next_event(s).await {
            SourceEvent::Post(p) => return p,
            SourceEvent::Status(_) => continue,
        }
    }
}

async fn nothing_within(s: &mut PostStream, ms: u64) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_millis(ms), s.next()).await {
            Err(_) => return true,
            Ok(Some(SourceEvent::Status(_))) => continue,
            Ok(other) => {
                eprintln!("unexpected: {other:?}");
                return false;
            }
        }
    }
}

fn term(t: &str) -> Term {
    Term::parse(t).unwrap()
}

#[tokio::test]
async fn x_one_connection_carries_every_term_routed_by_rule_tag() {
    let (x, addr) = FakeX::start().await;
    let source = x_source(addr, TOKEN);
    let mut rust = source.open(&term("#RustLang")).unwrap();
    // The connection task starts at once: it adds the rule, then opens the stream.
    eventually("rule added and stream open", Duration::from_secs(5), || {
        x.rule_count() == 1 && x.feed.open() == 1
    })
    .await;
    let rust_rule = x.tag_of("#RustLang").unwrap();
    assert!(rust_rule.1.ends_with(":#rustlang"), "{rust_rule:?}");
    assert!(
        x.rules.lock().unwrap()[&rust_rule.0].0 == "#RustLang -is:retweet",
        "the rule excludes retweets"
    );

    let mut coffee = source.open(&term("#coffee")).unwrap();
    eventually("second rule", Duration::from_secs(5), || {
        x.rule_count() == 2
    })
    .await;
    let coffee_rule = x.tag_of("#coffee").unwrap();
    assert_eq!(x.feed.connections(), 1, "one connection for both terms");

    x.feed
        .push(&FakeX::post("1", "ann", "hello #RustLang", &rust_rule));
    let p = next_post(&mut rust).await;
    assert_eq!(p.id, "1");
    assert_eq!(p.author, "@ann");
    assert_eq!(p.text, "hello #RustLang");
    assert_eq!(p.url, "https://x.com/ann/status/1");
    assert_eq!(p.created_at, "2026-03-14T09:00:00.000Z");
    assert!(!p.repost);
    assert!(
        nothing_within(&mut coffee, 150).await,
        "coffee got a rust post"
    );

    // A post matching both rules reaches both terms; a retweet is marked as a repost.
    x.feed.push(&FakeX::tweet(
        "2",
        "bob",
        "#RustLang and #coffee",
        &[rust_rule.clone(), coffee_rule.clone()],
        false,
    ));
    assert_eq!(next_post(&mut rust).await.id, "2");
    assert_eq!(next_post(&mut coffee).await.id, "2");
    x.feed.push(&FakeX::tweet(
        "3",
        "cat",
        "RT @bob: #coffee",
        std::slice::from_ref(&coffee_rule),
        true,
    ));
    assert!(next_post(&mut coffee).await.repost);

    // Keep-alives, other apps' rules and garbage lines are skipped.
    x.feed.push("\r\n");
    x.feed.push(&FakeX::tweet(
        "4",
        "dan",
        "#coffee",
        &[("9".into(), "someone-else:#coffee".into())],
        false,
    ));
    x.feed.push("{not json\r\n");
    x.feed
        .push(&FakeX::post("5", "eve", "#coffee again", &coffee_rule));
    assert_eq!(next_post(&mut coffee).await.id, "5");

    // Leaving a term deletes its rule; the connection stays for the other.
    drop(coffee);
    eventually("coffee rule deleted", Duration::from_secs(5), || {
        x.rule_count() == 1
    })
    .await;
    assert_eq!(
        x.deleted.lock().unwrap().as_slice(),
        std::slice::from_ref(&coffee_rule.0)
    );
    assert_eq!(x.feed.open(), 1);
    assert!(source.is_running());

    // Leaving the last term deletes its rule, closes the connection and ends the task.
    drop(rust);
    eventually("everything closed", Duration::from_secs(5), || {
        x.rule_count() == 0 && x.feed.open() == 0 && !source.is_running()
    })
    .await;
    assert_eq!(x.feed.connections(), 1);

    // Opening again starts over.
    let mut again = source.open(&term("#RustLang")).unwrap();
    eventually("reconnected", Duration::from_secs(5), || x.feed.open() == 1).await;
    let rule = x.tag_of("#RustLang").unwrap();
    x.feed.push(&FakeX::post("6", "fay", "#RustLang", &rule));
    assert_eq!(next_post(&mut again).await.id, "6");
}

#[tokio::test]
async fn x_reconnects_with_backoff_when_the_stream_ends() {
    let (x, addr) = FakeX::start().await;
    let source = x_source(addr, TOKEN);
    let mut s = source.open(&term("#Bitcoin")).unwrap();
    eventually("connected", Duration::from_secs(5), || x.feed.open() == 1).await;
    let rule = x.tag_of("#Bitcoin").unwrap();
    x.feed.push(&FakeX::post("1", "ann", "#Bitcoin up", &rule));
    assert_eq!(next_post(&mut s).await.id, "1");

    x.feed.cut();
    let m = status_of(next_event(&mut s).await);
    assert!(m.contains("reconnecting"), "{m}");
    eventually("reconnected", Duration::from_secs(5), || {
        x.feed.connections() == 2 && x.feed.open() == 1
    })
    .await;
    x.feed
        .push(&FakeX::post("2", "bob", "#Bitcoin down", &rule));
    assert_eq!(next_post(&mut s).await.id, "2");
    assert_eq!(x.rule_count(), 1, "the rule was not added twice");
}

#[tokio::test]
async fn x_a_bad_token_and_a_refused_rule_are_reported() {
    let (x, addr) = FakeX::start().await;
    let source = x_source(addr, "wrong-token");
    let mut s = source.open(&term("#Bitcoin")).unwrap();
    let m = status_of(next_event(&mut s).await);
    assert!(m.contains("401"), "{m}");
    assert_eq!(x.rule_count(), 0);
    drop(s);
    eventually("task ended", Duration::from_secs(5), || {
        !source.is_running()
    })
    .await;

    let source = x_source(addr, TOKEN);
    let mut s = source.open(&term("INVALID")).unwrap();
    let m = status_of(next_event(&mut s).await);
    assert!(m.contains("did not accept"), "{m}");
    assert_eq!(x.feed.connections(), 0, "no rule, no connection");
}

#[tokio::test]
async fn x_through_the_app_first_post_at_once_reposts_skipped_and_leaving_cleans_up() {
    let (x, addr) = FakeX::start().await;
    let layer = Layer::new(InMemoryLayer::default());
    let source = Arc::new(x_source(addr, TOKEN));
    let hub = Hub::new(layer.clone(), source.clone(), Duration::from_millis(200));
    let app_addr = test_support::serve(tweets::router(
        hub.clone(),
        layer,
        tweets::Settings::default(),
    ))
    .await;

    let mut c = ws(app_addr, "/ws/map/").await;
    c.send_json(json!({"type": "listen", "message": "#RustLang"}))
        .await;
    assert_eq!(c.recv_json().await["type"], "listening");
    eventually("connected", Duration::from_secs(5), || x.feed.open() == 1).await;
    let rule = x.tag_of("#RustLang").unwrap();
    x.feed.push(&FakeX::tweet(
        "7",
        "ann",
        "RT @bob: #RustLang",
        std::slice::from_ref(&rule),
        true,
    ));
    x.feed
        .push(&FakeX::post("8", "ann", "#RustLang is fun", &rule));
    let t = c.recv_json().await;
    assert_eq!(
        t,
        json!({"type": "tweet", "url": "https://x.com/ann/status/8", "id": "8", "author": "@ann", "text": "#RustLang is fun", "created_at": "2026-03-14T09:00:00.000Z"})
    );
    // Two more arrive at once: only the newest is sent, one interval later.
    x.feed
        .push(&FakeX::post("9", "bob", "#RustLang one", &rule));
    x.feed
        .push(&FakeX::post("10", "cat", "#RustLang two", &rule));
    assert_eq!(c.recv_json().await["id"], "10");
    assert!(c.recv_nothing(400).await);

    c.close().await;
    eventually(
        "rule deleted, connection closed, tasks ended",
        Duration::from_secs(5),
        || x.rule_count() == 0 && x.feed.open() == 0 && !source.is_running() && hub.running() == 0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// A fake Mastodon streaming API: GET /api/v1/streaming/hashtag?tag=… as server-sent events.

#[derive(Default)]
struct FakeMastodon {
    feed: Feed,
    token: Option<String>,
    /// This many connections are accepted (200, event stream) and ended at once.
    end_at_once: AtomicUsize,
}

async fn mastodon_hashtag(
    State(m): State<Arc<FakeMastodon>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    m.feed
        .requests
        .lock()
        .unwrap()
        .push(format!("tag={}", q.get("tag").cloned().unwrap_or_default()));
    if let Some(token) = &m.token
        && !authorized(&headers, token)
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "This method requires an authenticated user"})),
        )
            .into_response();
    }
    if m.end_at_once
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        m.feed.connections.fetch_add(1, Ordering::SeqCst);
        return ([("content-type", "text/event-stream")], "").into_response();
    }
    // Heartbeats as Mastodon sends them: a comment line, no blank line after it.
    (
        [("content-type", "text/event-stream")],
        m.feed.body(":thump\n"),
    )
        .into_response()
}

impl FakeMastodon {
    async fn start(token: Option<&str>) -> (Arc<FakeMastodon>, SocketAddr) {
        let m = Arc::new(FakeMastodon {
            feed: Feed::default(),
            token: token.map(str::to_owned),
            end_at_once: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/api/v1/streaming/hashtag", get(mastodon_hashtag))
            .with_state(m.clone());
        (m.clone(), test_support::serve(router).await)
    }

    fn update(id: &str, acct: &str, html: &str, reblog: bool) -> String {
        let status = json!({
            "id": id,
            "created_at": "2026-03-14T10:00:00.000Z",
            "url": format!("https://social.example/@{acct}/{id}"),
            "uri": format!("https://social.example/users/{acct}/statuses/{id}"),
            "content": html,
            "account": {"id": "1", "username": acct, "acct": acct, "display_name": acct.to_uppercase()},
            "reblog": if reblog { json!({"id": "1"}) } else { Value::Null },
            "tags": [{"name": "rustlang"}],
        });
        format!("event: update\ndata: {status}\n\n")
    }
}

fn mastodon_source(addr: SocketAddr, token: Option<&str>) -> MastodonSource {
    let mut cfg = MastodonConfig::new(format!("http://{addr}"), token.map(str::to_owned));
    cfg.backoff = fast_backoff();
    cfg.stall_timeout = Duration::from_secs(2);
    MastodonSource::new(cfg).unwrap()
}

#[tokio::test]
async fn mastodon_updates_become_posts_and_the_rest_is_skipped() {
    let (m, addr) = FakeMastodon::start(Some("mastodon-token")).await;
    let source = mastodon_source(addr, Some("mastodon-token"));
    let mut s = source.open(&term("#RustLang")).unwrap();
    // The stream connects when first polled.
    let first = tokio::spawn(async move {
        let p = next_post(&mut s).await;
        (p, s)
    });
    eventually("connected", Duration::from_secs(5), || m.feed.open() == 1).await;
    assert_eq!(m.feed.requests.lock().unwrap().as_slice(), ["tag=rustlang"]);
    m.feed.push(":thump\n\n");
    m.feed.push("event: delete\ndata: 99\n\n");
    m.feed.push(&FakeMastodon::update(
        "101",
        "ann@social.example",
        "<p>Learning <a href=\"https://social.example/tags/rustlang\" class=\"mention hashtag\">#<span>RustLang</span></a> &amp; loving it</p><p>day 2</p>",
        false,
    ));
    let (p, mut s) = first.await.unwrap();
    assert_eq!(p.id, "101");
    assert_eq!(p.author, "@ann@social.example");
    assert_eq!(p.text, "Learning #RustLang & loving it\nday 2");
    assert_eq!(p.url, "https://social.example/@ann@social.example/101");
    assert_eq!(p.created_at, "2026-03-14T10:00:00.000Z");
    assert!(!p.repost);

    m.feed
        .push(&FakeMastodon::update("102", "bob", "<p>boost</p>", true));
    assert!(next_post(&mut s).await.repost);
    m.feed.push("event: update\ndata: {\"broken\": true}\n\n");
    m.feed.push(&FakeMastodon::update(
        "103",
        "cat",
        "<p>#RustLang 3</p>",
        false,
    ));
    assert_eq!(next_post(&mut s).await.id, "103");

    // A cut connection is re-opened with backoff.
    m.feed.cut();
    let msg = status_of(next_event(&mut s).await);
    assert!(msg.contains("reconnecting"), "{msg}");
    let pending = tokio::spawn(async move {
        let p = next_post(&mut s).await;
        (p, s)
    });
    eventually("reconnected", Duration::from_secs(5), || {
        m.feed.connections() == 2 && m.feed.open() == 1
    })
    .await;
    m.feed.push(&FakeMastodon::update(
        "104",
        "dan",
        "<p>#RustLang 4</p>",
        false,
    ));
    let (p, s) = pending.await.unwrap();
    assert_eq!(p.id, "104");

    // Dropping the stream closes the connection.
    drop(s);
    eventually("closed", Duration::from_secs(5), || m.feed.open() == 0).await;
}

#[tokio::test]
async fn mastodon_needs_one_hashtag_and_reports_a_missing_token() {
    let (m, addr) = FakeMastodon::start(Some("secret")).await;
    let source = mastodon_source(addr, None);
    let err = source.open(&term("rust and coffee")).err().unwrap();
    assert!(err.contains("one hashtag"), "{err}");
    let mut s = source.open(&term("rustlang")).unwrap();
    let msg = status_of(next_event(&mut s).await);
    assert!(msg.contains("401"), "{msg}");
    assert_eq!(m.feed.connections(), 0);
}

#[tokio::test]
async fn mastodon_through_the_app() {
    let (m, addr) = FakeMastodon::start(None).await;
    let layer = Layer::new(InMemoryLayer::default());
    let hub = Hub::new(
        layer.clone(),
        Arc::new(mastodon_source(addr, None)),
        Duration::from_millis(100),
    );
    let app_addr = test_support::serve(tweets::router(
        hub.clone(),
        layer,
        tweets::Settings::default(),
    ))
    .await;
    let mut c = ws(app_addr, "/ws/map/").await;
    c.send_json(json!({"type": "listen", "message": "two words"}))
        .await;
    let err = c.recv_json().await;
    assert!(
        err["error"].as_str().unwrap().contains("one hashtag"),
        "{err}"
    );
    assert_eq!(hub.upstreams(), 0);
    c.send_json(json!({"type": "listen", "message": "#RustLang"}))
        .await;
    assert_eq!(c.recv_json().await["type"], "listening");
    eventually("connected", Duration::from_secs(5), || m.feed.open() == 1).await;
    m.feed.push(&FakeMastodon::update(
        "201",
        "ann",
        "<p>#RustLang!</p>",
        false,
    ));
    let t = c.recv_json().await;
    assert_eq!(t["type"], "tweet");
    assert_eq!(t["text"], "#RustLang!");
    assert_eq!(t["author"], "@ann");
    c.send_json(json!({"type": "stop"})).await;
    assert_eq!(c.recv_json().await["type"], "stopped");
    eventually("closed", Duration::from_secs(5), || {
        m.feed.open() == 0 && hub.running() == 0
    })
    .await;
}

/// A server that accepts the stream and ends it at once, again and again, is not hammered: the
/// wait doubles each time (the status lines say how long). After a connection that delivered
/// an event, it starts again from the first wait.
#[tokio::test]
async fn mastodon_backoff_grows_while_streams_end_at_once_and_restarts_after_an_event() {
    let (m, addr) = FakeMastodon::start(None).await;
    m.end_at_once.store(3, Ordering::SeqCst);
    let mut cfg = MastodonConfig::new(format!("http://{addr}"), None);
    cfg.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(1600),
    };
    let source = MastodonSource::new(cfg).unwrap();
    let mut s = source.open(&term("#RustLang")).unwrap();
    let mut waits = Vec::new();
    for _ in 0..3 {
        let msg = status_of(next_event(&mut s).await);
        assert!(msg.contains("ended"), "{msg}");
        waits.push(msg.rsplit("reconnecting in ").next().unwrap().to_owned());
    }
    assert_eq!(waits, ["0.1 s", "0.2 s", "0.4 s"]);
    // The fourth connection stays up and delivers a post; when it ends, the first wait again.
    let pending = tokio::spawn(async move {
        let p = next_post(&mut s).await;
        (p, s)
    });
    eventually("connected", Duration::from_secs(5), || m.feed.open() == 1).await;
    assert_eq!(m.feed.connections(), 4);
    m.feed.push(&FakeMastodon::update(
        "301",
        "ann",
        "<p>#RustLang</p>",
        false,
    ));
    let (p, mut s) = pending.await.unwrap();
    assert_eq!(p.id, "301");
    m.feed.cut();
    let msg = status_of(next_event(&mut s).await);
    assert!(msg.ends_with("reconnecting in 0.1 s"), "{msg}");
}

/// Heartbeat comments (`:thump`) are all a quiet hashtag sends: the stall timeout counts them
/// (the event parser swallows them), so they keep the connection open.
#[tokio::test]
async fn mastodon_heartbeats_keep_a_quiet_stream_open() {
    let (m, addr) = FakeMastodon::start(None).await;
    let mut cfg = MastodonConfig::new(format!("http://{addr}"), None);
    cfg.backoff = fast_backoff();
    // The fake server sends a heartbeat every 50 ms: twenty of them per stall timeout.
    cfg.stall_timeout = Duration::from_secs(1);
    let source = MastodonSource::new(cfg).unwrap();
    let mut s = source.open(&term("#RustLang")).unwrap();
    assert!(nothing_within(&mut s, 2500).await, "no event, no status");
    assert_eq!(m.feed.connections(), 1, "never reconnected");
    m.feed.push(&FakeMastodon::update(
        "401",
        "ann",
        "<p>#RustLang</p>",
        false,
    ));
    assert_eq!(next_post(&mut s).await.id, "401");
}

/// Lines and events from the server are capped (as the X source caps its lines): an event that
/// grows past `MAX_EVENT_BYTES` without ending ends the connection, which is re-opened.
#[tokio::test]
async fn mastodon_an_endless_event_is_cut_off() {
    let (m, addr) = FakeMastodon::start(None).await;
    let source = mastodon_source(addr, None);
    let mut s = source.open(&term("#RustLang")).unwrap();
    let pending = tokio::spawn(async move {
        let e = next_event(&mut s).await;
        (e, s)
    });
    eventually("connected", Duration::from_secs(5), || m.feed.open() == 1).await;
    let huge = format!(
        "event: update\ndata: {}",
        "x".repeat(tweets::mastodon::MAX_EVENT_BYTES + 1)
    );
    m.feed.push(&huge);
    let (e, mut s) = pending.await.unwrap();
    let msg = status_of(e);
    assert!(msg.contains("over 1024 KiB"), "{msg}");
    // The stream reconnects when polled again.
    let next = tokio::spawn(async move { next_post(&mut s).await });
    eventually("reconnected", Duration::from_secs(5), || {
        m.feed.connections() == 2 && m.feed.open() == 1
    })
    .await;
    m.feed.push(&FakeMastodon::update(
        "501",
        "ann",
        "<p>#RustLang</p>",
        false,
    ));
    assert_eq!(next.await.unwrap().id, "501");
}
