//! The chat page in a real headless Chromium: two pages in one room see each other's
//! messages; a private message shows only on its target.
#![allow(clippy::unwrap_used)]

use switchboard::{InMemoryLayer, Layer};
use test_support::browser::Browser;

async fn join(b: &Browser, base: &str, nick: &str, room: &str) {
    b.client.goto(base).await.unwrap();
    b.type_into("#nickname", nick).await;
    b.type_into("#room", room).await;
    b.click("#join").await;
    b.wait_for_text("#status", "connected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_and_a_private_message_shows_only_on_its_target() {
    let layer = Layer::new(InMemoryLayer::default());
    let addr = test_support::serve(chat::router(layer, chat::Settings::default())).await;
    let base = format!("http://{addr}/");
    let (Some(ann), Some(bob), Some(eve)) =
        tokio::join!(Browser::start(), Browser::start(), Browser::start())
    else {
        return;
    };
    join(&ann, &base, "ann", "lobby").await;
    join(&bob, &base, "bob", "lobby").await;
    join(&eve, &base, "eve", "lobby").await;

    ann.type_into("#message-input", "hello from ann").await;
    ann.click("#send").await;
    bob.wait_for_text("#messages li.msg", "hello from ann")
        .await;
    ann.wait_for_text("#messages li.msg", "hello from ann")
        .await;
    bob.type_into("#message-input", "hi ann, bob here").await;
    bob.click("#send").await;
    ann.wait_for_text("#messages li.msg", "bob here").await;
    eve.wait_for_text("#messages li.msg", "bob here").await;

    ann.type_into("#private-to", "bob").await;
    ann.type_into("#private-input", "a secret for bob").await;
    ann.click("#send-private").await;
    bob.wait_for_text("#messages li.private", "a secret for bob")
        .await;
    // eve is in the room and saw both room messages; give the private one ample time.
    ann.type_into("#message-input", "after the secret").await;
    ann.click("#send").await;
    eve.wait_for_text("#messages li.msg", "after the secret")
        .await;
    let eve_sees = eve.texts("#messages li").await;
    assert!(
        !eve_sees.iter().any(|t| t.contains("secret for bob")),
        "eve saw the private message: {eve_sees:?}"
    );

    for b in [ann, bob, eve] {
        b.close().await;
    }
}
