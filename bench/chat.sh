#!/usr/bin/env bash
# The `chat` scenario for one target: start the server (pinned to BENCH_SERVER_CPU, default 0, in
# its own process group), run bench/chat_loadgen.js (pinned to BENCH_CLIENT_CPU, default 1), stop
# the server; once per sender count, each against a fresh server, as the shared harness does for
# fan-out rates. JSON lines go to stdout and to --out.
#
#   bench/chat.sh --target NAME --proto chat|bench --cmd CMD [--rep K] [--out FILE]
#                 [--senders 1,10] [--quick] [-- LOADGEN OPTIONS]
#
# CMD runs as `bash -c "exec CMD"` from bench/, with BENCH_HOST/BENCH_PORT set, like the harness's
# --cmd. Waits for a quiet machine first (BENCH_QUIET_PCT, BENCH_QUIET_WAIT, as the harness).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_HOST=127.0.0.1
export BENCH_PORT="${BENCH_PORT:-7400}"
NODE="${BENCH_NODE:-$(command -v node)}"
log() { printf '[chat %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TARGET=""; PROTO=chat; CMD=""; REP=1; OUT=""; SENDERS=1,10; QUICK=0; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) TARGET="$2"; shift 2;;
    --proto) PROTO="$2"; shift 2;;
    --cmd) CMD="$2"; shift 2;;
    --rep) REP="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    --senders) SENDERS="$2"; shift 2;;
    --quick) QUICK=1; shift;;
    --) shift; EXTRA=("$@"); break;;
    *) die "unknown option $1";;
  esac
done
[[ -n "$TARGET" && -n "$CMD" ]] || die "--target and --cmd are required"
[[ -n "${NODE_PATH:-}" && -d "$NODE_PATH/ws" ]] || die "NODE_PATH must hold ws and socket.io (bench/run.sh sets it)"
WORK="${BENCH_WORK:-${TMPDIR:-/tmp}/bench-work}"
mkdir -p "$WORK/logs"

SPID=""
port_open() { (exec 3<>"/dev/tcp/$BENCH_HOST/$BENCH_PORT") 2>/dev/null; }
stop_server() { # only the process group this script started
  [[ -n "$SPID" ]] || return 0
  kill -TERM -- "-$SPID" 2>/dev/null || kill -TERM "$SPID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  SPID=""
  for _ in $(seq 50); do port_open || break; sleep 0.1; done
}
trap stop_server EXIT INT TERM
start_server() { # $1 log file
  port_open && die "port $BENCH_PORT already in use (set BENCH_PORT)"
  set -m
  (cd "$HERE" && exec taskset -c "${BENCH_SERVER_CPU:-0}" bash -c "exec $CMD") >"$1" 2>&1 &
  SPID=$!
  set +m
  for _ in $(seq 300); do
    port_open && return 0
    kill -0 "$SPID" 2>/dev/null || { cat "$1" >&2; die "server $TARGET exited during start"; }
    sleep 0.1
  done
  die "server $TARGET did not open port $BENCH_PORT within 30 s"
}
machine_busy_pct() {
  local a b c d e f g h t1 i1 t2 i2
  read -r _ a b c d e f g h _ < /proc/stat; t1=$((a+b+c+d+e+f+g+h)); i1=$((d+e))
  sleep 1
  read -r _ a b c d e f g h _ < /proc/stat; t2=$((a+b+c+d+e+f+g+h)); i2=$((d+e))
  echo $(( 100 * ((t2 - t1) - (i2 - i1)) / (t2 - t1 > 0 ? t2 - t1 : 1) ))
}
wait_quiet() {
  local thr="${BENCH_QUIET_PCT:-10}" max="${BENCH_QUIET_WAIT:-90}" waited=0 busy
  while :; do
    busy="$(machine_busy_pct)"
    (( busy < thr )) && return 0
    if (( waited >= max )); then log "machine still ${busy}% busy after ${waited}s; running anyway"; return 0; fi
    log "machine ${busy}% busy (other processes); waiting"
    sleep 4; waited=$((waited + 5))
  done
}

QUICK_ARGS=()
[[ $QUICK == 1 ]] && QUICK_ARGS=(--duration 2 --warmup 1)
IFS=',' read -r -a senders <<< "$SENDERS"
for s in "${senders[@]}"; do
  logf="$WORK/logs/${TARGET}-chat-${s}-rep${REP}.log"
  wait_quiet
  log "rep $REP  target=$TARGET  scenario=chat  senders=$s"
  start_server "$logf"
  sleep 0.5
  set +e
  lines="$(timeout 300 taskset -c "${BENCH_CLIENT_CPU:-1}" "$NODE" "$HERE/chat_loadgen.js" \
    --target "$TARGET" --proto "$PROTO" --port "$BENCH_PORT" --server-pid "$SPID" --rep "$REP" \
    --senders "$s" ${BENCH_MODE:+--mode "$BENCH_MODE"} "${QUICK_ARGS[@]}" "${EXTRA[@]}" 2>>"$logf")"
  rc=$?
  set -e
  stop_server
  while IFS= read -r l; do
    [[ -n "$l" ]] || continue
    printf '%s\n' "$l"
    [[ -z "$OUT" ]] || printf '%s\n' "$l" >> "$OUT"
  done <<< "$lines"
  [[ $rc -eq 0 ]] || log "loadgen exit code $rc for $TARGET/chat senders=$s (see $logf)"
  sleep 1
done
