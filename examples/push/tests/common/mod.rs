//! Test support for the push gateway: start it on loopback, publish, and read each transport.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchboard::{InMemoryLayer, Layer, LayerConfig};

pub use push::Settings;
pub use push::registry::Registry;

/// Settings for tests: short timeouts, loopback publishing.
pub fn settings() -> Settings {
    Settings {
        longpoll_timeout: Duration::from_secs(5),
        ..Settings::default()
    }
}

/// A gateway served on 127.0.0.1 with an in-memory layer (keeping the history the settings
/// ask for) and registry.
pub struct Gw {
    pub addr: SocketAddr,
    pub layer: Layer,
    pub registry: Arc<dyn Registry>,
}

impl Gw {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub async fn start(settings: Settings) -> Gw {
    let layer = Layer::new(InMemoryLayer::new(
        settings.layer_config(LayerConfig::default()).unwrap(),
    ));
    let registry = push::memory_registry(&settings);
    start_on(layer, registry, settings).await
}

pub async fn start_on(layer: Layer, registry: Arc<dyn Registry>, settings: Settings) -> Gw {
    let addr = test_support::serve(push::router(layer.clone(), registry.clone(), settings)).await;
    Gw {
        addr,
        layer,
        registry,
    }
}

/// POSTs `body` to `/pub/{channels}`; the status and the JSON answer.
pub async fn publish(gw: &Gw, channels: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(gw.url(&format!("/pub/{channels}")))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// POSTs and insists on 200; the JSON answer.
pub async fn publish_ok(gw: &Gw, channels: &str, body: &str) -> Value {
    let (status, json) = publish(gw, channels, body).await;
    assert_eq!(status, 200, "publish to {channels} failed: {json}");
    json
}

/// GETs a JSON document (stats, channel info).
pub async fn get_json(gw: &Gw, path: &str) -> (u16, Value) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until `/stats?id=CH` reports `n` subscribers (subscriptions end asynchronously).
pub async fn wait_subscribers(gw: &Gw, channel: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, s) = get_json(gw, &format!("/stats?id={channel}")).await;
        let have = s["subscribers"].as_u64().unwrap_or(0);
        if have == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel} has {have} subscribers, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(unused_imports)] // each test binary uses some of them
pub use test_support::http::{Body, Event, client, sse_lines};

/// What a `/sub/` stream carries besides messages.
pub trait NextMessage {
    /// The next message (not a ping) of a `/sub/` stream, as JSON.
    async fn next_message(&mut self) -> Value;
}

impl NextMessage for Body {
    async fn next_message(&mut self) -> Value {
        self.next_json_except("push.ping").await
    }
}

/// Opens an EventSource-style subscription; panics unless 200 text/event-stream.
pub async fn sse(gw: &Gw, path: &str, last_event_id: Option<&str>) -> Body {
    let mut req = client()
        .get(gw.url(path))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "subscribe {path}");
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = Body::new(r);
    // The library's event stream opens with a comment, which carries the response head.
    let first = body.next_block().await.unwrap();
    assert_eq!(first.comment.as_deref(), Some("ok"));
    body
}

/// Opens a `/sub/` stream; panics unless 200.
pub async fn stream(gw: &Gw, path: &str) -> Body {
    let r = client().get(gw.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "subscribe {path}");
    let mut body = Body::new(r);
    // The stream opens with an empty line, which carries the response head.
    body.until("\n", Duration::from_secs(5)).await.unwrap();
    body
}

/// One long-poll: status, Etag (unquoted) and the messages.
pub async fn long_poll(gw: &Gw, path: &str, etag: Option<&str>) -> (u16, String, Vec<Value>) {
    let mut req = client().get(gw.url(path));
    if let Some(e) = etag {
        req = req.header("if-none-match", format!("\"{e}\""));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().trim_matches('"').to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    let messages = if status == 200 {
        serde_json::from_str::<Vec<Value>>(&text).unwrap()
    } else {
        Vec::new()
    };
    (status, etag, messages)
}

/// The offset of a message's position (`"position":"EPOCH:OFFSET"`).
pub fn id(message: &Value) -> u64 {
    let position = message["position"].as_str().unwrap();
    position.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The epoch of a message's position.
pub fn epoch(message: &Value) -> String {
    let position = message["position"].as_str().unwrap();
    position.rsplit_once(':').unwrap().0.to_owned()
}

/// The offsets of a list of messages.
pub fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(id).collect()
}

/// The close frame a WebSocket subscriber gets within 2 s (its code and reason); panics on
/// anything else that ends the connection.
pub async fn close_frame(ws: &mut test_support::WsClient) -> (u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let frame = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.ws.next().await {
                Some(Ok(WsMessage::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("no close frame within 2 s")
    .expect("a close frame without a code");
    (u16::from(frame.code), frame.reason.to_string())
}
