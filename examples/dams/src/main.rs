//! A dam inventory that tells every open page when a dam is added — the Django Channels
//! "new dam" notifier, rebuilt on switchboard.
//!
//! Shows: an ordinary server-rendered web app (SQLite, login, a validated form) that publishes to
//! a group from an HTTP handler — `layer.group_send("notifications", …)` — and a WebSocket
//! endpoint whose authentication hook admits only logged-in users, relaying those messages to
//! the pages, which offer to refresh.
//!
//! Run it (SQLite file `dams.sqlite` created on first run, in-memory layer, demo users), then
//! open <http://127.0.0.1:8000/> and log in as `editor` / `dams-editor`:
//!
//! ```text
//! cargo run --release -p dams
//! ```
//!
//! Your own users: `cargo run --release -p dams -- hash-password` reads a password and
//! prints its hash; put it in a users file (see `examples/dams/demo-users.toml`) and pass
//! `--users FILE`, or pass `--user NAME:view,add:HASH`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use dams::users::{Users, hash_password};
use example_support::LayerArgs;
use example_support::flags;

/// The demo users: editor (view, add) / dams-editor, viewer (view) / dams-viewer,
/// guest (no permissions) / dams-guest.
const DEMO_USERS: &str = include_str!("../demo-users.toml");

/// Flags.
#[derive(Parser, Debug)]
#[command(about = "switchboard dams example: a dam inventory with new-dam notifications")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// The SQLite database file; created, with its schema, on first run.
    #[arg(long, default_value = "dams.sqlite", value_name = "PATH")]
    db: PathBuf,
    /// Adding a dam past this many is refused.
    #[arg(long, default_value_t = 50)]
    max_dams: usize,
    /// A TOML file of users (names, Argon2 password hashes, permissions).
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// A user as NAME:PERMISSIONS:HASH (permissions "view", "add", comma-separated). Repeatable.
    #[arg(long = "user", value_name = "SPEC")]
    user: Vec<String>,
    /// Do not put the demo dams into a new database.
    #[arg(long)]
    no_demo_dams: bool,
    /// Mark the session cookie Secure (when served over HTTPS).
    #[arg(long)]
    secure_cookies: bool,
    /// Password checks (Argon2, 19 MiB each) that may run at once; a login past them is
    /// answered 503 "try again in a moment".
    #[arg(long, default_value_t = dams::DEFAULT_PASSWORD_CHECKS, value_parser = flags::at_least_one)]
    max_password_checks: usize,
    /// Do not run the report worker in this process (a `dams runworker` process runs it).
    #[arg(long)]
    no_worker: bool,
    #[command(flatten)]
    layer: LayerArgs,
    #[command(flatten)]
    ops: example_support::OpsArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a password from standard input and print its Argon2id hash for a users file.
    HashPassword,
    /// Run only the report worker (Channels' `manage.py runworker dams-report`): consume the
    /// `dams-report` channel until SIGTERM or Ctrl-C, serving no HTTP. Use with `--no-worker` web
    /// processes on a shared Redis layer.
    Runworker,
}

fn load_users(args: &Args) -> Result<Users, String> {
    let mut list = Vec::new();
    if let Some(path) = &args.users {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        list = Users::list_from_toml(&text)
            .map_err(|e| format!("users file {}: {e}", path.display()))?;
    }
    for spec in &args.user {
        list.push(Users::parse_flag(spec).map_err(|e| format!("--user {spec:?}: {e}"))?);
    }
    if list.is_empty() {
        tracing::warn!(
            "no --users or --user given: using the demo users editor/dams-editor, \
             viewer/dams-viewer and guest/dams-guest (examples/dams/demo-users.toml)"
        );
        list = Users::list_from_toml(DEMO_USERS)?;
    }
    Users::new(list)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    example_support::init_tracing();
    let args = Args::parse();
    if let Some(Command::HashPassword) = args.command {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err("type a password (it is read from standard input)".into());
        }
        println!("{}", hash_password(password)?);
        return Ok(());
    }
    let runworker = matches!(args.command, Some(Command::Runworker));
    // The worker serves no logins: it needs no users.
    let users = if runworker {
        None
    } else {
        Some(load_users(&args)?)
    };
    let db = dams::db::Db::open(&args.db, !args.no_demo_dams)?;
    let ops = example_support::Ops::install(&args.ops)?;
    let layer = args.layer.build().await?;
    let Some(users) = users else {
        tracing::info!(
            "dams report worker on {} (database {})",
            args.layer.describe(),
            args.db.display()
        );
        let stats = dams::report::worker(db, layer)
            .run_until(example_support::stop_signal())
            .await?;
        tracing::info!(?stats, "dams report worker stopped");
        return Ok(());
    };
    // The report worker, in this process unless told otherwise; it stops taking jobs when the
    // drain begins (SIGTERM), before the drain closes the layer.
    let worker = (!args.no_worker).then(|| {
        let worker = dams::report::worker(db.clone(), layer.clone());
        let draining = ops.shutdown.clone();
        (
            worker.stop_handle(),
            tokio::spawn(worker.run_until(async move { draining.draining().await })),
        )
    });
    let settings = dams::Settings {
        max_dams: args.max_dams,
        secure_cookies: args.secure_cookies,
        password_checks: std::sync::Arc::new(tokio::sync::Semaphore::new(args.max_password_checks)),
        shutdown: ops.shutdown.clone(),
        ..dams::Settings::default()
    };
    let router = dams::router(db, users, layer.clone(), settings).merge(ops.routes(layer));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    tracing::info!(
        "dams on http://{} (database {}, at most {} dams, {})",
        listener.local_addr()?,
        args.db.display(),
        args.max_dams,
        args.layer.describe()
    );
    example_support::serve(listener, router, ops).await?;
    if let Some((stop, running)) = worker {
        stop.stop();
        match running.await {
            Ok(Ok(stats)) => tracing::info!(?stats, "report worker stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "report worker ended"),
            Err(e) => tracing::warn!(error = %e, "report worker task failed"),
        }
    }
    Ok(())
}
