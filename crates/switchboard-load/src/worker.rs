//! A worker process: holds its share of the clients, sends if it has senders, counts and times
//! what arrives. It talks to the coordinator with JSON lines on stdout and commands on stdin
//! (`go`, `close`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::clock::now_ns;
use crate::socketio::{self, Frame};
use crate::{Error, Protocol};

/// How long one connection attempt (TCP connect and WebSocket handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that carries a worker's [`Spec`].
pub(crate) const SPEC_ENV: &str = "SWITCHBOARD_LOAD_WORKER";

/// What one worker does.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) worker: usize,
    pub(crate) protocol: Protocol,
    pub(crate) urls: Vec<String>,
    /// Index of this worker's first client among all clients.
    pub(crate) first_client: usize,
    pub(crate) clients: usize,
    /// How many of this worker's first clients send.
    pub(crate) senders: usize,
    /// Sender id of this worker's first sender.
    pub(crate) first_sender: usize,
    pub(crate) total_senders: usize,
    pub(crate) messages: u64,
    /// Messages/s per sender; 0 = as fast as possible.
    pub(crate) rate_per_sender: f64,
    pub(crate) payload: usize,
    pub(crate) origin: Option<String>,
    pub(crate) source_ips: usize,
    pub(crate) connect_concurrency: usize,
    pub(crate) idle_timeout: f64,
    pub(crate) max_seconds: f64,
}

/// A line a worker prints.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    Progress {
        connected: usize,
        received: u64,
    },
    Connected {
        connected: usize,
        failed: usize,
        connect_s: f64,
        first_error: Option<String>,
    },
    Done(Done),
    Closed {
        closed: usize,
    },
}

/// A worker's results.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub(crate) struct Done {
    pub(crate) received: u64,
    pub(crate) expected: u64,
    pub(crate) misordered: u64,
    pub(crate) clients_short: usize,
    pub(crate) first_send_ns: Option<u64>,
    pub(crate) last_send_ns: Option<u64>,
    pub(crate) last_recv_ns: u64,
    /// Latencies in µs, an HDR histogram in V2 format, base64.
    pub(crate) histogram: String,
    pub(crate) send_errors: u64,
    pub(crate) timed_out: bool,
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// A client's sending half: its sender task writes messages, its reader answers pings
/// (socket.io), one frame at a time.
type Sink = Arc<Mutex<SplitSink<Ws, Message>>>;

fn emit(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        println!("{line}");
    }
}

/// Shared counters of this worker.
#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    received: AtomicU64,
    last_recv_ns: AtomicU64,
    /// Clients that still expect messages.
    pending: AtomicUsize,
}

/// What a client's reader found.
#[derive(Default)]
struct ClientResult {
    received: u64,
    misordered: u64,
    latencies_us: Vec<u32>,
}

/// The timing fields of a chat delivery in `frame` under `protocol`, if it is one.
fn parse_delivery(protocol: Protocol, frame: &str) -> Option<(u64, usize, u64)> {
    match protocol {
        Protocol::Channels => parse(frame),
        Protocol::Socketio => match socketio::parse(frame) {
            Frame::Event {
                name: "chat.message",
                data,
            } => parse(data),
            _ => None,
        },
    }
}

/// Finds `"message":"<seq> <sender> <t_ns> …` in a frame; a frame without it (a notice, an
/// error frame) is not a chat delivery.
fn parse(frame: &str) -> Option<(u64, usize, u64)> {
    let at = frame.find("\"message\"")?;
    let rest = frame[at + 9..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let mut parts = rest.splitn(4, ' ');
    let seq = parts.next()?.parse().ok()?;
    let sender = parts.next()?.parse().ok()?;
    let sent = parts.next()?.trim_end_matches('"').parse().ok()?;
    Some((seq, sender, sent))
}

fn client_url(spec: &Spec, client: usize) -> String {
    let base = &spec.urls[client % spec.urls.len()];
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}nickname=c{client}")
}

fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = if uri.scheme_str() == Some("wss") {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{}", uri.authority()?))
}

async fn connect(spec: &Spec, client: usize) -> Result<Ws, Error> {
    let url = client_url(spec, client);
    let uri: http::Uri = url.parse()?;
    let host = uri.host().ok_or("URL without host")?;
    let port = uri.port_u16().unwrap_or(80);
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()?
    };
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let IpAddr::V4(v4) = ip
        && v4.is_loopback()
        && spec.source_ips > 1
    {
        let n = (client % spec.source_ips) as u8;
        socket.bind(SocketAddr::from(([127, 0, 0, 1u8.wrapping_add(n)], 0)))?;
    }
    let stream = socket.connect(SocketAddr::new(ip, port)).await?;
    stream.set_nodelay(true)?;
    let mut req = url.as_str().into_client_request()?;
    if let Some(origin) = spec.origin.clone().or_else(|| origin_of(&url)) {
        req.headers_mut().insert("origin", origin.parse()?);
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = client_async_with_config(req, stream, Some(config)).await?;
    if spec.protocol == Protocol::Socketio {
        socketio_handshake(&mut ws).await?;
    }
    Ok(ws)
}

/// After the WebSocket handshake: the server's open packet, our connect to namespace `/`, its
/// answer.
async fn socketio_handshake(ws: &mut Ws) -> Result<(), Error> {
    let mut opened = false;
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        match socketio::parse(text.as_str()) {
            Frame::Open if !opened => {
                opened = true;
                ws.send(Message::text(socketio::CONNECT)).await?;
            }
            Frame::Ping => ws.send(Message::text(socketio::PONG)).await?,
            Frame::Connected if opened => return Ok(()),
            Frame::ConnectError(why) => return Err(format!("socket.io refused: {why}").into()),
            Frame::Closed => break,
            _ => {}
        }
    }
    Err("socket.io: the server closed during the handshake".into())
}

/// Reads one client's frames until `stop`, counting and timing chat deliveries.
async fn read_client(
    mut stream: SplitStream<Ws>,
    sink: Sink,
    protocol: Protocol,
    expected: u64,
    total_senders: usize,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> (ClientResult, SplitStream<Ws>) {
    let mut result = ClientResult::default();
    let mut last_seq = vec![-1i64; total_senders];
    let mut done = expected == 0;
    loop {
        let frame = tokio::select! {
            f = stream.next() => f,
            _ = stop.changed() => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let Message::Text(text) = frame else { continue };
        let now = now_ns();
        let Some((seq, sender, sent)) = parse_delivery(protocol, text.as_str()) else {
            if protocol == Protocol::Socketio {
                match socketio::parse(text.as_str()) {
                    Frame::Ping => {
                        let _ = sink.lock().await.send(Message::text(socketio::PONG)).await;
                    }
                    Frame::Closed => break,
                    _ => {}
                }
            }
            continue;
        };
        if let Some(last) = last_seq.get_mut(sender) {
            if (seq as i64) <= *last {
                result.misordered += 1;
            }
            *last = (*last).max(seq as i64);
        }
        result
            .latencies_us
            .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
        result.received += 1;
        counters.received.fetch_add(1, Ordering::Relaxed);
        counters.last_recv_ns.fetch_max(now, Ordering::Relaxed);
        if !done && result.received >= expected {
            done = true;
            counters.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
    if !done {
        counters.pending.fetch_sub(1, Ordering::AcqRel);
    }
    (result, stream)
}

/// Sends `messages` messages from sender `id`; returns (first send, last send, errors).
async fn send_messages(sink: &Sink, id: usize, spec: &Spec) -> (u64, u64, u64) {
    let pad = "x".repeat(spec.payload);
    let start = tokio::time::Instant::now();
    let interval =
        (spec.rate_per_sender > 0.0).then(|| Duration::from_secs_f64(1.0 / spec.rate_per_sender));
    let (mut first, mut last, mut errors) = (0, 0, 0);
    for seq in 0..spec.messages {
        if let Some(every) = interval {
            tokio::time::sleep_until(start + every.mul_f64(seq as f64)).await;
        }
        let t = now_ns();
        if seq == 0 {
            first = t;
        }
        let message = format!(r#"{{"message": "{seq} {id} {t} {pad}"}}"#);
        let text = match spec.protocol {
            Protocol::Channels => message,
            Protocol::Socketio => socketio::event("message", &message),
        };
        if sink.lock().await.send(Message::text(text)).await.is_err() {
            errors += 1;
            break;
        }
        last = t;
    }
    (first, last, errors)
}

/// Runs a worker described by the JSON `spec`.
pub(crate) async fn run(spec: &str) -> Result<(), Error> {
    let spec: Spec = serde_json::from_str(spec)?;
    crate::raise_nofile();
    let counters = Arc::new(Counters::default());
    let expected = spec.total_senders as u64 * spec.messages;

    // Progress, once a second.
    let progress = {
        let counters = counters.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                emit(&Event::Progress {
                    connected: counters.connected.load(Ordering::Relaxed),
                    received: counters.received.load(Ordering::Relaxed),
                });
            }
        })
    };

    // Connect everyone, a bounded number of handshakes at a time.
    let t0 = now_ns();
    let gate = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let spec = Arc::new(spec);
    let mut handshakes = Vec::with_capacity(spec.clients);
    for i in 0..spec.clients {
        let (gate, spec, counters) = (gate.clone(), spec.clone(), counters.clone());
        handshakes.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            let mut last_err = None;
            for attempt in 0..3u32 {
                let attempt_result =
                    tokio::time::timeout(CONNECT_TIMEOUT, connect(&spec, spec.first_client + i))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!("no handshake within {CONNECT_TIMEOUT:?}").into())
                        });
                match attempt_result {
                    Ok(ws) => {
                        counters.connected.fetch_add(1, Ordering::Relaxed);
                        return Ok(ws);
                    }
                    Err(e) => {
                        last_err = Some(e.to_string());
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1)))
                            .await;
                    }
                }
            }
            Err(last_err.unwrap_or_default())
        }));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sinks = Vec::with_capacity(spec.clients);
    let mut readers = Vec::with_capacity(spec.clients);
    let (mut failed, mut first_error) = (0, None);
    for h in handshakes {
        match h.await {
            Ok(Ok(ws)) => {
                let (sink, stream) = ws.split();
                let sink = Arc::new(Mutex::new(sink));
                sinks.push(Some(sink.clone()));
                counters.pending.fetch_add(1, Ordering::AcqRel);
                readers.push(tokio::spawn(read_client(
                    stream,
                    sink,
                    spec.protocol,
                    expected,
                    spec.total_senders,
                    counters.clone(),
                    stop_rx.clone(),
                )));
            }
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
                sinks.push(None);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
                sinks.push(None);
            }
        }
    }
    emit(&Event::Connected {
        connected: counters.connected.load(Ordering::Relaxed),
        failed,
        connect_s: (now_ns() - t0) as f64 / 1e9,
        first_error,
    });

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    // Wait for "go".
    loop {
        match stdin.next_line().await? {
            Some(l) if l.trim() == "go" => break,
            Some(_) => continue,
            None => return Err("coordinator went away".into()),
        }
    }

    // Senders.
    let mut send_tasks = Vec::new();
    for (s, sink) in sinks.iter().take(spec.senders).enumerate() {
        if let Some(sink) = sink.clone() {
            let spec = spec.clone();
            send_tasks.push(tokio::spawn(async move {
                send_messages(&sink, spec.first_sender + s, &spec).await
            }));
        }
    }
    let (mut first_send, mut last_send, mut send_errors) = (None::<u64>, None::<u64>, 0);
    for t in send_tasks {
        if let Ok((first, last, errors)) = t.await {
            first_send = Some(first_send.map_or(first, |f| f.min(first)));
            last_send = Some(last_send.map_or(last, |l| l.max(last)));
            send_errors += errors;
        }
    }

    // Wait until every client has everything, or nothing arrives for idle_timeout, or time is up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(spec.max_seconds);
    let mut last_count = counters.received.load(Ordering::Relaxed);
    let mut last_change = tokio::time::Instant::now();
    let mut timed_out = false;
    while expected > 0 && counters.pending.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = tokio::time::Instant::now();
        let count = counters.received.load(Ordering::Relaxed);
        if count != last_count {
            (last_count, last_change) = (count, now);
        } else if now.duration_since(last_change).as_secs_f64() > spec.idle_timeout
            || now > deadline
        {
            timed_out = true;
            break;
        }
    }
    let _ = stop_tx.send(true);

    // Closing: the coordinator says when (after it has read everybody's results).
    let mut results = Vec::with_capacity(readers.len());
    let mut streams = Vec::with_capacity(readers.len());
    for r in readers.drain(..) {
        if let Ok((result, stream)) = r.await {
            results.push(result);
            streams.push(stream);
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut done = Done {
        expected: expected * results.len() as u64,
        first_send_ns: first_send,
        last_send_ns: last_send,
        last_recv_ns: counters.last_recv_ns.load(Ordering::Relaxed),
        send_errors,
        timed_out,
        ..Done::default()
    };
    for r in &results {
        done.received += r.received;
        done.misordered += r.misordered;
        if r.received < expected {
            done.clients_short += 1;
        }
        for &l in &r.latencies_us {
            hist.saturating_record(u64::from(l).max(1));
        }
    }
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(&hist, &mut buf)
        .map_err(|e| format!("histogram: {e:?}"))?;
    done.histogram = base64::engine::general_purpose::STANDARD.encode(&buf);
    emit(&Event::Done(done));

    loop {
        match stdin.next_line().await? {
            Some(l) if l.trim() == "close" => break,
            Some(_) => continue,
            None => break,
        }
    }
    progress.abort();
    let mut closed = 0;
    let mut closing = Vec::new();
    for sink in sinks.into_iter().flatten() {
        closing.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), async {
                sink.lock().await.close().await
            })
            .await
            .is_ok()
        }));
    }
    for c in closing {
        if matches!(c.await, Ok(true)) {
            closed += 1;
        }
    }
    drop(streams);
    emit(&Event::Closed { closed });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse, parse_delivery};
    use crate::Protocol;

    #[test]
    fn parses_both_chats() {
        let ours = r#"{"type":"chat.message","room":"bench","user":"c1","message":"12 3 999 xxx"}"#;
        assert_eq!(parse(ours), Some((12, 3, 999)));
        let django = r#"{"message": "7 0 123456 pad"}"#;
        assert_eq!(parse(django), Some((7, 0, 123456)));
        assert_eq!(parse(r#"{"type":"error","error":"x"}"#), None);
        assert_eq!(parse(r#"{"message": "hello there"}"#), None);
    }

    #[test]
    fn parses_deliveries_of_each_protocol() {
        let ours = r#"{"type":"chat.message","room":"bench","user":"c1","message":"12 3 999 xxx"}"#;
        assert_eq!(parse_delivery(Protocol::Channels, ours), Some((12, 3, 999)));
        // The same object, as the socket.io peer emits it.
        let sio = format!(r#"42["chat.message",{ours}]"#);
        assert_eq!(parse_delivery(Protocol::Socketio, &sio), Some((12, 3, 999)));
        // Another event with the same data, a ping, a frame of the other protocol: none.
        let other = format!(r#"42["notice",{ours}]"#);
        assert_eq!(parse_delivery(Protocol::Socketio, &other), None);
        assert_eq!(parse_delivery(Protocol::Socketio, "2"), None);
        assert_eq!(parse_delivery(Protocol::Socketio, ours), None);
    }
}
