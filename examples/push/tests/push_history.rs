//! History on the push gateway: backtrack (`CH.bN`), resume with `Last-Event-ID` and long-poll
//! ids, lossless delivery while publishers race, how many messages are kept and for how long,
//! and the gap-filling of the subscriber tracker.
#![allow(clippy::unwrap_used)]

mod common;

use common::NextMessage;

use std::collections::HashMap;
use std::time::Duration;

use common::{Settings, ids, long_poll, publish_ok, settings, sse, start, stream};
use push::format::layer_message;
use push::store::{
    ChannelInfo, Draft, History, HistoryStore, MemoryStore, Published, PushMessage, Read,
    StoreConfig,
};
use push::subscribe::Tracker;
use serde_json::Value;

/// A store whose publishes return after a varying delay, as over a network: the fan-out of a
/// message then often starts after that of a later one, so subscribers see ids out of order.
struct SlowStore(MemoryStore);

#[push::store::async_trait]
impl HistoryStore for SlowStore {
    fn config(&self) -> &StoreConfig {
        self.0.config()
    }
    async fn publish(&self, channel: &str, draft: Draft<'_>) -> switchboard::Result<Published> {
        let published = self.0.publish(channel, draft).await?;
        tokio::time::sleep(Duration::from_micros((published.id * 7919) % 3000)).await;
        Ok(published)
    }
    async fn read(&self, channel: &str, read: Read) -> switchboard::Result<History> {
        self.0.read(channel, read).await
    }
    async fn touch(&self, channels: &[String]) -> switchboard::Result<()> {
        self.0.touch(channels).await
    }
    async fn delete(&self, channel: &str) -> switchboard::Result<bool> {
        self.0.delete(channel).await
    }
    async fn exists(&self, channel: &str) -> switchboard::Result<bool> {
        self.0.exists(channel).await
    }
    async fn channel_count(&self) -> switchboard::Result<u64> {
        self.0.channel_count().await
    }
    async fn channels(&self, prefix: &str) -> switchboard::Result<Vec<ChannelInfo>> {
        self.0.channels(prefix).await
    }
    async fn info(&self, channel: &str) -> switchboard::Result<Option<ChannelInfo>> {
        self.0.info(channel).await
    }
    async fn published_total(&self) -> switchboard::Result<u64> {
        self.0.published_total().await
    }
    async fn purge(&self) -> switchboard::Result<u64> {
        self.0.purge().await
    }
}

async fn start_slow(settings: Settings) -> common::Gw {
    let layer = switchboard::Layer::new(switchboard::InMemoryLayer::default());
    let store = std::sync::Arc::new(SlowStore(MemoryStore::new(settings.store_config())));
    common::start_on(layer, store, settings).await
}

async fn publish_n(gw: &common::Gw, channel: &str, n: usize) {
    for i in 0..n {
        publish_ok(gw, channel, &format!("m{i}")).await;
    }
}

#[tokio::test]
async fn backtrack_delivers_the_last_n_stored_messages_first_on_every_transport() {
    let gw = start(Settings {
        store_messages: 10,
        ..settings()
    })
    .await;
    publish_n(&gw, "news", 12).await; // ids 1..=12; 3..=12 stored

    let mut ev = sse(&gw, "/ev/news.b5", None).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = ev.next_event().await;
        got.push(e.id.unwrap());
    }
    assert_eq!(got, ["8", "9", "10", "11", "12"]);

    let mut ws = test_support::ws(gw.addr, "/ws/news.b3").await;
    let mut ws_ids = Vec::new();
    for _ in 0..3 {
        ws_ids.push(ws.recv_json().await["id"].as_u64().unwrap());
    }
    assert_eq!(ws_ids, [10, 11, 12]);

    let mut st = stream(&gw, "/sub/news.b50").await; // more than stored: all 10 stored
    let mut st_ids = Vec::new();
    for _ in 0..10 {
        st_ids.push(st.next_message().await["id"].as_u64().unwrap());
    }
    assert_eq!(st_ids, (3..=12).collect::<Vec<_>>());

    let (status, etag, messages) = long_poll(&gw, "/lp/news.b2", None).await;
    assert_eq!(
        (status, etag.as_str(), ids(&messages)),
        (200, "12", vec![11, 12])
    );

    // Then live messages follow, once each.
    publish_ok(&gw, "news", "live").await;
    assert_eq!(ev.next_event().await.id.as_deref(), Some("13"));
    assert_eq!(ws.recv_json().await["id"], 13);
    assert_eq!(st.next_message().await["id"], 13);
    assert!(ws.recv_nothing(100).await);
}

#[tokio::test]
async fn eventsource_resumes_after_last_event_id() {
    let gw = start(settings()).await;
    publish_n(&gw, "news", 3).await;
    let mut ev = sse(&gw, "/ev/news", None).await;
    publish_n(&gw, "news", 2).await;
    assert_eq!(ev.next_event().await.id.as_deref(), Some("4"));
    assert_eq!(ev.next_event().await.id.as_deref(), Some("5"));
    drop(ev);

    publish_n(&gw, "news", 2).await; // 6 and 7 while the client is away
    let mut ev = sse(&gw, "/ev/news", Some("5")).await;
    assert_eq!(ev.next_event().await.id.as_deref(), Some("6"));
    assert_eq!(ev.next_event().await.id.as_deref(), Some("7"));
    publish_ok(&gw, "news", "live").await;
    let e = ev.next_event().await;
    assert_eq!(e.id.as_deref(), Some("8"));
    assert_eq!(e.json()["text"], "live");

    // The query parameter works too (for clients that cannot set headers).
    let mut ev = sse(&gw, "/ev/news?last_event_id=6", None).await;
    assert_eq!(ev.next_event().await.id.as_deref(), Some("7"));
}

#[tokio::test]
async fn a_multi_channel_cursor_resumes_each_channel_where_it_was() {
    let gw = start(settings()).await;
    publish_n(&gw, "a", 3).await;
    publish_n(&gw, "b", 2).await;
    let mut ev = sse(&gw, "/ev/a/b", Some("a:1,b:0")).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = ev.next_event().await;
        let m = e.json();
        got.push((
            format!("{}{}", m["channel"].as_str().unwrap(), m["id"]),
            e.id.unwrap(),
        ));
    }
    assert_eq!(
        got,
        [
            ("a2".into(), "a:2,b:0".into()),
            ("a3".into(), "a:3,b:0".into()),
            ("b1".into(), "a:3,b:1".into()),
            ("b2".into(), "a:3,b:2".into()),
        ] as [(String, String); 4]
    );
    // A bare id cannot say which channel it is for.
    let r = common::client()
        .get(gw.url("/ev/a/b"))
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("CHANNEL:ID"),
        "{err}"
    );
}

/// The acceptance test: a client that long-polls in a loop, passing back the Etag it
/// got, misses nothing published between its polls — with several publishers racing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_loop_misses_nothing_while_publishers_race() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 50;
    let gw = start_slow(Settings {
        store_messages: 1000,
        ..settings()
    })
    .await;
    let poller = {
        let url = gw.url("/lp/feed");
        tokio::spawn(async move {
            let client = common::client();
            let mut etag = "0".to_owned();
            let mut got: Vec<Value> = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while got.len() < PUBLISHERS * EACH && tokio::time::Instant::now() < deadline {
                let r = client
                    .get(&url)
                    .header("if-none-match", format!("\"{etag}\""))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                etag = r.headers()["etag"]
                    .to_str()
                    .unwrap()
                    .trim_matches('"')
                    .to_owned();
                if status == 200 {
                    got.extend(r.json::<Vec<Value>>().await.unwrap());
                }
            }
            got
        })
    };
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let url = gw.url("/pub/feed");
        publishers.push(tokio::spawn(async move {
            let client = common::client();
            for i in 0..EACH {
                let r = client
                    .post(&url)
                    .body(format!("{p}:{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let got = poller.await.unwrap();
    let total = (PUBLISHERS * EACH) as u64;
    assert_eq!(
        ids(&got),
        (1..=total).collect::<Vec<_>>(),
        "ids in order, none lost or doubled"
    );
    // Each publisher's messages arrive in the order it sent them.
    let mut next: HashMap<String, usize> = HashMap::new();
    for m in &got {
        let (p, i) = m["text"].as_str().unwrap().split_once(':').unwrap();
        let expected = next.entry(p.to_owned()).or_default();
        assert_eq!(i.parse::<usize>().unwrap(), *expected, "publisher {p}");
        *expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscribers_get_every_message_once_in_id_order_while_publishers_race() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 50;
    let gw = start_slow(Settings {
        store_messages: 1000,
        ..settings()
    })
    .await;
    let mut ws = test_support::ws(gw.addr, "/ws/feed").await;
    let mut ev = sse(&gw, "/ev/feed", None).await;
    let mut st = stream(&gw, "/sub/feed").await;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let url = gw.url("/pub/feed");
        publishers.push(tokio::spawn(async move {
            let client = common::client();
            for i in 0..EACH {
                client
                    .post(&url)
                    .body(format!("{p}:{i}"))
                    .send()
                    .await
                    .unwrap();
            }
        }));
    }
    let total = PUBLISHERS * EACH;
    let mut ws_ids = Vec::new();
    let mut ev_ids = Vec::new();
    let mut st_ids = Vec::new();
    for _ in 0..total {
        ws_ids.push(ws.recv_json().await["id"].as_u64().unwrap());
        ev_ids.push(ev.next_event().await.id.unwrap().parse::<u64>().unwrap());
        st_ids.push(st.next_message().await["id"].as_u64().unwrap());
    }
    for p in publishers {
        p.await.unwrap();
    }
    let expected: Vec<u64> = (1..=total).collect();
    assert_eq!(ws_ids, expected);
    assert_eq!(ev_ids, expected);
    assert_eq!(st_ids, expected);
    assert!(ws.recv_nothing(100).await, "nothing twice");
}

#[tokio::test]
async fn only_the_last_n_messages_are_kept_and_a_resume_skips_the_rest() {
    let gw = start(Settings {
        store_messages: 3,
        ..settings()
    })
    .await;
    publish_n(&gw, "news", 5).await;
    let (status, etag, messages) = long_poll(&gw, "/lp/news", Some("0")).await;
    assert_eq!(
        (status, etag.as_str(), ids(&messages)),
        (200, "5", vec![3, 4, 5])
    );
    let (_, stats) = common::get_json(&gw, "/stats?id=news").await;
    assert_eq!(stats["published_messages"], 5);
    assert_eq!(stats["stored_messages"], 3);
}

#[tokio::test]
async fn stored_messages_expire_after_the_message_ttl() {
    // The live check has the whole TTL to spare; the expired one sleeps past it.
    let gw = start(Settings {
        message_ttl: Duration::from_millis(2500),
        longpoll_timeout: Duration::from_millis(200),
        ..settings()
    })
    .await;
    publish_n(&gw, "news", 2).await;
    let published = tokio::time::Instant::now();
    let (_, _, messages) = long_poll(&gw, "/lp/news", Some("0")).await;
    assert_eq!(ids(&messages), [1, 2]);
    tokio::time::sleep_until(published + Duration::from_millis(2600)).await;
    let (status, etag, _) = long_poll(&gw, "/lp/news", Some("0")).await;
    assert_eq!(
        (status, etag.as_str()),
        (304, "2"),
        "expired: nothing to resend"
    );
    let (_, stats) = common::get_json(&gw, "/stats?id=news").await;
    assert_eq!(stats["stored_messages"], 0);
    assert_eq!(stats["published_messages"], 2);
}

#[tokio::test]
async fn a_cursor_newer_than_the_channel_means_it_was_reset() {
    let gw = start(settings()).await;
    publish_n(&gw, "news", 3).await;
    let r = common::client()
        .delete(gw.url("/pub/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    publish_n(&gw, "news", 2).await; // ids start again at 1
    let mut ev = sse(&gw, "/ev/news", Some("3")).await;
    assert_eq!(ev.next_event().await.id.as_deref(), Some("1"));
    assert_eq!(ev.next_event().await.id.as_deref(), Some("2"));
}

#[tokio::test]
async fn without_history_there_is_no_backlog_but_ids_go_on() {
    let gw = start(Settings {
        store_messages: 0,
        longpoll_timeout: Duration::from_millis(200),
        ..settings()
    })
    .await;
    publish_n(&gw, "news", 3).await;
    let mut ev = sse(&gw, "/ev/news.b5", Some("1")).await;
    let (status, etag, _) = long_poll(&gw, "/lp/news", Some("0")).await;
    assert_eq!((status, etag.as_str()), (304, "3"));
    let answer = publish_ok(&gw, "news", "live").await;
    assert_eq!(
        (answer["id"].as_u64(), answer["stored_messages"].as_u64()),
        (Some(4), Some(0))
    );
    let e = ev.next_event().await;
    assert_eq!(e.id.as_deref(), Some("4"));
}

fn draft(text: &str) -> Draft<'_> {
    Draft {
        text,
        event_type: None,
        time_ms: push::store::now_ms(),
    }
}

fn message(id: u64, channel: &str, epoch: u64) -> switchboard::Message {
    layer_message(&PushMessage {
        id,
        channel: channel.into(),
        text: format!("m{id}"),
        time_ms: 0,
        event_type: None,
        epoch,
    })
}

fn config(keep: usize) -> StoreConfig {
    StoreConfig {
        keep,
        message_ttl: Duration::from_secs(60),
        channel_ttl: Duration::from_secs(60),
    }
}

fn item_ids(items: &[push::subscribe::Item]) -> Vec<u64> {
    items
        .iter()
        .map(|i| push::format::message_id(&i.message).unwrap())
        .collect()
}

#[tokio::test]
async fn the_tracker_drops_duplicates_and_fills_gaps_from_the_store() {
    let store = MemoryStore::new(config(100));
    for i in 0..5 {
        store.publish("c", draft(&format!("m{i}"))).await.unwrap();
    }
    let spec = push::channel::parse_channels("c", 64, 4, true).unwrap();
    let (mut tracker, backlog) = Tracker::start(&store, &spec, &[Some(1)], true)
        .await
        .unwrap();
    assert_eq!(item_ids(&backlog), [2, 3, 4, 5]);
    let e = store.read("c", Read::Nothing).await.unwrap().epoch;
    assert!(e > 0);
    assert_eq!(tracker.cursor(), "5");
    // Live copies of what the backlog delivered are dropped.
    assert!(tracker.live(&store, message(3, "c", e)).await.is_empty());
    assert!(tracker.live(&store, message(5, "c", e)).await.is_empty());
    // 8 arrives first: 6 and 7 are on their way; the tracker takes them from the store.
    for i in 5..8 {
        store.publish("c", draft(&format!("m{i}"))).await.unwrap();
    }
    let items = tracker.live(&store, message(8, "c", e)).await;
    assert_eq!(item_ids(&items), [6, 7, 8]);
    assert_eq!(items[0].cursor, "6");
    assert!(tracker.live(&store, message(7, "c", e)).await.is_empty());
    assert!(tracker.live(&store, message(6, "c", e)).await.is_empty());
    // The next in line passes straight through; other channels and id-less messages do not.
    store.publish("c", draft("m8")).await.unwrap();
    assert_eq!(
        item_ids(&tracker.live(&store, message(9, "c", e)).await),
        [9]
    );
    assert!(
        tracker
            .live(&store, message(10, "other", e))
            .await
            .is_empty()
    );
    let no_id = switchboard::Message::builder("push.message")
        .field("channel", "c")
        .build()
        .unwrap();
    assert!(tracker.live(&store, no_id).await.is_empty());
}

#[tokio::test]
async fn without_history_the_tracker_passes_everything_on() {
    let store = MemoryStore::new(config(0));
    let spec = push::channel::parse_channels("c", 64, 4, true).unwrap();
    let (mut tracker, backlog) = Tracker::start(&store, &spec, &[None], true).await.unwrap();
    assert!(backlog.is_empty());
    assert_eq!(
        item_ids(&tracker.live(&store, message(2, "c", 7)).await),
        [2]
    );
    assert_eq!(
        item_ids(&tracker.live(&store, message(1, "c", 7)).await),
        [1]
    );
    assert_eq!(tracker.cursor(), "2");
}

#[tokio::test]
async fn a_channel_that_starts_again_is_followed_from_id_1() {
    let store = MemoryStore::new(config(100));
    for i in 0..3 {
        store.publish("c", draft(&format!("m{i}"))).await.unwrap();
    }
    let spec = push::channel::parse_channels("c", 64, 4, true).unwrap();
    let (mut tracker, _) = Tracker::start(&store, &spec, &[None], true).await.unwrap();
    let old = store.read("c", Read::Nothing).await.unwrap().epoch;
    assert_eq!(tracker.cursor(), "3");
    // The history is lost (a Redis without persistence restarted): ids start again.
    assert!(store.delete("c").await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.publish("c", draft("new 1")).await.unwrap();
    let new = store.read("c", Read::Nothing).await.unwrap().epoch;
    assert_ne!(old, new);
    // A late copy from the old epoch is still a duplicate…
    assert!(tracker.live(&store, message(3, "c", old)).await.is_empty());
    // …but id 1 of the new epoch is new.
    assert_eq!(
        item_ids(&tracker.live(&store, message(1, "c", new)).await),
        [1]
    );
    assert_eq!(tracker.cursor(), "1");
    // A copy from the old epoch arriving even later is dropped, not taken for a restart.
    assert!(tracker.live(&store, message(4, "c", old)).await.is_empty());
    assert_eq!(tracker.cursor(), "1");
}
