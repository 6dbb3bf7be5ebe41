#!/usr/bin/env bash
# Django Channels, the peer switchboard is measured against (see README.md).
#
#   run.sh setup                venv with requirements.txt; redis-server from apt if it is missing
#   run.sh layers [ARGS...]     channel-layer benchmark (layer_bench.py; ARGS go to it, e.g.
#                               --layers memory --fanout 1,10,100,1000 --no-2proc); prints tables
#   run.sh chat LAYER [PORT]    daphne serving the tutorial chat on 127.0.0.1:PORT (default 8765),
#                               LAYER = memory | redis | pubsub; in the foreground until stopped
#
# Environment:
#   REDIS_PORT  Redis on 127.0.0.1 for the redis and pubsub layers (default 6390). When nothing
#               answers there, a private redis-server (no persistence) is started and stopped on exit.
#   PEER_VENV   the venv (default /tmp/switchboard-peer-venv, shared with ../shared/peer/run.sh)
#   CHAT_CAPACITY, CHAT_REDIS_MAX_CONN   passed on to the chat, see chatsite/chatsite/settings.py
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export REDIS_PORT=${REDIS_PORT:-6390}
VENV=${PEER_VENV:-/tmp/switchboard-peer-venv}

setup() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools
  fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r "$here/requirements.txt"
}

redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

REDIS_DIR=""
REDIS_PID=""
stop_redis() {
  if [ -n "$REDIS_PID" ]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  if [ -n "$REDIS_DIR" ]; then rm -rf "$REDIS_DIR"; fi
}
trap stop_redis EXIT

# Uses the redis-server that answers on REDIS_PORT, or starts a private one for this run.
ensure_redis() {
  redis_up && return 0
  REDIS_DIR=$(mktemp -d /tmp/switchboard-peer-redis.XXXXXX)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log" &
  REDIS_PID=$!
  for _ in $(seq 1 50); do
    redis_up && return 0
    sleep 0.1
  done
  echo "run.sh: redis-server did not answer on 127.0.0.1:$REDIS_PORT:" >&2
  cat "$REDIS_DIR/redis.log" >&2 || true
  exit 1
}

need_venv() { [ -x "$VENV/bin/daphne" ] || setup; }

cmd=${1:-help}
shift || true
case "$cmd" in
  setup)
    setup ;;
  layers)
    need_venv
    layers=memory,redis,pubsub  # layer_bench.py's default
    args=("$@")
    for i in "${!args[@]}"; do
      case ${args[$i]} in
        --layers) layers=${args[$((i + 1))]:-} ;;
        --layers=*) layers=${args[$i]#--layers=} ;;
        --redis-port) REDIS_PORT=${args[$((i + 1))]:-$REDIS_PORT} ;;
        --redis-port=*) REDIS_PORT=${args[$i]#--redis-port=} ;;
      esac
    done
    case ",$layers," in *,redis,* | *,pubsub,*) ensure_redis ;; esac
    "$VENV/bin/python" "$here/layer_bench.py" --redis-port "$REDIS_PORT" "$@" ;;
  chat)
    need_venv
    layer=${1:-memory}
    port=${2:-8765}
    case $layer in
      memory) ;;
      redis | pubsub) ensure_redis ;;
      *) echo "run.sh chat: LAYER must be memory, redis or pubsub" >&2; exit 2 ;;
    esac
    # daphne is a child, not exec'd: TERM or INT to this script is passed on to it, and the EXIT
    # trap stops a private redis-server after daphne has ended.
    CHAT_LAYER=$layer PYTHONPATH="$here/chatsite" DJANGO_SETTINGS_MODULE=chatsite.settings \
      "$VENV/bin/daphne" -b 127.0.0.1 -p "$port" chatsite.asgi:application &
    daphne=$!
    trap 'kill -TERM "$daphne" 2>/dev/null || true' TERM INT
    status=0
    while kill -0 "$daphne" 2>/dev/null; do status=0; wait "$daphne" || status=$?; done
    exit "$status" ;;
  *)
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"
    [ "$cmd" = help ] || exit 2 ;;
esac
