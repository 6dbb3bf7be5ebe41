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
pub mod program;
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
    try_ws_with(addr, path, &[]).await
}

/// As [`try_ws`], with extra request headers (a `cookie`, say).
pub async fn try_ws_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, u16> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    for (name, value) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
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

    /// The next text frame as JSON if one arrives within `ms`; `None` if none does.
    pub async fn recv_json_within(&mut self, ms: u64) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(WsMessage::Text(t)))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
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

/// Waits until `check` holds, polling every 20 ms; panics naming `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchboard-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

/// A child process killed on drop (with its whole process group, when it leads one).
pub struct ChildGuard(pub std::process::Child);

/// Starts a program as the leader of a new process group, so that dropping the guard also
/// kills what it started (chromedriver's browsers), even when a test panics.
pub fn spawn_group(program: &str, args: &[&str]) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    launch(command(program, args).process_group(0), program)
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A group leader's pid is its group id; killing a group we do not lead fails harmlessly.
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a program with output discarded (or inherited when `SWITCHBOARD_TEST_LOG` is set).
pub fn spawn(program: &str, args: &[&str]) -> ChildGuard {
    launch(&mut command(program, args), program)
}

/// `program args`, its output discarded (or inherited when `SWITCHBOARD_TEST_LOG` is set).
fn command(program: &str, args: &[&str]) -> std::process::Command {
    let verbose = std::env::var_os("SWITCHBOARD_TEST_LOG").is_some();
    let out = || {
        if verbose {
            Stdio::inherit()
        } else {
            Stdio::null()
        }
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdout(out()).stderr(out());
    cmd
}

fn launch(cmd: &mut std::process::Command, program: &str) -> ChildGuard {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {program}: {e}"));
    ChildGuard(child)
}
