//! Limits on the push gateway — subscribers per channel, channels, channel id length, channels
//! per request — and CORS. A request over a limit gets a clear HTTP error. Idle channels are
//! forgotten on their own.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Settings, publish, publish_ok, settings, sse, start};
use push::registry::MemoryRegistry;
use serde_json::Value;
use switchboard::{InMemoryLayer, Layer};

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_channel_takes_at_most_max_subscribers() {
    let gw = start(Settings {
        max_subscribers_per_channel: Some(2),
        ..settings()
    })
    .await;
    let ws = test_support::ws(gw.addr, "/ws/news").await;
    let ev = sse(&gw, "/ev/news", None).await;
    // A third, by any transport, is refused with the reason.
    assert_eq!(
        test_support::try_ws(gw.addr, "/ws/news").await.err(),
        Some(403)
    );
    let r = common::client()
        .get(gw.url("/ev/news"))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(status, 403);
    assert!(error.contains("the limit is 2"), "{error}");
    let r = common::client()
        .get(gw.url("/lp/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A refused multi-channel subscription takes no slot on its other channels.
    let r = common::client()
        .get(gw.url("/ev/sport/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    common::wait_subscribers(&gw, "news", 2).await;
    // …and leaves nothing behind: `sport` was never made.
    assert_eq!(common::get_json(&gw, "/stats?id=sport").await.0, 404);

    // When one leaves, its slot is free again.
    ws.close().await;
    common::wait_subscribers(&gw, "news", 1).await;
    let _again = test_support::ws(gw.addr, "/ws/news").await;
    drop(ev);
    common::wait_subscribers(&gw, "news", 1).await;
    let _third = sse(&gw, "/ev/news", None).await;
}

#[tokio::test]
async fn no_channel_is_made_past_max_channels() {
    let gw = start(Settings {
        max_channels: Some(2),
        ..settings()
    })
    .await;
    publish_ok(&gw, "a", "x").await;
    let _b = sse(&gw, "/ev/b", None).await; // a subscriber makes a channel too
    let (status, err) = publish(&gw, "c", "x").await;
    assert_eq!(status, 403);
    assert!(
        err["error"].as_str().unwrap().contains("the limit is 2"),
        "{err}"
    );
    let r = common::client().get(gw.url("/ev/d")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        test_support::try_ws(gw.addr, "/ws/d").await.err(),
        Some(403)
    );
    // Existing channels stay usable.
    publish_ok(&gw, "a", "y").await;
    publish_ok(&gw, "b", "y").await;
    let _a = sse(&gw, "/ev/a", None).await;
    // Once one is deleted, there is room again.
    let r = common::client()
        .delete(gw.url("/pub/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    publish_ok(&gw, "c", "x").await;
}

#[tokio::test]
async fn channel_ids_and_channels_per_request_are_bounded() {
    let gw = start(Settings {
        max_channel_id_length: 8,
        max_channels_per_request: 3,
        ..settings()
    })
    .await;
    let r = common::client()
        .get(gw.url("/ev/abcdefghi"))
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(err.contains("the limit is 8"), "{err}");
    let _ok = sse(&gw, "/ev/abcdefgh", None).await;
    let r = common::client()
        .get(gw.url("/ev/a/b/c/d"))
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(err.contains("too many channels"), "{err}");
    let _three = sse(&gw, "/ev/a/b/c", None).await;
    assert_eq!(
        test_support::try_ws(gw.addr, "/ws/a/b/c/d").await.err(),
        Some(400)
    );
    // Whatever the setting, an id stays within what layer group names allow.
    let gw = start(Settings {
        max_channel_id_length: 1000,
        ..settings()
    })
    .await;
    let (status, _) = publish(&gw, &"x".repeat(95), "x").await;
    assert_eq!(status, 400);
    publish_ok(&gw, &"x".repeat(94), "x").await;
}

#[tokio::test]
async fn cors_lets_the_allowed_origins_subscribe_and_read_the_etag() {
    let gw = start(Settings {
        allowed_origins: vec![".example.com".into()],
        ..settings()
    })
    .await;
    let client = common::client();
    publish_ok(&gw, "news", "x").await;
    let r = client
        .get(gw.url("/lp/news.b1"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("etag"), "{exposed}");

    // The preflight of a long-poll that sends If-None-Match.
    let r = client
        .request(reqwest::Method::OPTIONS, gw.url("/lp/news"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "if-none-match")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("if-none-match"), "{allowed}");

    // Another origin gets no CORS headers, and may not subscribe.
    let r = client
        .get(gw.url("/ev/news"))
        .header("origin", "https://evil.com")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(r.status(), 403);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws/news", gw.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.com".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(req).await.err().unwrap();
    assert!(refused.to_string().contains("403"), "{refused}");
    req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws/news",
        gw.addr
    ))
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://www.example.com".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // The gateway's own pages are always allowed.
    assert!(test_support::try_ws(gw.addr, "/ws/news").await.is_ok());
}

#[tokio::test]
async fn without_allowed_origins_only_same_host_pages_subscribe() {
    let gw = start(settings()).await;
    let r = common::client()
        .get(gw.url("/ev/news"))
        .header("origin", "https://elsewhere.org")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    publish_ok(&gw, "news", "x").await;
    let r = common::client()
        .get(gw.url("/lp/news.b1"))
        .header("origin", format!("http://{}", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Anyone may subscribe to names they make up (16 per request by default), and each one enters
/// the channel registry. The gateway's keeper forgets them once `--channel-ttl` has passed —
/// without anyone reading `/stats` (which purges too) and without `--max-channels`.
#[tokio::test]
async fn idle_channels_are_forgotten_without_anyone_asking_for_stats() {
    let settings = Settings {
        channel_ttl: Duration::from_secs(2),
        longpoll_timeout: Duration::from_millis(100),
        ..settings()
    };
    let registry = Arc::new(MemoryRegistry::new(settings.registry_config()));
    let gw = common::start_on(
        Layer::new(InMemoryLayer::default()),
        registry.clone(),
        settings,
    )
    .await;
    let names: Vec<String> = (0..16).map(|i| format!("made-up-{i}")).collect();
    let (status, _, _) = common::long_poll(&gw, &format!("/lp/{}", names.join("/")), None).await;
    assert_eq!(status, 304);
    // Each name is in the registry now, for two seconds.
    assert_eq!(registry.entries(), 16);
    test_support::eventually(
        "the idle channels are forgotten",
        Duration::from_secs(10),
        || registry.entries() == 0,
    )
    .await;
}
