//! The chat example end to end over real sockets: rooms, nicknames, private messages, publish
//! by POST, and bad input.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use serde_json::json;
use switchboard::{InMemoryLayer, Layer};
use test_support::{try_ws, ws};

async fn start() -> (SocketAddr, Layer) {
    let layer = Layer::new(InMemoryLayer::default());
    let addr = test_support::serve(chat::router(layer.clone(), chat::Settings::default())).await;
    (addr, layer)
}

#[tokio::test]
async fn members_of_a_room_see_each_others_messages() {
    let (addr, _) = start().await;
    let mut ann = ws(addr, "/ws/chat/lobby/?nickname=ann").await;
    let mut bob = ws(addr, "/ws/chat/lobby/?nickname=bob").await;
    let mut eve = ws(addr, "/ws/chat/other/?nickname=eve").await;
    ann.send_json(json!({"message": "hello bob"})).await;
    let expected =
        json!({"type": "chat.message", "room": "lobby", "user": "ann", "message": "hello bob"});
    assert_eq!(
        ann.recv_json().await,
        expected,
        "the sender gets its own message"
    );
    assert_eq!(bob.recv_json().await, expected);
    assert!(eve.recv_nothing(200).await, "another room hears nothing");
}

#[tokio::test]
async fn private_messages_reach_only_the_target_in_any_room() {
    let (addr, _) = start().await;
    let mut ann = ws(addr, "/ws/chat/lobby/?nickname=ann").await;
    let mut bob_lobby = ws(addr, "/ws/chat/lobby/?nickname=bob").await;
    let mut bob_elsewhere = ws(addr, "/ws/chat/other/?nickname=bob").await;
    let mut eve = ws(addr, "/ws/chat/lobby/?nickname=eve").await;
    ann.send_json(json!({"type": "private", "to": "bob", "message": "psst"}))
        .await;
    let expected = json!({"type": "chat.private", "from": "ann", "to": "bob", "message": "psst"});
    assert_eq!(bob_lobby.recv_json().await, expected);
    assert_eq!(bob_elsewhere.recv_json().await, expected);
    assert!(eve.recv_nothing(200).await);
    assert!(ann.recv_nothing(50).await);

    ann.send_json(json!({"type": "private", "to": "nobody", "message": "hello?"}))
        .await;
    let err = ann.recv_json().await;
    assert_eq!(err["type"], "error");
    assert!(err["error"].as_str().unwrap().contains("nobody"), "{err}");
}

#[tokio::test]
async fn login_by_first_frame() {
    let (addr, _) = start().await;
    let mut anon = ws(addr, "/ws/chat/lobby/").await;
    anon.send_json(json!({"message": "too early"})).await;
    let err = anon.recv_json().await;
    assert!(
        err["error"].as_str().unwrap().contains("log in first"),
        "{err}"
    );
    anon.send_json(json!({"type": "login", "nickname": "zed"}))
        .await;
    anon.send_json(json!({"message": "now"})).await;
    assert_eq!(anon.recv_json().await["user"], "zed");
    anon.send_json(json!({"type": "login", "nickname": "bad name"}))
        .await;
    assert!(
        anon.recv_json().await["error"]
            .as_str()
            .unwrap()
            .contains("invalid")
    );
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays() {
    let (addr, _) = start().await;
    let mut c = ws(addr, "/ws/chat/lobby/?nickname=ann").await;
    c.send_text("not json").await;
    assert_eq!(c.recv_json().await["type"], "error");
    c.send_json(json!({"type": "dance"})).await;
    assert!(
        c.recv_json().await["error"]
            .as_str()
            .unwrap()
            .contains("dance")
    );
    c.send_json(json!({"type": "private", "to": "x"})).await;
    assert!(
        c.recv_json().await["error"]
            .as_str()
            .unwrap()
            .contains("\"to\" and \"message\"")
    );
    c.send_json(json!({"message": "still here"})).await;
    assert_eq!(c.recv_json().await["message"], "still here");
}

#[tokio::test]
async fn invalid_room_names_are_refused() {
    let (addr, layer) = start().await;
    assert_eq!(
        try_ws(addr, "/ws/chat/no%20spaces/?nickname=a").await.err(),
        Some(404)
    );
    assert_eq!(
        try_ws(addr, &format!("/ws/chat/{}/?nickname=a", "r".repeat(120)))
            .await
            .err(),
        Some(404)
    );
    assert_eq!(layer.stats().channels, 0, "a refused room costs nothing");
}

#[tokio::test]
async fn post_publishes_into_the_room() {
    let (addr, _) = start().await;
    let mut ann = ws(addr, "/ws/chat/lobby/?nickname=ann").await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{addr}/chat/rooms/lobby/user/webhook/"))
        .body(r#"{"message": "deploy finished"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"username": "webhook", "roomId": "lobby"})
    );
    assert_eq!(
        ann.recv_json().await,
        json!({"type": "chat.message", "room": "lobby", "user": "webhook", "message": "deploy finished"})
    );

    for (path, body) in [
        ("/chat/rooms/lobby/user/webhook/", "not json"),
        ("/chat/rooms/lobby/user/webhook/", r#"{"msg": "wrong key"}"#),
        ("/chat/rooms/lobby/user/bad%20user/", r#"{"message": "x"}"#),
        (
            "/chat/rooms/bad%20room/user/webhook/",
            r#"{"message": "x"}"#,
        ),
    ] {
        let resp = http
            .post(format!("http://{addr}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{path} {body}");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert!(err["error"].is_string(), "{err}");
    }
    assert!(
        ann.recv_nothing(100).await,
        "rejected posts publish nothing"
    );
}

#[tokio::test]
async fn the_page_is_served() {
    let (addr, _) = start().await;
    let resp = reqwest::get(format!("http://{addr}/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("<title>switchboard chat</title>"));
}

#[tokio::test]
async fn closing_connections_leaves_no_memberships() {
    let (addr, layer) = start().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(ws(addr, &format!("/ws/chat/lobby/?nickname=u{i}")).await);
    }
    assert_eq!(layer.group_channels("chat_lobby").await.unwrap().len(), 20);
    let info: serde_json::Value = reqwest::get(format!("http://{addr}/chat/rooms/lobby/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info, json!({"room": "lobby", "members": 20, "present": 20}));
    for c in clients {
        c.close().await;
    }
    for _ in 0..100 {
        if layer.group_channels("chat_lobby").await.unwrap().is_empty()
            && layer.stats().groups == 0
            && layer.presence_count("chat_lobby").await.unwrap() == 0
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "memberships or presence left behind: {:?}, {:?}",
        layer.stats(),
        layer.presence("chat_lobby").await
    );
}
