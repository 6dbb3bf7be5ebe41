//! The push gateway's demo page in a real headless Chromium: it subscribes with EventSource and
//! with WebSocket, shows what arrives, and publishes from its form; the backtrack suffix and a
//! publish from outside the page show too.
#![allow(clippy::unwrap_used)]

mod common;

use common::{publish_ok, settings, start};
use test_support::browser::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_subscribes_both_ways_and_publishes() {
    let gw = start(settings()).await;
    publish_ok(&gw, "demo", "stored before the page came").await;
    let Some(b) = Browser::start().await else {
        return;
    };
    b.client.goto(&gw.url("/")).await.unwrap();
    b.type_into("#channel", "demo.b1/other").await;
    b.click("#subscribe").await;
    b.wait_for_text("#es-status", "connected").await;
    b.wait_for_text("#ws-status", "connected").await;
    // The backtrack delivered the stored message on both.
    b.wait_for_text("#es-messages li.msg", "stored before the page came")
        .await;
    b.wait_for_text("#ws-messages li.msg", "stored before the page came")
        .await;
    common::wait_subscribers(&gw, "demo", 2).await;

    // Publish from the form.
    b.type_into("#pub-channel", "demo").await;
    b.type_into("#pub-text", "hello from the form").await;
    b.click("#publish").await;
    b.wait_for_text("#pub-result", "\"published_messages\":2")
        .await;
    let (_, demo) = common::get_json(&gw, "/stats?id=demo").await;
    let (_, other) = common::get_json(&gw, "/stats?id=other").await;
    let (demo, other) = (
        demo["position"].as_str().unwrap(),
        other["position"].as_str().unwrap(),
    );
    assert!(
        demo.ends_with(":2") && other.ends_with(":0"),
        "{demo} {other}"
    );
    b.wait_for_text("#es-messages li.msg", "hello from the form")
        .await;
    b.wait_for_text("#ws-messages li.msg", "hello from the form")
        .await;
    // The EventSource shows the event id it would resume from.
    b.wait_for_text(
        "#es-messages li.msg",
        &format!("last event id demo={demo},other={other}"),
    )
    .await;
    b.wait_for_text("#ws-messages li.msg", &format!("demo #2 ({demo})"))
        .await;

    // A publish from outside the page, to the page's other channel.
    publish_ok(&gw, "other", "from a backend").await;
    b.wait_for_text("#es-messages li.msg", "from a backend")
        .await;
    b.wait_for_text("#ws-messages li.msg", "from a backend")
        .await;
    let es = b.texts("#es-messages li.msg").await;
    assert_eq!(es.len(), 3, "each message once: {es:?}");

    // Deleting a channel shows the notice.
    let r = common::client()
        .delete(gw.url("/pub/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    b.wait_for_text("#ws-messages li.notice", "other was deleted")
        .await;
    b.wait_for_text("#es-messages li.notice", "other was deleted")
        .await;
    b.close().await;
}
