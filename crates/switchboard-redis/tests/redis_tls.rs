//! Both Redis layers over TLS, against a redis-server that speaks only TLS (`--port 0`) and
//! requires a client certificate (`--tls-auth-clients yes`), with certificates made at test
//! time: the conformance suites, then what fails at connect and how it says so.
#![allow(clippy::unwrap_used)]

use switchboard_core::{Layer, LayerConfig, LayerError};
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use test_support::layers::{make_core, make_pubsub, msg, recv};
use test_support::redis::fresh_prefix;
use test_support::tls;

mod core_over_tls {
    use super::*;

    async fn make(cfg: LayerConfig) -> Option<(Layer, Layer)> {
        Some(make_core(tls::shared()?.config(cfg)).await)
    }

    switchboard_core::layer_conformance_tests!(make);
}

mod pubsub_over_tls {
    use super::*;

    async fn make(cfg: LayerConfig) -> Option<(Layer, Layer)> {
        Some(make_pubsub(tls::shared()?.config(cfg)).await)
    }

    switchboard_core::layer_conformance_tests!(make);
}

/// Connects both layers with `cfg`; both must fail, and they fail alike.
async fn both_fail(cfg: RedisConfig) -> String {
    let core = RedisLayer::connect(cfg.clone()).await.unwrap_err();
    let pubsub = RedisPubSubLayer::connect(cfg).await.unwrap_err();
    let (core, pubsub) = (core.to_string(), pubsub.to_string());
    // The pub/sub layer's first connection is the same command connection.
    assert_eq!(core, pubsub);
    core
}

#[tokio::test]
async fn what_goes_over_tls_is_what_channels_redis_stores() {
    let Some(server) = tls::shared() else { return };
    let cfg = server.config(LayerConfig::default());
    let (a, b) = make_core(cfg.clone()).await;
    let ch = b.new_channel().await.unwrap();
    b.group_add("room", &ch).await.unwrap();
    a.group_send("room", msg("over tls", 1)).await.unwrap();
    // The group is a sorted set under the prefix, read back through a TLS connection of our own.
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{}:group:room", cfg.prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut server.raw().await)
        .await
        .unwrap();
    assert_eq!(members, [ch.as_str()]);
    assert_eq!(recv(&b, &ch).await, msg("over tls", 1));
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_at_connect_and_says_why() {
    let Some(server) = tls::shared() else { return };
    let cfg = RedisConfig::new(server.url())
        .prefix(fresh_prefix())
        .tls_ca_file(&server.certs.other_ca)
        .tls_client_cert(&server.certs.client_cert, &server.certs.client_key);
    let e = both_fail(cfg).await;
    assert!(e.contains("certificate is not trusted"), "{e}");
    assert!(e.contains(&server.url()), "names the host: {e}");
}

#[tokio::test]
async fn plain_text_to_a_tls_only_server_fails_at_connect_and_says_to_use_rediss() {
    let Some(server) = tls::shared() else { return };
    let cfg = RedisConfig::new(format!("redis://127.0.0.1:{}", server.port)).prefix(fresh_prefix());
    let e = both_fail(cfg).await;
    assert!(e.contains("use a rediss:// URL"), "{e}");
}

#[tokio::test]
async fn a_server_that_asks_for_a_client_certificate_refuses_a_client_without_one() {
    let Some(server) = tls::shared() else { return };
    let cfg = RedisConfig::new(server.url())
        .prefix(fresh_prefix())
        .tls_ca_file(&server.certs.ca);
    let e = both_fail(cfg).await;
    assert!(e.contains("client certificate"), "{e}");
}

#[tokio::test]
async fn tls_settings_on_a_plain_url_are_refused_before_connecting() {
    let Some(server) = tls::shared() else { return };
    let cfg = RedisConfig::new("redis://127.0.0.1:1")
        .prefix(fresh_prefix())
        .tls_ca_file(&server.certs.ca);
    match RedisLayer::connect(cfg).await.unwrap_err() {
        LayerError::Config(e) => assert!(e.contains("not a rediss:// URL"), "{e}"),
        e => panic!("{e}"),
    }
    let cfg = RedisConfig::new(server.url()).tls_ca_file("/nonexistent/ca.pem");
    match RedisLayer::connect(cfg).await.unwrap_err() {
        LayerError::Config(e) => assert!(e.contains("/nonexistent/ca.pem"), "{e}"),
        e => panic!("{e}"),
    }
}

#[tokio::test]
async fn verification_can_be_turned_off_explicitly() {
    let Some(server) = tls::shared() else { return };
    // No CA given: the system roots do not know the test CA, so only `insecure` connects.
    let cfg = RedisConfig::new(server.url())
        .prefix(fresh_prefix())
        .tls_client_cert(&server.certs.client_cert, &server.certs.client_key);
    let e = both_fail(cfg.clone()).await;
    assert!(e.contains("certificate is not trusted"), "{e}");
    let (a, b) = make_pubsub(cfg.tls_insecure(true)).await;
    let ch = b.new_channel().await.unwrap();
    a.send(&ch, msg("unverified", 1)).await.unwrap();
    assert_eq!(recv(&b, &ch).await, msg("unverified", 1));
}
