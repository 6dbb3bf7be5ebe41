#!/usr/bin/env python3
"""Throughput of Django Channels' channel layers, with every message checked.

Layers (--layers, comma list):
  memory   channels.layers.InMemoryChannelLayer
  redis    channels_redis.core.RedisChannelLayer
  pubsub   channels_redis.pubsub.RedisPubSubChannelLayer

Cases:
  p2p, 1 proc    a sender task and a receiver task in one event loop move --p2p-n messages
                 through one channel from layer.new_channel() (two consumers in one daphne).
  p2p, 2 procs   the same with the sender in a second OS process with its own layer instance
                 (redis and pubsub only; off with --no-2proc).
  fan-out        N members of one group (--fanout), each draining its channel in its own task;
                 one sender group_sends for --fanout-seconds (at most --fanout-max-m times) and
                 lets at most --window messages per member be outstanding, so the rate is a
                 steady state, not a queue filling up. deliveries/s = N * M / elapsed, where
                 elapsed ends when the last member has the last message.

Every message is {'type': 'chat.message', 'text': 'x' * 100, 'seq': i}; count and order are
checked per receiver. --capacity (default 100,000, the layers' own default is 100) keeps the
bounded layers from dropping. A case that makes no progress for --idle-timeout s is cancelled
and reported as such. Output: one JSON line per case, then markdown tables.
"""
import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import time

TEXT = "x" * 100
KINDS = ("memory", "redis", "pubsub")


def message(seq):
    return {"type": "chat.message", "text": TEXT, "seq": seq}


def new_layer(kind, port, capacity):
    if kind == "memory":
        from channels.layers import InMemoryChannelLayer

        return InMemoryChannelLayer(capacity=capacity)
    if kind == "redis":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(hosts=[("127.0.0.1", port)], capacity=capacity)
    from channels_redis.pubsub import RedisPubSubChannelLayer

    return RedisPubSubChannelLayer(hosts=[("127.0.0.1", port)])  # no capacity: unbounded queues


async def flush_quietly(layer):
    try:
        await layer.flush()
    except Exception:
        pass


async def until_done(work, progress, idle):
    """Awaits `work`; cancels it when progress() stays the same for `idle` seconds.
    Returns (stalled, error repr or None)."""
    stalled = False

    async def watch():
        nonlocal stalled
        seen, since = progress(), time.perf_counter()
        while True:
            await asyncio.sleep(0.25)
            now, value = time.perf_counter(), progress()
            if value != seen:
                seen, since = value, now
            elif now - since > idle:
                stalled = True
                work.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    error = None
    try:
        await work
    except asyncio.CancelledError:
        pass
    except Exception as e:
        error = repr(e)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    return stalled, error


class Checker:
    """Counts what one receiver got and how often seq went backwards."""

    def __init__(self):
        self.got, self.backwards, self.last = 0, 0, -1

    def see(self, seq):
        if seq < self.last:
            self.backwards += 1
        self.last = seq
        self.got += 1


# --------------------------------------------------------------------------- point to point


async def receive_n(layer, channel, n, check):
    while check.got < n:
        check.see((await layer.receive(channel))["seq"])


def p2p_result(n, check, elapsed, cpu, stalled, error):
    return {"expected": n, "received": check.got, "lost": n - check.got, "misorder": check.backwards,
            "elapsed": elapsed, "bench_cpu": cpu, "timed_out": stalled, "error": error}


async def p2p_one_proc(kind, port, a):
    layer = new_layer(kind, port, a.capacity)
    channel = await layer.new_channel()
    check, send_error = Checker(), []

    async def send_all():
        try:
            for i in range(a.p2p_n):
                await layer.send(channel, message(i))
        except Exception as e:  # ChannelFull when the capacity is too small
            send_error.append(repr(e))

    cpu0, t0 = time.process_time(), time.perf_counter()
    sender = asyncio.ensure_future(send_all())
    receiver = asyncio.ensure_future(receive_n(layer, channel, a.p2p_n, check))
    stalled, error = await until_done(receiver, lambda: check.got, a.idle_timeout)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    await flush_quietly(layer)
    return p2p_result(a.p2p_n, check, elapsed, cpu, stalled, error or (send_error or [None])[0])


def sender_process(kind, port, n, capacity, pipe):
    """Second process of the 2-proc case: gets the channel, connects, waits for "go", sends."""

    async def run():
        layer = new_layer(kind, port, capacity)
        channel = pipe.recv()
        if kind == "redis":
            await layer.connection(0).ping()  # connect before the clock starts
        pipe.send("ready")
        pipe.recv()
        error, cpu0, t0 = None, time.process_time(), time.perf_counter()
        try:
            for i in range(n):
                await layer.send(channel, message(i))
        except Exception as e:
            error = repr(e)
        pipe.send({"elapsed": time.perf_counter() - t0, "cpu": time.process_time() - cpu0, "error": error})
        pipe.recv()  # the receiver is done; exiting earlier could cut a delivery short
        # Close the connections without touching Redis's contents (core's flush() would
        # delete the receiver's queue; pubsub's flush() only unsubscribes and disconnects).
        await (layer.close_pools() if kind == "redis" else layer.flush())

    asyncio.run(run())


async def p2p_two_procs(kind, port, a):
    layer = new_layer(kind, port, a.capacity)
    channel = await layer.new_channel()
    spawn = multiprocessing.get_context("spawn")
    pipe, child_end = spawn.Pipe()
    child = spawn.Process(target=sender_process, args=(kind, port, a.p2p_n, a.capacity, child_end))
    child.start()
    loop = asyncio.get_running_loop()
    try:
        pipe.send(channel)
        if await loop.run_in_executor(None, pipe.recv) != "ready":
            raise RuntimeError("sender process did not get ready")
        if kind == "pubsub":
            await asyncio.sleep(0.3)  # let the SUBSCRIBE of new_channel() settle
        check = Checker()
        cpu0, t0 = time.process_time(), time.perf_counter()
        pipe.send("go")
        receiver = asyncio.ensure_future(receive_n(layer, channel, a.p2p_n, check))
        stalled, error = await until_done(receiver, lambda: check.got, a.idle_timeout)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        sent = await loop.run_in_executor(None, pipe.recv)
        pipe.send("done")
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    await flush_quietly(layer)
    result = p2p_result(a.p2p_n, check, elapsed, cpu + sent["cpu"], stalled, error or sent["error"])
    result["sender_elapsed"] = sent["elapsed"]
    return result


# ---------------------------------------------------------------------------------- fan-out


async def fanout(kind, port, a, n):
    # Members go round robin over `count` layer instances: 1 = all in one process (one daphne),
    # --instances 0 = one instance each (every member in its own server process). The memory
    # layer cannot span instances, so it always uses one.
    count = 1 if kind == "memory" else (n if a.instances == 0 else min(a.instances, n))
    layers = [new_layer(kind, port, a.capacity) for _ in range(count)]
    group = "benchroom"
    t_setup = time.perf_counter()
    members = []
    for i in range(n):
        layer = layers[i % count]
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        members.append((layer, channel))
    setup = time.perf_counter() - t_setup
    if kind == "pubsub":
        await asyncio.sleep(0.3)  # the group SUBSCRIBE must be in place before the first PUBLISH

    checks = [Checker() for _ in range(n)]
    progress = {"delivered": 0, "sent": 0, "send_elapsed": None}
    delivered = asyncio.Event()

    async def drain(layer, channel, check):
        last = None  # M, announced by the end marker
        while last is None or check.got < last:
            msg = await layer.receive(channel)
            if msg["type"] == "bench.end":
                last = msg["m"]
                continue
            check.see(msg["seq"])
            progress["delivered"] += 1
            delivered.set()

    async def send():
        sender = layers[0]
        t0 = time.perf_counter()
        m = 0
        while m < a.fanout_max_m and time.perf_counter() - t0 < a.fanout_seconds:
            while a.window and m * n - progress["delivered"] > a.window * n:
                delivered.clear()
                await delivered.wait()
            await sender.group_send(group, message(m))
            m += 1
            progress["sent"] = m
        progress["send_elapsed"] = time.perf_counter() - t0
        await sender.group_send(group, {"type": "bench.end", "m": m})

    cpu0, t0 = time.process_time(), time.perf_counter()
    work = asyncio.ensure_future(asyncio.gather(send(), *(drain(l, c, k) for (l, c), k in zip(members, checks))))
    stalled, error = await until_done(work, lambda: (progress["delivered"], progress["sent"]), a.idle_timeout)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for layer in layers:
        await flush_quietly(layer)
    m, got = progress["sent"], progress["delivered"]
    return {"N": n, "instances": count, "M": m, "expected": n * m, "received": got, "lost": n * m - got,
            "misorder": sum(k.backwards for k in checks), "elapsed": elapsed,
            "send_elapsed": progress["send_elapsed"], "setup": setup, "bench_cpu": cpu,
            "timed_out": stalled, "error": error}


# ------------------------------------------------------------------------------------- main


class RedisMeter:
    """Empties Redis around a case and measures the redis-server's CPU time during it."""

    def __init__(self, port):
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)

    def cpu(self):
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def run(self, case):
        self.client.flushdb()
        before = self.cpu()
        result = asyncio.run(case)
        result["redis_cpu"] = self.cpu() - before
        self.client.flushdb()
        return result


def num(x, decimals=0):
    return "-" if x is None else f"{x:,.{decimals}f}"


def notes(r):
    out = ["TIMED OUT (idle)"] if r["timed_out"] else []
    if r["error"]:
        out.append("error: " + r["error"])
    return "; ".join(out)


def markdown(a, p2p_rows, fan_rows):
    lines = []
    if p2p_rows:
        lines += [f"### (a) point-to-point send/receive, one channel, {a.p2p_n:,} msgs, ~130 B msgpack payload", "",
                  "| layer | mode | msgs/s | received/expected | lost | out-of-order | elapsed s | bench CPU s | redis CPU s | notes |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in p2p_rows:
            lines.append(f"| {r['layer']} | {r['mode']} | {num(r['received'] / r['elapsed'])} | "
                         f"{r['received']:,}/{r['expected']:,} | {r['lost']:,} | {r['misorder']:,} | "
                         f"{r['elapsed']:.2f} | {r['bench_cpu']:.2f} | {num(r['redis_cpu'], 2)} | {notes(r)} |")
        lines.append("")
    if fan_rows:
        lines += [f"### (b) group_send fan-out (window {a.window} msgs/member outstanding, "
                  f"sender budget {a.fanout_seconds:g} s)", "",
                  "| layer | N members | layer instances | M group_sends | deliveries/s | group_sends/s | received/expected | lost | out-of-order | elapsed s | setup s | bench CPU s | redis CPU s | notes |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in fan_rows:
            el = r["elapsed"]
            lines.append(f"| {r['layer']} | {r['N']:,} | {r['instances']:,} | {r['M']:,} | {num(r['received'] / el)} | "
                         f"{num(r['M'] / el, 1)} | {r['received']:,}/{r['expected']:,} | {r['lost']:,} | "
                         f"{r['misorder']:,} | {el:.2f} | {r['setup']:.2f} | {r['bench_cpu']:.2f} | "
                         f"{num(r['redis_cpu'], 2)} | {notes(r)} |")
    return "\n".join(lines)


def comma_list(cast):
    return lambda s: [cast(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=comma_list(str), default=list(KINDS), help="memory,redis,pubsub")
    ap.add_argument("--redis-port", type=int, default=6390, help="redis-server on 127.0.0.1")
    ap.add_argument("--capacity", type=int, default=100_000, help="per-channel capacity (memory, redis)")
    ap.add_argument("--p2p-n", type=int, default=20_000, help="messages per point-to-point case")
    ap.add_argument("--no-2proc", action="store_true", help="skip the 2-process point-to-point cases")
    ap.add_argument("--skip-p2p", action="store_true", help="fan-out cases only")
    ap.add_argument("--fanout", type=comma_list(int), default=[1, 10, 100, 1000], help="group sizes N")
    ap.add_argument("--fanout-seconds", type=float, default=6.0, help="sender time budget per fan-out case")
    ap.add_argument("--fanout-max-m", type=int, default=20_000, help="at most this many group_sends per case")
    ap.add_argument("--window", type=int, default=50, help="outstanding group messages per member (0 = no limit)")
    ap.add_argument("--instances", type=int, default=1,
                    help="fan-out: layer instances the members are spread over (0 = one per member)")
    ap.add_argument("--idle-timeout", type=float, default=10.0, help="cancel a case without progress for this long")
    ap.add_argument("--json", help="also write all results to this file")
    a = ap.parse_args()
    unknown = set(a.layers) - set(KINDS)
    if unknown:
        ap.error(f"unknown layer(s): {', '.join(sorted(unknown))}")

    import channels
    import channels_redis
    import django
    import msgpack
    import redis

    meta = {"python": platform.python_version(), "channels": channels.__version__,
            "channels_redis": getattr(channels_redis, "__version__", "?"), "django": django.get_version(),
            "redis-py": redis.__version__, "msgpack": ".".join(map(str, msgpack.version)),
            "capacity": a.capacity, "window": a.window, "nproc": os.cpu_count()}
    print("#", json.dumps(meta), flush=True)

    meter = RedisMeter(a.redis_port) if set(a.layers) & {"redis", "pubsub"} else None

    def run(kind, case):
        if kind == "memory":
            return dict(asyncio.run(case), redis_cpu=None)
        return meter.run(case)

    p2p_rows, fan_rows = [], []
    for kind in [] if a.skip_p2p else a.layers:
        cases = [("1 proc", "p2p", p2p_one_proc)]
        if kind != "memory" and not a.no_2proc:
            cases.append(("2 procs", "p2p-2proc", p2p_two_procs))
        for mode, label, fn in cases:
            r = dict(run(kind, fn(kind, a.redis_port, a)), layer=kind, mode=mode)
            p2p_rows.append(r)
            print(label, kind, json.dumps(r), flush=True)
    for kind in a.layers:
        for n in a.fanout:
            r = dict(run(kind, fanout(kind, a.redis_port, a, n)), layer=kind)
            fan_rows.append(r)
            print("fanout", kind, json.dumps(r), flush=True)

    md = markdown(a, p2p_rows, fan_rows)
    print()
    print(md, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "p2p": p2p_rows, "fanout": fan_rows, "markdown": md}, f, indent=1)


if __name__ == "__main__":
    main()
