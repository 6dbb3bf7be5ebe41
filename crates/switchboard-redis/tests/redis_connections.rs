//! A thousand consumers in one process share a few Redis connections, with either layer.
//! (A test binary of its own: it counts the server's clients, so nothing else may run.)
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard_core::{Layer, LayerConfig, Message};
use test_support::layers::{config, connected_clients, core, pubsub};

async fn thousand_consumers(url: &str, make: impl AsyncFn() -> Layer) -> usize {
    let before = connected_clients(url).await;
    let layer = make().await;
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let ch = layer.new_channel().await.unwrap();
        layer.group_add("big", &ch).await.unwrap();
        let l = layer.clone();
        tasks.push(tokio::spawn(async move { l.receive(&ch).await }));
    }
    let sender = make().await;
    let sent = Message::builder("all").field("n", 1).build().unwrap();
    sender.group_send("big", sent.clone()).await.unwrap();
    for t in tasks {
        let got = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, sent);
    }
    connected_clients(url).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_consumers_share_a_few_connections() {
    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let url = cfg.hosts[0].url().unwrap().to_owned();
    let opened = thousand_consumers(&url, async || Layer::new(core(&cfg).await)).await;
    // Two layers, each: one command connection and one receive-loop connection.
    assert!(
        opened <= 4,
        "core: {opened} connections for 1,000 consumers"
    );

    let Some(cfg) = config(LayerConfig::default()) else {
        return;
    };
    let opened = thousand_consumers(&url, async || Layer::new(pubsub(&cfg).await)).await;
    // Two layers, each: one command connection and one subscription connection.
    assert!(
        opened <= 4,
        "pub/sub: {opened} connections for 1,000 consumers"
    );
}
