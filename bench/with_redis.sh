#!/usr/bin/env bash
# Starts a real local redis-server for one benchmark run, then becomes the server command:
#
#   bench/with_redis.sh COMMAND...
#
# redis-server is started as a child of this process and then this process `exec`s COMMAND with
# REDIS_URL pointing at it, so redis-server is a child of the server process: it inherits the
# server's CPU pinning (the harness's `taskset`), its CPU and RSS are counted with the server's
# (the harness sums the server's process tree: the deployment's cost, not interference), and the
# harness's SIGTERM to the server's process group stops it too. Each run gets a fresh, empty
# Redis. Persistence is off (`--save ""`, `--appendonly no`), as tests/harness.py starts it,
# unless BENCH_REDIS_APPENDONLY=yes.
set -euo pipefail
PY="${BENCH_PY:-python3}"
# a free loopback port (the small race with other processes is acceptable for a bench run), or
# BENCH_REDIS_PORT when the caller must reach the same Redis (bench/publish.sh's emitters)
port="${BENCH_REDIS_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
dir="${BENCH_WORK:-${TMPDIR:-/tmp}/bench-work}/redis-$port"   # emptied first: every run starts fresh
rm -rf "$dir" && mkdir -p "$dir"
# setpriv --pdeathsig: redis-server ends with the server (this process, after the exec) also
# when nobody stops its process group (a bench tool run by hand): an orphan would keep running,
# and keep the caller's stdout pipe open, so that a `tool | grep` never ended. Its output goes
# to its folder, not into the tool's (JSON) output.
setpriv --pdeathsig TERM redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" \
  --appendonly "${BENCH_REDIS_APPENDONLY:-no}" --protected-mode no --loglevel warning \
  >"$dir/redis.log" 2>&1 &
for _ in $(seq 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  kill -0 $! 2>/dev/null || { echo "redis-server exited during start" >&2; exit 1; }
  sleep 0.05
done
redis-cli -p "$port" ping >/dev/null 2>&1 || { echo "redis-server did not answer within 5 s" >&2; exit 1; }
export REDIS_URL="redis://127.0.0.1:$port/0"
exec "$@"
