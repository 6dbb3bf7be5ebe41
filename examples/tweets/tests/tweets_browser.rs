//! The tweets page in a real headless Chromium: type a term, press Search, cards appear; the
//! connection drops and comes back, cards go on; press Stop, no new card. Two pages searching
//! one term share one upstream.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use switchboard::{InMemoryLayer, Layer};
use test_support::browser::Browser;
use test_support::eventually;
use tweets::corpus::Corpus;
use tweets::hub::Hub;

async fn count(b: &Browser) -> u64 {
    b.attr("#count", "data-count")
        .await
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_shows_cards_stop_stops_them_and_two_pages_share_an_upstream() {
    let layer = Layer::new(InMemoryLayer::default());
    let corpus = Corpus::bundled(2000.0).unwrap();
    let interval = Duration::from_millis(300);
    let hub = Hub::new(layer.clone(), Arc::new(corpus.clone()), interval);
    let settings = tweets::Settings {
        corpus: Some(corpus),
        ..tweets::Settings::default()
    };
    let addr = test_support::serve(tweets::router(hub.clone(), layer, settings)).await;
    let base = format!("http://{addr}/");
    let (Some(ann), Some(bob)) = tokio::join!(Browser::start(), Browser::start()) else {
        return;
    };

    ann.client.goto(&base).await.unwrap();
    // Search and Stop are enabled once the WebSocket is open.
    ann.wait_for_text("#conn", "live").await;
    ann.wait_for_text("#source", "synthetic corpus").await;
    ann.type_into("#term", "#RustLang").await;
    ann.click("#search").await;
    ann.wait_for_text("#state", "Listening for #RustLang").await;

    // A card appears, with author, time, text and link. The carousel replaces the current card
    // every interval, so read one card's fields in a single script call.
    ann.wait_for_text(".card.current .author", "@").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let card = loop {
        let snapshot = ann
            .client
            .execute(
                "const c = document.querySelector('.card.current');
                 if (!c) return null;
                 const q = (s) => c.querySelector(s);
                 return { author: q('.author')?.textContent ?? '', text: q('.text')?.textContent ?? '',
                          time: q('time')?.textContent ?? '', href: q('a.link')?.href ?? '',
                          tags: c.querySelectorAll('.tag').length };",
                vec![],
            )
            .await
            .unwrap();
        if snapshot.is_object() {
            break snapshot;
        }
        assert!(tokio::time::Instant::now() < deadline, "no current card");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(card["author"].as_str().unwrap().contains('@'), "{card}");
    let text = card["text"].as_str().unwrap().to_lowercase();
    assert!(text.contains("#rustlang"), "{card}");
    assert!(!card["time"].as_str().unwrap().is_empty(), "{card}");
    assert!(card["href"].as_str().unwrap().contains("/posts/"), "{card}");
    assert!(card["tags"].as_u64().unwrap() > 0, "{card}");
    // More keep coming, one per interval.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&ann).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cards stopped coming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The page's connection drops (a network blip): switchboard.js reconnects and the page
    // asks for its search again; cards keep coming.
    ann.client
        .execute("window.tweets.client.socket.close()", vec![])
        .await
        .unwrap();
    ann.wait_for_text("#conn", "reconnecting").await;
    ann.wait_for_text("#conn", "live").await;
    ann.wait_for_text("#state", "Listening for #RustLang").await;
    let at_reconnect = count(&ann).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&ann).await < at_reconnect + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no card after the reconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second page searching the same term joins the same upstream.
    bob.client.goto(&base).await.unwrap();
    bob.wait_for_text("#conn", "live").await;
    bob.type_into("#term", "#rustlang").await;
    bob.click("#search").await;
    bob.wait_for_text(".card.current .author", "@").await;
    assert_eq!(hub.upstreams(), 1, "two pages, one upstream");
    assert_eq!(hub.running(), 1);

    // Stop: no new card on this page. The page says "Stopped." once the server confirmed; the
    // server sends nothing for the search after that, so the count is final from then on —
    // however slow the machine.
    ann.click("#stop").await;
    ann.wait_for_text("#state", "Stopped.").await;
    ann.screenshot("tweets-stopped").await;
    let stopped_at = count(&ann).await;
    let cards_at = ann.texts(".card").await.len();
    // The other page still gets posts: the upstream lives on for it. Three more posts there
    // give the stopped page every chance to show a stray one.
    let before = count(&bob).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&bob).await < before + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's stream stopped too: {before} → {}, state {:?}, conn {:?}, hub {hub:?}, running {}",
            count(&bob).await,
            bob.texts("#state").await,
            bob.texts("#conn").await,
            hub.running()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&ann).await, stopped_at, "a card arrived after Stop");
    assert_eq!(ann.texts(".card").await.len(), cards_at);
    assert_eq!(hub.upstreams(), 1);

    // Bob leaves the page: nobody listens, the upstream ends.
    bob.client.goto("about:blank").await.unwrap();
    eventually("the upstream ended", Duration::from_secs(5), || {
        hub.upstreams() == 0 && hub.running() == 0
    })
    .await;

    ann.close().await;
    bob.close().await;
}
