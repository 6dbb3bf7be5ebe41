//! The call right after Redis dropped the layer's connections (`CLIENT KILL`, as an idle
//! timeout, a proxy or a failover does) succeeds: the layer reconnects and sends it, instead
//! of handing the caller the dead connection's "broken pipe". Each layer connects as an ACL
//! user of its own, so that killing that user's connections touches no other test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard_core::Layer;
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use test_support::layers::{msg, recv};
use test_support::redis::{AclUser, fresh_prefix, url};

async fn first_calls_after_a_kill_succeed(pubsub: bool) {
    let Some(server) = url() else { return };
    let user = AclUser::new(&server, &[]).await;
    let cfg = RedisConfig::new(user.url()).prefix(fresh_prefix());
    let make = async || {
        if pubsub {
            Layer::new(RedisPubSubLayer::connect(cfg.clone()).await.unwrap())
        } else {
            Layer::new(RedisLayer::connect(cfg.clone()).await.unwrap())
        }
    };
    let (a, b) = (make().await, make().await);
    let ch = b.new_channel().await.unwrap();
    b.group_add("room", &ch).await.unwrap();
    a.group_send("room", msg("before", 0)).await.unwrap();
    assert_eq!(recv(&b, &ch).await, msg("before", 0));

    // Each call, right after the kill, on connections that are dead.
    for (i, call) in ["group_send", "group_add", "send", "group_discard", "flush"]
        .into_iter()
        .enumerate()
    {
        assert!(user.kill_connections().await > 0, "no connection to kill");
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            match call {
                "group_send" => a.group_send("room", msg("after", i as i64)).await,
                "group_add" => b.group_add("other", &ch).await,
                "send" => a.send(&ch, msg("direct", i as i64)).await,
                "group_discard" => b.group_discard("other", &ch).await,
                _ => a.flush().await,
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{call} hung after the kill"));
        assert!(
            r.is_ok(),
            "{call} right after the connections were killed: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_calls_right_after_a_kill_succeed() {
    first_calls_after_a_kill_succeed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_calls_right_after_a_kill_succeed() {
    first_calls_after_a_kill_succeed(true).await;
}
