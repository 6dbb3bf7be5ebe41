//! The examples as real processes: find the built binary, start it on a free loopback port,
//! wait until it listens — and say why when it does not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::{ChildGuard, TempDir, free_port};

/// `target/<profile>/examples/<name>`, next to this test's `deps/` directory, built by cargo as
/// `scripts/test` builds it (`--workspace --all-features`) before its first use in this test
/// binary: `cargo test --test x` builds no examples, and a binary built earlier may lack a
/// feature (`redis`) — cargo's fingerprints know, a file date would not. Up to date, the build
/// is a no-op.
pub fn example_binary(name: &str) -> PathBuf {
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if checked.iter().any(|n| n == name) {
        return bin;
    }
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--workspace",
            "--all-features",
            "--example",
            name,
        ]);
        // What cargo set for this test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, …) is not the
        // environment of a build: build scripts that watch such variables would rebuild.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let config = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&key.as_ref())
                || [
                    "CARGO_BUILD_",
                    "CARGO_PROFILE_",
                    "CARGO_NET_",
                    "CARGO_TERM_",
                ]
                .iter()
                .any(|p| key.starts_with(p));
            if (key.starts_with("CARGO_") && !config) || key == "OUT_DIR" {
                cmd.env_remove(key.as_ref());
            }
        }
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "building the {name} example failed");
    }
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --all-features --example {name}`",
        bin.display()
    );
    checked.push(name.to_owned());
    bin
}

/// A running example program, killed on drop. When the test fails, its output is printed.
pub struct Program {
    pub addr: SocketAddr,
    name: String,
    log: Option<PathBuf>,
    // Killed before its directory is removed.
    child: ChildGuard,
    _dir: TempDir,
}

impl Program {
    /// Starts example `name` with `--addr 127.0.0.1:<free port>` and `args`, and waits (up to
    /// 20 s) until it accepts connections. Panics with the program's output if it exits first.
    pub async fn start(name: &str, args: &[&str]) -> Program {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = TempDir::new(&format!("{name}-program"));
        let verbose = std::env::var_os("SWITCHBOARD_TEST_LOG").is_some();
        let log = (!verbose).then(|| dir.path().join("output.log"));
        let (stdout, stderr) = match &log {
            Some(path) => {
                let file = std::fs::File::create(path).unwrap();
                (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
            }
            None => (Stdio::inherit(), Stdio::inherit()),
        };
        let child = std::process::Command::new(example_binary(name))
            .args(["--addr", &addr.to_string()])
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start the {name} example: {e}"));
        let mut program = Program {
            addr,
            name: name.to_owned(),
            log,
            child: ChildGuard(child),
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = program.child.0.try_wait() {
                panic!(
                    "the {name} example exited ({status}) before listening on {addr}:\n{}",
                    program.output()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return program;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {name} example does not listen on {addr} after 20 s:\n{}",
                program.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the program wrote so far (empty when `SWITCHBOARD_TEST_LOG` sent it to the terminal).
    pub fn output(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.output();
            if !out.is_empty() {
                eprintln!(
                    "--- output of the {} example on {} ---\n{out}",
                    self.name, self.addr
                );
            }
        }
    }
}
