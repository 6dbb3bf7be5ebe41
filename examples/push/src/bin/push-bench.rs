//! Fan-out benchmark of the push gateway (`examples/push`): one POST to N subscribers over
//! WebSocket or EventSource. Reports the time until the last subscriber has the message,
//! deliveries per second (single POSTs and a back-to-back burst), and the gateway's memory per
//! idle subscriber (its RSS growth divided by N). Loopback only; clients spread over the source
//! addresses 127.0.0.2–127.0.0.11; every phase is bounded in count and time.
//!
//! Build both programs in release mode, then run the benchmark (it starts the gateway itself):
//!
//! ```text
//! cargo build --release -p push
//! target/release/push-bench --transport ws --subscribers 10000
//! target/release/push-bench --transport sse --subscribers 10000
//! ```
//!
//! It raises its own open-file limit to the hard limit; the gateway does the same. 10,000
//! subscribers need 10,000 descriptors on each side.

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// WebSocket subscribers.
    Ws,
    /// EventSource subscribers (`Accept: text/event-stream`, as a browser sends: the library's
    /// `serve` answers them outside hyper).
    Sse,
    /// The same event stream asked for without `Accept: text/event-stream` (as curl does):
    /// hyper serves it. For comparison with `sse`.
    SsePlain,
}

/// Flags.
#[derive(Parser, Debug)]
#[command(about = "fan-out benchmark of the switchboard push gateway")]
struct Args {
    /// How subscribers connect.
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Subscribers (each one connection).
    #[arg(long, default_value_t = 10_000)]
    subscribers: u32,
    /// Single POSTs, each waited for until every subscriber has it.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// POSTs sent back to back after the rounds (sustained fan-out).
    #[arg(long, default_value_t = 50)]
    burst: u32,
    /// The gateway binary (default: `push` next to this program).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Use a gateway that is already running at this address instead of starting one (it
    /// should run with `--ping-interval 0`).
    #[arg(long, value_name = "ADDR")]
    gateway_addr: Option<SocketAddr>,
    /// The pid of that gateway, to read its memory and CPU time from /proc.
    #[arg(long, value_name = "PID", requires = "gateway_addr")]
    gateway_pid: Option<u32>,
    /// Seconds any one phase may take before the benchmark gives up.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Connections opened at once while subscribing.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the clients share with the driver.
struct Shared {
    delivered: AtomicU64,
    target: AtomicU64,
    last_at: Mutex<Option<Instant>>,
    reached: Notify,
    ready: AtomicU32,
    per_client: Vec<AtomicU32>,
    /// EventSource clients send `Accept: text/event-stream`.
    accept_header: bool,
}

impl Shared {
    fn delivered(&self, client: usize) {
        self.per_client[client].fetch_add(1, Ordering::Relaxed);
        let n = self.delivered.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.target.load(Ordering::Acquire) {
            *self.last_at.lock() = Some(Instant::now());
            self.reached.notify_one();
        }
    }
}

fn source_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 10) as u8))
}

async fn connect_from(i: usize, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source_addr(i), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One WebSocket subscriber; `permit` is given back once it is subscribed.
async fn ws_client(
    i: usize,
    server: SocketAddr,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<(), Error> {
    let stream = connect_from(i, server).await?;
    let request = format!("ws://{server}/ws/bench").into_client_request()?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    shared.ready.fetch_add(1, Ordering::AcqRel);
    drop(permit);
    while let Some(msg) = ws.next().await {
        match msg? {
            WsMessage::Text(_) => shared.delivered(i),
            WsMessage::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

/// One EventSource subscriber (raw HTTP/1.1, counting `data:` lines); `permit` is given back
/// once it is subscribed.
async fn sse_client(
    i: usize,
    server: SocketAddr,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<(), Error> {
    let mut permit = permit;
    let mut stream = connect_from(i, server).await?;
    let accept = if shared.accept_header {
        "Accept: text/event-stream\r\n"
    } else {
        ""
    };
    let request = format!("GET /ev/bench HTTP/1.1\r\nHost: {server}\r\n{accept}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let needle = b"\ndata: ";
    let mut buf = vec![0u8; 4096];
    let mut carry: Vec<u8> = Vec::with_capacity(needle.len() + buf.len());
    let mut ready = false;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if !ready {
            if !buf[..n].starts_with(b"HTTP/1.1 200") {
                return Err(format!(
                    "subscribe refused: {}",
                    String::from_utf8_lossy(&buf[..n.min(200)])
                )
                .into());
            }
            ready = true;
            shared.ready.fetch_add(1, Ordering::AcqRel);
            drop(permit.take());
        }
        // Count event data lines, also across read boundaries.
        carry.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = carry[start..]
            .windows(needle.len())
            .position(|w| w == needle)
        {
            shared.delivered(i);
            start += pos + needle.len();
        }
        let keep = carry.len().saturating_sub(needle.len() - 1).max(start);
        carry.drain(..keep);
    }
    Ok(())
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let mut s = String::new();
    if std::fs::File::open(format!("/proc/{pid}/status"))
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return 0;
    }
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User and system CPU seconds of a process.
fn cpu_secs(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the command (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return (0.0, 0.0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after ')'.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_gateway(bin: &PathBuf, addr: SocketAddr) -> Result<Gateway, Error> {
    let child = Command::new(bin)
        .args([
            "--addr",
            &addr.to_string(),
            "--ping-interval",
            "0",
            "--capacity",
            "200",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("could not start the gateway {}: {e}", bin.display()))?;
    Ok(Gateway(child))
}

async fn wait_until(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Sets the next target and waits until the clients reach it; the time of the last delivery.
async fn wait_for_target(shared: &Shared, within: Duration) -> Result<Instant, Error> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let notified = shared.reached.notified();
        if let Some(t) = *shared.last_at.lock() {
            return Ok(t);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(format!(
                "deliveries stuck at {} of {}",
                shared.delivered.load(Ordering::Acquire),
                shared.target.load(Ordering::Acquire)
            )
            .into());
        }
    }
}

fn set_target(shared: &Shared, target: u64) {
    *shared.last_at.lock() = None;
    shared.target.store(target, Ordering::Release);
    if shared.delivered.load(Ordering::Acquire) >= target {
        *shared.last_at.lock() = Some(Instant::now());
    }
}

async fn subscribers_on_gateway(client: &reqwest::Client, base: &str) -> u64 {
    match client.get(format!("{base}/stats?id=bench")).send().await {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["subscribers"].as_u64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let n = args.subscribers;
    if u64::from(n) + 64 > limit {
        return Err(
            format!("{n} subscribers need more open files than the limit of {limit}").into(),
        );
    }
    let bin = match &args.gateway {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("no directory")?
            .join("push"),
    };
    let (server, gateway, pid) = match args.gateway_addr {
        Some(addr) => (addr, None, args.gateway_pid.unwrap_or(0)),
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let server: SocketAddr = ([127, 0, 0, 1], port).into();
            let gateway = start_gateway(&bin, server)?;
            let pid = gateway.0.id();
            (server, Some(gateway), pid)
        }
    };
    if !server.ip().is_loopback() {
        return Err("the benchmark only talks to loopback addresses".into());
    }
    let base = format!("http://{server}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let phase = Duration::from_secs(args.timeout);
    wait_until("the gateway to listen", phase, || {
        std::net::TcpStream::connect(server).is_ok()
    })
    .await?;

    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        last_at: Mutex::new(None),
        reached: Notify::new(),
        ready: AtomicU32::new(0),
        per_client: (0..n).map(|_| AtomicU32::new(0)).collect(),
        accept_header: args.transport == Transport::Sse,
    });

    // Warm up (allocator arenas, runtime threads) with a few subscribers, then measure.
    {
        let warm = Arc::new(Shared {
            delivered: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            last_at: Mutex::new(None),
            reached: Notify::new(),
            ready: AtomicU32::new(0),
            per_client: (0..200).map(|_| AtomicU32::new(0)).collect(),
            accept_header: args.transport == Transport::Sse,
        });
        let mut tasks = Vec::new();
        for i in 0..200 {
            let w = warm.clone();
            let transport = args.transport;
            tasks.push(tokio::spawn(async move {
                let _ = match transport {
                    Transport::Ws => ws_client(i, server, w, None).await,
                    Transport::Sse | Transport::SsePlain => sse_client(i, server, w, None).await,
                };
            }));
        }
        wait_until("warm-up subscribers", phase, || {
            warm.ready.load(Ordering::Acquire) == 200
        })
        .await?;
        http.post(format!("{base}/pub/bench"))
            .body("warm-up")
            .send()
            .await?;
        wait_until("warm-up delivery", phase, || {
            warm.delivered.load(Ordering::Acquire) == 200
        })
        .await?;
        for t in tasks {
            t.abort();
        }
        let deadline = Instant::now() + phase;
        while subscribers_on_gateway(&http, &base).await != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid);

    // Subscribe N clients.
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency));
    let failures = Arc::new(AtomicU32::new(0));
    let mut clients = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let (shared, permits, failures) = (shared.clone(), permits.clone(), failures.clone());
        let transport = args.transport;
        clients.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await.ok();
            let result = match transport {
                Transport::Ws => ws_client(i, server, shared, permit).await,
                Transport::Sse | Transport::SsePlain => sse_client(i, server, shared, permit).await,
            };
            if let Err(e) = result
                && failures.fetch_add(1, Ordering::Relaxed) < 3
            {
                eprintln!("client {i}: {e}");
            }
        }));
    }
    wait_until("all subscribers", phase, || {
        shared.ready.load(Ordering::Acquire) + failures.load(Ordering::Acquire) >= n
    })
    .await?;
    let failed = failures.load(Ordering::Acquire);
    if failed > 0 {
        return Err(format!("{failed} of {n} subscribers could not connect").into());
    }
    let deadline = Instant::now() + phase;
    while subscribers_on_gateway(&http, &base).await != u64::from(n) {
        if Instant::now() > deadline {
            return Err("the gateway does not count every subscriber".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(pid);

    // Single POSTs.
    let nn = u64::from(n);
    let cpu_before = cpu_secs(pid);
    let mut latencies = Vec::new();
    for r in 0..args.rounds {
        set_target(&shared, nn * u64::from(r + 1));
        let t0 = Instant::now();
        let resp = http
            .post(format!("{base}/pub/bench"))
            .body(format!("round {r}"))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(format!("publish failed: {}", resp.status()).into());
        }
        let last = wait_for_target(&shared, phase).await?;
        latencies.push(last.duration_since(t0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_after = cpu_secs(pid);
    let (user_rounds, sys_rounds) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let cpu_rounds = user_rounds + sys_rounds;

    // A burst of POSTs back to back.
    let before = nn * u64::from(args.rounds);
    set_target(&shared, before + nn * u64::from(args.burst));
    let t0 = Instant::now();
    for b in 0..args.burst {
        http.post(format!("{base}/pub/bench"))
            .body(format!("burst {b}"))
            .send()
            .await?;
    }
    let posted = t0.elapsed();
    let last = wait_for_target(&shared, phase).await?;
    let burst_time = last.duration_since(t0);

    // Every client got every message exactly once.
    let expected = args.rounds + args.burst;
    let (mut min, mut max) = (u32::MAX, 0);
    for c in &shared.per_client {
        let v = c.load(Ordering::Acquire);
        min = min.min(v);
        max = max.max(v);
    }
    for c in clients {
        c.abort();
    }
    drop(gateway);

    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    let kib_per_sub = (rss_after.saturating_sub(rss_before)) as f64 / f64::from(n);
    let transport = match args.transport {
        Transport::Ws => "WebSocket",
        Transport::Sse => "EventSource",
        Transport::SsePlain => "EventSource without Accept (hyper)",
    };
    println!("push gateway fan-out, {transport}, {n} subscribers on 127.0.0.1 (gateway pid {pid})");
    println!("  subscribe {n}: {:.2} s", connect_time.as_secs_f64());
    println!(
        "  gateway RSS: {:.1} MiB before, {:.1} MiB with {n} idle subscribers: {:.2} KiB per subscriber",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        kib_per_sub
    );
    println!(
        "  one POST -> last subscriber has it ({} rounds): p50 {:.1} ms, min {:.1} ms, max {:.1} ms; {:.0} deliveries/s at p50",
        args.rounds,
        p50.as_secs_f64() * 1e3,
        latencies.first().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        nn as f64 / p50.as_secs_f64()
    );
    println!(
        "  gateway CPU during the rounds: {:.2} s ({:.2} user, {:.2} system) for {} deliveries ({:.1} µs per delivery)",
        cpu_rounds,
        user_rounds,
        sys_rounds,
        nn * u64::from(args.rounds),
        cpu_rounds * 1e6 / (nn * u64::from(args.rounds)) as f64
    );
    println!(
        "  burst of {} POSTs (posted in {:.1} ms): all {} deliveries in {:.1} ms: {:.0} deliveries/s",
        args.burst,
        posted.as_secs_f64() * 1e3,
        nn * u64::from(args.burst),
        burst_time.as_secs_f64() * 1e3,
        (nn * u64::from(args.burst)) as f64 / burst_time.as_secs_f64()
    );
    println!(
        "  per subscriber: {min}..={max} messages received of {expected} published (lost or doubled: {})",
        if min == expected && max == expected {
            "none"
        } else {
            "SOME"
        }
    );
    if min != expected || max != expected {
        return Err("some subscriber missed or doubled a message".into());
    }
    Ok(())
}
