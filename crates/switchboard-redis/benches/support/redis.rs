//! Load shapes shared by the Redis benchmarks: the payload and cases of the Django Channels
//! peer's `layer_bench.py`, with every delivery counted and its order checked.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_core::{ChannelName, Layer, LayerConfig, Message, Value};
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};

/// Group messages a sender may have outstanding per member (`layer_bench.py --window 50`).
pub const WINDOW: u64 = 50;
/// Capacity, raised as `layer_bench.py` raises it, so nothing is dropped.
pub const CAPACITY: usize = 100_000;

pub fn url() -> String {
    std::env::var("SWITCHBOARD_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "SWITCHBOARD_REDIS_URL is not set: point it at a redis-server, e.g. \
             SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6393 (scripts/bench-redis starts one)"
        )
    })
}

/// `{"type": "chat.message", "text": "x" * 100, "seq": seq}` (+ the sender, for p2p order checks).
pub fn payload(seq: u64, sender: u64) -> Message {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Core,
    /// The core layer reading a group's members for every `group_send` (no members cache).
    #[allow(dead_code)] // not every benchmark that includes this file uses it
    CoreUncached,
    PubSub,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Core => "RedisLayer",
            Kind::CoreUncached => "RedisLayer (members read every send)",
            Kind::PubSub => "RedisPubSubLayer",
        }
    }
}

pub async fn layer(kind: Kind, prefix: &str) -> Layer {
    layer_with(kind, prefix, LayerConfig::default()).await
}

/// [`layer`] with `config` (its capacity raised to the benchmarks' `CAPACITY`).
pub async fn layer_with(kind: Kind, prefix: &str, config: LayerConfig) -> Layer {
    let cfg = RedisConfig::new(url())
        .prefix(prefix)
        .layer(config.capacity(CAPACITY));
    let r = match kind {
        Kind::Core => RedisLayer::connect(cfg).await.map(Layer::new),
        Kind::CoreUncached => RedisLayer::connect(cfg.cache_groups(false))
            .await
            .map(Layer::new),
        Kind::PubSub => RedisPubSubLayer::connect(cfg).await.map(Layer::new),
    };
    r.unwrap_or_else(|e| panic!("connecting to {}: {e}", url()))
}

pub fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("sbbench{nanos:x}")
}

/// `n` messages from `senders` concurrent senders on `from` to `ch` of `to`; returns the time
/// until the last one was received. Panics on a lost or reordered message.
pub async fn p2p(from: &Layer, to: &Layer, ch: &ChannelName, n: u64, senders: u64) -> Duration {
    let each = n.div_ceil(senders);
    let total = each * senders;
    let receiver = {
        let (to, ch) = (to.clone(), ch.clone());
        tokio::spawn(async move {
            // A long-lived receiver, as a consumer's subscription holds.
            let mut rx = to.receiver(&ch).await.unwrap_or_else(|e| panic!("{e}"));
            let mut next = vec![0u64; senders as usize];
            for _ in 0..total {
                let m = rx.recv().await.unwrap_or_else(|e| panic!("{e}"));
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

/// A group of members on one layer instance, and a sender.
#[derive(Clone)]
pub struct Room {
    pub sender: Layer,
    pub members: Arc<Vec<(Layer, ChannelName)>>,
}

/// `n` members in one process; the sender is that process (`same_process`) or another one.
pub async fn room(kind: Kind, n: usize, same_process: bool) -> Room {
    room_with(kind, n, same_process, LayerConfig::default()).await
}

/// [`room`] on layers made with `config` (the group is `benchroom`).
#[allow(dead_code)] // not every benchmark that includes this file uses it
pub async fn room_with(kind: Kind, n: usize, same_process: bool, config: LayerConfig) -> Room {
    let p = prefix();
    let home = layer_with(kind, &p, config.clone()).await;
    let sender = if same_process {
        home.clone()
    } else {
        layer_with(kind, &p, config).await
    };
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
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

/// What a fan-out run did.
#[derive(Debug)]
pub struct FanOut {
    /// Group sends made.
    pub m: u64,
    pub delivered: u64,
    pub elapsed: Duration,
}

/// Group sends to the room — `max` of them, or as many as fit in `for_at_most` — with at most
/// `WINDOW` per member outstanding, then an end marker; returns when every member got every
/// message. Panics on a lost, dropped or reordered delivery.
pub async fn fan_out(room: &Room, max: u64, for_at_most: Option<Duration>) -> FanOut {
    /// A member's delivery count, on a cache line of its own (members run on both cores).
    #[repr(align(64))]
    #[derive(Default)]
    struct Count(AtomicU64);

    let n = room.members.len() as u64;
    let counts: Arc<Vec<Count>> = Arc::new((0..n).map(|_| Count::default()).collect());
    let delivered = {
        let counts = counts.clone();
        move || {
            counts
                .iter()
                .map(|c| c.0.load(Ordering::Relaxed))
                .sum::<u64>()
        }
    };
    let drops_before = room.members[0].0.stats().group_full_drops;
    let mut tasks = Vec::with_capacity(room.members.len());
    for (i, (layer, ch)) in room.members.iter().enumerate() {
        let (layer, ch, counts) = (layer.clone(), ch.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut rx = layer.receiver(&ch).await.unwrap_or_else(|e| panic!("{e}"));
            let mut next = 0;
            loop {
                let msg = rx.recv().await.unwrap_or_else(|e| panic!("{e}"));
                if msg.message_type() == "bench.end" {
                    assert_eq!(field(&msg, "seq"), next, "a delivery was lost");
                    return;
                }
                assert_eq!(field(&msg, "seq"), next, "a delivery was lost or reordered");
                next += 1;
                counts[i].0.store(next, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    // The sender is a task on the runtime, as a consumer or a request handler would be.
    let sender = {
        let (sender, delivered) = (room.sender.clone(), delivered.clone());
        tokio::spawn(async move {
            let mut m = 0;
            while m < max && for_at_most.is_none_or(|t| start.elapsed() < t) {
                while m * n - delivered().min(m * n) > WINDOW * n {
                    tokio::task::yield_now().await;
                }
                sender
                    .group_send("benchroom", payload(m, 0))
                    .await
                    .unwrap_or_else(|e| panic!("group_send: {e}"));
                m += 1;
            }
            let end = Message::builder("bench.end")
                .field("seq", m)
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            sender
                .group_send("benchroom", end)
                .await
                .unwrap_or_else(|e| panic!("group_send: {e}"));
            m
        })
    };
    let m = sender.await.unwrap_or_else(|e| panic!("{e}"));
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let elapsed = start.elapsed();
    let got = delivered();
    assert_eq!(got, m * n);
    assert_eq!(
        room.members[0].0.stats().group_full_drops,
        drops_before,
        "no delivery may be dropped"
    );
    FanOut {
        m,
        delivered: got,
        elapsed,
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// CPU seconds (user + system) this process has used.
pub fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds (user + system) the redis-server at `url` has used.
pub async fn redis_cpu(url: &str) -> f64 {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("{e}"));
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}
