//! `sse::EventStream` with a real browser's `EventSource` (headless Chromium): the page gets
//! live events by type; when the stream ends (a drain), the browser reconnects by itself with
//! `Last-Event-ID`, and the history gives it exactly what was published while it was away.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, Response};
use axum::routing::get;
use parking_lot::Mutex;
use serde_json::json;
use switchboard::feed::Since;
use switchboard::sse::EventStream;
use switchboard::{DrainConfig, InMemoryLayer, Layer, LayerConfig, Shutdown};
use test_support::browser::Browser;

#[derive(Clone)]
struct App {
    layer: Layer,
    /// The handle new streams register with (replaced after a drain, so that the browser's
    /// reconnect is let in).
    shutdown: Arc<Mutex<Shutdown>>,
    /// While `false`, new streams wait before they subscribe (the browser's reconnect is held
    /// while the test publishes).
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

const PAGE: &str = r#"<!doctype html>
<ul id="got"></ul><ul id="recovery"></ul>
<script>
  const source = new EventSource("/events");
  source.addEventListener("chat.message", (e) => {
    const li = document.createElement("li");
    li.textContent = JSON.parse(e.data).n;
    document.getElementById("got").append(li);
  });
  source.addEventListener("recovery", (e) => {
    const d = JSON.parse(e.data);
    const li = document.createElement("li");
    li.textContent = `${d.recovered} ${d.replayed}`;
    document.getElementById("recovery").append(li);
  });
</script>"#;

async fn events(State(app): State<App>, Since(since): Since) -> Response {
    let _ = app.gate.subscribe().wait_for(|open| *open).await;
    let shutdown = app.shutdown.lock().clone();
    EventStream::new(app.layer, "room.browser")
        .since(since)
        .retry(Some(Duration::from_millis(200)))
        .shutdown(&shutdown)
        .open()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_resumes_with_last_event_id_after_the_stream_ends() {
    let cfg = LayerConfig::default()
        .group_history("room.*", 100, Duration::from_secs(60))
        .unwrap();
    let layer = Layer::new(InMemoryLayer::new(cfg));
    let first = Shutdown::new();
    let app = App {
        layer: layer.clone(),
        shutdown: Arc::new(Mutex::new(first.clone())),
        gate: Arc::new(tokio::sync::watch::channel(true).0),
    };
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", get(events))
        .with_state(app.clone());
    let addr = test_support::serve(router).await;
    let Some(b) = Browser::start().await else {
        return;
    };
    b.client.goto(&format!("http://{addr}/")).await.unwrap();
    b.wait_for_text("#recovery li", "true 0").await;
    let send = |n: i64| {
        let layer = layer.clone();
        async move {
            layer
                .group_send("room.browser", json!({"type": "chat.message", "n": n}))
                .await
                .unwrap();
        }
    };
    send(1).await;
    send(2).await;
    b.wait_for_text("#got li", "2").await;

    // End the stream, and publish while the browser is away (its reconnect waits at the
    // gate).
    app.gate.send_replace(false);
    *app.shutdown.lock() = Shutdown::new();
    let report = first
        .drain(DrainConfig::default().deadline(Duration::from_secs(5)))
        .await;
    assert_eq!((report.told, report.remaining), (1, 0));
    send(3).await;
    send(4).await;
    app.gate.send_replace(true);
    // The browser reconnected with Last-Event-ID: the history's 3 and 4, then live.
    b.wait_for_text("#recovery li", "true 2").await;
    send(5).await;
    b.wait_for_text("#got li", "5").await;
    assert_eq!(b.texts("#got li").await, ["1", "2", "3", "4", "5"]);
    assert_eq!(b.texts("#recovery li").await, ["true 0", "true 2"]);
    b.close().await;
}
