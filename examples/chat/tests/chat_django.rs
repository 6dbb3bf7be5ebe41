//! A live Django process and the chat example's consumer share a room through one Redis: a
//! Django `group_send` reaches a Rust consumer, which hands it to its WebSocket client, and a
//! client's message comes back to a Django channel in the room — on both Redis layers.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use switchboard::Message;
use test_support::django::{Django, Kind, rust_layer};
use test_support::ws;

/// A Django `group_send` reaches a Rust consumer (the chat example's), which hands it to its
/// WebSocket client; a client message comes back to a Django channel in the room.
async fn django_and_a_rust_consumer_share_a_room(kind: Kind) {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let (django, layer) = tokio::join!(
        Django::start(kind, &url, &prefix, &[]),
        rust_layer(kind, &url, &prefix, &[])
    );
    let Some(mut django) = django else {
        return;
    };
    let addr = test_support::serve(chat::router(layer, chat::Settings::default())).await;
    let mut ann = ws(addr, "/ws/chat/lobby/?nickname=ann").await;
    let py = django.new_channel().await;
    django.group_add("chat_lobby", &py).await;

    let from_django = Message::from_json(json!({
        "type": "chat.message", "room": "lobby", "user": "django", "message": "hello from Django"
    }))
    .unwrap();
    django.group_send("chat_lobby", &from_django).await;
    assert_eq!(ann.recv_json().await, from_django.to_json());

    assert_eq!(
        django.receive(&py).await,
        from_django,
        "Django's own member got it too"
    );

    ann.send_json(json!({"message": "hello from Rust"})).await;
    assert_eq!(ann.recv_json().await["message"], "hello from Rust");
    assert_eq!(
        django.receive(&py).await.to_json(),
        json!({"type": "chat.message", "room": "lobby", "user": "ann", "message": "hello from Rust"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_group_send_reaches_a_rust_consumer_on_the_core_layer() {
    django_and_a_rust_consumer_share_a_room(Kind::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_group_send_reaches_a_rust_consumer_on_the_pubsub_layer() {
    django_and_a_rust_consumer_share_a_room(Kind::PubSub).await;
}
