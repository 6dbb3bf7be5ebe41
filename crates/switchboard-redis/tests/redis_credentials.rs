//! Credentials: an ACL user (`redis://user:password@…`) and a password alone
//! (`redis://:password@…`, `requirepass`). Right ones connect; wrong or missing ones fail at
//! connect with an error that says so (no retry loop); no password shows in an error, a
//! `Debug` output or the log.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_core::{Layer, LayerError};
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use test_support::layers::{msg, recv};
use test_support::redis::{AclUser, OwnRedis, fresh_prefix, url};

/// Connects both layers; each must fail within 10 s with a configuration error.
async fn refused(url: &str) -> Vec<LayerError> {
    let cfg = RedisConfig::new(url).prefix(fresh_prefix());
    let within = Duration::from_secs(10);
    let core = tokio::time::timeout(within, RedisLayer::connect(cfg.clone()))
        .await
        .expect("a refused connect must fail, not retry")
        .unwrap_err();
    let pubsub = tokio::time::timeout(within, RedisPubSubLayer::connect(cfg))
        .await
        .expect("a refused connect must fail, not retry")
        .unwrap_err();
    for e in [&core, &pubsub] {
        assert!(matches!(e, LayerError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("refused the credentials"), "{e}");
    }
    vec![core, pubsub]
}

/// Sends through both layers connected with `url`.
async fn works(url: &str) {
    let cfg = RedisConfig::new(url).prefix(fresh_prefix());
    for layer in [
        Layer::new(RedisLayer::connect(cfg.clone()).await.unwrap()),
        Layer::new(RedisPubSubLayer::connect(cfg.clone()).await.unwrap()),
    ] {
        let ch = layer.new_channel().await.unwrap();
        layer.group_add("room", &ch).await.unwrap();
        layer.group_send("room", msg("hi", 1)).await.unwrap();
        assert_eq!(recv(&layer, &ch).await, msg("hi", 1));
        assert!(!format!("{layer:?}").contains("pw-"), "{layer:?}");
    }
}

fn hides(secret: &str, errors: &[LayerError]) {
    for e in errors {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(secret), "the password shows: {shown}");
    }
}

#[tokio::test]
async fn an_acl_user_connects_and_a_wrong_password_is_refused_without_showing_it() {
    let Some(server) = url() else { return };
    let user = AclUser::new(&server, &[]).await;
    works(&user.url()).await;
    let wrong = format!("pw-wrong-{}", uuid::Uuid::new_v4().simple());
    let errors = refused(&user.url_with(&wrong)).await;
    hides(&wrong, &errors);
    hides(&user.password, &errors);
    for e in &errors {
        assert!(e.to_string().contains("redis://***@127.0.0.1"), "{e}");
    }
    let cfg = RedisConfig::new(user.url());
    let shown = format!("{cfg:?} {:?}", cfg.host_names());
    assert!(!shown.contains(&user.password), "{shown}");
}

#[tokio::test]
async fn a_password_alone_connects_and_a_missing_or_wrong_one_is_refused() {
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let Some(redis) = OwnRedis::start_with(&["--requirepass", &password]).await else {
        return;
    };
    let hostport = format!("127.0.0.1:{}", redis.port);
    works(&format!("redis://:{password}@{hostport}")).await;
    refused(&format!("redis://{hostport}")).await;
    let errors = refused(&format!("redis://:pw-wrong@{hostport}")).await;
    hides("pw-wrong", &errors);
}

/// Collects what the log says.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_log_never_shows_the_password() {
    let Some(server) = url() else { return };
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This test's runtime runs on this thread: the layers' tasks log here too.
    let _default = tracing::subscriber::set_default(subscriber);

    let user = AclUser::new(&server, &[]).await;
    let good = user.url();
    let cfg = RedisConfig::new(good.as_str()).prefix(fresh_prefix());
    let core = Layer::new(RedisLayer::connect(cfg.clone()).await.unwrap());
    let pubsub = Layer::new(RedisPubSubLayer::connect(cfg).await.unwrap());
    let ch = core.new_channel().await.unwrap();
    core.group_add("room", &ch).await.unwrap();
    let pch = pubsub.new_channel().await.unwrap();
    pubsub.group_add("room", &pch).await.unwrap();
    // Cut the layers' connections: they log the loss and the reconnect, naming the host.
    user.kill_connections().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = core.group_send("room", msg("after", 1)).await;
    let _ = pubsub.group_send("room", msg("after", 1)).await;
    let _ = refused(&user.url_with("pw-wrong")).await;

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("redis://***@127.0.0.1"),
        "the log names the host: {text}"
    );
    assert!(
        !text.contains(&user.password),
        "the password is in the log: {text}"
    );
    assert!(
        !text.contains("pw-wrong"),
        "the password is in the log: {text}"
    );
}
