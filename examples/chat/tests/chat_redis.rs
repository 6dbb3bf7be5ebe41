//! Two chat processes (the built `chat` example binary) on one Redis share rooms and private
//! messages, with the core layer and with the pub/sub layer; a killed process's connections
//! leave the room's presence within its TTL.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use test_support::program::Program;
use test_support::ws;

async fn start_chat(redis: &str, prefix: &str, layer: &str) -> Program {
    Program::start(
        env!("CARGO_BIN_EXE_chat"),
        &["--redis", redis, "--redis-prefix", prefix, "--layer", layer],
    )
    .await
}

/// A room message as a client sees it, without its `position` (the rooms keep history in
/// Redis), and the position's offset; `epoch` is the room's epoch, set by its first message.
fn without_position(
    mut frame: serde_json::Value,
    epoch: &mut Option<String>,
) -> (serde_json::Value, u64) {
    let position = frame
        .as_object_mut()
        .and_then(|f| f.remove("position"))
        .and_then(|p| p.as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("a room message without a position: {frame}"));
    let (e, offset) = position.rsplit_once(':').unwrap();
    assert_eq!(
        epoch.get_or_insert_with(|| e.to_owned()),
        e,
        "one epoch for the room"
    );
    (frame, offset.parse().unwrap())
}

async fn rooms_and_private_messages_cross_processes(layer: &str) {
    let Some(redis) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let (one, two) = tokio::join!(
        start_chat(&redis, &prefix, layer),
        start_chat(&redis, &prefix, layer)
    );
    let mut ann = ws(one.addr, "/ws/chat/lobby/?nickname=ann").await;
    let mut bob = ws(two.addr, "/ws/chat/lobby/?nickname=bob").await;
    let mut eve = ws(two.addr, "/ws/chat/other/?nickname=eve").await;

    // Each room message reaches both processes with one position: offsets 1, 2, 3 of one
    // epoch, whichever process sent it.
    let mut epoch = None;
    ann.send_json(json!({"message": "hello from process one"}))
        .await;
    let expected = json!({"type": "chat.message", "room": "lobby", "user": "ann", "message": "hello from process one"});
    assert_eq!(
        without_position(ann.recv_json().await, &mut epoch),
        (expected.clone(), 1)
    );
    assert_eq!(
        without_position(bob.recv_json().await, &mut epoch),
        (expected, 1),
        "a room spans both processes"
    );

    bob.send_json(json!({"message": "and back from two"})).await;
    let expected = json!({"type": "chat.message", "room": "lobby", "user": "bob", "message": "and back from two"});
    assert_eq!(
        without_position(ann.recv_json().await, &mut epoch),
        (expected.clone(), 2)
    );
    assert_eq!(
        without_position(bob.recv_json().await, &mut epoch),
        (expected, 2)
    );

    eve.send_json(json!({"type": "private", "to": "ann", "message": "psst"}))
        .await;
    assert_eq!(
        ann.recv_json().await,
        json!({"type": "chat.private", "from": "eve", "to": "ann", "message": "psst"}),
        "a private message finds its target in the other process"
    );

    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/chat/rooms/lobby/user/webhook/",
            two.addr
        ))
        .body(r#"{"message": "posted to two"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expected = json!({"type": "chat.message", "room": "lobby", "user": "webhook", "message": "posted to two"});
    assert_eq!(
        without_position(ann.recv_json().await, &mut epoch),
        (expected.clone(), 3)
    );
    assert_eq!(
        without_position(bob.recv_json().await, &mut epoch),
        (expected, 3)
    );

    assert!(eve.recv_nothing(200).await, "another room hears nothing");
    assert!(bob.recv_nothing(50).await, "nothing twice");
}

#[tokio::test]
async fn two_processes_share_rooms_on_the_core_layer() {
    rooms_and_private_messages_cross_processes("core").await;
}

#[tokio::test]
async fn two_processes_share_rooms_on_the_pubsub_layer() {
    rooms_and_private_messages_cross_processes("pubsub").await;
}

/// The room's presence as process `addr` counts it (its HTTP room info).
async fn present(addr: std::net::SocketAddr) -> u64 {
    let info: serde_json::Value = reqwest::get(format!("http://{addr}/chat/rooms/lobby/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["present"].as_u64().unwrap()
}

/// A chat process killed with SIGKILL cannot take its connections out of the room's presence:
/// they vanish when their entries' TTL (2 s here) runs out without a heartbeat, while the other
/// process's connections, whose heartbeats go on, stay.
async fn a_crashed_process_leaves_the_presence(layer: &str) {
    let Some(redis) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let args = [
        "--redis",
        redis.as_str(),
        "--redis-prefix",
        prefix.as_str(),
        "--layer",
        layer,
        "--presence-ttl-secs",
        "2",
    ];
    let bin = env!("CARGO_BIN_EXE_chat");
    let (mut one, two) = tokio::join!(Program::start(bin, &args), Program::start(bin, &args));
    let _ann = ws(one.addr, "/ws/chat/lobby/?nickname=ann").await;
    let _bob = ws(two.addr, "/ws/chat/lobby/?nickname=bob").await;
    let _cat = ws(two.addr, "/ws/chat/lobby/?nickname=cat").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while present(two.addr).await != 3 {
        assert!(std::time::Instant::now() < deadline, "never 3 present");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    one.kill();
    let killed = std::time::Instant::now();
    while present(two.addr).await != 2 {
        assert!(
            killed.elapsed() < std::time::Duration::from_millis(3_500),
            "the crashed process's entry outlived its 2 s TTL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eprintln!(
        "ann left the presence {:?} after the kill",
        killed.elapsed()
    );
    // Past two more TTLs the living connections are still there: their heartbeat runs.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(present(two.addr).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_process_leaves_the_presence_on_the_core_layer() {
    a_crashed_process_leaves_the_presence("core").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_process_leaves_the_presence_on_the_pubsub_layer() {
    a_crashed_process_leaves_the_presence("pubsub").await;
}
