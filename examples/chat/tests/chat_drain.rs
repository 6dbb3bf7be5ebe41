//! Graceful shutdown of a real chat process: two `chat` processes on one Redis share a room; one
//! gets SIGTERM while messages flow → every client of that process gets a 1001 close frame
//! before the drain deadline, the process exits by itself, none of its memberships is left in
//! Redis, and the other process's clients miss no message.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use test_support::program::Program;
use test_support::{WsClient, ws};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SENT: usize = 300;

/// Reads until the close frame; the chat messages that came before it, and the close's code.
async fn read_until_close(mut c: WsClient, within: Duration) -> (usize, Option<u16>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut texts = 0;
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(_)))) => texts += 1,
            Ok(Some(Ok(WsMessage::Close(f)))) => {
                return (texts, f.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the connection ended without a close frame: {other:?}"),
            Err(_) => return (texts, None),
        }
    }
}

/// Reads `sender`'s numbered messages until the last one; panics on a gap, a duplicate or a
/// close. Returns the count and the client, still connected.
async fn read_all_from(mut c: WsClient, sender: &str) -> (usize, WsClient) {
    let mut next = 0;
    while next < SENT {
        let frame = c.recv_json().await;
        if frame["user"] != sender {
            continue;
        }
        let text = frame["message"].as_str().unwrap().to_owned();
        assert_eq!(text, format!("m{next}"), "a gap or a duplicate");
        next += 1;
    }
    (next, c)
}

async fn members(url: &str, key: &str) -> Vec<String> {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_one_process_and_the_other_loses_nothing() {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let bin = env!("CARGO_BIN_EXE_chat");
    let args = [
        "--redis",
        &url,
        "--redis-prefix",
        &prefix,
        "--drain-batch",
        "5",
        "--drain-interval-ms",
        "100",
        "--drain-timeout-secs",
        "10",
    ];
    let (mut leaving, staying) =
        tokio::join!(Program::start(bin, &args), Program::start(bin, &args));
    let path = |nick: &str| format!("/ws/chat/drain/?nickname={nick}");
    let mut theirs = Vec::new();
    for i in 0..20 {
        theirs.push(ws(leaving.addr, &path(&format!("a{i}"))).await);
    }
    let mut ours = Vec::new();
    for i in 0..5 {
        ours.push(ws(staying.addr, &path(&format!("b{i}"))).await);
    }
    let mut sender = ws(staying.addr, &path("sender")).await;
    let key = format!("{prefix}:group:chat_drain");
    assert_eq!(members(&url, &key).await.len(), 26);

    // The staying process's readers read everything its sender sends, start to end.
    let readers: Vec<_> = ours
        .into_iter()
        .map(|c| tokio::spawn(read_all_from(c, "sender")))
        .collect();
    // The leaving process's clients read until they are closed.
    let closing: Vec<_> = theirs
        .into_iter()
        .map(|c| tokio::spawn(read_until_close(c, Duration::from_secs(15))))
        .collect();

    let mut terminated = None;
    for i in 0..SENT {
        sender.send_json(json!({"message": format!("m{i}")})).await;
        if i == SENT / 3 {
            leaving.terminate();
            terminated = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let terminated = terminated.unwrap();

    for c in closing {
        let (texts, code) = c.await.unwrap();
        assert_eq!(
            code,
            Some(1001),
            "a client of the drained process got no 1001"
        );
        assert!(texts > 0, "messages reached it before the drain");
    }
    let closed_within = terminated.elapsed();
    assert!(
        closed_within < Duration::from_secs(10),
        "every client was closed {closed_within:?} after SIGTERM, past the drain deadline"
    );
    let status = leaving
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the drained process exits by itself");
    assert!(status.success(), "{status:?}\n{}", leaving.output());
    let out = leaving.output();
    assert!(out.contains("shut down cleanly"), "{out}");

    let mut still_open = Vec::new();
    for r in readers {
        let (read, client) = r.await.unwrap();
        assert_eq!(read, SENT);
        still_open.push(client);
    }
    // Only the staying process's six connections are members now.
    let left = members(&url, &key).await;
    assert_eq!(left.len(), 6, "members left behind: {left:?}");
    drop(still_open);
    drop(staying);
}
