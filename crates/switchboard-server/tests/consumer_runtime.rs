//! The consumer runtime, driven through the Communicator: lifecycle, typed handlers, errors.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use switchboard::config::BadInput;
use switchboard::http::StatusCode;
use switchboard::testing::{Communicator, Handshaken, Received};
use switchboard::{
    CloseCode, Connection, ConnectionConfig, Consumer, Frame, InMemoryLayer, Layer, LayerError,
    Message, Result, Scope,
};

#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
enum RoomEvent {
    #[serde(rename = "chat.message")]
    ChatMessage { user: String, text: String },
    #[serde(rename = "room.kick")]
    Kick,
}

#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg {
    Say { text: String },
    Fail,
    Panic,
    Slow,
    Close,
}

struct Room {
    room: String,
    accept: bool,
    disconnects: Arc<AtomicUsize>,
}

impl Consumer for Room {
    type Incoming = ClientMsg;
    type Event = RoomEvent;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        conn.group_add(&self.room).await?;
        if self.accept {
            conn.accept().await
        } else {
            conn.close(CloseCode(4003), "not allowed").await
        }
    }

    async fn receive(&mut self, conn: &mut Connection, msg: ClientMsg) -> Result<()> {
        match msg {
            ClientMsg::Say { text } => {
                conn.group_send(
                    &self.room,
                    json!({"type": "chat.message", "user": "ann", "text": text}),
                )
                .await
            }
            ClientMsg::Fail => Err(switchboard::Error::protocol("that did not work")),
            ClientMsg::Panic => panic!("consumer bug"),
            ClientMsg::Slow => {
                conn.send_text("working").await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                conn.send_text("done").await
            }
            ClientMsg::Close => conn.close(CloseCode(4000), "bye").await,
        }
    }

    async fn event(&mut self, conn: &mut Connection, ev: RoomEvent) -> Result<()> {
        match ev {
            RoomEvent::ChatMessage { user, text } => {
                conn.send_json(&json!({"user": user, "text": text})).await
            }
            RoomEvent::Kick => conn.close(CloseCode(4001), "kicked").await,
        }
    }

    async fn disconnect(&mut self, _conn: &mut Connection, _code: CloseCode) -> Result<()> {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn room(layer: &Layer, name: &str) -> (Communicator<Room>, Arc<AtomicUsize>) {
    let disconnects = Arc::new(AtomicUsize::new(0));
    let c = Room {
        room: name.into(),
        accept: true,
        disconnects: disconnects.clone(),
    };
    (
        Communicator::new(layer.clone(), Scope::new(&format!("/ws/chat/{name}/")), c),
        disconnects,
    )
}

#[tokio::test]
async fn group_messages_reach_every_member_through_typed_handlers() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, _) = room(&layer, "lobby");
    let (mut b, _) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    assert!(b.connect().await.is_accepted());
    a.send_json(&json!({"type": "say", "text": "hello"}))
        .await
        .unwrap();
    assert_eq!(
        a.receive_json().await.unwrap(),
        json!({"user": "ann", "text": "hello"})
    );
    assert_eq!(
        b.receive_json().await.unwrap(),
        json!({"user": "ann", "text": "hello"})
    );
    assert!(a.receive_nothing().await);
}

#[tokio::test]
async fn refusing_in_connect_leaves_groups_and_reports_403() {
    let layer = Layer::new(InMemoryLayer::default());
    let disconnects = Arc::new(AtomicUsize::new(0));
    let c = Room {
        room: "vip".into(),
        accept: false,
        disconnects,
    };
    let mut comm = Communicator::new(layer.clone(), Scope::new("/ws/chat/vip/"), c);
    assert_eq!(
        comm.connect().await,
        Handshaken::Refused {
            status: StatusCode::FORBIDDEN,
            reason: "not allowed".into()
        },
        "the refusal says why"
    );
    assert!(
        layer.group_channels("vip").await.unwrap().is_empty(),
        "a refused consumer must leave its groups"
    );
}

#[tokio::test]
async fn disconnect_runs_once_and_groups_are_left() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, disconnects) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    assert_eq!(layer.group_channels("lobby").await.unwrap().len(), 1);
    a.disconnect(CloseCode::NORMAL).await;
    assert_eq!(disconnects.load(Ordering::SeqCst), 1);
    assert!(layer.group_channels("lobby").await.unwrap().is_empty());
    assert_eq!(
        layer.stats().channels,
        0,
        "the consumer's channel is released"
    );
}

#[tokio::test]
async fn undecodable_frame_gets_an_error_frame_and_the_connection_stays() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, _) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    a.send_text("{not json").await.unwrap();
    let err = a.receive_json().await.unwrap();
    assert_eq!(err["type"], "error");
    assert!(
        err["error"].as_str().unwrap().contains("could not decode"),
        "{err}"
    );
    a.send_json(&json!({"type": "dance"})).await.unwrap();
    let err = a.receive_json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("dance"), "{err}");
    a.send_json(&json!({"type": "say", "text": "still here"}))
        .await
        .unwrap();
    assert_eq!(a.receive_json().await.unwrap()["text"], "still here");
}

#[tokio::test]
async fn unknown_event_type_gets_an_error_frame_and_the_connection_stays() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, _) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    layer
        .group_send("lobby", json!({"type": "mystery.event", "x": 1}))
        .await
        .unwrap();
    let err = a.receive_json().await.unwrap();
    assert_eq!(err["type"], "error");
    let text = err["error"].as_str().unwrap();
    // The layer's message is the server's business: the client gets a reference only.
    assert!(
        text.starts_with("internal server error (reference "),
        "{err}"
    );
    assert!(!text.contains("mystery.event"), "{err}");
    layer
        .group_send(
            "lobby",
            json!({"type": "chat.message", "user": "bo", "text": "ok"}),
        )
        .await
        .unwrap();
    assert_eq!(
        a.receive_json().await.unwrap(),
        json!({"user": "bo", "text": "ok"})
    );
}

#[tokio::test]
async fn bad_input_policy_can_close_instead() {
    let layer = Layer::new(InMemoryLayer::default());
    let (a, _) = room(&layer, "lobby");
    let mut a =
        a.with_config(ConnectionConfig::default().bad_input(BadInput::Close(CloseCode(4400))));
    assert!(a.connect().await.is_accepted());
    a.send_text("[]").await.unwrap();
    let (code, _) = a.receive_close().await.unwrap();
    assert_eq!(code, CloseCode(4400));
    a.wait().await;
    assert!(layer.group_channels("lobby").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_close_reason_quoting_a_long_input_fits_a_close_frame() {
    // The decode error names the unknown type the client sent: 300 bytes of it. A close frame
    // carries at most 123 bytes of reason (RFC 6455 §5.5), cut on a char boundary.
    let layer = Layer::new(InMemoryLayer::default());
    let (a, _) = room(&layer, "lobby");
    let mut a =
        a.with_config(ConnectionConfig::default().bad_input(BadInput::Close(CloseCode(4400))));
    assert!(a.connect().await.is_accepted());
    let kind = "é".repeat(150);
    a.send_json(&json!({"type": kind})).await.unwrap();
    let (code, reason) = a.receive_close().await.unwrap();
    assert_eq!(code, CloseCode(4400));
    assert!(reason.len() <= 123, "{} bytes: {reason}", reason.len());
    assert!(reason.contains("éé"), "{reason}");
}

#[tokio::test]
async fn handler_error_is_reported_and_connection_stays() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, _) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    a.send_json(&json!({"type": "fail"})).await.unwrap();
    assert_eq!(
        a.receive_json().await.unwrap(),
        json!({"type": "error", "error": "that did not work"})
    );
    a.send_json(&json!({"type": "say", "text": "x"}))
        .await
        .unwrap();
    assert_eq!(a.receive_json().await.unwrap()["text"], "x");
}

#[tokio::test]
async fn handler_panic_closes_with_1011_and_cleans_up() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, disconnects) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    a.send_json(&json!({"type": "panic"})).await.unwrap();
    assert_eq!(a.receive_close().await.unwrap().0, CloseCode::INTERNAL);
    a.wait().await;
    assert_eq!(disconnects.load(Ordering::SeqCst), 1);
    assert!(layer.group_channels("lobby").await.unwrap().is_empty());
}

#[tokio::test]
async fn frames_queued_by_a_running_handler_are_written_before_it_finishes() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, _) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    a.send_json(&json!({"type": "slow"})).await.unwrap();
    assert_eq!(
        a.receive_within(Duration::from_millis(150)).await.unwrap(),
        Received::Text("working".into())
    );
    assert!(
        a.receive_nothing_within(Duration::from_millis(50)).await,
        "the handler is still running"
    );
    assert_eq!(a.receive().await.unwrap(), Received::Text("done".into()));
}

#[tokio::test]
async fn handlers_run_one_at_a_time_in_arrival_order() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, _) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    // A slow handler, then a frame and a group message that arrive while it runs.
    a.send_json(&json!({"type": "slow"})).await.unwrap();
    a.send_json(&json!({"type": "say", "text": "after"}))
        .await
        .unwrap();
    assert_eq!(a.receive_text().await.unwrap(), "working");
    assert_eq!(a.receive_text().await.unwrap(), "done");
    assert_eq!(a.receive_json().await.unwrap()["text"], "after");
}

#[tokio::test]
async fn close_from_an_event_handler() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut a, disconnects) = room(&layer, "lobby");
    assert!(a.connect().await.is_accepted());
    layer
        .group_send("lobby", json!({"type": "room.kick"}))
        .await
        .unwrap();
    assert_eq!(
        a.receive_close().await.unwrap(),
        (CloseCode(4001), "kicked".into())
    );
    a.wait().await;
    assert_eq!(disconnects.load(Ordering::SeqCst), 1);
}

struct Flood;

impl Consumer for Flood {
    type Incoming = Frame;
    type Event = Message;
    async fn receive(&mut self, conn: &mut Connection, _f: Frame) -> Result<()> {
        for i in 0..10 {
            conn.send_text(format!("frame {i}")).await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn outbound_queue_overflow_closes_with_1008() {
    let layer = Layer::new(InMemoryLayer::default());
    let cfg = ConnectionConfig::default().outbound_frames(4);
    let mut c = Communicator::new(layer.clone(), Scope::new("/flood"), Flood).with_config(cfg);
    assert!(c.connect().await.is_accepted());
    c.send_text("go").await.unwrap();
    let mut texts = 0;
    loop {
        match c.receive().await.unwrap() {
            Received::Text(_) => texts += 1,
            Received::Close(code, _) => {
                assert_eq!(code, CloseCode::POLICY);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(texts <= 10, "{texts}");
}

struct Proto;

impl Consumer for Proto {
    type Incoming = Frame;
    type Event = Message;
    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        assert!(conn.accept_subprotocol("nope").await.is_err());
        conn.accept_subprotocol("chat.v2").await
    }
    async fn receive(&mut self, conn: &mut Connection, f: Frame) -> Result<()> {
        match f {
            Frame::Binary(b) => conn.send_bytes(b).await,
            Frame::Text(_) => {
                conn.send_message(&Message::builder("echo.text").build()?)
                    .await
            }
        }
    }
}

#[tokio::test]
async fn subprotocols_binary_frames_and_raw_messages() {
    let layer = Layer::new(InMemoryLayer::default());
    let scope = Scope::new("/p").with_subprotocols(["chat.v1", "chat.v2"]);
    let mut c = Communicator::new(layer, scope, Proto);
    assert_eq!(
        c.connect().await,
        Handshaken::Accepted {
            subprotocol: Some("chat.v2".into())
        }
    );
    c.send_bytes(vec![1, 2, 3]).await.unwrap();
    assert_eq!(c.receive().await.unwrap(), Received::Binary(vec![1, 2, 3]));
    c.send_text("x").await.unwrap();
    assert_eq!(
        c.receive_json().await.unwrap(),
        json!({"type": "echo.text"})
    );
}

#[tokio::test]
async fn sending_to_a_full_channel_reports_channel_full_to_the_client() {
    struct Sender;
    impl Consumer for Sender {
        type Incoming = Frame;
        type Event = Message;
        async fn receive(&mut self, conn: &mut Connection, f: Frame) -> Result<()> {
            conn.send_to(f.text()?, json!({"type": "ping"})).await
        }
    }
    let layer = Layer::new(InMemoryLayer::new(
        switchboard::LayerConfig::default().capacity(1),
    ));
    let mut c = Communicator::new(layer.clone(), Scope::new("/s"), Sender);
    assert!(c.connect().await.is_accepted());
    c.send_text("worker.jobs").await.unwrap();
    assert!(c.receive_nothing().await);
    c.send_text("worker.jobs").await.unwrap();
    let err = c.receive_json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("not keeping up"),
        "{err}"
    );
    c.send_text("bad name!!").await.unwrap();
    let err = c.receive_json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("is invalid"),
        "{err}"
    );
}

#[tokio::test]
async fn a_backend_error_tells_the_client_a_reference_not_the_backend() {
    struct Failing;
    impl Consumer for Failing {
        type Incoming = Frame;
        type Event = Message;
        async fn receive(&mut self, _conn: &mut Connection, _f: Frame) -> Result<()> {
            let refused = std::io::Error::other("Connection refused (os error 111)");
            Err(LayerError::backend("redis at 10.20.30.40:6379", refused).into())
        }
    }
    let mut c = Communicator::new(InMemoryLayer::default(), Scope::new("/f"), Failing);
    assert!(c.connect().await.is_accepted());
    c.send_text("x").await.unwrap();
    let err = c.receive_json().await.unwrap();
    let text = err["error"].as_str().unwrap();
    assert!(
        text.starts_with("internal server error (reference "),
        "{err}"
    );
    assert!(
        !text.contains("10.20.30.40") && !text.contains("refused"),
        "{err}"
    );
    c.send_text("y").await.unwrap();
    assert_eq!(
        c.receive_json().await.unwrap()["type"],
        "error",
        "the connection stays"
    );
}

#[tokio::test]
async fn a_big_message_is_sent_whole_when_max_message_size_allows_it() {
    struct Echo;
    impl Consumer for Echo {
        type Incoming = Frame;
        type Event = Message;
        async fn receive(&mut self, conn: &mut Connection, f: Frame) -> Result<()> {
            conn.send_text(f.text()?).await
        }
    }
    // 2 MiB in and out: more than outbound_bytes (1 MiB), which bounds a backlog, not a message.
    let big = "x".repeat(2 << 20);
    let cfg = ConnectionConfig::default().max_message_size(4 << 20);
    let mut c =
        Communicator::new(InMemoryLayer::default(), Scope::new("/e"), Echo).with_config(cfg);
    assert!(c.connect().await.is_accepted());
    c.send_text(big.clone()).await.unwrap();
    assert_eq!(c.receive_text().await.unwrap().len(), big.len());
}
