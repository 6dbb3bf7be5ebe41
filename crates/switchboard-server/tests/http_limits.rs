//! The limits on HTTP connections before any WebSocket exists (`HttpLimits`), on both servers:
//! a connection that never completes its request head is closed (slowloris), connections
//! waiting for their first request are capped, and none of it touches a request being answered
//! or an upgraded WebSocket.
#![allow(clippy::unwrap_used)]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard::standalone::Server;
use switchboard::{
    Connection, Consumer, Endpoint, Frame, HttpLimits, InMemoryLayer, Layer, Message, Result, Scope,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;

struct Echo;

impl Consumer for Echo {
    type Incoming = Frame;
    type Event = Message;
    async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
        conn.send_text(frame.text()?).await
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
