#!/usr/bin/env python3
"""Fast sender vs. slower readers, against an already running chat example.

bench.py URL [--readers 50] [--messages 3000] [--size 2048] [--idle-reader] [--json FILE]

URL is the room's WebSocket, e.g. ws://127.0.0.1:18001/ws/chat/fast/
Each message text is "<seq:06d>:" padded with 'x' to --size bytes.
Readers count chat.message frames from the sender, check order / duplicates,
record their close code. Prints one summary line.
"""
import argparse
import asyncio
import json
import sys
import time
import urllib.parse
import urllib.request

import websockets
from websockets.exceptions import ConnectionClosed

OVERALL_TIMEOUT = 120.0
QUIET = 5.0


class Reader:
    def __init__(self, idx):
        self.idx = idx
        self.count = 0
        self.last_seq = -1
        self.in_order = True
        self.seen = set()
        self.dups = 0
        self.errors = []  # {"type":"error"} frames
        self.other = 0
        self.close_code = None
        self.close_reason = None
        self.closed = False
        self.last_rx = time.monotonic()
        self.ws = None


def close_info(ws, exc=None):
    rcvd = getattr(exc, "rcvd", None) if exc is not None else None
    if rcvd is None and ws is not None:
        rcvd = getattr(getattr(ws, "protocol", None), "close_rcvd", None)
    if rcvd is not None:
        return rcvd.code, rcvd.reason
    code = getattr(ws, "close_code", None)
    return (f"{code}(no close frame received)" if code is not None else "unknown"), None


async def read_loop(r: Reader, sender_nick):
    ws = r.ws
    try:
        async for raw in ws:
            r.last_rx = time.monotonic()
            try:
                obj = json.loads(raw)
            except Exception:
                r.other += 1
                continue
            t = obj.get("type")
            if t == "chat.message" and obj.get("user") == sender_nick:
                seq = int(obj["message"][:6])
                if seq in r.seen:
                    r.dups += 1
                else:
                    r.seen.add(seq)
                    r.count += 1
                if seq <= r.last_seq:
                    r.in_order = False
                r.last_seq = max(r.last_seq, seq)
            elif t == "error":
                r.errors.append(obj.get("error"))
            else:
                r.other += 1
    except ConnectionClosed as e:
        r.closed = True
        r.close_code, r.close_reason = close_info(ws, e)
        return
    except Exception as e:  # noqa
        r.closed = True
        r.close_code, r.close_reason = "exc", repr(e)
        return
    # iterator ended normally = connection closed
    r.closed = True
    r.close_code, r.close_reason = close_info(ws)


async def discard_loop(ws, stats):
    try:
        async for _ in ws:
            stats["rx"] += 1
    except ConnectionClosed as e:
        stats["closed"] = close_info(ws, e)
    except Exception as e:
        stats["closed"] = ("exc", repr(e))
    else:
        stats["closed"] = close_info(ws)


def members_url(url):
    u = urllib.parse.urlparse(url)
    room = [p for p in u.path.split("/") if p][-1]
    scheme = "https" if u.scheme == "wss" else "http"
    return f"{scheme}://{u.netloc}/chat/rooms/{room}/"


def get_members(murl):
    try:
        with urllib.request.urlopen(murl, timeout=2) as resp:
            return json.loads(resp.read())["members"]
    except Exception:
        return None


def with_nick(url, nick):
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}nickname={nick}"


async def main_async(a):
    kw = dict(ping_interval=None, max_size=2**22, open_timeout=20, close_timeout=3)
    readers = [Reader(i) for i in range(a.readers)]
    # connect readers (in small batches)
    for i in range(0, a.readers, 10):
        batch = readers[i:i + 10]
        conns = await asyncio.gather(*[websockets.connect(with_nick(a.url, f"r{r.idx}"), **kw) for r in batch])
        for r, ws in zip(batch, conns):
            r.ws = ws
    tasks = [asyncio.create_task(read_loop(r, "sender")) for r in readers]

    idle = None
    if a.idle_reader:
        # connects, never reads: tiny client-side queue so the library stops reading the socket
        idle = await websockets.connect(with_nick(a.url, "idle"), max_queue=1, **kw)

    sender = await websockets.connect(with_nick(a.url, "sender"), **kw)
    sstats = {"rx": 0, "closed": None}
    stask = asyncio.create_task(discard_loop(sender, sstats))

    # wait until the room has everyone (or 5 s)
    want = a.readers + (1 if idle else 0) + 1
    murl = members_url(a.url)
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    members = None
    while time.monotonic() - t0 < 5:
        members = await loop.run_in_executor(None, get_members, murl)
        if members is not None and members >= want:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)

    pad = a.size - 7
    send_err = None
    t_send0 = time.monotonic()
    sent = 0
    try:
        for seq in range(a.messages):
            text = f"{seq:06d}:" + "x" * pad
            await sender.send(json.dumps({"message": text}))
            sent += 1
    except Exception as e:
        send_err = repr(e)
    t_send = time.monotonic() - t_send0
    t_sent_at = time.monotonic()

    # wait: all readers have everything (or are closed) or 5 s quiet
    while True:
        now = time.monotonic()
        if all(r.count >= a.messages or r.closed for r in readers):
            break
        last = max(r.last_rx for r in readers)
        if now - max(last, t_sent_at) > QUIET:
            break
        await asyncio.sleep(0.05)
    t_done = time.monotonic() - t_send0
    # snapshot before we close anything ourselves
    snap = {r.idx: (r.count, r.closed, r.close_code, r.close_reason) for r in readers}
    # holes: messages missing before the last one a reader saw (lost mid-stream, not at a cut-off)
    holes = {r.idx: (r.last_seq + 1 - r.count) for r in readers}
    sender_closed_snap = sstats["closed"]

    # idle reader: now read what is there to see whether (and how) it was closed
    idle_info = None
    if idle is not None:
        n = 0
        code = reason = None
        try:
            async with asyncio.timeout(10):
                async for _ in idle:
                    n += 1
        except ConnectionClosed as e:
            code, reason = close_info(idle, e)
        except TimeoutError:
            code = "open (still streaming after 10 s)"
        else:
            code, reason = close_info(idle)
        idle_info = {"frames_read_after": n, "close_code": code, "close_reason": reason}

    # close everything, in parallel, bounded
    async def timed_close(ws):
        t = time.monotonic()
        try:
            await asyncio.wait_for(ws.close(), 5)
            return time.monotonic() - t
        except Exception:
            return None
    open_ws = [r.ws for r in readers if not r.closed] + [sender]
    durs = await asyncio.gather(*[timed_close(w) for w in open_ws])
    ok = [d for d in durs if d is not None]
    close_stats = {"n": len(open_ws), "timed_out": len(durs) - len(ok),
                   "max_s": round(max(ok), 2) if ok else None}
    for t in tasks + [stask]:
        t.cancel()

    counts = [snap[r.idx][0] for r in readers]
    total = sum(counts)
    expected = a.messages * a.readers
    closed = [r for r in readers if snap[r.idx][1]]
    codes = {}
    for r in closed:
        _, _, code, reason = snap[r.idx]
        key = f"{code}" + (f" {reason!r}" if reason else "")
        codes[key] = codes.get(key, 0) + 1
    silent = [r for r in readers if snap[r.idx][0] < a.messages and not snap[r.idx][1]]
    out_of_order = sum(1 for r in readers if not r.in_order)
    dups = sum(r.dups for r in readers)
    errors = {}
    for r in readers:
        for e in r.errors:
            errors[e] = errors.get(e, 0) + 1
    res = {
        "total": total, "expected": expected, "sent": sent, "send_err": send_err,
        "min": min(counts), "max": max(counts),
        "closed": len(closed), "close_codes": codes,
        "silent_readers": len(silent), "silent_lost": sum(a.messages - snap[r.idx][0] for r in silent),
        "closed_lost": sum(a.messages - snap[r.idx][0] for r in closed),
        "hole_readers": sum(1 for v in holes.values() if v > 0),
        "holes": sum(holes.values()),
        "hole_readers_closed": sum(1 for r in closed if holes[r.idx] > 0),
        "out_of_order_readers": out_of_order, "dups": dups, "error_frames": errors,
        "send_s": round(t_send, 3), "done_s": round(t_done, 3),
        "members_seen": members, "sender_rx": sstats["rx"], "sender_closed": sender_closed_snap,
        "idle": idle_info, "client_close": close_stats,
    }
    print(f"received {total}/{expected} ({100*(expected-total)/expected:.2f}% lost) "
          f"min/max {min(counts)}/{max(counts)} closed {len(closed)} {codes} "
          f"silent {len(silent)} (lost {res['silent_lost']}) holes {res['holes']} in {res['hole_readers']} readers ({res['hole_readers_closed']} of them closed later) ooo {out_of_order} dups {dups} "
          f"errors {errors} send {t_send:.2f}s done {t_done:.2f}s sent {sent} "
          f"sender_rx {sstats['rx']} sender_closed {sender_closed_snap} idle {idle_info} client_close {close_stats}",
          flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--readers", type=int, default=50)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--idle-reader", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()

    async def bounded():
        async with asyncio.timeout(OVERALL_TIMEOUT):
            return await main_async(a)
    try:
        asyncio.run(bounded())
    except TimeoutError:
        print(f"TIMEOUT after {OVERALL_TIMEOUT}s", flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps({"timeout": True}) + "\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
