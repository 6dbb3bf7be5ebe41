//! Workers and Django on one Redis, both ways:
//!
//! - Django `channel_layer.send("thumbnails-generate", {...})` → a Rust [`Worker`] handles it
//!   and `group_send`s the result to a group a Django channel listens on;
//! - Rust `send`s work to `thumbnails-generate`, which Channels' own `manage.py runworker`
//!   (a `ChannelNameRouter` in `test-support/django/workersite`) consumes; its `group_send`
//!   reaches a Rust subscription in the reply group.
//!
//! On the core layer (a queue in Redis) and on the pub/sub layer (a Redis pub/sub channel).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use switchboard::worker::{Worker, WorkerContext};
use switchboard::{Decoded, Message};
use test_support::django::{Django, Kind, RunWorker, rust_layer};

#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
enum Job {
    #[serde(rename = "thumbnail.generate")]
    Generate {
        id: i64,
        reply_group: String,
        #[serde(with = "bytes_field")]
        data: Vec<u8>,
    },
}

/// A `bytes` value from Python arrives as bytes (msgpack bin), not as a list of numbers.
mod bytes_field {
    use serde::Deserializer;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

fn generate(id: i64, reply_group: &str) -> Message {
    Message::builder("thumbnail.generate")
        .field("id", id)
        .field("reply_group", reply_group)
        .field("data", switchboard::value::Value::Bytes(vec![0, 1, 2, 255]))
        .build()
        .unwrap()
}

/// Django sends a job to the named channel; a Rust worker handles it and group_sends the
/// result to a group a Django channel is in.
async fn django_sends_work_to_a_rust_worker(kind: Kind) {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let (django, layer) = tokio::join!(
        Django::start(kind, &url, &prefix, &[]),
        rust_layer(kind, &url, &prefix, &[])
    );
    let Some(mut django) = django else {
        return;
    };
    let page = django.new_channel().await;
    django.group_add("thumbnails", &page).await;

    // On pub/sub, a message published before the subscription is lost: subscribe first (the
    // worker's receivers share this subscription).
    let _subscribed = layer.receiver("thumbnails-generate").await.unwrap();
    let worker = Worker::new(layer.clone()).channel(
        "thumbnails-generate",
        |ctx: WorkerContext, job: Decoded<Job>| async move {
            let Job::Generate {
                id,
                reply_group,
                data,
            } = &*job;
            let done = json!({
                "type": "thumbnail.done", "id": id, "by": "rust",
                "channel": ctx.channel().as_str(), "size": data.len(),
            });
            ctx.group_send(reply_group.as_str(), done).await
        },
    );
    let stop = worker.stop_handle();
    let running = tokio::spawn(worker.run());

    django
        .send("thumbnails-generate", &generate(7, "thumbnails"))
        .await;
    assert_eq!(
        django.receive(&page).await.to_json(),
        json!({"type": "thumbnail.done", "id": 7, "by": "rust", "channel": "thumbnails-generate", "size": 4})
    );
    // An unknown type from Django is skipped; the worker goes on.
    django
        .send(
            "thumbnails-generate",
            &Message::builder("thumbnail.unknown").build().unwrap(),
        )
        .await;
    django
        .send("thumbnails-generate", &generate(8, "thumbnails"))
        .await;
    assert_eq!(
        django.receive(&page).await.get("id").unwrap().as_i64(),
        Some(8)
    );

    stop.stop();
    let stats = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((stats.handled, stats.skipped), (2, 1));
}

/// Rust sends a job to the named channel; Channels' `runworker` handles it and group_sends
/// the result to a group a Rust subscription is in.
async fn rust_sends_work_to_a_channels_runworker(kind: Kind) {
    let Some(url) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let layer = rust_layer(kind, &url, &prefix, &[]).await;
    let Some(mut runworker) = RunWorker::start(kind, &url, &prefix, &["thumbnails-generate"]).await
    else {
        return;
    };
    let mut results = layer.subscribe().await.unwrap();
    results.group_add("thumbnail-results").await.unwrap();

    // The core layer keeps the job in Redis until the worker takes it: one send. On pub/sub
    // the worker hears only once it has subscribed (Python starting up): send again every
    // 500 ms until it answers (at most 60 times).
    let mut reply = None;
    for attempt in 0..60 {
        if attempt == 0 || kind == Kind::PubSub {
            layer
                .send("thumbnails-generate", generate(42, "thumbnail-results"))
                .await
                .unwrap();
        }
        match tokio::time::timeout(Duration::from_millis(500), results.recv()).await {
            Ok(m) => {
                reply = Some(m.unwrap());
                break;
            }
            Err(_) => runworker.assert_running(),
        }
    }
    let reply = reply.expect("no answer from runworker within 30 s");
    assert_eq!(
        reply.to_json(),
        json!({"type": "thumbnail.done", "id": 42, "by": "django", "channel": "thumbnails-generate", "size": 4})
    );
    if kind == Kind::Core {
        // Taken once: no second answer.
        let again = tokio::time::timeout(Duration::from_millis(500), results.recv()).await;
        assert!(again.is_err(), "answered twice: {again:?}");
        layer
            .send("thumbnails-generate", generate(43, "thumbnail-results"))
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), results.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.get("id").unwrap().as_i64(), Some(43));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_send_reaches_a_rust_worker_on_the_core_layer() {
    django_sends_work_to_a_rust_worker(Kind::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_send_reaches_a_rust_worker_on_the_pubsub_layer() {
    django_sends_work_to_a_rust_worker(Kind::PubSub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_send_reaches_channels_runworker_on_the_core_layer() {
    rust_sends_work_to_a_channels_runworker(Kind::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_send_reaches_channels_runworker_on_the_pubsub_layer() {
    rust_sends_work_to_a_channels_runworker(Kind::PubSub).await;
}
