//! What the Redis layers report through the metrics facade, read back from a recorder
//! installed for this test binary: a call that found its connection killed and was sent again
//! counts a `command` reconnect (and no failure); a command that fails (Redis gone) counts a
//! command failure and one layer operation error of its kind.
#![allow(clippy::unwrap_used)]

use switchboard_core::Layer;
use switchboard_redis::{RedisConfig, RedisLayer};
use test_support::layers::{msg, recv};
use test_support::metrics::Recorded;
use test_support::redis::{AclUser, OwnRedis, fresh_prefix, url};

const RECONNECTS: &str = "switchboard_redis_reconnects_total";
const FAILURES: &str = "switchboard_redis_command_failures_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_failures_are_counted() {
    let mut m = Recorded::install();

    // Killed connections: the next call is sent again (a `command` reconnect).
    let Some(server) = url() else { return };
    let user = AclUser::new(&server, &[]).await;
    // Members read over the command connection every time (no cache), so that the send after
    // the kill is one that finds its connection closed.
    let cfg = RedisConfig::new(user.url())
        .prefix(fresh_prefix())
        .cache_groups(false);
    let layer = Layer::new(RedisLayer::connect(cfg).await.unwrap());
    let ch = layer.new_channel().await.unwrap();
    layer.group_add("room", &ch).await.unwrap();
    // The receive loop is connected and waiting in a blocking pop before the kill.
    layer.group_send("room", msg("before", 0)).await.unwrap();
    assert_eq!(recv(&layer, &ch).await, msg("before", 0));
    assert_eq!(m.counter(RECONNECTS, &[]), 0);
    assert!(user.kill_connections().await > 0);
    layer.group_send("room", msg("after", 1)).await.unwrap();
    assert_eq!(recv(&layer, &ch).await, msg("after", 1));
    assert!(m.counter(RECONNECTS, &[("kind", "command")]) >= 1);
    assert_eq!(m.counter(FAILURES, &[]), 0, "no command failed");

    // Redis gone: the failed command and the failed layer operation are counted.
    let Some(mut own) = OwnRedis::start().await else {
        return;
    };
    let gone = Layer::new(
        RedisLayer::connect(RedisConfig::new(own.url()))
            .await
            .unwrap(),
    );
    own.kill();
    assert!(gone.group_send("room", msg("lost", 2)).await.is_err());
    assert!(m.counter(FAILURES, &[]) >= 1);
    let op_errors = "switchboard_layer_operation_errors_total";
    assert_eq!(m.counter(op_errors, &[("op", "group_send")]), 1);
    assert_eq!(m.counter(op_errors, &[("op", "send")]), 0);
}
