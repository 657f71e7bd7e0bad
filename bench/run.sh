#!/usr/bin/env bash
# One command: our server (real namespaces machinery, durable /bench fan-out with the event log
# and offsets on) against the Node socket.io 4.8.4 reference, in the same run, server pinned to
# CPU 0 and the load generator to CPU 1, using the shared harness in ../shared/bench/.
#
#   bench/run.sh [--reps N] [--quick] [--scenarios echo,fanout,conns,polling] [--fanout-rates 5,50,max]
#
# Prints the harness's JSON lines, then a table (median, spread, ratio vs node-socketio) and
# one JSON line of ratios. Results go to bench/results/<timestamp>.jsonl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
[[ -x "$SHARED/run.sh" ]] || { echo "the shared harness is not at $SHARED (set SHARED_BENCH)" >&2; exit 1; }
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "run 'make install' first" >&2; exit 1; }

REPS=1; PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --reps) REPS="$2"; shift 2;;
    *) PASS+=("$1"); shift;;
  esac
done
mkdir -p "$ROOT/bench/results"
OUT="$ROOT/bench/results/$(date +%Y%m%dT%H%M%S).jsonl"
export BENCH_WORK="${BENCH_WORK:-$ROOT/.bench-work}"
export BENCH_PY="$PY"
# Limits raised so the harness measures throughput, not our per-connection protection.
# The harness runs the command as `exec <command>` from its own folder; the editable install
# makes the packages importable from there.
OURS="env BENCH_NAMESPACE=1 LOG_LEVEL=warning EVENTS_PER_SECOND=1000000 MAX_CONNECTIONS_PER_IP=1000000 \
'$PY' -m server --config '$ROOT/bench/bench.toml' --host \$BENCH_HOST --port \$BENCH_PORT"

for rep in $(seq 1 "$REPS"); do
  "$SHARED/run.sh" --rep-start "$rep" --out "$OUT" "${PASS[@]}" node-socketio
  "$SHARED/run.sh" --rep-start "$rep" --out "$OUT" "${PASS[@]}" --cmd "$OURS" realtime-server
done
python3 "$SHARED/lib/summarize.py" "$OUT"
python3 "$SHARED/lib/summarize.py" --headline "$OUT"
python3 "$ROOT/bench/ratios.py" "$OUT"
echo "results: $OUT" >&2
