//! Graceful shutdown over real sockets: a drain closes every connection with 1001 in batches,
//! runs `disconnect`, empties the groups, refuses new connections with 503 and closes the
//! layer — on axum and on the standalone server.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use switchboard::standalone::Server;
use switchboard::{
    CloseCode, Connection, Consumer, DrainConfig, Endpoint, Frame, InMemoryLayer, Layer, Message,
    Result, Scope, Shutdown,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Joins "room" and counts its disconnects; sleeps in `disconnect` if told to.
struct Member {
    disconnects: Arc<AtomicUsize>,
    hang: Option<Duration>,
}

impl Consumer for Member {
    type Incoming = Frame;
    type Event = Message;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        conn.group_add("room").await?;
        conn.accept().await
    }

    async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
        conn.send_text(frame.text()?).await
    }

    async fn disconnect(&mut self, _conn: &mut Connection, code: CloseCode) -> Result<()> {
        assert_eq!(code, CloseCode::GOING_AWAY);
        if let Some(h) = self.hang {
            tokio::time::sleep(h).await;
        }
        self.disconnects.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn endpoint(
    layer: &Layer,
    shutdown: &Shutdown,
    disconnects: &Arc<AtomicUsize>,
    hang: Option<Duration>,
) -> Endpoint<impl Fn(&Scope) -> Member + Send + Sync + 'static> {
    let d = disconnects.clone();
    Endpoint::new(layer.clone(), move |_: &Scope| Member {
        disconnects: d.clone(),
        hang,
    })
    .allow_missing_origin(true)
    .shutdown(shutdown)
}

async fn connect(addr: SocketAddr) -> std::result::Result<Ws, u16> {
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws/")).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

/// Reads until the close frame: its code and reason, and when it came.
async fn close_frame(ws: &mut Ws) -> (u16, String, Instant) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(WsMessage::Close(Some(f))))) => {
                return (u16::from(f.code), f.reason.to_string(), Instant::now());
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn members(layer: &Layer) -> usize {
    layer.group_channels("room").await.unwrap().len()
}

#[tokio::test]
async fn axum_drain_closes_every_connection_with_1001_in_batches() {
    let layer = Layer::new(InMemoryLayer::default());
    let shutdown = Shutdown::new();
    let disconnects = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/ws/",
        endpoint(&layer, &shutdown, &disconnects, None).into_route(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn({
        let s = shutdown.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.draining().await })
                .await
        }
    });

    let mut clients = Vec::new();
    for _ in 0..25 {
        clients.push(connect(addr).await.unwrap());
    }
    assert_eq!(members(&layer).await, 25);
    assert_eq!(shutdown.open(), 25);

    let config = DrainConfig::default()
        .batch_size(10)
        .batch_interval(Duration::from_millis(300))
        .deadline(Duration::from_secs(10));
    let drain = tokio::spawn({
        let s = shutdown.clone();
        async move { s.drain(config).await }
    });
    let mut closes = Vec::new();
    for ws in &mut clients {
        closes.push(close_frame(ws).await);
    }
    let report = drain.await.unwrap();
    assert_eq!((report.told, report.remaining), (25, 0));
    for (code, reason, _) in &closes {
        assert_eq!((*code, reason.as_str()), (1001, "server shutting down"));
    }
    // Three batches, 300 ms apart: the last close came at least ~600 ms after the first.
    let first = closes.iter().map(|c| c.2).min().unwrap();
    let last = closes.iter().map(|c| c.2).max().unwrap();
    let spread = last - first;
    assert!(
        spread >= Duration::from_millis(500),
        "closes spread over {spread:?}"
    );
    assert!(spread < Duration::from_secs(5), "{spread:?}");
    assert_eq!(disconnects.load(Ordering::SeqCst), 25);
    // The layer was closed after the connections: everything they joined went first.
    assert!(
        layer
            .group_send("room", serde_json::json!({"type": "x"}))
            .await
            .is_err()
    );
    // axum stopped accepting when the drain began.
    server.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_draining_endpoint_refuses_new_connections_with_503() {
    let layer = Layer::new(InMemoryLayer::default());
    let shutdown = Shutdown::new();
    let disconnects = Arc::new(AtomicUsize::new(0));
    // A server that goes on accepting: only the endpoint knows about the drain.
    let server = Server::new()
        .route("/ws/", endpoint(&layer, &shutdown, &disconnects, None))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    let mut open = connect(addr).await.unwrap();
    shutdown.begin();
    assert_eq!(connect(addr).await.err(), Some(503));
    // `begin` alone closes nothing; the drain does.
    assert_eq!(members(&layer).await, 1);
    let report = shutdown.drain(DrainConfig::default()).await;
    assert_eq!((report.told, report.remaining), (1, 0));
    assert_eq!(close_frame(&mut open).await.0, 1001);
}

#[tokio::test]
async fn standalone_drain_stops_accepting_and_closes_connections() {
    let layer = Layer::new(InMemoryLayer::default());
    let shutdown = Shutdown::new();
    let disconnects = Arc::new(AtomicUsize::new(0));
    let server = Server::new()
        .route("/ws/", endpoint(&layer, &shutdown, &disconnects, None))
        .unwrap()
        .shutdown(&shutdown);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(server.serve(listener));
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(addr).await.unwrap());
    }
    let report = shutdown.drain(DrainConfig::default()).await;
    assert_eq!((report.told, report.remaining), (5, 0));
    for ws in &mut clients {
        assert_eq!(close_frame(ws).await.0, 1001);
    }
    assert_eq!(disconnects.load(Ordering::SeqCst), 5);
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("the accept loop ended")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_drain_gives_up_at_its_deadline() {
    let layer = Layer::new(InMemoryLayer::default());
    let shutdown = Shutdown::new();
    let disconnects = Arc::new(AtomicUsize::new(0));
    let slow = endpoint(
        &layer,
        &shutdown,
        &disconnects,
        Some(Duration::from_secs(30)),
    );
    let server = Server::new().route("/ws/", slow).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    let _client = connect(addr).await.unwrap();
    let started = Instant::now();
    let report = shutdown
        .drain(DrainConfig::default().deadline(Duration::from_millis(500)))
        .await;
    assert_eq!((report.told, report.remaining), (1, 1));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(disconnects.load(Ordering::SeqCst), 0);
}
