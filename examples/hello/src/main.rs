//! The guide's chat room, served on the in-memory layer. Run it:
//!
//! ```text
//! cargo run -p hello
//! ```
//!
//! then connect a page from `http://127.0.0.1:8000` to `ws://127.0.0.1:8000/ws/chat/lobby/`.
//! (A script without an `Origin` header is refused with 403 — see the guide's *Serving* for
//! `allow_missing_origin`; the `chat` example allows it.)

use switchboard::{InMemoryLayer, Layer, LayerConfig};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // Refusals and errors are logged (warn); RUST_LOG picks the level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let layer = Layer::new(InMemoryLayer::new(LayerConfig::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    switchboard::serve(listener, hello::router(layer)).await
}
