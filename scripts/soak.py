"""The soak's driver and judge, run by scripts/soak (which builds, starts redis-server and the
two chat processes, and stops everything on exit). Python's standard library only.

It reads each chat process's idle baseline (alive tasks), starts the steady load
(switchboard-load) and the churn (switchboard-load's `churn`) against both processes, samples
RSS and alive tasks every few seconds until both have finished, then checks what scripts/soak
describes and prints one summary line. Exit status 1 if an assertion failed.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

ROOM = "soak"
# Steady traffic: clients in the room, senders among them, and their total rate.
CLIENTS, SENDERS, RATE = 30, 4, 20.0
# Churn: connections open at once, each staying 50 to CHURN_MAX_MS ms.
CHURN_LOOPS, CHURN_MAX_MS = 12, 500


def metrics(port):
    """The gauges this soak reads from a chat process's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    want = {
        "switchboard_tokio_alive_tasks": "tasks",
        "switchboard_connections_open": "open",
        "switchboard_layer_channels": "channels",
        "switchboard_layer_groups": "groups",
    }
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in want:
            out[want[parts[0]]] = int(float(parts[1]))
    return out


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def redis(port, *args):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "--raw", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return [l for l in out.splitlines() if l]


def keys(port, pattern):
    return redis(port, "--scan", "--pattern", pattern)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--layer", default="core")
    ap.add_argument("--rundir", required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--chat", action="append", required=True, help="PID:PORT")
    a = ap.parse_args()
    chats = [tuple(int(x) for x in c.split(":")) for c in a.chat]
    duration = a.minutes * 60
    interval = max(1.0, min(5.0, duration / 40))
    failures = []

    urls = [f"ws://127.0.0.1:{port}/ws/chat/{ROOM}/" for _, port in chats]
    url_args = [x for u in urls for x in ("--url", u)]
    # The tasks a process starts once, at its first connection or message (the layer's receive
    # and upkeep loops), are no leak: a short warm-up (3 s of churn, 10 messages to 4 clients)
    # starts them, and the idle baseline is read after it. Read twice, a second apart, and
    # keep the larger.
    tasks_fresh = [metrics(port)["tasks"] for _, port in chats]
    warmup = [
        subprocess.Popen([f"{a.bin}/churn", "--concurrency", "2", "--seconds", "3", *url_args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([f"{a.bin}/switchboard-load", "-C", "4", "--senders", "2", "-S", "5",
                          "--rate", "10", "--per-process", "4", "--threads", "1", *url_args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    for p in warmup:
        if p.wait(timeout=60) != 0:
            failures.append(f"the warm-up's {p.args[0]} exited with {p.returncode}")
    time.sleep(2)
    first = [metrics(port)["tasks"] for _, port in chats]
    time.sleep(1)
    baseline = [max(f, metrics(port)["tasks"]) for f, (_, port) in zip(first, chats)]
    rss_idle = [rss_kb(pid) for pid, _ in chats]

    per_sender = int(RATE * duration / SENDERS)
    load_json = os.path.join(a.rundir, "load.json")
    load_cmd = [f"{a.bin}/switchboard-load", "-C", str(CLIENTS), "--senders", str(SENDERS),
                "-S", str(per_sender), "--rate", str(RATE), "--idle-timeout", "20",
                "--max-seconds", str(duration + 180), "--per-process", str(CLIENTS),
                "--threads", "1", "--label", f"soak-{a.layer}", "--json", load_json]
    churn_cmd = [f"{a.bin}/churn", "--concurrency", str(CHURN_LOOPS), "--seconds",
                 str(duration), "--min-ms", "50", "--max-ms", str(CHURN_MAX_MS),
                 "--nickname-prefix", "churn"]
    load_cmd += url_args
    churn_cmd += url_args
    load_log = open(os.path.join(a.rundir, "load.log"), "w")
    churn_out = open(os.path.join(a.rundir, "churn.json"), "w")
    churn_err = open(os.path.join(a.rundir, "churn.log"), "w")
    start = time.monotonic()
    load = subprocess.Popen(load_cmd, stdout=load_log, stderr=subprocess.STDOUT)
    churn = subprocess.Popen(churn_cmd, stdout=churn_out, stderr=churn_err)

    samples = []  # (t, [rss per process], [tasks per process], [open per process])
    samples_path = os.path.join(a.rundir, "samples.jsonl")
    with open(samples_path, "w") as sf:
        # Bounded: the run, plus the load's own limit and a margin.
        limit = duration + 240
        while (load.poll() is None or churn.poll() is None) and time.monotonic() - start < limit:
            t = time.monotonic() - start
            rss = [rss_kb(pid) for pid, _ in chats]
            m = [metrics(port) for _, port in chats]
            row = (t, rss, [x["tasks"] for x in m], [x.get("open", 0) for x in m])
            samples.append(row)
            sf.write(json.dumps(row) + "\n")
            sf.flush()
            time.sleep(interval)
    for name, p in (("load", load), ("churn", churn)):
        if p.poll() is None:
            p.kill()
            failures.append(f"{name} did not finish within the limit")
        elif p.returncode != 0:
            failures.append(f"{name} exited with {p.returncode} (logs in {a.rundir})")
    ran = time.monotonic() - start
    churn_out.close()
    load_log.close()

    # RSS: median at the end of the warm-up (15–20 % of the run) vs the largest sample of the
    # last 20 % of the run (while the load still ran).
    rss_rows = []
    for i, (pid, _) in enumerate(chats):
        warm = [s[1][i] for s in samples if 0.15 * duration <= s[0] <= 0.20 * duration]
        end = [s[1][i] for s in samples if 0.80 * duration <= s[0] <= duration]
        if not warm or not end:
            failures.append(f"process {i + 1}: too few RSS samples ({len(samples)})")
            rss_rows.append((rss_idle[i], 0, 0, 0.0))
            continue
        w, e = statistics.median(warm), max(end)
        growth = e / w - 1
        rss_rows.append((rss_idle[i], w, e, growth))
        if growth > 0.05:
            failures.append(f"process {i + 1}: RSS grew {growth:+.1%} after warm-up ({w:.0f} → {e} KB)")

    # Every client has left: connections, alive tasks, and groups in Redis come back.
    deadline = time.monotonic() + 30
    while True:
        m = [metrics(port) for _, port in chats]
        back = all(x["tasks"] <= b and x.get("open", 0) == 0 for x, b in zip(m, baseline))
        if back or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    tasks_after = [x["tasks"] for x in m]
    open_after = [x.get("open", 0) for x in m]
    if not back:
        failures.append(f"alive tasks {tasks_after} (open connections {open_after}) did not come "
                        f"back to the baseline {baseline} within 30 s")
    group_pattern = f"{a.prefix}*group*"
    deadline = time.monotonic() + 10
    while True:
        gkeys = keys(a.redis_port, group_pattern)
        gchans = redis(a.redis_port, "PUBSUB", "CHANNELS", group_pattern)
        if not gkeys and not gchans or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if gkeys or gchans:
        failures.append(f"groups left in Redis after every client left: keys {gkeys[:5]} "
                        f"({len(gkeys)}), channels {gchans[:5]} ({len(gchans)})")
    all_keys_running = keys(a.redis_port, f"{a.prefix}*")

    # Stop the processes (SIGTERM: a drain), then nothing under the prefix may stay.
    for pid, _ in chats:
        os.kill(pid, signal.SIGTERM)
    for pid, _ in chats:
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    deadline = time.monotonic() + 10
    while True:
        left = keys(a.redis_port, f"{a.prefix}*")
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if left:
        ttls = [redis(a.redis_port, "PTTL", k)[0] for k in left[:5]]
        failures.append(f"keys left under {a.prefix} after the processes stopped: {left[:5]} "
                        f"(pttl {ttls}; {len(left)} in all)")

    with open(load_json) as f:
        rep = json.loads(f.readline())
    with open(os.path.join(a.rundir, "churn.json")) as f:
        ch = json.loads(f.readline())
    if rep["lost"] or rep["misordered"] or rep["connect_failed"] or rep["send_errors"]:
        failures.append(f"steady clients: {rep['lost']} lost, {rep['misordered']} out of order, "
                        f"{rep['connect_failed']} failed to connect, {rep['send_errors']} send errors")
    if ch["failed"]:
        failures.append(f"churn: {ch['failed']} connections failed (see churn.log)")

    tasks_max = [max(s[2][i] for s in samples) for i in range(len(chats))]
    per = "; ".join(
        f"p{i + 1} rss idle {r[0]} KB warm {r[1]:.0f} KB end-max {r[2]} KB ({r[3]:+.1%}), "
        f"tasks fresh {tasks_fresh[i]} idle {baseline[i]} max {tasks_max[i]} after {tasks_after[i]}"
        for i, r in enumerate(rss_rows))
    print(f"soak {a.layer} {a.minutes:g} min ({ran:.0f} s, {len(samples)} samples every "
          f"{interval:g} s): {per}; churn {ch['connects']} connections "
          f"({ch['closed']} closed, {ch['dropped']} dropped, {ch['failed']} failed); steady "
          f"C={CLIENTS} {SENDERS} senders {RATE:g}/s: {rep['received']}/{rep['expected']} "
          f"delivered, {rep['lost']} lost, {rep['misordered']} out of order, p99 "
          f"{rep['lat_ms_p99']:.1f} ms; groups left {len(gkeys)} keys {len(gchans)} channels; "
          f"keys under the prefix while running {len(all_keys_running)}, after stop {len(left)}"
          f" → {'PASS' if not failures else 'FAIL'}")
    for f_ in failures:
        print(f"soak: FAIL: {f_}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
