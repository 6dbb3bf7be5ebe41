//! Rust and a live Django process (channels 4.3 + channels_redis 4.3, configured through
//! Django's CHANNEL_LAYERS) exchange messages through one redis-server: group sends and sends
//! both ways, on the core layer and the pub/sub layer, in clear and with encryption keys, with
//! every value type — bytes stay bytes on the round trip Django → Rust → Django.
//!
//! The Django side is `crates/test-support/django/peer.py` (see `test_support::django`).
#![allow(clippy::unwrap_used)]

use switchboard_core::Value;
use test_support::django::{Django, Kind, all_types, recv, rust_layer};

/// Both directions, both operations, for one layer kind and key set.
async fn exchange(kind: Kind, keys: &[&str]) {
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
    let py = django.new_channel().await;
    let rs = layer.new_channel().await.unwrap();
    django.group_add("mixed", &py).await;
    layer.group_add("mixed", &rs).await.unwrap();

    // Rust group_send → the Django channel in the group (and the Rust one).
    layer.group_send("mixed", all_types(1)).await.unwrap();
    assert_eq!(django.receive(&py).await, all_types(1));
    assert_eq!(recv(&layer, &rs).await, all_types(1));

    // Django group_send → the Rust channel in the group (and the Django one).
    django.group_send("mixed", &all_types(2)).await;
    assert_eq!(recv(&layer, &rs).await, all_types(2));
    assert_eq!(django.receive(&py).await, all_types(2));

    // send to a specific channel, both ways.
    layer.send(py.as_str(), all_types(3)).await.unwrap();
    assert_eq!(django.receive(&py).await, all_types(3));
    django.send(rs.as_str(), &all_types(4)).await;
    assert_eq!(recv(&layer, &rs).await, all_types(4));

    // Bytes from Django arrive as bytes, and go back to Django as bytes.
    let from_django = all_types(5);
    django.send(rs.as_str(), &from_django).await;
    let got = recv(&layer, &rs).await;
    assert_eq!(
        got.get("bytes"),
        Some(&Value::Bytes(vec![0, 1, 127, 128, 254, 255]))
    );
    layer.send(py.as_str(), got).await.unwrap();
    assert_eq!(django.receive(&py).await, from_django);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_exchanges_with_django() {
    exchange(Kind::Core, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_exchanges_with_django_encrypted() {
    exchange(Kind::Core, &["new secret", "old secret"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_exchanges_with_django() {
    exchange(Kind::PubSub, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_exchanges_with_django_encrypted() {
    exchange(Kind::PubSub, &["new secret", "old secret"]).await;
}
