#!/usr/bin/env bash
# This server's own scenarios for one target: start the server (pinned to BENCH_SERVER_CPU,
# default 0, in its own process group), run the load generator (pinned to BENCH_CLIENT_CPU,
# default 1), stop the server. JSON lines go to stdout and to --out.
#   --scenario chat      bench/chat_loadgen.js, once per sender count, each against a fresh
#                        server, as the shared harness does for fan-out rates (the default)
#   --scenario echo-id   bench/echo_id_loadgen.js: the harness's echo with an eventId in every event
#   --scenario echo-plain  the same load generator without the IDs
#
#   bench/chat.sh --target NAME --proto chat|bench --cmd CMD [--scenario chat|echo-id|echo-plain]
#                 [--rep K] [--out FILE] [--senders 1,10] [--quick] [-- LOADGEN OPTIONS]
#
# CMD runs as `bash -c "exec CMD"` from bench/, with BENCH_HOST/BENCH_PORT set, like the harness's
# --cmd. Waits for a quiet machine first (BENCH_QUIET_PCT, BENCH_QUIET_WAIT, as the harness).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_HOST=127.0.0.1
export BENCH_PORT="${BENCH_PORT:-7400}"
NODE="${BENCH_NODE:-$(command -v node)}"
LOG_TAG=chat
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

TARGET=""; PROTO=chat; SCENARIO=chat; CMD=""; REP=1; OUT=""; SENDERS=1,10; QUICK=0; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) TARGET="$2"; shift 2;;
    --proto) PROTO="$2"; shift 2;;
    --cmd) CMD="$2"; shift 2;;
    --scenario) SCENARIO="$2"; shift 2;;
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
SERVER_NAME="server $TARGET"

QUICK_ARGS=()
[[ $QUICK == 1 ]] && QUICK_ARGS=(--duration 2 --warmup 1)
case "$SCENARIO" in
  chat) LOADGEN=chat_loadgen.js; IFS=',' read -r -a variants <<< "$SENDERS";;
  echo-id) LOADGEN=echo_id_loadgen.js; variants=(1);;
  echo-plain) LOADGEN=echo_id_loadgen.js; variants=(0);;
  *) die "unknown scenario $SCENARIO (chat, echo-id, echo-plain)";;
esac
for v in "${variants[@]}"; do
  logf="$WORK/logs/${TARGET}-${SCENARIO}-${v}-rep${REP}.log"
  wait_quiet
  log "rep $REP  target=$TARGET  scenario=$SCENARIO  $([[ $SCENARIO == chat ]] && echo senders || echo ids)=$v"
  start_server "$logf" bash -c "exec $CMD"
  sleep 0.5
  if [[ $SCENARIO == chat ]]; then args=(--proto "$PROTO" --senders "$v"); else args=(--ids "$v"); fi
  set +e
  lines="$(timeout 300 taskset -c "${BENCH_CLIENT_CPU:-1}" "$NODE" "$HERE/$LOADGEN" \
    --target "$TARGET" --port "$BENCH_PORT" --server-pid "$SPID" --rep "$REP" "${args[@]}" \
    ${BENCH_MODE:+--mode "$BENCH_MODE"} "${QUICK_ARGS[@]}" "${EXTRA[@]}" 2>>"$logf")"
  rc=$?
  set -e
  stop_server
  keep_lines "$lines" "$OUT"
  [[ $rc -eq 0 ]] || log "loadgen exit code $rc for $TARGET/$SCENARIO $v (see $logf)"
  sleep 1
done
