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
//! SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6393 cargo bench -p switchboard-redis --bench layer_redis
//! scripts/bench-redis      # the same, side by side with Django's numbers and redis-benchmark
//! ```

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/redis.rs"]
mod support;

use support::{Kind, fan_out, layer, p2p, prefix, room, runtime};

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
