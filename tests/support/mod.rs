//! Shared test support: serve an app on loopback, talk WebSocket and HTTP to it, drive Chromium.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

pub mod browser;
pub mod redis;

/// Serves an axum router on 127.0.0.1 on a free port.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket test client.
pub struct WsClient {
    pub ws: Stream,
}

/// Opens a WebSocket (with the server's own origin); `Err(status)` if the upgrade is refused.
pub async fn try_ws(addr: SocketAddr, path: &str) -> Result<WsClient, u16> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
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
        self.ws.send(WsMessage::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(WsMessage::text(t.to_owned())).await.unwrap();
    }

    /// The next text frame as JSON, within 5 s.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await {
                Ok(Some(Ok(WsMessage::Text(t)))) => {
                    return serde_json::from_str(t.as_str()).unwrap();
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

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr} after {within:?}");
}

/// A child process killed on drop.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a program with output discarded (or inherited when `SWITCHBOARD_TEST_LOG` is set).
pub fn spawn(program: &str, args: &[&str]) -> ChildGuard {
    let verbose = std::env::var_os("SWITCHBOARD_TEST_LOG").is_some();
    let out = || {
        if verbose {
            Stdio::inherit()
        } else {
            Stdio::null()
        }
    };
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(out())
        .stderr(out())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {program}: {e}"));
    ChildGuard(child)
}
