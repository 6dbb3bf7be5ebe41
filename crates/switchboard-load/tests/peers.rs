//! The load tool against the Rust peers of `bench/peers/` (each mounted in-process on
//! loopback): a tiny bounded run per protocol must deliver every message to every client and
//! leave the room empty.

use std::path::PathBuf;
use std::time::Duration;

/// A listener on an ephemeral loopback port, and the port.
async fn listener() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    (listener, port)
}

/// Serves `app` on an ephemeral loopback port; returns the port.
async fn serve(app: axum::Router) -> u16 {
    let (listener, port) = listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Runs `switchboard-load` with `args` (10 clients, one sender of 5 messages) and returns its
/// JSON report.
async fn load(name: &str, args: &[&str]) -> serde_json::Value {
    let json: PathBuf = std::env::temp_dir().join(format!(
        "switchboard-load-peers-{name}-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&json);
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-load"))
        .args(["-C", "10", "--senders", "1", "-S", "5", "--settle", "0"])
        .args(["--idle-timeout", "10", "--max-seconds", "30"])
        .args(["--label", name, "--json"])
        .arg(&json)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the load run ends within 60 s")
        .expect("switchboard-load runs");
    assert!(
        out.status.success(),
        "switchboard-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(text.trim()).expect("one JSON line")
}

fn assert_everything_arrived(report: &serde_json::Value) {
    assert_eq!(report["connected"], 10, "{report}");
    assert_eq!(report["expected"], 50, "{report}");
    assert_eq!(report["received"], 50, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["send_errors"], 0, "{report}");
    assert_eq!(report["members_after_close"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_peer_gets_every_message_in_order() {
    let rooms = std::sync::Arc::new(peer_broadcast::Rooms::new(1024, 4096));
    let port = serve(peer_broadcast::app(rooms.clone())).await;
    let url = format!("ws://127.0.0.1:{port}/ws/chat/bench/");
    let members = format!("http://127.0.0.1:{port}/chat/rooms/bench/");
    let pid = std::process::id().to_string();
    let report = load(
        "broadcast",
        &[
            "--url",
            &url,
            "--members-url",
            &members,
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert_everything_arrived(&report);
    assert_eq!(report["misordered"], 0, "{report}");
    assert!(report["server_cpu_s"].as_f64().is_some(), "{report}");
    // The load generator's own CPU over the same span: its workers received 50 frames.
    assert!(
        report["client_cpu_s"].as_f64().is_some_and(|s| s >= 0.0),
        "{report}"
    );
    assert!(
        report["client_cpu_us_per_delivery"].as_f64().is_some(),
        "{report}"
    );
    assert_eq!(rooms.lagged(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_peer_gets_every_message() {
    // Pings every 100 ms, and a client that does not answer within 300 ms is dropped: the
    // run (1 s idle, then 5 messages over 1 s) lasts long enough that a client without pongs
    // would lose messages.
    let settings = peer_socketio::Settings {
        buffer: 1024,
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
    };
    let port = serve(peer_socketio::app(&settings)).await;
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&room=bench");
    let members = format!("http://127.0.0.1:{port}/chat/rooms/bench/");
    let report = load(
        "socketio",
        &[
            "--protocol",
            "socketio",
            "--url",
            &url,
            "--members-url",
            &members,
            "--hold",
            "1",
            "--rate",
            "5",
        ],
    )
    .await;
    // Not in order: socketioxide runs each event's handler as a task of its own, so two
    // messages of one sender may be broadcast in either order.
    assert_everything_arrived(&report);
    assert_eq!(peer_socketio::dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_peer_gets_every_message_in_order() {
    let rooms = std::sync::Arc::new(peer_floor::Rooms::new(4096));
    let (listener, port) = listener().await;
    tokio::spawn(peer_floor::serve(listener, rooms.clone()));
    let url = format!("ws://127.0.0.1:{port}/ws/chat/bench/");
    let members = format!("http://127.0.0.1:{port}/chat/rooms/bench/");
    let report = load("floor", &["--url", &url, "--members-url", &members]).await;
    assert_everything_arrived(&report);
    assert_eq!(report["misordered"], 0, "{report}");
    assert_eq!(rooms.stalls(), 0);
}
