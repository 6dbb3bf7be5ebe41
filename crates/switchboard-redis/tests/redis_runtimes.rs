//! channels_redis's own tests of a layer used across event loops and reconnects, ported to
//! both Redis layers: `test_double_receive` and `test_repeated_group_send_with_async_to_sync`
//! (Django's `async_to_sync` runs each call on an event loop of its own: here, a layer made on
//! one tokio runtime that has ended, used from new ones), and `test_auto_reconnect` (the
//! layer's connections closed under it, twice); and a reconnect that an ended runtime left
//! half done. Each test has a redis-server of its own, so that `CLIENT KILL` and a restart
//! touch no other test.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use switchboard_core::Layer;
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use test_support::layers::{msg, raw};
use test_support::redis::{OwnRedis, fresh_prefix};

/// How long one call may take before the test calls it hung.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Runs `f` on a runtime of its own, which ends (with every task spawned on it) when `f` is
/// done: what `async_to_sync` does with an event loop.
fn on_new_runtime<T>(what: &str, f: impl Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt
        .block_on(async { tokio::time::timeout(CALL_LIMIT, f).await })
        .unwrap_or_else(|_| panic!("{what} hung on a new runtime"));
    drop(rt);
    out
}

/// A runtime that lives for the whole test: the test's redis-server and the "other process".
fn harness() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

async fn make(pubsub: bool, cfg: &RedisConfig) -> Layer {
    if pubsub {
        Layer::new(RedisPubSubLayer::connect(cfg.clone()).await.unwrap())
    } else {
        Layer::new(RedisLayer::connect(cfg.clone()).await.unwrap())
    }
}

/// `test_double_receive`: channels made, sent to and received on from event loops that each
/// end after the call; the layer itself made on one that has ended too. Messages come from
/// another process (through Redis), and the layer sends to that process from a new loop.
fn double_receive(pubsub: bool) {
    let main = harness();
    let Some(redis) = main.block_on(OwnRedis::start()) else {
        return;
    };
    let cfg = RedisConfig::new(redis.url()).prefix(fresh_prefix());
    let layer = on_new_runtime("connect", make(pubsub, &cfg));
    let other = main.block_on(make(pubsub, &cfg));

    let ch1 = on_new_runtime("new_channel", layer.new_channel()).unwrap();
    let ch2 = on_new_runtime("new_channel", layer.new_channel()).unwrap();
    // Each receive on a runtime of its own, while the other process sends (pub/sub keeps
    // nothing for a process whose subscription does not run: its runtime must be there).
    for (ch, n) in [(&ch2, 2), (&ch1, 1)] {
        let ty = format!("test.message.{n}");
        let got = std::thread::scope(|s| {
            let receiving = s.spawn(|| on_new_runtime("receive", layer.receive(ch)));
            main.block_on(async {
                wait_listening(&redis.url(), pubsub).await;
                other.send(ch, msg(&ty, n)).await.unwrap();
            });
            receiving.join().unwrap()
        });
        assert_eq!(got.unwrap(), msg(&ty, n));
    }

    // And the other way: the layer's command connection, from yet another loop.
    let back = main.block_on(other.new_channel()).unwrap();
    let sent = on_new_runtime("send", layer.send(&back, msg("back", 3)));
    assert!(sent.is_ok(), "send from a new runtime: {sent:?}");
    let got = main.block_on(async { tokio::time::timeout(CALL_LIMIT, other.receive(&back)).await });
    assert_eq!(got.unwrap().unwrap(), msg("back", 3));
    let flushed = on_new_runtime("flush", layer.flush());
    assert!(flushed.is_ok(), "flush from a new runtime: {flushed:?}");
}

/// `test_repeated_group_send_with_async_to_sync`: group sends from event loops that each end
/// after the call succeed (channels_redis's failure was a `RuntimeError` on the second), and
/// reach a member in another process.
fn repeated_group_send(pubsub: bool) {
    let main = harness();
    let Some(redis) = main.block_on(OwnRedis::start()) else {
        return;
    };
    let cfg = RedisConfig::new(redis.url()).prefix(fresh_prefix());
    let layer = on_new_runtime("connect", make(pubsub, &cfg));
    let other = main.block_on(make(pubsub, &cfg));
    let member = main.block_on(async {
        let ch = other.new_channel().await.unwrap();
        other.group_add("room", &ch).await.unwrap();
        ch
    });
    for i in 0..3 {
        let r = on_new_runtime(
            "group_send",
            layer.group_send("room", msg("test.message", i)),
        );
        assert!(r.is_ok(), "group_send {i} from a new runtime: {r:?}");
        let got =
            main.block_on(async { tokio::time::timeout(CALL_LIMIT, other.receive(&member)).await });
        assert_eq!(got.unwrap().unwrap(), msg("test.message", i));
    }
    // Group membership of the layer's own channels, from new loops too.
    let mine = on_new_runtime("new_channel", layer.new_channel()).unwrap();
    let added = on_new_runtime("group_add", layer.group_add("room", &mine));
    assert!(added.is_ok(), "group_add from a new runtime: {added:?}");
    let got = std::thread::scope(|s| {
        let receiving = s.spawn(|| on_new_runtime("receive", layer.receive(&mine)));
        main.block_on(async {
            wait_listening(&redis.url(), pubsub).await;
            if pubsub {
                wait_group_subscribers(&redis.url(), "room", 2).await;
            }
            other.group_send("room", msg("to.both", 9)).await.unwrap();
        });
        receiving.join().unwrap()
    });
    assert_eq!(got.unwrap(), msg("to.both", 9));
}

/// For the pub/sub layer, waits (up to 5 s) until both processes' subscriptions listen again:
/// each subscribes one pattern (after its groups: the pattern there means the rest is too),
/// and the layer whose runtime ended subscribes again on the receive's runtime.
async fn wait_listening(url: &str, pubsub: bool) {
    if pubsub {
        wait_patterns(url, 2).await;
    }
}

/// Waits (up to 5 s) until the server has at least `n` pattern subscriptions.
async fn wait_patterns(url: &str, n: i64) {
    let mut c = raw(url).await;
    for _ in 0..500 {
        let numpat: i64 = redis::cmd("PUBSUB")
            .arg("NUMPAT")
            .query_async(&mut c)
            .await
            .unwrap();
        if numpat >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} pattern subscriptions were not there within 5 s");
}

/// Waits (up to 5 s) until the Redis channel of the pub/sub layer's `group` has at least `n`
/// subscribers: a group send published before then reaches fewer processes.
async fn wait_group_subscribers(url: &str, group: &str, n: i64) {
    let mut c = raw(url).await;
    for _ in 0..500 {
        let names: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(format!("*{group}"))
            .query_async(&mut c)
            .await
            .unwrap();
        if let [name] = names.as_slice() {
            let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(name)
                .query_async(&mut c)
                .await
                .unwrap();
            if subscribers >= n {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the channel of group {group} did not have {n} subscribers within 5 s");
}

/// Closes every client connection of the server but the one asking (`SKIPME yes`): the
/// layers' command, blocking-pop and subscription connections. Returns how many it closed.
async fn kill_all(url: &str) -> i64 {
    let mut c = raw(url).await;
    let mut n = 0;
    for kind in ["normal", "pubsub"] {
        n += redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query_async::<i64>(&mut c)
            .await
            .unwrap();
    }
    n
}

/// `test_auto_reconnect`: group_add and group_discard right after the layer's connections
/// were closed, then again closed; the group send reaches the members that are in, and only
/// them.
async fn auto_reconnect(pubsub: bool) {
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    let cfg = RedisConfig::new(redis.url()).prefix(fresh_prefix());
    let layer = make(pubsub, &cfg).await;
    let ch1 = layer.new_channel().await.unwrap();
    let ch2 = layer.new_channel().await.unwrap();
    let ch3 = layer.new_channel().await.unwrap();
    layer.group_add("test-group", &ch1).await.unwrap();
    layer.group_add("test-group", &ch2).await.unwrap();
    assert!(kill_all(&redis.url()).await > 0);
    let added = layer.group_add("test-group", &ch3).await;
    assert!(added.is_ok(), "group_add right after the kill: {added:?}");
    let discarded = layer.group_discard("test-group", &ch2).await;
    assert!(
        discarded.is_ok(),
        "group_discard after the kill: {discarded:?}"
    );
    assert!(kill_all(&redis.url()).await > 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = layer.group_send("test-group", msg("message.1", 1)).await;
    assert!(sent.is_ok(), "group_send right after the kill: {sent:?}");
    for ch in [&ch1, &ch3] {
        let got = tokio::time::timeout(Duration::from_secs(5), layer.receive(ch)).await;
        assert_eq!(
            got.expect("a member got nothing").unwrap(),
            msg("message.1", 1)
        );
    }
    let removed = tokio::time::timeout(Duration::from_millis(500), layer.receive(&ch2)).await;
    assert!(removed.is_err(), "the discarded channel got {removed:?}");
}

#[test]
fn core_layer_double_receive_across_runtimes() {
    double_receive(false);
}

#[test]
fn pubsub_layer_double_receive_across_runtimes() {
    double_receive(true);
}

#[test]
fn core_layer_repeated_group_send_across_runtimes() {
    repeated_group_send(false);
}

#[test]
fn pubsub_layer_repeated_group_send_across_runtimes() {
    repeated_group_send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_auto_reconnect() {
    auto_reconnect(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_auto_reconnect() {
    auto_reconnect(true).await;
}

/// A reconnect that an ended runtime left half done. The layer is made on a runtime that has
/// ended (its command connection went with it); Redis is away; a send on a new runtime starts
/// connecting again, is refused, and that runtime ends (the call cut short) while the
/// reconnect waits its back-off (100–200 ms). Redis back, a send from yet another runtime goes
/// through. redis-rs's reconnect is a future shared by its callers, with the timers of the
/// runtime that polled it: while one connection served every runtime, this second send polled
/// the ended runtime's timer and panicked ("A Tokio 1.x context was found, but it is being
/// shutdown").
fn reconnect_left_by_an_ended_runtime(pubsub: bool) {
    let main = harness();
    let Some(mut redis) = main.block_on(OwnRedis::start()) else {
        return;
    };
    let cfg = RedisConfig::new(redis.url()).prefix(fresh_prefix());
    let layer = on_new_runtime("connect", make(pubsub, &cfg));
    let other = main.block_on(make(pubsub, &cfg));
    let back = main.block_on(other.new_channel()).unwrap();

    redis.kill();
    let cut_short = on_new_runtime("a send cut short", async {
        tokio::time::timeout(
            Duration::from_millis(50),
            layer.send(&back, msg("cut.short", 1)),
        )
        .await
    });
    assert!(
        cut_short.is_err(),
        "a send with Redis away did not wait for the reconnect: {cut_short:?}"
    );
    main.block_on(async {
        redis.restart().await;
        if pubsub {
            wait_patterns(&redis.url(), 1).await;
        }
    });

    let sent = on_new_runtime("send", layer.send(&back, msg("after", 2)));
    assert!(
        sent.is_ok(),
        "send after the ended runtime's reconnect: {sent:?}"
    );
    let got = main.block_on(async { tokio::time::timeout(CALL_LIMIT, other.receive(&back)).await });
    assert_eq!(got.unwrap().unwrap(), msg("after", 2));
}

#[test]
fn core_layer_reconnect_left_by_an_ended_runtime() {
    reconnect_left_by_an_ended_runtime(false);
}

#[test]
fn pubsub_layer_reconnect_left_by_an_ended_runtime() {
    reconnect_left_by_an_ended_runtime(true);
}
