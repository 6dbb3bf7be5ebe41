# Shell functions the scripts share. Source it: `. scripts/lib.sh`.

# start_redis PORT DIR [redis-server options…]: starts a private redis-server on
# 127.0.0.1:PORT (no persistence; pid file, log and working files in DIR) and waits until it
# answers; fails with the log's path if it does not. `stop_redis DIR` stops it.
start_redis() {
  local port=$1 dir=$2
  shift 2
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" "$@"
  for _ in $(seq 1 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis-server did not answer on 127.0.0.1:$port (log: $dir/redis.log)" >&2
  return 1
}

# ensure_redis PORT DIR [options…]: uses the redis-server that answers on PORT, or starts one
# as start_redis does. Sets STARTED_REDIS to 1 when it started one (stop it with stop_redis).
STARTED_REDIS=""
ensure_redis() {
  if redis-cli -p "$1" ping >/dev/null 2>&1; then return 0; fi
  start_redis "$@"
  STARTED_REDIS=1
}

# stop_redis DIR: stops the redis-server whose pid file is in DIR, if any, and waits (up to
# 10 s) until it has exited: it writes its last log lines into DIR while shutting down, so
# removing DIR right after the signal can race with it.
stop_redis() {
  [ -f "$1/redis.pid" ] || return 0
  local pid
  pid=$(cat "$1/redis.pid")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "redis-server (pid $pid) did not exit within 10 s; killing it" >&2
  kill -9 "$pid" 2>/dev/null || true
}

# wait_port PORT [TRIES]: waits (0.1 s per try, 200 tries by default) until something accepts
# connections on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 "${2:-200}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# plot_python DIR: prints a Python that has matplotlib, for the benchmark reports' plots: the
# virtual environment DIR/venv (made, with matplotlib, on first use), or plain python3 if that
# cannot be made (the reports then say they have no plots).
plot_python() {
  local venv=$1/venv
  if [ ! -x "$venv/bin/python" ]; then
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q matplotlib; } >&2 \
      || echo "(no matplotlib: the report comes without plots)" >&2
  fi
  if [ -x "$venv/bin/python" ]; then echo "$venv/bin/python"; else echo python3; fi
}
