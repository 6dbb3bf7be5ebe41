//! History on the push gateway, which is the layer's group history: backtrack (`CH.bN`),
//! resume with `Last-Event-ID` and long-poll cursors, lossless delivery while publishers race,
//! how many messages are kept and for how long, new epochs after a `DELETE`.
#![allow(clippy::unwrap_used)]

mod common;

use common::NextMessage;

use std::collections::HashMap;
use std::time::Duration;

use common::{Settings, epoch, ids, long_poll, publish_ok, settings, sse, start, stream};
use serde_json::Value;

/// The offset of an `EPOCH:OFFSET` text.
fn offset(position: &str) -> u64 {
    position.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The epoch of `channel`'s history, from a publish answer.
async fn publish_epoch(gw: &common::Gw, channel: &str, body: &str) -> String {
    let answer = publish_ok(gw, channel, body).await;
    let position = answer["position"].as_str().unwrap();
    position.rsplit_once(':').unwrap().0.to_owned()
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
    publish_n(&gw, "news", 12).await; // offsets 1..=12; 3..=12 kept

    let mut ev = sse(&gw, "/ev/news.b5", None).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = ev.next_event().await;
        assert_eq!(
            e.id.as_deref(),
            e.json()["position"].as_str(),
            "id: is the position"
        );
        got.push(offset(&e.id.unwrap()));
    }
    assert_eq!(got, [8, 9, 10, 11, 12]);

    let mut ws = test_support::ws(gw.addr, "/ws/news.b3").await;
    let mut ws_ids = Vec::new();
    for _ in 0..3 {
        ws_ids.push(common::id(&ws.recv_json().await));
    }
    assert_eq!(ws_ids, [10, 11, 12]);

    let mut st = stream(&gw, "/sub/news.b50").await; // more than kept: all 10
    let mut st_ids = Vec::new();
    for _ in 0..10 {
        st_ids.push(common::id(&st.next_message().await));
    }
    assert_eq!(st_ids, (3..=12).collect::<Vec<_>>());

    let (status, etag, messages) = long_poll(&gw, "/lp/news.b2", None).await;
    assert_eq!(
        (status, offset(&etag), ids(&messages)),
        (200, 12, vec![11, 12])
    );
    assert_eq!(
        etag, messages[1]["position"],
        "the Etag is the last position"
    );

    // Then live messages follow, once each.
    publish_ok(&gw, "news", "live").await;
    assert_eq!(offset(&ev.next_event().await.id.unwrap()), 13);
    assert_eq!(common::id(&ws.recv_json().await), 13);
    assert_eq!(common::id(&st.next_message().await), 13);
    assert!(ws.recv_nothing(100).await);
}

#[tokio::test]
async fn eventsource_resumes_after_last_event_id() {
    let gw = start(settings()).await;
    publish_n(&gw, "news", 3).await;
    let mut ev = sse(&gw, "/ev/news", None).await;
    publish_n(&gw, "news", 2).await;
    assert_eq!(offset(&ev.next_event().await.id.unwrap()), 4);
    let fifth = ev.next_event().await.id.unwrap();
    assert_eq!(offset(&fifth), 5);
    drop(ev);

    publish_n(&gw, "news", 2).await; // 6 and 7 while the client is away
    let mut ev = sse(&gw, "/ev/news", Some(&fifth)).await;
    assert_eq!(offset(&ev.next_event().await.id.unwrap()), 6);
    let seventh = ev.next_event().await.id.unwrap();
    assert_eq!(offset(&seventh), 7);
    publish_ok(&gw, "news", "live").await;
    let e = ev.next_event().await;
    assert_eq!(offset(e.id.as_ref().unwrap()), 8);
    assert_eq!(e.json()["text"], "live");

    // The query parameter works too (for clients that cannot set headers).
    let sixth = format!("{}:6", seventh.rsplit_once(':').unwrap().0);
    let mut ev = sse(&gw, &format!("/ev/news?last_event_id={sixth}"), None).await;
    assert_eq!(offset(&ev.next_event().await.id.unwrap()), 7);
}

#[tokio::test]
async fn a_multi_channel_cursor_resumes_each_channel_where_it_was() {
    let gw = start(settings()).await;
    let ea = publish_epoch(&gw, "a", "a1").await;
    publish_n(&gw, "a", 2).await;
    let eb = publish_epoch(&gw, "b", "b1").await;
    publish_ok(&gw, "b", "b2").await;
    let cursor = format!("a={ea}:1,b={eb}:0");
    let mut ev = sse(&gw, "/ev/a/b", Some(&cursor)).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let e = ev.next_event().await;
        let m = e.json();
        got.push((
            format!("{}{}", m["channel"].as_str().unwrap(), common::id(&m)),
            e.id.unwrap(),
        ));
    }
    assert_eq!(
        got,
        [
            ("a2".into(), format!("a={ea}:2,b={eb}:0")),
            ("a3".into(), format!("a={ea}:3,b={eb}:0")),
            ("b1".into(), format!("a={ea}:3,b={eb}:1")),
            ("b2".into(), format!("a={ea}:3,b={eb}:2")),
        ] as [(String, String); 4]
    );
    // A bare position cannot say which channel it is for.
    let r = common::client()
        .get(gw.url("/ev/a/b"))
        .header("last-event-id", format!("{ea}:3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("CHANNEL=EPOCH:OFFSET"),
        "{err}"
    );
    // Nor is a bare number a position any more.
    let r = common::client()
        .get(gw.url("/ev/a"))
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A client that long-polls in a loop, passing back the Etag it got, misses nothing published
/// between its polls — with several publishers racing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_loop_misses_nothing_while_publishers_race() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 50;
    let gw = start(Settings {
        store_messages: 1000,
        ..settings()
    })
    .await;
    let poller = {
        // The first poll has no cursor: the backtrack gives what is held (nothing, or what
        // the publishers got in first); later ones send the Etag back, which wins over it.
        let url = gw.url("/lp/feed.b1000");
        tokio::spawn(async move {
            let client = common::client();
            let mut etag: Option<String> = None;
            let mut got: Vec<Value> = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while got.len() < PUBLISHERS * EACH && tokio::time::Instant::now() < deadline {
                let mut req = client.get(&url);
                if let Some(e) = &etag {
                    req = req.header("if-none-match", format!("\"{e}\""));
                }
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                etag = Some(
                    r.headers()["etag"]
                        .to_str()
                        .unwrap()
                        .trim_matches('"')
                        .to_owned(),
                );
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
        "offsets in order, none lost or doubled"
    );
    assert!(got.iter().all(|m| epoch(m) == epoch(&got[0])), "one epoch");
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
async fn live_subscribers_get_every_message_once_in_order_while_publishers_race() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 50;
    let gw = start(Settings {
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
        ws_ids.push(common::id(&ws.recv_json().await));
        ev_ids.push(offset(&ev.next_event().await.id.unwrap()));
        st_ids.push(common::id(&st.next_message().await));
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
async fn only_the_last_n_messages_are_kept_and_a_resume_from_before_them_gets_what_is_held() {
    let gw = start(Settings {
        store_messages: 3,
        ..settings()
    })
    .await;
    let e = publish_epoch(&gw, "news", "m0").await;
    publish_n(&gw, "news", 4).await;
    let (status, etag, messages) = long_poll(&gw, "/lp/news.b10", None).await;
    assert_eq!(
        (status, etag.clone(), ids(&messages)),
        (200, format!("{e}:5"), vec![3, 4, 5])
    );
    // Offset 1 is no longer held: what is held comes instead (2 is gone for good).
    let (status, _, messages) = long_poll(&gw, "/lp/news", Some(&format!("{e}:1"))).await;
    assert_eq!((status, ids(&messages)), (200, vec![3, 4, 5]));
    let (_, stats) = common::get_json(&gw, "/stats?id=news").await;
    assert_eq!(stats["published_messages"], 5);
    assert_eq!(stats["stored_messages"], 3);
    assert_eq!(stats["position"], format!("{e}:5"));
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
    let e = publish_epoch(&gw, "news", "m0").await;
    publish_ok(&gw, "news", "m1").await;
    let published = tokio::time::Instant::now();
    let (_, _, messages) = long_poll(&gw, "/lp/news", Some(&format!("{e}:0"))).await;
    assert_eq!(ids(&messages), [1, 2]);
    tokio::time::sleep_until(published + Duration::from_millis(2600)).await;
    let (status, _, messages) = long_poll(&gw, "/lp/news", Some(&format!("{e}:0"))).await;
    assert_eq!(
        (status, messages.len()),
        (304, 0),
        "expired: nothing to resend"
    );
    let (_, stats) = common::get_json(&gw, "/stats?id=news").await;
    assert_eq!(stats["stored_messages"], 0);
    assert_eq!(stats["published_messages"], 2);
}

#[tokio::test]
async fn a_deleted_channel_starts_a_new_epoch_and_a_cursor_from_before_gets_it_from_offset_1() {
    let gw = start(settings()).await;
    let old = publish_epoch(&gw, "news", "old 1").await;
    publish_n(&gw, "news", 2).await;
    let r = common::client()
        .delete(gw.url("/pub/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new = publish_epoch(&gw, "news", "new 1").await;
    assert_ne!(old, new);
    publish_ok(&gw, "news", "new 2").await;
    let mut ev = sse(&gw, "/ev/news", Some(&format!("{old}:3"))).await;
    for (n, text) in [(1, "new 1"), (2, "new 2")] {
        let e = ev.next_event().await;
        assert_eq!(e.id, Some(format!("{new}:{n}")));
        assert_eq!(e.json()["text"], text);
    }
    let (_, stats) = common::get_json(&gw, "/stats?id=news").await;
    assert_eq!(
        stats["published_messages"], 2,
        "counted since the channel was made again"
    );
}

#[tokio::test]
async fn without_history_there_is_no_backlog_and_no_position() {
    let gw = start(Settings {
        store_messages: 0,
        longpoll_timeout: Duration::from_millis(200),
        ..settings()
    })
    .await;
    publish_n(&gw, "news", 3).await;
    let mut ev = sse(&gw, "/ev/news.b5", Some("e1:1")).await;
    let (status, etag, _) = long_poll(&gw, "/lp/news", Some("e1:0")).await;
    assert_eq!((status, etag.as_str()), (304, ""));
    let answer = publish_ok(&gw, "news", "live").await;
    assert_eq!(
        (
            answer["id"].clone(),
            answer["position"].clone(),
            answer["published_messages"].as_u64(),
            answer["stored_messages"].as_u64()
        ),
        (Value::Null, Value::Null, Some(4), Some(0))
    );
    let e = ev.next_event().await;
    assert_eq!(
        (e.id.clone(), e.json()["text"].clone()),
        (None, Value::from("live"))
    );
    assert!(e.json().get("position").is_none());
}
