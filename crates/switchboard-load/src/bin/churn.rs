//! `churn`: connect/disconnect churn against chat-style WebSocket servers, for soak runs.
//!
//! `--concurrency` loops run side by side for `--seconds`; each connects to the next `--url`
//! (round-robin over the servers) with a nickname of its own, stays a random time between
//! `--min-ms` and `--max-ms` reading (and counting) what arrives, and leaves: with a close
//! handshake, or — one time in `--drop-every` — by dropping the TCP connection without one, as
//! a client that goes away does. At the end it prints one JSON line: connections made, closed
//! with a handshake, dropped, failed, and frames received.
//!
//! Everything is bounded: the run time, each connect (5 s), each close (2 s), and the number of
//! connections (`--max-connections`).
//!
//! ```text
//! cargo run --release -p switchboard-load --bin churn -- \
//!     --url ws://127.0.0.1:8000/ws/chat/soak/ --url ws://127.0.0.1:8001/ws/chat/soak/ \
//!     --concurrency 8 --seconds 60
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Options.
#[derive(Parser, Debug)]
#[command(name = "churn", about = "WebSocket connect/disconnect churn")]
struct Args {
    /// WebSocket URL of the room. Repeat to spread connections over several servers.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Connections open at once (one loop each).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to churn, in seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Shortest time a connection stays, in milliseconds.
    #[arg(long, default_value_t = 50)]
    min_ms: u64,
    /// Longest time a connection stays, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    max_ms: u64,
    /// One connection in this many leaves without a close handshake (0: none does).
    #[arg(long, default_value_t = 4)]
    drop_every: u64,
    /// Stop after this many connections in all, even before `--seconds`.
    #[arg(long, default_value_t = 10_000_000)]
    max_connections: u64,
    /// Nicknames are PREFIX-LOOP-N.
    #[arg(long, default_value = "churn")]
    nickname_prefix: String,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Counts {
    connects: AtomicU64,
    closed: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    frames: AtomicU64,
    started: AtomicU64,
}

/// A small xorshift generator: the stay times need no more.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("churn: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("churn: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    if args.max_ms < args.min_ms {
        return Err("--max-ms must be at least --min-ms".into());
    }
    let args = Arc::new(args);
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut loops = Vec::new();
    for l in 0..args.concurrency {
        let (args, counts) = (args.clone(), counts.clone());
        let rng = Rng(seed.wrapping_mul(l as u64 * 2 + 1) | 1);
        loops.push(tokio::spawn(churn_loop(l, args, counts, rng, end)));
    }
    for l in loops {
        l.await?;
    }
    let c = &counts;
    println!(
        "{{\"connects\":{},\"closed\":{},\"dropped\":{},\"failed\":{},\"frames\":{},\"elapsed_s\":{:.1}}}",
        c.connects.load(Ordering::Relaxed),
        c.closed.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.frames.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn churn_loop(l: usize, args: Arc<Args>, counts: Arc<Counts>, mut rng: Rng, end: Instant) {
    let mut n = 0u64;
    while Instant::now() < end {
        if counts.started.fetch_add(1, Ordering::Relaxed) >= args.max_connections {
            return;
        }
        let url = &args.urls[(l + n as usize) % args.urls.len()];
        let url = format!("{url}?nickname={}-{l}-{n}", args.nickname_prefix.as_str());
        let stay = args.min_ms + rng.next() % (args.max_ms - args.min_ms + 1);
        let drop = args.drop_every > 0 && rng.next().is_multiple_of(args.drop_every);
        n += 1;
        match one(&url, Duration::from_millis(stay), drop, &counts).await {
            Ok(()) => {
                counts.connects.fetch_add(1, Ordering::Relaxed);
                let done = if drop {
                    &counts.dropped
                } else {
                    &counts.closed
                };
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if counts.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("churn: {url}: {e}");
                }
                // A server that refuses is not hammered.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: connect, stay `stay` reading, then leave (closing, or dropping the socket).
async fn one(url: &str, stay: Duration, drop: bool, counts: &Counts) -> Result<(), Error> {
    let req = url.into_client_request()?;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map_err(|_| "connect timed out")??;
    let leave = tokio::time::Instant::now() + stay;
    loop {
        match tokio::time::timeout_at(leave, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Text(_)))) => {
                counts.frames.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => return Err("the server closed the connection".into()),
        }
    }
    if drop {
        return Ok(());
    }
    ws.send(Message::Close(None)).await?;
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(frame) = ws.next().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    closed.map_err(|_| "the close handshake timed out".into())
}
