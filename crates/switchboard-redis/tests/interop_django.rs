//! Rust and a live Django process (channels 4.3 + channels_redis 4.3, configured through
//! Django's CHANNEL_LAYERS) exchange messages through one redis-server: group sends and sends
//! both ways, on the core layer and the pub/sub layer, in clear and with encryption keys, with
//! every value type — bytes stay bytes on the round trip Django → Rust → Django.
//!
//! The Django side is `crates/test-support/django/peer.py` (see `test_support::django`).
#![allow(clippy::unwrap_used)]

use switchboard_core::LayerConfig;
use test_support::django::{Django, Kind, exchange, rust_layer, rust_layer_with};

/// Both directions, both operations, for one layer kind and key set.
async fn on_the_test_redis(kind: Kind, keys: &[&str]) {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let (django, layer) = tokio::join!(
        Django::start(kind, &url, &prefix, keys),
        rust_layer(kind, &url, &prefix, keys)
    );
    let Some(mut django) = django else {
        return;
    };
    exchange(&mut django, &layer).await;
}

/// The same over TLS with client certificates: Django's host is channels_redis's
/// `{"address": "rediss://…", "ssl_ca_certs": …, "ssl_certfile": …, "ssl_keyfile": …}`.
async fn over_tls(kind: Kind) {
    let Some(server) = test_support::tls::shared() else {
        return;
    };
    let cfg = server.config(LayerConfig::default());
    let host = serde_json::json!({
        "address": server.url(),
        "ssl_ca_certs": server.certs.ca,
        "ssl_certfile": server.certs.client_cert,
        "ssl_keyfile": server.certs.client_key,
    })
    .to_string();
    let (django, layer) = tokio::join!(
        Django::start(kind, &host, &cfg.prefix, &[]),
        rust_layer_with(kind, cfg.clone())
    );
    let Some(mut django) = django else {
        return;
    };
    exchange(&mut django, &layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_exchanges_with_django_over_tls() {
    over_tls(Kind::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_exchanges_with_django_over_tls() {
    over_tls(Kind::PubSub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_exchanges_with_django() {
    on_the_test_redis(Kind::Core, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_exchanges_with_django_encrypted() {
    on_the_test_redis(Kind::Core, &["new secret", "old secret"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_exchanges_with_django() {
    on_the_test_redis(Kind::PubSub, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_exchanges_with_django_encrypted() {
    on_the_test_redis(Kind::PubSub, &["new secret", "old secret"]).await;
}
