//! The HTTP transports over real sockets: `sse::EventStream` and `longpoll::LongPoll` mounted
//! in an axum router, read with an HTTP client on loopback — on the in-memory layer and on
//! `RedisPubSubLayer`, both keeping group history.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use switchboard::feed::Since;
use switchboard::longpoll::LongPoll;
use switchboard::sse::{EventStream, SseEvent};
use switchboard::{DrainConfig, InMemoryLayer, Layer, LayerConfig, Shutdown};
use test_support::http::{Body, Event, client};

#[derive(Clone)]
struct App {
    layer: Layer,
    shutdown: Shutdown,
    keep_alive: Option<Duration>,
    poll_timeout: Duration,
}

async fn events(State(app): State<App>, Path(room): Path<String>, Since(since): Since) -> Response {
    EventStream::new(app.layer, format!("room.{room}"))
        .since(since)
        .keep_alive(app.keep_alive)
        .shutdown(&app.shutdown)
        .open()
        .await
}

async fn poll(State(app): State<App>, Path(room): Path<String>, Since(since): Since) -> Response {
    LongPoll::new(app.layer, format!("room.{room}"))
        .since(since)
        .timeout(app.poll_timeout)
        .shutdown(&app.shutdown)
        .open()
        .await
}

/// History for `room.*` (50 messages) and `tiny.*` (3); none for the rest.
fn config() -> LayerConfig {
    LayerConfig::default()
        .group_history("room.tiny*", 3, Duration::from_secs(60))
        .unwrap()
        .group_history("room.*", 50, Duration::from_secs(60))
        .unwrap()
}

fn memory() -> Layer {
    Layer::new(InMemoryLayer::new(config()))
}

async fn pubsub() -> Option<Layer> {
    let rc = test_support::layers::config(config())?;
    Some(Layer::new(test_support::layers::pubsub(&rc).await))
}

struct Server {
    addr: SocketAddr,
    layer: Layer,
    shutdown: Shutdown,
}

async fn start(layer: Layer, keep_alive: Option<Duration>, poll_timeout: Duration) -> Server {
    let shutdown = Shutdown::new();
    let app = App {
        layer: layer.clone(),
        shutdown: shutdown.clone(),
        keep_alive,
        poll_timeout,
    };
    let router = Router::new()
        .route("/events/{room}", get(events))
        .route("/poll/{room}", get(poll))
        .with_state(app);
    let addr = test_support::serve(router).await;
    Server {
        addr,
        layer,
        shutdown,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn send(&self, room: &str, n: i64) {
        self.layer
            .group_send(
                format!("room.{room}").as_str(),
                json!({"type": "chat.message", "n": n}),
            )
            .await
            .unwrap();
    }

    /// Opens an event stream as a browser's `EventSource` does (`Accept: text/event-stream`:
    /// `serve` answers it outside hyper); reads the `: ok` comment.
    async fn stream(&self, room: &str, last_event_id: Option<&str>) -> Body {
        self.open(room, last_event_id, true).await
    }

    /// Opens an event stream, with `Accept: text/event-stream` or without (then hyper serves
    /// it); reads the `: ok` comment.
    async fn open(&self, room: &str, last_event_id: Option<&str>, accept: bool) -> Body {
        let mut req = client().get(self.url(&format!("/events/{room}")));
        if accept {
            req = req.header("Accept", "text/event-stream");
        }
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = Body::new(resp);
        let first = body.next_block().await.unwrap();
        assert_eq!(first.comment.as_deref(), Some("ok"));
        body
    }

    async fn poll(&self, room: &str, since: Option<&str>) -> (u16, Value) {
        let mut url = self.url(&format!("/poll/{room}"));
        if let Some(s) = since {
            url = format!("{url}?since={s}");
        }
        let resp = client().get(url).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn n(ev: &Event) -> i64 {
    ev.json()["n"].as_i64().unwrap()
}

fn offset(position: &str) -> u64 {
    position.rsplit_once(':').unwrap().1.parse().unwrap()
}

// --------------------------------------------------------------------------------------------
// The scenarios, run on each layer.
// --------------------------------------------------------------------------------------------

/// Live messages arrive as events: `id:` the position, `event:` the type, `data:` the JSON.
async fn sse_live(s: &Server) {
    let mut body = s.stream("live", None).await;
    let rec = body.next_event().await;
    assert_eq!(rec.event.as_deref(), Some("recovery"));
    let rec_data = rec.json();
    assert_eq!(rec_data["recovered"], true);
    assert_eq!(rec_data["replayed"], 0);
    assert_eq!(rec.id.as_deref(), rec_data["position"].as_str());
    for i in 1..=3 {
        s.send("live", i).await;
    }
    let mut offsets = Vec::new();
    for i in 1..=3 {
        let ev = body.next_event().await;
        assert_eq!(ev.event.as_deref(), Some("chat.message"));
        assert_eq!(n(&ev), i);
        let id = ev.id.clone().unwrap();
        assert_eq!(ev.json()["position"], id.as_str(), "data carries the id");
        offsets.push(offset(&id));
    }
    assert_eq!(offsets, [1, 2, 3]);
}

/// A stream that reconnects with `Last-Event-ID` gets exactly what it missed, in order, then
/// live messages with nothing doubled.
async fn sse_resume(s: &Server) {
    let mut body = s.stream("resume", None).await;
    body.next_event().await; // recovery
    s.send("resume", 1).await;
    s.send("resume", 2).await;
    body.next_event().await;
    let seen = body.next_event().await;
    assert_eq!(n(&seen), 2);
    drop(body);
    for i in 3..=5 {
        s.send("resume", i).await;
    }
    let last = seen.id.unwrap();
    let mut back = s.stream("resume", Some(&last)).await;
    let rec = back.next_event().await;
    assert_eq!(rec.event.as_deref(), Some("recovery"));
    assert_eq!(rec.json()["recovered"], true);
    assert_eq!(rec.json()["replayed"], 3);
    assert_eq!(
        rec.id.as_deref(),
        Some(last.as_str()),
        "resumes from where it was"
    );
    for i in 3..=5 {
        assert_eq!(n(&back.next_event().await), i);
    }
    s.send("resume", 6).await;
    assert_eq!(
        n(&back.next_event().await),
        6,
        "live follows, nothing doubled"
    );

    // The same through `?since=` (a page that kept the position).
    let resp = client()
        .get(s.url(&format!("/events/resume?since={last}")))
        .send()
        .await
        .unwrap();
    let mut q = Body::new(resp);
    q.next_block().await; // : ok
    assert_eq!(q.next_event().await.json()["replayed"], 4);
    let mut ns = Vec::new();
    for _ in 0..4 {
        ns.push(n(&q.next_event().await));
    }
    assert_eq!(ns, [3, 4, 5, 6]);
}

/// A position the history cannot resume from is told (`recovered: false`, the position now),
/// nothing is replayed, and live messages follow.
async fn sse_not_recovered(s: &Server) {
    for i in 1..=6 {
        s.send("tiny", i).await;
    }
    // Another epoch.
    let mut body = s.stream("tiny", Some("another-epoch:3")).await;
    let rec = body.next_event().await;
    let data = rec.json();
    assert_eq!(data["recovered"], false);
    assert_eq!(data["replayed"], 0);
    let now = data["position"].as_str().unwrap().to_owned();
    assert_eq!(offset(&now), 6);
    assert_eq!(
        rec.id.as_deref(),
        Some(now.as_str()),
        "resume from now next time"
    );
    s.send("tiny", 7).await;
    assert_eq!(n(&body.next_event().await), 7);
    // Older than the history holds (it keeps 3: 5, 6, 7).
    let epoch = now.rsplit_once(':').unwrap().0;
    let mut old = s.stream("tiny", Some(&format!("{epoch}:2"))).await;
    assert_eq!(old.next_event().await.json()["recovered"], false);
    // Still within it.
    let mut ok = s.stream("tiny", Some(&format!("{epoch}:4"))).await;
    assert_eq!(ok.next_event().await.json()["replayed"], 3);
    for i in 5..=7 {
        assert_eq!(n(&ok.next_event().await), i);
    }
}

/// A long-poll loop: the first poll gives the position at once; each poll answers with what
/// came after its `since`; nothing new by the timeout is an empty list with the same position.
async fn longpoll_loop(s: &Server) {
    let (status, first) = s.poll("lp", None).await;
    assert_eq!(status, 200);
    assert_eq!(first["messages"], json!([]));
    assert_eq!(first["recovered"], true);
    let mut pos = first["position"].as_str().unwrap().to_owned();

    // Waits for the next message.
    let started = Instant::now();
    let waiting = {
        let url = s.url(&format!("/poll/lp?since={pos}"));
        tokio::spawn(async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a poll with nothing new waits");
    s.send("lp", 1).await;
    let got = waiting.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(got["messages"][0]["n"], 1);
    assert_eq!(got["recovered"], true);
    pos = got["position"].as_str().unwrap().to_owned();
    assert_eq!(got["messages"][0]["position"], pos.as_str());

    // What was published between two polls comes at once, in order.
    for i in 2..=4 {
        s.send("lp", i).await;
    }
    let (_, got) = s.poll("lp", Some(&pos)).await;
    let ns: Vec<i64> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [2, 3, 4]);
    pos = got["position"].as_str().unwrap().to_owned();
    assert_eq!(offset(&pos), 4);

    // Nothing by the timeout: empty, same position.
    let started = Instant::now();
    let (status, got) = s.poll("lp", Some(&pos)).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(
        got,
        json!({"messages": [], "position": pos, "recovered": true})
    );

    // Not recoverable: told at once, with the position now.
    let started = Instant::now();
    let (_, got) = s.poll("lp", Some("another-epoch:1")).await;
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(
        got,
        json!({"messages": [], "position": pos, "recovered": false})
    );
}

/// Publishers racing a long-poll loop: every message reaches the loop once, in order.
async fn longpoll_races_publishers(s: &Server) {
    let (_, first) = s.poll("race", None).await;
    let mut pos = first["position"].as_str().unwrap().to_owned();
    const N: i64 = 200;
    let publisher = {
        let layer = s.layer.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                layer
                    .group_send("room.race", json!({"type": "chat.message", "n": i}))
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < N as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} within 20 s",
            got.len()
        );
        let (status, answer) = s.poll("race", Some(&pos)).await;
        assert_eq!(status, 200);
        assert_eq!(answer["recovered"], true, "{answer}");
        for m in answer["messages"].as_array().unwrap() {
            got.push(m["n"].as_i64().unwrap());
        }
        pos = answer["position"].as_str().unwrap().to_owned();
    }
    publisher.await.unwrap();
    assert_eq!(got, (1..=N).collect::<Vec<_>>());
}

// --------------------------------------------------------------------------------------------
// In memory.
// --------------------------------------------------------------------------------------------

async fn mem_server() -> Server {
    start(memory(), None, Duration::from_millis(300)).await
}

#[tokio::test]
async fn sse_live_delivery_memory() {
    sse_live(&mem_server().await).await;
}

#[tokio::test]
async fn sse_resume_replays_exactly_the_missed_memory() {
    sse_resume(&mem_server().await).await;
}

#[tokio::test]
async fn sse_not_recovered_is_told_memory() {
    sse_not_recovered(&mem_server().await).await;
}

#[tokio::test]
async fn longpoll_loop_memory() {
    longpoll_loop(&mem_server().await).await;
}

#[tokio::test]
async fn longpoll_races_publishers_memory() {
    longpoll_races_publishers(&mem_server().await).await;
}

/// Keep-alive comments at the interval, and nothing else while the group is quiet.
#[tokio::test]
async fn sse_keep_alive_comments() {
    let s = start(
        memory(),
        Some(Duration::from_millis(100)),
        Duration::from_secs(1),
    )
    .await;
    let mut body = s.stream("quiet", None).await;
    body.next_event().await; // recovery
    let started = Instant::now();
    for _ in 0..3 {
        let block = body.next_block().await.unwrap();
        assert_eq!(block.comment.as_deref(), Some("keep-alive"));
        assert!(block.data.is_none());
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(280), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A drain ends open streams and answers waiting polls at once; new ones get 503.
#[tokio::test]
async fn drain_ends_streams_and_polls() {
    let s = start(memory(), None, Duration::from_secs(30)).await;
    let mut body = s.stream("drain", None).await;
    body.next_event().await;
    let (_, first) = s.poll("drain", None).await;
    let pos = first["position"].as_str().unwrap().to_owned();
    let waiting = {
        let url = s.url(&format!("/poll/drain?since={pos}"));
        tokio::spawn(async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
        })
    };
    test_support::eventually("both registered", Duration::from_secs(5), || {
        s.shutdown.open() == 2
    })
    .await;
    let started = Instant::now();
    let report = s
        .shutdown
        .drain(DrainConfig::default().deadline(Duration::from_secs(5)))
        .await;
    assert_eq!((report.told, report.remaining), (2, 0));
    assert!(
        body.ends_within(Duration::from_secs(2)).await,
        "the stream ends"
    );
    let answered = waiting.await.unwrap().unwrap();
    assert_eq!(answered["messages"], json!([]));
    assert_eq!(answered["position"], pos.as_str());
    assert!(started.elapsed() < Duration::from_secs(3));
    let resp = client().get(s.url("/events/drain")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), "server shutting down");
    let (status, text) = s.poll("drain", None).await;
    assert_eq!((status, text), (503, json!("server shutting down")));
}

/// Closing the layer ends the streams.
#[tokio::test]
async fn layer_close_ends_the_stream() {
    let s = mem_server().await;
    let mut body = s.stream("close", None).await;
    body.next_event().await;
    s.layer.close().await.unwrap();
    assert!(body.ends_within(Duration::from_secs(2)).await);
}

/// Bad input is answered with a plain 400 (or 500 for a feed the server misconfigured), and
/// the server serves on.
#[tokio::test]
async fn bad_input_is_answered_without_panic() {
    let s = mem_server().await;
    let long = format!("{}:1", "e".repeat(5000));
    for (path, header, want) in [
        (
            "/events/x",
            Some("garbage"),
            "bad Last-Event-ID: want a position EPOCH:OFFSET",
        ),
        (
            "/events/x",
            Some("e:-1"),
            "bad Last-Event-ID: want a position EPOCH:OFFSET",
        ),
        (
            "/events/x",
            Some(long.as_str()),
            "bad Last-Event-ID: want a position EPOCH:OFFSET",
        ),
        (
            "/events/x?since=%FF%FE",
            None,
            "bad since: want a position EPOCH:OFFSET",
        ),
        (
            "/events/x?since=a:b",
            None,
            "bad since: want a position EPOCH:OFFSET",
        ),
        (
            "/poll/x?since=:1",
            None,
            "bad since: want a position EPOCH:OFFSET",
        ),
        ("/events/a%20b", None, "bad group name"),
        ("/poll/a%20b?since=e:1", None, "bad group name"),
    ] {
        let mut req = client().get(s.url(path));
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{path} {header:?}");
        assert_eq!(resp.text().await.unwrap(), want, "{path} {header:?}");
    }
    // A header that is not UTF-8.
    let resp = client()
        .get(s.url("/events/x"))
        .header("Last-Event-ID", reqwest_header(b"\xff\xfe:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // An empty Last-Event-ID is no position: from now.
    let mut body = s.stream("x", Some("")).await;
    assert_eq!(body.next_event().await.json()["recovered"], true);

    // A group without history cannot be long-polled: the server's mistake, said plainly.
    let app = App {
        layer: s.layer.clone(),
        shutdown: Shutdown::new(),
        keep_alive: None,
        poll_timeout: Duration::from_secs(1),
    };
    let router = Router::new()
        .route(
            "/plain",
            get(|State(app): State<App>, Since(since): Since| async move {
                LongPoll::new(app.layer, "plain").since(since).open().await
            }),
        )
        .route(
            "/plain-events",
            get(|State(app): State<App>| async move {
                EventStream::new(app.layer, "plain").open().await
            }),
        )
        .with_state(app);
    let addr = test_support::serve(router).await;
    let resp = client()
        .get(format!("http://{addr}/plain?since=e:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "feed without history");
    // …but followed live by an event stream (no recovery event, no ids).
    let resp = client()
        .get(format!("http://{addr}/plain-events"))
        .send()
        .await
        .unwrap();
    let mut plain = Body::new(resp);
    plain.next_block().await;
    s.layer
        .group_send("plain", json!({"type": "t", "n": 1}))
        .await
        .unwrap();
    let ev = plain.next_event().await;
    assert_eq!(
        (ev.id, ev.event.as_deref(), n_of(&ev.data)),
        (None, Some("t"), 1)
    );
}

fn n_of(data: &Option<String>) -> i64 {
    serde_json::from_str::<Value>(data.as_deref().unwrap()).unwrap()["n"]
        .as_i64()
        .unwrap()
}

fn reqwest_header(bytes: &[u8]) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_bytes(bytes).unwrap()
}

/// A client that stops reading: the subscription's bounded queue drops what does not fit,
/// and when the client reads again it gets what was queued, a `gap` event, and the end — from
/// which it resumes with its `Last-Event-ID` and the history replays the dropped messages.
#[tokio::test]
async fn slow_client_gets_a_gap_then_resumes_from_history() {
    let cfg = LayerConfig::default()
        .capacity(4)
        .group_backpressure(Duration::ZERO)
        .group_history("room.*", 1000, Duration::from_secs(60))
        .unwrap();
    let s = start(
        Layer::new(InMemoryLayer::new(cfg)),
        None,
        Duration::from_secs(1),
    )
    .await;
    let mut body = s.stream("slow", None).await;
    body.next_event().await; // recovery
    // Big messages, so that the socket's buffers fill and the server stops reading the
    // subscription while the client does not read.
    let text = "x".repeat(64 * 1024);
    const N: i64 = 400;
    for i in 1..=N {
        s.layer
            .group_send(
                "room.slow",
                json!({"type": "chat.message", "n": i, "text": text}),
            )
            .await
            .unwrap();
    }
    let mut last_id = None;
    let mut got = Vec::new();
    let mut gap = None;
    while gap.is_none() {
        let block = body.next_block().await.expect("a gap before the end");
        if block.event.as_deref() == Some("gap") {
            assert_eq!(block.id, last_id, "the gap names the last id delivered");
            gap = Some(block.json());
        } else if block.data.is_some() {
            got.push(n(&block));
            last_id = block.id;
        }
    }
    let gap = gap.unwrap();
    assert!(gap["dropped"].as_u64().unwrap() > 0, "{gap}");
    assert!(got.len() < N as usize);
    assert_eq!(
        got,
        (1..=got.len() as i64).collect::<Vec<_>>(),
        "in order up to the gap"
    );
    assert!(
        body.ends_within(Duration::from_secs(2)).await,
        "the stream ends after a gap"
    );
    // Resume: the history has the rest.
    let mut back = s.stream("slow", last_id.as_deref()).await;
    let rec = back.next_event().await.json();
    assert_eq!(rec["recovered"], true);
    assert_eq!(rec["replayed"], N - got.len() as i64);
    for i in got.len() as i64 + 1..=N {
        assert_eq!(n(&back.next_event().await), i);
    }
}

// --------------------------------------------------------------------------------------------
// On RedisPubSubLayer with history.
// --------------------------------------------------------------------------------------------

async fn redis_server() -> Option<Server> {
    Some(start(pubsub().await?, None, Duration::from_millis(300)).await)
}

#[tokio::test]
async fn sse_live_delivery_redis_pubsub() {
    let Some(s) = redis_server().await else {
        return;
    };
    sse_live(&s).await;
}

#[tokio::test]
async fn sse_resume_replays_exactly_the_missed_redis_pubsub() {
    let Some(s) = redis_server().await else {
        return;
    };
    sse_resume(&s).await;
}

#[tokio::test]
async fn sse_not_recovered_is_told_redis_pubsub() {
    let Some(s) = redis_server().await else {
        return;
    };
    sse_not_recovered(&s).await;
}

#[tokio::test]
async fn longpoll_loop_redis_pubsub() {
    let Some(s) = redis_server().await else {
        return;
    };
    longpoll_loop(&s).await;
}

#[tokio::test]
async fn longpoll_races_publishers_redis_pubsub() {
    let Some(s) = redis_server().await else {
        return;
    };
    longpoll_races_publishers(&s).await;
}

/// Two servers on one Redis: a stream resumes on B from the id A gave it.
#[tokio::test]
async fn sse_resumes_on_another_process_redis_pubsub() {
    let Some(rc) = test_support::layers::config(config()) else {
        return;
    };
    let a = start(
        Layer::new(test_support::layers::pubsub(&rc).await),
        None,
        Duration::from_secs(1),
    )
    .await;
    let b = start(
        Layer::new(test_support::layers::pubsub(&rc).await),
        None,
        Duration::from_secs(1),
    )
    .await;
    let mut on_a = a.stream("move", None).await;
    on_a.next_event().await;
    a.send("move", 1).await;
    let seen = on_a.next_event().await;
    drop(on_a);
    a.send("move", 2).await;
    b.send("move", 3).await;
    let mut on_b = b.stream("move", seen.id.as_deref()).await;
    assert_eq!(on_b.next_event().await.json()["replayed"], 2);
    assert_eq!(n(&on_b.next_event().await), 2);
    assert_eq!(n(&on_b.next_event().await), 3);
}

/// A client that goes away leaves nothing behind: its stream's and its poll's subscriptions
/// leave the group — the stream answered outside hyper (`Accept: text/event-stream`) and by
/// hyper.
#[tokio::test]
async fn a_client_that_goes_away_leaves_the_group() {
    for accept in [true, false] {
        client_goes_away(accept).await;
    }
}

async fn client_goes_away(accept: bool) {
    let s = mem_server().await;
    let members = || async { s.layer.group_channels("room.gone").await.unwrap().len() };
    let mut body = s.open("gone", None, accept).await;
    body.next_event().await;
    let (_, first) = s.poll("gone", None).await;
    let pos = first["position"].as_str().unwrap().to_owned();
    let waiting = {
        let url = s.url(&format!("/poll/gone?since={pos}"));
        tokio::spawn(async move { client().get(url).send().await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while members().await < 2 {
        assert!(Instant::now() < deadline, "the stream and the poll joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(body);
    waiting.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while members().await > 0 {
        assert!(
            Instant::now() < deadline,
            "{} members left after the clients went away",
            members().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.shutdown.open(), 0, "their guards are gone too");
}

/// Redis restarting under a stream: the pub/sub layer's subscription is interrupted, the stream
/// tells a `gap` (`interrupted: true`) with the last id delivered, and ends; resuming from it
/// is told truthfully (the restarted Redis lost the history: not recovered) and goes on live.
#[tokio::test]
async fn redis_restart_is_told_as_a_gap_then_not_recovered() {
    let Some(mut redis) = test_support::redis::OwnRedis::start().await else {
        return;
    };
    let rc = switchboard::redis::RedisConfig::new(redis.url())
        .prefix(test_support::redis::fresh_prefix())
        .layer(config());
    let layer = Layer::new(
        switchboard::redis::RedisPubSubLayer::connect(rc)
            .await
            .unwrap(),
    );
    let s = start(layer, None, Duration::from_secs(1)).await;
    let mut body = s.stream("restart", None).await;
    body.next_event().await;
    s.send("restart", 1).await;
    let seen = body.next_event().await;
    assert_eq!(n(&seen), 1);
    redis.kill();
    redis.restart().await;
    // Publish until the layer is back; the stream tells the gap and ends.
    let mut gap = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 2;
    while gap.is_none() {
        assert!(Instant::now() < deadline, "no gap within 15 s");
        let _ = s
            .layer
            .group_send("room.restart", json!({"type": "chat.message", "n": i}))
            .await;
        i += 1;
        if let Ok(Some(block)) =
            tokio::time::timeout(Duration::from_millis(300), body.next_block()).await
            && block.event.as_deref() == Some("gap")
        {
            gap = Some(block);
        }
    }
    let gap = gap.unwrap();
    assert_eq!(gap.json()["interrupted"], true, "{gap:?}");
    assert_eq!(gap.id, seen.id, "resume from the last message delivered");
    assert!(body.ends_within(Duration::from_secs(2)).await);
    let mut back = s.stream("restart", seen.id.as_deref()).await;
    let rec = back.next_event().await.json();
    assert_eq!(rec["recovered"], false, "{rec}");
    s.send("restart", 1000).await;
    assert_eq!(n(&back.next_event().await), 1000);
}

/// Settings too large to add to a clock reading mean "never", not a panic.
#[tokio::test]
async fn huge_timeouts_mean_never() {
    let s = start(memory(), Some(Duration::MAX), Duration::MAX).await;
    let mut body = s.stream("huge", None).await;
    body.next_event().await;
    let (_, first) = s.poll("huge", None).await;
    let pos = first["position"].as_str().unwrap().to_owned();
    let waiting = {
        let url = s.url(&format!("/poll/huge?since={pos}"));
        tokio::spawn(async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.send("huge", 1).await;
    assert_eq!(n(&body.next_event().await), 1);
    assert_eq!(waiting.await.unwrap().unwrap()["messages"][0]["n"], 1);
}

/// `typed_events(false)`: no `event:` line (every message reaches `onmessage`); `max_messages`
/// caps an answer, and the next poll goes on from its position.
#[tokio::test]
async fn untyped_events_and_capped_answers() {
    let layer = memory();
    let router = Router::new()
        .route(
            "/untyped",
            get(|State(layer): State<Layer>| async move {
                EventStream::new(layer, "room.opts")
                    .typed_events(false)
                    .open()
                    .await
            }),
        )
        .route(
            "/capped",
            get(
                |State(layer): State<Layer>, Since(since): Since| async move {
                    LongPoll::new(layer, "room.opts")
                        .since(since)
                        .max_messages(2)
                        .timeout(Duration::from_millis(200))
                        .open()
                        .await
                },
            ),
        )
        .with_state(layer.clone());
    let addr = test_support::serve(router).await;
    let mut body = Body::new(
        client()
            .get(format!("http://{addr}/untyped"))
            .send()
            .await
            .unwrap(),
    );
    body.next_block().await; // : ok
    let rec = body.next_event().await;
    assert_eq!(rec.event.as_deref(), Some("recovery"), "named either way");
    let start = rec.json()["position"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        layer
            .group_send("room.opts", json!({"type": "chat.message", "n": i}))
            .await
            .unwrap();
    }
    let ev = body.next_event().await;
    assert_eq!((ev.event.as_deref(), n(&ev)), (None, 1));
    let mut pos = start;
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    for _ in 0..3 {
        let a: Value = client()
            .get(format!("http://{addr}/capped?since={pos}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ms = a["messages"].as_array().unwrap();
        sizes.push(ms.len());
        got.extend(ms.iter().map(|m| m["n"].as_i64().unwrap()));
        pos = a["position"].as_str().unwrap().to_owned();
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(got, [1, 2, 3, 4, 5]);
}

/// A client that reads nothing at all: with `HttpLimits::write_timeout` the server closes its
/// connection once writes have made no progress for that long, and the stream's subscription
/// leaves the group; without it the stream stays (the control). Both for a stream answered
/// outside hyper (`Accept: text/event-stream`) and one hyper serves.
#[tokio::test]
async fn write_timeout_closes_a_stream_whose_client_reads_nothing() {
    async fn members_after_stall(write_timeout: Option<Duration>, accept: bool) -> usize {
        let cfg = LayerConfig::default()
            // Room for everything sent: no drop, no gap — only the stall can end the stream.
            .capacity(1000)
            .group_backpressure(Duration::ZERO)
            .group_history("room.*", 10, Duration::from_secs(60))
            .unwrap();
        let layer = Layer::new(InMemoryLayer::new(cfg));
        let app = App {
            layer: layer.clone(),
            shutdown: Shutdown::new(),
            keep_alive: None,
            poll_timeout: Duration::from_secs(1),
        };
        let router = Router::new()
            .route("/events/{room}", get(events))
            .with_state(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = switchboard::HttpLimits::default().write_timeout(write_timeout);
        tokio::spawn(async move { switchboard::serve(listener, router).limits(limits).await });
        // A client with a small receive buffer that sends its request and never reads.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let request = if accept {
            "GET /events/stall HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        } else {
            "GET /events/stall HTTP/1.1\r\nHost: localhost\r\n\r\n"
        };
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        let members = || async { layer.group_channels("room.stall").await.unwrap().len() };
        let deadline = Instant::now() + Duration::from_secs(5);
        while members().await == 0 {
            assert!(Instant::now() < deadline, "the stream joined");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Fill the socket's buffers, then wait past the timeout.
        let text = "x".repeat(64 * 1024);
        for i in 0..200 {
            layer
                .group_send("room.stall", json!({"type": "t", "n": i, "text": text}))
                .await
                .unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let left = members().await;
        drop(stream);
        left
    }
    for accept in [true, false] {
        assert_eq!(
            members_after_stall(Some(Duration::from_millis(500)), accept).await,
            0,
            "the stalled stream was closed and left the group (accept: {accept})"
        );
        assert_eq!(
            members_after_stall(None, accept).await,
            1,
            "without a write timeout the stalled stream stays (accept: {accept})"
        );
    }
}

/// `EventStream::subscribed`: the handler joins its own groups (two here), hands over what it
/// read from history (`backlog`), and `render` decides each event — its own `id:` (a count of
/// the events, here), `event:` and `data:`, nothing for some messages, the last event of the
/// stream for another. What `hold` keeps is dropped when the stream ends; `max_duration` ends
/// a stream by itself.
#[tokio::test]
async fn a_stream_of_the_handlers_own_subscription_renders_its_own_events() {
    let layer = memory();
    /// Counts its drops.
    struct Held(Arc<AtomicUsize>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "/mine",
            get(
                |State((layer, dropped)): State<(Layer, Arc<AtomicUsize>)>| async move {
                    let mut sub = layer.subscribe().await.unwrap();
                    sub.group_add("room.a").await.unwrap();
                    sub.group_add("room.b").await.unwrap();
                    let backlog = vec![
                        switchboard::Message::builder("note")
                            .field("text", "from the handler")
                            .build()
                            .unwrap(),
                    ];
                    let mut count = 0u32;
                    EventStream::subscribed(sub)
                        .backlog(backlog)
                        .hold(Held(dropped))
                        .render(move |m| {
                            let text = m.get("text").and_then(|t| t.as_str())?.to_owned();
                            if text == "skip me" {
                                return None;
                            }
                            count += 1;
                            let ev = SseEvent::new(text.to_uppercase())
                                .id(Some(format!("n{count}")))
                                .event(Some(m.message_type().to_owned()));
                            Some(if text == "bye" { ev.last() } else { ev })
                        })
                        .open()
                        .await
                },
            ),
        )
        .route(
            "/short",
            get(
                |State((layer, _)): State<(Layer, Arc<AtomicUsize>)>| async move {
                    let sub = layer.subscribe().await.unwrap();
                    EventStream::subscribed(sub)
                        .max_duration(Some(Duration::from_millis(300)))
                        .open()
                        .await
                },
            ),
        )
        .with_state((layer.clone(), dropped.clone()));
    let addr = test_support::serve(router).await;
    let mut body = Body::new(
        client()
            .get(format!("http://{addr}/mine"))
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(
        body.next_block().await.unwrap().comment.as_deref(),
        Some("ok")
    );
    let first = body.next_event().await;
    assert_eq!(
        (
            first.id.as_deref(),
            first.event.as_deref(),
            first.data.as_deref()
        ),
        (Some("n1"), Some("note"), Some("FROM THE HANDLER")),
        "the backlog first, through the renderer; no recovery event"
    );
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "held by the stream");
    for (group, text) in [
        ("room.a", "one"),
        ("room.b", "skip me"),
        ("room.b", "two"),
        ("room.a", "bye"),
        ("room.a", "after"),
    ] {
        layer
            .group_send(group, json!({"type": "chat.message", "text": text}))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let ev = body.next_event().await;
        got.push((ev.id.unwrap(), ev.data.unwrap()));
    }
    assert_eq!(
        got,
        [
            ("n2".to_owned(), "ONE".to_owned()),
            ("n3".into(), "TWO".into()),
            ("n4".into(), "BYE".into())
        ]
    );
    assert!(
        body.ends_within(Duration::from_secs(2)).await,
        "the last event ends it"
    );
    test_support::eventually("the held value is dropped", Duration::from_secs(2), || {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;

    let started = Instant::now();
    let mut short = Body::new(
        client()
            .get(format!("http://{addr}/short"))
            .send()
            .await
            .unwrap(),
    );
    assert!(
        short.ends_within(Duration::from_secs(3)).await,
        "max_duration"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Reads from `stream` into `got` until `until` is in it (or the peer closes: then `false`).
async fn read_until(stream: &mut tokio::net::TcpStream, got: &mut String, until: &str) -> bool {
    while !got.contains(until) {
        if !read_more(stream, got).await {
            return false;
        }
    }
    true
}

/// One read from `stream` into `got` (within 5 s); `false` when the peer closed.
async fn read_more(stream: &mut tokio::net::TcpStream, got: &mut String) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server answered within 5 s")
        .unwrap();
    got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    n > 0
}

/// On the wire: an `EventSource` request (`Accept: text/event-stream`) is answered outside
/// hyper — an HTTP/1.1 head with the handler's headers, a `date`, chunked framing and
/// `connection: close`, the events as chunks — and the connection closes when the stream
/// ends; any other response to such a request (a 404) is framed by its length and closes too.
/// A request without the header, and one pipelined behind an event-stream request, are
/// hyper's: keep-alive, two answers on one connection.
#[tokio::test]
async fn event_stream_requests_on_the_wire() {
    use tokio::io::AsyncWriteExt;
    let s = mem_server().await;
    let eventsource = "GET /events/wire HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";

    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(eventsource.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut c, &mut seen, "\r\n\r\n").await;
    let head = seen.split("\r\n\r\n").next().unwrap().to_owned() + "\r\n";
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream\r\n",
        "cache-control: no-store\r\n",
        "transfer-encoding: chunked\r\n",
        "connection: close\r\n",
        "date: ",
    ] {
        assert!(lower.contains(line), "{line:?} not in {head}");
    }
    read_until(&mut c, &mut seen, "event: recovery").await;
    s.send("wire", 7).await;
    read_until(&mut c, &mut seen, "\"n\":7").await;
    while !seen[seen.find("\"n\":7").unwrap()..].contains("\n\n\r\n") {
        assert!(read_more(&mut c, &mut seen).await, "{seen}");
    }
    // Each event is a chunk: its size in hex, CRLF, the event, CRLF.
    let event = seen
        .split("\r\n")
        .find(|part| part.contains("\"n\":7"))
        .unwrap();
    assert!(
        event.starts_with("id: ") && event.ends_with("\n\n"),
        "{event:?}"
    );
    let size_line = seen
        .split("\r\n")
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == event)
        .map(|w| w[0].to_owned())
        .unwrap();
    assert_eq!(
        usize::from_str_radix(&size_line, 16).unwrap(),
        event.len(),
        "chunk size of {event:?}"
    );
    // The drain ends the stream: the last chunk, then the server closes.
    s.shutdown.drain(DrainConfig::default()).await;
    assert!(!read_until(&mut c, &mut seen, "\u{0}never").await);
    assert!(seen.ends_with("0\r\n\r\n"), "the stream ended: {seen:?}");

    // Another answer to an event-stream request: framed by its length, then closed.
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    assert!(!read_until(&mut c, &mut answer, "\u{0}never").await);
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(answer.contains("content-length: 0\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n"),
        "closed after the head: {answer}"
    );

    // Without the header, or with a request behind it: hyper's, one connection for both (on a
    // server that is not draining).
    let s = mem_server().await;
    for first in [
        "GET /poll/wire HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /poll/wire HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\nGET /poll/wire HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(first.as_bytes()).await.unwrap();
        let mut both = String::new();
        read_until(&mut c, &mut both, "HTTP/1.1 200 OK").await;
        if first.matches("GET").count() == 1 {
            c.write_all(b"GET /poll/wire HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
        }
        while both.matches("HTTP/1.1 200 OK").count() < 2 {
            assert!(
                read_more(&mut c, &mut both).await,
                "closed after one: {both}"
            );
        }
        assert!(
            !both.to_ascii_lowercase().contains("connection: close"),
            "{both}"
        );
    }
}
