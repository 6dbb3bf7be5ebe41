//! Two tweets processes (the built `tweets` example binary) on one Redis (the real redis-server
//! at `SWITCHBOARD_REDIS_URL`), on the core layer and on the pub/sub layer, each with a listener
//! for the same term: each process runs its own upstream for its own listener (group names
//! carry the process's instance id), so each listener gets the posts, in order, paced, none
//! twice; when both leave, both upstreams end and Redis keeps no group of theirs.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::program::Program;
use test_support::{WsClient, ws};

const TERM: &str = "#RustLang";
/// `--interval`: at most one post per listener per 300 ms.
const INTERVAL: Duration = Duration::from_millis(300);

async fn start(redis: &str, prefix: &str, layer: &str) -> Program {
    let interval = INTERVAL.as_secs_f64().to_string();
    // 100 corpus posts a second: a loop of the 420-post corpus takes 4.2 s, longer than a test
    // listens, so no post may come twice; #RustLang posts come every few hundred ms.
    Program::start(
        env!("CARGO_BIN_EXE_tweets"),
        &[
            "--redis",
            redis,
            "--layer",
            layer,
            "--redis-prefix",
            prefix,
            "--interval",
            &interval,
            "--replay-rate",
            "100",
        ],
    )
    .await
}

async fn stats(addr: SocketAddr) -> Value {
    reqwest::get(format!("http://{addr}/stats.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The next `n` tweets, with when each came.
async fn tweets(c: &mut WsClient, n: usize) -> Vec<(Instant, Value)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let t = c.recv_json().await;
        assert_eq!(t["type"], "tweet", "{t}");
        let text = t["text"].as_str().unwrap();
        assert!(
            text.to_lowercase().contains(&TERM.to_lowercase()),
            "{text:?} does not match {TERM}"
        );
        out.push((Instant::now(), t));
    }
    out
}

/// Each post once, in corpus order (ids grow along the corpus), at most one per interval.
fn once_in_order_and_paced(name: &str, got: &[(Instant, Value)]) {
    let ids: Vec<u64> = got
        .iter()
        .map(|(_, t)| t["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{name}: posts twice or out of order: {ids:?}"
    );
    for w in got.windows(2) {
        let gap = w[1].0 - w[0].0;
        // Half the interval: a second upstream feeding this listener would send its copy
        // within milliseconds; delivery jitter on a busy machine is far below 150 ms.
        assert!(
            gap >= INTERVAL / 2,
            "{name}: two posts {gap:?} apart, under the {INTERVAL:?} interval: {ids:?}"
        );
    }
}

async fn a_listener_on_each_process(layer: &str) {
    let Some(redis) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let (a, b) = tokio::join!(start(&redis, &prefix, layer), start(&redis, &prefix, layer));
    let mut on_a = ws(a.addr, "/ws/map/").await;
    let mut on_b = ws(b.addr, "/ws/map/").await;
    let listen = json!({"type": "listen", "message": TERM});
    on_a.send_json(listen.clone()).await;
    on_b.send_json(listen).await;
    let listening = json!({"type": "listening", "message": TERM});
    assert_eq!(on_a.recv_json().await, listening);
    assert_eq!(on_b.recv_json().await, listening);

    let (got_a, got_b) = tokio::join!(tweets(&mut on_a, 4), tweets(&mut on_b, 4));
    once_in_order_and_paced("listener on A", &got_a);
    once_in_order_and_paced("listener on B", &got_b);
    assert_eq!(
        got_a[0].1["id"], got_b[0].1["id"],
        "each upstream starts at the corpus's first #RustLang post"
    );

    // One upstream per process, each with its one listener.
    let (stats_a, stats_b) = (stats(a.addr).await, stats(b.addr).await);
    for s in [&stats_a, &stats_b] {
        assert_eq!(
            (&s["upstreams"], &s["running"], &s["listeners"]),
            (&json!(1), &json!(1), &json!(1)),
            "{s}"
        );
    }
    assert_ne!(stats_a["instance"], stats_b["instance"]);
    let (keys, _) = test_support::redis::groups_left(&redis, &prefix).await;
    assert_eq!(keys.len(), 2, "one group per process in Redis: {keys:?}");

    // Both leave: A stops (posts may still come before the answer), B closes its socket.
    on_a.send_json(json!({"type": "stop"})).await;
    loop {
        let m = on_a.recv_json().await;
        if m["type"] == "stopped" {
            break;
        }
        assert_eq!(m["type"], "tweet", "{m}");
    }
    on_b.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (sa, sb) = (stats(a.addr).await, stats(b.addr).await);
        let ended = |s: &Value| s["upstreams"] == 0 && s["running"] == 0 && s["listeners"] == 0;
        if ended(&sa) && ended(&sb) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstreams did not end after both listeners left: A {sa}, B {sb}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    test_support::redis::wait_no_groups_left(&redis, &prefix).await;
    assert!(on_a.recv_nothing(2 * INTERVAL.as_millis() as u64).await);
}

#[tokio::test]
async fn a_listener_on_each_process_on_the_core_layer() {
    a_listener_on_each_process("core").await;
}

#[tokio::test]
async fn a_listener_on_each_process_on_the_pubsub_layer() {
    a_listener_on_each_process("pubsub").await;
}
