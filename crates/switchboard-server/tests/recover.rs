//! A consumer that falls behind its group loses messages (its channel is full). Where the group
//! keeps history and the consumer joined it "since" a position, the runtime reads what was
//! missed again from history and the client gets every message, in order, once, on the same
//! connection; without history the connection is closed with 1013, as before.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use switchboard::{
    Connection, Consumer, Endpoint, Frame, InMemoryLayer, Layer, LayerConfig, Message, Result,
    Scope,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Joins `room` (since now, with `?history=1`); writes each room message's `n`, slowly.
struct Slow {
    history: bool,
}

impl Consumer for Slow {
    type Incoming = Frame;
    type Event = Message;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        if self.history {
            conn.group_add_since("room", None).await?;
        } else {
            conn.group_add("room").await?;
        }
        conn.accept().await
    }

    async fn receive(&mut self, _: &mut Connection, _: Frame) -> Result<()> {
        Ok(())
    }

    async fn event(&mut self, conn: &mut Connection, msg: Message) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(10)).await; // a handler slower than the room
        let n = msg.get("n").and_then(|v| v.as_i64()).unwrap_or(-1);
        conn.send_text(n.to_string()).await
    }
}

/// Reads until `count` numbers or a close: the numbers, and the close code if one came.
async fn read(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    count: usize,
) -> (Vec<i64>, Option<u16>) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < count {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => got.push(t.as_str().parse().unwrap()),
            Ok(Some(Ok(WsMessage::Close(f)))) => return (got, f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return (got, None),
            Err(_) => panic!("got {} of {count} in 20 s: {got:?}", got.len()),
        }
    }
    (got, None)
}

async fn run(history: bool) -> (Vec<i64>, Option<u16>, Layer) {
    let cfg = LayerConfig::default()
        .capacity(4)
        .group_backpressure(Duration::ZERO)
        .group_history("room", 100, Duration::from_secs(60))
        .unwrap();
    let layer = Layer::new(InMemoryLayer::new(cfg));
    let endpoint = Endpoint::new(layer.clone(), |s: &Scope| Slow {
        history: s.query("history").as_deref() == Some("1"),
    })
    .allow_missing_origin(true);
    let addr = test_support::serve(axum::Router::new().route("/ws/", endpoint.into_route())).await;
    let url = format!("ws://{addr}/ws/?history={}", u8::from(history));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    while layer.group_channels("room").await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for n in 1..=40 {
        let m = Message::builder("room.n").field("n", n).build().unwrap();
        layer.group_send("room", m).await.unwrap();
    }
    let (got, close) = read(&mut ws, 40).await;
    (got, close, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_fell_behind_recovers_from_history_on_the_same_connection() {
    let (got, close, layer) = run(true).await;
    assert_eq!(close, None, "not closed");
    assert_eq!(
        got,
        (1..=40).collect::<Vec<_>>(),
        "every message, in order, once"
    );
    assert!(
        layer.stats().group_full_drops > 0,
        "the channel did overflow: {:?}",
        layer.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_it_is_closed_with_1013() {
    let (got, close, _) = run(false).await;
    assert_eq!(close, Some(1013), "got {got:?}");
    assert!(got.len() < 40);
}
