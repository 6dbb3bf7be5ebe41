//! The Redis layers under the Django Channels peer's `layer_bench.py` load, printed as a table
//! with the same columns (deliveries/s, received/expected, elapsed, CPU of this process and of
//! redis-server), so the two can be read side by side. Every delivery is counted and its order
//! checked; a lost, dropped or reordered delivery fails the run.
//!
//! - p2p: 20,000 messages to one channel of another layer instance (process), from one sender
//!   and from eight concurrent senders.
//! - fan-out: N members in one process; the sender is that process (as in `layer_bench.py`) or
//!   another one; group sends for 6 s, at most 50 per member outstanding.
//!
//! ```text
//! SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6393 cargo bench -p switchboard-redis --bench layer_redis_load
//! FANOUT=1,10,100,1000 FANOUT_SECONDS=6 P2P_N=20000 …   # the defaults
//! ```
//!
//! CPU seconds come from `/proc/self/stat` (all threads, 10 ms ticks) and redis-server's
//! `INFO cpu`.

use std::time::{Duration, Instant};

#[path = "support/redis.rs"]
mod support;

use support::{Kind, fan_out, layer, p2p, prefix, process_cpu, redis_cpu, room, runtime};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    layer: &'static str,
    case: String,
    n: usize,
    m: u64,
    delivered: u64,
    expected: u64,
    elapsed: Duration,
    cpu: f64,
    redis_cpu: f64,
}

impl Row {
    fn print(&self) {
        let per_s = self.delivered as f64 / self.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {} | {}/{} | {:.2} | {:.2} | {:.2} |",
            self.layer,
            self.case,
            group(self.n as u64),
            group(self.m),
            group(per_s.round() as u64),
            group(self.delivered),
            group(self.expected),
            self.elapsed.as_secs_f64(),
            self.cpu,
            self.redis_cpu,
        );
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn measured<T>(f: impl Future<Output = T>) -> (T, f64, f64) {
    let (cpu0, redis0) = (process_cpu(), redis_cpu(&support::url()).await);
    let out = f.await;
    (
        out,
        process_cpu() - cpu0,
        redis_cpu(&support::url()).await - redis0,
    )
}

fn main() {
    let p2p_n: u64 = env_or("P2P_N", 20_000);
    let seconds: f64 = env_or("FANOUT_SECONDS", 6.0);
    let max_m: u64 = env_or("FANOUT_MAX_M", 20_000);
    let fanout: Vec<usize> = std::env::var("FANOUT")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let rt = runtime();
    println!(
        "| layer | case | N | M | deliveries/s | received/expected | elapsed s | bench CPU s | redis CPU s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for kind in [Kind::Core, Kind::PubSub] {
        rt.block_on(async {
            for senders in [1u64, 8] {
                let p = prefix();
                let (a, b) = (layer(kind, &p).await, layer(kind, &p).await);
                let ch = b.new_channel().await.unwrap_or_else(|e| panic!("{e}"));
                let (elapsed, cpu, redis_cpu) = measured(p2p(&a, &b, &ch, p2p_n, senders)).await;
                Row {
                    layer: kind.name(),
                    case: format!(
                        "p2p, 2 processes, {senders} sender{}",
                        if senders == 1 { "" } else { "s" }
                    ),
                    n: 1,
                    m: p2p_n,
                    delivered: p2p_n,
                    expected: p2p_n,
                    elapsed,
                    cpu,
                    redis_cpu,
                }
                .print();
            }
            for &n in &fanout {
                for same in [true, false] {
                    let room = room(kind, n, same).await;
                    let started = Instant::now();
                    let (run, cpu, redis_cpu) = measured(fan_out(
                        &room,
                        max_m,
                        Some(Duration::from_secs_f64(seconds)),
                    ))
                    .await;
                    debug_assert!(started.elapsed() >= run.elapsed);
                    Row {
                        layer: kind.name(),
                        case: format!(
                            "group_send, sender in {} process",
                            if same { "the members'" } else { "another" }
                        ),
                        n,
                        m: run.m,
                        delivered: run.delivered,
                        expected: run.m * n as u64,
                        elapsed: run.elapsed,
                        cpu,
                        redis_cpu,
                    }
                    .print();
                }
            }
        });
    }
}
