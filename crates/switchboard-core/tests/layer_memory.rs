//! The in-memory layer: the conformance suite, plus what only a one-process layer can show.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard_core::{ChannelLayer, InMemoryLayer, Layer, LayerConfig, LayerError, Message};

async fn make(cfg: LayerConfig) -> Option<(Layer, Layer)> {
    let layer = Layer::new(InMemoryLayer::new(cfg));
    Some((layer.clone(), layer))
}

switchboard_core::layer_conformance_tests!(make);
switchboard_core::history_conformance_tests!(make);
switchboard_core::presence_conformance_tests!(make);

fn msg(n: i64) -> Message {
    Message::builder("test.message")
        .field("n", n)
        .build()
        .unwrap()
}

#[tokio::test]
async fn fan_out_shares_one_allocation() {
    let layer = Layer::new(InMemoryLayer::default());
    let mut members = Vec::new();
    for _ in 0..50 {
        let ch = layer.new_channel().await.unwrap();
        layer.group_add("room", &ch).await.unwrap();
        members.push(ch);
    }
    let sent = msg(1);
    layer.group_send("room", sent.clone()).await.unwrap();
    for ch in &members {
        let got = layer.receive(ch).await.unwrap();
        assert!(
            Message::ptr_eq(&got, &sent),
            "each member must get the same allocation"
        );
    }
}

#[tokio::test]
async fn group_send_counts_full_drops() {
    let layer = Layer::new(InMemoryLayer::new(LayerConfig::default().capacity(1)));
    let (a, b) = (
        layer.new_channel().await.unwrap(),
        layer.new_channel().await.unwrap(),
    );
    layer.group_add("room", &a).await.unwrap();
    layer.group_add("room", &b).await.unwrap();
    layer.group_send("room", msg(1)).await.unwrap();
    layer.group_send("room", msg(2)).await.unwrap();
    layer.group_send("room", msg(3)).await.unwrap();
    assert_eq!(layer.stats().group_full_drops, 4);
    assert_eq!(layer.receive(&a).await.unwrap(), msg(1));
}

#[tokio::test]
async fn expired_messages_are_counted() {
    let layer = Layer::new(InMemoryLayer::new(
        LayerConfig::default().expiry(Duration::from_millis(200)),
    ));
    let ch = layer.new_channel().await.unwrap();
    layer.send(&ch, msg(1)).await.unwrap();
    layer.send(&ch, msg(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    layer.send(&ch, msg(3)).await.unwrap();
    assert_eq!(layer.receive(&ch).await.unwrap(), msg(3));
    assert_eq!(layer.stats().expired_messages, 2);
}

#[tokio::test]
async fn sweep_frees_channels_nobody_holds() {
    let backend = InMemoryLayer::new(LayerConfig::default().expiry(Duration::from_millis(200)));
    let layer = Layer::new(backend.clone());
    // Messages sent to channels nobody will ever receive on.
    for i in 0..100 {
        layer.send(format!("orphan.{i}"), msg(i)).await.unwrap();
    }
    let kept = layer.new_channel().await.unwrap();
    layer.group_add("room", &kept).await.unwrap();
    assert!(backend.stats().channels >= 101);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = layer.new_channel().await.unwrap(); // the sweep piggy-backs on new_channel
    let stats = backend.stats();
    assert_eq!(
        stats.channels, 1,
        "only the group member is kept: {stats:?}"
    );
    assert_eq!(stats.expired_messages, 100);
}

#[tokio::test]
async fn discarded_consumer_leaves_no_trace() {
    let backend = InMemoryLayer::default();
    let layer = Layer::new(backend.clone());
    for _ in 0..1000 {
        let ch = layer.new_channel().await.unwrap();
        layer.group_add("room", &ch).await.unwrap();
        layer.group_add("lobby", &ch).await.unwrap();
        layer.group_discard("lobby", &ch).await.unwrap();
        layer.group_discard("room", &ch).await.unwrap();
        backend.discard_channel(&ch).await.unwrap();
    }
    let stats = backend.stats();
    assert_eq!((stats.channels, stats.groups), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn close_wakes_receivers_with_an_error() {
    let layer = Layer::new(InMemoryLayer::default());
    let ch = layer.new_channel().await.unwrap();
    let waiter = {
        let (layer, ch) = (layer.clone(), ch.clone());
        tokio::spawn(async move { layer.receive(&ch).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    layer.close().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(LayerError::Closed)), "{r:?}");
    assert!(matches!(
        layer.send(&ch, msg(1)).await,
        Err(LayerError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fan_out_from_many_tasks_loses_nothing() {
    const MEMBERS: usize = 64;
    const SENDERS: usize = 4;
    const EACH: usize = 200;
    let layer = Layer::new(InMemoryLayer::new(
        LayerConfig::default().capacity(SENDERS * EACH),
    ));
    let mut receivers = Vec::new();
    for _ in 0..MEMBERS {
        let ch = layer.new_channel().await.unwrap();
        layer.group_add("room", &ch).await.unwrap();
        let layer = layer.clone();
        receivers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < SENDERS * EACH {
                layer.receive(&ch).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let layer = layer.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    layer
                        .group_send("room", msg((s * EACH + i) as i64))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    for r in receivers {
        let n = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, SENDERS * EACH);
    }
    assert_eq!(layer.stats().group_full_drops, 0);
}

/// Slow members and a fast sender: with back-pressure nothing is dropped; without, some are.
async fn fast_sender_slow_members(backpressure: Duration) -> u64 {
    let layer = Layer::new(InMemoryLayer::new(
        LayerConfig::default()
            .capacity(10)
            .group_backpressure(backpressure),
    ));
    switchboard_core::layer::conformance::fast_sender_slow_members(&layer, 20, 100).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_pushes_back_on_a_fast_sender_instead_of_dropping() {
    assert_eq!(fast_sender_slow_members(Duration::from_secs(1)).await, 0);
    assert!(
        fast_sender_slow_members(Duration::ZERO).await > 0,
        "without back-pressure a fast sender overflows slow members"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_recovers_a_subscriber_that_fell_behind() {
    switchboard_core::layer::conformance::history_recovers_a_subscriber_that_fell_behind(make).await
}
