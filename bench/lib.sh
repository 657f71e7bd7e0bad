# Shared by bench/chat.sh, bench/publish.sh and bench/cluster.sh (sourced, not run): logging, the
# server's start and stop in a process group of its own, and the quiet-machine wait.
#
# The sourcing script sets LOG_TAG (the log prefix), HERE (bench/), BENCH_HOST and BENCH_PORT
# first, and may set SERVER_NAME (how errors name the server, "the server" by default).
# start_server pins the server to BENCH_SERVER_CPU (default 0); its children (redis-server, a
# cluster) inherit the pinning and are stopped with it. stop_server runs on EXIT.

log() { printf '[%s %s] %s\n' "${LOG_TAG:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SPID=""
port_open() { (exec 3<>"/dev/tcp/$BENCH_HOST/$BENCH_PORT") 2>/dev/null; }

# Only the process group this script started (the server and what it started).
stop_server() {
  [[ -n "$SPID" ]] || return 0
  kill -TERM -- "-$SPID" 2>/dev/null || kill -TERM "$SPID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  SPID=""
  for _ in $(seq 50); do port_open || break; sleep 0.1; done
}
trap stop_server EXIT INT TERM

# start_server LOG COMMAND...: COMMAND runs from bench/, pinned, its output to LOG; returns once
# BENCH_PORT accepts connections (SPID is the group's leader), or dies. BENCH_START_WAIT s at most
# (default 30; a cluster takes longer to form).
start_server() {
  local logf="$1"; shift
  port_open && die "port $BENCH_PORT already in use (set BENCH_PORT)"
  set -m
  (cd "$HERE" && exec taskset -c "${BENCH_SERVER_CPU:-0}" "$@") >"$logf" 2>&1 &
  SPID=$!
  set +m
  local wait_s="${BENCH_START_WAIT:-30}"
  for _ in $(seq $((wait_s * 10))); do
    port_open && return 0
    kill -0 "$SPID" 2>/dev/null || { cat "$logf" >&2; die "${SERVER_NAME:-the server} exited during start"; }
    sleep 0.1
  done
  die "${SERVER_NAME:-the server} did not open port $BENCH_PORT within $wait_s s"
}

# % of the machine's CPU time busy over one second (/proc/stat).
machine_busy_pct() {
  local a b c d e f g h t1 i1 t2 i2
  read -r _ a b c d e f g h _ < /proc/stat; t1=$((a+b+c+d+e+f+g+h)); i1=$((d+e))
  sleep 1
  read -r _ a b c d e f g h _ < /proc/stat; t2=$((a+b+c+d+e+f+g+h)); i2=$((d+e))
  echo $(( 100 * ((t2 - t1) - (i2 - i1)) / (t2 - t1 > 0 ? t2 - t1 : 1) ))
}

# Until the machine is below BENCH_QUIET_PCT % busy (default 10), BENCH_QUIET_WAIT s at most
# (default 90; then it runs anyway and says so), as the shared harness waits.
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

# keep_lines LINES [FILE]: each non-empty line of LINES (a driver's JSON lines) to stdout, and
# appended to FILE when one is named.
keep_lines() {
  local l
  while IFS= read -r l; do
    [[ -n "$l" ]] || continue
    printf '%s\n' "$l"
    [[ -z "${2:-}" ]] || printf '%s\n' "$l" >> "$2"
  done <<< "$1"
}

# A free loopback port (the small race with other processes is acceptable for a bench run).
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
