#!/usr/bin/env python3
"""One table: switchboard's in-memory layer (criterion estimates) against the peer's table.

usage: bench_memory_report.py CRITERION_DIR PEER_OUTPUT
"""
import json
import re
import sys
from pathlib import Path


def criterion_rates(root):
    rates = {}
    for est in Path(root).glob("memory_*/**/new/estimates.json"):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        elements = (bench.get("throughput") or {}).get("Elements")
        if not elements:
            continue
        mean_ns = json.loads(est.read_text())["mean"]["point_estimate"]
        rates[bench["full_id"]] = elements / (mean_ns / 1e9)
    return rates


def peer_rates(text):
    """Rows of the peer's markdown tables: p2p msgs/s and fan-out deliveries/s by N."""
    p2p, fan = None, {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4:
            continue
        num = lambda s: float(s.replace(",", "").replace("*", ""))
        try:
            if cells[0] == "memory" and cells[1] == "1 proc":
                p2p = num(cells[2])
            elif cells[0] == "memory" and re.fullmatch(r"[\d,]+", cells[1]):
                # | memory | N | layer instances | M group_sends | deliveries/s | ...
                fan[int(cells[1].replace(",", ""))] = num(cells[4])
        except ValueError:
            continue
    return p2p, fan


def main():
    ours = criterion_rates(sys.argv[1])
    p2p, fan = peer_rates(Path(sys.argv[2]).read_text())
    print("| case | switchboard variant | switchboard /s | Channels InMemoryChannelLayer /s | ratio |")
    print("|---|---|---:|---:|---:|")
    def key(item):
        parts = item[0].split("/")
        n = int(parts[-1]) if parts[-1].isdigit() else 0
        return (parts[0] != "memory_p2p", n, parts[1:-1])

    for full_id, rate in sorted(ours.items(), key=key):
        parts = full_id.split("/")
        group, variant, n = parts[0], "/".join(parts[1:-1]), parts[-1]
        if group == "memory_p2p":
            peer, case = p2p, "point-to-point, msgs/s"
        else:
            peer, case = fan.get(int(n)), f"group_send to {n} members, deliveries/s"
        ratio = f"{rate / peer:,.0f}×" if peer else "-"
        print(f"| {case} | {variant} | {rate:,.0f} | {peer and f'{peer:,.0f}' or '-'} | {ratio} |")


if __name__ == "__main__":
    main()
