"""Groups a heaptrack flamegraph file (``heaptrack_print -F FILE --flamegraph-cost-type
leaked``) by the nearest frames that are not allocator plumbing, and prints bytes per
connection for each group, largest first.

    python3 scripts/heap_per_conn.py STACKS CONNECTIONS [ROWS]
"""

import collections
import re
import sys

# Frames that only carry an allocation (the allocator, Vec/HashMap growth, tokio's task cell).
PLUMBING = re.compile(
    r"alloc|raw_vec|RawVec|rdl_|malloc|reserve|with_capacity|Cell\$LT\$T\$C\$S\$GT\$::new|"
    r"grow|realloc|^0x|exchange_malloc"
)


def clean(frame: str) -> str:
    frame = re.sub(r"::h[0-9a-f]{16}", "", frame)
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$C$", ","), ("..", "::"),
                 ("$u7b$", "{"), ("$u7d$", "}")):
        frame = frame.replace(a, b)
    return frame[:110]


def main() -> None:
    path, conns = sys.argv[1], int(sys.argv[2])
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    total = 0
    groups: collections.Counter[str] = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            size = int(n)
            total += size
            if size == 0:
                continue
            frames = [fr for fr in stack.rstrip(";").split(";") if not PLUMBING.search(fr)]
            groups[" <- ".join(clean(fr) for fr in reversed(frames[-2:]))] += size
    print(f"live heap: {total} bytes, {total / conns:.0f} bytes per connection (C = {conns})")
    print("| bytes/conn | allocated in (nearest frames) |")
    print("|---:|---|")
    for key, size in groups.most_common(rows):
        print(f"| {size / conns:.0f} | `{key}` |")


if __name__ == "__main__":
    main()
