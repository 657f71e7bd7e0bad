#!/usr/bin/env bash
# The `cluster` scenario: publishes/s and fan-out deliveries/s of one server node on one Redis
# and on a Redis Cluster of 3 masters + 3 replicas, same machine, same run, and the CPU time
# each redis-server spends per publish (INFO cpu), for the README's arithmetic.
#
#   bench/cluster.sh [--topologies single,cluster] [--reps K] [--rooms 30] [--members 10]
#                    [--count 6000] [--window 8] [--quick] [--keep-awake] [--out FILE] [--no-table]
#
# Per repetition and topology (interleaved: single, cluster, single, ...), against a fresh server
# and fresh Redis: bench/with_topology.py starts the Redis (tests/cluster_harness.py's cluster,
# or one redis-server with the same persistence) and then the server on it; both pinned to
# BENCH_SERVER_CPU (default 0). bench/cluster_driver.py (pinned to BENCH_CLIENT_CPU, default 1,
# with its bench/publish_clients.js children) publishes through the sync Emitter in three phases
# (spread over --rooms rooms of --members clients, one hot room, rooms nobody joined). JSON lines
# go to stdout and --out (default bench/results/cluster-<time>.jsonl); a table at the end.
# Waits for a quiet machine first, as chat.sh and publish.sh (BENCH_QUIET_PCT, BENCH_QUIET_WAIT).
#
# --keep-awake: a `nice -n 19` busy loop on each of the two cores while measuring, so neither goes
# idle. On this (virtual) machine an idle core is slow to wake: one redis-server answering 8
# threads did 1.6-1.8k SET/s alone on its core and 4.1-6.9k/s with the spinner there, and the
# cluster's six processes keep their core awake by themselves, which favours the cluster's
# wall-clock figures. For an otherwise idle machine: on a shared one the loops' time probably
# counts against this session's share of the cores (every rate fell 3-5x here, README). The
# driver leaves them out of the other processes' CPU.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${BENCH_PY:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || { echo "run 'make install' first" >&2; exit 1; }
command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
  || { echo "the cluster scenario needs redis-server and redis-cli (apt-get install redis-server)" >&2; exit 1; }
export BENCH_PY="$PY"
export BENCH_HOST=127.0.0.1
export BENCH_PORT="${BENCH_PORT:-7400}"
export BENCH_START_WAIT="${BENCH_START_WAIT:-90}"  # forming a cluster takes a few seconds
NODE="${BENCH_NODE:-$(command -v node)}"
LOG_TAG=cluster
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

TOPOLOGIES=single,cluster; REPS=1; ROOMS=30; MEMBERS=10; COUNT=6000; WINDOW=8; OUT=""; TABLE=1; AWAKE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --topologies) TOPOLOGIES="$2"; shift 2;;
    --reps) REPS="$2"; shift 2;;
    --rooms) ROOMS="$2"; shift 2;;
    --members) MEMBERS="$2"; shift 2;;
    --count) COUNT="$2"; shift 2;;
    --window) WINDOW="$2"; shift 2;;
    --quick) COUNT=1500; shift;;
    --keep-awake) AWAKE=1; shift;;
    --out) OUT="$2"; shift 2;;
    --no-table) TABLE=0; shift;;
    *) die "unknown option $1";;
  esac
done
for t in ${TOPOLOGIES//,/ }; do
  [[ $t == single || $t == cluster ]] || die "unknown topology $t (single, cluster)"
done
WORK="${BENCH_WORK:-$ROOT/.bench-work}"
export BENCH_WORK="$WORK"
mkdir -p "$WORK/logs"
SPINNERS=()
start_spinners() {
  [[ $AWAKE == 1 ]] || return 0
  local cpu
  for cpu in "${BENCH_SERVER_CPU:-0}" "${BENCH_CLIENT_CPU:-1}"; do
    nice -n 19 taskset -c "$cpu" bash -c 'while :; do :; done' &
    SPINNERS+=("$!")
  done
}
stop_spinners() {
  local p
  for p in "${SPINNERS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  SPINNERS=()
}
trap 'stop_server; stop_spinners' EXIT INT TERM
if [[ -z "$OUT" ]]; then mkdir -p "$HERE/results"; OUT="$HERE/results/cluster-$(date +%Y%m%dT%H%M%S).jsonl"; fi

for rep in $(seq 1 "$REPS"); do
  for topology in ${TOPOLOGIES//,/ }; do
    logf="$WORK/logs/cluster-${topology}-rep${rep}.log"
    state="$WORK/cluster-${topology}-state.json"
    rm -f "$state"
    wait_quiet
    log "rep $rep  topology=$topology  rooms=$ROOMS x $MEMBERS clients + 1 hot room  count=$COUNT  window=$WINDOW"
    SERVER_NAME="the server on $topology Redis"
    start_spinners
    start_server "$logf" env LOG_LEVEL=warning EVENTS_PER_SECOND=1000000 MAX_CONNECTIONS_PER_IP=1000000 \
      "$PY" "$HERE/with_topology.py" --topology "$topology" --state "$state" -- \
      "$PY" -m server --config "$HERE/bench.toml" --host "$BENCH_HOST" --port "$BENCH_PORT"
    sleep 0.5
    set +e
    lines="$(cd "$ROOT" && timeout 900 taskset -c "${BENCH_CLIENT_CPU:-1}" "$PY" "$HERE/cluster_driver.py" \
      --state "$state" --port "$BENCH_PORT" --rooms "$ROOMS" --members "$MEMBERS" --count "$COUNT" \
      --window "$WINDOW" --tree-pid "$SPID" --rep "$rep" --node "$NODE" \
      --spinners "$(IFS=,; echo "${SPINNERS[*]}")" 2>>"$logf")"
    rc=$?
    set -e
    stop_server
    stop_spinners
    keep_lines "$lines" "$OUT"
    [[ $rc -eq 0 ]] || log "driver exit code $rc for $topology (see $logf)"
    sleep 1
  done
done
[[ $TABLE == 0 ]] || "$PY" "$HERE/cluster_driver.py" summarize "$OUT"
[[ $TABLE == 0 ]] || echo "results: $OUT" >&2
