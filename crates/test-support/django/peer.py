#!/usr/bin/env python3
"""The Django side of switchboard's interop tests (crates/switchboard-redis/tests/interop_django.rs, examples/chat/tests/chat_django.rs, crates/switchboard-server/tests/worker_django.rs).

Configures Django with CHANNEL_LAYERS pointing at channels_redis, takes the layer from
channels.layers.get_channel_layer() as a Django project would, then runs commands read as
JSON lines on stdin and answers each with one JSON line on stdout:

  {"op": "new_channel"}                          -> {"channel": NAME}
  {"op": "group_add", "group": G, "channel": C}  -> {}
  {"op": "send", "channel": C, "message": M}     -> {}
  {"op": "group_send", "group": G, "message": M} -> {}
  {"op": "receive", "channel": C, "timeout": S}  -> {"message": M} or {"timeout": true}

Messages travel as JSON; a byte string is {"$bytes": "<hex>"} so that bytes stay bytes.
Errors are answered as {"error": "..."}.

  python peer.py core|pubsub HOST PREFIX [ENCRYPTION_KEY ...]

HOST is a Redis URL, or a JSON object that channels_redis takes as one entry of "hosts":
{"address": "rediss://…", "ssl_ca_certs": …} for TLS, {"sentinels": [[host, port], …],
"master_name": …} for Sentinel.
"""
import asyncio
import json
import sys

import django
from django.conf import settings

BACKENDS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}


def from_json(v):
    if isinstance(v, dict):
        if set(v) == {"$bytes"}:
            return bytes.fromhex(v["$bytes"])
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def to_json(v):
    if isinstance(v, (bytes, bytearray)):
        return {"$bytes": bytes(v).hex()}
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    return v


async def run(layer, cmd):
    op = cmd["op"]
    if op == "new_channel":
        return {"channel": await layer.new_channel()}
    if op == "group_add":
        await layer.group_add(cmd["group"], cmd["channel"])
        return {}
    if op == "send":
        await layer.send(cmd["channel"], from_json(cmd["message"]))
        return {}
    if op == "group_send":
        await layer.group_send(cmd["group"], from_json(cmd["message"]))
        return {}
    if op == "receive":
        try:
            message = await asyncio.wait_for(layer.receive(cmd["channel"]), cmd.get("timeout", 5))
        except asyncio.TimeoutError:
            return {"timeout": True}
        return {"message": to_json(message)}
    raise ValueError(f"unknown op {op!r}")


async def main():
    kind, host, prefix, *keys = sys.argv[1:]
    if host.startswith("{"):
        host = json.loads(host)
    config = {"hosts": [host], "prefix": prefix}
    if keys:
        config["symmetric_encryption_keys"] = keys
    settings.configure(
        CHANNEL_LAYERS={"default": {"BACKEND": BACKENDS[kind], "CONFIG": config}},
    )
    django.setup()
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            reply = await run(layer, json.loads(line))
        except Exception as e:  # report, keep serving
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
