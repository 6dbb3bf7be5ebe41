//! A sender faster than its room: it is slowed to the room's pace (its socket is not read while
//! the room cannot take more), nobody who keeps reading loses a message, and a member that
//! stays stalled is told what it missed (1013) instead of losing messages silently.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard::{
    Connection, ConnectionConfig, Consumer, Endpoint, Frame, InMemoryLayer, Layer, Message, Result,
    Scope,
};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Joins "room" unless `?listen=0`; relays each client frame to the room; writes each room
/// message to its client — after `?stall_ms` for the first one, and `?pause_ms` every
/// `?pause_every` (a handler that waits on a database now and then).
struct Member {
    listen: bool,
    stall: Option<Duration>,
    pause: Duration,
    pause_every: usize,
    events: usize,
}

impl Consumer for Member {
    type Incoming = Frame;
    type Event = Message;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        if self.listen {
            conn.group_add("room").await?;
        }
        conn.accept().await
    }

    async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
        let msg = Message::builder("room.message")
            .field("text", frame.text()?)
            .build()?;
        conn.group_send("room", msg).await
    }

    async fn event(&mut self, conn: &mut Connection, msg: Message) -> Result<()> {
        if let Some(stall) = self.stall.take() {
            tokio::time::sleep(stall).await;
        }
        self.events += 1;
        if self.pause_every > 0 && self.events.is_multiple_of(self.pause_every) {
            tokio::time::sleep(self.pause).await;
        }
        let text = msg.get("text").and_then(|v| v.as_str()).unwrap_or("");
        conn.send_text(text.to_owned()).await
    }
}

fn member(scope: &Scope) -> Member {
    let ms = |k| {
        scope
            .query(k)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    };
    Member {
        listen: scope.query("listen").as_deref() != Some("0"),
        stall: ms("stall_ms"),
        pause: ms("pause_ms").unwrap_or_default(),
        pause_every: scope
            .query("pause_every")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        events: 0,
    }
}

async fn server(config: ConnectionConfig) -> SocketAddr {
    let layer = Layer::new(InMemoryLayer::default());
    let endpoint = Endpoint::new(layer, member as fn(&Scope) -> Member)
        .allow_missing_origin(true)
        .config(config);
    test_support::serve(axum::Router::new().route("/ws/", endpoint.into_route())).await
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A client whose socket takes little at a time (a small receive buffer), as a slow client's.
async fn connect(addr: SocketAddr, query: &str, small_buffer: bool) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    if small_buffer {
        socket.set_recv_buffer_size(8 * 1024).unwrap();
    }
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/?{query}"), stream)
        .await
        .unwrap();
    ws
}

/// Message `i` of the sender: its number, padded to about 2 KB.
fn text(i: usize) -> String {
    format!("{i:06} {}", "x".repeat(2000))
}

/// Reads until `count` messages or a close; the numbers received, and the close code if one
/// came. A reader with `pause` sleeps that long every 4 messages.
async fn read(mut ws: Ws, count: usize, pause: Duration) -> (Vec<usize>, Option<u16>) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < count {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                got.push(t.as_str()[..6].parse().unwrap());
                if !pause.is_zero() && got.len().is_multiple_of(4) {
                    tokio::time::sleep(pause).await;
                }
            }
            Ok(Some(Ok(WsMessage::Close(f)))) => return (got, f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return (got, None),
            Err(_) => panic!("a reader got {} of {count} messages in 60 s", got.len()),
        }
    }
    (got, None)
}

/// Sends `count` messages as fast as the socket takes them, without reading.
async fn blast(addr: SocketAddr, count: usize) -> tokio::task::JoinHandle<Ws> {
    let mut ws = connect(addr, "listen=0", false).await;
    tokio::spawn(async move {
        for i in 0..count {
            ws.feed(WsMessage::text(text(i))).await.unwrap();
        }
        ws.flush().await.unwrap();
        ws
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_is_slowed_to_its_room_and_nobody_loses_a_message() {
    const COUNT: usize = 600;
    // Outbound limits small enough that the slow clients' backlogs fill.
    let config = ConnectionConfig::default()
        .outbound_bytes(64 * 1024)
        .outbound_frames(64);
    let addr = server(config).await;
    let mut readers = Vec::new();
    // Consumers whose handler stops for 0.8 s every 150 messages (longer than the room can
    // go on without waiting for them: 50 more messages fill their channel's 100) ...
    for _ in 0..6 {
        let ws = connect(addr, "pause_ms=800&pause_every=150", false).await;
        readers.push(("pausing", tokio::spawn(read(ws, COUNT, Duration::ZERO))));
    }
    // ... and slow clients (they read 4 messages, then pause; a small socket buffer).
    for _ in 0..4 {
        let ws = connect(addr, "", true).await;
        let pause = Duration::from_millis(2);
        readers.push(("slow client", tokio::spawn(read(ws, COUNT, pause))));
    }
    let start = Instant::now();
    let sender = blast(addr, COUNT).await;
    let want: Vec<usize> = (0..COUNT).collect();
    for (kind, r) in readers {
        let (got, close) = r.await.unwrap();
        assert_eq!(
            close,
            None,
            "a {kind} reader was closed after {} messages",
            got.len()
        );
        assert!(
            got == want,
            "a {kind} reader got {} of {COUNT}, or out of order",
            got.len()
        );
    }
    eprintln!(
        "{COUNT} messages of 2 KB to 10 slow members, none lost, in {:?}",
        start.elapsed()
    );
    drop(sender.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_member_is_told_what_it_missed_and_does_not_hold_the_room() {
    const COUNT: usize = 400;
    let addr = server(ConnectionConfig::default()).await;
    let stalled = connect(addr, "stall_ms=3000", false).await;
    let stalled = tokio::spawn(read(stalled, COUNT, Duration::ZERO));
    let mut readers = Vec::new();
    for _ in 0..5 {
        let ws = connect(addr, "", false).await;
        readers.push(tokio::spawn(read(ws, COUNT, Duration::ZERO)));
    }
    let start = Instant::now();
    let sender = blast(addr, COUNT).await;
    let want: Vec<usize> = (0..COUNT).collect();
    for r in readers {
        let (got, close) = r.await.unwrap();
        assert_eq!(close, None);
        assert!(got == want, "a reader got {} of {COUNT}", got.len());
    }
    let room_took = start.elapsed();
    // The room waited for the stalled member once (the back-pressure wait, 1 s), then went on
    // without it: it did not wait out the stall.
    assert!(
        room_took < Duration::from_millis(2900),
        "the room took {room_took:?}: it waited for the stalled member"
    );
    let (got, close) = stalled.await.unwrap();
    assert_eq!(
        close,
        Some(1013),
        "the stalled member got {} messages and no 1013",
        got.len()
    );
    let prefix: Vec<usize> = (0..got.len()).collect();
    assert_eq!(got, prefix, "what it got before the gap is in order");
    assert!(got.len() < COUNT);
    eprintln!(
        "room done in {room_took:?}; the stalled member got {} then 1013",
        got.len()
    );
    drop(sender.await.unwrap());
}
