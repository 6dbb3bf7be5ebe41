//! The chat page in a real headless Chromium: two pages in one room see each other's
//! messages; a private message shows only on its target; a page whose connection drops
//! reconnects by itself (`switchboard.js`) and shows what it missed, each message once and in
//! order, or says it could not recover it — also when its chat process was killed and
//! started again, the history kept in Redis.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard::{InMemoryLayer, Layer, LayerConfig};
use test_support::browser::Browser;
use test_support::program::Program;

async fn join(b: &Browser, base: &str, nick: &str, room: &str) {
    b.client.goto(base).await.unwrap();
    b.type_into("#nickname", nick).await;
    b.type_into("#room", room).await;
    b.click("#join").await;
    b.wait_for_text("#status.open", "connected").await;
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

/// Publishes into a room from outside (as a Django view or another service would).
async fn post(base: &str, room: &str, text: &str) {
    let r = reqwest::Client::new()
        .post(format!("{base}chat/rooms/{room}/user/carl/"))
        .body(serde_json::json!({ "message": text }).to_string())
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "publishing {text:?}: {}",
        r.status()
    );
}

/// The room messages a page shows, in order (each line is "USERtext": name and text spans).
async fn shown(b: &Browser) -> Vec<String> {
    b.texts("#messages li.msg").await
}

/// Drops the page's WebSocket as a network blip would (the client did not ask to close it).
async fn drop_connection(b: &Browser) {
    b.client
        .execute("window.chat.client.socket.close()", vec![])
        .await
        .unwrap();
    b.wait_for_text("#status", "reconnecting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_lost_its_connection_shows_what_it_missed_once_in_order() {
    // Rooms keep their last 3 messages.
    let cfg = chat::with_history(LayerConfig::default(), 3, Duration::from_secs(60)).unwrap();
    let layer = Layer::new(InMemoryLayer::new(cfg));
    let addr = test_support::serve(chat::router(layer, chat::Settings::default())).await;
    let root = format!("http://{addr}/");
    // The first reconnect comes 1.5–3 s after a drop: time for the messages it misses.
    let page = format!("{root}?retry_ms=3000");
    let (Some(ann), Some(bob)) = tokio::join!(Browser::start(), Browser::start()) else {
        return;
    };
    join(&ann, &page, "ann", "lobby").await;
    join(&bob, &page, "bob", "lobby").await;
    ann.type_into("#message-input", "one").await;
    ann.click("#send").await;
    bob.wait_for_text("#messages li.msg", "one").await;

    // Away for a moment: two messages sent meanwhile come back on the reconnect.
    drop_connection(&bob).await;
    post(&root, "lobby", "two").await;
    post(&root, "lobby", "three").await;
    bob.wait_for_text("#messages li.recovered", "2 missed message(s) recovered")
        .await;
    bob.wait_for_text("#status.open", "connected").await;
    ann.type_into("#message-input", "four").await;
    ann.click("#send").await;
    bob.wait_for_text("#messages li.msg", "four").await;
    assert_eq!(
        shown(&bob).await,
        ["annone", "carltwo", "carlthree", "annfour"],
        "every message once, in order"
    );
    assert_eq!(shown(&ann).await, shown(&bob).await);

    // Away while more was sent than the room keeps: the page says so instead of a hole.
    drop_connection(&bob).await;
    for text in ["five", "six", "seven", "eight"] {
        post(&root, "lobby", text).await;
    }
    bob.wait_for_text("#messages li.lost", "could not be recovered")
        .await;
    bob.wait_for_text("#status.open", "connected").await;
    post(&root, "lobby", "nine").await;
    bob.wait_for_text("#messages li.msg", "nine").await;
    let after: Vec<String> = shown(&bob).await;
    assert_eq!(
        after,
        ["annone", "carltwo", "carlthree", "annfour", "carlnine"],
        "nothing replayed when not recovered, live again after"
    );

    for b in [ann, bob] {
        b.close().await;
    }
}

/// Sends a room message from the page's form.
async fn say(b: &Browser, text: &str) {
    b.type_into("#message-input", text).await;
    b.click("#send").await;
    b.wait_for_text("#messages li.msg", text).await;
}

/// Two chat processes on one Redis (rooms keeping 5 messages). ann's page is on process one,
/// bob's on process two. Process one is killed (SIGKILL: no drain, no goodbye) while bob keeps
/// publishing, and started again on its address: ann's page reconnects by itself and shows
/// every message exactly once, in order. Away while more was sent than the room keeps, it says
/// it could not recover instead of showing a hole.
async fn a_page_whose_process_was_killed_recovers_from_redis(layer: &str) {
    let Some(redis) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let args = [
        "--redis",
        &redis,
        "--redis-prefix",
        &prefix,
        "--layer",
        layer,
        "--history",
        "5",
    ];
    let bin = env!("CARGO_BIN_EXE_chat");
    let (mut one, two) = tokio::join!(Program::start(bin, &args), Program::start(bin, &args));
    let (Some(ann), Some(bob)) = tokio::join!(Browser::start(), Browser::start()) else {
        return;
    };
    join(
        &ann,
        &format!("http://{}/?retry_ms=300", one.addr),
        "ann",
        "lobby",
    )
    .await;
    join(&bob, &format!("http://{}/", two.addr), "bob", "lobby").await;
    say(&bob, "one").await;
    ann.wait_for_text("#messages li.msg", "one").await;

    one.kill();
    ann.wait_for_text("#status", "reconnecting").await;
    for text in ["two", "three", "four"] {
        say(&bob, text).await;
    }
    one.restart().await;
    ann.wait_for_text("#messages li.recovered", "3 missed message(s) recovered")
        .await;
    ann.wait_for_text("#status.open", "connected").await;
    say(&bob, "five").await;
    ann.wait_for_text("#messages li.msg", "five").await;
    let all = ["bobone", "bobtwo", "bobthree", "bobfour", "bobfive"];
    assert_eq!(shown(&ann).await, all, "every message once, in order");
    assert_eq!(shown(&bob).await, all);

    // Away while six messages pass a five-message history.
    one.kill();
    ann.wait_for_text("#status", "reconnecting").await;
    for text in ["six", "seven", "eight", "nine", "ten", "eleven"] {
        say(&bob, text).await;
    }
    one.restart().await;
    ann.wait_for_text("#messages li.lost", "could not be recovered")
        .await;
    ann.wait_for_text("#status.open", "connected").await;
    say(&bob, "twelve").await;
    ann.wait_for_text("#messages li.msg", "twelve").await;
    let mut expected = all.to_vec();
    expected.push("bobtwelve");
    assert_eq!(
        shown(&ann).await,
        expected,
        "nothing replayed when not recovered, live again after"
    );

    for b in [ann, bob] {
        b.close().await;
    }
}

/// Waits up to 10 s for the texts of `css` to be `want`.
async fn texts_become(b: &Browser, css: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let have = b.texts(css).await;
        if have == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css}: {have:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page shows who is in the room (the layer's presence, kept by switchboard.js from the
/// welcome frame and the room's `presence.join` / `presence.leave` events): each page sees
/// both nicknames, and one that leaves goes from the other's list; the room's HTTP info counts
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_who_is_in_the_room() {
    let cfg = chat::with_presence_events(LayerConfig::default()).unwrap();
    let layer = Layer::new(InMemoryLayer::new(cfg));
    let addr = test_support::serve(chat::router(layer, chat::Settings::default())).await;
    let root = format!("http://{addr}/");
    let (Some(ann), Some(bob)) = tokio::join!(Browser::start(), Browser::start()) else {
        return;
    };
    join(&ann, &root, "ann", "lobby").await;
    texts_become(&ann, "#present li", &["ann"]).await;
    join(&bob, &root, "bob", "lobby").await;
    texts_become(&ann, "#present li", &["ann", "bob"]).await;
    texts_become(&bob, "#present li", &["ann", "bob"]).await;
    let info: serde_json::Value = reqwest::get(format!("{root}chat/rooms/lobby/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["present"], 2, "{info}");

    bob.click("#leave").await;
    texts_become(&ann, "#present li", &["ann"]).await;
    texts_become(&bob, "#present li", &[]).await;
    for b in [ann, bob] {
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_process_was_killed_recovers_on_the_pubsub_layer() {
    a_page_whose_process_was_killed_recovers_from_redis("pubsub").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_process_was_killed_recovers_on_the_core_layer() {
    a_page_whose_process_was_killed_recovers_from_redis("core").await;
}
