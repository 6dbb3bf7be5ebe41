//! An echo server for the Autobahn WebSocket test suite: a switchboard [`Consumer`] that sends
//! every text and binary message back as it came, served through the library's own
//! [`Endpoint`] on axum. `scripts/autobahn` builds it, starts it and points
//! `wstest -m fuzzingclient` at it.
//!
//! ```text
//! autobahn-echo PORT        # serves ws://127.0.0.1:PORT/ (loopback only)
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use switchboard::{
    Connection, ConnectionConfig, Consumer, Endpoint, Frame, InMemoryLayer, Layer, LayerConfig,
    Message, Result, Scope,
};

/// Autobahn's largest messages (cases 9.*) are 16 MiB; leave room above them.
const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// Sends each client message back: text as text, binary as binary.
#[derive(Debug)]
struct Echo;

impl Consumer for Echo {
    type Incoming = Frame;
    type Event = Message;

    async fn receive(&mut self, conn: &mut Connection, frame: Frame) -> Result<()> {
        match frame {
            Frame::Text(text) => conn.send_text(text).await,
            Frame::Binary(bytes) => conn.send_bytes(bytes).await,
        }
    }
}

fn echo(_scope: &Scope) -> Echo {
    Echo
}

/// The app: the echo endpoint at `/`, open to clients without an `Origin` (wstest sends none).
fn router() -> axum::Router {
    let layer = Layer::new(InMemoryLayer::new(LayerConfig::default()));
    let config = ConnectionConfig::default().max_message_size(MAX_MESSAGE_SIZE);
    let endpoint = Endpoint::new(layer, echo)
        .allow_missing_origin(true)
        .config(config);
    axum::Router::new().route("/", endpoint.into_route())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let port = match (args.next().map(|a| a.parse::<u16>()), args.next()) {
        (Some(Ok(port)), None) => port,
        _ => {
            eprintln!("usage: autobahn-echo PORT");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("autobahn-echo: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("autobahn-echo: serving ws://{addr}/");
    let app = router().into_make_service_with_connect_info::<SocketAddr>();
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autobahn-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
