//! Two push gateways sharing history through one Redis (the real redis-server at
//! `SWITCHBOARD_REDIS_URL`): ids continue across gateways, backtrack and resume work on either,
//! and stats agree. Also: what a publisher and a subscriber see while Redis is away.
//!
//! Each gateway here runs on its own in-memory layer, so live fan-out stays within a gateway;
//! `push_program.rs` has the test of fan-out across gateways over the Redis channel layer.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Gw, Settings, ids, long_poll, publish, publish_ok, settings, sse, start_on};
use push::redis_store::RedisStore;
use push::store::HistoryStore;
use switchboard::{InMemoryLayer, Layer};
use test_support::redis::url as redis_url;

/// A key prefix no other test uses (`…:` so the keys read `{prefix}channels`).
fn fresh_prefix() -> String {
    format!("{}:", test_support::redis::fresh_prefix())
}

async fn gateway(url: &str, prefix: &str, settings: Settings) -> (Gw, Arc<RedisStore>) {
    let store = Arc::new(
        RedisStore::connect(url, prefix, settings.store_config())
            .await
            .unwrap(),
    );
    let layer = Layer::new(InMemoryLayer::default());
    let gw = start_on(layer, store.clone() as Arc<dyn HistoryStore>, settings).await;
    (gw, store)
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_ids_history_and_stats() {
    let Some(url) = redis_url() else {
        return;
    };
    let prefix = fresh_prefix();
    let (a, store) = gateway(&url, &prefix, settings()).await;
    let (b, _) = gateway(&url, &prefix, settings()).await;

    for i in 1..=3 {
        assert_eq!(publish_ok(&a, "news", &format!("a{i}")).await["id"], i);
    }
    // Ids go on from the other gateway.
    let answer = publish_ok(&b, "news", "b4").await;
    assert_eq!(
        (answer["id"].as_u64(), answer["stored_messages"].as_u64()),
        (Some(4), Some(4))
    );

    // Backtrack on either gateway sees what both published.
    let mut ev = sse(&b, "/ev/news.b10", None).await;
    let mut texts = Vec::new();
    for _ in 0..4 {
        texts.push(
            ev.next_event().await.json()["text"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(texts, ["a1", "a2", "a3", "b4"]);
    let mut ws = test_support::ws(a.addr, "/ws/news.b2").await;
    assert_eq!(ws.recv_json().await["text"], "a3");
    assert_eq!(ws.recv_json().await["text"], "b4");

    // A client resumes on gateway A after messages were published on B while it was away.
    let mut resumed = sse(&a, "/ev/news", Some("4")).await;
    publish_ok(&b, "news", "b5").await;
    // (Live fan-out between gateways needs a shared layer; here the resume finds it stored.)
    let (status, etag, messages) = long_poll(&a, "/lp/news", Some("4")).await;
    assert_eq!((status, etag.as_str(), ids(&messages)), (200, "5", vec![5]));
    publish_ok(&a, "news", "a6").await;
    // The live copy of 6 on A reveals that 5 was skipped: it is fetched from Redis first.
    assert_eq!(resumed.next_event().await.id.as_deref(), Some("5"));
    assert_eq!(resumed.next_event().await.id.as_deref(), Some("6"));

    // Stats agree on the shared figures; subscribers are each gateway's own.
    let (_, sa) = common::get_json(&a, "/stats?id=news").await;
    let (_, sb) = common::get_json(&b, "/stats?id=news").await;
    assert_eq!(
        (&sa["published_messages"], &sb["published_messages"]),
        (&6.into(), &6.into())
    );
    assert_eq!(
        (&sa["stored_messages"], &sb["stored_messages"]),
        (&6.into(), &6.into())
    );
    assert_eq!(
        (&sa["subscribers"], &sb["subscribers"]),
        (&2.into(), &1.into())
    );
    let (_, total) = common::get_json(&b, "/stats").await;
    assert_eq!(
        (&total["channels"], &total["published_messages"]),
        (&1.into(), &6.into())
    );

    // Deleting on one gateway deletes the shared history.
    let r = common::client()
        .delete(b.url("/pub/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(publish_ok(&a, "news", "fresh").await["id"], 1);
    store.flush().await.unwrap();
}

#[tokio::test]
async fn while_redis_is_away_publishing_answers_503_and_then_recovers() {
    let Some(mut redis) = test_support::redis::OwnRedis::start().await else {
        return;
    };
    let (gw, _) = gateway(&redis.url(), "push:", settings()).await;
    publish_ok(&gw, "news", "before").await;
    let mut ev = sse(&gw, "/ev/news", None).await;

    redis.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, err) = publish(&gw, "news", "during").await;
    assert_eq!(status, 503);
    // What failed, and a reference for the log — not where Redis is or what it said.
    let text = err["error"].as_str().unwrap();
    assert!(text.contains("failed (reference "), "{err}");
    let port = redis.port.to_string();
    for internal in ["127.0.0.1", port.as_str(), "redis", "refused"] {
        assert!(
            !text.contains(internal),
            "the client was told {internal:?}: {err}"
        );
    }
    let r = common::client()
        .get(gw.url("/ev/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a new subscriber cannot be set up");

    // Back again (empty: no persistence): the gateway reconnects by itself.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let (status, answer) = publish(&gw, "news", "after").await;
        if status == 200 {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The new Redis starts the channel afresh; the connected subscriber still gets it.
    assert_eq!(answer["id"], 1);
    let e = ev.next_event().await;
    assert_eq!(e.json()["text"], "after");
}

/// Raw access to the test Redis, for what a gateway would not write itself.
async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Names anonymous subscribers make up enter the registry in Redis (`{prefix}channels`); the
/// gateway's keeper trims it once `--channel-ttl` has passed, with nobody reading `/stats`.
#[tokio::test]
async fn idle_channels_leave_the_redis_registry_without_anyone_asking_for_stats() {
    let Some(url) = redis_url() else {
        return;
    };
    let prefix = fresh_prefix();
    let settings = Settings {
        channel_ttl: Duration::from_secs(2),
        longpoll_timeout: Duration::from_millis(100),
        ..settings()
    };
    let (gw, store) = gateway(&url, &prefix, settings).await;
    let names: Vec<String> = (0..16).map(|i| format!("made-up-{i}")).collect();
    let (status, _, _) = long_poll(&gw, &format!("/lp/{}", names.join("/")), None).await;
    assert_eq!(status, 304);
    let mut conn = redis_conn(&url).await;
    let registry = format!("{prefix}channels");
    let n: u64 = redis::cmd("ZCARD")
        .arg(&registry)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 16);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: u64 = redis::cmd("ZCARD")
            .arg(&registry)
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} idle channels still in {registry}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.flush().await.unwrap();
}

/// Ids in Redis are anyone's to write (another gateway, another version, an operator): a stored
/// message with id 0, or a channel at the largest id, must not make arithmetic on them panic.
#[tokio::test]
async fn ids_at_the_ends_of_the_range_from_redis_do_not_break_subscribers() {
    let Some(url) = redis_url() else {
        return;
    };
    let prefix = fresh_prefix();
    let (gw, store) = gateway(
        &url,
        &prefix,
        Settings {
            longpoll_timeout: Duration::from_millis(100),
            ..settings()
        },
    )
    .await;
    let mut conn = redis_conn(&url).await;
    let now = push::store::now_ms();
    let until = now + 60_000;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(format!("{prefix}ch:zero"))
        .arg("id")
        .arg(1)
        .arg("epoch")
        .arg(now)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{prefix}msgs:zero"))
        .arg(0)
        .arg(format!("0:{now}:{{\"text\":\"zero\"}}"))
        .arg(1)
        .arg(format!("1:{now}:{{\"text\":\"one\"}}"))
        .ignore()
        .cmd("HSET")
        .arg(format!("{prefix}ch:max"))
        .arg("id")
        .arg(u64::MAX)
        .arg("epoch")
        .arg(now)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{prefix}channels"))
        .arg(until)
        .arg("zero")
        .arg(until)
        .arg("max")
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    // Backtrack starts before the first stored id: 0 - 1 must not underflow.
    let (status, _, messages) = long_poll(&gw, "/lp/zero.b5", None).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&messages), [1]);
    let mut ws = test_support::ws(gw.addr, "/ws/zero.b5").await;
    assert_eq!(ws.recv_json().await["text"], "one");
    // A channel at the largest id: subscribers follow it, a resume finds nothing newer.
    let (status, etag, _) = long_poll(&gw, "/lp/max.b5", None).await;
    assert_eq!((status, etag), (304, u64::MAX.to_string()));
    let (status, etag, _) = long_poll(&gw, "/lp/max", Some(&u64::MAX.to_string())).await;
    assert_eq!((status, etag), (304, u64::MAX.to_string()));
    // The gateway still serves.
    assert_eq!(publish_ok(&gw, "zero", "two").await["id"], 2);
    assert_eq!(ws.recv_json().await["text"], "two");
    store.flush().await.unwrap();
}
