//! The operations routes the examples share, served on loopback: `/metrics` answers loopback
//! clients and refuses a peer it cannot place; `/readyz` turns 503 when a drain begins while
//! `/healthz` stays 200; the layer's counters reach the scrape.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use example_support::{Ops, OpsArgs};
use switchboard::{InMemoryLayer, Layer};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let args = OpsArgs {
        metrics_public: false,
        drain_batch: 10,
        drain_interval_ms: 10,
        drain_timeout_secs: 5,
        header_timeout_secs: 10,
        max_pending: 1024,
    };
    let ops = Ops::install(&args).unwrap();
    let layer = Layer::new(InMemoryLayer::default());
    let me = layer.new_channel().await.unwrap();
    layer.group_add("g", &me).await.unwrap();
    layer
        .group_send("g", serde_json::json!({"type": "x"}))
        .await
        .unwrap();
    let app = ops.routes(layer.clone());

    // Served without the peer address: /metrics cannot tell loopback, so it refuses.
    let blind = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let blind_addr = blind.local_addr().unwrap();
    tokio::spawn(axum::serve(blind, app.clone()).into_future());
    let (status, body) = get(blind_addr, "/metrics").await;
    assert_eq!(status, 403);
    assert!(body.contains("--metrics-public"), "{body}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(switchboard::serve(listener, app).into_future());
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("switchboard_group_deliveries_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_layer_operation_seconds_bucket{op=\"group_send\""));
    assert!(
        metrics.contains("# HELP switchboard_group_deliveries_total Group messages queued"),
        "{metrics}"
    );

    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
    ops.shutdown.begin();
    assert_eq!(get(addr, "/readyz").await, (503, "draining\n".into()));
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
}
