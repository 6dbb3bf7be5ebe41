//! What the HTTP transports report through the metrics facade, read back from a recorder
//! installed for this test binary: streams answered and how each ended, polls by outcome,
//! refusals by reason, and the messages a stream was told it missed.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use switchboard::feed::Since;
use switchboard::longpoll::LongPoll;
use switchboard::sse::EventStream;
use switchboard::{DrainConfig, InMemoryLayer, Layer, LayerConfig, Shutdown};
use test_support::http::{Body, client};

#[derive(Clone)]
struct App {
    layer: Layer,
    shutdown: Shutdown,
}

async fn events(State(app): State<App>, Since(since): Since) -> Response {
    EventStream::new(app.layer, "room.m")
        .since(since)
        .shutdown(&app.shutdown)
        .open()
        .await
}

async fn poll(State(app): State<App>, Since(since): Since) -> Response {
    LongPoll::new(app.layer, "room.m")
        .since(since)
        .timeout(Duration::from_millis(100))
        .shutdown(&app.shutdown)
        .open()
        .await
}

async fn plain_poll(State(app): State<App>) -> Response {
    LongPoll::new(app.layer, "plain").open().await
}

#[tokio::test]
async fn streams_polls_and_refusals_are_counted() {
    let mut m = test_support::metrics::Recorded::install();
    let cfg = LayerConfig::default()
        .capacity(2)
        .group_backpressure(Duration::ZERO)
        .group_history("room.*", 1000, Duration::from_secs(60))
        .unwrap();
    let layer = Layer::new(InMemoryLayer::new(cfg));
    let shutdown = Shutdown::new();
    let app = App {
        layer: layer.clone(),
        shutdown: shutdown.clone(),
    };
    let router = Router::new()
        .route("/events", get(events))
        .route("/poll", get(poll))
        .route("/plain", get(plain_poll))
        .with_state(app);
    let addr = test_support::serve(router).await;
    let url = |p: &str| format!("http://{addr}{p}");
    let get_json = |u: String| async move {
        client()
            .get(u)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };

    // A stream the client leaves.
    let mut gone = Body::new(client().get(url("/events")).send().await.unwrap());
    gone.next_event().await;
    drop(gone);
    test_support::eventually(
        "the stream that was left is counted",
        Duration::from_secs(5),
        || {
            m.counter(
                "switchboard_http_streams_closed_total",
                &[("reason", "client")],
            ) == 1
        },
    )
    .await;

    // Polls: the first (empty), one with a message, one not recovered.
    let first = get_json(url("/poll")).await;
    let pos = first["position"].as_str().unwrap().to_owned();
    layer
        .group_send("room.m", json!({"type": "t", "n": 1}))
        .await
        .unwrap();
    assert_eq!(
        get_json(url(&format!("/poll?since={pos}"))).await["messages"][0]["n"],
        1
    );
    assert_eq!(
        get_json(url("/poll?since=other:1")).await["recovered"],
        false
    );
    assert_eq!(
        m.counter("switchboard_http_polls_total", &[("outcome", "empty")]),
        1
    );
    assert_eq!(
        m.counter("switchboard_http_polls_total", &[("outcome", "messages")]),
        1
    );
    assert_eq!(
        m.counter(
            "switchboard_http_polls_total",
            &[("outcome", "not_recovered")]
        ),
        1
    );

    // Refusals: a bad since, a poll on a group without history.
    assert_eq!(
        client()
            .get(url("/poll?since=bad"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        client().get(url("/plain")).send().await.unwrap().status(),
        500
    );
    assert_eq!(
        m.counter(
            "switchboard_http_refused_total",
            &[("reason", "bad_request")]
        ),
        1
    );
    assert_eq!(
        m.counter(
            "switchboard_http_refused_total",
            &[("reason", "no_history")]
        ),
        1
    );

    // A stream that falls behind: its queue (capacity 2) drops, the gap is told and counted.
    let mut slow = Body::new(client().get(url("/events")).send().await.unwrap());
    slow.next_event().await;
    let text = "x".repeat(64 * 1024);
    for i in 0..200 {
        layer
            .group_send("room.m", json!({"type": "t", "n": i, "text": text}))
            .await
            .unwrap();
    }
    while slow
        .next_block()
        .await
        .is_some_and(|b| b.event.as_deref() != Some("gap"))
    {}
    assert!(slow.ends_within(Duration::from_secs(2)).await);
    test_support::eventually("the gap is counted", Duration::from_secs(5), || {
        m.counter(
            "switchboard_http_streams_closed_total",
            &[("reason", "gap")],
        ) == 1
    })
    .await;
    assert!(m.counter("switchboard_messages_missed_total", &[]) > 0);

    // A drain ends a stream, then refuses.
    let mut open = Body::new(client().get(url("/events")).send().await.unwrap());
    open.next_event().await;
    shutdown
        .drain(DrainConfig::default().deadline(Duration::from_secs(5)))
        .await;
    assert!(open.ends_within(Duration::from_secs(2)).await);
    assert_eq!(
        client().get(url("/events")).send().await.unwrap().status(),
        503
    );
    test_support::eventually(
        "the drained stream is counted",
        Duration::from_secs(5),
        || {
            m.counter(
                "switchboard_http_streams_closed_total",
                &[("reason", "shutdown")],
            ) == 1
        },
    )
    .await;
    assert_eq!(m.counter("switchboard_http_streams_total", &[]), 3);
    assert_eq!(
        m.counter(
            "switchboard_http_refused_total",
            &[("reason", "shutting_down")]
        ),
        1
    );
}
