//! Redis going away and coming back, with chat clients connected and messages flowing: calls
//! fail within a bounded time (no hang, no panic), WebSockets stay up, and once a new
//! redis-server runs on the same port the layer works again in the same process — the receive
//! loop reconnects and the core layer writes its memberships again; the pub/sub layer
//! resubscribes.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use switchboard::{Layer, LayerError};
use test_support::redis::OwnRedis;
use test_support::ws;

/// A layer call must end within this while Redis is away.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

async fn survives_a_redis_restart(pubsub: bool) {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let cfg = RedisConfig::new(redis.url()).command_timeout(COMMAND_TIMEOUT);
    let layer = if pubsub {
        Layer::new(RedisPubSubLayer::connect(cfg).await.unwrap())
    } else {
        Layer::new(RedisLayer::connect(cfg).await.unwrap())
    };
    let addr = test_support::serve(chat::router(layer.clone(), chat::Settings::default())).await;
    let mut ann = ws(addr, "/ws/chat/lobby/?nickname=ann").await;
    let mut bob = ws(addr, "/ws/chat/lobby/?nickname=bob").await;
    ann.send_json(json!({"message": "before"})).await;
    assert_eq!(ann.recv_json().await["message"], "before");
    assert_eq!(bob.recv_json().await["message"], "before");

    // Messages keep flowing from a background sender while Redis dies and comes back.
    let (sent_ok, sent_err) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flow = {
        let (layer, ok, err) = (layer.clone(), sent_ok.clone(), sent_err.clone());
        tokio::spawn(async move {
            for i in 0..10_000u64 {
                let m = json!({"type": "chat.message", "room": "lobby", "user": "bot", "message": i.to_string()});
                match layer.group_send("chat_lobby", m).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => err.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    redis.kill();

    // Every kind of call that needs Redis fails, in bounded time, with a backend error.
    let bound = COMMAND_TIMEOUT + Duration::from_secs(1);
    for what in ["group_send", "send", "group_add"] {
        let started = Instant::now();
        let r = tokio::time::timeout(bound + Duration::from_secs(5), async {
            match what {
                "group_send" => {
                    layer
                        .group_send("chat_lobby", json!({"type": "chat.message"}))
                        .await
                }
                "send" => layer.send("worker.jobs", json!({"type": "job.run"})).await,
                _ => {
                    let ch = layer.new_channel().await?;
                    layer.group_add("chat_lobby", &ch).await
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} hung while redis was down"));
        let took = started.elapsed();
        assert!(
            matches!(r, Err(LayerError::Backend(_) | LayerError::Timeout(_))),
            "{what} while redis is down: {r:?}"
        );
        assert!(
            took <= bound,
            "{what} took {took:?} to fail (bound {bound:?})"
        );
    }

    // The WebSockets stay up: a client's message is answered with an error frame, which tells
    // a reference, not where Redis is or what it said.
    ann.send_json(json!({"message": "while redis is down"}))
        .await;
    loop {
        let frame = ann.recv_json().await;
        if frame["type"] == "error" {
            let text = frame["error"].as_str().unwrap();
            assert!(text.contains("(reference "), "{frame}");
            let port = redis.port.to_string();
            for internal in ["127.0.0.1", port.as_str(), "redis", "refused", "os error"] {
                assert!(
                    !text.contains(internal),
                    "the client was told {internal:?}: {frame}"
                );
            }
            break;
        }
        // Group messages sent just before the kill may still arrive.
        assert_eq!(frame["type"], "chat.message", "{frame}");
    }

    redis.restart().await;

    // Without restarting anything here, the room works again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut attempt = 0;
    'recovered: loop {
        assert!(
            Instant::now() < deadline,
            "the layer did not recover after redis came back"
        );
        attempt += 1;
        let text = format!("after {attempt}");
        ann.send_json(json!({"message": text})).await;
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            let Ok(frame) = tokio::time::timeout(Duration::from_millis(700), bob.recv_json()).await
            else {
                break;
            };
            if frame["message"] == text.as_str() {
                break 'recovered;
            }
        }
    }
    let errors_during_outage = sent_err.load(Ordering::Relaxed);
    let ok_before = sent_ok.load(Ordering::Relaxed);
    assert!(
        errors_during_outage > 0,
        "the background sender saw the outage"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sent_ok.load(Ordering::Relaxed) > ok_before,
        "the background sender works again"
    );
    flow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_survives_a_redis_restart() {
    survives_a_redis_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_survives_a_redis_restart() {
    survives_a_redis_restart(true).await;
}
