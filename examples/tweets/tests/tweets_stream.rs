//! The tweets example end to end over real sockets, on the corpus source: listen → posts with
//! the pacing, stop → no more, a new listen replaces the old, listeners of a term share one
//! upstream, and the last one to leave ends it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use switchboard::{InMemoryLayer, Layer};
use test_support::{WsClient, eventually, ws};
use tweets::corpus::Corpus;
use tweets::hub::Hub;
use tweets::source::{PostStream, Source, Term};

/// Counts the streams a source has open, to show when an upstream is really gone.
struct Counting {
    inner: Corpus,
    opened: Arc<AtomicUsize>,
    open_now: Arc<AtomicUsize>,
}

struct Open(Arc<AtomicUsize>);
impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Source for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn open(&self, term: &Term) -> Result<PostStream, String> {
        let s = self.inner.open(term)?;
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.open_now.fetch_add(1, Ordering::SeqCst);
        let guard = Open(self.open_now.clone());
        Ok(s.map(move |e| {
            let _g = &guard;
            e
        })
        .boxed())
    }
}

struct App {
    addr: SocketAddr,
    hub: Hub,
    opened: Arc<AtomicUsize>,
    open_now: Arc<AtomicUsize>,
}

/// The app on the bundled corpus replayed fast (2,000 posts/s: about five loops a second), at
/// most one post per `interval_ms` per listener.
async fn start(interval_ms: u64) -> App {
    start_with(Corpus::bundled(2000.0).unwrap(), interval_ms).await
}

async fn start_with(corpus: Corpus, interval_ms: u64) -> App {
    let layer = Layer::new(InMemoryLayer::default());
    let opened = Arc::new(AtomicUsize::new(0));
    let open_now = Arc::new(AtomicUsize::new(0));
    let source = Counting {
        inner: corpus.clone(),
        opened: opened.clone(),
        open_now: open_now.clone(),
    };
    let hub = Hub::new(
        layer.clone(),
        Arc::new(source),
        Duration::from_millis(interval_ms),
    );
    let settings = tweets::Settings {
        corpus: Some(corpus),
        ..tweets::Settings::default()
    };
    let addr = test_support::serve(tweets::router(hub.clone(), layer, settings)).await;
    App {
        addr,
        hub,
        opened,
        open_now,
    }
}

async fn listen(c: &mut WsClient, term: &str) {
    c.send_json(json!({"type": "listen", "message": term}))
        .await;
    let ack = c.recv_json().await;
    assert_eq!(ack, json!({"type": "listening", "message": term}));
}

/// The next `tweet` frame, checked for shape and for matching `term`.
async fn tweet(c: &mut WsClient, term: &str) -> serde_json::Value {
    let t = c.recv_json().await;
    assert_eq!(t["type"], "tweet", "{t}");
    for field in ["url", "id", "author", "text", "created_at"] {
        assert!(t[field].is_string(), "{field} missing in {t}");
    }
    let text = t["text"].as_str().unwrap();
    assert!(
        Term::parse(term).unwrap().matches(text),
        "{text:?} does not match {term}"
    );
    assert!(!text.starts_with("RT @"), "a repost was sent: {text}");
    t
}

async fn ended(app: &App) {
    eventually("the upstream ended", Duration::from_secs(5), || {
        app.hub.upstreams() == 0
            && app.hub.running() == 0
            && app.open_now.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn the_first_match_comes_at_once() {
    // A long interval: "at once" is well under it even on a loaded machine.
    let app = start(5_000).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    let asked = Instant::now();
    listen(&mut c, "#RustLang").await;
    tweet(&mut c, "#RustLang").await;
    let first = asked.elapsed();
    assert!(
        first < Duration::from_millis(1_000),
        "first post after {first:?}, interval 5 s"
    );
    assert!(
        c.recv_nothing(500).await,
        "a second post within the interval"
    );
}

#[tokio::test]
async fn later_posts_come_at_most_one_per_interval() {
    // The corpus replays about five loops a second: unpaced, posts would be milliseconds apart.
    let app = start(300).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    listen(&mut c, "#RustLang").await;
    tweet(&mut c, "#RustLang").await;
    tweet(&mut c, "#RustLang").await;
    let start = Instant::now();
    let mut last = start;
    for _ in 0..3 {
        tweet(&mut c, "#RustLang").await;
        let gap = last.elapsed();
        last = Instant::now();
        // Delivery jitter can shift one arrival, not the pace: each gap is near the interval...
        assert!(
            gap >= Duration::from_millis(150),
            "two posts {gap:?} apart, interval 300 ms"
        );
        assert!(gap < Duration::from_secs(3), "posts stalled: {gap:?} apart");
    }
    // ...and three gaps add up to three intervals, less one arrival's jitter at most.
    let total = start.elapsed();
    assert!(
        total >= Duration::from_millis(800),
        "three posts in {total:?}, interval 300 ms"
    );
}

#[tokio::test]
async fn stop_means_no_more_posts_and_ends_the_upstream() {
    let app = start(150).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    listen(&mut c, "#coffee").await;
    tweet(&mut c, "#coffee").await;
    tweet(&mut c, "#coffee").await;
    c.send_json(json!({"type": "stop"})).await;
    // A post sent just before the stop may still be on its way; nothing after the ack.
    loop {
        let m = c.recv_json().await;
        if m["type"] == "stopped" {
            break;
        }
        assert_eq!(m["type"], "tweet", "{m}");
    }
    assert!(c.recv_nothing(600).await, "posts after stop");
    ended(&app).await;
    // The connection is still usable.
    listen(&mut c, "#coffee").await;
    tweet(&mut c, "#coffee").await;
}

#[tokio::test]
async fn a_new_listen_replaces_the_previous_one() {
    let app = start(100).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    listen(&mut c, "#RustLang").await;
    tweet(&mut c, "#RustLang").await;
    listen(&mut c, "#Bitcoin").await;
    for _ in 0..4 {
        tweet(&mut c, "#Bitcoin").await;
    }
    assert_eq!(app.hub.upstreams(), 1, "the #RustLang upstream lingers");
    eventually("one upstream task", Duration::from_secs(5), || {
        app.hub.running() == 1 && app.open_now.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(app.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn listeners_of_a_term_share_one_upstream_and_the_last_to_leave_ends_it() {
    // A long interval: a listener joining a running upstream gets its latest post at once.
    let app = start(1_000).await;
    let mut ann = ws(app.addr, "/ws/map/").await;
    let mut bob = ws(app.addr, "/ws/map/").await;
    listen(&mut ann, "#Bitcoin").await;
    let first = tweet(&mut ann, "#Bitcoin").await;
    let joined = Instant::now();
    listen(&mut bob, "#bitcoin").await; // same term, other case
    let bobs_first = tweet(&mut bob, "#Bitcoin").await;
    assert!(joined.elapsed() < Duration::from_millis(500));
    assert_eq!(bobs_first["id"], first["id"], "bob gets the latest post");
    assert_eq!(
        app.opened.load(Ordering::SeqCst),
        1,
        "one upstream for both"
    );
    assert_eq!(app.hub.upstreams(), 1);
    let stats: serde_json::Value = reqwest::get(format!("http://{}/stats.json", app.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&stats["upstreams"], &stats["running"], &stats["listeners"]),
        (&json!(1), &json!(1), &json!(2)),
        "{stats}"
    );

    // Both get the next post, through the group.
    let a = tweet(&mut ann, "#Bitcoin").await;
    let b = tweet(&mut bob, "#Bitcoin").await;
    assert_eq!(a["id"], b["id"]);

    ann.close().await;
    let after = tweet(&mut bob, "#Bitcoin").await;
    assert_ne!(after["id"], b["id"]);
    assert_eq!(app.hub.running(), 1, "bob still listens");
    assert_eq!(app.open_now.load(Ordering::SeqCst), 1);

    bob.close().await;
    ended(&app).await;
    assert_eq!(app.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_vanished_client_ends_its_upstream() {
    let app = start(100).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    listen(&mut c, "#NASA").await;
    tweet(&mut c, "#NASA").await;
    // Drop the TCP connection without a close frame.
    drop(c);
    ended(&app).await;
}

#[tokio::test]
async fn reposts_are_skipped() {
    let corpus = Corpus::parse(
        concat!(
            r#"{"id":"1","author":"a","text":"RT @b: big news #x","created_at":"2026-01-01T00:00:00Z","repost":true}"#,
            "\n",
            r#"{"id":"2","author":"b","text":"big news #x","created_at":"2026-01-01T00:00:01Z"}"#,
            "\n",
            r#"{"id":"3","author":"c","text":"RT @b: big news #x","created_at":"2026-01-01T00:00:02Z","repost":true}"#,
            "\n",
            r#"{"id":"4","author":"d","text":"unrelated","created_at":"2026-01-01T00:00:03Z"}"#,
            "\n",
        ),
        1000.0,
        "test corpus",
    )
    .unwrap();
    let app = start_with(corpus, 50).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    listen(&mut c, "#x").await;
    for _ in 0..5 {
        assert_eq!(tweet(&mut c, "#x").await["id"], "2");
    }
}

#[tokio::test]
async fn a_term_nothing_matches_gets_a_status_and_no_posts() {
    let app = start(100).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    listen(&mut c, "#NoSuchTagAnywhere").await;
    let status = c.recv_json().await;
    assert_eq!(status["type"], "status", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("no post"),
        "{status}"
    );
    assert!(c.recv_nothing(300).await);
}

#[tokio::test]
async fn bad_requests_get_error_frames_and_the_connection_stays() {
    let app = start(100).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    for bad in [
        json!({"type": "listen", "message": "   "}),
        json!({"type": "listen", "message": "x".repeat(101)}),
        json!({"type": "listen", "message": "?!"}),
        json!({"type": "listen"}),
        json!({"type": "dance"}),
    ] {
        c.send_json(bad.clone()).await;
        let err = c.recv_json().await;
        assert_eq!(err["type"], "error", "{bad} → {err}");
        assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    c.send_text("not json").await;
    assert_eq!(c.recv_json().await["type"], "error");
    assert_eq!(app.hub.upstreams(), 0, "bad requests start nothing");
    listen(&mut c, "#Jazz").await;
    tweet(&mut c, "#Jazz").await;
}

#[tokio::test]
async fn many_terms_and_listeners_leave_no_upstream_behind() {
    let app = start(50).await;
    let terms = ["#RustLang", "#coffee", "#Bitcoin", "#NASA", "#Jazz"];
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = ws(app.addr, "/ws/map/").await;
        listen(&mut c, terms[i % terms.len()]).await;
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        tweet(c, terms[i % terms.len()]).await;
    }
    assert_eq!(app.hub.upstreams(), terms.len());
    assert_eq!(app.opened.load(Ordering::SeqCst), terms.len());
    for c in clients {
        c.close().await;
    }
    ended(&app).await;
}

#[tokio::test]
async fn the_page_and_its_assets_are_served() {
    let app = start(100).await;
    let base = format!("http://{}", app.addr);
    let html = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(html.status(), 200);
    let html = html.text().await.unwrap();
    for id in [
        "id=\"term\"",
        "id=\"search\"",
        "id=\"stop\"",
        "id=\"carousel\"",
    ] {
        assert!(html.contains(id), "{id}");
    }
    for (path, ty) in [
        ("/static/app.js", "text/javascript"),
        ("/static/style.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ty)
        );
    }
    let cfg: serde_json::Value = reqwest::get(format!("{base}/config.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["interval_ms"], 100);
    assert!(cfg["source"].as_str().unwrap().contains("synthetic"));

    // The corpus source's links open the post on this server.
    let mut c = ws(app.addr, "/ws/map/").await;
    listen(&mut c, "#Python").await;
    let t = tweet(&mut c, "#Python").await;
    let url = t["url"].as_str().unwrap();
    assert!(url.starts_with("/posts/"), "{url}");
    let page = reqwest::get(format!("{base}{url}")).await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("synthetic"));
    let missing = reqwest::get(format!("{base}/posts/nope")).await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// Each distinct term is an upstream (a connection, a rule, a task), and anyone may open sockets
/// and search: past `max_terms`, a search for a new term gets an error frame, while searches
/// for terms already followed still work, and a freed slot can be taken again.
#[tokio::test]
async fn new_terms_past_max_terms_are_refused_with_an_error_frame() {
    let layer = Layer::new(InMemoryLayer::default());
    let corpus = Corpus::bundled(2000.0).unwrap();
    let hub = Hub::with_max_terms(
        layer.clone(),
        Arc::new(corpus.clone()),
        Duration::from_millis(100),
        2,
    );
    let settings = tweets::Settings {
        corpus: Some(corpus),
        ..tweets::Settings::default()
    };
    let addr = test_support::serve(tweets::router(hub.clone(), layer, settings)).await;
    let mut a = ws(addr, "/ws/map/").await;
    let mut b = ws(addr, "/ws/map/").await;
    let mut c = ws(addr, "/ws/map/").await;
    listen(&mut a, "#RustLang").await;
    listen(&mut b, "#coffee").await;
    c.send_json(json!({"type": "listen", "message": "#Jazz"}))
        .await;
    let err = c.recv_json().await;
    assert_eq!(err["type"], "error", "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("--max-terms"),
        "{err}"
    );
    assert_eq!(hub.upstreams(), 2);
    // The connection stays, and a term already followed is fine.
    listen(&mut c, "#rustlang").await;
    tweet(&mut c, "#RustLang").await;
    assert_eq!(hub.upstreams(), 2);
    // B stops: its term's slot is free again.
    b.send_json(json!({"type": "stop"})).await;
    loop {
        if b.recv_json().await["type"] == "stopped" {
            break;
        }
    }
    listen(&mut c, "#Jazz").await;
    tweet(&mut c, "#Jazz").await;
    assert_eq!(hub.upstreams(), 2);
    tweet(&mut a, "#RustLang").await;
}

/// A post's link goes into the page's `<a href>`: only web links get through (`http(s)://…`,
/// or a path on this site as the corpus's `/posts/{id}`); `javascript:`, `data:` and the like
/// become `""` (no link). Posts come from the network and from corpus files.
#[tokio::test]
async fn only_web_links_reach_the_page() {
    let urls = [
        ("1", "https://social.example/@ann/1"),
        ("2", "javascript:alert(document.cookie)"),
        ("3", "JavaScript:alert(1)"),
        ("4", " javascript:alert(1)"),
        ("5", "java\tscript:alert(1)"),
        ("6", "data:text/html,<script>alert(1)</script>"),
        ("7", "/posts/7"),
        ("8", "//evil.example/x"),
        ("9", "HTTP://social.example/9"),
        ("10", "vbscript:msgbox(1)"),
    ];
    let jsonl: String = urls
        .iter()
        .map(|(id, url)| {
            format!(
                "{}\n",
                json!({"id": id, "author": "ann", "text": format!("#Links {id}"),
                       "created_at": "2026-03-14T10:00:00Z", "url": url})
            )
        })
        .collect();
    // Replayed slower than the pacing: every post is sent, in order.
    let app = start_with(Corpus::parse(&jsonl, 100.0, "links").unwrap(), 1).await;
    let mut c = ws(app.addr, "/ws/map/").await;
    listen(&mut c, "#Links").await;
    let mut got = std::collections::BTreeMap::new();
    while got.len() < urls.len() {
        let t = tweet(&mut c, "#Links").await;
        got.insert(
            t["id"].as_str().unwrap().to_owned(),
            t["url"].as_str().unwrap().to_owned(),
        );
    }
    for (id, url) in urls {
        let expected = match id {
            "1" | "7" | "9" => url,
            _ => "",
        };
        assert_eq!(got[id], expected, "post {id} with url {url:?}");
    }
    assert_eq!(tweets::safe_url("https://x.example/a b"), "");
    assert_eq!(tweets::safe_url("https://x.example/\u{0}"), "");
}
