//! Redis Sentinel for the tests: one master, one replica and three sentinels (Debian's
//! `redis-sentinel`) on loopback, with a failover that takes a few seconds.

use std::time::{Duration, Instant};

use crate::{ChildGuard, TempDir, free_port, spawn_until_stdin_closes};

/// The name the sentinels monitor the master under.
pub const MASTER: &str = "mymaster";

/// One redis-server of the set.
struct Node {
    port: u16,
    child: Option<ChildGuard>,
}

/// A master, its replica and three sentinels watching them (quorum 2, the master is down
/// after 1 s without an answer).
pub struct SentinelSet {
    nodes: Vec<Node>,
    sentinels: Vec<Node>,
    /// `requirepass` of the master and replica, and of the sentinels, when set.
    master_password: Option<String>,
    sentinel_password: Option<String>,
    _dir: TempDir,
}

fn sentinel_binary() -> String {
    std::env::var("SWITCHBOARD_REDIS_SENTINEL").unwrap_or_else(|_| "redis-sentinel".into())
}

/// `redis://[:password@]127.0.0.1:port`.
fn url_of(port: u16, password: Option<&str>) -> String {
    match password {
        Some(p) => format!("redis://:{p}@127.0.0.1:{port}"),
        None => format!("redis://127.0.0.1:{port}"),
    }
}

async fn query(url: &str, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut c).await
}

/// `SENTINEL MASTER mymaster` as field → value.
async fn master_info(url: &str) -> Option<std::collections::HashMap<String, String>> {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("MASTER").arg(MASTER);
    let v = query(url, &cmd).await.ok()?;
    redis::FromRedisValue::from_redis_value(v).ok()
}

/// The port of the master the first answering sentinel of `urls` names.
async fn named_master(urls: &[String]) -> Option<u16> {
    for url in urls {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER);
        if let Ok(v) = query(url, &cmd).await
            && let Ok((_, port)) =
                redis::FromRedisValue::from_redis_value(v).map(|(h, p): (String, u16)| (h, p))
        {
            return Some(port);
        }
    }
    None
}

impl SentinelSet {
    /// Starts the set and waits until every sentinel knows the replica and the two other
    /// sentinels (so that a failover can be agreed); `None` (a skip) without the binaries.
    pub async fn start() -> Option<SentinelSet> {
        SentinelSet::start_with(None, None).await
    }

    /// A set whose master and replica require `master_password` (the sentinels and the
    /// replica authenticate with it) and whose sentinels require `sentinel_password`.
    pub async fn start_with(
        master_password: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> Option<SentinelSet> {
        let server = crate::redis::binary();
        if !crate::executable(&server) || !crate::executable(&sentinel_binary()) {
            return crate::skip(&format!(
                "{server} and {} (Debian's redis-server and redis-sentinel; set \
                 SWITCHBOARD_REDIS_SERVER / SWITCHBOARD_REDIS_SENTINEL to their paths)",
                sentinel_binary()
            ));
        }
        let dir = TempDir::new("sentinel");
        let start_node = |port: u16, replica_of: Option<u16>| {
            let mut args = crate::redis::replicated_node_args(port, dir.path());
            if let Some(m) = replica_of {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]);
            }
            if let Some(p) = master_password {
                args.extend([
                    "--requirepass".into(),
                    p.into(),
                    "--masterauth".into(),
                    p.into(),
                ]);
            }
            let child = spawn_until_stdin_closes(&args);
            crate::wait_listening_blocking(port);
            Node {
                port,
                child: Some(child),
            }
        };
        let master = start_node(free_port(), None);
        let replica = start_node(free_port(), Some(master.port));
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 10000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.path().display(),
                master.port
            );
            if let Some(p) = master_password {
                text.push_str(&format!("sentinel auth-pass {MASTER} {p}\n"));
            }
            if let Some(p) = sentinel_password {
                text.push_str(&format!("requirepass {p}\nsentinel sentinel-pass {p}\n"));
            }
            std::fs::write(&conf, text).unwrap(); // ok: test harness, a panic fails the calling test
            let child = spawn_until_stdin_closes(&[sentinel_binary(), conf.display().to_string()]);
            crate::wait_listening_blocking(port);
            sentinels.push(Node {
                port,
                child: Some(child),
            });
        }
        let set = SentinelSet {
            nodes: vec![master, replica],
            sentinels,
            master_password: master_password.map(str::to_owned),
            sentinel_password: sentinel_password.map(str::to_owned),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The replica has the master's data before anything is measured.
        while !crate::cluster::replication_settled_at(&url_of(
            set.nodes[1].port,
            set.master_password.as_deref(),
        )) {
            assert!(
                Instant::now() < deadline,
                "the replica did not sync within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for s in &set.sentinels {
            loop {
                let info = master_info(&url_of(s.port, set.sentinel_password.as_deref()))
                    .await
                    .unwrap_or_default();
                let n = |k: &str| info.get(k).and_then(|v| v.parse::<u32>().ok());
                if n("num-slaves") == Some(1) && n("num-other-sentinels") == Some(2) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the sentinels did not find each other and the replica within 30 s: {info:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Some(set)
    }

    /// The sentinels' addresses, `127.0.0.1:port`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| url_of(s.port, self.sentinel_password.as_deref()))
            .collect()
    }

    /// The port of the master the sentinels name now.
    pub async fn master_port(&self) -> Option<u16> {
        named_master(&self.sentinel_urls()).await
    }

    /// Resolves when the first sentinel names a master other than the one on `old`, polling
    /// every 10 ms, for at most `within`: the moment the failover is done, as Sentinel sees it.
    pub fn master_changed(
        &self,
        old: u16,
        within: Duration,
    ) -> impl Future<Output = Option<Instant>> + use<> {
        let urls = self.sentinel_urls();
        async move {
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                for url in &urls {
                    if named_master(std::slice::from_ref(url))
                        .await
                        .is_some_and(|m| m != old)
                    {
                        return Some(Instant::now());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        }
    }

    /// The URL of the server on `port`.
    pub fn url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    /// Kills the master the sentinels name now (SIGKILL); returns its port.
    pub async fn kill_master(&mut self) -> u16 {
        let port = self
            .master_port()
            .await
            .expect("no sentinel names a master"); // ok: test harness, a panic fails the calling test
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("the master is not one of the set's servers"); // ok: test harness, a panic fails the calling test
        node.child = None;
        port
    }

    /// Waits until the sentinels name a master other than `old` and it answers as one;
    /// returns its port.
    pub async fn wait_for_new_master(&self, old: u16, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(port) = self.master_port().await
                && port != old
                && let Ok(redis::Value::Array(role)) = query(
                    &url_of(port, self.master_password.as_deref()),
                    &redis::cmd("ROLE"),
                )
                .await
                && role.first() == Some(&redis::Value::BulkString(b"master".to_vec()))
            {
                return port;
            }
            assert!(Instant::now() < deadline, "no new master within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
