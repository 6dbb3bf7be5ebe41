//! The in-memory layer: point-to-point send/receive and `group_send` fan-out.
//!
//! Run: `cargo bench -p switchboard-core --bench layer_memory`
//!
//! Both cases mirror `bench/django/layer_bench.py` so the numbers compare with Django
//! Channels' `InMemoryChannelLayer` (`bench/django/run.sh layers --layers memory`):
//! - p2p: one sender task and one receiver task on one channel, 20,000 messages.
//! - fan-out: N members in one group, each drained by its own task; the sender keeps at most 50
//!   group messages outstanding for any member (the peer's `--window 50`), with the default
//!   capacity of 100, so nothing may be dropped.
//!
//! Variants:
//! - `current_thread/receive`: one event loop (as the peer's asyncio), receivers call
//!   `Layer::receive` per message — the API Channels has, like for like;
//! - `current_thread/receiver`: the same, receivers hold a `Layer::receiver` — what switchboard's
//!   consumers use (no lookup or allocation per message);
//! - `multi_thread/receiver`: two worker threads, so sender and receivers run on different cores
//!   and a delivery may cost a cross-thread wake-up.
//!
//! - `memory_group_send_history`: fan-out with the group's history on and off, side by side
//!   (`--bench layer_memory -- history`).
//! - `memory_group_send_bare`: the fan-out beside two baselines with no semantics at all, in
//!   one run (`--bench layer_memory -- bare`): `bare_queues` pushes the message handle (an
//!   `Arc` clone) into each member's bounded `tokio::sync::mpsc` queue and each member's task
//!   pops it; `bare_broadcast` sends it once on a `tokio::sync::broadcast` channel that every
//!   member's task receives from. Same members, window, order check and counting as the
//!   fan-out.
//! - `memory_presence/{count,list}/10000`: a group's presence of 10,000 entries counted and
//!   listed (`--bench layer_memory -- presence`).
//!
//! Messages are built before the clock starts; the clock covers the layer calls and the tasks'
//! scheduling. Every round checks what was received: counts, order, and no full drops.
//! Throughput is reported per delivered message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard_core::{ChannelName, InMemoryLayer, Layer, LayerConfig, Message, Value};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

const WINDOW: u64 = 50;

/// (name, runtime, whether receivers hold a `Layer::receiver`).
fn variants() -> Vec<(&'static str, Runtime, bool)> {
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime") // ok: benchmark harness, not reachable from the wire: a panic ends the run
    };
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
    vec![
        ("current_thread/receive", current(), false),
        ("current_thread/receiver", current(), true),
        ("multi_thread/receiver", multi, true),
    ]
}

fn message(seq: i64) -> Message {
    Message::builder("chat.message")
        .field("text", "x".repeat(100))
        .field("seq", seq)
        .build()
        .expect("valid message") // ok: benchmark harness, not reachable from the wire: a panic ends the run
}

fn seq_of(m: &Message) -> i64 {
    m.get("seq").and_then(Value::as_i64).unwrap_or(-1)
}

/// Receives with `receive` per message, or through one long-lived receiver, until `each`
/// returns false or the layer closes.
async fn receive_loop(
    layer: Layer,
    channel: ChannelName,
    use_receiver: bool,
    mut each: impl FnMut(Message) -> bool,
) {
    let Ok(mut rx) = layer.receiver(&channel).await else {
        return; // the layer closed before this task ran
    };
    loop {
        let got = if use_receiver {
            rx.recv().await
        } else {
            layer.receive(&channel).await
        };
        match got {
            Ok(m) => {
                if !each(m) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Sends `messages` from this task and receives them in another; returns the elapsed time.
async fn p2p_round(
    layer: &Layer,
    channel: &ChannelName,
    messages: &[Message],
    use_receiver: bool,
) -> Duration {
    let n = messages.len() as i64;
    let start = Instant::now();
    let receiver = {
        let (layer, channel) = (layer.clone(), channel.clone());
        tokio::spawn(async move {
            let mut next = 0;
            receive_loop(layer, channel, use_receiver, |m| {
                assert_eq!(seq_of(&m), next, "point-to-point order");
                next += 1;
                next < n
            })
            .await;
            assert_eq!(next, n, "every message received");
        })
    };
    for m in messages {
        layer.send(channel, m).await.expect("send under capacity"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
    }
    receiver.await.expect("receiver task"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
    start.elapsed()
}

fn p2p(c: &mut Criterion) {
    const N: i64 = 20_000;
    let messages: Vec<Message> = (0..N).map(message).collect();
    let mut group = c.benchmark_group("memory_p2p");
    group.throughput(Throughput::Elements(N as u64));
    for (variant, rt, use_receiver) in variants() {
        let layer = Layer::new(InMemoryLayer::new(
            LayerConfig::default().capacity(N as usize),
        ));
        let channel = rt.block_on(layer.new_channel()).expect("channel"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
        group.bench_function(BenchmarkId::new(variant, N), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += p2p_round(&layer, &channel, &messages, use_receiver).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

/// What the members of a room have received: a count per member, and a wake-up for the
/// sender each time one grows.
#[derive(Default)]
struct Tally {
    received: Vec<Arc<AtomicU64>>,
    progress: Arc<Notify>,
}

impl Tally {
    /// A count for one more member.
    fn member(&mut self) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        self.received.push(count.clone());
        count
    }

    /// The fewest messages any member has received.
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Waits until message `sent` (counted from the start) is under `WINDOW` ahead of the
    /// slowest member; `slowest` is the last count seen.
    async fn window(&self, sent: u64, slowest: &mut u64) {
        while sent - *slowest >= WINDOW {
            self.progress.notified().await;
            *slowest = self.slowest();
        }
    }

    /// Waits until every member has received `target` messages.
    async fn all(&self, target: u64) {
        while self.slowest() < target {
            tokio::time::timeout(Duration::from_millis(10), self.progress.notified())
                .await
                .ok();
        }
    }
}

/// `iters` rounds of `m` messages each, numbered on from `seq`.
fn rounds(seq: &std::cell::Cell<i64>, iters: u64, m: i64) -> Vec<Vec<Message>> {
    (0..iters)
        .map(|_| {
            let first = seq.get();
            seq.set(first + m);
            (first..first + m).map(message).collect()
        })
        .collect()
}

/// A group of members, each drained by a task that checks order and counts deliveries.
struct Room {
    layer: Layer,
    tally: Tally,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Room {
    async fn new(members: u64, use_receiver: bool) -> Room {
        Room::with_config(members, use_receiver, LayerConfig::default()).await
    }

    async fn with_config(members: u64, use_receiver: bool, config: LayerConfig) -> Room {
        let layer = Layer::new(InMemoryLayer::new(config));
        let mut tally = Tally::default();
        let mut tasks = Vec::new();
        for _ in 0..members {
            let ch = layer.new_channel().await.expect("channel"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
            layer.group_add("room", &ch).await.expect("group_add"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
            let count = tally.member();
            let (layer, progress) = (layer.clone(), tally.progress.clone());
            tasks.push(tokio::spawn(async move {
                let mut last = -1;
                // Runs until the layer is closed at the end of the benchmark.
                receive_loop(layer, ch, use_receiver, |m| {
                    let seq = seq_of(&m);
                    assert_eq!(
                        seq,
                        last + 1,
                        "group messages arrive in order, none missing"
                    );
                    last = seq;
                    count.fetch_add(1, Ordering::Release);
                    progress.notify_one();
                    true
                })
                .await;
            }));
        }
        Room {
            layer,
            tally,
            tasks,
        }
    }

    /// Sends `messages` to the group with at most `WINDOW` outstanding for any member; returns
    /// when every member has received all of them. The messages are moved into the layer (`owned`) or sent as shared handles (a copy the
    /// caller keeps until every member has them).
    async fn round_owned(&self, messages: Vec<Message>, owned: bool) -> Duration {
        let base = self.tally.slowest();
        let total = messages.len() as u64;
        let kept = if owned { Vec::new() } else { messages.clone() };
        let start = Instant::now();
        let mut slowest = base;
        for (i, m) in messages.into_iter().enumerate() {
            self.tally.window(base + i as u64, &mut slowest).await;
            self.layer.group_send("room", m).await.expect("group_send"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
        }
        self.tally.all(base + total).await;
        let elapsed = start.elapsed();
        drop(kept);
        assert_eq!(
            self.layer.stats().group_full_drops,
            0,
            "nothing dropped under the window"
        );
        elapsed
    }
}

/// Times rounds of about 100,000 deliveries to `members` members, each round run by `round`
/// with its messages.
fn bench_rounds<F, Fut>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    rt: &Runtime,
    members: u64,
    round: F,
) where
    F: Fn(Vec<Message>) -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let m = (100_000 / members).max(100) as i64;
    let seq = std::cell::Cell::new(0i64);
    group.throughput(Throughput::Elements(members * m as u64));
    group.bench_with_input(id, &members, |b, _| {
        b.iter_custom(|iters| {
            let rounds = rounds(&seq, iters, m);
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for messages in rounds {
                    total += round(messages).await;
                }
                total
            })
        })
    });
}

/// Benchmarks rounds of about 100,000 deliveries to `room`'s members, then closes it; `owned`
/// as in [`Room::round_owned`].
fn bench_room(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    rt: &Runtime,
    room: Room,
    members: u64,
    owned: bool,
) {
    bench_rounds(group, id, rt, members, |messages| {
        room.round_owned(messages, owned)
    });
    rt.block_on(async {
        room.layer.close().await.expect("close"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
        for t in room.tasks {
            t.await.expect("member task"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
        }
    });
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_group_send");
    for (variant, rt, use_receiver) in variants() {
        for members in [1u64, 10, 100, 1000] {
            let room = rt.block_on(Room::new(members, use_receiver));
            bench_room(
                &mut group,
                BenchmarkId::new(variant, members),
                &rt,
                room,
                members,
                false,
            );
        }
    }
    group.finish();
}

/// What carries a bare baseline's messages to its members.
enum Bare {
    /// One bounded queue per member.
    Queues(Vec<tokio::sync::mpsc::Sender<Message>>),
    /// One broadcast channel.
    Broadcast(tokio::sync::broadcast::Sender<Message>),
}

/// A baseline room: members that only pop and count, as `Room`'s do.
struct BareRoom {
    carrier: Bare,
    tally: Tally,
}

impl BareRoom {
    fn new(members: u64, broadcast: bool) -> BareRoom {
        let mut tally = Tally::default();
        // A member's task: checks order, counts, wakes the sender; ends when the carrier does.
        let member = |count: Arc<AtomicU64>, progress: Arc<Notify>| {
            let mut last = -1;
            move |m: Message| {
                let seq = seq_of(&m);
                assert_eq!(seq, last + 1, "in order, none missing");
                last = seq;
                count.fetch_add(1, Ordering::Release);
                progress.notify_one();
            }
        };
        let carrier = if broadcast {
            let (tx, _) = tokio::sync::broadcast::channel(2 * WINDOW as usize);
            for _ in 0..members {
                let mut rx = tx.subscribe();
                let mut each = member(tally.member(), tally.progress.clone());
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(m) => each(m),
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                            Err(e) => panic!("a broadcast member lagged under the window: {e}"),
                        }
                    }
                });
            }
            Bare::Broadcast(tx)
        } else {
            let mut queues = Vec::new();
            for _ in 0..members {
                let (tx, mut rx) = tokio::sync::mpsc::channel(2 * WINDOW as usize);
                queues.push(tx);
                let mut each = member(tally.member(), tally.progress.clone());
                tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        each(m);
                    }
                });
            }
            Bare::Queues(queues)
        };
        BareRoom { carrier, tally }
    }

    /// As [`Room::round_owned`] with shared handles: `WINDOW` outstanding at most.
    async fn round(&self, messages: Vec<Message>) -> Duration {
        let base = self.tally.slowest();
        let total = messages.len() as u64;
        let start = Instant::now();
        let mut slowest = base;
        for (i, m) in messages.iter().enumerate() {
            self.tally.window(base + i as u64, &mut slowest).await;
            match &self.carrier {
                Bare::Queues(queues) => {
                    for q in queues {
                        q.try_send(m.clone()).expect("room under the window"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
                    }
                }
                Bare::Broadcast(tx) => {
                    let _ = tx.send(m.clone());
                }
            }
        }
        self.tally.all(base + total).await;
        start.elapsed()
    }
}

/// switchboard's fan-out beside the bare baselines (see the module docs), in one run.
fn bare(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_group_send_bare");
    for (variant, rt, use_receiver) in variants().into_iter().skip(1) {
        for members in [1u64, 100, 1000] {
            let room = rt.block_on(Room::new(members, use_receiver));
            let id = BenchmarkId::new(format!("{variant}/switchboard"), members);
            bench_room(&mut group, id, &rt, room, members, false);
            for broadcast in [false, true] {
                let kind = if broadcast {
                    "bare_broadcast"
                } else {
                    "bare_queues"
                };
                let room = {
                    let _entered = rt.enter();
                    BareRoom::new(members, broadcast)
                };
                let id = BenchmarkId::new(format!("{variant}/{kind}"), members);
                bench_rounds(&mut group, id, &rt, members, |messages| {
                    room.round(messages)
                });
                // Dropping the carrier ends the members' tasks.
                drop(room);
            }
        }
    }
    group.finish();
}

/// `group_send` with the group's history on (`LayerConfig::group_history("room", 100, 60 s)`:
/// each message gets a position and is kept) and off, side by side, messages moved into the
/// layer as an application's freshly built messages are.
fn history(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_group_send_history");
    for (variant, rt, use_receiver) in variants().into_iter().skip(1) {
        for members in [1u64, 100, 1000] {
            for on in [false, true] {
                let config = if on {
                    LayerConfig::default()
                        .group_history("room", 100, Duration::from_secs(60))
                        .expect("history config") // ok: benchmark harness, not reachable from the wire: a panic ends the run
                } else {
                    LayerConfig::default()
                };
                let room = rt.block_on(Room::with_config(members, use_receiver, config));
                let name = format!("{variant}/history_{}", if on { "on" } else { "off" });
                bench_room(
                    &mut group,
                    BenchmarkId::new(name, members),
                    &rt,
                    room,
                    members,
                    true,
                );
            }
        }
    }
    group.finish();
}

/// A presence query and count on a group of 10,000 entries.
fn presence(c: &mut Criterion) {
    const ENTRIES: usize = 10_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime"); // ok: benchmark harness, not reachable from the wire: a panic ends the run
    let layer = Layer::new(InMemoryLayer::new(
        LayerConfig::default().presence_ttl(Duration::from_secs(3600)),
    ));
    rt.block_on(async {
        let group = switchboard_core::GroupName::new("room").expect("group"); // ok: benchmark harness
        for i in 0..ENTRIES {
            let ch = layer.new_channel().await.expect("channel"); // ok: benchmark harness
            let info = switchboard_core::PresenceInfo::new(format!("client-{i}"))
                .user(format!("user-{i}"));
            let entry = switchboard_core::PresenceEntry::new(ch, &info);
            layer
                .backend()
                .presence_add(&group, &entry)
                .await
                .expect("presence_add"); // ok: benchmark harness
        }
    });
    let mut group = c.benchmark_group("memory_presence");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("count/{ENTRIES}"), |b| {
        b.to_async(&rt).iter(|| async {
            let n = layer.presence_count("room").await.expect("count"); // ok: benchmark harness
            assert_eq!(n, ENTRIES);
        });
    });
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.bench_function(format!("list/{ENTRIES}"), |b| {
        b.to_async(&rt).iter(|| async {
            let all = layer.presence("room").await.expect("list"); // ok: benchmark harness
            assert_eq!(all.len(), ENTRIES);
        });
    });
    group.finish();
}

// criterion_group! generates an undocumented function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = Criterion::default()
            .sample_size(20)
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_secs(1));
        targets = p2p, fan_out, history, presence, bare
    }
}
criterion_main!(group::benches);
