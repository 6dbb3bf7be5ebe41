//! Two chat processes (the built `chat` binary) on Redis as production runs it, configured by
//! the example's flags: over TLS with client certificates (one trusting the CA by
//! `--redis-ca`, one through the system roots, `SSL_CERT_FILE`), and behind Sentinel, where
//! the master is killed while clients talk: the replica takes over, the room works again, and
//! no WebSocket closes and no process restarts; and on Redis Cluster (`--redis-cluster`).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use test_support::program::Program;
use test_support::sentinel::{MASTER, SentinelSet};
use test_support::{WsClient, ws};

/// Sends from `from` until `to` hears one of them; returns how many were sent. A WebSocket
/// that closes fails the test (the client panics on anything but a text frame).
async fn until_heard(from: &mut WsClient, to: &mut WsClient, label: &str, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    for attempt in 1.. {
        assert!(
            Instant::now() < deadline,
            "{label}: nothing crossed within {within:?}"
        );
        let text = format!("{label} {attempt}");
        from.send_json(json!({"message": text})).await;
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            let Some(frame) = to.recv_json_within(300).await else {
                break;
            };
            if frame["message"] == text.as_str() {
                return attempt;
            }
        }
        // The sender hears its own messages, or an error frame while Redis is away.
        while from.recv_json_within(1).await.is_some() {}
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_rooms_over_tls_with_client_certificates() {
    let Some(server) = test_support::tls::shared() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let (url, c) = (server.url(), &server.certs);
    let (ca, cert, key) = (
        c.ca.display().to_string(),
        c.client_cert.display().to_string(),
        c.client_key.display().to_string(),
    );
    let common = [
        "--redis",
        &url,
        "--redis-prefix",
        &prefix,
        "--redis-cert",
        &cert,
        "--redis-key",
        &key,
    ];
    let bin = env!("CARGO_BIN_EXE_chat");
    let with_ca: Vec<&str> = common.iter().copied().chain(["--redis-ca", &ca]).collect();
    let env = [("SSL_CERT_FILE", ca.as_str())];
    let (one, two) = tokio::join!(
        Program::start(bin, &with_ca),
        // No --redis-ca: the system roots, here the test CA through SSL_CERT_FILE.
        Program::start_with_env(bin, &common, &env)
    );
    let mut ann = ws(one.addr, "/ws/chat/lobby/?nickname=ann").await;
    let mut bob = ws(two.addr, "/ws/chat/lobby/?nickname=bob").await;
    until_heard(&mut ann, &mut bob, "one to two", Duration::from_secs(10)).await;
    until_heard(&mut bob, &mut ann, "two to one", Duration::from_secs(10)).await;
}

async fn rooms_survive_a_failover(layer: &str) {
    let Some(mut set) = SentinelSet::start().await else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let sentinels = set.sentinel_addrs().join(",");
    let args = [
        "--redis-sentinel",
        &sentinels,
        "--redis-master",
        MASTER,
        "--redis-prefix",
        &prefix,
        "--layer",
        layer,
    ];
    let bin = env!("CARGO_BIN_EXE_chat");
    let (mut one, mut two) = tokio::join!(Program::start(bin, &args), Program::start(bin, &args));
    let mut ann = ws(one.addr, "/ws/chat/lobby/?nickname=ann").await;
    let mut bob = ws(two.addr, "/ws/chat/lobby/?nickname=bob").await;
    until_heard(&mut ann, &mut bob, "before", Duration::from_secs(10)).await;

    set.kill_master().await;
    let killed = Instant::now();
    let tries = until_heard(&mut ann, &mut bob, "after", Duration::from_secs(30)).await;
    let took = killed.elapsed();
    until_heard(&mut bob, &mut ann, "and back", Duration::from_secs(10)).await;
    eprintln!(
        "chat on sentinel ({layer}): a room message crossed processes again {} ms after the \
         master was killed ({tries} sends); both sockets stayed open, both processes ran on",
        took.as_millis()
    );
    assert!(one.running() && two.running(), "a chat process exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_survive_a_sentinel_failover_on_the_core_layer() {
    rooms_survive_a_failover("core").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_survive_a_sentinel_failover_on_the_pubsub_layer() {
    rooms_survive_a_failover("pubsub").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_rooms_on_a_redis_cluster() {
    let Some(cluster) = test_support::cluster::shared() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let nodes = cluster
        .urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect::<Vec<_>>()
        .join(",");
    let args = ["--redis-cluster", &nodes, "--redis-prefix", &prefix];
    let bin = env!("CARGO_BIN_EXE_chat");
    let (one, two) = tokio::join!(Program::start(bin, &args), Program::start(bin, &args));
    let mut ann = ws(one.addr, "/ws/chat/lobby/?nickname=ann").await;
    let mut bob = ws(two.addr, "/ws/chat/lobby/?nickname=bob").await;
    until_heard(&mut ann, &mut bob, "one to two", Duration::from_secs(10)).await;
    until_heard(&mut bob, &mut ann, "two to one", Duration::from_secs(10)).await;
    // A private message finds its target in the other process (the registry, on the cluster).
    let mut eve = ws(two.addr, "/ws/chat/other/?nickname=eve").await;
    eve.send_json(json!({"type": "private", "to": "ann", "message": "psst"}))
        .await;
    loop {
        let frame = ann.recv_json().await;
        if frame["type"] == "chat.private" {
            assert_eq!(
                frame,
                json!({"type": "chat.private", "from": "eve", "to": "ann", "message": "psst"})
            );
            break;
        }
    }
}
