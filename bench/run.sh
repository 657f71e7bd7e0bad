#!/usr/bin/env bash
# One command: our server (real namespaces machinery, durable /bench fan-out with the event log
# and offsets on, the real /chat path) against the Node socket.io 4.8.4 reference, in the same
# run, server pinned to CPU 0 and the load generator to CPU 1, using the shared harness in
# ../shared/bench/ for echo, fanout, conns and polling, and bench/chat.sh for chat.
#
#   bench/run.sh [--reps N] [--modes embedded,redis] [--scenarios echo,fanout,conns,polling,chat,echo-id,publish]
#                [--chat-senders 1,10] [--fanout-rates 5,50,max] [--quick] [-- HARNESS LOADGEN ARGS]
#
#   --modes        which deployments of our server to measure (default both): `embedded` (no Redis)
#                  and `redis` (REDIS_URL set to a fresh local redis-server per run, started by
#                  bench/with_redis.sh as a child of the server, so pinned and counted with it).
#                  Node socket.io runs once per repetition whatever the modes.
#   --scenarios    default: the first five. chat = room of 100 WebSocket clients, 1 or 10 senders
#                  (--chat-senders) each keeping 4 messages with ack outstanding: ours through
#                  /chat `join` + `message`; Node's reference through /bench `join` + `fanout`
#                  with an ack (`nsp.to(room).emit('msg', payload); ack(true)`).
#                  echo-id = the harness's echo with an eventId in every event (bench/echo_id_loadgen.js):
#                  ours applies each once (dedupe on), Node echoes it; ours also without the IDs
#                  (`echo-plain`), for the guarantee's cost in the same run.
#                  publish = bench/publish.sh (emitters and HTTP API to a /chat room; always with
#                  Redis, whatever --modes; no Node counterpart), its defaults (--quick: shorter).
#
# Prints the harness's JSON lines and tables, then bench/ratios.py's table (ours ÷ Node per mode,
# Redis ÷ embedded) and one JSON line of ratios. Results go to bench/results/<timestamp>.jsonl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# ../shared/bench of the main checkout (a git worktree elsewhere finds it through the common .git)
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
if [[ ! -x "$SHARED/run.sh" && -z "${SHARED_BENCH:-}" ]]; then
  SHARED="$(cd "$ROOT" && cd "$(git rev-parse --git-common-dir)/../.." 2>/dev/null && pwd)/shared/bench"
fi
[[ -x "$SHARED/run.sh" ]] || { echo "the shared harness is not at $SHARED (set SHARED_BENCH)" >&2; exit 1; }
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "run 'make install' first" >&2; exit 1; }

REPS=1; MODES=embedded,redis; SCENARIOS=echo,fanout,conns,polling,chat,echo-id; CHAT_SENDERS=1,10
PASS=(); CHAT_PASS=(); EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --reps) REPS="$2"; shift 2;;
    --modes) MODES="$2"; shift 2;;
    --scenarios) SCENARIOS="$2"; shift 2;;
    --chat-senders) CHAT_SENDERS="$2"; shift 2;;
    --quick) PASS+=(--quick); CHAT_PASS+=(--quick); shift;;
    --) shift; EXTRA=(-- "$@"); break;;
    *) PASS+=("$1"); shift;;
  esac
done
for m in ${MODES//,/ }; do
  [[ $m == embedded || $m == redis ]] || { echo "unknown mode $m (embedded, redis)" >&2; exit 1; }
done
HARNESS_SCEN=""; CHAT=0; ECHO_ID=0; PUBLISH=0
for s in ${SCENARIOS//,/ }; do
  case "$s" in
    chat) CHAT=1;;
    echo-id) ECHO_ID=1;;
    publish) PUBLISH=1;;
    echo|fanout|conns|polling) HARNESS_SCEN="${HARNESS_SCEN:+$HARNESS_SCEN,}$s";;
    *) echo "unknown scenario $s" >&2; exit 1;;
  esac
done
if ! command -v redis-server >/dev/null && [[ ",$MODES," == *,redis,* || $PUBLISH == 1 ]]; then
  echo "the redis mode needs redis-server (apt-get install redis-server)" >&2; exit 1
fi

mkdir -p "$ROOT/bench/results"
OUT="$ROOT/bench/results/$(date +%Y%m%dT%H%M%S).jsonl"
export BENCH_WORK="${BENCH_WORK:-$ROOT/.bench-work}"
export BENCH_PY="$PY"
# The harness installs its node packages (socket.io 4.8.4, ws) here on first use; chat.sh needs
# them too, also when no harness scenario runs.
NODE_DIR="$BENCH_WORK/node"
if ! cmp -s "$SHARED/package.json" "$NODE_DIR/package.json" || [[ ! -d "$NODE_DIR/node_modules/ws" ]]; then
  mkdir -p "$NODE_DIR" && cp "$SHARED/package.json" "$NODE_DIR/package.json"
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error >&2)
fi
export NODE_PATH="$NODE_DIR/node_modules"

# Limits raised so the harness measures throughput, not our per-connection protection.
# The harness runs the command as `exec <command>` from its own folder; PYTHONPATH makes this
# checkout's packages the ones imported there (the editable install points at the checkout
# it was made from: run from a git worktree, the benchmark measured the main checkout's code).
# In the redis mode bench/with_redis.sh starts a fresh redis-server and execs the server with
# REDIS_URL pointing at it.
ours() { # $1 mode
  local wrap=""
  [[ $1 == redis ]] && wrap="'$ROOT/bench/with_redis.sh' "
  echo "env PYTHONPATH='$ROOT:$ROOT/channels' BENCH_NAMESPACE=1 LOG_LEVEL=warning EVENTS_PER_SECOND=1000000 MAX_CONNECTIONS_PER_IP=1000000 \
$wrap'$PY' -m server --config '$ROOT/bench/bench.toml' --host \$BENCH_HOST --port \$BENCH_PORT"
}
target() { [[ $1 == redis ]] && echo realtime-server+redis || echo realtime-server; }
NODE_REF="'$(command -v node)' '$SHARED/servers/node_socketio.js'"

for rep in $(seq 1 "$REPS"); do
  if [[ -n "$HARNESS_SCEN" ]]; then
    "$SHARED/run.sh" --rep-start "$rep" --out "$OUT" --scenarios "$HARNESS_SCEN" "${PASS[@]}" node-socketio "${EXTRA[@]}"
    for m in ${MODES//,/ }; do
      "$SHARED/run.sh" --rep-start "$rep" --out "$OUT" --scenarios "$HARNESS_SCEN" "${PASS[@]}" \
        --cmd "$(ours "$m")" "$(target "$m")" "${EXTRA[@]}"
    done
  fi
  if [[ $CHAT == 1 ]]; then
    "$ROOT/bench/chat.sh" --target node-socketio --proto bench --cmd "$NODE_REF" --rep "$rep" --out "$OUT" \
      --senders "$CHAT_SENDERS" "${CHAT_PASS[@]}"
    for m in ${MODES//,/ }; do
      BENCH_MODE="$m" "$ROOT/bench/chat.sh" --target "$(target "$m")" --proto chat --cmd "$(ours "$m")" \
        --rep "$rep" --out "$OUT" --senders "$CHAT_SENDERS" "${CHAT_PASS[@]}"
    done
  fi
  if [[ $ECHO_ID == 1 ]]; then
    "$ROOT/bench/chat.sh" --scenario echo-id --target node-socketio --cmd "$NODE_REF" --rep "$rep" --out "$OUT" \
      "${CHAT_PASS[@]}"
    for m in ${MODES//,/ }; do
      for scenario in echo-id echo-plain; do
        BENCH_MODE="$m" "$ROOT/bench/chat.sh" --scenario "$scenario" --target "$(target "$m")" --cmd "$(ours "$m")" \
          --rep "$rep" --out "$OUT" "${CHAT_PASS[@]}"
      done
    done
  fi
  if [[ $PUBLISH == 1 ]]; then
    "$ROOT/bench/publish.sh" --rep "$rep" --out "$OUT" --no-table "${CHAT_PASS[@]}"
  fi
done
if [[ -n "$HARNESS_SCEN" ]]; then # the harness's own tables know its four scenarios only
  grep -v '"scenario":"\(chat\|publish\|echo-id\|echo-plain\)"' "$OUT" | python3 "$SHARED/lib/summarize.py" /dev/stdin
  grep -v '"scenario":"\(chat\|publish\|echo-id\|echo-plain\)"' "$OUT" | python3 "$SHARED/lib/summarize.py" --headline /dev/stdin
fi
[[ $PUBLISH == 1 ]] && "$PY" "$ROOT/bench/publish_driver.py" summarize "$OUT"
python3 "$ROOT/bench/ratios.py" "$OUT"
echo "results: $OUT" >&2
