//! Redis faults beyond kill-and-restart, under traffic, on a redis-server of each test's own:
//! frozen (SIGSTOP) for 10 s; its pub/sub connections dropped (`CLIENT KILL TYPE pubsub`, as
//! its output-buffer limit does to a slow subscriber); `FLUSHALL`; `maxmemory` reached with
//! `noeviction`. Each checks that calls fail within a bound instead of hanging, that nothing
//! panics, that the layer recovers without a restart, and prints what it measured (error
//! times, recovery times, messages lost) for docs/reliability.md.
#![allow(clippy::unwrap_used)]

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_core::{ChannelName, Layer, LayerError};
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use test_support::layers::{msg, raw};
use test_support::redis::{OwnRedis, fresh_prefix};

/// Panics on the runtimes' worker threads: the layers' background tasks (a test's own
/// assertions run on its own thread and are not counted).
static TASK_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_task_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-runtime-worker"))
            {
                TASK_PANICS.fetch_add(1, Ordering::Relaxed);
            }
            previous(info);
        }));
    });
}

async fn make(pubsub: bool, cfg: &RedisConfig) -> Layer {
    if pubsub {
        Layer::new(RedisPubSubLayer::connect(cfg.clone()).await.unwrap())
    } else {
        Layer::new(RedisLayer::connect(cfg.clone()).await.unwrap())
    }
}

fn name(pubsub: bool) -> &'static str {
    if pubsub { "pub/sub" } else { "core" }
}

/// One `group_send` of the traffic.
#[derive(Debug)]
struct Call {
    n: i64,
    /// When it started, from the start of the test.
    at: Duration,
    took: Duration,
    error: Option<LayerError>,
}

/// `group_send`s to `group`, one every `every` from `t0` until `until`.
async fn traffic(
    layer: Layer,
    group: &'static str,
    t0: Instant,
    until: Duration,
    every: Duration,
) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut n = 0;
    while t0.elapsed() < until {
        let start = Instant::now();
        let r = layer.group_send(group, msg("traffic", n)).await;
        calls.push(Call {
            n,
            at: start - t0,
            took: start.elapsed(),
            error: r.err(),
        });
        n += 1;
        tokio::time::sleep(every).await;
    }
    calls
}

/// What `ch` receives until `until` (from `t0`): each message's number and arrival, and how
/// many messages the receiver was told it missed.
async fn collect(
    layer: Layer,
    ch: ChannelName,
    t0: Instant,
    until: Duration,
) -> (Vec<(i64, Duration)>, u64) {
    let mut got = Vec::new();
    let mut rx = layer.receiver(&ch).await.unwrap();
    let mut told = 0;
    while let Some(left) = until.checked_sub(t0.elapsed()) {
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(m)) => {
                told += told_of(rx.take_missed());
                let n = m.get("n").and_then(|v| v.as_i64()).unwrap();
                got.push((n, t0.elapsed()));
            }
            Ok(Err(e)) => {
                eprintln!("receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => break,
        }
    }
    (got, told + told_of(rx.take_missed()))
}

/// What a receiver was told it missed, as a count (an interruption counts one).
fn told_of(m: switchboard_core::Missed) -> u64 {
    m.dropped + u64::from(m.interrupted)
}

/// The figures of one fault (printed whole; some are only printed).
#[derive(Debug)]
#[allow(dead_code)]
struct Figures {
    calls: usize,
    errors: usize,
    /// The longest a failing call took.
    slowest_error: Duration,
    /// The longest any call took.
    slowest_call: Duration,
    /// From the end of the fault to the end of the first call started after it that succeeded.
    calls_ok_after: Option<Duration>,
    /// From the end of the fault to the arrival of the first message sent after it.
    delivered_after: Option<Duration>,
    /// Sent without error, never received.
    lost: usize,
    /// Reported failed to the sender, received all the same (a timed-out command Redis ran).
    failed_but_delivered: usize,
    /// Messages received twice.
    duplicates: usize,
    /// Sent without error in the last second of traffic and not received (0 once recovered).
    lost_at_the_end: usize,
    /// Messages the receiver was told it missed (`take_missed`): at least one when any was
    /// lost, or the loss was silent.
    told: u64,
}

fn figures(calls: &[Call], got: &(Vec<(i64, Duration)>, u64), fault_end: Duration) -> Figures {
    let (got, told) = (&got.0, got.1);
    use std::collections::HashMap;
    let mut arrivals: HashMap<i64, Vec<Duration>> = HashMap::new();
    for &(n, at) in got {
        arrivals.entry(n).or_default().push(at);
    }
    let received = |n: i64| arrivals.contains_key(&n);
    let last_at = calls.last().map_or(Duration::ZERO, |c| c.at);
    Figures {
        calls: calls.len(),
        errors: calls.iter().filter(|c| c.error.is_some()).count(),
        slowest_error: calls
            .iter()
            .filter(|c| c.error.is_some())
            .map(|c| c.took)
            .max()
            .unwrap_or_default(),
        slowest_call: calls.iter().map(|c| c.took).max().unwrap_or_default(),
        calls_ok_after: calls
            .iter()
            .find(|c| c.at >= fault_end && c.error.is_none())
            .map(|c| c.at + c.took - fault_end),
        delivered_after: calls
            .iter()
            .filter(|c| c.at >= fault_end)
            .filter_map(|c| arrivals.get(&c.n).map(|a| a[0]))
            .min()
            .map(|a| a.saturating_sub(fault_end)),
        lost: calls
            .iter()
            .filter(|c| c.error.is_none() && !received(c.n))
            .count(),
        failed_but_delivered: calls
            .iter()
            .filter(|c| c.error.is_some() && received(c.n))
            .count(),
        duplicates: arrivals.values().filter(|a| a.len() > 1).count(),
        lost_at_the_end: calls
            .iter()
            .filter(|c| c.at + Duration::from_secs(1) >= last_at)
            .filter(|c| c.error.is_none() && !received(c.n))
            .count(),
        told,
    }
}

/// A loss is never silent: the receiver was told of one if it lost any.
fn assert_loss_told(f: &Figures) {
    assert!(
        f.lost == 0 || f.told > 0,
        "{} messages lost and the receiver was not told: {f:?}",
        f.lost
    );
}

/// A sender and a receiving process (a member of `room`) on `redis`, traffic between them
/// for `until`, and `fault` run on the side: returns the calls, what arrived, and when the
/// fault ended (from the start).
async fn under_traffic(
    pubsub: bool,
    cfg: &RedisConfig,
    every: Duration,
    until: Duration,
    fault: impl AsyncFnOnce(Instant) -> Duration,
) -> (Vec<Call>, (Vec<(i64, Duration)>, u64), Duration) {
    let sender = make(pubsub, cfg).await;
    let receiver = make(pubsub, cfg).await;
    let ch = receiver.new_channel().await.unwrap();
    receiver.group_add("room", &ch).await.unwrap();
    let t0 = Instant::now();
    let sending = tokio::spawn(traffic(sender.clone(), "room", t0, until, every));
    let receiving = tokio::spawn(collect(
        receiver.clone(),
        ch,
        t0,
        until + Duration::from_secs(2),
    ));
    let fault_end = fault(t0).await;
    let calls = sending.await.unwrap();
    let got = receiving.await.unwrap();
    (calls, got, fault_end)
}

/// Redis frozen (SIGSTOP) for 10 s under traffic, then let go (SIGCONT).
async fn frozen(pubsub: bool) {
    count_task_panics();
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    // The bound a call promises: `command_timeout` (5 s by default; 1 s here, so that the
    // freeze fails several calls).
    let timeout = Duration::from_secs(1);
    let cfg = RedisConfig::new(redis.url())
        .prefix(fresh_prefix())
        .command_timeout(timeout);
    let freeze = Duration::from_secs(10);
    let (calls, got, thawed) = under_traffic(
        pubsub,
        &cfg,
        Duration::from_millis(50),
        Duration::from_secs(14),
        async |t0| {
            tokio::time::sleep(Duration::from_millis(500)).await;
            redis.freeze();
            tokio::time::sleep(freeze).await;
            redis.thaw();
            t0.elapsed()
        },
    )
    .await;
    let f = figures(&calls, &got, thawed);
    eprintln!("FIGURES frozen 10 s ({}): {f:?}", name(pubsub));
    let kinds: Vec<String> = calls
        .iter()
        .filter_map(|c| c.error.as_ref())
        .map(|e| format!("{e}"))
        .take(3)
        .collect();
    eprintln!(
        "FIGURES frozen 10 s ({}): first errors {kinds:?}",
        name(pubsub)
    );
    assert!(f.errors > 0, "the freeze failed no call: {f:?}");
    for c in &calls {
        if let Some(e) = &c.error {
            assert!(e.is_transient(), "call {} failed with {e:?}", c.n);
        }
    }
    // Within command_timeout, plus slack for a loaded machine.
    assert!(
        f.slowest_call <= timeout + Duration::from_millis(1500),
        "a call took {:?} (command_timeout {timeout:?}): {f:?}",
        f.slowest_call
    );
    let calls_ok = f.calls_ok_after.expect("no call succeeded after the thaw");
    assert!(calls_ok <= Duration::from_secs(3), "{f:?}");
    let delivered = f.delivered_after.expect("nothing arrived after the thaw");
    assert!(delivered <= Duration::from_secs(5), "{f:?}");
    assert_eq!(f.lost_at_the_end, 0, "{f:?}");
    assert_loss_told(&f);
    assert_eq!(
        TASK_PANICS.load(Ordering::Relaxed),
        0,
        "a layer task panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_survives_a_frozen_redis() {
    frozen(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_survives_a_frozen_redis() {
    frozen(true).await;
}

async fn client_kill(url: &str, kind: &str) -> i64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg(kind)
        .query_async(&mut raw(url).await)
        .await
        .unwrap()
}

/// Redis drops the pub/sub connections (what `client-output-buffer-limit pubsub` does to a
/// subscriber that reads too slowly) under traffic: the layer subscribes again and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_resubscribes_after_its_subscription_is_killed() {
    count_task_panics();
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    let cfg = RedisConfig::new(redis.url()).prefix(fresh_prefix());
    let url = redis.url();
    let (calls, got, killed) = under_traffic(
        true,
        &cfg,
        Duration::from_millis(10),
        Duration::from_millis(2500),
        async |t0| {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let n = client_kill(&url, "pubsub").await;
            assert!(n >= 2, "killed {n} pub/sub connections");
            t0.elapsed()
        },
    )
    .await;
    let f = figures(&calls, &got, killed);
    eprintln!("FIGURES CLIENT KILL TYPE pubsub (pub/sub): {f:?}");
    assert_eq!(
        f.errors, 0,
        "publishing does not use the subscription: {f:?}"
    );
    let delivered = f.delivered_after.expect("nothing arrived after the kill");
    assert!(delivered <= Duration::from_secs(1), "{f:?}");
    assert_eq!(f.lost_at_the_end, 0, "{f:?}");
    assert_loss_told(&f);
    assert_eq!(f.duplicates, 0, "{f:?}");
    assert_eq!(
        TASK_PANICS.load(Ordering::Relaxed),
        0,
        "a layer task panicked"
    );
}

/// `FLUSHALL` under traffic: group memberships (core: the group sets; pub/sub: the registry
/// behind `group_channels`) are gone from Redis; the layer writes its own back.
async fn flushall(pubsub: bool) {
    count_task_panics();
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    let cfg = RedisConfig::new(redis.url()).prefix(fresh_prefix());
    let url = redis.url();
    let (calls, got, flushed) = under_traffic(
        pubsub,
        &cfg,
        Duration::from_millis(20),
        Duration::from_secs(3),
        async |t0| {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut raw(&url).await)
                .await
                .unwrap();
            t0.elapsed()
        },
    )
    .await;
    let f = figures(&calls, &got, flushed);
    eprintln!("FIGURES FLUSHALL ({}): {f:?}", name(pubsub));
    // The registry the pub/sub layer keeps for group_channels, after the traffic.
    if pubsub {
        let probe = make(true, &cfg).await;
        let members = probe.group_channels("room").await.unwrap();
        eprintln!(
            "FIGURES FLUSHALL (pub/sub): group_channels 2.5 s after: {} member(s)",
            members.len()
        );
        assert_eq!(members.len(), 1, "the registry was not written again");
    }
    assert_eq!(f.errors, 0, "{f:?}");
    let delivered = f.delivered_after.expect("nothing arrived after the flush");
    assert!(delivered <= Duration::from_millis(2500), "{f:?}");
    assert_eq!(f.lost_at_the_end, 0, "{f:?}");
    assert_loss_told(&f);
    assert_eq!(
        TASK_PANICS.load(Ordering::Relaxed),
        0,
        "a layer task panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_recovers_its_groups_after_flushall() {
    flushall(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_recovers_its_registry_after_flushall() {
    flushall(true).await;
}

/// Fills Redis (up to `maxmemory`) with keys `fill:N` from a connection of the test's own:
/// values of 8 KiB until Redis says OOM, then smaller ones until it says so to them too (a
/// refused command's own bytes leave with it, so Redis stays just over its limit); returns how
/// many keys it wrote. `c` must stay open until the test is done with the full server: closing
/// it frees its buffers, and Redis would be under its limit again.
async fn fill(c: &mut redis::aio::MultiplexedConnection) -> usize {
    let mut i = 0;
    for size in [8 * 1024, 512, 16] {
        let value = vec![b'x'; size];
        for _ in 0..10_000 {
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("fill:{i}"))
                .arg(&value)
                .query_async(c)
                .await;
            match r {
                Ok(()) => i += 1,
                Err(e) if e.to_string().contains("OOM") => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
    }
    i
}

/// Sets `maxmemory` to 1 MiB, or to 256 KiB above what the server uses now if that is more (an
/// empty Redis 7 with four clients already uses about 1 MiB); returns it.
async fn set_maxmemory(url: &str) -> u64 {
    let mut c = raw(url).await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    let limit = (1 << 20u64).max(used + (256 << 10));
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .query_async(&mut c)
        .await
        .unwrap();
    limit
}

async fn free(c: &mut redis::aio::MultiplexedConnection, keys: usize) {
    let names: Vec<String> = (0..keys).map(|i| format!("fill:{i}")).collect();
    let _: () = redis::cmd("DEL").arg(&names).query_async(c).await.unwrap();
}

/// `maxmemory 1mb` with `noeviction`, filled: the layer's writes fail at once with Redis's
/// OOM error (core: sends and group sends; pub/sub: `group_add`, whose registry is a write,
/// while `PUBLISH` still works); after memory is freed they succeed again, no restart.
async fn out_of_memory(pubsub: bool) {
    count_task_panics();
    let Some(redis) = OwnRedis::start_with(&["--maxmemory-policy", "noeviction"]).await else {
        return;
    };
    let cfg = RedisConfig::new(redis.url()).prefix(fresh_prefix());
    let url = redis.url();
    let sender = make(pubsub, &cfg).await;
    let receiver = make(pubsub, &cfg).await;
    let ch = receiver.new_channel().await.unwrap();
    receiver.group_add("room", &ch).await.unwrap();
    let limit = set_maxmemory(&url).await;
    let mut filler = raw(&url).await;
    let keys = fill(&mut filler).await;

    // Under OOM: each call answers at once.
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let start = Instant::now();
        let r = if pubsub {
            let other = receiver.new_channel().await.unwrap();
            receiver.group_add("other", &other).await
        } else {
            sender.group_send("room", msg("oom", i)).await
        };
        slowest = slowest.max(start.elapsed());
        let e = r.expect_err("a write succeeded with Redis out of memory");
        assert!(matches!(e, LayerError::Backend(_)), "{e:?}");
        errors.push(format!("{e} ({:?})", std::error::Error::source(&e)));
    }
    assert!(errors[0].contains("OOM"), "{errors:?}");
    if pubsub {
        // Publishing needs no memory: group sends still arrive.
        sender
            .group_send("room", msg("published", 1))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), receiver.receive(&ch)).await;
        assert_eq!(got.unwrap().unwrap(), msg("published", 1));
    }

    free(&mut filler, keys).await;
    let freed = Instant::now();
    let mut first_ok = None;
    for i in 0..50 {
        let r = if pubsub {
            let other = receiver.new_channel().await.unwrap();
            receiver.group_add("other", &other).await
        } else {
            sender.group_send("room", msg("after", i)).await
        };
        if r.is_ok() {
            first_ok = Some((i, freed.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (i, ok_after) = first_ok.expect("writes still fail after memory was freed");
    if !pubsub {
        let got = tokio::time::timeout(Duration::from_secs(5), receiver.receive(&ch)).await;
        assert_eq!(got.unwrap().unwrap(), msg("after", i));
    }
    eprintln!(
        "FIGURES maxmemory ({}): maxmemory {limit} bytes, filled with {keys} keys of 8 KiB; 5 \
         writes failed, slowest {slowest:?}, first error {:?}; after freeing, the first write \
         succeeded after {ok_after:?} ({i} failed before it)",
        name(pubsub),
        errors[0]
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "an OOM answer took {slowest:?}"
    );
    assert_eq!(
        TASK_PANICS.load(Ordering::Relaxed),
        0,
        "a layer task panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_writes_fail_clearly_at_maxmemory_and_recover() {
    out_of_memory(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_writes_fail_clearly_at_maxmemory_and_recover() {
    out_of_memory(true).await;
}

/// The marker a process keeps in Redis (to notice a `FLUSHALL`) goes with the layer when it
/// closes: a process that stopped cleanly leaves no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_layer_leaves_no_marker_behind() {
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    for pubsub in [false, true] {
        let prefix = fresh_prefix();
        let cfg = RedisConfig::new(redis.url()).prefix(prefix.clone());
        let layer = make(pubsub, &cfg).await;
        let ch = layer.new_channel().await.unwrap();
        layer.group_add("room", &ch).await.unwrap();
        let keys = async || -> Vec<String> {
            redis::cmd("KEYS")
                .arg(format!("{prefix}*process*"))
                .query_async(&mut raw(&redis.url()).await)
                .await
                .unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while keys().await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no marker was set ({})",
                name(pubsub)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        layer.group_discard("room", &ch).await.unwrap();
        layer.close().await.unwrap();
        assert_eq!(keys().await, Vec::<String>::new(), "{}", name(pubsub));
    }
}
