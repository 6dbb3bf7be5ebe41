//! The coordinator: splits the clients over worker processes, samples the server's memory,
//! starts the senders once everybody is connected, gathers and prints the results.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::worker::{Done, Event, SPEC_ENV, Spec};
use crate::{Args, Error};

/// The result of a run, as printed in JSON.
#[derive(Serialize, Debug, Default)]
pub(crate) struct Report {
    label: String,
    clients: usize,
    senders: usize,
    messages: u64,
    rate: f64,
    connected: usize,
    connect_failed: usize,
    connect_s: f64,
    expected: u64,
    received: u64,
    lost: u64,
    misordered: u64,
    clients_short: usize,
    send_errors: u64,
    timed_out: bool,
    elapsed_s: f64,
    deliveries_per_s: f64,
    send_s: f64,
    lat_ms_p50: f64,
    lat_ms_p90: f64,
    lat_ms_p99: f64,
    lat_ms_max: f64,
    /// (quantile, latency in ms) pairs for a CDF plot.
    lat_ms_cdf: Vec<(f64, f64)>,
    rss_before_kb: Option<u64>,
    rss_after_connect_kb: Option<u64>,
    rss_after_hold_kb: Option<u64>,
    kb_per_conn: Option<f64>,
    members_after_close: Option<u64>,
    members_gone_s: Option<f64>,
    /// The servers' CPU time (user + system) from the senders' start until every result was in.
    server_cpu_s: Option<f64>,
    /// `server_cpu_s` per message received, in µs.
    server_cpu_us_per_delivery: Option<f64>,
    /// The load generator's own CPU time (its worker processes', user + system) over the same
    /// span: on a machine it shares with the server, it bounds the deliveries/s of a blast.
    client_cpu_s: Option<f64>,
    /// `client_cpu_s` per message received, in µs.
    client_cpu_us_per_delivery: Option<f64>,
}

/// A process's CPU time so far (user + system, `/proc/PID/stat`), in seconds.
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_s_of_stat(&stat, clock_ticks()?)
}

/// utime + stime (fields 14 and 15, counted after the parenthesised command name, which may
/// hold spaces) of a `/proc/PID/stat` line, in seconds at `ticks` per second.
fn cpu_s_of_stat(stat: &str, ticks: f64) -> Option<f64> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> Option<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    (ticks > 0).then_some(ticks as f64)
}

fn total_cpu_s(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_s(p)).sum()
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_kb(p)).sum()
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

async fn tell(workers: &mut [Worker], command: &str) {
    for w in workers.iter_mut() {
        let _ = w.stdin.write_all(format!("{command}\n").as_bytes()).await;
        let _ = w.stdin.flush().await;
    }
}

/// A GET that returns the body as JSON (for `--members-url`), through a plain TCP request.
async fn get_json(url: &str) -> Result<serde_json::Value, Error> {
    use tokio::io::AsyncReadExt;
    let uri: http::Uri = url.parse()?;
    let authority = uri
        .authority()
        .ok_or("members URL without host")?
        .to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut stream = tokio::net::TcpStream::connect(&authority).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or("no HTTP body")?;
    Ok(serde_json::from_str(body.trim())?)
}

async fn warm_up(args: &Args) {
    // One client joins, sends one message, reads it back, leaves: lazy state in the server
    // (pools, caches) exists before the memory baseline is taken.
    let spec = Spec {
        worker: usize::MAX,
        protocol: args.protocol,
        urls: args
            .urls
            .iter()
            .map(|u| {
                u.replace("/bench/", "/warmup/")
                    .replace("room=bench", "room=warmup")
            })
            .collect(),
        first_client: usize::MAX / 2,
        clients: 1,
        senders: 1,
        first_sender: 0,
        total_senders: 1,
        messages: 1,
        rate_per_sender: 0.0,
        payload: 10,
        origin: args.origin.clone(),
        source_ips: 1,
        connect_concurrency: 1,
        idle_timeout: 5.0,
        max_seconds: 10.0,
    };
    if let Ok((mut child, mut stdin, mut lines)) = spawn(&spec, 1) {
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(Event::Connected { .. }) => {
                        let _ = stdin.write_all(b"go\n").await;
                    }
                    Ok(Event::Done(_)) => {
                        let _ = stdin.write_all(b"close\n").await;
                    }
                    Ok(Event::Closed { .. }) => break,
                    _ => {}
                }
            }
        })
        .await;
        let _ = child.kill().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

fn spawn(spec: &Spec, threads: usize) -> Result<(Child, ChildStdin, Lines), Error> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env(SPEC_ENV, serde_json::to_string(spec)?)
        .env("SWITCHBOARD_LOAD_THREADS", threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take().ok_or("no worker stdin")?;
    let stdout = child.stdout.take().ok_or("no worker stdout")?;
    Ok((child, stdin, BufReader::new(stdout).lines()))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Runs a load test as `args` describe and prints the result.
pub(crate) async fn run(args: Args) -> Result<(), Error> {
    if args.clients == 0 || args.senders == 0 || args.senders > args.clients {
        return Err("need 1 <= senders <= clients".into());
    }
    if args.urls.is_empty() {
        return Err("need at least one --url".into());
    }
    for (name, v) in [
        ("--settle", args.settle),
        ("--hold", args.hold),
        ("--idle-timeout", args.idle_timeout),
        ("--max-seconds", args.max_seconds),
        ("--rate", args.rate),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!(
                "{name} must be a non-negative number of seconds (or msgs/s), got {v}"
            )
            .into());
        }
    }
    let per = args.per_process.clamp(1, 19_000);
    let n_workers = args.clients.div_ceil(per);
    let source_ips = args
        .source_ips
        .unwrap_or_else(|| args.clients.div_ceil(25_000).max(1))
        .min(250);
    if !args.no_warmup {
        warm_up(&args).await;
    }
    let rss_before = total_rss(&args.server_pids);

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut workers = Vec::with_capacity(n_workers);
    let rate_per_sender = args.rate / args.senders as f64;
    for w in 0..n_workers {
        let first_client = w * per;
        let clients = per.min(args.clients - first_client);
        let senders = args.senders.saturating_sub(first_client).min(clients);
        let spec = Spec {
            worker: w,
            protocol: args.protocol,
            urls: args.urls.clone(),
            first_client,
            clients,
            senders,
            first_sender: first_client.min(args.senders),
            total_senders: args.senders,
            messages: args.messages,
            rate_per_sender,
            payload: args.payload,
            origin: args.origin.clone(),
            source_ips,
            connect_concurrency: args.connect_concurrency,
            idle_timeout: args.idle_timeout,
            max_seconds: args.max_seconds,
        };
        let (child, stdin, mut lines) = spawn(&spec, args.threads)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(ev) => {
                        let _ = tx.send((w, ev));
                    }
                    Err(_) => eprintln!("worker {w}: {line}"),
                }
            }
        });
        workers.push(Worker { child, stdin });
    }
    drop(tx);

    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.max_seconds + 30.0);
    let mut progress = vec![(0usize, 0u64); n_workers];
    let mut last_print = tokio::time::Instant::now();
    let print_progress = |progress: &[(usize, u64)], phase: &str| {
        let c: usize = progress.iter().map(|p| p.0).sum();
        let r: u64 = progress.iter().map(|p| p.1).sum();
        eprint!(
            "\r{phase}: {c}/{} connected, {r} delivered   ",
            args.clients
        );
        let _ = std::io::stderr().flush();
    };

    // Phase 1: connect.
    let mut report = Report {
        label: args.label.clone(),
        clients: args.clients,
        senders: args.senders,
        messages: args.messages,
        rate: args.rate,
        rss_before_kb: rss_before,
        ..Report::default()
    };
    let mut connected_workers = 0;
    while connected_workers < n_workers {
        let next = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| "timed out while connecting")?;
        let Some((w, ev)) = next else {
            return Err("a worker exited while connecting".into());
        };
        match ev {
            Event::Progress {
                connected,
                received,
            } => progress[w] = (connected, received),
            Event::Connected {
                connected,
                failed,
                connect_s,
                first_error,
            } => {
                progress[w].0 = connected;
                report.connected += connected;
                report.connect_failed += failed;
                report.connect_s = report.connect_s.max(connect_s);
                if let Some(e) = first_error {
                    eprintln!("\nworker {w}: {failed} connections failed, first error: {e}");
                }
                connected_workers += 1;
            }
            _ => {}
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            print_progress(&progress, "connecting");
            last_print = tokio::time::Instant::now();
        }
    }
    print_progress(&progress, "connected");
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    report.rss_after_connect_kb = total_rss(&args.server_pids);
    if args.hold > 0.0 {
        eprintln!(
            "\nholding {} connections idle for {} s",
            report.connected, args.hold
        );
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        report.rss_after_hold_kb = total_rss(&args.server_pids);
    }
    let rss_connected = report.rss_after_hold_kb.or(report.rss_after_connect_kb);
    if let (Some(a), Some(b)) = (rss_before, rss_connected)
        && report.connected > 0
    {
        report.kb_per_conn = Some((b as f64 - a as f64) / report.connected as f64);
    }

    // Phase 2: send and receive.
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    let cpu_before = total_cpu_s(&args.server_pids);
    let client_cpu_before = total_cpu_s(&worker_pids);
    tell(&mut workers, "go").await;
    let mut done: Vec<Option<Done>> = vec![None; n_workers];
    while done.iter().any(Option::is_none) {
        let next = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| "timed out waiting for results")?;
        let Some((w, ev)) = next else {
            return Err("a worker exited before reporting".into());
        };
        match ev {
            Event::Progress {
                connected,
                received,
            } => progress[w] = (connected, received),
            Event::Done(d) => done[w] = Some(d),
            _ => {}
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            print_progress(&progress, "running");
            last_print = tokio::time::Instant::now();
        }
    }
    let cpu_after = total_cpu_s(&args.server_pids);
    let client_cpu_after = total_cpu_s(&worker_pids);
    eprintln!();

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let (mut first_send, mut last_send, mut last_recv) = (u64::MAX, 0u64, 0u64);
    for d in done.iter().flatten() {
        report.received += d.received;
        report.expected += d.expected;
        report.misordered += d.misordered;
        report.clients_short += d.clients_short;
        report.send_errors += d.send_errors;
        report.timed_out |= d.timed_out;
        if let Some(f) = d.first_send_ns {
            first_send = first_send.min(f);
        }
        if let Some(l) = d.last_send_ns {
            last_send = last_send.max(l);
        }
        last_recv = last_recv.max(d.last_recv_ns);
        let bytes = base64::engine::general_purpose::STANDARD.decode(&d.histogram)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| format!("histogram: {e:?}"))?;
        hist.add(&h).map_err(|e| format!("histogram: {e:?}"))?;
    }
    // Clients that never connected expected messages too.
    report.expected +=
        args.clients.saturating_sub(report.connected) as u64 * args.senders as u64 * args.messages;
    report.lost = report.expected.saturating_sub(report.received);
    let per_delivery = |cpu: f64| (report.received > 0).then(|| cpu * 1e6 / report.received as f64);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        report.server_cpu_s = Some(b - a);
        report.server_cpu_us_per_delivery = per_delivery(b - a);
    }
    if let (Some(a), Some(b)) = (client_cpu_before, client_cpu_after) {
        report.client_cpu_s = Some(b - a);
        report.client_cpu_us_per_delivery = per_delivery(b - a);
    }
    if first_send != u64::MAX && last_recv > first_send {
        report.elapsed_s = (last_recv - first_send) as f64 / 1e9;
        report.deliveries_per_s = report.received as f64 / report.elapsed_s;
        report.send_s = last_send.saturating_sub(first_send) as f64 / 1e9;
    }
    if !hist.is_empty() {
        report.lat_ms_p50 = ms(hist.value_at_quantile(0.50));
        report.lat_ms_p90 = ms(hist.value_at_quantile(0.90));
        report.lat_ms_p99 = ms(hist.value_at_quantile(0.99));
        report.lat_ms_max = ms(hist.max());
        let mut q = 0.0;
        while q <= 1.0 {
            report.lat_ms_cdf.push((q, ms(hist.value_at_quantile(q))));
            q += if q < 0.9 { 0.02 } else { 0.002 };
        }
    }

    // Phase 3: close everything, then check the room is empty.
    tell(&mut workers, "close").await;
    let close_start = tokio::time::Instant::now();
    let mut closed = 0;
    while closed < n_workers {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some((_, Event::Closed { .. }))) => closed += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
    }
    if let Some(url) = &args.members_url {
        let mut members = None;
        while close_start.elapsed() < Duration::from_secs(30) {
            members = get_json(url)
                .await
                .ok()
                .and_then(|v| v.get("members").and_then(|m| m.as_u64()));
            if members == Some(0) {
                report.members_gone_s = Some(close_start.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.members_after_close = members;
    }

    print_report(&report);
    if let Some(path) = &args.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", serde_json::to_string(&report)?)?;
    }
    Ok(())
}

fn print_report(r: &Report) {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "{} | C={} S={}x{} {} | {:.0} deliveries/s | p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms | \
         {}/{} received, {} lost, {} out of order | connect {:.2} s ({} failed) | {} KB/conn | \
         server CPU {} s, {} µs/delivery | load generator CPU {} µs/delivery | members after close: {}",
        if r.label.is_empty() { "run" } else { &r.label },
        r.clients,
        r.senders,
        r.messages,
        if r.rate > 0.0 {
            format!("{:.0}/s", r.rate)
        } else {
            "blast".into()
        },
        r.deliveries_per_s,
        r.lat_ms_p50,
        r.lat_ms_p90,
        r.lat_ms_p99,
        r.lat_ms_max,
        r.received,
        r.expected,
        r.lost,
        r.misordered,
        r.connect_s,
        r.connect_failed,
        opt(r.kb_per_conn),
        r.server_cpu_s.map_or("-".to_owned(), |v| format!("{v:.2}")),
        r.server_cpu_us_per_delivery
            .map_or("-".to_owned(), |v| format!("{v:.3}")),
        r.client_cpu_us_per_delivery
            .map_or("-".to_owned(), |v| format!("{v:.3}")),
        r.members_after_close
            .map_or("-".to_owned(), |m| m.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::cpu_s_of_stat;

    #[test]
    fn reads_cpu_time_from_stat() {
        // A command name with a space and a parenthesis; utime 250, stime 50 ticks.
        let stat = "4242 (my (chat) srv) S 1 4242 4242 0 -1 4194560 1033 0 0 0 250 50 0 0 20 0 \
                    3 0 12345 123456789 2048 18446744073709551615";
        assert_eq!(cpu_s_of_stat(stat, 100.0), Some(3.0));
        assert_eq!(cpu_s_of_stat("4242 (x) S 1 2", 100.0), None);
        assert_eq!(cpu_s_of_stat("garbage", 100.0), None);
    }
}
