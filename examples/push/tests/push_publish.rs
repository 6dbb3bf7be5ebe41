//! Publishing to the push gateway: several channels in one POST, the answer's figures, DELETE,
//! bad input, and who may publish (loopback by default, a bearer token from elsewhere).
#![allow(clippy::unwrap_used)]

mod common;

use common::NextMessage;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request};
use common::{Settings, publish, publish_ok, settings, sse, start, stream};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower::ServiceExt;

#[tokio::test]
async fn one_post_reaches_several_channels_each_with_its_own_id() {
    let gw = start(settings()).await;
    publish_ok(&gw, "user-7", "earlier").await;
    let mut user = test_support::ws(gw.addr, "/ws/user-7").await;
    let mut project = sse(&gw, "/ev/project-3", None).await;
    let mut global = stream(&gw, "/sub/global").await;
    let mut all = test_support::ws(gw.addr, "/ws/user-7/project-3/global").await;

    let answer = publish_ok(&gw, "user-7/project-3/global", r#"{"task":42,"done":true}"#).await;
    assert_eq!(answer["channels"], 3);
    let infos = answer["infos"].as_array().unwrap();
    let figures: Vec<(&str, u64, u64, u64)> = infos
        .iter()
        .map(|i| {
            (
                i["channel"].as_str().unwrap(),
                i["published_messages"].as_u64().unwrap(),
                i["stored_messages"].as_u64().unwrap(),
                i["subscribers"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        figures,
        [
            ("user-7", 2, 2, 2),
            ("project-3", 1, 1, 2),
            ("global", 1, 1, 2)
        ]
    );

    let m = user.recv_json().await;
    assert_eq!((&m["channel"], common::id(&m)), (&json!("user-7"), 2));
    assert_eq!(m["position"], infos[0]["position"]);
    assert_eq!(m["text"], r#"{"task":42,"done":true}"#);
    assert_eq!(project.next_event().await.json()["channel"], "project-3");
    assert_eq!(global.next_message().await["channel"], "global");
    // A subscriber of all three gets it once per channel.
    let mut channels = Vec::new();
    for _ in 0..3 {
        channels.push(
            all.recv_json().await["channel"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    channels.sort();
    assert_eq!(channels, ["global", "project-3", "user-7"]);
    assert!(all.recv_nothing(100).await);
}

#[tokio::test]
async fn delete_ends_the_channels_subscribers_and_restarts_its_ids() {
    let gw = start(settings()).await;
    publish_ok(&gw, "news", "before").await;
    let mut ws = test_support::ws(gw.addr, "/ws/news").await;
    let mut both = test_support::ws(gw.addr, "/ws/news/sport").await;
    let mut ev = sse(&gw, "/ev/news", None).await;
    let mut st = stream(&gw, "/sub/news").await;
    let poll = {
        let url = gw.url("/lp/news");
        tokio::spawn(async move {
            common::client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Vec<Value>>()
                .await
                .unwrap()
        })
    };
    common::wait_subscribers(&gw, "news", 5).await;

    let r = common::client()
        .delete(gw.url("/pub/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"channel": "news", "deleted": true, "subscribers": 5})
    );

    // WebSocket: the notice, then a normal close.
    let notice = ws.recv_json().await;
    assert_eq!(
        (&notice["type"], &notice["channel"]),
        (&json!("push.deleted"), &json!("news"))
    );
    let close = loop {
        match ws.ws.next().await {
            Some(Ok(WsMessage::Close(f))) => break f.unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1000, "channel deleted")
    );
    // Following another channel too: the notice, and the socket stays for the other channel.
    assert_eq!(both.recv_json().await["type"], "push.deleted");
    publish_ok(&gw, "sport", "still on").await;
    assert_eq!(both.recv_json().await["text"], "still on");
    // EventSource and stream: the notice, then the body ends.
    assert_eq!(ev.next_event().await.json()["type"], "push.deleted");
    assert!(ev.ends_within(Duration::from_secs(2)).await);
    assert_eq!(st.next_message().await["type"], "push.deleted");
    assert!(st.ends_within(Duration::from_secs(2)).await);
    // Long-poll: the notice is the answer.
    let answered = poll.await.unwrap();
    assert_eq!(answered[0]["type"], "push.deleted");

    common::wait_subscribers(&gw, "news", 0).await;
    let (status, _) = common::get_json(&gw, "/stats?id=news").await;
    assert_eq!(status, 404, "the channel is gone");
    assert_eq!(publish_ok(&gw, "news", "new life").await["id"], 1);

    // Deleting what does not exist is a 404.
    let r = common::client()
        .delete(gw.url("/pub/never-was"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_publishes_get_clear_errors_and_change_nothing() {
    let gw = start(Settings {
        max_message_size: 1000,
        max_channel_id_length: 10,
        max_channels_per_request: 2,
        ..settings()
    })
    .await;
    let client = common::client();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client.post(gw.url("/pub/ok")).body(vec![0xff, 0xfe]),
            400,
            "UTF-8",
        ),
        (
            client.post(gw.url("/pub/ok")).body("x".repeat(1001)),
            413,
            "1000-byte limit",
        ),
        (
            client.post(gw.url("/pub/bad%20id")).body("x"),
            400,
            "use ASCII letters",
        ),
        (
            client.post(gw.url("/pub/elevenchars")).body("x"),
            400,
            "the limit is 10",
        ),
        (
            client.post(gw.url("/pub/a/b/c")).body("x"),
            400,
            "too many channels",
        ),
        (
            client.post(gw.url("/pub/news.b5")).body("x"),
            400,
            "backtrack",
        ),
        (
            client
                .post(gw.url("/pub/ok"))
                .header("event-type", "x".repeat(65))
                .body("x"),
            400,
            "Event-Type",
        ),
        (
            client.post(gw.url("/pub//")).body("x"),
            400,
            "no channel given",
        ),
    ];
    for (req, status, needle) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(
            r.status().as_u16(),
            status,
            "expected {status} for {needle}"
        );
        let err: Value = r.json().await.unwrap();
        let text = err["error"].as_str().unwrap();
        assert!(text.contains(needle), "{text:?} should mention {needle:?}");
    }
    let (_, stats) = common::get_json(&gw, "/stats").await;
    assert_eq!(stats["published_messages"], 0);
    assert_eq!(stats["channels"], 0);
    // And a good one still works.
    publish_ok(&gw, "ok", "fine").await;
}

#[tokio::test]
async fn bad_subscriptions_get_clear_errors() {
    let gw = start(settings()).await;
    for (path, needle) in [
        ("/ev/bad%20id", "use ASCII letters"),
        ("/sub/a/b?last_id=x", "bad event id"),
        ("/lp/a/b?last_id=e1:3", "names no channel"),
        ("/lp/a?last_id=3", "bad event id"),
        ("/ev//", "no channel given"),
    ] {
        let r = common::client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let err: Value = r.json().await.unwrap();
        assert!(err["error"].as_str().unwrap().contains(needle), "{err}");
    }
    assert_eq!(
        test_support::try_ws(gw.addr, "/ws/bad%20id").await.err(),
        Some(400)
    );
}

async fn post_from(gw: &common::Gw, from: IpAddr, token: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap();
    let mut req = client.post(gw.url("/pub/news")).body("hi");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn only_allowed_addresses_publish_unless_they_hold_the_token() {
    // Allow 127.0.0.2 only; requests from 127.0.0.1 stand for "another address".
    let gw = start(Settings {
        publish_allow: vec!["127.0.0.2/32".parse().unwrap()],
        ..settings()
    })
    .await;
    let other: IpAddr = [127, 0, 0, 1].into();
    let allowed: IpAddr = [127, 0, 0, 2].into();
    let (status, err) = post_from(&gw, other, None).await;
    assert_eq!(status, 403);
    assert!(
        err["error"].as_str().unwrap().contains("--publisher-token"),
        "{err}"
    );
    assert_eq!(post_from(&gw, allowed, None).await.0, 200);
    // Stats and DELETE are guarded the same way.
    let r = common::client().get(gw.url("/stats")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = common::client()
        .delete(gw.url("/pub/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let gw = start(Settings {
        publish_allow: vec!["127.0.0.2/32".parse().unwrap()],
        publisher_token: Some("s3cret".into()),
        ..settings()
    })
    .await;
    assert_eq!(post_from(&gw, other, Some("s3cret")).await.0, 200);
    assert_eq!(post_from(&gw, other, Some("wrong")).await.0, 401);
    assert_eq!(post_from(&gw, other, None).await.0, 403);
    assert_eq!(post_from(&gw, allowed, None).await.0, 200);
}

/// The default rule, through the router with the peer address a non-loopback client would
/// have (nothing on this machine can connect from a non-loopback address).
#[tokio::test]
async fn by_default_only_loopback_may_publish() {
    let settings = settings();
    let layer = switchboard::Layer::new(switchboard::InMemoryLayer::default());
    let registry = push::memory_registry(&settings);
    let app = push::router(layer, registry, settings);
    let status_from = |peer: &str, token: Option<&str>| {
        let mut req = Request::post("/pub/news");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut req = req.body(Body::from("hi")).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status().as_u16() }
    };
    assert_eq!(status_from("192.0.2.10:5000", None).await, 403);
    assert_eq!(status_from("[2001:db8::1]:5000", None).await, 403);
    assert_eq!(status_from("127.0.0.1:5000", None).await, 200);
    assert_eq!(status_from("127.8.9.10:5000", None).await, 200);
    assert_eq!(status_from("[::1]:5000", None).await, 200);
    assert_eq!(status_from("[::ffff:127.0.0.1]:5000", None).await, 200);
    // Without a configured token, a token opens nothing.
    assert_eq!(status_from("192.0.2.10:5000", Some("guess")).await, 403);
}

#[tokio::test]
async fn get_on_a_publisher_path_shows_the_channels_figures() {
    let gw = start(settings()).await;
    publish_ok(&gw, "news", "a").await;
    let answer = publish_ok(&gw, "news", "a").await;
    let (status, info) = common::get_json(&gw, "/pub/news").await;
    assert_eq!(status, 200);
    assert!(
        answer["position"].as_str().unwrap().ends_with(":2"),
        "{answer}"
    );
    assert_eq!(
        info,
        json!({"channel": "news", "published_messages": 2, "stored_messages": 2,
               "position": answer["position"], "subscribers": 0})
    );
    assert_eq!(common::get_json(&gw, "/pub/nothing").await.0, 404);
    let (status, _) = publish(&gw, "news", "b").await;
    assert_eq!(status, 200);
}

/// A web page open in a browser on the gateway's host sends its requests from loopback too: a
/// "simple" cross-origin POST (`fetch(url, {method: "POST", mode: "no-cors"})`) needs no CORS
/// preflight. Its `Origin` header gives it away.
#[tokio::test]
async fn a_page_of_another_origin_cannot_publish_delete_or_read_stats_even_from_loopback() {
    let gw = start(Settings {
        allowed_origins: vec!["https://app.example".into()],
        ..settings()
    })
    .await;
    publish_ok(&gw, "news", "first").await;
    let client = common::client();
    let same_host = format!("http://{}", gw.addr);
    let foreign = [
        HeaderValue::from_static("http://evil.example"),
        HeaderValue::from_static("null"),
        HeaderValue::from_static("http://127.0.0.1:1"),
        // Not readable as text: refused, not taken for "no Origin".
        HeaderValue::from_bytes(b"http://\xe9vil.example").unwrap(),
    ];
    for origin in foreign {
        let r = client
            .post(gw.url("/pub/news"))
            .header("origin", origin.clone())
            .header("content-type", "text/plain")
            .body("forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "POST with Origin {origin:?}");
        let err: Value = r.json().await.unwrap();
        assert!(
            err["error"].as_str().unwrap().contains("may not publish"),
            "{err}"
        );
        for req in [
            client.delete(gw.url("/pub/news")),
            client.get(gw.url("/stats")),
            client.get(gw.url("/pub/news")),
        ] {
            let r = req.header("origin", origin.clone()).send().await.unwrap();
            assert_eq!(r.status(), 403, "{origin:?}: {:?}", r.url());
        }
    }
    // Nothing was published nor deleted.
    let (_, info) = common::get_json(&gw, "/pub/news").await;
    assert_eq!(info["published_messages"], 1, "{info}");
    // Pages of the gateway itself (the demo page) and of --allow-origin origins may.
    for origin in [same_host.as_str(), "https://app.example"] {
        let r = client
            .post(gw.url("/pub/news"))
            .header("origin", origin)
            .body("fine")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST with Origin {origin}");
    }
    assert_eq!(
        publish_ok(&gw, "news", "no origin: not a browser").await["id"],
        4
    );
}
