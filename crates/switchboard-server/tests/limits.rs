//! The limits a public endpoint needs. On HTTP connections before any WebSocket exists
//! (`HttpLimits`), on both servers: a connection that never completes its request head is
//! closed (slowloris), connections waiting for their first request are capped, and none of it
//! touches a request being answered or an upgraded WebSocket. On the endpoint
//! (`EndpointLimits`): handshakes at once, connections per address and per user. On each
//! connection (`ConnectionConfig`): message and byte rates, groups.
#![allow(clippy::unwrap_used)]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard::endpoint::EndpointLimits;
use switchboard::standalone::Server;
use switchboard::{
    Connection, ConnectionConfig, Consumer, Endpoint, Frame, HttpLimits, InMemoryLayer, Layer,
    Message, Refusal, Result, Scope,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Echoes text; `join N` joins group `gN` and answers `joined N` (or the error frame).
struct Echo;

impl Consumer for Echo {
    type Incoming = Frame;
    type Event = Message;
    async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
        let text = frame.text()?;
        if let Some(n) = text.strip_prefix("join ") {
            conn.group_add(format!("g{n}")).await?;
            return conn.send_text(format!("joined {n}")).await;
        }
        conn.send_text(text).await
    }
}

fn endpoint(layer: &Layer) -> Endpoint<fn(&Scope) -> Echo> {
    Endpoint::new(layer.clone(), (|_: &Scope| Echo) as fn(&Scope) -> Echo)
        .allow_missing_origin(true)
}

/// The axum server (`switchboard::serve`) with a slow plain route beside the WebSocket one,
/// and the standalone server.
async fn servers(limits: HttpLimits) -> [SocketAddr; 2] {
    let layer = Layer::new(InMemoryLayer::default());
    let app = axum::Router::new()
        .route("/ws/", endpoint(&layer).into_route())
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let axum_addr = listener.local_addr().unwrap();
    tokio::spawn(
        switchboard::serve(listener, app)
            .limits(limits.clone())
            .into_future(),
    );

    let server = Server::new()
        .route("/ws/", endpoint(&layer))
        .unwrap()
        .limits(limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let standalone_addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    [axum_addr, standalone_addr]
}

/// Reads until the server closes the connection; how long that took, or `None` if it had not
/// within `within`.
async fn closed_after(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn connections_without_a_whole_request_head_are_closed() {
    let timeout = Duration::from_millis(500);
    for addr in servers(HttpLimits::default().header_timeout(timeout)).await {
        let mut half = Vec::new();
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs")
                .await
                .unwrap();
            half.push(s);
        }
        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Kept alive after an answered request, then silent.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 64];
        let n = kept.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 404"),
            "{:?}",
            String::from_utf8_lossy(&answer[..n])
        );

        for (what, streams) in [("half a request", &mut half), ("nothing", &mut silent)] {
            for s in streams.iter_mut() {
                let took = closed_after(s, Duration::from_secs(5)).await;
                let took = took.unwrap_or_else(|| {
                    panic!("{addr}: a client that sent {what} is still connected after 5 s")
                });
                assert!(
                    took < Duration::from_secs(3),
                    "{addr}: closed after {took:?}"
                );
            }
        }
        let took = closed_after(&mut kept, Duration::from_secs(5)).await;
        assert!(
            took.is_some(),
            "{addr}: an idle kept-alive connection is still open after 5 s"
        );
    }
}

#[tokio::test]
async fn answered_requests_and_websockets_outlive_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let [axum_addr, standalone_addr] = servers(HttpLimits::default().header_timeout(timeout)).await;

    // A response that takes five header timeouts to come.
    let mut s = TcpStream::connect(axum_addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.ends_with(b"done") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }

    // A WebSocket silent for four header timeouts, then used.
    for addr in [axum_addr, standalone_addr] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/"))
            .await
            .unwrap();
        tokio::time::sleep(timeout * 4).await;
        ws.send(WsMessage::text("still here")).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        assert_eq!(
            echo.unwrap().unwrap().into_text().unwrap().as_str(),
            "still here"
        );
    }
}

#[tokio::test]
async fn past_max_pending_the_server_waits_for_room_instead_of_taking_more() {
    let timeout = Duration::from_millis(800);
    let limits = HttpLimits::default().header_timeout(timeout).max_pending(5);
    for addr in servers(limits).await {
        let mut silent = Vec::new();
        for _ in 0..5 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server take them all before the real client comes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws/")),
        )
        .await
        .unwrap()
        .unwrap();
        let waited = start.elapsed();
        // Served once the silent ones had timed out, not before.
        assert!(
            waited >= timeout - Duration::from_millis(250),
            "{addr}: served after {waited:?}, while 5 connections were pending"
        );
        ws.send(WsMessage::text("hi")).await.unwrap();
        assert!(ws.next().await.unwrap().is_ok());
        for s in &mut silent {
            assert!(closed_after(s, Duration::from_secs(3)).await.is_some());
        }
    }
}

/// An endpoint served by axum whose users are named by `?user=`, with a slow handshake when
/// `?slow=1`.
async fn limited(limits: EndpointLimits, config: ConnectionConfig) -> SocketAddr {
    struct SlowAuth;
    impl switchboard::endpoint::Authenticate for SlowAuth {
        async fn authenticate(&self, scope: &mut Scope) -> std::result::Result<(), Refusal> {
            if scope.query("slow").as_deref() == Some("1") {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            if let Some(user) = scope.query("user") {
                scope.set_user(user);
            }
            Ok(())
        }
    }
    let layer = Layer::new(InMemoryLayer::default());
    let endpoint = endpoint(&layer)
        .authenticate(SlowAuth)
        .limits(limits)
        .config(config);
    test_support::serve(axum::Router::new().route("/ws/", endpoint.into_route())).await
}

/// Opens a WebSocket, or gives the refusal's status and body.
async fn open(addr: SocketAddr, query: &str) -> std::result::Result<Ws, (u16, String)> {
    use tokio_tungstenite::tungstenite::Error;
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws/?{query}")).await {
        Ok((ws, _)) => Ok(ws),
        Err(Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("connect failed: {e}"),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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

#[tokio::test]
async fn connections_per_address_and_per_user_are_capped_and_given_back() {
    let limits = EndpointLimits::default()
        .max_connections_per_address(Some(3))
        .max_connections_per_user(Some(2));
    let addr = limited(limits, ConnectionConfig::default()).await;
    let mut ann = vec![
        open(addr, "user=ann").await.unwrap(),
        open(addr, "user=ann").await.unwrap(),
    ];
    let (status, body) = open(addr, "user=ann").await.err().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (429, "too many connections for this user")
    );
    // Another user from the same address: the address has one place left.
    let mut bob = open(addr, "user=bob").await.unwrap();
    let (status, body) = open(addr, "user=cy").await.err().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (429, "too many connections from your address")
    );
    // Places come back when connections end.
    ann.pop().unwrap().close(None).await.unwrap();
    let mut again = None;
    for _ in 0..100 {
        match open(addr, "user=ann").await {
            Ok(ws) => {
                again = Some(ws);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut again = again.expect("ann could not connect again after closing one connection");
    again.send(WsMessage::text("hi")).await.unwrap();
    assert_eq!(next_text(&mut again).await, "hi");
    bob.send(WsMessage::text("still")).await.unwrap();
    assert_eq!(next_text(&mut bob).await, "still");
}

#[tokio::test]
async fn handshakes_past_the_cap_get_503_with_retry_after() {
    let limits = EndpointLimits::default().max_handshakes(1);
    let addr = limited(limits, ConnectionConfig::default()).await;
    let slow = tokio::spawn(async move { open(addr, "slow=1").await.is_ok() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let req = format!("ws://{addr}/ws/").into_client_request().unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
        }
        other => panic!("a second handshake during a slow one: {other:?}"),
    }
    assert!(slow.await.unwrap(), "the slow handshake completes");
    // Once it is done, handshakes are taken again.
    open(addr, "").await.unwrap();
}

#[tokio::test]
async fn a_client_over_its_message_rate_is_slowed_and_loses_nothing() {
    let config = ConnectionConfig::default().max_messages_per_second(Some(50));
    let addr = limited(EndpointLimits::default(), config).await;
    let mut ws = open(addr, "").await.unwrap();
    let start = Instant::now();
    // 150 messages: a burst of 50, then 100 at 50 a second.
    for i in 0..150 {
        ws.feed(WsMessage::text(format!("m{i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..150 {
        assert_eq!(next_text(&mut ws).await, format!("m{i}"));
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "150 messages at 50/s took {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_client_over_its_byte_rate_is_slowed() {
    let config = ConnectionConfig::default().max_bytes_per_second(Some(100_000));
    let addr = limited(EndpointLimits::default(), config).await;
    let mut ws = open(addr, "").await.unwrap();
    let start = Instant::now();
    // 300 KB: 100 KB at once, then 200 KB at 100 KB/s.
    for _ in 0..30 {
        ws.feed(WsMessage::text("x".repeat(10_000))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for _ in 0..30 {
        assert_eq!(next_text(&mut ws).await.len(), 10_000);
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "300 KB at 100 KB/s took {took:?}"
    );
}

#[tokio::test]
async fn groups_per_connection_are_capped() {
    let config = ConnectionConfig::default().max_groups(3);
    let addr = limited(EndpointLimits::default(), config).await;
    let mut ws = open(addr, "").await.unwrap();
    for n in 0..3 {
        ws.send(WsMessage::text(format!("join {n}"))).await.unwrap();
        assert_eq!(next_text(&mut ws).await, format!("joined {n}"));
    }
    // Joining one it is in already is fine; a fourth is not.
    ws.send(WsMessage::text("join 1")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "joined 1");
    ws.send(WsMessage::text("join 3")).await.unwrap();
    let error = next_text(&mut ws).await;
    assert!(error.contains("too many groups"), "{error}");
    // The connection goes on.
    ws.send(WsMessage::text("ping")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "ping");
}
