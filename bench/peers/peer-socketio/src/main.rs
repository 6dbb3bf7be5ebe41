//! `peer-socketio`: serves the socketioxide chat ([`peer_socketio::app`]) on one address until
//! Ctrl-C.

use std::net::SocketAddr;

use clap::Parser;

/// Options.
#[derive(Parser, Debug)]
#[command(name = "peer-socketio", about = "socketioxide chat with rooms")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8200")]
    bind: SocketAddr,
    /// Packets a socket's outgoing buffer holds (socketioxide's `max_buffer_size`; its default
    /// is 128).
    #[arg(long, default_value_t = 1024)]
    buffer: usize,
    /// Seconds between the server's pings to each client.
    #[arg(long, default_value_t = 25)]
    ping_interval_secs: u64,
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
    let app = peer_socketio::app(&peer_socketio::Settings {
        buffer: args.buffer,
        ping_interval: std::time::Duration::from_secs(args.ping_interval_secs.max(1)),
        ..peer_socketio::Settings::default()
    });
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    tracing::info!("peer-socketio listening on {}", args.bind);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracing::info!(dropped = peer_socketio::dropped(), "peer-socketio stopped");
    Ok(())
}
