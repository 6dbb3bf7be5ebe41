//! A WebSocket test client.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket test client.
pub struct WsClient {
    pub ws: Stream,
}

/// Opens a WebSocket (with the server's own origin); `Err(status)` if the upgrade is refused.
pub async fn try_ws(addr: SocketAddr, path: &str) -> Result<WsClient, u16> {
    try_ws_with(addr, path, &[]).await
}

/// As [`try_ws`], with extra request headers (a `cookie`, say).
pub async fn try_ws_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, u16> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap(); // ok: test harness, a panic fails the calling test
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap()); // ok: test harness, a panic fails the calling test
    for (name, value) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), // ok: test harness, a panic fails the calling test
            value.parse().unwrap(), // ok: test harness, a panic fails the calling test
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(WsClient { ws }),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket connect to {path} failed: {e}"),
    }
}

/// Opens a WebSocket that must be accepted.
pub async fn ws(addr: SocketAddr, path: &str) -> WsClient {
    match try_ws(addr, path).await {
        Ok(c) => c,
        Err(status) => panic!("websocket {path} refused with {status}"),
    }
}

impl WsClient {
    pub async fn send_json(&mut self, v: serde_json::Value) {
        self.ws.send(WsMessage::text(v.to_string())).await.unwrap(); // ok: test harness, a panic fails the calling test
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(WsMessage::text(t.to_owned())).await.unwrap(); // ok: test harness, a panic fails the calling test
    }

    /// The next text frame as JSON, within 5 s.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await {
                Ok(Some(Ok(WsMessage::Text(t)))) => {
                    return serde_json::from_str(t.as_str()).unwrap(); // ok: test harness, a panic fails the calling test
                }
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame as JSON if one arrives within `ms`; `None` if none does.
    pub async fn recv_json_within(&mut self, ms: u64) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(WsMessage::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap()); // ok: test harness, a panic fails the calling test
                }
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Whether no text frame arrives within `ms`.
    pub async fn recv_nothing(&mut self, ms: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(other) => {
                    eprintln!("unexpected: {other:?}");
                    return false;
                }
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(2), self.ws.next()).await
        {}
    }
}
