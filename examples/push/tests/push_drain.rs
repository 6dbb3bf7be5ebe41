//! A draining gateway ends every kind of subscription so that its clients reconnect to another
//! process: WebSocket with 1001, EventSource and streams end their bodies, a waiting long poll
//! is answered at once (304 with its cursor, as a timeout is); new subscriptions get 503.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Settings, long_poll, settings, sse, start, stream};
use switchboard::{DrainConfig, Shutdown};

#[tokio::test]
async fn a_drain_ends_websocket_eventsource_stream_and_long_poll_subscribers() {
    let shutdown = Shutdown::new();
    let gw = start(Settings {
        longpoll_timeout: Duration::from_secs(30),
        shutdown: shutdown.clone(),
        ..settings()
    })
    .await;
    let mut ws = test_support::ws(gw.addr, "/ws/news").await;
    let mut ev = sse(&gw, "/ev/news", None).await;
    let mut st = stream(&gw, "/sub/news").await;
    let poll = tokio::spawn({
        let url = gw.url("/lp/news");
        async move {
            let started = Instant::now();
            let r = test_support::http::client().get(url).send().await.unwrap();
            (r.status().as_u16(), started.elapsed())
        }
    });
    common::wait_subscribers(&gw, "news", 4).await;

    let report = shutdown
        .drain(DrainConfig::default().deadline(Duration::from_secs(10)))
        .await;
    assert_eq!((report.told, report.remaining), (4, 0), "{report:?}");

    let close = common::close_frame(&mut ws).await;
    assert_eq!(close, (1001, "server shutting down".to_owned()));
    assert!(
        ev.ends_within(Duration::from_secs(2)).await,
        "sse still open"
    );
    assert!(
        st.ends_within(Duration::from_secs(2)).await,
        "stream still open"
    );
    let (status, waited) = poll.await.unwrap();
    assert_eq!(status, 304);
    assert!(
        waited < Duration::from_secs(10),
        "the poll waited {waited:?}"
    );

    // New subscribers are sent elsewhere.
    let r = test_support::http::client()
        .get(gw.url("/ev/news"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let (status, _, _) = long_poll(&gw, "/lp/news", None).await;
    assert_eq!(status, 503);
    assert_eq!(
        test_support::try_ws(gw.addr, "/ws/news").await.err(),
        Some(503)
    );
}
