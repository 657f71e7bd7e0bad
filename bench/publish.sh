#!/usr/bin/env bash
# The `publish` scenario: publishes per second through the Python emitters (straight to Redis)
# and through the HTTP API, and the publish → delivery latency to WebSocket clients in a /chat
# room. Per flavour, against a fresh server with a fresh redis-server (bench/with_redis.sh, both
# pinned to BENCH_SERVER_CPU, default 0): bench/publish_driver.py (pinned to BENCH_CLIENT_CPU,
# default 1, with its bench/publish_clients.js child) publishes --count events as fast as
# --window outstanding calls allow, then --rate per second for --seconds. JSON lines go to stdout
# and --out; a table at the end.
#
#   bench/publish.sh [--flavours async,sync,http,api] [--clients 10] [--count 5000] [--window 8]
#                    [--rate 200] [--seconds 10] [--rep K] [--out FILE] [--quick] [--no-table]
#
# Flavours: async = AsyncEmitter, sync = Emitter (threads), http = HttpEmitter (urllib, threads),
# api = POST /api/v1/publish over keep-alive (aiohttp). Waits for a quiet machine first, as
# chat.sh and the shared harness (BENCH_QUIET_PCT, BENCH_QUIET_WAIT).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${BENCH_PY:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || { echo "run 'make install' first" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "the publish scenario needs redis-server" >&2; exit 1; }
export BENCH_PY="$PY"
export BENCH_HOST=127.0.0.1
export BENCH_PORT="${BENCH_PORT:-7400}"
NODE="${BENCH_NODE:-$(command -v node)}"
LOG_TAG=publish
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

FLAVOURS=async,sync,http,api; CLIENTS=10; COUNT=5000; WINDOW=8; RATE=200; SECONDS_=10; REP=1; OUT=""; TABLE=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --flavours) FLAVOURS="$2"; shift 2;;
    --clients) CLIENTS="$2"; shift 2;;
    --count) COUNT="$2"; shift 2;;
    --window) WINDOW="$2"; shift 2;;
    --rate) RATE="$2"; shift 2;;
    --seconds) SECONDS_="$2"; shift 2;;
    --rep) REP="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    --quick) COUNT=2000; SECONDS_=5; shift;;
    --no-table) TABLE=0; shift;;
    *) die "unknown option $1";;
  esac
done
WORK="${BENCH_WORK:-$ROOT/.bench-work}"
export BENCH_WORK="$WORK"
mkdir -p "$WORK/logs"
if [[ -z "$OUT" ]]; then mkdir -p "$HERE/results"; OUT="$HERE/results/publish-$(date +%Y%m%dT%H%M%S).jsonl"; fi
API_KEY="bench-publish-key-$(date +%s)-0123456789"

for flavour in ${FLAVOURS//,/ }; do
  case "$flavour" in async|sync|http|api) ;; *) die "unknown flavour $flavour (async, sync, http, api)";; esac
  logf="$WORK/logs/publish-${flavour}-rep${REP}.log"
  rport="$(free_port)"
  wait_quiet
  log "rep $REP  flavour=$flavour  clients=$CLIENTS  count=$COUNT  window=$WINDOW  rate=$RATE/s for ${SECONDS_}s"
  start_server "$logf" env LOG_LEVEL=warning EVENTS_PER_SECOND=1000000 MAX_CONNECTIONS_PER_IP=1000000 \
    API_KEYS="bench:$API_KEY" BENCH_REDIS_PORT="$rport" \
    "$HERE/with_redis.sh" "$PY" -m server --config "$HERE/bench.toml" --host "$BENCH_HOST" --port "$BENCH_PORT"
  sleep 0.5
  set +e
  lines="$(cd "$ROOT" && timeout 600 taskset -c "${BENCH_CLIENT_CPU:-1}" "$PY" "$HERE/publish_driver.py" \
    --flavour "$flavour" --port "$BENCH_PORT" --redis-url "redis://127.0.0.1:$rport/0" --api-key "$API_KEY" \
    --clients "$CLIENTS" --count "$COUNT" --window "$WINDOW" --rate "$RATE" --seconds "$SECONDS_" \
    --server-pid "$SPID" --rep "$REP" --node "$NODE" 2>>"$logf")"
  rc=$?
  set -e
  stop_server
  keep_lines "$lines" "$OUT"
  [[ $rc -eq 0 ]] || log "driver exit code $rc for flavour $flavour (see $logf)"
  sleep 1
done
[[ $TABLE == 0 ]] || "$PY" "$HERE/publish_driver.py" summarize "$OUT"
[[ $TABLE == 0 ]] || echo "results: $OUT" >&2
