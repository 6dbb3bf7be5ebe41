//! Group fan-out across processes on Redis Cluster (1 and 3 masters) beside the single-node
//! layers, in one run: does `RedisClusterLayer` scale with the masters?
//!
//! Four layer instances stand for four processes. 64 groups have one member in each of them;
//! eight senders in the first instance `group_send` to the groups in turn (each send reaches
//! four members, one per process), `SENDS` sends in all, with at most `WINDOW` sends a sender
//! has not seen delivered everywhere. Deliveries/s counts what the members received; anything
//! dropped or missing is printed. The servers are the test harness's: a redis-server for the
//! single-node layers, clusters made by `redis-cli --cluster create` (3 masters) or one node
//! holding every slot (1 master), all on loopback, started and stopped by the run.
//!
//! ```text
//! cargo bench -p switchboard-redis --bench layer_cluster
//! SENDS=40000 ROUNDS=2 …   # the defaults
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_core::{Layer, LayerConfig, Message};
use switchboard_redis::{RedisClusterLayer, RedisConfig, RedisLayer, RedisPubSubLayer};
use test_support::cluster::Cluster;

#[path = "support/redis.rs"]
mod support;
use test_support::redis::{OwnRedis, fresh_prefix};

const PROCESSES: usize = 4;
const GROUPS: usize = 64;
const SENDERS: usize = 8;
const WINDOW: u64 = 200;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
enum Setup {
    Core,
    PubSub,
    Cluster1,
    Cluster3,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Core => "RedisLayer, 1 redis-server",
            Setup::PubSub => "RedisPubSubLayer, 1 redis-server",
            Setup::Cluster1 => "RedisClusterLayer, 1 master",
            Setup::Cluster3 => "RedisClusterLayer, 3 masters",
        }
    }
}

async fn instance(setup: Setup, cfg: &RedisConfig) -> Layer {
    let r = match setup {
        Setup::Core => RedisLayer::connect(cfg.clone()).await.map(Layer::new),
        Setup::PubSub => RedisPubSubLayer::connect(cfg.clone()).await.map(Layer::new),
        Setup::Cluster1 | Setup::Cluster3 => RedisClusterLayer::connect(cfg.clone())
            .await
            .map(Layer::new),
    };
    r.unwrap_or_else(|e| panic!("{}: {e}", setup.name()))
}

struct Outcome {
    elapsed: Duration,
    /// CPU seconds of this process (all four layer instances) and of the servers.
    client_cpu: f64,
    server_cpu: f64,
    delivered: u64,
    expected: u64,
    dropped: u64,
}

async fn run(setup: Setup, urls: &[String], sends: u64) -> Outcome {
    let cfg = RedisConfig::hosts(urls.to_vec())
        .prefix(fresh_prefix())
        .layer(LayerConfig::default().capacity(100_000));
    let mut layers = Vec::new();
    for _ in 0..PROCESSES {
        layers.push(instance(setup, &cfg).await);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    for layer in &layers {
        for g in 0..GROUPS {
            let ch = layer.new_channel().await.unwrap_or_else(|e| panic!("{e}"));
            layer
                .group_add(format!("bench_{g}").as_str(), &ch)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let (layer, delivered) = (layer.clone(), delivered.clone());
            receivers.push(tokio::spawn(async move {
                while layer.receive(&ch).await.is_ok() {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let message = Message::builder("chat.message")
        .field("text", "x".repeat(100))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let expected = sends * PROCESSES as u64;
    let servers = async || {
        let mut sum = 0.0;
        for u in urls {
            sum += support::redis_cpu(u).await;
        }
        sum
    };
    let (client0, server0) = (support::process_cpu(), servers().await);
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (layer, message, sent, delivered) = (
            layers[0].clone(),
            message.clone(),
            sent.clone(),
            delivered.clone(),
        );
        senders.push(tokio::spawn(async move {
            let mut i = s;
            loop {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                if n >= sends {
                    return;
                }
                // Keep the whole run within a window of what has been delivered.
                while n * PROCESSES as u64
                    > delivered.load(Ordering::Relaxed) + WINDOW * SENDERS as u64 * 4
                {
                    tokio::task::yield_now().await;
                }
                let group = format!("bench_{}", i % GROUPS);
                layer
                    .group_send(group.as_str(), message.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                i += SENDERS;
            }
        }));
    }
    for s in senders {
        s.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let (client_cpu, server_cpu) = (support::process_cpu() - client0, servers().await - server0);
    let dropped = layers.iter().map(|l| l.stats().group_full_drops).sum();
    for r in receivers {
        r.abort();
    }
    for l in &layers {
        let _ = l.flush().await;
        let _ = l.close().await;
    }
    Outcome {
        elapsed,
        client_cpu,
        server_cpu,
        delivered: delivered.load(Ordering::Relaxed),
        expected,
        dropped,
    }
}

fn main() {
    let sends: u64 = env_or("SENDS", 40_000);
    let rounds: usize = env_or("ROUNDS", 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        // The harness's servers end when these guards drop, at the end of the run.
        let single = OwnRedis::start()
            .await
            .unwrap_or_else(|| panic!("no redis-server to start"));
        let one = Cluster::start(1, 0).unwrap_or_else(|| panic!("no cluster"));
        let three = Cluster::start(3, 0).unwrap_or_else(|| panic!("no cluster"));
        let setups = [
            (Setup::Core, vec![single.url()]),
            (Setup::PubSub, vec![single.url()]),
            (Setup::Cluster1, one.urls()),
            (Setup::Cluster3, three.urls()),
        ];
        println!(
            "group_send fan-out: {PROCESSES} processes (layer instances), {GROUPS} groups with one \
             member in each, {SENDERS} senders, {sends} sends ({} deliveries) per run",
            sends * PROCESSES as u64
        );
        println!(
            "| setup | round | deliveries/s | delivered/expected | dropped | elapsed | CPU: this process | CPU: redis-servers |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for round in 1..=rounds {
            for (setup, urls) in &setups {
                let o = run(*setup, urls, sends).await;
                println!(
                    "| {} | {round} | {:.0} | {}/{} | {} | {:.2} s | {:.2} s | {:.2} s |",
                    setup.name(),
                    o.delivered as f64 / o.elapsed.as_secs_f64(),
                    o.delivered,
                    o.expected,
                    o.dropped,
                    o.elapsed.as_secs_f64(),
                    o.client_cpu,
                    o.server_cpu
                );
            }
        }
    });
}
