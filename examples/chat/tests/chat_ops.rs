//! The chat process as operations see it: `/metrics` after a known workload holds exactly what
//! the workload did; `/healthz` and `/readyz` answer load balancers, and `/readyz` turns 503
//! when Redis goes away (without saying where Redis is).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use test_support::program::Program;
use test_support::{try_ws_with, ws};

/// `/metrics` as a map from `name{labels}` to value.
async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} is not in /metrics: {m:#?}"))
}

/// Waits until the room's presence (its HTTP info) counts `n`: each connection's presence
/// event then reaches a known set of members.
async fn present_becomes(addr: std::net::SocketAddr, room: &str, n: u64) {
    for _ in 0..200 {
        let info: serde_json::Value = reqwest::get(format!("http://{addr}/chat/rooms/{room}/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if info["present"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the presence of {room} did not become {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_a_known_workload_did() {
    let debug = [("RUST_LOG", "info,switchboard_server=debug")];
    let chat = Program::start_with_env(env!("CARGO_BIN_EXE_chat"), &[], &debug).await;
    let addr = chat.addr;
    let path = |nick: &str| format!("/ws/chat/metrics/?nickname={nick}");
    // One at a time, each in the room's presence before the next (see `present_becomes`).
    let mut ann = ws(addr, &path("ann")).await;
    present_becomes(addr, "metrics", 1).await;
    let mut bob = ws(addr, &path("bob")).await;
    present_becomes(addr, "metrics", 2).await;
    let mut cat = ws(addr, &path("cat")).await;
    present_becomes(addr, "metrics", 3).await;
    // Two refusals: a foreign origin, and a room name no group can hold.
    let evil = [("origin", "http://evil.example")];
    assert_eq!(
        try_ws_with(addr, &path("eve"), &evil).await.err(),
        Some(403)
    );
    assert_eq!(
        try_ws_with(addr, "/ws/chat/no%20room/", &[]).await.err(),
        Some(404)
    );

    let mut sent_bytes = 0;
    for i in 0..4 {
        let frame = json!({"message": format!("hello {i}")});
        sent_bytes += frame.to_string().len();
        ann.send_json(frame).await;
    }
    let mut received_bytes = 0;
    for c in [&mut ann, &mut bob, &mut cat] {
        for i in 0..4 {
            let frame = c.recv_json().await;
            assert_eq!(frame["message"], format!("hello {i}"));
            // The server's JSON is compact, as serde_json writes it.
            received_bytes += frame.to_string().len();
        }
    }
    ann.close().await;
    present_becomes(addr, "metrics", 2).await;
    bob.close().await;
    present_becomes(addr, "metrics", 1).await;
    cat.close().await;
    present_becomes(addr, "metrics", 0).await;

    let mut m = scrape(addr).await;
    for _ in 0..100 {
        if m.get("switchboard_connections_open") == Some(&0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = scrape(addr).await;
    }
    let expect = [
        ("switchboard_connections_total", 3.0),
        ("switchboard_connections_open", 0.0),
        (
            "switchboard_connections_closed_total{reason=\"client\"}",
            3.0,
        ),
        (
            "switchboard_handshakes_refused_total{reason=\"origin\"}",
            1.0,
        ),
        (
            "switchboard_handshakes_refused_total{reason=\"consumer\"}",
            1.0,
        ),
        ("switchboard_frames_received_total", 4.0),
        ("switchboard_bytes_received_total", sent_bytes as f64),
        ("switchboard_frames_sent_total", 12.0),
        ("switchboard_bytes_sent_total", received_bytes as f64),
        // 4 messages to 3 members; presence events (the room has them, these clients do not
        // ask for them: delivered, not relayed): joins reach 1, 2 and 3 members, leaves 3, 2
        // and 1 (a leaving member is in the room until its presence has gone).
        ("switchboard_group_deliveries_total", 12.0 + 12.0),
        (
            "switchboard_messages_dropped_total{reason=\"channel_full\"}",
            0.0,
        ),
        (
            "switchboard_messages_dropped_total{reason=\"expired\"}",
            0.0,
        ),
        // 4 sends and 6 presence events; a room and a user group joined and left by each of
        // the three.
        (
            "switchboard_layer_operation_seconds_count{op=\"group_send\"}",
            4.0 + 6.0,
        ),
        (
            "switchboard_layer_operation_seconds_count{op=\"group_add\"}",
            6.0,
        ),
        (
            "switchboard_layer_operation_seconds_count{op=\"group_discard\"}",
            6.0,
        ),
        ("switchboard_layer_channels", 0.0),
    ];
    for (key, value) in expect {
        assert_eq!(get(&m, key), value, "{key}");
    }
    assert!(
        !m.keys()
            .any(|k| k.starts_with("switchboard_handler_errors_total")),
        "no handler failed"
    );

    // The log: each connection's events in its span (path, channel, peer), with the close code.
    let log = chat.output();
    let accepted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection accepted"))
        .collect();
    assert_eq!(accepted.len(), 3, "{log}");
    for line in &accepted {
        assert!(
            line.contains("connection{path=\"/ws/chat/metrics/\" channel=specific.")
                && line.contains("peer=127.0.0.1:"),
            "{line}"
        );
    }
    let closed = log
        .lines()
        .filter(|l| l.contains("connection closed code=1005 reason=\"client\""))
        .count();
    assert_eq!(closed, 3, "{log}");
    assert!(log.contains("websocket handshake refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_layer_and_healthz_the_process() {
    let Some(mut redis) = test_support::redis::OwnRedis::start().await else {
        return;
    };
    let url = redis.url();
    let mut chat = Program::start(env!("CARGO_BIN_EXE_chat"), &["--redis", &url]).await;
    let probe = |what: &'static str| {
        let addr = chat.addr;
        async move {
            let r = reqwest::get(format!("http://{addr}/{what}")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(probe("healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(probe("readyz").await, (200, "ready\n".to_owned()));
    redis.kill();
    let (status, body) = probe("readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "channel layer unavailable\n")
    );
    assert_eq!(probe("healthz").await.0, 200, "the process still serves");
    redis.restart().await;
    let mut ready = false;
    for _ in 0..100 {
        if probe("readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready again once Redis is back");
    chat.terminate();
    let status = chat.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status:?}");
}
