//! `/stats` on the push gateway: the figures checked against what the test did, per-channel
//! queries (`?id=CH`, `?id=ALL`, `?id=prefix*`), and plain text by `Accept`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Settings, get_json, publish_ok, settings, sse, start, stream};
use serde_json::{Value, json};

#[tokio::test]
async fn the_summary_counts_what_was_done() {
    let gw = start(Settings {
        store_messages: 2,
        ..settings()
    })
    .await;
    let (status, s) = get_json(&gw, "/stats").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &s["channels"],
            &s["published_messages"],
            &s["stored_messages"],
            &s["subscribers"]
        ),
        (&json!(0), &json!(0), &json!(0), &json!(0))
    );
    assert!(!s["hostname"].as_str().unwrap().is_empty());
    assert!(s["time"].as_str().unwrap().ends_with('Z'));
    assert!(s["uptime"].as_u64().is_some());

    for _ in 0..3 {
        publish_ok(&gw, "user-1", "x").await; // 3 published, 2 stored
    }
    publish_ok(&gw, "user-2/global", "y").await; // 2 published, 2 stored
    let _a = sse(&gw, "/ev/user-1/global", None).await;
    let _b = test_support::ws(gw.addr, "/ws/user-1").await;
    let _c = stream(&gw, "/sub/quiet").await; // a channel made by a subscriber
    common::wait_subscribers(&gw, "user-1", 2).await;

    let (_, s) = get_json(&gw, "/stats").await;
    assert_eq!(s["channels"], 4);
    assert_eq!(s["published_messages"], 5);
    assert_eq!(s["stored_messages"], 4);
    assert_eq!(s["subscribers"], 4, "user-1 twice, global and quiet once");
}

#[tokio::test]
async fn per_channel_figures_by_id_all_and_prefix() {
    let gw = start(settings()).await;
    publish_ok(&gw, "user-1", "a").await;
    publish_ok(&gw, "user-1", "b").await;
    publish_ok(&gw, "user-2", "c").await;
    publish_ok(&gw, "global", "d").await;
    let _s = sse(&gw, "/ev/user-2", None).await;

    let (status, one) = get_json(&gw, "/stats?id=user-1").await;
    assert_eq!(status, 200);
    let position = one["position"].as_str().unwrap().to_owned();
    assert!(position.ends_with(":2"), "{one}");
    assert_eq!(
        one,
        json!({"channel": "user-1", "published_messages": 2, "stored_messages": 2,
               "position": position, "subscribers": 0})
    );

    let (_, all) = get_json(&gw, "/stats?id=ALL").await;
    assert_eq!(all["channels"], 3);
    let names: Vec<&str> = all["infos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["global", "user-1", "user-2"]);

    let (_, users) = get_json(&gw, "/stats?id=user-*").await;
    assert_eq!(users["channels"], 2);
    let position = users["infos"][1]["position"].as_str().unwrap().to_owned();
    assert!(position.ends_with(":1"), "{users}");
    assert_eq!(
        users["infos"][1],
        json!({"channel": "user-2", "published_messages": 1, "stored_messages": 1,
               "position": position, "subscribers": 1})
    );
    let (_, none) = get_json(&gw, "/stats?id=nobody*").await;
    assert_eq!(none["channels"], 0);

    let (status, err) = get_json(&gw, "/stats?id=missing").await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("missing"));
}

#[tokio::test]
async fn plain_text_when_accept_asks_for_it() {
    let gw = start(settings()).await;
    publish_ok(&gw, "news", "a").await;
    let text_of = |path: &'static str, accept: &'static str| {
        let url = gw.url(path);
        async move {
            let r = common::client()
                .get(url)
                .header("accept", accept)
                .send()
                .await
                .unwrap();
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            (ct, r.text().await.unwrap())
        }
    };
    let (ct, body) = text_of("/stats", "text/plain").await;
    assert_eq!(ct, "text/plain; charset=utf-8");
    assert!(body.contains("channels: 1\n"), "{body}");
    assert!(body.contains("published_messages: 1\n"), "{body}");
    assert!(body.lines().any(|l| l.starts_with("hostname: ")), "{body}");
    let (_, body) = text_of("/stats?id=ALL", "text/plain, */*").await;
    let (_, news) = get_json(&gw, "/stats?id=news").await;
    let line = format!(
        "infos: channel=news published_messages=1 stored_messages=1 position={} subscribers=0",
        news["position"].as_str().unwrap()
    );
    assert!(body.contains(&line), "{body}");
    let (ct, body) = text_of("/stats", "application/json, text/plain").await;
    assert_eq!(ct, "application/json");
    let _: Value = serde_json::from_str(&body).unwrap();
}
