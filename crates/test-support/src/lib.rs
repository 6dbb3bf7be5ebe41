//! What switchboard's tests share: real servers on loopback, real clients, and a clear word when
//! the machine lacks what a test needs.
//!
//! # Skips
//!
//! A test that needs something the machine may not have — a Redis server, Chromium, the Python
//! environment for Django — asks for it ([`redis::url`], [`redis::OwnRedis::start`],
//! [`browser::Browser::start`], [`django_python`]), and gets `None` when it is missing. The test
//! then returns early, and says so on the terminal (past libtest's output capture):
//!
//! ```text
//! skipped layer_redis::send_then_receive: needs a Redis server: SWITCHBOARD_REDIS_URL is not set (scripts/test starts one)
//! ```
//!
//! so `cargo test --workspace` passes on a bare machine. `scripts/test` (and CI) sets
//! `SWITCHBOARD_NO_SKIP=1`, which turns every such skip into a failure: there, nothing is
//! skipped silently.
#![allow(clippy::unwrap_used, missing_docs, missing_debug_implementations)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpListener;

pub mod browser;
pub mod cluster;
pub mod django;
pub mod http;
pub mod layers;
pub mod metrics;
pub mod program;
pub mod redis;
pub mod sentinel;
pub mod tls;
pub mod ws;

pub use ws::{WsClient, try_ws, try_ws_with, ws};

/// The variable that turns skips into failures.
pub const NO_SKIP: &str = "SWITCHBOARD_NO_SKIP";

/// Reports that the running test cannot run here because it `needs` something, and returns
/// `None` — or panics, when [`NO_SKIP`] is set.
pub fn skip<T>(needs: &str) -> Option<T> {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    if std::env::var_os(NO_SKIP).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} needs {needs}, and {NO_SKIP} forbids skipping it");
    }
    // Once per test and need (a test that starts three browsers skips three times), straight
    // to the terminal: libtest captures only the print macros.
    static SAID: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let said = (test, needs.to_owned());
    let mut seen = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&said) {
        let _ = writeln!(std::io::stderr(), "skipped {}: needs {}", said.0, said.1);
        seen.push(said);
    }
    None
}

/// The Python interpreter with Django Channels and channels_redis for the interop tests
/// (`SWITCHBOARD_PYTHON`; scripts/test prepares one from `django/requirements.txt`).
pub fn django_python() -> Option<std::path::PathBuf> {
    match std::env::var_os("SWITCHBOARD_PYTHON") {
        Some(p) if std::path::Path::new(&p).exists() => Some(p.into()),
        Some(p) => skip(&format!(
            "a Python with Django Channels: SWITCHBOARD_PYTHON names {p:?}, which does not exist"
        )),
        None => skip(
            "a Python with Django Channels and channels_redis: SWITCHBOARD_PYTHON is not set \
             (scripts/test prepares one)",
        ),
    }
}

/// Serves an axum router on 127.0.0.1 on a free port, with the peer address available to
/// consumers.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap(); // ok: test harness, a panic fails the calling test
    let addr = listener.local_addr().unwrap(); // ok: test harness, a panic fails the calling test
    tokio::spawn(async move {
        switchboard_server::serve(listener, app).await.unwrap(); // ok: test harness, a panic fails the calling test
    });
    addr
}

/// Waits until `check` holds, polling every 20 ms; panics naming `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchboard-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap(); // ok: test harness, a panic fails the calling test
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port for a server the test starts (a redis-server, a program under test).
///
/// It is taken from below the kernel's ephemeral range (`ip_local_port_range`), not by binding
/// port 0: a port 0 bind draws from the ephemeral range, which every outbound connection draws
/// from too, so between this check and the server's own bind a client of a test running
/// alongside could take the port, and the server would fail to start (seen in CI: a
/// redis-server that never listened). Below that range only a listener can take it, and the
/// ports are handed out in turn within a process, from a start that differs between processes.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let top = ephemeral_start().max(LOWEST + 1_000);
    let span = top - LOWEST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOWEST + (start + n) % span).unwrap(); // ok: below `top`, at most u16::MAX (`ephemeral_start` reads a u16)
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST}..{top}");
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .map_or(32_768, u32::from)
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr} after {within:?}");
}

/// Waits (blocking, up to 5 s) until something accepts TCP connections on 127.0.0.1:`port`:
/// for servers started outside a runtime (a `static` shared by a test binary).
pub fn wait_listening_blocking(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr} after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `program` names an executable: a path, or a name found on `PATH`.
pub fn executable(program: &str) -> bool {
    let p = std::path::Path::new(program);
    if p.components().count() > 1 {
        return p.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A child process killed on drop (with its whole process group, when it leads one).
pub struct ChildGuard(pub std::process::Child);

/// Starts a program as the leader of a new process group, so that dropping the guard also
/// kills what it started (chromedriver's browsers), even when a test panics.
pub fn spawn_group(program: &str, args: &[&str]) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    launch(command(program, args).process_group(0), program)
}

impl ChildGuard {
    /// Sends the process SIGTERM, as a service manager or Kubernetes does to stop it.
    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("SIGTERM to {pid}: {e}"));
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A group leader's pid is its group id; killing a group we do not lead fails harmlessly.
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a program with output discarded (or inherited when `SWITCHBOARD_TEST_LOG` is set).
pub fn spawn(program: &str, args: &[&str]) -> ChildGuard {
    launch(&mut command(program, args), program)
}

/// `program args`, its output discarded (or inherited when `SWITCHBOARD_TEST_LOG` is set).
fn command(program: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdout(output()).stderr(output());
    cmd
}

/// Where a started program's output goes: nowhere, or the terminal when
/// `SWITCHBOARD_TEST_LOG` is set.
fn output() -> Stdio {
    if std::env::var_os("SWITCHBOARD_TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

fn launch(cmd: &mut std::process::Command, program: &str) -> ChildGuard {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {program}: {e}"));
    ChildGuard(child)
}

/// Starts `args` (a program and its arguments) under `sh`, which kills it when this process's
/// end of its standard input closes: when the guard drops, or when the test binary exits
/// without dropping it (a server in a `static`, shared by the binary's tests). The `sh` leads a
/// process group of its own, so the guard kills both.
pub fn spawn_until_stdin_closes(args: &[String]) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#""$@" </dev/null & pid=$!; read _line; kill -9 "$pid""#)
        .arg("sh")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(output())
        .stderr(output())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", args[0]));
    ChildGuard(child)
}
