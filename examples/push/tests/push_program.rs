//! The push gateway as a program (the `push` binary, built by cargo for these tests): its
//! flags, and two gateway processes on one Redis (the real redis-server at
//! `SWITCHBOARD_REDIS_URL`), on the core layer and on the pub/sub layer — a POST to either
//! reaches the subscribers of both over every transport, positions and history (the layer's)
//! are shared, and a DELETE on one ends the subscribers of the other.
#![allow(clippy::unwrap_used)]

mod common;

use common::NextMessage;

use std::time::Duration;

use common::{Gw, ids, long_poll, publish_ok, sse};
use serde_json::Value;
use test_support::program::Program;

/// The gateway binary cargo built for these tests.
const PUSH: &str = env!("CARGO_BIN_EXE_push");

async fn spawn_gateway(extra: &[&str]) -> (Program, Gw) {
    let program = Program::start(PUSH, extra).await;
    // The handle's layer and registry are not used: the gateway is another process.
    let settings = common::settings();
    let gw = Gw {
        addr: program.addr,
        layer: switchboard::Layer::new(switchboard::InMemoryLayer::default()),
        registry: push::memory_registry(&settings),
    };
    (program, gw)
}

#[tokio::test]
async fn the_program_serves_the_page_and_honours_its_flags() {
    let (_child, gw) = spawn_gateway(&[
        "--store-messages",
        "2",
        "--message-template",
        "~id~:~text~",
        "--max-channel-id-length",
        "5",
    ])
    .await;
    let page = common::client()
        .get(gw.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("EventSource"), "the demo page");
    for text in ["a", "b", "c"] {
        common::publish_ok(&gw, "news", text).await;
    }
    let r = common::client()
        .get(gw.url("/lp/news.b10"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "2:b\n3:c",
        "2 kept, through the template"
    );
    let (status, _) = common::publish(&gw, "toolong", "x").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_program_says_what_is_wrong_with_a_bad_flag() {
    let out = std::process::Command::new(PUSH)
        .args(["--publish-allow", "not-a-network"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--publish-allow"), "{err}");
}

/// The scale-out check: two gateway processes with `--redis` on one Redis. Live fan-out,
/// positions and history go through the channel layer, the channel registry through its keys.
async fn two_gateway_processes_share_fan_out_ids_and_history(layer: &str) {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let registry = format!("{prefix}-registry:");
    let flags = [
        "--redis",
        url.as_str(),
        "--layer",
        layer,
        "--redis-prefix",
        prefix.as_str(),
        "--registry-prefix",
        registry.as_str(),
        "--longpoll-timeout",
        "5",
    ];
    let ((_a_process, a), (_b_process, b)) =
        tokio::join!(spawn_gateway(&flags), spawn_gateway(&flags));

    // Every transport on B, WebSocket and EventSource on A. A WebSocket is subscribed once its
    // handshake is done, an EventSource or stream once its first chunk came.
    let mut ws_on_b = test_support::ws(b.addr, "/ws/news").await;
    let mut sse_on_b = sse(&b, "/ev/news", None).await;
    let mut stream_on_b = common::stream(&b, "/sub/news").await;
    let mut ws_on_a = test_support::ws(a.addr, "/ws/news").await;
    let mut sse_on_a = sse(&a, "/ev/news", None).await;

    // A long-poll on B: answered by the first message.
    let (polled, answer) = tokio::join!(long_poll(&b, "/lp/news", None), async {
        common::wait_subscribers(&b, "news", 4).await;
        publish_ok(&a, "news", "from a").await
    });
    assert_eq!(answer["id"], 1);
    assert_eq!(polled.0, 200);
    assert_eq!(texts(&polled.2), ["from a"]);
    assert_eq!(ws_on_b.recv_json().await["text"], "from a");
    let on_b = sse_on_b.next_event().await;
    assert_eq!(on_b.json()["text"], "from a");
    let cursor_after_one = on_b.id.unwrap();
    assert_eq!(Some(cursor_after_one.as_str()), answer["position"].as_str());
    assert_eq!(polled.1, cursor_after_one, "the long-poll's Etag");
    assert_eq!(stream_on_b.next_message().await["text"], "from a");
    assert_eq!(ws_on_a.recv_json().await["text"], "from a");
    assert_eq!(sse_on_a.next_event().await.json()["text"], "from a");

    let answer = publish_ok(&b, "news", "from b").await;
    assert_eq!(answer["id"], 2, "one history for both");
    for (name, e) in [
        ("WebSocket on A", ws_on_a.recv_json().await),
        ("EventSource on A", sse_on_a.next_event().await.json()),
        ("WebSocket on B", ws_on_b.recv_json().await),
        ("EventSource on B", sse_on_b.next_event().await.json()),
        ("stream on B", stream_on_b.next_message().await),
    ] {
        assert_eq!(
            (&e["position"], e["text"].as_str(), e["channel"].as_str()),
            (&answer["position"], Some("from b"), Some("news")),
            "{name}"
        );
    }
    assert!(ws_on_a.recv_nothing(150).await, "nothing twice on A");
    assert!(ws_on_b.recv_nothing(50).await, "nothing twice on B");

    // History is shared: backtrack on either instance sees both messages, and a client resumes
    // on A from the cursor B gave it.
    for gw in [&a, &b] {
        let (status, etag, messages) = long_poll(gw, "/lp/news.b5", None).await;
        assert_eq!(
            (status, Some(etag.as_str())),
            (200, answer["position"].as_str())
        );
        assert_eq!(ids(&messages), [1, 2]);
        assert_eq!(texts(&messages), ["from a", "from b"]);
    }
    let mut resumed_on_a = sse(&a, "/ev/news", Some(&cursor_after_one)).await;
    assert_eq!(common::id(&resumed_on_a.next_event().await.json()), 2);
    let mut backtrack_on_b = test_support::ws(b.addr, "/ws/news.b1").await;
    assert_eq!(common::id(&backtrack_on_b.recv_json().await), 2);

    let (keys, _) = test_support::redis::groups_left(&url, &prefix).await;
    assert!(!keys.is_empty(), "the subscribers' groups are in Redis");

    // A DELETE on A ends the subscribers on B.
    let r = common::client()
        .delete(a.url("/pub/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ws_on_b.recv_json().await["type"], "push.deleted");
    assert_eq!(sse_on_b.next_event().await.json()["type"], "push.deleted");
    assert!(sse_on_b.ends_within(Duration::from_secs(2)).await);
    assert_eq!(stream_on_b.next_message().await["type"], "push.deleted");
    assert!(stream_on_b.ends_within(Duration::from_secs(2)).await);
    common::wait_subscribers(&b, "news", 0).await;
    // A's subscribers got the notice too; with them gone, no group is left in Redis.
    assert_eq!(ws_on_a.recv_json().await["type"], "push.deleted");
    assert_eq!(sse_on_a.next_event().await.json()["type"], "push.deleted");
    assert!(sse_on_a.ends_within(Duration::from_secs(2)).await);
    common::wait_subscribers(&a, "news", 0).await;
    test_support::redis::wait_no_groups_left(&url, &prefix).await;
}

fn texts(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn two_gateway_processes_on_the_core_layer() {
    two_gateway_processes_share_fan_out_ids_and_history("core").await;
}

#[tokio::test]
async fn two_gateway_processes_on_the_pubsub_layer() {
    two_gateway_processes_share_fan_out_ids_and_history("pubsub").await;
}

/// The start-up log names the Redis it uses — with the password hidden, for the channel registry
/// as for the channel layer.
#[tokio::test]
async fn the_start_up_log_hides_the_redis_password() {
    let Some(redis) =
        test_support::redis::OwnRedis::start_with(&["--requirepass", "hunter2-secret"]).await
    else {
        return;
    };
    let redis_port = redis.port;
    let dir = test_support::TempDir::new("push-redact");
    let log_path = dir.path().join("output.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let url = format!("redis://:hunter2-secret@127.0.0.1:{redis_port}");
    let addr = format!("127.0.0.1:{}", test_support::free_port());
    let mut child = test_support::ChildGuard(
        std::process::Command::new(PUSH)
            .args(["--addr", &addr, "--redis", &url])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        if out.contains("push gateway on") {
            break out;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the gateway exited ({status}):\n{out}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no start-up line after 20 s:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        !out.contains("hunter2"),
        "the password is in the log:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "channel registry in redis at redis://***@127.0.0.1:{redis_port}"
        )),
        "{out}"
    );
}
