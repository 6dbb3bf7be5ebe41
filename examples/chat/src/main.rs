//! A chat with rooms, nicknames and private messages — the Django Channels tutorial chat and
//! the Tornado rooms chat, rebuilt on switchboard.
//!
//! Shows: a consumer with the JSON flavour, groups for rooms and for users, publishing from an
//! HTTP handler outside any consumer, and an axum app serving a page and a WebSocket.
//!
//! Run it (in-memory layer, no Redis needed), then open <http://127.0.0.1:8000/>:
//!
//! ```text
//! cargo run --release -p chat
//! ```
//!
//! Several processes (and a Django tutorial chat on the same prefix) share rooms and private
//! messages through Redis (`--layer pubsub` for the pub/sub layer):
//!
//! ```text
//! cargo run --release -p chat -- --redis redis://127.0.0.1:6379 --addr 127.0.0.1:8000
//! cargo run --release -p chat -- --redis redis://127.0.0.1:6379 --addr 127.0.0.1:8001
//! ```
//!
//! Publish into a room from anywhere:
//!
//! ```text
//! curl -X POST -d '{"message":"hello from curl"}' http://127.0.0.1:8000/chat/rooms/lobby/user/curl/
//! ```

use std::net::SocketAddr;

use clap::Parser;
use example_support::{LayerArgs, Ops, OpsArgs};

/// Flags.
#[derive(Parser, Debug)]
#[command(about = "switchboard chat example")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    #[command(flatten)]
    layer: LayerArgs,
    /// Messages each room keeps for clients that reconnect (the in-memory and pub/sub layers;
    /// 0: none). A page away for less than this resumes where it left off.
    #[arg(long, default_value_t = 100)]
    history: usize,
    /// How long a room keeps each message for clients that reconnect, in seconds.
    #[arg(long, default_value_t = 300)]
    history_ttl_secs: u64,
    /// How long a connection stays in its room's presence without a heartbeat, in seconds: the
    /// connections of a chat process that crashed leave the presence within it.
    #[arg(long, default_value_t = 60)]
    presence_ttl_secs: u64,
    /// Whether rooms send `presence.join` / `presence.leave` to their members as people come
    /// and go (throttled to 20 per second per room and process). Off, the presence is still
    /// kept and listed; a room of 100,000 members is better off without a stream of events
    /// each of them receives.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    presence_events: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    example_support::init_tracing();
    let args = Args::parse();
    let ops = Ops::install(&args.ops)?;
    let (history, ttl) = (args.history, args.history_ttl_secs.max(1));
    let presence_ttl = std::time::Duration::from_secs(args.presence_ttl_secs.max(1));
    let layer = args
        .layer
        .build_with(|c, keeps_history| {
            let c = if args.presence_events {
                chat::with_presence_events(c)?
            } else {
                c
            };
            let c = c.presence_ttl(presence_ttl);
            match history {
                n if n > 0 && keeps_history => {
                    chat::with_history(c, n, std::time::Duration::from_secs(ttl))
                }
                _ => Ok(c),
            }
        })
        .await?;
    let settings = chat::Settings {
        shutdown: ops.shutdown.clone(),
        ..chat::Settings::default()
    };
    let app = chat::router(layer.clone(), settings).merge(ops.routes(layer));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tracing::info!(
        "chat on http://{} ({})",
        listener.local_addr()?,
        args.layer.describe()
    );
    example_support::serve(listener, app, ops).await?;
    Ok(())
}
