//! Rust and a live Django process (channels 4.3 + channels_redis 4.3, configured through
//! Django's CHANNEL_LAYERS) exchange messages through one redis-server: group sends and sends
//! both ways, on the core layer and the pub/sub layer, in clear and with encryption keys, with
//! every value type — bytes stay bytes on the round trip Django → Rust → Django.
//!
//! The Django side is `crates/test-support/django/peer.py` (see `test_support::django`).
#![allow(clippy::unwrap_used)]

use switchboard_core::LayerConfig;
use test_support::django::{Django, Kind, all_types, exchange, rust_layer, rust_layer_with};

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

/// A group with history shared with Django: Rust's messages reach the Django member with their
/// position as one more key (`__switchboard_position__`) and every other value as it was sent;
/// Django's message reaches the Rust member live without a position, takes no offset and is
/// not in the history a resume replays.
async fn history_is_shared_with_django(kind: Kind) {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let cfg = switchboard_redis::RedisConfig::new(url.as_str())
        .prefix(prefix.as_str())
        .layer(switchboard_core::layer::conformance::history_config());
    let (django, layer) = tokio::join!(
        Django::start(kind, &url, &prefix, &[]),
        rust_layer_with(kind, cfg)
    );
    let Some(mut django) = django else {
        return;
    };
    let py = django.new_channel().await;
    django.group_add("hist_mixed", &py).await;
    let mut sub = layer.subscribe().await.unwrap();
    let start = sub.group_add_since("hist_mixed", None).await.unwrap();
    let epoch = start.position.epoch().to_owned();

    layer.group_send("hist_mixed", all_types(1)).await.unwrap();
    let at_django = django.receive(&py).await;
    assert_eq!(
        at_django
            .get("__switchboard_position__")
            .and_then(|v| v.as_str()),
        Some(format!("{epoch}:1").as_str()),
        "{at_django:?}"
    );
    let mut fields = at_django.fields().clone();
    fields.shift_remove("__switchboard_position__");
    assert_eq!(
        switchboard_core::Message::from_map(fields).unwrap(),
        all_types(1)
    );
    let at_rust = sub.recv().await.unwrap();
    assert_eq!(at_rust, all_types(1));
    assert_eq!(at_rust.position().map(|p| p.offset()), Some(1));

    django.group_send("hist_mixed", &all_types(2)).await;
    let from_django = sub.recv().await.unwrap();
    assert_eq!(from_django, all_types(2));
    assert!(from_django.position().is_none(), "{from_django:?}");
    let _ = django.receive(&py).await;

    layer.group_send("hist_mixed", all_types(3)).await.unwrap();
    let third = sub.recv().await.unwrap();
    assert_eq!(
        third.position().map(|p| p.offset()),
        Some(2),
        "Django's took no offset"
    );
    let _ = django.receive(&py).await;

    let mut again = layer.subscribe().await.unwrap();
    let r = again
        .group_add_since("hist_mixed", Some(&start.position))
        .await
        .unwrap();
    assert!(r.recovered && r.replayed == 2, "{r:?}");
    assert_eq!(again.recv().await.unwrap(), all_types(1));
    assert_eq!(again.recv().await.unwrap(), all_types(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_shares_history_groups_with_django() {
    history_is_shared_with_django(Kind::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_shares_history_groups_with_django() {
    history_is_shared_with_django(Kind::PubSub).await;
}
