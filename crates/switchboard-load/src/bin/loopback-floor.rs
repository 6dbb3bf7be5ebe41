//! `loopback-floor`: the fastest a fan-out can be on this machine's loopback TCP, with no
//! WebSocket, no consumer and no layer: N connected socket pairs in one tokio process, one task
//! per server socket writes one small message, one task per client socket reads it.
//!
//! It prints the time until the last write returned and the latency percentiles of the reads,
//! which bound what any server can reach in `switchboard-load`'s paced runs on the same machine.
//!
//! ```text
//! cargo run --release -p switchboard-load --bin loopback-floor -- --sockets 1000 --rounds 10
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Options.
#[derive(Parser, Debug)]
struct Args {
    /// Socket pairs.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Fan-out rounds (one message per socket each).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 150)]
    payload: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (mut clients, mut servers) = (Vec::new(), Vec::new());
    for _ in 0..args.sockets {
        let c = tokio::net::TcpStream::connect(addr).await?;
        let (s, _) = listener.accept().await?;
        c.set_nodelay(true)?;
        s.set_nodelay(true)?;
        clients.push(c);
        servers.push(s);
    }
    let msg = vec![b'x'; args.payload];
    let mut p99s = Vec::new();
    for round in 0..args.rounds {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut readers = Vec::new();
        for mut c in clients.drain(..) {
            let (tx, len) = (tx.clone(), args.payload);
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; len];
                let r = c.read_exact(&mut buf).await;
                let _ = tx.send(Instant::now());
                r.map(|_| c)
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        let mut writers = Vec::new();
        for mut s in servers.drain(..) {
            let msg = msg.clone();
            writers.push(tokio::spawn(
                async move { s.write_all(&msg).await.map(|_| s) },
            ));
        }
        for w in writers {
            servers.push(w.await??);
        }
        let writes = t0.elapsed();
        let mut lat = Vec::with_capacity(args.sockets);
        for _ in 0..args.sockets {
            lat.push(rx.recv().await.ok_or("a reader failed")?.duration_since(t0));
        }
        for r in readers {
            clients.push(r.await??);
        }
        lat.sort();
        let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
        p99s.push(pct(99));
        println!(
            "round {round}: writes returned after {:.2} ms; reads p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            writes.as_secs_f64() * 1e3,
            pct(50).as_secs_f64() * 1e3,
            pct(99).as_secs_f64() * 1e3,
            lat[lat.len() - 1].as_secs_f64() * 1e3
        );
    }
    p99s.sort();
    println!(
        "median of {} rounds: p99 {:.2} ms for one {}-byte write to each of {} loopback sockets",
        p99s.len(),
        p99s[p99s.len() / 2].as_secs_f64() * 1e3,
        args.payload,
        args.sockets
    );
    Ok(())
}
