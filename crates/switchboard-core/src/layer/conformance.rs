//! The layer conformance suite: the semantics of [`crate::layer`], as test cases generic over
//! any layer.
//!
//! Every case takes a `make` function that builds a **fresh, empty** backend from a
//! [`LayerConfig`] (for Redis: a new key prefix per call) and returns two handles onto it, as two
//! server processes would hold them — or `None` when the backend is not available on this
//! machine (the case is then skipped; `make` says why). For a one-process layer both handles are the same layer;
//! for Redis they are two layer instances (two client prefixes, so two process queues). Cases
//! that depend on a channel's own capacity put the channels involved on different instances,
//! because channels_redis stores all process-local channels of one process under one key.
//!
//! A channel is added to groups by the instance that owns it (the one whose `new_channel` made
//! it), as consumers do with `group_add(group, self.channel_name)`. The pub/sub layers keep
//! memberships in the owning process (Channels' `RedisPubSubChannelLayer` refuses a `group_add`
//! for a channel of another process), and a channel whose messages expire can only be taken
//! out of the groups its own process knows about.
//!
//! Run them all for a layer with [`layer_conformance_tests!`](crate::layer_conformance_tests):
//!
//! ```no_run
//! // tests/layer_mine.rs
//! use switchboard_core::{InMemoryLayer, Layer, LayerConfig};
//!
//! async fn make(cfg: LayerConfig) -> Option<(Layer, Layer)> {
//!     let layer = Layer::new(InMemoryLayer::new(cfg));
//!     Some((layer.clone(), layer))
//! }
//! switchboard_core::layer_conformance_tests!(make);
//! # fn main() {}
//! ```
//!
//! A case panics (fails the test) with a message saying which rule was broken.

use std::future::Future;
use std::time::Duration;

use crate::error::LayerError;
use crate::layer::{Layer, LayerConfig};
use crate::message::Message;
use crate::name::ChannelName;
use crate::subscription::Subscription;
use crate::value::{Map, Value};

/// How long a case waits for a message that should arrive.
const ARRIVES: Duration = Duration::from_secs(5);
/// How long a case waits to be sure a message does not arrive.
const ABSENT: Duration = Duration::from_millis(300);

fn ok<T>(r: crate::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e}"),
    }
}

/// A message of type `ty` with one field, `"n": n`.
pub fn msg(ty: &str, n: i64) -> Message {
    ok(
        Message::builder(ty)
            .field("n", n)
            .build()
            .map_err(LayerError::from),
        "building a message",
    )
}

async fn recv(layer: &Layer, ch: &ChannelName, what: &str) -> Message {
    match tokio::time::timeout(ARRIVES, layer.receive(ch)).await {
        Ok(r) => ok(r, what),
        Err(_) => panic!("{what}: no message within {ARRIVES:?}"),
    }
}

async fn nothing(layer: &Layer, ch: &ChannelName, what: &str) {
    if let Ok(r) = tokio::time::timeout(ABSENT, layer.receive(ch)).await {
        panic!("{what}: expected nothing, received {r:?}");
    }
}

async fn channel(layer: &Layer) -> ChannelName {
    ok(layer.new_channel().await, "new_channel")
}

/// A message sent to a channel is received, equal to what was sent, and messages from one
/// sender arrive in order.
pub async fn send_then_receive<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let ch = channel(&layer).await;
    for i in 0..10 {
        ok(layer.send(&ch, msg("test.message", i)).await, "send");
    }
    for i in 0..10 {
        let m = recv(&layer, &ch, "receive").await;
        assert_eq!(
            m,
            msg("test.message", i),
            "messages must arrive in send order"
        );
    }
    nothing(&layer, &ch, "after draining").await;
}

/// A receive that starts before the send completes when the message arrives.
pub async fn receive_waits_for_send<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let ch = channel(&layer).await;
    let waiter = {
        let (layer, ch) = (layer.clone(), ch.clone());
        tokio::spawn(async move { layer.receive(&ch).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    ok(layer.send(&ch, msg("late.message", 1)).await, "send");
    match tokio::time::timeout(ARRIVES, waiter).await {
        Ok(Ok(r)) => assert_eq!(ok(r, "receive"), msg("late.message", 1)),
        other => panic!("a waiting receive did not get the message: {other:?}"),
    }
}

/// Dropping a pending receive loses nothing: the next receive gets the message.
pub async fn receive_is_cancel_safe<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let ch = channel(&layer).await;
    for _ in 0..3 {
        let _ = tokio::time::timeout(Duration::from_millis(50), layer.receive(&ch)).await;
    }
    ok(layer.send(&ch, msg("after.cancel", 7)).await, "send");
    assert_eq!(
        recv(&layer, &ch, "receive after cancelled receives").await,
        msg("after.cancel", 7)
    );
}

/// A long-lived receiver gets what `receive` would, in order, and waits like it.
pub async fn receiver_gets_what_receive_gets<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let ch = channel(&layer).await;
    let mut rx = ok(layer.receiver(&ch).await, "receiver");
    ok(layer.group_add("room", &ch).await, "group_add");
    ok(layer.send(&ch, msg("direct", 0)).await, "send");
    ok(
        layer.group_send("room", msg("group", 1)).await,
        "group_send",
    );
    for expected in [msg("direct", 0), msg("group", 1)] {
        match tokio::time::timeout(ARRIVES, rx.recv()).await {
            Ok(r) => assert_eq!(ok(r, "receiver"), expected),
            Err(_) => panic!("the receiver got nothing within {ARRIVES:?}"),
        }
    }
    let waiting = tokio::spawn(async move { rx.recv().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    ok(layer.send(&ch, msg("late", 2)).await, "send");
    match tokio::time::timeout(ARRIVES, waiting).await {
        Ok(Ok(r)) => assert_eq!(ok(r, "receiver"), msg("late", 2)),
        other => panic!("a waiting receiver did not get the message: {other:?}"),
    }
}

/// `new_channel` names are valid, process-local, start with the prefix and never repeat.
pub async fn new_channel_names_are_unique<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let ch = channel(&layer).await;
        assert!(
            ch.as_str().starts_with("specific."),
            "{ch} lacks the prefix"
        );
        assert!(ch.as_str().len() < 100);
        assert!(seen.insert(ch.clone()), "{ch} was handed out twice");
    }
    let custom = ok(
        layer.backend().new_channel("custom.").await,
        "new_channel(custom.)",
    );
    assert!(custom.as_str().starts_with("custom."), "{custom}");
}

/// `send` to a full channel fails with `ChannelFull` and queues nothing; receiving makes room.
pub async fn send_to_full_channel_fails<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default().capacity(3)).await else {
        return;
    };
    let ch = channel(&layer).await;
    for i in 0..3 {
        ok(layer.send(&ch, msg("fill", i)).await, "send under capacity");
    }
    match layer.send(&ch, msg("fill", 3)).await {
        Err(LayerError::ChannelFull { capacity, .. }) => assert_eq!(capacity, 3),
        other => panic!("send to a full channel must fail with ChannelFull, got {other:?}"),
    }
    assert_eq!(recv(&layer, &ch, "receive").await, msg("fill", 0));
    ok(
        layer.send(&ch, msg("fill", 4)).await,
        "send after making room",
    );
    for i in [1, 2, 4] {
        assert_eq!(
            recv(&layer, &ch, "receive").await,
            msg("fill", i),
            "the refused message must not be queued"
        );
    }
}

/// `channel_capacity` patterns override the default capacity, first match first.
pub async fn channel_capacity_patterns<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let cfg = LayerConfig::default()
        .capacity(50)
        .channel_capacity("small.*", 2)
        .and_then(|c| c.channel_capacity("small.*", 40));
    let Some((layer, _)) = make(ok(cfg, "channel_capacity")).await else {
        return;
    };
    let small = ok(
        layer.backend().new_channel("small.").await,
        "new_channel(small.)",
    );
    for i in 0..2 {
        ok(layer.send(&small, msg("x", i)).await, "send");
    }
    assert!(
        matches!(
            layer.send(&small, msg("x", 2)).await,
            Err(LayerError::ChannelFull { capacity: 2, .. })
        ),
        "the first matching pattern sets the capacity"
    );
    let other = channel(&layer).await;
    for i in 0..10 {
        ok(
            layer.send(&other, msg("x", i)).await,
            "send to a channel with the default capacity",
        );
    }
}

/// `group_send` reaches every member and nobody else; a channel in two groups gets both.
pub async fn group_send_reaches_members<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let (a, b, c) = (
        channel(&layer).await,
        channel(&layer).await,
        channel(&layer).await,
    );
    ok(layer.group_add("room", &a).await, "group_add");
    ok(layer.group_add("room", &b).await, "group_add");
    ok(layer.group_add("other", &b).await, "group_add");
    ok(
        layer.group_send("room", msg("room.message", 1)).await,
        "group_send",
    );
    ok(
        layer.group_send("other", msg("other.message", 2)).await,
        "group_send",
    );
    assert_eq!(recv(&layer, &a, "member a").await, msg("room.message", 1));
    assert_eq!(recv(&layer, &b, "member b").await, msg("room.message", 1));
    assert_eq!(
        recv(&layer, &b, "member b of other").await,
        msg("other.message", 2)
    );
    nothing(&layer, &c, "non-member").await;
    nothing(&layer, &a, "member a after one message").await;
    let mut members = ok(layer.group_channels("room").await, "group_channels");
    members.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(members, expected);
    ok(
        layer.group_send("nobody-here", msg("void", 0)).await,
        "group_send to an empty group",
    );
}

/// Groups and channels are shared by every instance (process) on the same backend.
pub async fn instances_share_channels_and_groups<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((one, two)) = make(LayerConfig::default()).await else {
        return;
    };
    let (a, b) = (channel(&one).await, channel(&two).await);
    ok(
        one.group_add("shared", &a).await,
        "group_add on instance one",
    );
    ok(
        two.group_add("shared", &b).await,
        "group_add on instance two",
    );
    ok(
        one.group_send("shared", msg("fan.out", 1)).await,
        "group_send from instance one",
    );
    assert_eq!(
        recv(&one, &a, "member on instance one").await,
        msg("fan.out", 1)
    );
    assert_eq!(
        recv(&two, &b, "member on instance two").await,
        msg("fan.out", 1)
    );
    ok(
        two.send(&a, msg("direct", 2)).await,
        "send across instances",
    );
    assert_eq!(
        recv(&one, &a, "direct across instances").await,
        msg("direct", 2)
    );
    ok(two.group_discard("shared", &b).await, "group_discard");
    ok(
        one.group_send("shared", msg("fan.out", 3)).await,
        "group_send",
    );
    assert_eq!(recv(&one, &a, "remaining member").await, msg("fan.out", 3));
    nothing(&two, &b, "discarded member on instance two").await;
}

/// After `group_discard` a channel gets no more group messages; discarding a non-member is fine.
pub async fn group_discard_stops_delivery<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let (a, b) = (channel(&layer).await, channel(&layer).await);
    ok(layer.group_add("room", &a).await, "group_add");
    ok(layer.group_add("room", &b).await, "group_add");
    ok(layer.group_discard("room", &a).await, "group_discard");
    ok(layer.group_discard("room", &a).await, "group_discard twice");
    ok(
        layer.group_discard("never-joined", &a).await,
        "group_discard of a non-member",
    );
    ok(layer.group_send("room", msg("m", 1)).await, "group_send");
    assert_eq!(recv(&layer, &b, "remaining member").await, msg("m", 1));
    nothing(&layer, &a, "discarded member").await;
    assert_eq!(
        ok(layer.group_channels("room").await, "group_channels"),
        vec![b]
    );
}

/// `group_send` skips a full member without failing; the others get the message.
pub async fn group_send_skips_full_member<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(LayerConfig::default().capacity(2)).await else {
        return;
    };
    let (full, free) = (channel(&peer).await, channel(&layer).await);
    ok(
        peer.group_add("room", &full).await,
        "group_add by the owner",
    );
    ok(layer.group_add("room", &free).await, "group_add");
    ok(layer.send(&full, msg("direct", 0)).await, "send");
    ok(layer.send(&full, msg("direct", 1)).await, "send");
    ok(
        layer.group_send("room", msg("group", 2)).await,
        "group_send with a full member must not fail",
    );
    assert_eq!(recv(&layer, &free, "free member").await, msg("group", 2));
    // The skipped delivery is counted, by the sender or (where delivery is asynchronous, as with
    // pub/sub) by the member's process once the message reaches it. Waiting for the count also
    // makes sure the message has arrived before the full member is drained.
    let counted = async {
        while layer.stats().group_full_drops == 0 && peer.stats().group_full_drops == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(ARRIVES, counted).await.is_err() {
        panic!(
            "a group delivery skipped for a full member must be counted in stats().group_full_drops"
        );
    }
    assert_eq!(recv(&peer, &full, "full member").await, msg("direct", 0));
    assert_eq!(recv(&peer, &full, "full member").await, msg("direct", 1));
    nothing(&peer, &full, "the full member skipped the group message").await;
}

/// A message not received within `expiry` is dropped, and its channel leaves its groups.
pub async fn messages_expire_and_channel_leaves_groups<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(LayerConfig::default().expiry(Duration::from_secs(1))).await
    else {
        return;
    };
    let (stale, live) = (channel(&peer).await, channel(&layer).await);
    ok(
        peer.group_add("room", &stale).await,
        "group_add by the owner",
    );
    ok(layer.send(&stale, msg("old", 0)).await, "send");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ok(layer.group_add("room", &live).await, "group_add");
    ok(layer.send(&live, msg("fresh", 1)).await, "send");
    ok(
        layer.group_send("room", msg("group", 2)).await,
        "group_send",
    );
    assert_eq!(recv(&layer, &live, "live").await, msg("fresh", 1));
    assert_eq!(recv(&layer, &live, "live").await, msg("group", 2));
    nothing(&peer, &stale, "an expired message must not be received").await;
    let members = ok(layer.group_channels("room").await, "group_channels");
    assert_eq!(
        members,
        vec![live],
        "a channel whose message expired leaves its groups"
    );
}

/// Group membership expires `group_expiry` after `group_add`; adding again refreshes it.
pub async fn group_membership_expires<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default().group_expiry(Duration::from_secs(2))).await
    else {
        return;
    };
    let (old, refreshed) = (channel(&layer).await, channel(&layer).await);
    ok(layer.group_add("room", &old).await, "group_add");
    ok(layer.group_add("room", &refreshed).await, "group_add");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ok(
        layer.group_add("room", &refreshed).await,
        "group_add refresh",
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ok(layer.group_send("room", msg("late", 1)).await, "group_send");
    assert_eq!(
        ok(layer.group_channels("room").await, "group_channels"),
        vec![refreshed.clone()]
    );
    assert_eq!(
        recv(&layer, &refreshed, "refreshed member").await,
        msg("late", 1)
    );
    nothing(&layer, &old, "an expired membership receives nothing").await;
}

/// `flush` deletes queued messages and groups.
pub async fn flush_empties_everything<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let ch = channel(&layer).await;
    ok(layer.group_add("room", &ch).await, "group_add");
    ok(layer.send(&ch, msg("m", 0)).await, "send");
    ok(layer.flush().await, "flush");
    nothing(&layer, &ch, "after flush").await;
    assert!(ok(layer.group_channels("room").await, "group_channels").is_empty());
    ok(layer.group_send("room", msg("m", 1)).await, "group_send");
    nothing(&layer, &ch, "flushed groups have no members").await;
    ok(layer.send(&ch, msg("m", 2)).await, "send after flush");
    assert_eq!(recv(&layer, &ch, "receive after flush").await, msg("m", 2));
}

/// `discard_channel` drops pending messages and takes the channel out of its groups.
pub async fn discard_channel_forgets_it<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let (gone, stays) = (channel(&layer).await, channel(&layer).await);
    ok(layer.group_add("room", &gone).await, "group_add");
    ok(layer.group_add("room", &stays).await, "group_add");
    ok(layer.send(&gone, msg("pending", 0)).await, "send");
    ok(layer.discard_channel(&gone).await, "discard_channel");
    assert_eq!(
        ok(layer.group_channels("room").await, "group_channels"),
        vec![stays]
    );
    nothing(
        &layer,
        &gone,
        "a discarded channel's pending messages are dropped",
    )
    .await;
}

/// Many concurrent senders to one channel: nothing lost, each sender's order kept.
pub async fn concurrent_senders_lose_nothing<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    const SENDERS: i64 = 8;
    const EACH: i64 = 150;
    let Some((layer, _)) = make(LayerConfig::default().capacity(10_000)).await else {
        return;
    };
    let ch = channel(&layer).await;
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let (layer, ch) = (layer.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                layer.send(&ch, msg(&format!("sender.s{s}"), i)).await?;
            }
            Ok::<_, LayerError>(())
        }));
    }
    let mut last = vec![-1i64; SENDERS as usize];
    for _ in 0..SENDERS * EACH {
        let m = recv(&layer, &ch, "concurrent receive").await;
        let s: usize = m.message_type()[8..].parse().unwrap_or(usize::MAX);
        let n = m.get("n").and_then(Value::as_i64).unwrap_or(-1);
        assert!(s < last.len(), "unexpected sender in {m:?}");
        assert_eq!(n, last[s] + 1, "sender {s}'s messages out of order");
        last[s] = n;
    }
    for t in tasks {
        match t.await {
            Ok(r) => ok(r, "sender task"),
            Err(e) => panic!("sender task panicked: {e}"),
        }
    }
    nothing(&layer, &ch, "after all senders").await;
}

/// A message with every kind of value Channels carries: text, bytes, integers (negative and
/// beyond `i64`), floats, booleans, null, lists and maps.
pub fn all_value_types() -> Message {
    let mut nested = Map::default();
    nested.insert(
        "k".into(),
        Value::List(vec![Value::Int(1), Value::String("two".into())]),
    );
    let mut m = Map::default();
    m.insert("type".into(), Value::String("all.types".into()));
    m.insert("text".into(), Value::String("héllo ✓".into()));
    m.insert("bytes".into(), Value::Bytes(vec![0, 1, 254, 255]));
    m.insert("int".into(), Value::Int(-42));
    m.insert("big".into(), Value::UInt(u64::MAX));
    m.insert("float".into(), Value::Float(1.5));
    m.insert("yes".into(), Value::Bool(true));
    m.insert("none".into(), Value::Null);
    m.insert(
        "list".into(),
        Value::List(vec![Value::Float(-0.25), Value::Null]),
    );
    m.insert("map".into(), Value::Map(nested));
    ok(Message::from_map(m).map_err(LayerError::from), "building")
}

/// Every kind of value Channels carries survives the layer unchanged.
pub async fn all_value_types_survive<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let ch = channel(&layer).await;
    let sent = all_value_types();
    ok(layer.send(&ch, sent.clone()).await, "send");
    ok(layer.group_add("typed", &ch).await, "group_add");
    ok(layer.group_send("typed", sent.clone()).await, "group_send");
    assert_eq!(recv(&layer, &ch, "send").await, sent);
    assert_eq!(recv(&layer, &ch, "group_send").await, sent);
}

/// Bad names are refused at the edge with an error naming the rule.
pub async fn bad_names_are_refused<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let ch = channel(&layer).await;
    match layer.group_add("bad group", &ch).await {
        Err(LayerError::Name(e)) => assert!(e.to_string().contains("bad group"), "{e}"),
        other => panic!("a bad group name must be refused, got {other:?}"),
    }
    assert!(matches!(
        layer.send("no spaces!", msg("m", 0)).await,
        Err(LayerError::Name(_))
    ));
    assert!(matches!(
        layer.group_send("x".repeat(100), msg("m", 0)).await,
        Err(LayerError::Name(_))
    ));
}

/// A subscription receives what is sent to its channel and its groups, and leaves them when
/// closed.
pub async fn subscription_receives_and_leaves_on_close<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(LayerConfig::default()).await else {
        return;
    };
    let mut sub = ok(layer.subscribe().await, "subscribe");
    ok(sub.group_add("room").await, "group_add");
    ok(sub.group_add("room").await, "group_add twice");
    assert_eq!(sub.groups().len(), 1, "a group joined twice is one group");
    ok(peer.group_send("room", msg("group", 1)).await, "group_send");
    ok(
        peer.send(sub.channel_name(), msg("direct", 2)).await,
        "send",
    );
    for expected in [msg("group", 1), msg("direct", 2)] {
        match tokio::time::timeout(ARRIVES, sub.recv()).await {
            Ok(r) => assert_eq!(ok(r, "subscription recv"), expected),
            Err(_) => panic!("the subscription got nothing within {ARRIVES:?}"),
        }
    }
    ok(sub.group_discard("room").await, "group_discard");
    assert!(ok(layer.group_channels("room").await, "group_channels").is_empty());
    ok(sub.group_add("other").await, "group_add");
    let channel = sub.channel_name().clone();
    sub.close().await;
    assert!(
        ok(layer.group_channels("other").await, "group_channels").is_empty(),
        "a closed subscription leaves its groups"
    );
    assert!(
        matches!(sub.recv().await, Err(LayerError::Closed)),
        "a closed subscription receives nothing more"
    );
    ok(
        peer.send(&channel, msg("late", 3)).await,
        "send to a closed subscription's channel",
    );
}

/// A subscription dropped without `close` (a task that panicked, a stream the client left)
/// leaves its groups by itself.
pub async fn dropped_subscription_leaves_its_groups<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default()).await else {
        return;
    };
    let mut sub = ok(layer.subscribe().await, "subscribe");
    ok(sub.group_add("room").await, "group_add");
    ok(sub.group_add("lobby").await, "group_add");
    drop(sub);
    let left = async {
        loop {
            let room = ok(layer.group_channels("room").await, "group_channels");
            let lobby = ok(layer.group_channels("lobby").await, "group_channels");
            if room.is_empty() && lobby.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(ARRIVES, left).await.is_err() {
        panic!("a dropped subscription must leave its groups");
    }
}

/// A subscription that is received from joins its groups again every `group_expiry / 2`, so
/// it keeps them for longer than `group_expiry`.
pub async fn subscription_refreshes_its_groups<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(LayerConfig::default().group_expiry(Duration::from_secs(2))).await
    else {
        return;
    };
    let mut sub = ok(layer.subscribe().await, "subscribe");
    ok(sub.group_add("room").await, "group_add");
    let idle = tokio::time::timeout(Duration::from_millis(3_500), sub.recv()).await;
    assert!(idle.is_err(), "nothing was sent, got {idle:?}");
    assert_eq!(
        ok(layer.group_channels("room").await, "group_channels"),
        vec![sub.channel_name().clone()],
        "the membership outlives group_expiry"
    );
    ok(layer.group_send("room", msg("late", 1)).await, "group_send");
    match tokio::time::timeout(ARRIVES, sub.recv()).await {
        Ok(r) => assert_eq!(ok(r, "subscription recv"), msg("late", 1)),
        Err(_) => panic!("a refreshed member got nothing within {ARRIVES:?}"),
    }
    sub.close().await;
}

/// Back-pressure waits for the local members a fan-out left lagging, but not for the sender's
/// own queue (its consumer cannot drain it while it sends): a subscription sending to its own
/// group never waits for itself, an anonymous sender waits until the subscription drains.
pub async fn group_send_waits_for_lagging_members_but_not_the_sender<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let config = LayerConfig::default()
        .capacity(10)
        .group_backpressure(Duration::from_secs(30));
    let Some((layer, _peer)) = make(config).await else {
        return;
    };
    let mut sub = ok(layer.subscribe().await, "subscribe");
    ok(sub.group_add("room").await, "group_add");
    // A second member, drained at once: once it has a message, so has `sub`.
    let probe = channel(&layer).await;
    ok(layer.group_add("room", &probe).await, "group_add");
    let mut probe_rx = ok(layer.receiver(&probe).await, "receiver");
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0i64);
    let drain = tokio::spawn(async move {
        while let Ok(m) = probe_rx.recv().await {
            let n = m.get("n").and_then(|v| v.as_i64()).unwrap_or(-1);
            let _ = seen_tx.send(n);
        }
    });
    let own = async {
        for i in 0..7 {
            ok(
                sub.group_send("room", msg("own", i)).await,
                "group_send_from",
            );
        }
    };
    if tokio::time::timeout(ARRIVES, own).await.is_err() {
        panic!("a subscription's group sends waited for its own lagging queue");
    }
    if tokio::time::timeout(ARRIVES, seen.wait_for(|n| *n == 6))
        .await
        .is_err()
    {
        panic!("the probe member did not get the group messages within {ARRIVES:?}");
    }
    // `sub` now holds 7 of 10: an anonymous sender waits for it.
    let mut anonymous = std::pin::pin!(layer.group_send("room", msg("anonymous", 7)));
    if let Ok(r) = tokio::time::timeout(ABSENT, &mut anonymous).await {
        panic!("an anonymous group_send did not wait for a lagging member: {r:?}");
    }
    let mut got = Vec::new();
    let received = async {
        loop {
            tokio::select! {
                r = &mut anonymous => {
                    ok(r, "group_send");
                    break;
                }
                m = sub.recv() => got.push(ok(m, "subscription recv")),
            }
        }
        while got.len() < 8 {
            got.push(ok(sub.recv().await, "subscription recv"));
        }
    };
    if tokio::time::timeout(ARRIVES, received).await.is_err() {
        panic!("the waiting group_send did not end once the member drained (got {got:?})");
    }
    let mut expected: Vec<Message> = (0..7).map(|i| msg("own", i)).collect();
    expected.push(msg("anonymous", 7));
    assert_eq!(got, expected);
    sub.close().await;
    ok(layer.discard_channel(&probe).await, "discard_channel");
    drain.abort();
}

/// Back-pressure, measured: `members` slow members of `layer`'s group `"room"` (each takes
/// half a millisecond per message; they must be this layer instance's own channels, as its
/// consumers' are) and a sender that group-sends `messages` as fast as the layer lets it.
/// Returns how many deliveries were dropped, after checking that every message was either
/// delivered or counted as dropped.
pub async fn fast_sender_slow_members(layer: &Layer, members: usize, messages: i64) -> u64 {
    let drops_before = layer.stats().group_full_drops;
    let mut tasks = Vec::new();
    for _ in 0..members {
        let ch = channel(layer).await;
        ok(layer.group_add("room", &ch).await, "group_add");
        let mut rx = ok(layer.receiver(&ch).await, "receiver");
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            {
                got += 1;
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            got
        }));
    }
    for i in 0..messages {
        ok(
            layer.group_send("room", msg("burst", i)).await,
            "group_send",
        );
    }
    let mut received = 0;
    for t in tasks {
        match t.await {
            Ok(n) => received += n,
            Err(e) => panic!("member task: {e}"),
        }
    }
    let drops = layer.stats().group_full_drops - drops_before;
    assert_eq!(
        received + drops,
        members as u64 * messages as u64,
        "every delivery is either received or counted as dropped"
    );
    drops
}

// -- group history and resume ---------------------------------------------------------------
//
// For layers that keep group history (`LayerConfig::group_history`); run them with
// `history_conformance_tests!`. Groups `hist_*` keep their last 5 messages, `long_*` their
// last 1,000, for a minute.

/// The configuration the history cases give `make`.
pub fn history_config() -> LayerConfig {
    let cfg = LayerConfig::default()
        .group_history("hist_*", 5, Duration::from_secs(60))
        .and_then(|c| c.group_history("long_*", 1_000, Duration::from_secs(60)));
    ok(cfg, "group_history")
}

async fn next(sub: &mut Subscription, what: &str) -> Message {
    match tokio::time::timeout(ARRIVES, sub.recv()).await {
        Ok(r) => ok(r, what),
        Err(_) => panic!("{what}: no message within {ARRIVES:?}"),
    }
}

async fn none_left(sub: &mut Subscription, what: &str) {
    if let Ok(r) = tokio::time::timeout(ABSENT, sub.recv()).await {
        panic!("{what}: expected nothing, received {r:?}");
    }
}

/// A new subscription that joined `group` since `since`, and what the join said.
async fn joined(
    layer: &Layer,
    group: &str,
    since: Option<&crate::Position>,
) -> (Subscription, crate::Resumed) {
    let mut sub = ok(layer.subscribe().await, "subscribe");
    let r = ok(sub.group_add_since(group, since).await, "group_add_since");
    (sub, r)
}

fn n_of(m: &Message) -> i64 {
    m.get("n").and_then(Value::as_i64).unwrap_or(-1)
}

fn offset_of(m: &Message, what: &str) -> u64 {
    match m.position() {
        Some(p) => p.offset(),
        None => panic!("{what}: a message of a group with history has no position: {m:?}"),
    }
}

/// A group with history numbers its messages 1, 2, 3… in one epoch, whichever instance sends
/// them; a group without history gives no position.
pub async fn history_numbers_group_messages<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(history_config()).await else {
        return;
    };
    let (mut sub, start) = joined(&layer, "hist_n", None).await;
    assert!(start.recovered && start.replayed == 0, "{start:?}");
    assert_eq!(start.position.offset(), 0, "a new history starts at 0");
    ok(sub.group_add("plain").await, "group_add");
    for i in 1..=3 {
        let from = if i % 2 == 0 { &peer } else { &layer };
        ok(from.group_send("hist_n", msg("h", i)).await, "group_send");
    }
    ok(peer.group_send("plain", msg("p", 9)).await, "group_send");
    let mut epochs = Vec::new();
    for i in 1..=3u64 {
        let m = next(&mut sub, "history message").await;
        assert_eq!(offset_of(&m, "history"), i, "offsets grow by one: {m:?}");
        epochs.extend(m.position().map(|p| p.epoch().to_owned()));
    }
    epochs.dedup();
    assert_eq!(epochs, [start.position.epoch()], "one epoch");
    let plain = next(&mut sub, "plain message").await;
    assert!(
        plain.position().is_none(),
        "no history, no position: {plain:?}"
    );
    sub.close().await;
}

/// Joining "since" a position replays what came after it, then goes live: nothing missing,
/// nothing twice.
pub async fn resume_replays_then_goes_live<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(history_config()).await else {
        return;
    };
    let (mut first, _) = joined(&layer, "hist_r", None).await;
    ok(peer.group_send("hist_r", msg("m", 1)).await, "group_send");
    let seen = next(&mut first, "first message").await;
    let Some(seen) = seen.position().cloned() else {
        panic!("no position on {seen:?}");
    };
    first.close().await;
    for i in 2..=4 {
        ok(
            peer.group_send("hist_r", msg("m", i)).await,
            "group_send while away",
        );
    }
    let (mut back, resumed) = joined(&layer, "hist_r", Some(&seen)).await;
    assert!(resumed.recovered, "{resumed:?}");
    assert_eq!(resumed.replayed, 3, "{resumed:?}");
    assert_eq!(resumed.position.offset(), 4);
    ok(
        peer.group_send("hist_r", msg("m", 5)).await,
        "group_send live",
    );
    for i in 2..=5 {
        let m = next(&mut back, "replay, then live").await;
        assert_eq!(n_of(&m), i, "in order: {m:?}");
        assert_eq!(offset_of(&m, "resume"), i as u64);
    }
    none_left(&mut back, "after the replay and the live message").await;
    back.close().await;
}

/// A position the history cannot continue from — older than it holds, from another epoch,
/// ahead of it — is "not recovered": nothing is replayed, and the subscription is in the group
/// anyway.
pub async fn resume_from_a_lost_position_is_not_recovered<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(history_config()).await else {
        return;
    };
    let (mut watch, _) = joined(&layer, "hist_old", None).await;
    let mut positions = Vec::new();
    for i in 1..=8 {
        ok(peer.group_send("hist_old", msg("m", i)).await, "group_send");
        positions.extend(next(&mut watch, "watch").await.position().cloned());
    }
    watch.close().await;
    let (Some(at1), Some(at3)) = (positions.first(), positions.get(2)) else {
        panic!("positions: {positions:?}");
    };
    let epoch = at1.epoch().to_owned();
    // History holds 4..=8: from 3 is whole, from 1 is not.
    let (mut whole, r) = joined(&layer, "hist_old", Some(at3)).await;
    assert!(
        r.recovered && r.replayed == 5,
        "after 3, 4..=8 are held: {r:?}"
    );
    whole.close().await;
    let lost = [
        at1.clone(),
        ok(crate::Position::new("another-epoch", 3), "position"),
        ok(crate::Position::new(&epoch, 99), "position"),
    ];
    for (i, since) in (0..).zip(lost) {
        let (mut sub, r) = joined(&layer, "hist_old", Some(&since)).await;
        assert!(!r.recovered, "since {since}: {r:?}");
        assert_eq!(
            r.replayed, 0,
            "since {since}: nothing is replayed when not recovered"
        );
        assert_eq!(r.position.offset(), 8 + i, "the group's position now");
        ok(
            peer.group_send("hist_old", msg("live", 0)).await,
            "group_send",
        );
        let live = next(&mut sub, "a live message after a failed resume").await;
        assert_eq!(n_of(&live), 0, "{live:?}");
        sub.close().await;
    }
}

/// `flush` loses the history: the group's next message starts a new epoch at offset 1, and a
/// position from before is not recovered.
pub async fn flush_starts_a_new_epoch<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(history_config()).await else {
        return;
    };
    let (mut sub, _) = joined(&layer, "hist_f", None).await;
    ok(peer.group_send("hist_f", msg("m", 1)).await, "group_send");
    let before = next(&mut sub, "before the flush").await;
    let Some(before) = before.position().cloned() else {
        panic!("no position on {before:?}");
    };
    sub.close().await;
    ok(layer.flush().await, "flush");
    let (mut after, r) = joined(&layer, "hist_f", Some(&before)).await;
    assert!(!r.recovered, "a position from before a flush: {r:?}");
    assert_ne!(
        r.position.epoch(),
        before.epoch(),
        "a flush starts a new epoch"
    );
    ok(peer.group_send("hist_f", msg("m", 2)).await, "group_send");
    let m = next(&mut after, "after the flush").await;
    assert_eq!(offset_of(&m, "after the flush"), 1);
    after.close().await;
}

/// Joining "since" a group without history fails with `Unsupported` and does not join.
pub async fn resume_without_history_is_unsupported<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(history_config()).await else {
        return;
    };
    let mut sub = ok(layer.subscribe().await, "subscribe");
    match sub.group_add_since("plain", None).await {
        Err(LayerError::Unsupported(e)) => assert!(e.contains("history"), "{e}"),
        other => panic!("group_add_since on a group without history: {other:?}"),
    }
    assert!(sub.groups().is_empty(), "{:?}", sub.groups());
    assert!(ok(layer.group_channels("plain").await, "group_channels").is_empty());
    sub.close().await;
}

/// A resume while a sender keeps sending: the subscriber gets every offset after its position
/// exactly once, in order, across the switch from history to live.
pub async fn resume_under_traffic_loses_and_repeats_nothing<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    const TOTAL: i64 = 300;
    let Some((layer, peer)) = make(history_config()).await else {
        return;
    };
    let (mut watch, _) = joined(&layer, "long_t", None).await;
    let sender = tokio::spawn(async move {
        for i in 1..=TOTAL {
            ok(peer.group_send("long_t", msg("m", i)).await, "group_send");
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut at = None;
    while at.is_none() {
        let m = next(&mut watch, "watch").await;
        if offset_of(&m, "watch") == 20 {
            at = m.position().cloned();
        }
    }
    watch.close().await;
    let (mut sub, r) = joined(&layer, "long_t", at.as_ref()).await;
    assert!(r.recovered, "{r:?}");
    let mut offsets = Vec::new();
    while offsets.last() != Some(&(TOTAL as u64)) {
        offsets.push(offset_of(&next(&mut sub, "resumed").await, "resumed"));
    }
    let expected: Vec<u64> = (21..=TOTAL as u64).collect();
    assert_eq!(offsets, expected, "every offset after 20, once, in order");
    none_left(&mut sub, "after the last").await;
    if let Err(e) = sender.await {
        panic!("the sender failed: {e}");
    }
    sub.close().await;
}

/// Expands to one `#[tokio::test]` per conformance case, for the layer built by `$make`
/// (an `async fn(LayerConfig) -> Option<(Layer, Layer)>` returning two handles on a fresh, empty
/// backend on every call, or `None` to skip).
#[macro_export]
macro_rules! layer_conformance_tests {
    ($make:path) => {
        $crate::layer_conformance_tests!(@cases $make;
            send_then_receive, receive_waits_for_send, receive_is_cancel_safe, receiver_gets_what_receive_gets,
            new_channel_names_are_unique, send_to_full_channel_fails, channel_capacity_patterns,
            group_send_reaches_members, instances_share_channels_and_groups, group_discard_stops_delivery, group_send_skips_full_member,
            messages_expire_and_channel_leaves_groups, group_membership_expires,
            flush_empties_everything, discard_channel_forgets_it, concurrent_senders_lose_nothing,
            all_value_types_survive, bad_names_are_refused,
            subscription_receives_and_leaves_on_close, dropped_subscription_leaves_its_groups,
            subscription_refreshes_its_groups, group_send_waits_for_lagging_members_but_not_the_sender);
    };
    (@cases $make:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::layer::conformance::$case($make).await
            }
        )*
    };
}

/// A subscriber that fell behind (its channel full, messages dropped) and is told so recovers
/// by itself from history: `recover` replays what it missed, in order, once, then live. For
/// layers whose channels overflow in the process (the in-memory and pub/sub layers), which
/// tell the receiver: not in [`history_conformance_tests!`](crate::history_conformance_tests)
/// — `RedisLayer`'s queues overflow inside Redis, in channels_redis's script, and the receiver
/// is not told.
pub async fn history_recovers_a_subscriber_that_fell_behind<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let cfg = history_config()
        .capacity(2)
        .group_backpressure(Duration::ZERO);
    let Some((layer, peer)) = make(cfg).await else {
        return;
    };
    let (mut sub, _) = joined(&layer, "long_behind", None).await;
    for i in 1..=6 {
        ok(
            peer.group_send("long_behind", msg("hist.n", i)).await,
            "group_send",
        );
    }
    // Its channel took 2 of the 6 (delivered to this process in order).
    let mut got = vec![n_of(&next(&mut sub, "first").await)];
    tokio::time::sleep(Duration::from_millis(200)).await;
    got.push(n_of(&next(&mut sub, "second").await));
    assert_eq!(got, [1, 2]);
    // How many of 3..=6 were dropped depends on when the first receive ran (a pub/sub layer
    // delivers while it runs); that some were, and that it is told, does not.
    let missed = sub.take_missed();
    assert!(missed.dropped > 0, "told of the gap: {missed:?}");
    assert!(
        ok(sub.recover().await, "recover"),
        "the history holds the gap"
    );
    for i in 3..=6 {
        assert_eq!(n_of(&next(&mut sub, "recovered").await), i);
    }
    ok(
        peer.group_send("long_behind", msg("hist.n", 7)).await,
        "group_send",
    );
    assert_eq!(n_of(&next(&mut sub, "live").await), 7);
    none_left(&mut sub, "each once").await;
    assert!(sub.take_missed().is_empty());
}

/// A history read without joining, the position a send got, and a cleared history: a send
/// answers its position; `history(None)` gives everything held, `history(since)` what
/// followed; `history_clear` starts a new epoch (offset 1 next, the old position not
/// recovered); a group without history answers `Unsupported`.
pub async fn history_is_read_and_cleared_without_joining<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(history_config()).await else {
        return;
    };
    let mut sent = Vec::new();
    for i in 1..=3 {
        let p = ok(
            peer.group_send_positioned("hist_read", msg("hist.n", i))
                .await,
            "group_send_positioned",
        );
        match p {
            Some(p) => sent.push(p),
            None => panic!("a send to a group with history answered no position"),
        }
    }
    let offsets: Vec<u64> = sent.iter().map(crate::Position::offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    let all = ok(layer.history("hist_read", None).await, "history");
    assert!(all.recovered);
    assert_eq!(all.messages.iter().map(n_of).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(all.position, sent[2]);
    let after1 = ok(
        layer.history("hist_read", Some(&sent[0])).await,
        "history since",
    );
    assert_eq!(after1.messages.iter().map(n_of).collect::<Vec<_>>(), [2, 3]);
    assert!(
        ok(layer.group_channels("hist_read").await, "group_channels").is_empty(),
        "reading history joins nothing"
    );
    assert_eq!(
        ok(
            peer.group_send_positioned("plain", msg("plain", 1)).await,
            "send"
        ),
        None,
        "no history, no position"
    );
    ok(layer.history_clear("hist_read").await, "history_clear");
    let cleared = ok(peer.history("hist_read", None).await, "history");
    assert!(cleared.messages.is_empty(), "{cleared:?}");
    assert_eq!(cleared.position.offset(), 0);
    assert_ne!(cleared.position.epoch(), sent[0].epoch(), "a new epoch");
    let next = ok(
        layer
            .group_send_positioned("hist_read", msg("hist.n", 4))
            .await,
        "send",
    );
    assert_eq!(next.as_ref().map(crate::Position::offset), Some(1));
    let old = ok(layer.history("hist_read", Some(&sent[2])).await, "history");
    assert!(!old.recovered, "a position from before the clear: {old:?}");
    for r in [
        layer.history("plain", None).await.map(drop),
        layer.history_clear("plain").await,
    ] {
        assert!(matches!(r, Err(LayerError::Unsupported(_))), "{r:?}");
    }
}

/// Presence events describe state, not history: in a group with history they reach members
/// live, without a position, and a resume does not replay them.
pub async fn history_skips_presence_events<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let cfg = ok(
        history_config().presence_events("hist_*"),
        "presence_events",
    );
    let Some((layer, peer)) = make(cfg).await else {
        return;
    };
    let (mut watch, start) = joined(&layer, "hist_pres", None).await;
    let mut ann = ok(peer.subscribe().await, "subscribe");
    ok(
        ann.presence_join("hist_pres", crate::PresenceInfo::new("tab-a"))
            .await,
        "presence_join",
    );
    let join = next(&mut watch, "presence.join").await;
    assert_eq!(join.message_type(), "presence.join");
    assert!(join.position().is_none(), "{join:?}");
    ok(
        peer.group_send("hist_pres", msg("hist.after", 1)).await,
        "group_send",
    );
    let after = next(&mut watch, "after").await;
    assert_eq!(offset_of(&after, "after"), 1, "the event took no offset");
    let (_again, r) = joined(&layer, "hist_pres", Some(&start.position)).await;
    assert_eq!(r.replayed, 1, "only the message is replayed: {r:?}");
    ann.close().await;
}

// -- presence ------------------------------------------------------------------------------

// For layers that keep presence; run them with `presence_conformance_tests!`. Groups `ev_*`
// send presence events, at most 3 a second per instance; entries live 1 s without a heartbeat.

/// The configuration the presence cases give `make`.
pub fn presence_config() -> LayerConfig {
    let mut cfg = ok(
        LayerConfig::default().presence_events("ev_*"),
        "presence_events",
    )
    .presence_ttl(Duration::from_secs(1));
    cfg.presence_event_rate = 3;
    cfg
}

fn info(client: &str, user: &str) -> crate::PresenceInfo {
    crate::PresenceInfo::new(client).user(user)
}

async fn listed(layer: &Layer, group: &str) -> Vec<crate::PresenceEntry> {
    let mut all = ok(layer.presence(group).await, "presence");
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    all
}

/// Waits up to `ARRIVES` for `group`'s presence count, seen from `layer`, to be `n`.
async fn count_becomes(layer: &Layer, group: &str, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        let c = ok(layer.presence_count(group).await, "presence_count");
        if c == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: presence count {c}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Subscribers joined on either instance are listed by both, with what they said about
/// themselves; counted alike; joining again replaces the entry but keeps when it joined.
pub async fn presence_lists_every_instance<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(presence_config()).await else {
        return;
    };
    let mut a = ok(layer.subscribe().await, "subscribe");
    let mut b = ok(peer.subscribe().await, "subscribe");
    let phone = ok(info("tab-a", "ann").meta("device", "phone"), "meta");
    ok(a.presence_join("room", phone).await, "presence_join");
    ok(
        b.presence_join("room", info("tab-b", "bob")).await,
        "presence_join",
    );
    for l in [&layer, &peer] {
        let all = listed(l, "room").await;
        let who: Vec<(&str, Option<&str>)> = all
            .iter()
            .map(|e| (e.client_id.as_str(), e.user.as_deref()))
            .collect();
        assert_eq!(who, [("tab-a", Some("ann")), ("tab-b", Some("bob"))]);
        assert_eq!(&all[0].channel, a.channel_name());
        assert_eq!(&all[1].channel, b.channel_name());
        assert_eq!(
            all[0].meta.get("device").and_then(Value::as_str),
            Some("phone")
        );
        assert_eq!(ok(l.presence_count("room").await, "presence_count"), 2);
    }
    assert!(
        ok(layer.group_channels("room").await, "group_channels").contains(a.channel_name()),
        "presence_join joins the group"
    );
    let since = listed(&peer, "room").await[0].since_ms;
    let tablet = ok(info("tab-a", "ann").meta("device", "tablet"), "meta");
    ok(a.presence_join("room", tablet).await, "presence_join again");
    let all = listed(&peer, "room").await;
    assert_eq!(all.len(), 2, "one entry per subscriber: {all:?}");
    assert_eq!(
        all[0].meta.get("device").and_then(Value::as_str),
        Some("tablet")
    );
    assert_eq!(all[0].since_ms, since, "a new entry keeps when it joined");
    assert_eq!(ok(layer.presence_count("elsewhere").await, "count"), 0);
    a.close().await;
    b.close().await;
}

/// An entry goes when its subscriber leaves the presence (staying in the group), leaves the
/// group, is closed, or is dropped.
pub async fn presence_ends_with_its_subscriber<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(presence_config()).await else {
        return;
    };
    let mut subs = Vec::new();
    for (i, l) in [&layer, &peer, &layer, &peer].into_iter().enumerate() {
        let mut s = ok(l.subscribe().await, "subscribe");
        ok(
            s.presence_join("room", info(&format!("c{i}"), "u")).await,
            "join",
        );
        subs.push(s);
    }
    count_becomes(&peer, "room", 4, "four joined").await;
    ok(subs[0].presence_leave("room").await, "presence_leave");
    count_becomes(&peer, "room", 3, "after presence_leave").await;
    assert!(
        ok(layer.group_channels("room").await, "group_channels").contains(subs[0].channel_name()),
        "presence_leave stays in the group"
    );
    ok(subs[1].group_discard("room").await, "group_discard");
    count_becomes(&layer, "room", 2, "after group_discard").await;
    subs[2].close().await;
    count_becomes(&peer, "room", 1, "after close").await;
    drop(subs.pop());
    count_becomes(&layer, "room", 0, "after drop").await;
}

/// A process that crashed sends no heartbeat: its entries vanish after `presence_ttl`, while a
/// subscriber that is received from keeps its own alive past it.
pub async fn presence_expires_without_a_heartbeat<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(presence_config()).await else {
        return;
    };
    // The crashed one: an entry written once, as its process did before it died.
    let ghost = channel(&peer).await;
    let entry = crate::PresenceEntry::new(ghost, &info("ghost", "gone"));
    let group = ok(
        crate::GroupName::new("room").map_err(LayerError::from),
        "group name",
    );
    ok(
        peer.backend().presence_add(&group, &entry).await,
        "presence_add",
    );
    let mut alive = ok(layer.subscribe().await, "subscribe");
    ok(
        alive.presence_join("room", info("alive", "here")).await,
        "join",
    );
    count_becomes(&layer, "room", 2, "both").await;
    // Received from for 2.5 ttl: its heartbeat runs.
    let _ = tokio::time::timeout(Duration::from_millis(2_500), alive.recv()).await;
    let all = listed(&peer, "room").await;
    let who: Vec<&str> = all.iter().map(|e| e.client_id.as_str()).collect();
    assert_eq!(
        who,
        ["alive"],
        "the entry without heartbeat expired, the other stayed"
    );
    assert_eq!(ok(peer.presence_count("room").await, "count"), 1);
    alive.close().await;
}

/// A group with presence events gets `presence.join` and `presence.leave` from every
/// instance; a group without them gets none.
pub async fn presence_events_reach_the_group<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, peer)) = make(presence_config()).await else {
        return;
    };
    let mut watch = ok(layer.subscribe().await, "subscribe");
    ok(watch.group_add("ev_room").await, "group_add");
    ok(watch.group_add("quiet").await, "group_add");
    let mut ann = ok(peer.subscribe().await, "subscribe");
    ok(
        ann.presence_join("ev_room", info("tab-a", "ann")).await,
        "join",
    );
    let joined = next(&mut watch, "presence.join").await;
    assert_eq!(joined.message_type(), "presence.join");
    assert_eq!(
        joined.get("client_id").and_then(Value::as_str),
        Some("tab-a")
    );
    assert_eq!(joined.get("user").and_then(Value::as_str), Some("ann"));
    assert_eq!(joined.get("group").and_then(Value::as_str), Some("ev_room"));
    ok(
        ann.presence_join("quiet", info("tab-a", "ann")).await,
        "join quiet",
    );
    ok(ann.presence_leave("ev_room").await, "leave");
    let left = next(&mut watch, "presence.leave").await;
    assert_eq!(left.message_type(), "presence.leave", "{left:?}");
    assert_eq!(left.get("client_id").and_then(Value::as_str), Some("tab-a"));
    none_left(&mut watch, "a group without presence events").await;
    ann.close().await;
    watch.close().await;
}

/// Past `presence_event_rate` events a second from one instance, events are not sent; one
/// `presence.sync` at the end of the second says how many were not.
pub async fn presence_events_are_throttled<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    // Entries that outlive the case: the crowd is not received from (no heartbeat).
    let cfg = presence_config().presence_ttl(Duration::from_secs(60));
    let Some((layer, peer)) = make(cfg).await else {
        return;
    };
    let mut watch = ok(layer.subscribe().await, "subscribe");
    ok(watch.group_add("ev_busy").await, "group_add");
    let started = std::time::Instant::now();
    let mut crowd = Vec::new();
    for i in 0..6 {
        let mut s = ok(peer.subscribe().await, "subscribe");
        ok(
            s.presence_join("ev_busy", info(&format!("c{i}"), "u"))
                .await,
            "join",
        );
        crowd.push(s);
    }
    let joined_within = started.elapsed();
    assert_eq!(
        ok(layer.presence_count("ev_busy").await, "count"),
        6,
        "all are present"
    );
    // Every join is either sent or counted in a presence.sync: none is lost untold.
    let (mut joins, mut missed, mut syncs) = (0, 0, 0);
    while joins + missed < 6 {
        let m = next(&mut watch, "presence event").await;
        match m.message_type() {
            "presence.join" => joins += 1,
            "presence.sync" => {
                syncs += 1;
                missed += m.get("missed_events").and_then(Value::as_i64).unwrap_or(0);
            }
            other => panic!("unexpected {other}: {m:?}"),
        }
    }
    assert_eq!(joins + missed, 6, "{joins} joins, {missed} missed");
    // Six joins within one second from one instance: exactly the rate's worth sent, and one
    // sync for the rest. (Slower joins span two windows; the sum above still holds.)
    if joined_within < Duration::from_millis(900) {
        assert_eq!(
            (joins, missed, syncs),
            (3, 3, 1),
            "joined in {joined_within:?}"
        );
    }
    none_left(&mut watch, "nothing after the sync").await;
    for mut s in crowd {
        s.close().await;
    }
    watch.close().await;
}

/// Presence that says too much is refused, and nothing is listed.
pub async fn presence_refuses_oversized_info<F, Fut>(make: F)
where
    F: Fn(LayerConfig) -> Fut,
    Fut: Future<Output = Option<(Layer, Layer)>>,
{
    let Some((layer, _)) = make(presence_config()).await else {
        return;
    };
    let mut s = ok(layer.subscribe().await, "subscribe");
    let mut big = crate::PresenceInfo::new("tab");
    big.meta
        .insert("blob".into(), Value::from("x".repeat(5_000)));
    match s.presence_join("room", big).await {
        Err(LayerError::Config(e)) => assert!(e.contains("metadata"), "{e}"),
        other => panic!("oversized presence: {other:?}"),
    }
    assert!(
        matches!(
            s.presence_join("room", crate::PresenceInfo::new("")).await,
            Err(LayerError::Config(_))
        ),
        "an empty client id"
    );
    assert_eq!(ok(layer.presence_count("room").await, "count"), 0);
    s.close().await;
}

/// The presence cases of the suite, one `#[tokio::test]` each, for a layer that keeps
/// presence; `make` as for [`layer_conformance_tests!`](crate::layer_conformance_tests).
#[macro_export]
macro_rules! presence_conformance_tests {
    ($make:path) => {
        $crate::layer_conformance_tests!(@cases $make;
            presence_lists_every_instance, presence_ends_with_its_subscriber,
            presence_expires_without_a_heartbeat, presence_events_reach_the_group,
            presence_events_are_throttled, presence_refuses_oversized_info);
    };
}

/// The history cases of the suite (group history, positions, resume), one `#[tokio::test]`
/// each, for a layer that keeps history; `make` as for
/// [`layer_conformance_tests!`](crate::layer_conformance_tests).
#[macro_export]
macro_rules! history_conformance_tests {
    ($make:path) => {
        $crate::layer_conformance_tests!(@cases $make;
            history_numbers_group_messages, resume_replays_then_goes_live,
            resume_from_a_lost_position_is_not_recovered, flush_starts_a_new_epoch,
            resume_without_history_is_unsupported, resume_under_traffic_loses_and_repeats_nothing,
            history_skips_presence_events, history_is_read_and_cleared_without_joining);
    };
}
