//! Serving over real sockets: axum and the standalone server, guards and limits.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchboard::endpoint::Authenticate;
use switchboard::standalone::Server;
use switchboard::{
    CloseCode, Connection, ConnectionConfig, Consumer, Endpoint, Frame, InMemoryLayer, Layer,
    Message, Refusal, Result, Scope,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// Echoes text, reports its scope on "whoami", joins the room named in the path and forwards
/// its messages; refuses rooms named "closed".
struct Probe {
    room: String,
}

impl Consumer for Probe {
    type Incoming = Frame;
    type Event = Message;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        if self.room == "closed" {
            return conn.close(CloseCode(4003), "room closed").await;
        }
        conn.group_add(&self.room).await?;
        conn.accept().await
    }

    async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
        let text = frame.text()?;
        if text == "whoami" {
            let s = conn.scope();
            let info = json!({
                "room": s.param("room"),
                "nick": s.query("nickname"),
                "user": s.user(),
                "cookie": s.cookie("sid"),
                "peer_is_loopback": s.peer_addr().map(|p| p.ip().is_loopback()),
            });
            return conn.send_json(&info).await;
        }
        conn.send_text(format!("echo {text}")).await
    }

    async fn event(&mut self, conn: &mut Connection, msg: Message) -> Result<()> {
        conn.send_message(&msg).await
    }
}

fn probe(scope: &Scope) -> Probe {
    Probe {
        room: scope.param("room").unwrap_or("none").to_owned(),
    }
}

type Factory = fn(&Scope) -> Probe;

async fn serve_axum<F, A>(endpoint: Endpoint<F, A>) -> SocketAddr
where
    F: Fn(&Scope) -> Probe + Send + Sync + 'static,
    A: Authenticate,
{
    test_support::serve(axum::Router::new().route("/ws/{room}/", endpoint.into_route())).await
}

async fn serve_standalone<F, A>(endpoint: Endpoint<F, A>) -> SocketAddr
where
    F: Fn(&Scope) -> Probe + Send + Sync + 'static,
    A: Authenticate,
{
    let server = Server::new().route("/ws/{room}/", endpoint).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

fn endpoint(layer: &Layer) -> Endpoint<Factory> {
    Endpoint::new(layer.clone(), probe as Factory)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    addr: SocketAddr,
    path: &str,
    origin: Option<&str>,
    extra: &[(&str, &str)],
) -> std::result::Result<Ws, u16> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    for (k, v) in extra {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// A refused upgrade's status and body.
async fn refusal(addr: SocketAddr, path: &str, origin: Option<&str>) -> (u16, String) {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Ok(_) => panic!("{path} was accepted"),
        Err(e) => panic!("connect failed: {e}"),
    }
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(WsMessage::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

async fn next_close(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(WsMessage::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

async fn both<A: Authenticate>(
    layer: &Layer,
    f: impl Fn(Endpoint<Factory>) -> Endpoint<Factory, A>,
) -> [SocketAddr; 2] {
    [
        serve_axum(f(endpoint(layer))).await,
        serve_standalone(f(endpoint(layer))).await,
    ]
}

#[tokio::test]
async fn both_servers_run_consumers_with_scope_and_groups() {
    let layer = Layer::new(InMemoryLayer::default());
    for addr in both(&layer, |e| e).await {
        let origin = format!("http://{addr}");
        let mut ws = connect(
            addr,
            "/ws/lobby/?nickname=ann%20b",
            Some(&origin),
            &[("cookie", "sid=s3cr3t")],
        )
        .await
        .unwrap();
        ws.send(WsMessage::text("hi")).await.unwrap();
        assert_eq!(next_text(&mut ws).await, "echo hi");
        ws.send(WsMessage::text("whoami")).await.unwrap();
        let info: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(
            info,
            json!({"room": "lobby", "nick": "ann b", "user": null, "cookie": "s3cr3t", "peer_is_loopback": true})
        );
        layer
            .group_send(
                "lobby",
                json!({"type": "chat.message", "text": "from outside"}),
            )
            .await
            .unwrap();
        let got: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(got, json!({"type": "chat.message", "text": "from outside"}));
        ws.close(None).await.unwrap();
        let _ = next_close(&mut ws).await;
        wait_until_empty(&layer, "lobby").await;
    }
}

async fn wait_until_empty(layer: &Layer, group: &str) {
    for _ in 0..100 {
        if layer.group_channels(group).await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("group {group} still has members");
}

#[tokio::test]
async fn origins_are_checked() {
    let layer = Layer::new(InMemoryLayer::default());
    for addr in both(&layer, |e| e).await {
        assert_eq!(
            connect(addr, "/ws/a/", Some("http://evil.example"), &[])
                .await
                .err(),
            Some(403)
        );
        assert_eq!(
            connect(addr, "/ws/a/", None, &[]).await.err(),
            Some(403),
            "missing origin refused by default"
        );
        let (status, body) = refusal(addr, "/ws/a/", None).await;
        assert_eq!(status, 403);
        assert!(
            body.contains("no Origin header"),
            "the refusal says why: {body:?}"
        );
        let (_, body) = refusal(addr, "/ws/a/", Some("http://evil.example")).await;
        assert!(
            body.contains("http://evil.example") && body.contains("not allowed"),
            "{body:?}"
        );
    }
    for addr in both(&layer, |e| e.allowed_origins([".example.com"])).await {
        assert!(
            connect(addr, "/ws/a/", Some("https://chat.example.com"), &[])
                .await
                .is_ok()
        );
        assert!(
            connect(addr, "/ws/a/", Some("https://example.com"), &[])
                .await
                .is_ok()
        );
        assert_eq!(
            connect(addr, "/ws/a/", Some("https://example.com.evil.org"), &[])
                .await
                .err(),
            Some(403)
        );
    }
    for addr in both(&layer, |e| e.allow_missing_origin(true)).await {
        assert!(connect(addr, "/ws/a/", None, &[]).await.is_ok());
    }
}

#[tokio::test]
async fn closing_before_accept_answers_403() {
    let layer = Layer::new(InMemoryLayer::default());
    for addr in both(&layer, |e| e.allow_missing_origin(true)).await {
        assert_eq!(
            refusal(addr, "/ws/closed/", None).await,
            (403, "room closed".to_owned()),
            "the consumer's close reason is the answer's body"
        );
    }
    assert_eq!(
        layer.stats().channels,
        0,
        "refused consumers leave nothing behind"
    );
}

#[tokio::test]
async fn authentication_hook_sets_the_user_or_refuses() {
    let layer = Layer::new(InMemoryLayer::default());
    let auth = |scope: &mut Scope| -> std::result::Result<(), Refusal> {
        match scope.header("authorization") {
            Some("Bearer good") => {
                scope.set_user("ann");
                Ok(())
            }
            Some(_) => Err(Refusal::forbidden("bad token")),
            None => Err(Refusal::unauthorized("no token")),
        }
    };
    for addr in both(&layer, |e| e.allow_missing_origin(true).authenticate(auth)).await {
        assert_eq!(
            refusal(addr, "/ws/a/", None).await,
            (401, "no token".to_owned())
        );
        assert_eq!(
            connect(addr, "/ws/a/", None, &[("authorization", "Bearer bad")])
                .await
                .err(),
            Some(403)
        );
        let mut ws = connect(addr, "/ws/a/", None, &[("authorization", "Bearer good")])
            .await
            .unwrap();
        ws.send(WsMessage::text("whoami")).await.unwrap();
        let info: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(info["user"], "ann");
    }
}

#[tokio::test]
async fn plain_http_and_unknown_paths_get_clear_errors() {
    let layer = Layer::new(InMemoryLayer::default());
    let [axum_addr, standalone_addr] = both(&layer, |e| e.allow_missing_origin(true)).await;
    // Plain (hyper's), and as an event-stream request (answered outside hyper): the same
    // refusal, framed by its length, and the connection closed.
    let requests: [&[u8]; 2] = [
        b"GET /ws/a/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /ws/a/ HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    ];
    for addr in [axum_addr, standalone_addr] {
        let mut bodies = Vec::new();
        for request in requests {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(request).await.unwrap();
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
                .await
                .expect("the connection closed after the answer")
                .unwrap();
            let text = String::from_utf8_lossy(&buf).into_owned();
            assert!(text.starts_with("HTTP/1.1 400"), "{text}");
            assert!(
                text.to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n"),
                "{text}"
            );
            bodies.push(text.split_once("\r\n\r\n").unwrap().1.to_owned());
        }
        assert_eq!(bodies[0], bodies[1], "the same refusal either way");
        assert!(!bodies[0].is_empty());
    }
    assert_eq!(
        connect(standalone_addr, "/nope/", None, &[]).await.err(),
        Some(404)
    );
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let layer = Layer::new(InMemoryLayer::default());
    let cfg = ConnectionConfig::default().max_message_size(1024);
    for addr in both(&layer, |e| e.allow_missing_origin(true).config(cfg.clone())).await {
        let mut ws = connect(addr, "/ws/big/", None, &[]).await.unwrap();
        ws.send(WsMessage::text("x".repeat(1000))).await.unwrap();
        assert_eq!(next_text(&mut ws).await.len(), 1005);
        ws.send(WsMessage::text("x".repeat(5000))).await.unwrap();
        assert_eq!(next_close(&mut ws).await, Some(1009));
        wait_until_empty(&layer, "big").await;
    }
}

/// A message far over the limit, sent whole: the server closes with 1009 while the client is
/// still writing it, and keeps reading (and discarding) until the client has read the close
/// frame, instead of closing a socket with unread data in it, which makes the kernel answer
/// with a reset: the client's write fails, and a client that stops there (most do) never
/// learns why.
#[tokio::test]
async fn a_huge_message_sent_whole_still_gets_1009() {
    let layer = Layer::new(InMemoryLayer::default());
    let cfg = ConnectionConfig::default().max_message_size(64 * 1024);
    for addr in both(&layer, |e| e.allow_missing_origin(true).config(cfg.clone())).await {
        for size in [2 << 20, 16 << 20] {
            let mut ws = connect(addr, "/ws/huge/", None, &[]).await.unwrap();
            // The whole message goes out: no reset while the client writes (a client that
            // stops at a failed write, as most do, would never read the close frame).
            let sent = ws.send(WsMessage::binary(vec![7u8; size])).await;
            assert!(sent.is_ok(), "sending {size} bytes to {addr}: {sent:?}");
            assert_eq!(
                next_close(&mut ws).await,
                Some(1009),
                "a {size}-byte message to {addr}"
            );
        }
        wait_until_empty(&layer, "huge").await;
    }
}

#[tokio::test]
async fn silent_clients_time_out_and_reading_clients_stay() {
    let layer = Layer::new(InMemoryLayer::default());
    let cfg = ConnectionConfig::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .idle_timeout(Duration::from_millis(400));
    for addr in both(&layer, |e| e.allow_missing_origin(true).config(cfg.clone())).await {
        // Reading answers pings with pongs, which count as hearing from the client.
        let mut alive = connect(addr, "/ws/ka/", None, &[]).await.unwrap();
        let reader = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            while start.elapsed() < Duration::from_millis(1000) {
                match tokio::time::timeout(Duration::from_millis(50), alive.next()).await {
                    Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                        return false;
                    }
                    _ => {}
                }
            }
            true
        });
        // Not reading means no pongs: closed after the idle timeout.
        let mut silent = connect(addr, "/ws/ka/", None, &[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(next_close(&mut silent).await, Some(1001));
        assert!(
            reader.await.unwrap(),
            "a client that answers pings must stay connected"
        );
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_and_leaves_its_group() {
    // Its backlog past half the outbound limit, the sleeper stops taking events; its channel
    // fills, the publisher waits for it once (the back-pressure wait), then goes on; once full
    // it misses messages, and a connection with a full backlog that misses is cut off (1008).
    let layer = Layer::new(InMemoryLayer::default());
    let cfg = ConnectionConfig::default()
        .outbound_bytes(256 * 1024)
        .close_timeout(Duration::from_millis(300));
    let [addr, _] = both(&layer, |e| e.allow_missing_origin(true).config(cfg.clone())).await;
    let mut reader = connect(addr, "/ws/flood/", None, &[]).await.unwrap();
    let _sleeper = connect(addr, "/ws/flood/", None, &[]).await.unwrap(); // never reads
    assert_eq!(layer.group_channels("flood").await.unwrap().len(), 2);
    let pad = "x".repeat(8 * 1024);
    // The publisher stays at most 16 messages (128 KiB) ahead of the reader, so only the
    // sleeper's backlog can pass the 256 KiB limit, however the test's tasks are scheduled.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (layer, received) = (layer.clone(), received.clone());
        tokio::spawn(async move {
            for i in 0..4000 {
                while i > received.load(std::sync::atomic::Ordering::Acquire) + 16 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let m = json!({"type": "flood", "i": i, "pad": pad});
                layer.group_send("flood", m).await.unwrap();
            }
        })
    };
    // The reading client gets everything; the sleeper is closed (1008) and leaves the group.
    let mut got = 0;
    while got < 4000 {
        let t = next_text(&mut reader).await;
        assert!(t.contains(r#""type":"flood""#));
        got += 1;
        received.store(got, std::sync::atomic::Ordering::Release);
    }
    publisher.await.unwrap();
    for _ in 0..100 {
        if layer.group_channels("flood").await.unwrap().len() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the non-reading client was not dropped");
}

fn panicky(scope: &Scope) -> Probe {
    if scope.param("room") == Some("boom") {
        panic!("consumer factory bug");
    }
    probe(scope)
}

#[tokio::test]
async fn a_panicking_factory_answers_500_and_the_server_goes_on() {
    let layer = Layer::new(InMemoryLayer::default());
    let e = || Endpoint::new(layer.clone(), panicky as Factory).allow_missing_origin(true);
    for addr in [serve_axum(e()).await, serve_standalone(e()).await] {
        assert_eq!(connect(addr, "/ws/boom/", None, &[]).await.err(), Some(500));
        let mut ws = connect(addr, "/ws/fine/", None, &[]).await.unwrap();
        ws.send(WsMessage::text("hi")).await.unwrap();
        assert_eq!(next_text(&mut ws).await, "echo hi");
    }
    assert_eq!(
        layer.stats().groups,
        1,
        "only the working connection's group"
    );
}

/// A factory that refuses: a path parameter naming no room is a 404 at the handshake, with the
/// reason as the body, and nothing is allocated for it.
#[tokio::test]
async fn a_factory_can_refuse_with_a_status_and_a_reason() {
    let layer = Layer::new(InMemoryLayer::default());
    let known = |scope: &Scope| -> std::result::Result<Probe, Refusal> {
        match scope.param("room") {
            Some(room @ ("lobby" | "news")) => Ok(Probe {
                room: room.to_owned(),
            }),
            other => Err(Refusal::not_found(format!("no room named {other:?}"))),
        }
    };
    let endpoint = || Endpoint::new(layer.clone(), known).allow_missing_origin(true);
    let app = axum::Router::new().route("/ws/{room}/", endpoint().into_route());
    let axum_addr = test_support::serve(app).await;
    let server = Server::new().route("/ws/{room}/", endpoint()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let standalone_addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    for addr in [axum_addr, standalone_addr] {
        assert_eq!(
            refusal(addr, "/ws/attic/", None).await,
            (404, r#"no room named Some("attic")"#.to_owned())
        );
        let mut ws = connect(addr, "/ws/lobby/", None, &[]).await.unwrap();
        ws.send(WsMessage::text("hi")).await.unwrap();
        assert_eq!(next_text(&mut ws).await, "echo hi");
    }
    assert_eq!(layer.stats().groups, 1, "the refused rooms made nothing");
}
