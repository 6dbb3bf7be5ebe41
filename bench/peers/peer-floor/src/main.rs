//! `peer-floor`: serves the floor chat ([`peer_floor::serve`]) on one address until Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use peer_floor::Rooms;

/// Options.
#[derive(Parser, Debug)]
#[command(
    name = "peer-floor",
    about = "The least a WebSocket chat server does per delivery"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8303")]
    bind: SocketAddr,
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
    let rooms = Arc::new(Rooms::new(args.read_buffer));
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    tracing::info!("peer-floor listening on {}", args.bind);
    tokio::select! {
        r = peer_floor::serve(listener, rooms.clone()) => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(stalls = rooms.stalls(), "peer-floor stopped");
    Ok(())
}
