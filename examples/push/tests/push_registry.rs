//! The push gateway's channel registries, held to one set of checks: the in-memory registry
//! and the Redis registry (against the real redis-server at `SWITCHBOARD_REDIS_URL`, which
//! `scripts/test` starts). Also the parsing of channel paths and cursors.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use push::channel::{format_cursor, parse_channels, parse_cursor};
use push::redis_registry::RedisRegistry;
use push::registry::{MemoryRegistry, Registry, RegistryConfig};
use switchboard::Position;
use test_support::redis::url as redis_url;

/// A key prefix no other test uses.
fn fresh_prefix() -> String {
    format!("{}:", test_support::redis::fresh_prefix())
}

#[derive(Clone)]
enum Backend {
    Memory,
    Redis { url: String, prefix: String },
}

impl Backend {
    /// A registry on the Redis under test; `None` (a skip) without one.
    fn redis() -> Option<Backend> {
        Some(Backend::Redis {
            url: redis_url()?,
            prefix: fresh_prefix(),
        })
    }

    async fn registry(&self, config: RegistryConfig) -> Arc<dyn Registry> {
        match self {
            Backend::Memory => Arc::new(MemoryRegistry::new(config)),
            Backend::Redis { url, prefix } => {
                Arc::new(RedisRegistry::connect(url, prefix, config).await.unwrap())
            }
        }
    }

    async fn cleanup(&self) {
        if let Backend::Redis { url, prefix } = self {
            let r = RedisRegistry::connect(url, prefix, config(60_000, 60_000))
                .await
                .unwrap();
            r.flush().await.unwrap();
        }
    }
}

fn config(channel_ttl_ms: u64, publish_lifetime_ms: u64) -> RegistryConfig {
    RegistryConfig {
        channel_ttl: Duration::from_millis(channel_ttl_ms),
        publish_lifetime: Duration::from_millis(publish_lifetime_ms),
    }
}

// Timed checks: everything that must still be there is checked with a second or more to
// spare; everything that must be gone, after sleeping past its time (a sleep is never short).
// A loaded machine can only make these tests slower, not wrong.

async fn the_registry_knows_published_and_subscribed_channels(b: Backend) {
    let r = b.registry(config(2000, 60_000)).await;
    assert_eq!(r.channel_count().await.unwrap(), 0);
    assert_eq!(r.published("user-1").await.unwrap(), 1);
    assert_eq!(r.published("user-1").await.unwrap(), 2);
    r.touch(&["user-2".into(), "global".into()]).await.unwrap();
    assert!(r.exists("user-2").await.unwrap());
    assert!(!r.exists("nobody").await.unwrap());
    assert_eq!(r.channel_count().await.unwrap(), 3);
    let all = r.channels("").await.unwrap();
    let names: Vec<(&str, u64)> = all
        .iter()
        .map(|c| (c.channel.as_str(), c.published))
        .collect();
    assert_eq!(names, [("global", 0), ("user-1", 2), ("user-2", 0)]);
    assert_eq!(r.channels("user-").await.unwrap().len(), 2);
    assert_eq!(r.info("user-1").await.unwrap().unwrap().published, 2);
    assert!(r.info("nobody").await.unwrap().is_none());

    // Subscribed-only channels are forgotten after channel_ttl unless touched again (that
    // touching keeps them is `touching_keeps_a_quiet_channel_and_its_count`); a published one
    // lives for the publish lifetime.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!r.exists("user-2").await.unwrap());
    assert!(!r.exists("global").await.unwrap());
    assert!(
        r.exists("user-1").await.unwrap(),
        "published: it may store messages"
    );
    assert_eq!(r.channel_count().await.unwrap(), 1);

    // Deleting forgets it, its count included.
    assert!(r.delete("user-1").await.unwrap());
    assert!(!r.delete("user-1").await.unwrap());
    assert!(!r.exists("user-1").await.unwrap());
    assert_eq!(r.published("user-1").await.unwrap(), 1);
    assert_eq!(
        r.published_total().await.unwrap(),
        3,
        "deleting does not undo publishing"
    );
    b.cleanup().await;
}

async fn touching_keeps_a_quiet_channel_and_its_count(b: Backend) {
    let r = b.registry(config(2000, 2000)).await;
    r.published("q").await.unwrap();
    r.published("r").await.unwrap();
    let start = tokio::time::Instant::now(); // after the publishes
    // Touched every 250 ms (a subscriber is still there), for longer than channel_ttl.
    while start.elapsed() < Duration::from_millis(2100) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        r.touch(&["q".into()]).await.unwrap();
    }
    assert_eq!(r.published("q").await.unwrap(), 2, "the count went on");
    // The channel nobody touched was forgotten meanwhile: its count starts again.
    assert_eq!(r.published("r").await.unwrap(), 1);
    b.cleanup().await;
}

async fn concurrent_publishes_are_each_counted_once(b: Backend) {
    let r = b.registry(config(60_000, 60_000)).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let r = r.clone();
        tasks.push(tokio::spawn(
            async move { r.published("race").await.unwrap() },
        ));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<_>>());
    assert_eq!(r.published_total().await.unwrap(), 50);
    b.cleanup().await;
}

/// `purge` forgets what expired (the gateway calls it periodically) and nothing else.
async fn purge_forgets_expired_channels_only(b: Backend) {
    let r = b.registry(config(200, 60_000)).await;
    r.touch(&["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    r.published("d").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.purge().await.unwrap(), 3);
    assert_eq!(r.purge().await.unwrap(), 0);
    assert!(r.exists("d").await.unwrap());
    assert_eq!(r.channel_count().await.unwrap(), 1);
    b.cleanup().await;
}

macro_rules! registry_checks {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $check() {
                    let Some(backend) = super::Backend::redis() else {
                        return;
                    };
                    super::$check(backend).await;
                }
            )*
        }
    };
}

registry_checks!(
    the_registry_knows_published_and_subscribed_channels,
    touching_keeps_a_quiet_channel_and_its_count,
    concurrent_publishes_are_each_counted_once,
    purge_forgets_expired_channels_only,
);

#[tokio::test]
async fn two_redis_registries_on_one_prefix_share_channels_and_counts() {
    let Some(b) = Backend::redis() else {
        return;
    };
    let one = b.registry(config(60_000, 60_000)).await;
    let two = b.registry(config(60_000, 60_000)).await;
    assert_eq!(one.published("x").await.unwrap(), 1);
    assert_eq!(two.published("x").await.unwrap(), 2);
    assert_eq!(two.published_total().await.unwrap(), 2);
    assert!(one.exists("x").await.unwrap());
    b.cleanup().await;
    // A registry under another prefix sees none of it.
    let Some(other) = Backend::redis() else {
        return;
    };
    let other = other.registry(config(60_000, 60_000)).await;
    assert!(!other.exists("x").await.unwrap());
}

#[tokio::test]
async fn a_redis_registry_that_cannot_connect_says_so() {
    let port = test_support::free_port();
    let err = RedisRegistry::connect(&format!("redis://127.0.0.1:{port}"), "x:", config(1, 1))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("channel registry (redis)"),
        "{err}"
    );
}

#[test]
fn channel_paths_backtracks_and_limits() {
    let got = parse_channels("a/b.b5//c.d", 64, 8, true).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!((got[1].id.as_str(), got[1].backtrack), ("b", Some(5)));
    assert_eq!((got[2].id.as_str(), got[2].backtrack), ("c.d", None));
    assert!(
        parse_channels("a.b5", 64, 8, false).is_err(),
        "no backtrack when publishing"
    );
    assert!(parse_channels("a b", 64, 8, true).is_err());
    assert!(parse_channels("", 64, 8, true).is_err());
    assert!(parse_channels("abcdef", 5, 8, true).is_err());
    assert!(parse_channels("a/b/c", 64, 2, true).is_err());
    // The same channel twice is one channel, with the larger backtrack.
    let dup = parse_channels("a/a.b3", 64, 1, true).unwrap();
    assert_eq!((dup.len(), dup[0].backtrack), (1, Some(3)));
}

#[test]
fn cursors_parse_and_format() {
    let p = |s: &str| Some(s.parse::<Position>().unwrap());
    let one = parse_channels("a", 64, 8, true).unwrap();
    assert_eq!(parse_cursor("e1:42", &one).unwrap(), [p("e1:42")]);
    assert_eq!(parse_cursor("W/\"e1:42\"", &one).unwrap(), [p("e1:42")]);
    assert_eq!(parse_cursor("a=e1:7", &one).unwrap(), [p("e1:7")]);
    assert_eq!(parse_cursor("", &one).unwrap(), [None]);
    assert!(
        parse_cursor("42", &one).is_err(),
        "a bare number is not a position"
    );
    assert!(parse_cursor("e!:1", &one).is_err());
    let two = parse_channels("a/b", 64, 8, true).unwrap();
    assert!(parse_cursor("e1:42", &two).is_err());
    assert_eq!(
        parse_cursor("b=e2:3,zz=e9:9,a=e1:1", &two).unwrap(),
        [p("e1:1"), p("e2:3")]
    );
    assert_eq!(parse_cursor("b=e2:3", &two).unwrap(), [None, p("e2:3")]);
    assert!(parse_cursor("a=e1:x", &two).is_err());
    assert!(
        parse_cursor("a:1,b:2", &two).is_err(),
        "the old form is refused"
    );
    let (e1, e2) = (
        "e1:4".parse::<Position>().unwrap(),
        "e2:0".parse::<Position>().unwrap(),
    );
    assert_eq!(format_cursor([("a", Some(&e1))].into_iter()), "e1:4");
    assert_eq!(format_cursor([("a", None)].into_iter()), "");
    assert_eq!(
        format_cursor([("a", Some(&e1)), ("b", Some(&e2))].into_iter()),
        "a=e1:4,b=e2:0"
    );
    assert_eq!(
        format_cursor([("a", None), ("b", Some(&e2))].into_iter()),
        "b=e2:0"
    );
}
