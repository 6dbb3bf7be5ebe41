"""The table, the summary line and the plots of scripts/bench-peers.

    python3 scripts/bench_peers_report.py RESULTS.jsonl FLOOR.txt [PLOT_DIR]

With PLOT_DIR (and matplotlib), writes peers-blast.svg (blast deliveries/s against C),
peers-cpu.svg (server CPU per delivery against C, blast and paced) and
peers-latency-cdf-c1000.svg (the first sustained run's latency CDFs) there.
"""

import json
import re
import sys

SYSTEMS = ["switchboard", "broadcast", "socketioxide", "floor"]
NAMES = {
    "switchboard": "switchboard chat (memory)",
    "broadcast": "peer-broadcast (axum + broadcast)",
    "socketioxide": "peer-socketio (socketioxide)",
    "floor": "peer-floor (1 write/member, no queue)",
}


def cases(rows):
    seen = []
    for r in rows:
        c = r["label"].split("/", 1)[1]
        if c not in seen:
            seen.append(c)
    return seen


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def floor_rows(path):
    """(C, deliveries/s, p50, p99) of loopback-floor's median round (by max), per C."""
    out, c, rounds = [], None, []

    def flush():
        if c is not None and rounds:
            rounds.sort(key=lambda r: r[2])
            p50, p99, mx = rounds[len(rounds) // 2]
            out.append((c, c / (mx / 1000.0), p50, p99))

    with open(path) as f:
        for line in f:
            m = re.match(r"C=(\d+)", line)
            if m:
                flush()
                c, rounds = int(m.group(1)), []
                continue
            m = re.search(r"p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms", line)
            if m:
                rounds.append(tuple(float(x) for x in m.groups()))
    flush()
    return out


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    by = {r["label"]: r for r in rows}
    print(
        "| server | case | deliveries/s | p50 ms | p99 ms | lost | out of order "
        "| server CPU s | CPU µs/delivery | load gen. CPU µs/delivery | idle KB/conn | members left |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases(rows):
        for s in SYSTEMS:
            r = by.get(f"{s}/{case}")
            if r is None:
                continue
            print(
                f"| {NAMES[s]} | {case} | {r['deliveries_per_s']:,.0f} | {r['lat_ms_p50']:.2f} "
                f"| {r['lat_ms_p99']:.2f} | {r['lost']:,} | {r['misordered']:,} "
                f"| {fmt(r.get('server_cpu_s'), '.2f')} "
                f"| {fmt(r.get('server_cpu_us_per_delivery'), '.2f')} "
                f"| {fmt(r.get('client_cpu_us_per_delivery'), '.2f')} "
                f"| {fmt(r.get('kb_per_conn'), '.1f')} "
                f"| {fmt(r.get('members_after_close'), 'd')} |"
            )
    if len(sys.argv) > 2:
        for c, dps, p50, p99 in floor_rows(sys.argv[2]):
            print(
                f"| loopback-floor (TCP only, 1 write/socket/round) | C{c}/one round "
                f"| {dps:,.0f} | {p50:.2f} | {p99:.2f} | - | - | - | - | - | - | - |"
            )

    def cpu(s):
        """The median over the sustained runs (C1000/paced, C1000/paced#N)."""
        v = sorted(
            r["server_cpu_us_per_delivery"]
            for label, r in by.items()
            if label.split("#")[0] == f"{s}/C1000/paced"
            and r.get("server_cpu_us_per_delivery") is not None
        )
        return v[len(v) // 2] if v else None

    sb, hw, sio, fl = (cpu(s) for s in SYSTEMS)
    ratio = lambda peer, own=sb: "-" if not (peer and own) else f"{peer / own:.2f}"
    print()
    for s in SYSTEMS:
        print(f"{NAMES[s]}: sustained server CPU per delivery, median {fmt(cpu(s), '.2f')} µs")
    # The same ratios for peer-floor: the most any server reaches under this load on this machine.
    print(
        f"floor: floor/hand-written {ratio(hw, fl)}, floor/socketioxide {ratio(sio, fl)} "
        "(the highest ratios any server reaches here)"
    )
    if len(sys.argv) > 3:
        plots(rows, sys.argv[3])
    print(
        f"peers: switchboard/hand-written {ratio(hw)}, switchboard/socketioxide {ratio(sio)} "
        "(C=1000 sustained, server CPU per delivery)"
    )


def plots(rows, outdir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plots)")
        return
    import os

    def points(system, mode, key):
        pts = {}
        for r in rows:
            s, case = r["label"].split("/", 1)
            c, m = case.split("/")
            if s == system and m.split("#")[0] == mode and r.get(key) is not None:
                # The first of repeated runs, as in the table's first row of the case.
                pts.setdefault(int(c[1:]), r[key])
        return sorted(pts.items())

    style = {"switchboard": "-o", "broadcast": "--s", "socketioxide": ":^", "floor": "-.x"}
    written = []

    def save(fig, ax, name, title, ylabel, xlabel="clients in the room"):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, name)
        fig.savefig(path)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in SYSTEMS:
        pts = points(s, "blast", "deliveries_per_s")
        if pts:
            ax.plot(*zip(*pts), style[s], label=NAMES[s])
    save(fig, ax, "peers-blast.svg", "Blast against the Rust peers, 2 cores shared with the load",
         "deliveries/s (blast)")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in SYSTEMS:
        for mode, alpha in (("paced", 1.0), ("blast", 0.5)):
            pts = points(s, mode, "server_cpu_us_per_delivery")
            if pts:
                ax.plot(*zip(*pts), style[s], alpha=alpha, label=f"{NAMES[s]}, {mode}")
    ax.set_yscale("log")
    save(fig, ax, "peers-cpu.svg", "Server CPU per delivery", "µs of server CPU per delivery")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in SYSTEMS:
        r = next((r for r in rows if r["label"].split("#")[0] == f"{s}/C1000/paced"), None)
        if r and r.get("lat_ms_cdf"):
            qs, ms = zip(*r["lat_ms_cdf"])
            ax.plot([max(m, 0.01) for m in ms], qs, style[s][:-1], label=NAMES[s])
    save(fig, ax, "peers-latency-cdf-c1000.svg", "Latency CDF, 1,000 clients, 100,000 deliveries/s",
         "fraction of deliveries", xlabel="latency, send → receipt (ms)")
    print("plots: " + ", ".join(written))


main()
