//! Two dams processes (the built `dams` example binary) sharing one SQLite file and one Redis
//! (the real redis-server at `SWITCHBOARD_REDIS_URL`), on the core layer and on the pub/sub
//! layer: a dam added through the form on one process is announced on the notifications sockets
//! of both, with the exact message, once; a login made on one process works on the other. And
//! in headless Chromium: a page on one process shows the "new dam" dialog when the other adds a
//! dam, and Refresh shows it. And a `dams runworker` process doing a web process's reports,
//! stopped by SIGTERM.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::json;
use test_support::program::Program;
use test_support::{TempDir, WsClient, try_ws_with};

const NOTIFICATIONS: &str = "/dams/notifications/ws/";

/// Two processes on one new database file and one Redis key prefix, started together.
struct Pair {
    a: Program,
    b: Program,
    _dir: TempDir,
}

/// Two processes on one Redis; `None` (a skip) without one.
async fn start_pair(layer: &str) -> Option<Pair> {
    let redis = test_support::redis::url()?;
    let prefix = test_support::redis::fresh_prefix();
    let dir = TempDir::new("dams-redis");
    let db = dir.path().join("dams.sqlite");
    let db = db.to_str().unwrap();
    // No --users: the demo users of examples/dams/demo-users.toml.
    let flags = [
        "--redis",
        redis.as_str(),
        "--layer",
        layer,
        "--redis-prefix",
        prefix.as_str(),
        "--db",
        db,
    ];
    let (a, b) = tokio::join!(
        Program::start(env!("CARGO_BIN_EXE_dams"), &flags),
        Program::start(env!("CARGO_BIN_EXE_dams"), &flags)
    );
    Some(Pair { a, b, _dir: dir })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// A login: the session cookie (`sessionid=…`).
async fn log_in(addr: SocketAddr, user: &str, password: &str) -> String {
    let resp = http()
        .post(format!("http://{addr}/accounts/login/"))
        .form(&[
            ("username", user),
            ("password", password),
            ("next", "/dams/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "login as {user}");
    let set = resp.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// The add form's token, read from the form as a browser would.
async fn form_token(addr: SocketAddr, cookie: &str) -> String {
    let resp = http()
        .get(format!("http://{addr}/dams/add/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the add form");
    let html = resp.text().await.unwrap();
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker).expect("no form token on the add form") + marker.len();
    html[start..start + 64].to_owned()
}

/// Adds a dam through the form; the status.
async fn add_dam(addr: SocketAddr, cookie: &str, token: &str, name: &str) -> StatusCode {
    http()
        .post(format!("http://{addr}/dams/add/"))
        .header("cookie", cookie)
        .form(&[
            ("name", name),
            ("owner", "Private company"),
            ("river", "Snake River"),
            ("built", "2001-05-17"),
            ("latitude", "43.512"),
            ("longitude", "-112.034"),
            ("csrf_token", token),
        ])
        .send()
        .await
        .unwrap()
        .status()
}

async fn notifications(addr: SocketAddr, cookie: &str) -> WsClient {
    try_ws_with(addr, NOTIFICATIONS, &[("cookie", cookie)])
        .await
        .unwrap_or_else(|s| panic!("notifications on {addr} refused: {s}"))
}

async fn inventory(addr: SocketAddr) -> String {
    http()
        .get(format!("http://{addr}/dams/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn a_dam_added_on_one_process_is_announced_on_both(layer: &str) {
    let Some(pair) = start_pair(layer).await else {
        return;
    };
    let (a, b) = (pair.a.addr, pair.b.addr);

    let viewer_on_b = log_in(b, "viewer", "dams-viewer").await;
    let mut page_on_b = notifications(b, &viewer_on_b).await;
    let viewer_on_a = log_in(a, "viewer", "dams-viewer").await;
    let mut page_on_a = notifications(a, &viewer_on_a).await;

    let editor = log_in(a, "editor", "dams-editor").await;
    let token = form_token(a, &editor).await;
    assert_eq!(
        add_dam(a, &editor, &token, "Cross Process Dam").await,
        StatusCode::SEE_OTHER
    );
    let expected =
        json!({"type": "dam.notification", "message": "New Dam", "name": "Cross Process Dam"});
    assert_eq!(
        page_on_b.recv_json().await,
        expected,
        "the page on the other process"
    );
    assert_eq!(page_on_a.recv_json().await, expected);
    assert!(
        inventory(b).await.contains("Cross Process Dam"),
        "one database"
    );

    // The login made on A holds on B (sessions live in the shared database), and an add there
    // is announced on A.
    let token_on_b = form_token(b, &editor).await;
    assert_eq!(token_on_b, token, "one session");
    assert_eq!(
        add_dam(b, &editor, &token_on_b, "Second Dam").await,
        StatusCode::SEE_OTHER
    );
    let expected = json!({"type": "dam.notification", "message": "New Dam", "name": "Second Dam"});
    assert_eq!(page_on_a.recv_json().await, expected);
    assert_eq!(page_on_b.recv_json().await, expected);

    // A form that fails validation announces nothing anywhere; nothing came twice.
    assert_eq!(
        add_dam(a, &editor, &token, "").await,
        StatusCode::BAD_REQUEST
    );
    assert!(page_on_b.recv_nothing(300).await, "B: nothing more");
    assert!(page_on_a.recv_nothing(50).await, "A: nothing more");
}

#[tokio::test]
async fn a_dam_added_on_one_process_is_announced_on_both_on_the_core_layer() {
    a_dam_added_on_one_process_is_announced_on_both("core").await;
}

#[tokio::test]
async fn a_dam_added_on_one_process_is_announced_on_both_on_the_pubsub_layer() {
    a_dam_added_on_one_process_is_announced_on_both("pubsub").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_one_process_shows_the_dialog_when_the_other_adds_a_dam() {
    use test_support::browser::Browser;

    let Some(pair) = start_pair("core").await else {
        return;
    };
    let (a, b) = (pair.a.addr, pair.b.addr);
    let Some(viewer) = Browser::start().await else {
        return;
    };
    viewer
        .client
        .goto(&format!("http://{b}/accounts/login/?next=/dams/"))
        .await
        .unwrap();
    viewer.type_into("#id_username", "viewer").await;
    viewer.type_into("#id_password", "dams-viewer").await;
    viewer.click("#login").await;
    viewer.wait_for_text("#whoami", "viewer").await;
    // The notifications socket is open.
    viewer.wait_for_text("#live", "live").await;
    viewer.wait_for_text("#dams td.name", "Hoover Dam").await;

    let editor = log_in(a, "editor", "dams-editor").await;
    let token = form_token(a, &editor).await;
    assert_eq!(
        add_dam(a, &editor, &token, "Browser Dam").await,
        StatusCode::SEE_OTHER
    );

    viewer.wait_for_visible("#new-dam-modal").await;
    viewer
        .wait_for_text(
            "#new-dam-text",
            "A new dam has been added. Refresh this page to load it.",
        )
        .await;
    viewer.wait_for_text("#new-dam-names", "Browser Dam").await;
    assert!(
        !viewer
            .texts("#dams td.name")
            .await
            .iter()
            .any(|t| t == "Browser Dam"),
        "not listed before Refresh"
    );
    viewer.click("#modal-refresh").await;
    viewer.wait_for_text("#dams td.name", "Browser Dam").await;
    assert!(!viewer.is_displayed("#new-dam-modal").await);
    viewer.close().await;
}

/// A `--no-worker` web process and a `dams runworker` process on one Redis (core layer): the
/// worker process does the web process's report job, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runworker_process_does_the_reports_and_stops_on_sigterm() {
    let Some(redis) = test_support::redis::url() else {
        return;
    };
    let prefix = test_support::redis::fresh_prefix();
    let dir = TempDir::new("dams-runworker");
    let db = dir.path().join("dams.sqlite");
    let db = db.to_str().unwrap();
    let flags = ["--redis", &redis, "--redis-prefix", &prefix, "--db", db];
    let web_flags: Vec<&str> = flags.iter().copied().chain(["--no-worker"]).collect();
    let web = Program::start(env!("CARGO_BIN_EXE_dams"), &web_flags).await;
    let log_path = dir.path().join("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut worker = test_support::ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_dams"))
            .args(flags)
            .arg("runworker")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let viewer = log_in(web.addr, "viewer", "dams-viewer").await;
    let mut report = try_ws_with(web.addr, "/dams/report/ws/", &[("cookie", &viewer)])
        .await
        .unwrap_or_else(|s| panic!("report socket refused: {s}"));
    let editor = log_in(web.addr, "editor", "dams-editor").await;
    let token = form_token(web.addr, &editor).await;
    assert_eq!(
        add_dam(web.addr, &editor, &token, "Worker Dam").await,
        StatusCode::SEE_OTHER
    );
    // The job waits in Redis until the worker process takes it (it may still be starting).
    let ready = report.recv_json_within(20_000).await.expect("no report");
    assert_eq!(ready["type"], "report.ready", "{ready}");
    assert_eq!(ready["newest"]["name"], "Worker Dam", "{ready}");

    worker.terminate();
    let exit = worker
        .wait_exit(std::time::Duration::from_secs(10))
        .await
        .expect("the worker did not stop on SIGTERM");
    let out = std::fs::read_to_string(&log_path).unwrap();
    assert!(exit.success(), "{exit:?}\n{out}");
    assert!(out.contains("dams report worker stopped"), "{out}");
}
