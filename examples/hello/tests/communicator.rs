//! The guide's chat room tested with the `Communicator`: the real consumer runtime over an
//! in-process transport, on a real in-memory layer — no network, no server.
#![allow(clippy::unwrap_used)]

use hello::ChatConsumer;
use serde_json::json;
use switchboard::http::StatusCode;
use switchboard::testing::{Communicator, Handshaken};
use switchboard::{CloseCode, InMemoryLayer, Layer, Scope};

fn client(layer: &Layer, room: &str) -> Communicator<ChatConsumer> {
    let scope = Scope::new(&format!("/ws/chat/{room}/")).with_param("room", room);
    Communicator::from_factory(layer.clone(), scope, ChatConsumer::new).unwrap()
}

#[tokio::test]
async fn a_message_reaches_everyone_in_the_room_and_nobody_else() {
    let layer = Layer::new(InMemoryLayer::default());
    let (mut ann, mut bob, mut eve) = (
        client(&layer, "lobby"),
        client(&layer, "lobby"),
        client(&layer, "kitchen"),
    );
    for c in [&mut ann, &mut bob, &mut eve] {
        assert!(c.connect().await.is_accepted());
    }
    ann.send_json(&json!({"message": "hello"})).await.unwrap();
    let expected = json!({"type": "chat.message", "message": "hello"});
    assert_eq!(ann.receive_json().await.unwrap(), expected);
    assert_eq!(bob.receive_json().await.unwrap(), expected);
    assert!(eve.receive_nothing().await, "another room hears nothing");

    ann.disconnect(CloseCode::NORMAL).await;
    assert_eq!(
        layer.group_channels("chat_lobby").await.unwrap().len(),
        1,
        "a client that left is no longer in the room"
    );
}

#[tokio::test]
async fn a_frame_that_is_not_a_message_gets_an_error_and_the_connection_stays() {
    let layer = Layer::new(InMemoryLayer::default());
    let mut ann = client(&layer, "lobby");
    assert!(ann.connect().await.is_accepted());
    ann.send_text("not json").await.unwrap();
    let err = ann.receive_json().await.unwrap();
    assert_eq!(err["type"], "error");
    assert!(
        err["error"].as_str().unwrap().contains("could not decode"),
        "{err}"
    );
    ann.send_json(&json!({"message": "still here"}))
        .await
        .unwrap();
    assert_eq!(ann.receive_json().await.unwrap()["message"], "still here");
}

#[test]
fn a_room_name_that_cannot_name_a_group_is_refused_with_404() {
    let scope = Scope::new("/ws/chat/no room/").with_param("room", "no room");
    let refusal = ChatConsumer::new(&scope).unwrap_err();
    assert_eq!(refusal.status(), StatusCode::NOT_FOUND);
    assert!(refusal.reason().contains("no room"), "{refusal}");
}

#[tokio::test]
async fn the_handshake_refuses_nothing_else() {
    let layer = Layer::new(InMemoryLayer::default());
    assert_eq!(
        client(&layer, "lobby").connect().await,
        Handshaken::Accepted { subprotocol: None }
    );
}
