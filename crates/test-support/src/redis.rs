//! Redis for the tests: the shared test server, and redis-servers of a test's own that it can
//! kill and restart.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ChildGuard, executable, free_port};

/// The Redis the tests share (`scripts/test` starts one and sets `SWITCHBOARD_REDIS_URL`);
/// `None`, and the test says it is skipped, when it is not set.
pub fn url() -> Option<String> {
    match std::env::var("SWITCHBOARD_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => super::skip(
            "a Redis server: SWITCHBOARD_REDIS_URL is not set (scripts/test starts one; or \
             export SWITCHBOARD_REDIS_URL=redis://127.0.0.1:6379)",
        ),
    }
}

/// A key prefix no other test uses.
pub fn fresh_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("sbtest{nanos:x}{}n{n}", std::process::id())
}

/// A redis-server of the test's own, on a free loopback port, without persistence.
pub struct OwnRedis {
    pub port: u16,
    child: Option<ChildGuard>,
    /// More `redis-server` arguments (`--requirepass …`).
    extra: Vec<String>,
}

/// The arguments of a throwaway redis-server of a replicated set on `port`: loopback, no
/// persistence, files in `dir`, and a replica synced at once (not after the default 5 s wait
/// for more replicas).
pub(crate) fn replicated_node_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    vec![
        binary(),
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--dbfilename".into(),
        format!("dump-{port}.rdb"),
        "--repl-diskless-sync-delay".into(),
        "0".into(),
    ]
}

pub(crate) fn binary() -> String {
    std::env::var("SWITCHBOARD_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl OwnRedis {
    /// Starts one; `None` (a skip) when there is no redis-server to start.
    pub async fn start() -> Option<OwnRedis> {
        OwnRedis::start_with(&[]).await
    }

    /// Starts one with more `redis-server` arguments.
    pub async fn start_with(extra: &[&str]) -> Option<OwnRedis> {
        if !executable(&binary()) {
            return super::skip(&format!(
                "a redis-server binary to start and stop: {} is not there (set \
                 SWITCHBOARD_REDIS_SERVER to its path)",
                binary()
            ));
        }
        let mut r = OwnRedis {
            port: free_port(),
            child: None,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        // A server that exits at once could not bind: another process drew the same port.
        for _ in 0..4 {
            if r.launch().await {
                return Some(r);
            }
            r.port = free_port();
        }
        r.restart().await;
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (SIGSTOP): its connections stay open and nothing answers, as a
    /// server stuck in a long command, swapping or paused by its host does.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a [frozen](OwnRedis::freeze) server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("the server is not running"); // ok: test harness, a panic fails the calling test
        let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Starts it (again) on the same port, empty.
    pub async fn restart(&mut self) {
        assert!(
            self.launch().await,
            "redis-server exited at start on port {}",
            self.port
        );
    }

    /// Starts the server on its port and waits until it listens: `false` if it exited first.
    async fn launch(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = std::env::temp_dir();
        let child = std::process::Command::new(binary())
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir)
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start {} (set SWITCHBOARD_REDIS_SERVER to its path): {e}",
                    binary()
                )
            });
        let mut child = ChildGuard(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = child.0.try_wait() {
                return false;
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                self.child = Some(child);
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server does not listen on {addr} after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What Redis holds of the groups under `prefix`: keys (the core layer's group sets, the pub/sub
/// layer's membership registry) and subscribed pub/sub channels (the pub/sub layer's groups).
/// Both empty once every member has left.
pub async fn groups_left(url: &str, prefix: &str) -> (Vec<String>, Vec<String>) {
    let mut c = ::redis::Client::open(url)
        .unwrap() // ok: test harness, a panic fails the calling test
        .get_multiplexed_async_connection()
        .await
        .unwrap(); // ok: test harness, a panic fails the calling test
    let pattern = format!("{prefix}*group*");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut c)
        .await
        .unwrap(); // ok: test harness, a panic fails the calling test
    let channels: Vec<String> = ::redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(&pattern)
        .query_async(&mut c)
        .await
        .unwrap(); // ok: test harness, a panic fails the calling test
    (keys, channels)
}

/// Waits (up to 5 s) until no group under `prefix` is left in Redis.
pub async fn wait_no_groups_left(url: &str, prefix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (keys, channels) = groups_left(url, prefix).await;
        if keys.is_empty() && channels.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "groups left in Redis after every member left: keys {keys:?}, pub/sub channels {channels:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An ACL user of a test's own on the Redis at `server`, allowed everything but the commands
/// it was made without, with a password of its own; removed on drop. Killing its connections
/// (`CLIENT KILL USER`) or reading its `ACL LOG` touches no other test.
pub struct AclUser {
    pub name: String,
    pub password: String,
    /// The server's URL (as the default user).
    pub server: String,
}

impl AclUser {
    pub async fn new(server: &str, denied: &[&str]) -> AclUser {
        let name = format!("sbtest{}", uuid::Uuid::new_v4().simple());
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(&name)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all");
        for d in denied {
            cmd.arg(format!("-{d}"));
        }
        let _: () = cmd
            .query_async(&mut crate::layers::raw(server).await)
            .await
            .unwrap(); // ok: test harness, a panic fails the calling test
        AclUser {
            name,
            password,
            server: server.to_owned(),
        }
    }

    /// Allows `commands` again.
    pub async fn allow(&self, commands: &[&str]) {
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&self.name);
        for c in commands {
            cmd.arg(format!("+{c}"));
        }
        let _: () = cmd
            .query_async(&mut crate::layers::raw(&self.server).await)
            .await
            .unwrap(); // ok: test harness, a panic fails the calling test
    }

    /// The server's URL, logging in as this user.
    pub fn url(&self) -> String {
        self.url_with(&self.password)
    }

    /// The server's URL, logging in as this user with `password`.
    pub fn url_with(&self, password: &str) -> String {
        let hostport = self.server.trim_start_matches("redis://");
        format!("redis://{}:{password}@{hostport}", self.name)
    }

    /// Closes every connection of this user (as `CLIENT KILL`, an idle timeout or a proxy
    /// does); returns how many there were.
    pub async fn kill_connections(&self) -> i64 {
        ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&self.name)
            .query_async(&mut crate::layers::raw(&self.server).await)
            .await
            .unwrap() // ok: test harness, a panic fails the calling test
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        // Best effort: a leftover user on the throwaway test server harms nothing.
        if let Ok(client) = ::redis::Client::open(self.server.as_str())
            && let Ok(mut c) = client.get_connection()
        {
            let _: ::redis::RedisResult<()> = ::redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.name)
                .query(&mut c);
        }
    }
}
