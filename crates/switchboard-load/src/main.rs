//! `switchboard-load`: a load generator for chat-style WebSocket servers.
//!
//! C clients join one room; S of them send M messages each, as fast as the socket takes them
//! (`--rate 0`, "blast") or at a fixed total rate. Every client, senders included, must receive
//! every message, so C·S·M deliveries are expected. It reports deliveries/s, latency
//! percentiles (HDR histogram, send → receipt on one monotonic clock), messages lost and out of
//! order, connect time, the server's RSS growth per connection and its CPU time per delivery
//! (`--server-pid`), and whether the
//! room is empty again after every client left (`--members-url`).
//!
//! It speaks the protocol of switchboard's chat example and of the Channels tutorial chat
//! (`{"message": TEXT}` in, a frame with a `"message"` field out), so the same run measures
//! both (`bench/django/run.sh chat LAYER`); `--protocol socketio` speaks Socket.IO instead
//! (the socketioxide peer in `bench/peers/`).
//!
//! ```text
//! cargo run --release -p switchboard-load -- --url ws://127.0.0.1:8000/ws/chat/bench/ \
//!     --clients 1000 --messages 40 --server-pid $(pgrep -f 'examples/chat')
//! ```
//!
//! A process may hold at most `RLIMIT_NOFILE` sockets (20,000 on the reference machine), so the
//! clients are spread over worker processes (`--per-process`, 15,000 by default) and over
//! source addresses 127.0.0.1…127.0.0.N (`--source-ips`) to pass the ~28,000 ephemeral ports of
//! one address. Everything is bounded: connect and run time limits, an idle timeout.

mod clock;
mod coordinator;
mod socketio;
mod worker;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// The chat protocol the clients speak.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Protocol {
    /// WebSocket text frames: `{"message": TEXT}` out, a JSON object with a `"message"` field
    /// in (switchboard's chat, the Channels tutorial chat, `peer-broadcast`).
    #[default]
    Channels,
    /// Socket.IO v5 over Engine.IO v4, WebSocket transport only: event `"message"` with
    /// `{"message": TEXT}` out, event `"chat.message"` in (`peer-socketio`). The URL is the
    /// Engine.IO endpoint, e.g. `ws://127.0.0.1:8200/socket.io/?EIO=4&transport=websocket&room=bench`.
    Socketio,
}

/// Options of a load run.
#[derive(Parser, Debug, Clone)]
#[command(name = "switchboard-load", about = "WebSocket chat load generator")]
pub(crate) struct Args {
    /// WebSocket URL of the room. Repeat to spread clients over several servers (round-robin).
    #[arg(long = "url", default_value = "ws://127.0.0.1:8000/ws/chat/bench/")]
    pub(crate) urls: Vec<String>,
    /// The protocol the clients speak.
    #[arg(long, value_enum, default_value_t = Protocol::Channels)]
    pub(crate) protocol: Protocol,
    /// Number of clients (C).
    #[arg(long, short = 'C', default_value_t = 100)]
    pub(crate) clients: usize,
    /// Number of sending clients (S).
    #[arg(long, default_value_t = 1)]
    pub(crate) senders: usize,
    /// Messages per sender (M).
    #[arg(long, short = 'S', default_value_t = 100)]
    pub(crate) messages: u64,
    /// Total send rate over all senders, in messages/s; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Padding bytes per message.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// `Origin` header to send (default: http://HOST:PORT of the URL).
    #[arg(long)]
    pub(crate) origin: Option<String>,
    /// Spread clients over source addresses 127.0.0.1 … 127.0.0.N (default: enough for C).
    #[arg(long)]
    pub(crate) source_ips: Option<usize>,
    /// Clients per worker process.
    #[arg(long, default_value_t = 15_000)]
    pub(crate) per_process: usize,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// PIDs of server processes whose RSS growth and CPU time are measured (repeatable).
    #[arg(long = "server-pid")]
    pub(crate) server_pids: Vec<u32>,
    /// URL answering JSON with a "members" count, polled after all clients closed.
    #[arg(long)]
    pub(crate) members_url: Option<String>,
    /// Seconds to hold the connections idle before sending (RSS is sampled again after).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) hold: f64,
    /// Stop waiting for deliveries after this many seconds without one.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) idle_timeout: f64,
    /// Hard limit on the whole run, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub(crate) max_seconds: f64,
    /// Skip the warm-up client (one connection that sends one message before measuring).
    #[arg(long)]
    pub(crate) no_warmup: bool,
    /// Seconds to let the server settle after connecting, before sampling RSS.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) settle: f64,
    /// Runtime worker threads per worker process (default 2). With several worker processes on
    /// few cores, 1 avoids oversubscribing them.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    /// A label for the result row.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    // Workers learn their thread count from their spec; the coordinator needs little.
    let threads = std::env::var("SWITCHBOARD_LOAD_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2usize)
        .max(1);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard-load: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match std::env::var(worker::SPEC_ENV) {
        Ok(spec) => rt.block_on(worker::run(&spec)),
        Err(_) => rt.block_on(coordinator::run(Args::parse())),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-files limit to the hard limit.
pub(crate) fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft),
    }
}

/// The error type of the tool: a message for the user.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;
