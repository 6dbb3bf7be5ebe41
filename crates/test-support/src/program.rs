//! The examples as real processes: start a built binary on a free loopback port, wait until it
//! listens — and say why when it does not. An example's own tests name its binary with
//! `env!("CARGO_BIN_EXE_<name>")`: cargo builds it, with the test's features, before the tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::{ChildGuard, TempDir, free_port};

/// A running example program, killed on drop. When the test fails, its output is printed.
pub struct Program {
    pub addr: SocketAddr,
    name: String,
    /// How it was started, for [`restart`](Program::restart).
    command: (String, Vec<String>, Vec<(String, String)>),
    log: Option<PathBuf>,
    // Killed before its directory is removed.
    child: ChildGuard,
    _dir: TempDir,
}

impl Program {
    /// Starts the program at `binary` with `--addr 127.0.0.1:<free port>` and `args`, and waits
    /// (up to 20 s) until it says it listens there (its start-up line) and accepts connections. Panics with the program's output if it exits
    /// first — unless it exited because another process took the port between `free_port` and
    /// its bind (a server of another test binary running alongside, which drew the same port):
    /// then it starts again on another port, up to five times.
    pub async fn start(binary: &str, args: &[&str]) -> Program {
        Program::start_with_env(binary, args, &[]).await
    }

    /// [`start`](Program::start) with more environment variables.
    pub async fn start_with_env(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Program {
        for _ in 0..4 {
            if let Some(p) = Program::try_start(binary, args, env, None).await {
                return p;
            }
        }
        Program::try_start(binary, args, env, None)
            .await
            .expect("the port was taken five times in a row") // ok: test harness, a panic fails the calling test
    }

    /// Kills the process with SIGKILL — a crash: no drain, no goodbye — and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Starts the program again (after [`kill`](Program::kill), or once it exited) on the same
    /// address with the same arguments, waiting as [`start`](Program::start) does; its output
    /// starts afresh. Retries for up to 10 s while the port is still taken.
    pub async fn restart(&mut self) {
        self.kill();
        let (binary, args, env) = self.command.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for _ in 0..40 {
            if let Some(p) = Program::try_start(&binary, &args, &env, Some(self.addr)).await {
                *self = p;
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "{} could not listen on {} again within 10 s",
            self.name, self.addr
        );
    }

    /// One start, on `addr` or a free port; `None` if the program exited because its port was
    /// in use.
    async fn try_start(
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
        addr: Option<SocketAddr>,
    ) -> Option<Program> {
        let name = std::path::Path::new(binary)
            .file_name()
            .map_or_else(|| binary.to_owned(), |n| n.to_string_lossy().into_owned());
        let name = name.as_str();
        let addr: SocketAddr = addr.unwrap_or_else(|| ([127, 0, 0, 1], free_port()).into());
        let dir = TempDir::new(&format!("{name}-program"));
        let verbose = std::env::var_os("SWITCHBOARD_TEST_LOG").is_some();
        let log = (!verbose).then(|| dir.path().join("output.log"));
        let (stdout, stderr) = match &log {
            Some(path) => {
                let file = std::fs::File::create(path).unwrap(); // ok: test harness, a panic fails the calling test
                (Stdio::from(file.try_clone().unwrap()), Stdio::from(file)) // ok: test harness, a panic fails the calling test
            }
            None => (Stdio::inherit(), Stdio::inherit()),
        };
        let child = std::process::Command::new(binary)
            .args(["--addr", &addr.to_string()])
            .args(args)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start the {name} example: {e}"));
        let mut program = Program {
            addr,
            name: name.to_owned(),
            command: (
                binary.to_owned(),
                args.iter().map(|a| (*a).to_owned()).collect(),
                env.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            log,
            child: ChildGuard(child),
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // An example logs `… on http://ADDR` once it is bound. A connection alone is no proof:
        // until then another test may hold the port for a moment (`free_port`'s own check
        // listener, a server of another process that drew the same port), and the probe reaches that one —
        // the test then found the port refusing, or reset, right after "it listens".
        let announced = format!("on http://{addr}");
        loop {
            if let Ok(Some(status)) = program.child.0.try_wait() {
                if program.output().contains("Address already in use") {
                    return None;
                }
                panic!(
                    "the {name} example exited ({status}) before listening on {addr}:\n{}",
                    program.output()
                );
            }
            // With SWITCHBOARD_TEST_LOG the output goes to the terminal: the probe alone.
            let bound = program.log.is_none() || program.output().contains(&announced);
            if bound && tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Some(program);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {name} example does not say it listens on {addr} after 20 s:\n{}",
                program.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether the process is still running (it has not exited or been restarted).
    pub fn running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    /// Sends the process SIGTERM, as a service manager or Kubernetes does to stop it.
    pub fn terminate(&self) {
        self.child.terminate();
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.child.wait_exit(within).await
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
