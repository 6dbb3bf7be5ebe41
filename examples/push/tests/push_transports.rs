//! The push gateway's four transports end to end over real sockets: WebSocket, EventSource,
//! HTTP streaming and long-polling; JSON and template output; keep-alive; subscriber TTL.
#![allow(clippy::unwrap_used)]

mod common;

use common::NextMessage;

use std::time::Duration;

use common::{Settings, long_poll, publish_ok, settings, sse, start, stream};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn is_rfc3339_ms(t: &str) -> bool {
    // 2026-11-22T07:09:00.123Z
    t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T" && &t[19..20] == "."
}

#[tokio::test]
async fn websocket_subscribers_get_each_message_of_their_channels_as_json() {
    let gw = start(settings()).await;
    let mut both = test_support::ws(gw.addr, "/ws/news/sport").await;
    let mut news = test_support::ws(gw.addr, "/ws/news").await;

    let answer = publish_ok(&gw, "news", "hello").await;
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["subscribers"], 2);
    let m = both.recv_json().await;
    assert_eq!(m["type"], "push.message");
    assert_eq!(m["position"], answer["position"], "{m}");
    assert_eq!(common::id(&m), 1);
    assert_eq!(m["channel"], "news");
    assert_eq!(m["text"], "hello");
    assert!(m.get("event_type").is_none(), "{m}");
    assert!(is_rfc3339_ms(m["time"].as_str().unwrap()), "{m}");
    assert_eq!(news.recv_json().await, m);

    client_event(&gw, "sport", "goal", "score").await;
    let m = both.recv_json().await;
    assert_eq!(
        (&m["channel"], common::id(&m), &m["text"], &m["event_type"]),
        (&json!("sport"), 1, &json!("goal"), &json!("score"))
    );
    assert!(news.recv_nothing(200).await, "news does not follow sport");

    // What a subscriber sends is ignored; the socket stays up.
    both.send_text("hello?").await;
    publish_ok(&gw, "news", "again").await;
    assert_eq!(both.recv_json().await["text"], "again");
}

async fn client_event(gw: &common::Gw, channel: &str, text: &str, event_type: &str) {
    let r = common::client()
        .post(gw.url(&format!("/pub/{channel}")))
        .header("event-type", event_type)
        .body(text.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn eventsource_events_carry_ids_event_types_and_multi_line_data() {
    let gw = start(settings()).await;
    let mut one = sse(&gw, "/ev/news", None).await;
    let mut two = sse(&gw, "/ev/news/sport", None).await;

    let news = publish_ok(&gw, "news", "line one\nline two").await;
    let news = news["position"].as_str().unwrap();
    let ev = one.next_event().await;
    assert_eq!(ev.id.as_deref(), Some(news));
    assert_eq!(ev.event, None);
    let m = ev.json();
    assert_eq!(m["text"], "line one\nline two");
    // Several channels: the id names each channel's position (sport's before its first).
    let (_, sport) = common::get_json(&gw, "/stats?id=sport").await;
    let sport = sport["position"].as_str().unwrap();
    assert!(sport.ends_with(":0"), "{sport}");
    let ev = two.next_event().await;
    assert_eq!(ev.id, Some(format!("news={news},sport={sport}")));

    client_event(&gw, "sport", "goal", "score").await;
    let ev = two.next_event().await;
    let sport = sport.replace(":0", ":1");
    assert_eq!(ev.id, Some(format!("news={news},sport={sport}")));
    assert_eq!(ev.event.as_deref(), Some("score"));
    assert_eq!(ev.json()["event_type"], "score");
}

#[tokio::test]
async fn a_text_with_newlines_becomes_several_data_lines_of_one_event() {
    let gw = start(Settings {
        message_template: Some("~text~".into()),
        ..settings()
    })
    .await;
    let mut sub = sse(&gw, "/ev/news", None).await;
    publish_ok(&gw, "news", "a\nb\r\nc").await;
    let ev = sub.next_event().await;
    assert_eq!(ev.data.as_deref(), Some("a\nb\nc"));
}

/// EventSource parsers end a line at `\r\n`, `\r` or `\n`: a text with a bare `\r` must not
/// smuggle fields of its own (`id:`, `event:`, an early end of the event) into the stream.
#[tokio::test]
async fn a_bare_carriage_return_in_a_text_cannot_inject_event_fields() {
    let gw = start(Settings {
        message_template: Some("~text~".into()),
        ..settings()
    })
    .await;
    let mut sub = sse(&gw, "/ev/news", None).await;
    publish_ok(&gw, "news", "a\rid: 99\revent: evil\r\rdata: x\r\nb\nc").await;
    let ev = sub.next_event().await;
    assert!(ev.id.as_deref().unwrap().ends_with(":1"), "{ev:?}");
    assert_eq!(ev.event, None, "{ev:?}");
    assert_eq!(
        ev.data.as_deref(),
        Some("a\nid: 99\nevent: evil\n\ndata: x\nb\nc")
    );
    publish_ok(&gw, "news", "next").await;
    let ev = sub.next_event().await;
    assert_eq!(ev.data.as_deref(), Some("next"));
    assert!(ev.id.as_deref().unwrap().ends_with(":2"), "{ev:?}");
}

#[tokio::test]
async fn streams_deliver_one_json_message_per_line() {
    let gw = start(settings()).await;
    let mut sub = stream(&gw, "/sub/news/sport").await;
    assert_eq!(
        sub.response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(sub.response.headers()["transfer-encoding"], "chunked");
    publish_ok(&gw, "news", "one").await;
    publish_ok(&gw, "sport", "two").await;
    let a = sub.next_message().await;
    let b = sub.next_message().await;
    assert_eq!((&a["channel"], &a["text"]), (&json!("news"), &json!("one")));
    assert_eq!(
        (&b["channel"], &b["text"]),
        (&json!("sport"), &json!("two"))
    );
}

#[tokio::test]
async fn long_poll_waits_for_the_next_message_and_answers_304_when_none_comes() {
    let gw = start(Settings {
        longpoll_timeout: Duration::from_millis(300),
        ..settings()
    })
    .await;
    // Nothing published: 304 after the timeout, with the channel's position as Etag.
    let started = std::time::Instant::now();
    let (status, etag, _) = long_poll(&gw, "/lp/news", None).await;
    assert_eq!((status, etag.ends_with(":0")), (304, true), "{etag}");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A poll waiting when a message is published gets it at once.
    let poll = {
        let url = gw.url("/lp/news");
        let etag = etag.clone();
        tokio::spawn(async move {
            common::client()
                .get(url)
                .header("if-none-match", format!("\"{etag}\""))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .unwrap()
        })
    };
    common::wait_subscribers(&gw, "news", 1).await;
    publish_ok(&gw, "news", "wake up").await;
    let r = poll.await.unwrap();
    assert_eq!(r.status(), 200);
    let first = etag.replace(":0", ":1");
    assert_eq!(r.headers()["etag"], format!("\"{first}\"").as_str());
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Vec<serde_json::Value> = r.json().await.unwrap();
    assert_eq!(body.len(), 1);
    assert_eq!(body[0]["text"], "wake up");

    // The id in the query string works as the header does.
    publish_ok(&gw, "news", "two").await;
    let r = common::client()
        .get(gw.url(&format!("/lp/news?last_id={first}")))
        .send()
        .await
        .unwrap();
    let second = etag.replace(":0", ":2");
    assert_eq!(r.headers()["etag"], format!("\"{second}\"").as_str());
    let body: Vec<serde_json::Value> = r.json().await.unwrap();
    assert_eq!(common::ids(&body), [2]);
}

#[tokio::test]
async fn a_template_shapes_what_every_transport_delivers() {
    let gw = start(Settings {
        message_template: Some("~channel~|~id~|~event-type~|~text~|~unknown~|~position~".into()),
        ..settings()
    })
    .await;
    let mut ws = test_support::ws(gw.addr, "/ws/news").await;
    let mut ev = sse(&gw, "/ev/news", None).await;
    let mut st = stream(&gw, "/sub/news").await;
    client_event(&gw, "news", "hi", "greeting").await;
    let (_, news) = common::get_json(&gw, "/stats?id=news").await;
    let expected = format!(
        "news|1|greeting|hi|~unknown~|{}",
        news["position"].as_str().unwrap()
    );
    let expected = expected.as_str();
    let frame = loop {
        match ws.ws.next().await.unwrap().unwrap() {
            WsMessage::Text(t) => break t.to_string(),
            _ => continue,
        }
    };
    assert_eq!(frame, expected);
    assert_eq!(ev.next_event().await.data.as_deref(), Some(expected));
    assert_eq!(st.next_line().await.as_deref(), Some(expected));
    let r = common::client()
        .get(gw.url("/lp/news.b1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), expected);
}

#[tokio::test]
async fn keep_alives_reach_every_streaming_transport() {
    let gw = start(Settings {
        ping_interval: Some(Duration::from_millis(150)),
        ..settings()
    })
    .await;
    let mut ws = test_support::ws(gw.addr, "/ws/news").await;
    let mut ev = sse(&gw, "/ev/news", None).await;
    let mut st = stream(&gw, "/sub/news").await;

    let ping = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let WsMessage::Ping(_) = ws.ws.next().await.unwrap().unwrap() {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no websocket ping");
    let block = ev.next_block().await.unwrap();
    assert_eq!(block.comment.as_deref(), Some("keep-alive"));
    assert_eq!(block.data, None);
    let line: serde_json::Value = serde_json::from_str(&st.next_line().await.unwrap()).unwrap();
    assert_eq!(line["type"], "push.ping");
    // A client that reads answers the pings, so it stays up for several intervals.
    assert!(ws.recv_nothing(600).await);
    publish_ok(&gw, "news", "still here").await;
    assert_eq!(ws.recv_json().await["text"], "still here");
}

#[tokio::test]
async fn subscriber_ttl_ends_streaming_subscriptions() {
    let gw = start(Settings {
        subscriber_ttl: Some(Duration::from_millis(300)),
        ..settings()
    })
    .await;
    let mut ws = test_support::ws(gw.addr, "/ws/news").await;
    let mut ev = sse(&gw, "/ev/news", None).await;
    let mut st = stream(&gw, "/sub/news").await;
    common::wait_subscribers(&gw, "news", 3).await;
    assert!(
        ev.ends_within(Duration::from_secs(2)).await,
        "sse still open"
    );
    assert!(
        st.ends_within(Duration::from_secs(2)).await,
        "stream still open"
    );
    let close = common::close_frame(&mut ws).await;
    assert_eq!(close, (1000, "subscriber TTL reached".to_owned()));
    common::wait_subscribers(&gw, "news", 0).await;
}
