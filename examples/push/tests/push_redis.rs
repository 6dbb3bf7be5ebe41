//! Two push gateways sharing one Redis (the real redis-server at `SWITCHBOARD_REDIS_URL`), each
//! on its own Redis channel layer with history: positions continue across gateways, live
//! messages cross, backtrack and resume work on either, and stats agree. Also: what a
//! publisher and a subscriber see while Redis is away, and the registry trimmed in Redis.
//! (`push_program.rs` runs the same with two gateway processes.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Gw, Settings, ids, long_poll, publish, publish_ok, settings, sse, start_on};
use push::redis_registry::RedisRegistry;
use push::registry::Registry;
use switchboard::Layer;
use switchboard::redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use test_support::redis::url as redis_url;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Core,
    PubSub,
}

/// A gateway on `url`: a Redis layer of `kind` under `prefix` with the history the settings
/// ask for, and the registry under `prefix:` (so that flushing the registry's prefix removes
/// the layer's keys too).
async fn gateway(
    url: &str,
    prefix: &str,
    kind: Kind,
    settings: Settings,
) -> (Gw, Arc<RedisRegistry>) {
    let registry = Arc::new(
        RedisRegistry::connect(url, &format!("{prefix}:"), settings.registry_config())
            .await
            .unwrap(),
    );
    let config = RedisConfig::new(url)
        .prefix(prefix)
        .command_timeout(Duration::from_millis(500))
        .layer(
            settings
                .layer_config(switchboard::LayerConfig::default())
                .unwrap(),
        );
    let layer = match kind {
        Kind::Core => Layer::new(RedisLayer::connect(config).await.unwrap()),
        Kind::PubSub => Layer::new(RedisPubSubLayer::connect(config).await.unwrap()),
    };
    let gw = start_on(layer, registry.clone() as Arc<dyn Registry>, settings).await;
    (gw, registry)
}

fn offset(position: &str) -> u64 {
    position.rsplit_once(':').unwrap().1.parse().unwrap()
}

async fn two_gateways_share_positions_history_and_stats(kind: Kind) {
    let Some(url) = redis_url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let (a, registry) = gateway(&url, &prefix, kind, settings()).await;
    let (b, _) = gateway(&url, &prefix, kind, settings()).await;

    let mut epoch = String::new();
    for i in 1..=3 {
        let answer = publish_ok(&a, "news", &format!("a{i}")).await;
        assert_eq!(answer["id"], i);
        epoch = answer["position"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .0
            .to_owned();
    }
    // Positions go on from the other gateway.
    let answer = publish_ok(&b, "news", "b4").await;
    assert_eq!(
        (
            answer["position"].as_str(),
            answer["stored_messages"].as_u64()
        ),
        (Some(format!("{epoch}:4").as_str()), Some(4))
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

    // A client resumes on gateway A from where it was; B's message reaches it live.
    let mut resumed = sse(&a, "/ev/news", Some(&format!("{epoch}:4"))).await;
    publish_ok(&b, "news", "b5").await;
    assert_eq!(resumed.next_event().await.id, Some(format!("{epoch}:5")));
    assert_eq!(ws.recv_json().await["text"], "b5");
    assert_eq!(ev.next_event().await.json()["text"], "b5");
    let (status, etag, messages) = long_poll(&a, "/lp/news", Some(&format!("{epoch}:4"))).await;
    assert_eq!((status, offset(&etag), ids(&messages)), (200, 5, vec![5]));
    publish_ok(&a, "news", "a6").await;
    assert_eq!(resumed.next_event().await.id, Some(format!("{epoch}:6")));

    // Stats agree on the shared figures; subscribers are each gateway's own.
    let (_, sa) = common::get_json(&a, "/stats?id=news").await;
    let (_, sb) = common::get_json(&b, "/stats?id=news").await;
    for key in ["published_messages", "stored_messages"] {
        assert_eq!((&sa[key], &sb[key]), (&6.into(), &6.into()), "{key}");
    }
    assert_eq!(
        (&sa["position"], &sb["position"]),
        (&sa["position"], &format!("{epoch}:6").into())
    );
    assert_eq!(
        (&sa["subscribers"], &sb["subscribers"]),
        (&2.into(), &1.into())
    );
    let (_, total) = common::get_json(&b, "/stats").await;
    assert_eq!(
        (
            &total["channels"],
            &total["published_messages"],
            &total["stored_messages"]
        ),
        (&1.into(), &6.into(), &6.into())
    );

    // Deleting on one gateway ends the subscribers of both and clears the shared history.
    let r = common::client()
        .delete(b.url("/pub/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(resumed.next_event().await.json()["type"], "push.deleted");
    assert!(resumed.ends_within(Duration::from_secs(2)).await);
    let fresh = publish_ok(&a, "news", "fresh").await;
    assert_eq!(fresh["id"], 1);
    assert!(
        !fresh["position"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{epoch}:"))
    );
    registry.flush().await.unwrap();
}

#[tokio::test]
async fn two_gateways_share_positions_history_and_stats_on_the_core_layer() {
    two_gateways_share_positions_history_and_stats(Kind::Core).await;
}

#[tokio::test]
async fn two_gateways_share_positions_history_and_stats_on_the_pubsub_layer() {
    two_gateways_share_positions_history_and_stats(Kind::PubSub).await;
}

#[tokio::test]
async fn while_redis_is_away_publishing_answers_503_and_then_recovers() {
    let Some(mut redis) = test_support::redis::OwnRedis::start().await else {
        return;
    };
    let (gw, _) = gateway(&redis.url(), "push", Kind::PubSub, settings()).await;
    let before = publish_ok(&gw, "news", "before").await;
    let mut ev = sse(&gw, "/ev/news.b1", None).await;
    assert_eq!(ev.next_event().await.json()["text"], "before");

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
    // The new Redis starts the channel's history afresh.
    assert_eq!(answer["id"], 1);
    // The connected subscriber is told of the interruption (a `gap` event with the last id it
    // has) and its stream ends; reconnecting with that id, it gets what the new history holds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let gap = loop {
        match tokio::time::timeout(Duration::from_millis(300), ev.next_block()).await {
            Ok(Some(block)) if block.event.as_deref() == Some("gap") => break block,
            Ok(Some(block)) => assert!(block.data.is_none(), "before the gap: {block:?}"),
            Ok(None) => panic!("the stream ended without a gap event"),
            Err(_) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "no gap event");
    };
    assert_eq!(gap.json()["interrupted"], true, "{gap:?}");
    assert_eq!(gap.id, before["position"].as_str().map(str::to_owned));
    assert!(ev.ends_within(Duration::from_secs(2)).await);
    let mut again = sse(&gw, "/ev/news", gap.id.as_deref()).await;
    let e = again.next_event().await;
    assert_eq!(
        (e.json()["text"].clone(), e.id.clone()),
        (
            "after".into(),
            answer["position"].as_str().map(str::to_owned)
        )
    );
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
    let prefix = test_support::redis::fresh_prefix();
    let settings = Settings {
        channel_ttl: Duration::from_secs(2),
        longpoll_timeout: Duration::from_millis(100),
        // Without history a published channel, too, is known for `channel_ttl` only.
        store_messages: 0,
        ..settings()
    };
    let (gw, registry) = gateway(&url, &prefix, Kind::PubSub, settings).await;
    let names: Vec<String> = (0..16).map(|i| format!("made-up-{i}")).collect();
    let (status, _, _) = long_poll(&gw, &format!("/lp/{}", names.join("/")), None).await;
    assert_eq!(status, 304);
    publish_ok(&gw, "made-up-0", "counted").await;
    let mut conn = redis_conn(&url).await;
    let key = format!("{prefix}:channels");
    let counts = format!("{prefix}:counts");
    let zcard = |conn: &mut redis::aio::MultiplexedConnection, key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("ZCARD")
                .arg(key)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(zcard(&mut conn, key.clone()).await, 16);
    let count: Option<u64> = redis::cmd("HGET")
        .arg(&counts)
        .arg("made-up-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, Some(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = zcard(&mut conn, key.clone()).await;
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} idle channels still in {key}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: u64 = redis::cmd("HLEN")
        .arg(&counts)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the counts of forgotten channels go with them");
    registry.flush().await.unwrap();
}
