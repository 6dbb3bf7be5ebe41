//! What every example's `main` does around its router: logging, and serving on a listener with
//! the peer address available to consumers, no Nagle delay, and a clean stop on Ctrl-C.

use std::net::SocketAddr;

/// Logs to stderr; `RUST_LOG` chooses the level (`info` by default).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Serves `app` until Ctrl-C.
pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> std::io::Result<()> {
    // WebSocket frames are small and latency-sensitive: no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
