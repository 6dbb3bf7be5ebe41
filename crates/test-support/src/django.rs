//! A live Django process (channels 4.3 + channels_redis 4.3, configured through Django's
//! CHANNEL_LAYERS) driven over stdin/stdout: `django/peer.py`, run by the Python that
//! `SWITCHBOARD_PYTHON` names (scripts/test prepares it from `django/requirements.txt`).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value as Json, json};
use switchboard_core::{Layer, Map, Message, Value};
use switchboard_redis::{RedisConfig, RedisLayer, RedisPubSubLayer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Which channels_redis layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Core,
    PubSub,
}

/// A Django process driving channels_redis.
pub struct Django {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Django {
    /// Starts one on `host` (a Redis URL, or channels_redis's host dict as JSON); `None` (a
    /// skip) without the Python environment.
    pub async fn start(kind: Kind, host: &str, prefix: &str, keys: &[&str]) -> Option<Django> {
        let python = super::django_python()?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/django/peer.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(if kind == Kind::Core { "core" } else { "pubsub" })
            .args([host, prefix])
            .args(keys)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap(); // ok: test harness, a panic fails the calling test
        let stdin = child.stdin.take().unwrap(); // ok: test harness, a panic fails the calling test
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines(); // ok: test harness, a panic fails the calling test
        let mut django = Django {
            _child: child,
            stdin,
            stdout,
        };
        assert_eq!(django.read().await, json!({"ready": true}));
        Some(django)
    }

    pub async fn read(&mut self) -> Json {
        let line = tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line())
            .await
            .expect("the Django process did not answer within 20 s") // ok: test harness, a panic fails the calling test
            .unwrap() // ok: test harness, a panic fails the calling test
            .expect("the Django process exited"); // ok: test harness, a panic fails the calling test
        serde_json::from_str(&line).unwrap() // ok: test harness, a panic fails the calling test
    }

    pub async fn call(&mut self, cmd: Json) -> Json {
        let reply = self.try_call(&cmd).await;
        assert!(reply.get("error").is_none(), "Django: {reply} for {cmd}");
        reply
    }

    /// Runs `cmd`; an error is answered as `{"error": …}`.
    pub async fn try_call(&mut self, cmd: &Json) -> Json {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap(); // ok: test harness, a panic fails the calling test
        self.read().await
    }

    /// Adds `channel` to `group`, trying again (every 100 ms, for up to `within`) while
    /// channels_redis fails, as it does until it has reconnected after a failover.
    pub async fn group_add_retrying(&mut self, group: &str, channel: &str, within: Duration) {
        let cmd = json!({"op": "group_add", "group": group, "channel": channel});
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let reply = self.try_call(&cmd).await;
            if reply.get("error").is_none() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Django could not use Redis within {within:?}: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn new_channel(&mut self) -> String {
        self.call(json!({"op": "new_channel"})).await["channel"]
            .as_str()
            .unwrap() // ok: test harness, a panic fails the calling test
            .to_owned()
    }

    pub async fn group_add(&mut self, group: &str, channel: &str) {
        self.call(json!({"op": "group_add", "group": group, "channel": channel}))
            .await;
    }

    pub async fn send(&mut self, channel: &str, message: &Message) {
        self.call(json!({"op": "send", "channel": channel, "message": to_wire(message)}))
            .await;
    }

    pub async fn group_send(&mut self, group: &str, message: &Message) {
        self.call(json!({"op": "group_send", "group": group, "message": to_wire(message)}))
            .await;
    }

    pub async fn receive(&mut self, channel: &str) -> Message {
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
pub fn to_wire(m: &Message) -> Json {
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

pub fn from_wire(j: &Json) -> Message {
    fn conv(j: &Json) -> Value {
        match j {
            Json::Object(o) if o.len() == 1 && o.contains_key("$bytes") => {
                let hex = o["$bytes"].as_str().unwrap(); // ok: test harness, a panic fails the calling test
                Value::Bytes(
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) // ok: test harness, a panic fails the calling test
                        .collect(),
                )
            }
            Json::Object(o) => Value::Map(o.iter().map(|(k, v)| (k.clone(), conv(v))).collect()),
            Json::Array(a) => Value::List(a.iter().map(conv).collect()),
            other => Value::from(other.clone()),
        }
    }
    match conv(j) {
        Value::Map(m) => Message::from_map(m).unwrap(), // ok: test harness, a panic fails the calling test
        other => panic!("not a message: {other:?}"),
    }
}

/// Every value type Channels carries, numbered `n`.
pub fn all_types(n: i64) -> Message {
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
    Message::from_map(m).unwrap() // ok: test harness, a panic fails the calling test
}

/// A Rust layer of `kind` on the same Redis, prefix and keys as the Django process.
pub async fn rust_layer(kind: Kind, url: &str, prefix: &str, keys: &[&str]) -> Layer {
    let cfg = RedisConfig::new(url)
        .prefix(prefix)
        .symmetric_encryption_keys(keys.iter().copied());
    rust_layer_with(kind, cfg).await
}

/// A Rust layer of `kind` with these settings.
pub async fn rust_layer_with(kind: Kind, cfg: RedisConfig) -> Layer {
    match kind {
        Kind::Core => Layer::new(RedisLayer::connect(cfg).await.unwrap()), // ok: test harness, a panic fails the calling test
        Kind::PubSub => Layer::new(RedisPubSubLayer::connect(cfg).await.unwrap()), // ok: test harness, a panic fails the calling test
    }
}

/// What Rust receives on `ch` within 5 s.
pub use crate::layers::recv;

/// Both directions, both operations, every value type, between a Django process and a Rust
/// layer on the same Redis and prefix: group sends each way (both members get them), sends to
/// a specific channel each way, and bytes from Django going back to Django as bytes.
pub async fn exchange(django: &mut Django, layer: &Layer) {
    let py = django.new_channel().await;
    let rs = layer.new_channel().await.unwrap(); // ok: test harness, a panic fails the calling test
    django.group_add("mixed", &py).await;
    layer.group_add("mixed", &rs).await.unwrap(); // ok: test harness, a panic fails the calling test

    // Rust group_send → the Django channel in the group (and the Rust one).
    layer.group_send("mixed", all_types(1)).await.unwrap(); // ok: test harness, a panic fails the calling test
    assert_eq!(django.receive(&py).await, all_types(1));
    assert_eq!(recv(layer, &rs).await, all_types(1));

    // Django group_send → the Rust channel in the group (and the Django one).
    django.group_send("mixed", &all_types(2)).await;
    assert_eq!(recv(layer, &rs).await, all_types(2));
    assert_eq!(django.receive(&py).await, all_types(2));

    // send to a specific channel, both ways.
    layer.send(py.as_str(), all_types(3)).await.unwrap(); // ok: test harness, a panic fails the calling test
    assert_eq!(django.receive(&py).await, all_types(3));
    django.send(rs.as_str(), &all_types(4)).await;
    assert_eq!(recv(layer, &rs).await, all_types(4));

    // Bytes from Django arrive as bytes, and go back to Django as bytes.
    let from_django = all_types(5);
    django.send(rs.as_str(), &from_django).await;
    let got = recv(layer, &rs).await;
    assert_eq!(
        got.get("bytes"),
        Some(&Value::Bytes(vec![0, 1, 127, 128, 254, 255]))
    );
    layer.send(py.as_str(), got).await.unwrap(); // ok: test harness, a panic fails the calling test
    assert_eq!(django.receive(&py).await, from_django);
}

/// Channels' own worker: `python manage.py runworker CHANNEL…` in the Django project
/// `django/workersite` (a `ChannelNameRouter` sending `thumbnails-generate` to its
/// `ThumbnailWorker` consumer), on a channels_redis layer of `kind` on `url` and `prefix`.
/// Killed on drop.
pub struct RunWorker {
    child: Child,
}

impl RunWorker {
    /// Starts one; `None` (a skip) without the Python environment.
    pub async fn start(
        kind: Kind,
        url: &str,
        prefix: &str,
        channels: &[&str],
    ) -> Option<RunWorker> {
        let python = super::django_python()?;
        let project = concat!(env!("CARGO_MANIFEST_DIR"), "/django/workersite");
        let child = Command::new(python)
            .current_dir(project)
            .arg("manage.py")
            .arg("runworker")
            .args(channels)
            .env(
                "SWITCHBOARD_WORKER_LAYER",
                if kind == Kind::Core { "core" } else { "pubsub" },
            )
            .env("SWITCHBOARD_WORKER_REDIS", url)
            .env("SWITCHBOARD_WORKER_PREFIX", prefix)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(super::output())
            .stderr(super::output())
            .kill_on_drop(true)
            .spawn()
            .unwrap(); // ok: test harness, a panic fails the calling test
        Some(RunWorker { child })
    }

    /// Panics if the worker process has exited (a broken project, a missing package).
    pub fn assert_running(&mut self) {
        let exited = self.child.try_wait().unwrap(); // ok: test harness, a panic fails the calling test
        if let Some(status) = exited {
            panic!(
                "`manage.py runworker` exited: {status} (SWITCHBOARD_TEST_LOG=1 shows its output)"
            );
        }
    }
}
