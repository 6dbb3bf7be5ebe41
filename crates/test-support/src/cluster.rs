//! Redis Cluster for the tests: real redis-servers in cluster mode on loopback, made into a
//! cluster by `redis-cli --cluster create` (or, for one master, by giving it every slot).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{ChildGuard, TempDir, free_port, spawn_until_stdin_closes};

struct Node {
    port: u16,
    child: Option<ChildGuard>,
}

/// A cluster of `masters` masters with `replicas` replicas each (node timeout 1 s, so a
/// replica takes over a failed master within a few seconds).
pub struct Cluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

fn cli() -> String {
    std::env::var("SWITCHBOARD_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

fn sync_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(1))?;
    cmd.query(&mut c)
}

fn info_field(port: u16, field: &str) -> Option<String> {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("INFO");
    let info: String = sync_query(port, &cmd).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// Whether the server on `port` is a master, or a replica whose link to its master is up.
pub(crate) fn replication_settled(port: u16) -> bool {
    replication_settled_at(&format!("redis://127.0.0.1:{port}"))
}

/// [`replication_settled`] for the server at `url`.
pub(crate) fn replication_settled_at(url: &str) -> bool {
    let info = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .and_then(|mut c| {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut c)
        });
    let Ok(info) = info else {
        return false;
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
    };
    field("role") == Some("master") || field("master_link_status") == Some("up")
}

impl Cluster {
    /// Starts the servers and makes the cluster; waits until every node says the cluster is
    /// ok. `None` (a skip) without redis-server and redis-cli.
    pub fn start(masters: usize, replicas: usize) -> Option<Cluster> {
        let server = crate::redis::binary();
        if !crate::executable(&server) || !crate::executable(&cli()) {
            return crate::skip(&format!(
                "{server} and {} (Debian's redis-server and redis-tools)",
                cli()
            ));
        }
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = free_port();
            let mut args = crate::redis::replicated_node_args(port, dir.path());
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                free_port().to_string(),
                "--cluster-config-file".into(),
                dir.path()
                    .join(format!("nodes-{port}.conf"))
                    .display()
                    .to_string(),
                "--cluster-node-timeout".into(),
                "1000".into(),
                // A replica may take over however long it was cut off.
                "--cluster-replica-validity-factor".into(),
                "0".into(),
            ]);
            nodes.push(Node {
                port,
                child: Some(spawn_until_stdin_closes(&args)),
            });
        }
        for n in &nodes {
            crate::wait_listening_blocking(n.port);
        }
        let cluster = Cluster { nodes, _dir: dir };
        if masters == 1 && replicas == 0 {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("ADDSLOTSRANGE").arg(0).arg(16383);
            sync_query::<()>(cluster.nodes[0].port, &cmd).unwrap(); // ok: test harness, a panic fails the calling test
        } else {
            let status = std::process::Command::new(cli())
                .arg("--cluster")
                .arg("create")
                .args(
                    cluster
                        .nodes
                        .iter()
                        .map(|n| format!("127.0.0.1:{}", n.port)),
                )
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap(); // ok: test harness, a panic fails the calling test
            assert!(
                status.success(),
                "redis-cli --cluster create failed: {status}"
            );
        }
        cluster.wait_ok(Duration::from_secs(30));
        Some(cluster)
    }

    /// Waits until every live node says `cluster_state:ok` and knows every node, and every
    /// replica is in sync with its master.
    fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let total = self.nodes.len().to_string();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            while info_field(n.port, "cluster_state").as_deref() != Some("ok")
                || info_field(n.port, "cluster_known_nodes").as_deref() != Some(total.as_str())
                || !replication_settled(n.port)
            {
                assert!(
                    Instant::now() < deadline,
                    "the cluster is not ok on port {} after {within:?}",
                    n.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The nodes' URLs (seeds for a client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The port of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let live = self.nodes.iter().find(|n| n.child.is_some()).unwrap(); // ok: test harness, a panic fails the calling test
        let mut slot_cmd = redis::cmd("CLUSTER");
        slot_cmd.arg("KEYSLOT").arg(key);
        let slot: u16 = sync_query(live.port, &slot_cmd).unwrap(); // ok: test harness, a panic fails the calling test
        let mut slots_cmd = redis::cmd("CLUSTER");
        slots_cmd.arg("SLOTS");
        let ranges: Vec<redis::Value> = sync_query(live.port, &slots_cmd).unwrap(); // ok: test harness, a panic fails the calling test
        for r in ranges {
            let redis::Value::Array(r) = r else { continue };
            let (
                Some(redis::Value::Int(lo)),
                Some(redis::Value::Int(hi)),
                Some(redis::Value::Array(master)),
            ) = (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&i64::from(slot))
                && let Some(redis::Value::Int(port)) = master.get(1)
            {
                return u16::try_from(*port).unwrap(); // ok: test harness, a panic fails the calling test
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Kills (SIGKILL) the server on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap(); // ok: test harness, a panic fails the calling test
        node.child = None;
    }

    /// Waits until the slot of `key` is served by a master other than `old`, and every live
    /// node says the cluster is ok; returns the new master's port.
    pub fn wait_for_new_master(&self, key: &str, old: u16, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            let live: Vec<u16> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| n.port)
                .collect();
            let ok = live
                .iter()
                .all(|&p| info_field(p, "cluster_state").as_deref() == Some("ok"));
            if ok {
                let m = self.master_of(key);
                if m != old {
                    return m;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The cluster one test binary shares: three masters, no replicas (started by the first test
/// that asks, ended with the binary); `None` (a skip) without the binaries.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
    match SHARED.get_or_init(|| Cluster::start(3, 0)) {
        Some(c) => Some(c),
        None => crate::skip("redis-server and redis-cli to make a cluster"),
    }
}
