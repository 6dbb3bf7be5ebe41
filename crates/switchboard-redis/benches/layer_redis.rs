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
//!   crosses Redis once; on the core layer it names the group, and the receiving process serves
//!   it from its own index of the group.
//! - `redis_layer/group_send_1000/{same,other}_process_uncached`: the same on `RedisLayer` with
//!   its group members cache off (`RedisConfig::cache_groups(false)`): the members read for
//!   every send, as channels_redis reads them — beside the cached runs, for the ratio.
//!
//! - `redis_history/{redis_layer,redis_pubsub_layer}/group_send_1000/history_{off,on}`: the
//!   fan-out to 1,000 members in the sender's process, with the group's history off and on,
//!   side by side. Pub/sub: each message numbered, kept in a Stream and published by one
//!   script. Core: one script numbers, keeps and queues it for every member's process — this
//!   one's too, so with history the local members are served through Redis, not directly; a
//!   switchboard process's copy names the group (its digest from the members cache, which the
//!   sender reads first).
//! - `redis_history/redis_layer/group_send_1/history_{off,on}`: the same for a group of one, where
//!   the fixed cost of a send shows: its round trips.
//! - `redis_presence/{count,list}/10000` on both layers: a group's presence holding 10,000
//!   entries, counted (`ZCOUNT`) and listed (expired entries dropped first, then `HVALS`).
//!
//! Throughput is reported in elements: messages for `p2p`, deliveries for `group_send`,
//! entries for `presence`.
//!
//! ```text
//! SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6393 cargo bench -p switchboard-redis --bench layer_redis
//! scripts/bench-redis      # the same, side by side with Django's numbers and redis-benchmark
//! ```

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/redis.rs"]
mod support;

use support::{Kind, fan_out, layer, layer_with, p2p, prefix, room, room_with, runtime};
use switchboard_core::{LayerConfig, PresenceEntry, PresenceInfo};

const MEMBERS: usize = 1000;

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
        let room = rt.block_on(room(kind, MEMBERS, same));
        g.bench_function(id, |bench| {
            bench.to_async(&rt).iter_custom(|iters| {
                let room = &room;
                async move { fan_out(room, iters, None).await.elapsed }
            });
        });
        if matches!(kind, Kind::Core) {
            let plain = rt.block_on(support::room(Kind::CoreUncached, MEMBERS, same));
            g.bench_function(format!("{id}_uncached"), |bench| {
                bench.to_async(&rt).iter_custom(|iters| {
                    let room = &plain;
                    async move { fan_out(room, iters, None).await.elapsed }
                });
            });
        }
    }
    g.finish();
}

/// Group history's cost on the fan-out.
fn redis_history(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("redis_history");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(MEMBERS as u64));
    for (kind, on, n) in [
        (Kind::PubSub, false, MEMBERS),
        (Kind::PubSub, true, MEMBERS),
        (Kind::Core, false, MEMBERS),
        (Kind::Core, true, MEMBERS),
        (Kind::Core, false, 1),
        (Kind::Core, true, 1),
    ] {
        let config = if on {
            LayerConfig::default()
                .group_history("benchroom", 100, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}"))
        } else {
            LayerConfig::default()
        };
        let room = rt.block_on(room_with(kind, n, true, config));
        g.throughput(Throughput::Elements(n as u64));
        let layer = match kind {
            Kind::Core | Kind::CoreUncached => "redis_layer",
            Kind::PubSub => "redis_pubsub_layer",
        };
        let id = format!(
            "{layer}/group_send_{n}/history_{}",
            if on { "on" } else { "off" }
        );
        g.bench_function(id, |bench| {
            bench.to_async(&rt).iter_custom(|iters| {
                let room = &room;
                async move { fan_out(room, iters, None).await.elapsed }
            });
        });
    }
    g.finish();
}

/// A presence query and count on a group of 10,000 entries.
fn redis_presence(c: &mut Criterion) {
    const ENTRIES: usize = 10_000;
    let rt = runtime();
    let mut g = c.benchmark_group("redis_presence");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for kind in [Kind::Core, Kind::PubSub] {
        let config = LayerConfig::default().presence_ttl(Duration::from_secs(3600));
        let layer = rt.block_on(async {
            let layer = layer_with(kind, &prefix(), config).await;
            let group =
                switchboard_core::GroupName::new("benchroom").unwrap_or_else(|e| panic!("{e}"));
            for i in 0..ENTRIES {
                let ch = layer.new_channel().await.unwrap_or_else(|e| panic!("{e}"));
                let info = PresenceInfo::new(format!("client-{i}")).user(format!("user-{i}"));
                let entry = PresenceEntry::new(ch, &info);
                layer
                    .backend()
                    .presence_add(&group, &entry)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            layer
        });
        let name = match kind {
            Kind::Core | Kind::CoreUncached => "redis_layer",
            Kind::PubSub => "redis_pubsub_layer",
        };
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}/count/{ENTRIES}"), |bench| {
            bench.to_async(&rt).iter(|| async {
                let n = layer
                    .presence_count("benchroom")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(n, ENTRIES);
            });
        });
        g.throughput(Throughput::Elements(ENTRIES as u64));
        g.bench_function(format!("{name}/list/{ENTRIES}"), |bench| {
            bench.to_async(&rt).iter(|| async {
                let all = layer
                    .presence("benchroom")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(all.len(), ENTRIES);
            });
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

criterion_group!(
    benches,
    redis_layer,
    redis_pubsub_layer,
    redis_history,
    redis_presence
);
criterion_main!(benches);
