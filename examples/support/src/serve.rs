//! What every example's `main` does around its router: logging, metrics, health checks, and
//! serving with a graceful shutdown on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard::{DrainConfig, HttpLimits, Layer, Shutdown};

/// Logs to stderr; `RUST_LOG` chooses the level (`info` by default).
/// `RUST_LOG=info,switchboard_server=debug` adds each WebSocket connection's span
/// (`connection{path channel peer}`) and logs every accept and close with its code.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// The operations flags every example shares.
#[derive(clap::Args, Clone, Debug)]
pub struct OpsArgs {
    /// Serve /metrics to any address, not only to loopback clients.
    #[arg(long)]
    pub metrics_public: bool,
    /// On SIGTERM or Ctrl-C, close this many WebSocket connections at once...
    #[arg(long, default_value_t = 1000)]
    pub drain_batch: usize,
    /// ...every this many milliseconds...
    #[arg(long, default_value_t = 100)]
    pub drain_interval_ms: u64,
    /// ...and exit after this many seconds even if some are still open.
    #[arg(long, default_value_t = 25)]
    pub drain_timeout_secs: u64,
    /// Close an HTTP connection that has not sent a whole request head this many seconds
    /// after opening (or after its last response).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Stop accepting while this many connections wait for their first request head.
    #[arg(long, default_value_t = 1024)]
    pub max_pending: usize,
}

/// What `main` holds for serving: the shutdown handle the app's endpoints are given, and the
/// metrics exporter.
#[derive(Clone, Debug)]
pub struct Ops {
    /// Give it to every endpoint (`Endpoint::shutdown`) and long-lived response.
    pub shutdown: Shutdown,
    prometheus: PrometheusHandle,
    args: OpsArgs,
}

/// Layer operation latency buckets, in seconds: 10 µs to 5 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.5, 5.0,
];

impl Ops {
    /// Installs the Prometheus recorder (call it before building the layer: metric handles are
    /// taken at first use) and makes the shutdown handle.
    pub fn install(args: &OpsArgs) -> Result<Ops, Box<dyn std::error::Error + Send + Sync>> {
        let prometheus = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
            .install_recorder()?;
        switchboard::metrics::enable();
        let upkeep = prometheus.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(Ops {
            shutdown: Shutdown::new(),
            prometheus,
            args: args.clone(),
        })
    }

    /// `/metrics` (Prometheus text; loopback clients only unless `--metrics-public`),
    /// `/healthz` (200 while the process serves) and `/readyz` (200 while the layer answers
    /// and no drain has begun, else 503), for `layer`.
    pub fn routes(&self, layer: Layer) -> Router {
        let metrics = MetricsState {
            prometheus: self.prometheus.clone(),
            layer: layer.clone(),
            public: self.args.metrics_public,
        };
        Router::new()
            .route("/metrics", get(metrics_page).with_state(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(readyz).with_state((layer, self.shutdown.clone())),
            )
    }

    fn http_limits(&self) -> HttpLimits {
        HttpLimits::default()
            .header_timeout(Duration::from_secs(self.args.header_timeout_secs))
            .max_pending(self.args.max_pending)
    }

    fn drain_config(&self) -> DrainConfig {
        DrainConfig::default()
            .batch_size(self.args.drain_batch)
            .batch_interval(Duration::from_millis(self.args.drain_interval_ms))
            .deadline(Duration::from_secs(self.args.drain_timeout_secs))
    }
}

/// The gauge of tasks alive on the tokio runtime, sampled when `/metrics` is read.
pub const TOKIO_ALIVE_TASKS: &str = "switchboard_tokio_alive_tasks";

#[derive(Clone)]
struct MetricsState {
    prometheus: PrometheusHandle,
    layer: Layer,
    public: bool,
}

async fn metrics_page(State(st): State<MetricsState>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if !st.public && !peer.is_some_and(|ip| ip.is_loopback()) {
        return (
            StatusCode::FORBIDDEN,
            "/metrics answers loopback clients only (start with --metrics-public to open it)\n",
        )
            .into_response();
    }
    switchboard::metrics::record_layer_stats(&st.layer);
    let mut page = st.prometheus.render();
    // Sampled at scrape time: tasks alive on this runtime (connections, their writers, the
    // layer's loops, timers), which a soak watches for leaks.
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    page.push_str(&format!(
        "# HELP {TOKIO_ALIVE_TASKS} tasks alive on the tokio runtime\n\
         # TYPE {TOKIO_ALIVE_TASKS} gauge\n{TOKIO_ALIVE_TASKS} {alive}\n"
    ));
    ([("content-type", "text/plain; version=0.0.4")], page).into_response()
}

async fn readyz(State((layer, shutdown)): State<(Layer, Shutdown)>) -> Response {
    if shutdown.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), layer.check()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: the channel layer does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "channel layer unavailable\n",
            )
                .into_response()
        }
        Err(_) => {
            tracing::warn!("readiness check: the channel layer did not answer within 2 s");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "channel layer unavailable\n",
            )
                .into_response()
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Serves `app` until SIGTERM or Ctrl-C, then drains: stops accepting, closes the WebSocket
/// connections with 1001 in batches (their groups go with them), waits for them and for
/// in-flight HTTP requests, and closes the layer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    ops: Ops,
) -> std::io::Result<()> {
    let drain = tokio::spawn({
        let ops = ops.clone();
        async move {
            stop_signal().await;
            ops.shutdown.drain(ops.drain_config()).await
        }
    });
    switchboard::serve(listener, app)
        .limits(ops.http_limits())
        .shutdown(&ops.shutdown)
        .await?;
    match drain.await {
        Ok(report) if report.remaining == 0 => {
            tracing::info!(closed = report.told, elapsed = ?report.elapsed, "shut down cleanly");
        }
        Ok(report) => tracing::warn!(
            closed = report.told,
            remaining = report.remaining,
            "shut down with connections still open"
        ),
        Err(e) => tracing::error!(error = %e, "the drain task failed"),
    }
    Ok(())
}
