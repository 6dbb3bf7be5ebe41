//! Test support for the push gateway: start it on loopback, publish, and read each transport.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchboard::{InMemoryLayer, Layer, LayerConfig};

#[path = "../../examples/push/app.rs"]
pub mod app;

pub(crate) use app::Settings;
pub(crate) use app::store::HistoryStore;

/// Settings for tests: short timeouts, loopback publishing.
pub fn settings() -> Settings {
    Settings {
        longpoll_timeout: Duration::from_secs(5),
        ..Settings::default()
    }
}

/// A gateway served on 127.0.0.1 with an in-memory layer and history.
pub struct Gw {
    pub addr: SocketAddr,
    pub layer: Layer,
    pub store: Arc<dyn HistoryStore>,
}

impl Gw {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub async fn start(settings: Settings) -> Gw {
    let layer = Layer::new(InMemoryLayer::new(LayerConfig::default()));
    let store = app::memory_store(&settings);
    start_on(layer, store, settings).await
}

pub async fn start_on(layer: Layer, store: Arc<dyn HistoryStore>, settings: Settings) -> Gw {
    let addr = super::support::serve(app::router(layer.clone(), store.clone(), settings)).await;
    Gw { addr, layer, store }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
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

/// One server-sent event (or comment block).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comment: Option<String>,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap()).unwrap()
    }
}

/// A streaming HTTP response read chunk by chunk.
pub struct Body {
    pub response: reqwest::Response,
    buf: String,
    pub ended: bool,
}

impl Body {
    pub fn new(response: reqwest::Response) -> Body {
        Body {
            response,
            buf: String::new(),
            ended: false,
        }
    }

    /// Reads until `sep` is in the buffer; the text before it. `None` if the body ended.
    async fn until(&mut self, sep: &str, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.find(sep) {
                let block = self.buf[..i].to_owned();
                self.buf.drain(..i + sep.len());
                return Some(block);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => panic!("nothing within {within:?}; have {:?}", self.buf),
                Ok(Ok(Some(c))) => self.buf.push_str(std::str::from_utf8(&c).unwrap()),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// The next SSE block, comments included. `None` when the stream ended.
    pub async fn next_block(&mut self) -> Option<Event> {
        let block = self.until("\n\n", Duration::from_secs(5)).await?;
        let mut ev = Event::default();
        for line in sse_lines(&block) {
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix(':') {
                ev.comment = Some(c.trim().to_owned());
                continue;
            }
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            let v = v.strip_prefix(' ').unwrap_or(v).to_owned();
            match k {
                "id" => ev.id = Some(v),
                "event" => ev.event = Some(v),
                "data" => {
                    ev.data = Some(match ev.data.take() {
                        Some(d) => format!("{d}\n{v}"),
                        None => v,
                    })
                }
                other => panic!("unexpected SSE field {other:?}"),
            }
        }
        Some(ev)
    }

    /// The next SSE event with data (comments skipped).
    pub async fn next_event(&mut self) -> Event {
        loop {
            match self.next_block().await {
                Some(ev) if ev.data.is_some() => return ev,
                Some(_) => continue,
                None => panic!("the event stream ended"),
            }
        }
    }

    /// The next non-empty line of a `/sub/` stream.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            let line = self.until("\n", Duration::from_secs(5)).await?;
            if !line.is_empty() {
                return Some(line);
            }
        }
    }

    /// The next message (not a ping) of a `/sub/` stream, as JSON.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let line = self.next_line().await.expect("the stream ended");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] != "push.ping" {
                return v;
            }
        }
    }

    /// Whether the body ends within `within` (reading and dropping what comes).
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.ended {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(c))) => self.buf.push_str(std::str::from_utf8(&c).unwrap()),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
        true
    }

    /// What was read but not consumed yet.
    pub fn buffered(&self) -> &str {
        &self.buf
    }
}

/// The lines of an SSE block as a browser's EventSource parser splits them: at `\r\n`, `\r`
/// and `\n` alike.
pub fn sse_lines(block: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = block;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let end = if rest[i..].starts_with("\r\n") {
            i + 2
        } else {
            i + 1
        };
        rest = &rest[end..];
    }
    lines.push(rest);
    lines
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
        "text/event-stream; charset=utf-8"
    );
    let mut body = Body::new(r);
    let first = body.next_block().await.unwrap();
    assert_eq!(first.comment.as_deref(), Some("subscribed"));
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

/// The ids of a list of messages.
pub fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}
