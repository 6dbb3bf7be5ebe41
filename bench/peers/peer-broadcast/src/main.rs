//! `peer-broadcast`: serves the hand-written axum + `tokio::sync::broadcast` chat
//! ([`peer_broadcast::app`]) on one address until Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use peer_broadcast::Rooms;

/// Options.
#[derive(Parser, Debug)]
#[command(name = "peer-broadcast", about = "Hand-written axum + broadcast chat")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8100")]
    bind: SocketAddr,
    /// Messages a room's channel holds for its slowest receiver.
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
    /// Bytes each connection reads from its socket at a time.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let rooms = Arc::new(Rooms::new(args.capacity, args.read_buffer));
    let app = peer_broadcast::app(rooms.clone());
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    tracing::info!("peer-broadcast listening on {}", args.bind);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracing::info!(lagged = rooms.lagged(), "peer-broadcast stopped");
    Ok(())
}
