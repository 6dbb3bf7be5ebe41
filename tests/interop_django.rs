//! Rust and a live Django process (channels 4.3 + channels_redis 4.3, configured through
//! Django's CHANNEL_LAYERS) exchange messages through one redis-server: group sends and sends
//! both ways, on the core layer and the pub/sub layer, in clear and with encryption keys, with
//! every value type — bytes stay bytes on the round trip Django → Rust → Django.
//!
//! The Django side is `tests/interop/peer.py`, run by the Python that `SWITCHBOARD_PYTHON`
//! names (scripts/test prepares it from `tests/interop/requirements.txt`).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod support;

#[path = "../examples/chat/app.rs"]
#[allow(dead_code)]
mod chat_app;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value as Json, json};
use support::ws;
use switchboard::redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use switchboard::{ChannelName, Layer, Map, Message, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Core,
    PubSub,
}

/// A Django process driving channels_redis.
struct Django {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Django {
    async fn start(kind: Kind, url: &str, prefix: &str, keys: &[&str]) -> Django {
        let python = std::env::var("SWITCHBOARD_PYTHON").unwrap_or_else(|_| {
            panic!(
                "SWITCHBOARD_PYTHON is not set: the interop tests need a Python with channels and \
                 channels_redis (pip install -r tests/interop/requirements.txt). scripts/test \
                 prepares one."
            )
        });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/peer.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(if kind == Kind::Core { "core" } else { "pubsub" })
            .args([url, prefix])
            .args(keys)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut django = Django {
            _child: child,
            stdin,
            stdout,
        };
        assert_eq!(django.read().await, json!({"ready": true}));
        django
    }

    async fn read(&mut self) -> Json {
        let line = tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line())
            .await
            .expect("the Django process did not answer within 20 s")
            .unwrap()
            .expect("the Django process exited");
        serde_json::from_str(&line).unwrap()
    }

    async fn call(&mut self, cmd: Json) -> Json {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let reply = self.read().await;
        assert!(reply.get("error").is_none(), "Django: {reply} for {cmd}");
        reply
    }

    async fn new_channel(&mut self) -> String {
        self.call(json!({"op": "new_channel"})).await["channel"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn group_add(&mut self, group: &str, channel: &str) {
        self.call(json!({"op": "group_add", "group": group, "channel": channel}))
            .await;
    }

    async fn send(&mut self, channel: &str, message: &Message) {
        self.call(json!({"op": "send", "channel": channel, "message": to_wire(message)}))
            .await;
    }

    async fn group_send(&mut self, group: &str, message: &Message) {
        self.call(json!({"op": "group_send", "group": group, "message": to_wire(message)}))
            .await;
    }

    async fn receive(&mut self, channel: &str) -> Message {
        let reply = self
            .call(json!({"op": "receive", "channel": channel, "timeout": 5}))
            .await;
        assert!(
            reply.get("timeout").is_none(),
            "Django received nothing on {channel}"
        );
        from_wire(&reply["message"])
    }
}

/// A message as the peer's JSON: bytes are `{"$bytes": hex}`.
fn to_wire(m: &Message) -> Json {
    fn conv(v: &Value) -> Json {
        match v {
            Value::Bytes(b) => {
                json!({"$bytes": b.iter().map(|x| format!("{x:02x}")).collect::<String>()})
            }
            Value::List(l) => Json::Array(l.iter().map(conv).collect()),
            Value::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), conv(v))).collect()),
            other => other.to_json(),
        }
    }
    Json::Object(
        m.fields()
            .iter()
            .map(|(k, v)| (k.clone(), conv(v)))
            .collect(),
    )
}

fn from_wire(j: &Json) -> Message {
    fn conv(j: &Json) -> Value {
        match j {
            Json::Object(o) if o.len() == 1 && o.contains_key("$bytes") => {
                let hex = o["$bytes"].as_str().unwrap();
                Value::Bytes(
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect(),
                )
            }
            Json::Object(o) => Value::Map(o.iter().map(|(k, v)| (k.clone(), conv(v))).collect()),
            Json::Array(a) => Value::List(a.iter().map(conv).collect()),
            other => Value::from(other.clone()),
        }
    }
    match conv(j) {
        Value::Map(m) => Message::from_map(m).unwrap(),
        other => panic!("not a message: {other:?}"),
    }
}

/// Every value type Channels carries.
fn all_types(n: i64) -> Message {
    let mut nested = Map::default();
    nested.insert(
        "k".into(),
        Value::List(vec![Value::Int(1), "two".into(), Value::Null]),
    );
    let mut m = Map::default();
    m.insert("type".into(), "interop.check".into());
    m.insert("n".into(), Value::Int(n));
    m.insert("text".into(), "héllo ✓".into());
    m.insert("bytes".into(), Value::Bytes(vec![0, 1, 127, 128, 254, 255]));
    m.insert("negative".into(), Value::Int(-42));
    m.insert("big".into(), Value::UInt(u64::MAX));
    m.insert("float".into(), Value::Float(-0.25));
    m.insert("yes".into(), Value::Bool(true));
    m.insert("none".into(), Value::Null);
    m.insert("map".into(), Value::Map(nested));
    Message::from_map(m).unwrap()
}

async fn rust_layer(kind: Kind, url: &str, prefix: &str, keys: &[&str]) -> Layer {
    let cfg = RedisConfig::new(url)
        .prefix(prefix)
        .symmetric_encryption_keys(keys.iter().copied());
    match kind {
        Kind::Core => Layer::new(RedisLayer::connect(cfg).await.unwrap()),
        Kind::PubSub => Layer::new(RedisPubSubLayer::connect(cfg).await.unwrap()),
    }
}

async fn recv(layer: &Layer, ch: &ChannelName) -> Message {
    tokio::time::timeout(Duration::from_secs(5), layer.receive(ch))
        .await
        .expect("Rust received nothing within 5 s")
        .unwrap()
}

/// Both directions, both operations, for one layer kind and key set.
async fn exchange(kind: Kind, keys: &[&str]) {
    let url = support::redis::url();
    let prefix = support::redis::fresh_prefix();
    let (mut django, layer) = tokio::join!(
        Django::start(kind, &url, &prefix, keys),
        rust_layer(kind, &url, &prefix, keys)
    );
    let py = django.new_channel().await;
    let rs = layer.new_channel().await.unwrap();
    django.group_add("mixed", &py).await;
    layer.group_add("mixed", &rs).await.unwrap();

    // Rust group_send → the Django channel in the group (and the Rust one).
    layer.group_send("mixed", all_types(1)).await.unwrap();
    assert_eq!(django.receive(&py).await, all_types(1));
    assert_eq!(recv(&layer, &rs).await, all_types(1));

    // Django group_send → the Rust channel in the group (and the Django one).
    django.group_send("mixed", &all_types(2)).await;
    assert_eq!(recv(&layer, &rs).await, all_types(2));
    assert_eq!(django.receive(&py).await, all_types(2));

    // send to a specific channel, both ways.
    layer.send(py.as_str(), all_types(3)).await.unwrap();
    assert_eq!(django.receive(&py).await, all_types(3));
    django.send(rs.as_str(), &all_types(4)).await;
    assert_eq!(recv(&layer, &rs).await, all_types(4));

    // Bytes from Django arrive as bytes, and go back to Django as bytes.
    let from_django = all_types(5);
    django.send(rs.as_str(), &from_django).await;
    let got = recv(&layer, &rs).await;
    assert_eq!(
        got.get("bytes"),
        Some(&Value::Bytes(vec![0, 1, 127, 128, 254, 255]))
    );
    layer.send(py.as_str(), got).await.unwrap();
    assert_eq!(django.receive(&py).await, from_django);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_exchanges_with_django() {
    exchange(Kind::Core, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_layer_exchanges_with_django_encrypted() {
    exchange(Kind::Core, &["new secret", "old secret"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_exchanges_with_django() {
    exchange(Kind::PubSub, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_layer_exchanges_with_django_encrypted() {
    exchange(Kind::PubSub, &["new secret", "old secret"]).await;
}

/// A Django `group_send` reaches a Rust consumer (the chat example's), which hands it to its
/// WebSocket client; a client message comes back to a Django channel in the room.
async fn django_and_a_rust_consumer_share_a_room(kind: Kind) {
    let url = support::redis::url();
    let prefix = support::redis::fresh_prefix();
    let (mut django, layer) = tokio::join!(
        Django::start(kind, &url, &prefix, &[]),
        rust_layer(kind, &url, &prefix, &[])
    );
    let addr = support::serve(chat_app::router(layer, chat_app::Settings::default())).await;
    let mut ann = ws(addr, "/ws/chat/lobby/?nickname=ann").await;
    let py = django.new_channel().await;
    django.group_add("chat_lobby", &py).await;

    let from_django = Message::from_json(json!({
        "type": "chat.message", "room": "lobby", "user": "django", "message": "hello from Django"
    }))
    .unwrap();
    django.group_send("chat_lobby", &from_django).await;
    assert_eq!(ann.recv_json().await, from_django.to_json());

    assert_eq!(
        django.receive(&py).await,
        from_django,
        "Django's own member got it too"
    );

    ann.send_json(json!({"message": "hello from Rust"})).await;
    assert_eq!(ann.recv_json().await["message"], "hello from Rust");
    assert_eq!(
        django.receive(&py).await.to_json(),
        json!({"type": "chat.message", "room": "lobby", "user": "ann", "message": "hello from Rust"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_group_send_reaches_a_rust_consumer_on_the_core_layer() {
    django_and_a_rust_consumer_share_a_room(Kind::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_group_send_reaches_a_rust_consumer_on_the_pubsub_layer() {
    django_and_a_rust_consumer_share_a_room(Kind::PubSub).await;
}
