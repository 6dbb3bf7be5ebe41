//! The push gateway's history stores, held to one set of checks: the in-memory store and the
//! Redis store (against the real redis-server at `SWITCHBOARD_REDIS_URL`, which `scripts/test`
//! starts). Also the parsing of channel paths and cursors.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use push::channel::{format_cursor, parse_channels, parse_cursor};
use push::redis_store::RedisStore;
use push::store::{Draft, HistoryStore, MemoryStore, Read, StoreConfig, now_ms};
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
    /// A store on the Redis under test; `None` (a skip) without one.
    fn redis() -> Option<Backend> {
        Some(Backend::Redis {
            url: redis_url()?,
            prefix: fresh_prefix(),
        })
    }

    async fn store(&self, config: StoreConfig) -> Arc<dyn HistoryStore> {
        match self {
            Backend::Memory => Arc::new(MemoryStore::new(config)),
            Backend::Redis { url, prefix } => {
                Arc::new(RedisStore::connect(url, prefix, config).await.unwrap())
            }
        }
    }

    async fn cleanup(&self) {
        if let Backend::Redis { url, prefix } = self {
            let store = RedisStore::connect(url, prefix, config(1)).await.unwrap();
            store.flush().await.unwrap();
        }
    }
}

fn config(keep: usize) -> StoreConfig {
    StoreConfig {
        keep,
        message_ttl: Duration::from_secs(60),
        channel_ttl: Duration::from_secs(60),
    }
}

fn draft(text: &str) -> Draft<'_> {
    Draft {
        text,
        event_type: None,
        time_ms: now_ms(),
    }
}

fn ids(h: &push::store::History) -> Vec<u64> {
    h.messages.iter().map(|m| m.id).collect()
}

async fn ids_count_up_per_channel_and_the_last_n_are_kept(b: Backend) {
    let s = b.store(config(3)).await;
    for i in 1..=5u64 {
        let p = s.publish("a", draft(&format!("a{i}"))).await.unwrap();
        assert_eq!((p.id, p.stored), (i, i.min(3)));
    }
    assert_eq!(s.publish("b", draft("b1")).await.unwrap().id, 1);
    assert_eq!(ids(&s.read("a", Read::Since(0)).await.unwrap()), [3, 4, 5]);
    assert_eq!(ids(&s.read("a", Read::Since(3)).await.unwrap()), [4, 5]);
    assert_eq!(
        ids(&s.read("a", Read::Since(5)).await.unwrap()),
        [] as [u64; 0]
    );
    assert_eq!(ids(&s.read("a", Read::Last(2)).await.unwrap()), [4, 5]);
    assert_eq!(ids(&s.read("a", Read::Last(10)).await.unwrap()), [3, 4, 5]);
    assert_eq!(
        ids(&s.read("a", Read::Last(0)).await.unwrap()),
        [] as [u64; 0]
    );
    let h = s.read("a", Read::Nothing).await.unwrap();
    assert_eq!((h.last_id, h.messages.len()), (5, 0));
    let h = s.read("nothing", Read::Since(0)).await.unwrap();
    assert_eq!((h.last_id, h.messages.len()), (0, 0));
    let m = &s.read("a", Read::Last(1)).await.unwrap().messages[0];
    assert_eq!((m.channel.as_str(), m.text.as_str()), ("a", "a5"));
    b.cleanup().await;
}

async fn messages_round_trip_exactly(b: Backend) {
    let s = b.store(config(10)).await;
    let text = "a:b:c\n\"quoted\" ✓ \\ {\"json\":1}\r\n\u{0}";
    let now = now_ms();
    s.publish(
        "c",
        Draft {
            text,
            event_type: Some("update"),
            time_ms: now,
        },
    )
    .await
    .unwrap();
    s.publish("c", draft("")).await.unwrap();
    let h = s.read("c", Read::Since(0)).await.unwrap();
    assert_eq!(h.messages[0].text, text);
    assert_eq!(h.messages[0].event_type.as_deref(), Some("update"));
    assert_eq!(h.messages[0].time_ms, now);
    assert_eq!(h.messages[1].text, "");
    assert_eq!(h.messages[1].event_type, None);
    b.cleanup().await;
}

async fn concurrent_publishes_get_distinct_consecutive_ids(b: Backend) {
    let s = b.store(config(100)).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.publish("race", draft(&i.to_string())).await.unwrap().id
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<_>>());
    assert_eq!(
        ids(&s.read("race", Read::Since(0)).await.unwrap()),
        (1..=50).collect::<Vec<_>>(),
        "stored in id order"
    );
    assert_eq!(s.published_total().await.unwrap(), 50);
    b.cleanup().await;
}

// Timed checks: everything that must still be there is checked with a second or more to
// spare; everything that must be gone, after sleeping past its time (a sleep is never short).
// A loaded machine can only make these tests slower, not wrong.

async fn stored_messages_expire(b: Backend) {
    let s = b
        .store(StoreConfig {
            keep: 10,
            message_ttl: Duration::from_millis(2500),
            channel_ttl: Duration::from_millis(100),
        })
        .await;
    s.publish("t", draft("fresh")).await.unwrap();
    let start = tokio::time::Instant::now(); // after the publish: the message is older
    // Past channel_ttl, the channel stays known as long as it stores messages.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.exists("t").await.unwrap());
    let h = s.read("t", Read::Last(5)).await.unwrap();
    assert_eq!((h.last_id, ids(&h)), (1, vec![1]));
    assert_eq!(s.info("t").await.unwrap().unwrap().stored_messages, 1);
    tokio::time::sleep_until(start + Duration::from_millis(2600)).await;
    // Expired; the channel, which lived as long as its messages, is forgotten…
    assert!(!s.exists("t").await.unwrap());
    assert_eq!(s.read("t", Read::Since(0)).await.unwrap().messages.len(), 0);
    // …and its ids start again.
    assert_eq!(s.publish("t", draft("again")).await.unwrap().id, 1);
    b.cleanup().await;
}

/// Each message expires on its own, by the time it was published.
async fn each_message_expires_by_its_own_time(b: Backend) {
    let s = b.store(config(10)).await; // messages live 60 s
    let long_ago = now_ms() - 120_000;
    s.publish(
        "t",
        Draft {
            text: "old",
            event_type: None,
            time_ms: long_ago,
        },
    )
    .await
    .unwrap();
    s.publish("t", draft("new")).await.unwrap();
    let h = s.read("t", Read::Since(0)).await.unwrap();
    assert_eq!((h.last_id, ids(&h)), (2, vec![2]));
    assert_eq!(ids(&s.read("t", Read::Last(5)).await.unwrap()), [2]);
    assert_eq!(s.info("t").await.unwrap().unwrap().stored_messages, 1);
    b.cleanup().await;
}

async fn the_registry_knows_published_and_subscribed_channels(b: Backend) {
    let s = b
        .store(StoreConfig {
            keep: 5,
            message_ttl: Duration::from_secs(60),
            channel_ttl: Duration::from_millis(2000),
        })
        .await;
    assert_eq!(s.channel_count().await.unwrap(), 0);
    s.publish("user-1", draft("x")).await.unwrap();
    s.publish("user-1", draft("y")).await.unwrap();
    s.touch(&["user-2".into(), "global".into()]).await.unwrap();
    assert!(s.exists("user-2").await.unwrap());
    assert!(!s.exists("nobody").await.unwrap());
    assert_eq!(s.channel_count().await.unwrap(), 3);
    let all = s.channels("").await.unwrap();
    let names: Vec<&str> = all.iter().map(|c| c.channel.as_str()).collect();
    assert_eq!(names, ["global", "user-1", "user-2"]);
    assert_eq!((all[1].published_messages, all[1].stored_messages), (2, 2));
    assert_eq!(s.channels("user-").await.unwrap().len(), 2);
    let info = s.info("user-2").await.unwrap().unwrap();
    assert_eq!((info.published_messages, info.stored_messages), (0, 0));
    assert!(s.info("nobody").await.unwrap().is_none());

    // Subscribed-only channels are forgotten after channel_ttl unless touched again (that
    // touching keeps them is `touching_keeps_a_quiet_channels_ids`).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!s.exists("user-2").await.unwrap());
    assert!(!s.exists("global").await.unwrap());
    assert!(s.exists("user-1").await.unwrap(), "it stores messages");
    assert_eq!(s.channel_count().await.unwrap(), 1);

    // Deleting forgets everything, ids included.
    assert!(s.delete("user-1").await.unwrap());
    assert!(!s.delete("user-1").await.unwrap());
    assert!(!s.exists("user-1").await.unwrap());
    assert_eq!(s.read("user-1", Read::Since(0)).await.unwrap().last_id, 0);
    assert_eq!(s.publish("user-1", draft("z")).await.unwrap().id, 1);
    assert_eq!(
        s.published_total().await.unwrap(),
        3,
        "deleting does not undo publishing"
    );
    b.cleanup().await;
}

async fn touching_keeps_a_quiet_channels_ids(b: Backend) {
    let s = b
        .store(StoreConfig {
            keep: 0,
            message_ttl: Duration::from_millis(100),
            channel_ttl: Duration::from_millis(2000),
        })
        .await;
    assert_eq!(s.publish("q", draft("x")).await.unwrap().id, 1);
    assert_eq!(s.publish("r", draft("x")).await.unwrap().id, 1);
    let start = tokio::time::Instant::now(); // after the publishes
    // Touched every 250 ms (a subscriber is still there), for longer than channel_ttl.
    while start.elapsed() < Duration::from_millis(2100) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.touch(&["q".into()]).await.unwrap();
    }
    assert_eq!(
        s.publish("q", draft("y")).await.unwrap().id,
        2,
        "ids went on"
    );
    // The channel nobody touched was forgotten meanwhile: its ids start again.
    assert_eq!(s.publish("r", draft("y")).await.unwrap().id, 1);
    b.cleanup().await;
}

/// `purge` forgets what expired (the gateway calls it periodically) and nothing else.
async fn purge_forgets_expired_channels_only(b: Backend) {
    let s = b
        .store(StoreConfig {
            keep: 5,
            message_ttl: Duration::from_secs(60),
            channel_ttl: Duration::from_millis(200),
        })
        .await;
    s.touch(&["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    s.publish("d", draft("kept for a minute")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.purge().await.unwrap(), 3);
    assert_eq!(s.purge().await.unwrap(), 0);
    assert!(s.exists("d").await.unwrap());
    assert_eq!(s.channel_count().await.unwrap(), 1);
    b.cleanup().await;
}

macro_rules! store_checks {
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

store_checks!(
    ids_count_up_per_channel_and_the_last_n_are_kept,
    messages_round_trip_exactly,
    concurrent_publishes_get_distinct_consecutive_ids,
    stored_messages_expire,
    each_message_expires_by_its_own_time,
    the_registry_knows_published_and_subscribed_channels,
    touching_keeps_a_quiet_channels_ids,
    purge_forgets_expired_channels_only,
);

#[tokio::test]
async fn two_redis_stores_on_one_prefix_share_ids_and_history() {
    let Some(b) = Backend::redis() else {
        return;
    };
    let one = b.store(config(10)).await;
    let two = b.store(config(10)).await;
    assert_eq!(one.publish("x", draft("from one")).await.unwrap().id, 1);
    assert_eq!(two.publish("x", draft("from two")).await.unwrap().id, 2);
    let h = one.read("x", Read::Since(0)).await.unwrap();
    let texts: Vec<&str> = h.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["from one", "from two"]);
    assert_eq!(two.published_total().await.unwrap(), 2);
    b.cleanup().await;
    // A store under another prefix sees none of it.
    let Some(other) = Backend::redis() else {
        return;
    };
    let other = other.store(config(10)).await;
    assert!(!other.exists("x").await.unwrap());
}

#[tokio::test]
async fn a_redis_store_that_cannot_connect_says_so() {
    let port = test_support::free_port();
    let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "x:", config(1))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("history store (redis)"), "{err}");
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
    let one = parse_channels("a", 64, 8, true).unwrap();
    assert_eq!(parse_cursor("42", &one).unwrap(), [Some(42)]);
    assert_eq!(parse_cursor("W/\"42\"", &one).unwrap(), [Some(42)]);
    assert_eq!(parse_cursor("a:7", &one).unwrap(), [Some(7)]);
    assert_eq!(parse_cursor("", &one).unwrap(), [None]);
    let two = parse_channels("a/b", 64, 8, true).unwrap();
    assert!(parse_cursor("42", &two).is_err());
    assert_eq!(
        parse_cursor("b:3,zz:9,a:1", &two).unwrap(),
        [Some(1), Some(3)]
    );
    assert_eq!(parse_cursor("b:3", &two).unwrap(), [None, Some(3)]);
    assert!(parse_cursor("a:x", &two).is_err());
    assert!(parse_cursor("-1", &one).is_err());
    assert_eq!(format_cursor([("a", 4)].into_iter()), "4");
    assert_eq!(format_cursor([("a", 4), ("b", 0)].into_iter()), "a:4,b:0");
}
