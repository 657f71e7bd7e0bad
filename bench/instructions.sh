#!/usr/bin/env bash
# Instructions one connect costs the server, counted by valgrind's callgrind: deterministic
# (unlike CPU time on a shared machine), so one run tells two trees apart by a percent.
#
#   bench/instructions.sh [TREE...]        (default: this checkout; N=300 connects per storm)
#
# For each tree (a checkout or git worktree with server/_codec built, or copied in), runs
# bench/connect_cost.py --gc-storms K --conns N under callgrind for K=1 and K=3 (storms of N
# WebSocket connects to /bench, closed again, the server embedded, plain asyncio) and prints
# (instructions at K=3 - at K=1) / 2N: the instructions of one connect and its close, start-up
# and warm-up cancelled. The client runs in a child process, not counted. Trees run in
# parallel (counts do not depend on the load); about a minute each.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
N="${N:-300}"
[[ $# -gt 0 ]] || set -- "$ROOT"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
count() { # $1 tree  $2 index
  local tree k
  tree="$(cd "$1" && pwd)"
  for k in 1 3; do
    (cd "$tree" && PYTHONPATH="$tree:$tree/channels" ASSETS_DIR="${ASSETS_DIR:-$ROOT/node_modules}" \
      valgrind --tool=callgrind --callgrind-out-file="$OUT/$2.$k" "$PY" bench/connect_cost.py \
      --gc-storms "$k" --conns "$N" >"$OUT/$2.log.$k" 2>&1) || { echo "$tree: failed (see below)" >&2; tail "$OUT/$2.log.$k" >&2; return 1; }
  done
  local a b
  a="$(grep '^totals' "$OUT/$2.1" | cut -d' ' -f2)"; b="$(grep '^totals' "$OUT/$2.3" | cut -d' ' -f2)"
  echo "$tree: $(( (b - a) / (2 * N) )) instructions per connect and close"
}
i=0; pids=()
for tree in "$@"; do count "$tree" "$i" & pids+=($!); i=$((i + 1)); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
