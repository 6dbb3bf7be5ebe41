#!/usr/bin/env python3
"""Turns scripts/bench-e2e's JSON lines into one side-by-side table and two plots.

usage: bench_e2e_report.py RESULTS.jsonl OUTDIR
"""
import json
import sys
from collections import defaultdict
from pathlib import Path


def load(path):
    runs, ghosts = {}, {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if "redis_group_members_after_close" in r:
            ghosts[r["label"]] = r["redis_group_members_after_close"]
        else:
            runs[r["label"]] = r
    return runs, ghosts


def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


def main():
    results, outdir = sys.argv[1], Path(sys.argv[2])
    runs, ghosts = load(results)
    rows = defaultdict(dict)  # (layer, case) -> system -> run
    for label, r in runs.items():
        system, layer, case = label.split("/", 2)
        rows[(layer, case)][system] = r

    def left(system, layer, case, r):
        if r is None:
            return "-"
        if r.get("members_after_close") is not None:
            return str(r["members_after_close"])
        g = ghosts.get(f"{system}/{layer}/{case}")
        return "-" if g is None else str(g)

    print("| layer | case | switchboard deliveries/s | Channels deliveries/s | ratio | p50 ms (sb / ch) | p99 ms (sb / ch) "
          "| lost (sb / ch) | KB/conn (sb / ch) | connect failures (sb / ch) | members left after close (sb / ch) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    order = {"memory": 0, "redis": 1, "pubsub": 2}

    def case_key(k):
        layer, case = k
        c, mode = case.split("/")
        return (order.get(layer, 9), int(c[1:]), mode)

    for key in sorted(rows, key=case_key):
        layer, case = key
        sb, ch = rows[key].get("switchboard"), rows[key].get("channels")
        ratio = "-"
        if sb and ch and ch.get("deliveries_per_s"):
            ratio = f"{sb['deliveries_per_s'] / ch['deliveries_per_s']:,.0f}×"
        g = lambda r, k, nd=0: fmt(r.get(k), nd) if r else "-"
        print(f"| {layer} | {case} | {g(sb, 'deliveries_per_s')} | {g(ch, 'deliveries_per_s')} | {ratio} "
              f"| {g(sb, 'lat_ms_p50', 2)} / {g(ch, 'lat_ms_p50', 1)} | {g(sb, 'lat_ms_p99', 2)} / {g(ch, 'lat_ms_p99', 1)} "
              f"| {g(sb, 'lost')} / {g(ch, 'lost')} | {g(sb, 'kb_per_conn', 1)} / {g(ch, 'kb_per_conn', 1)} "
              f"| {g(sb, 'connect_failed')} / {g(ch, 'connect_failed')} "
              f"| {left('switchboard', layer, case, sb)} / {left('channels', layer, case, ch)} |")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plots)")
        return

    # Deliveries/s against clients, blast.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, style in (("switchboard", "-o"), ("channels", "--s")):
        for layer in ("memory", "redis", "pubsub"):
            pts = sorted(
                (int(case.split("/")[0][1:]), r["deliveries_per_s"])
                for (l, case), systems in rows.items()
                if l == layer and case.endswith("/blast") and (r := systems.get(system)) and r.get("deliveries_per_s")
            )
            if pts:
                ax.plot(*zip(*pts), style, label=f"{system} ({layer})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients in the room")
    ax.set_ylabel("deliveries/s (blast)")
    ax.set_title("Chat fan-out throughput, one server process, 2 cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "deliveries-vs-clients.svg")

    # Latency CDF, C = 1000 paced at ~1,000 deliveries/s.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (layer, case), systems in sorted(rows.items()):
        if case != "C1000/paced":
            continue
        for system, r in systems.items():
            cdf = r.get("lat_ms_cdf") or []
            if cdf:
                qs, ms = zip(*cdf)
                ax.plot([max(m, 0.01) for m in ms], qs, label=f"{system} ({layer})",
                        linestyle="-" if system == "switchboard" else "--")
    ax.set_xscale("log")
    ax.set_xlabel("latency, send → receipt (ms)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("Latency CDF, 1,000 clients, 1,000 deliveries/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "latency-cdf-c1000-paced.svg")
    print(f"plots: {outdir}/deliveries-vs-clients.svg, {outdir}/latency-cdf-c1000-paced.svg")


if __name__ == "__main__":
    main()
