//! The Redis layers under load, with the payload and shapes of the Django Channels peer's
//! `layer_bench.py` (`{"type": "chat.message", "text": "x" * 100, "seq": i}`, capacity raised to
//! 100,000, at most 50 group messages outstanding per member), every delivery counted and its
//! order checked.
//!
//! - `p2p/…`: one channel of process B, sends from process A (two layer instances, so every
//!   message crosses Redis), one sender or eight concurrent ones.
//! - `group_send_1000/same_process`: 1,000 members in the sender's process, as the consumers of
//!   one server (Django's `layer_bench.py` fan-out with `--instances 1`).
//! - `group_send_1000/other_process`: 1,000 members in another process: every group message
//!   crosses Redis once, naming the 1,000 channels.
//!
//! Throughput is reported in elements: messages for `p2p`, deliveries for `group_send`.
//!
//! ```text
//! SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6393 cargo bench --features redis --bench layer_redis
//! scripts/bench-redis      # the same, side by side with Django's numbers and redis-benchmark
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard::redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use switchboard::{ChannelName, Layer, LayerConfig, Message, Value};
use tokio::sync::Notify;

const MEMBERS: usize = 1000;
const WINDOW: u64 = 50;
const CAPACITY: usize = 100_000;

fn url() -> String {
    std::env::var("SWITCHBOARD_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "SWITCHBOARD_REDIS_URL is not set: point it at a redis-server, e.g. \
             SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6393 (scripts/bench-redis starts one)"
        )
    })
}

fn payload(seq: u64, sender: u64) -> Message {
    Message::builder("chat.message")
        .field("text", "x".repeat(100))
        .field("seq", seq)
        .field("sender", sender)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn field(m: &Message, k: &str) -> u64 {
    m.get(k)
        .and_then(Value::as_i64)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(u64::MAX)
}

#[derive(Clone, Copy)]
enum Kind {
    Core,
    PubSub,
}

async fn layer(kind: Kind, prefix: &str) -> Layer {
    let cfg = RedisConfig::new(url())
        .prefix(prefix)
        .layer(LayerConfig::default().capacity(CAPACITY));
    let r = match kind {
        Kind::Core => RedisLayer::connect(cfg).await.map(Layer::new),
        Kind::PubSub => RedisPubSubLayer::connect(cfg).await.map(Layer::new),
    };
    r.unwrap_or_else(|e| panic!("connecting to {}: {e}", url()))
}

fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("sbbench{nanos:x}")
}

/// `n` messages from `senders` concurrent senders on `from` to `ch` of `to`; returns the time
/// until the last one was received. Panics on a lost or reordered message.
async fn p2p(from: &Layer, to: &Layer, ch: &ChannelName, n: u64, senders: u64) -> Duration {
    let each = n.div_ceil(senders);
    let total = each * senders;
    let receiver = {
        let (to, ch) = (to.clone(), ch.clone());
        tokio::spawn(async move {
            let mut next = vec![0u64; senders as usize];
            for _ in 0..total {
                let m = to.receive(&ch).await.unwrap_or_else(|e| panic!("{e}"));
                let (s, seq) = (field(&m, "sender") as usize, field(&m, "seq"));
                assert_eq!(seq, next[s], "sender {s}: message out of order or lost");
                next[s] += 1;
            }
        })
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (from, ch) = (from.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                from.send(&ch, payload(i, s))
                    .await
                    .unwrap_or_else(|e| panic!("send: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    receiver.await.unwrap_or_else(|e| panic!("{e}"));
    start.elapsed()
}

/// A group of 1,000 members on one layer instance, and a sender.
#[derive(Clone)]
struct Room {
    sender: Layer,
    members: Arc<Vec<(Layer, ChannelName)>>,
}

async fn room(kind: Kind, same_process: bool) -> Room {
    let p = prefix();
    let home = layer(kind, &p).await;
    let sender = if same_process {
        home.clone()
    } else {
        layer(kind, &p).await
    };
    let mut members = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        let ch = home.new_channel().await.unwrap_or_else(|e| panic!("{e}"));
        home.group_add("benchroom", &ch)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        members.push((home.clone(), ch));
    }
    Room {
        sender,
        members: Arc::new(members),
    }
}

/// `m` group sends to the room, at most `WINDOW` per member outstanding; returns the time until
/// every member got every message. Panics on a lost, dropped or reordered delivery.
async fn fan_out(room: &Room, m: u64) -> Duration {
    let n = room.members.len() as u64;
    let delivered = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let drops_before = room.members[0].0.stats().group_full_drops;
    let mut tasks = Vec::with_capacity(room.members.len());
    for (layer, ch) in room.members.iter().cloned() {
        let (delivered, progress) = (delivered.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..m {
                let msg = layer.receive(&ch).await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(field(&msg, "seq"), i, "a delivery was lost or reordered");
                let d = delivered.fetch_add(1, Ordering::Relaxed) + 1;
                if d % n == 0 {
                    progress.notify_waiters();
                }
            }
        }));
    }
    let start = Instant::now();
    for i in 0..m {
        loop {
            let wait = progress.notified();
            if i * n - delivered.load(Ordering::Relaxed).min(i * n) <= WINDOW * n {
                break;
            }
            wait.await;
        }
        room.sender
            .group_send("benchroom", payload(i, 0))
            .await
            .unwrap_or_else(|e| panic!("group_send: {e}"));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let elapsed = start.elapsed();
    assert_eq!(delivered.load(Ordering::Relaxed), m * n);
    assert_eq!(
        room.members[0].0.stats().group_full_drops,
        drops_before,
        "no delivery may be dropped"
    );
    elapsed
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn bench_layer(c: &mut Criterion, kind: Kind, name: &str) {
    let rt = runtime();
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));

    let (a, b, ch) = rt.block_on(async {
        let p = prefix();
        let (a, b) = (layer(kind, &p).await, layer(kind, &p).await);
        let ch = b.new_channel().await.unwrap_or_else(|e| panic!("{e}"));
        (a, b, ch)
    });
    g.throughput(Throughput::Elements(1));
    for senders in [1u64, 8] {
        let id = if senders == 1 {
            "p2p/1_sender".to_owned()
        } else {
            format!("p2p/{senders}_senders")
        };
        g.bench_function(id, |bench| {
            bench
                .to_async(&rt)
                .iter_custom(|iters| p2p(&a, &b, &ch, iters, senders));
        });
    }

    g.throughput(Throughput::Elements(MEMBERS as u64));
    for (same, id) in [
        (true, "group_send_1000/same_process"),
        (false, "group_send_1000/other_process"),
    ] {
        let room = rt.block_on(room(kind, same));
        g.bench_function(id, |bench| {
            bench
                .to_async(&rt)
                .iter_custom(|iters| fan_out(&room, iters));
        });
    }
    g.finish();
}

fn redis_layer(c: &mut Criterion) {
    bench_layer(c, Kind::Core, "redis_layer");
}

fn redis_pubsub_layer(c: &mut Criterion) {
    bench_layer(c, Kind::PubSub, "redis_pubsub_layer");
}

criterion_group!(benches, redis_layer, redis_pubsub_layer);
criterion_main!(benches);
