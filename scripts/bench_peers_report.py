"""The table and the summary line of scripts/bench-peers.

    python3 scripts/bench_peers_report.py RESULTS.jsonl FLOOR.txt
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
    print(
        f"peers: switchboard/hand-written {ratio(hw)}, switchboard/socketioxide {ratio(sio)} "
        "(C=1000 sustained, server CPU per delivery)"
    )


main()
