#!/usr/bin/env bash
# Shared upstream sessions: N clients on one multiplexed upstream session (session_mode: shared)
# against the same N clients each holding its own upstream session (per_client), in one run.
# One sidecar (release build) with two routes, each in front of its own fresh FastMCP server
# (tests/peers/fastmcp_server.py, the PyPI `mcp` SDK); the clients are N official Python MCP
# clients in one process (tests/peers/mux_client.py), all initialized before any call, all
# numbering their request ids the same way. On loopback only. For each N and round, per mode:
#
#   - calls/s over the whole run (N initializes + N*CALLS tools/call), mix-ups, errors
#   - upstream memory: the FastMCP process's peak RSS (VmHWM) minus its RSS before the run
#   - sidecar CPU per call (utime+stime over the run / calls)
#
#   bench/shared.sh                          # N = 200 and 1000, 2 rounds
#   CLIENTS="1000" ROUNDS=3 bench/shared.sh
#
# Environment:
#   CLIENTS       the N values (default "200 1000")
#   CALLS         tools/call per client (default 3)
#   ROUNDS        rounds per N; each round runs both modes, in alternating order (default 2)
#   ECHO_DELAY    the tool's random answer delay, 0..SECONDS (default 0.01)
#   SKIP_BUILD    1: use the existing target/release/mcp-sidecar (default 0)
#   RESULTS_DIR   where shared.md goes (default bench/results, gitignored)

set -euo pipefail

CLIENTS=${CLIENTS:-200 1000}
CALLS=${CALLS:-3}
ROUNDS=${ROUNDS:-2}
ECHO_DELAY=${ECHO_DELAY:-0.01}
SKIP_BUILD=${SKIP_BUILD:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$REPO/bench/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/mcp-sidecar

BENCH_NAME=shared
CALL_MAX_TIME=10
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"

stop() { # pid: stops one process started here and forgets it
    local pid=$1 p keep=()
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

sum() { awk '{ s += $1 } END { print s + 0 }'; }

hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

python_venv "$REPO/tests/peers/.venv" "$REPO/tests/peers/requirements.txt"
PY=$REPO/tests/peers/.venv/bin/python
build_release
make_tmp
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pick_port; SC_PORT=$PORT
pick_port; SC_ADMIN=$PORT
pick_port; SC_PEER=$PORT
pick_port; UP_PC=$PORT
pick_port; UP_SH=$PORT

cat >"$TMP/sidecar.yaml" <<EOF
server:
  listen: 127.0.0.1:$SC_PORT
  admin_listen: 127.0.0.1:$SC_ADMIN
  peer_listen: 127.0.0.1:$SC_PEER
  threads: 2
  pid_file: $TMP/sidecar.pid
  upgrade_sock: $TMP/sidecar.sock
routes:
  - {prefix: /pc, upstream: 'http://127.0.0.1:$UP_PC/mcp', server_name: per_client}
  - {prefix: /sh, upstream: 'http://127.0.0.1:$UP_SH/mcp', server_name: shared, session_mode: shared}
EOF
RUST_LOG=warn start sidecar "$BIN" -c "$TMP/sidecar.yaml"
SC_PID=$START_PID
wait_port sidecar "$SC_PID" "$SC_PORT"

run_mode() { # mode(pc|sh) clients round -> one result line
    local mode=$1 n=$2 round=$3 port up_pid base cpu0 cpu1 out
    [[ $mode == pc ]] && port=$UP_PC || port=$UP_SH
    # a fresh upstream per run, so its peak memory is this run's
    start "upstream-$mode" "$PY" "$REPO/tests/peers/fastmcp_server.py" --port "$port" \
        --echo-delay "$ECHO_DELAY"
    up_pid=$START_PID
    wait_port "upstream-$mode" "$up_pid" "$port"
    sleep 1
    base=$(rss_kib "$up_pid")
    cpu0=$(cpu_ticks "$SC_PID")
    out=$("$PY" "$REPO/tests/peers/mux_client.py" "http://127.0.0.1:$SC_PORT/$mode" \
        --clients "$n" --calls "$CALLS")
    cpu1=$(cpu_ticks "$SC_PID")
    local hwm
    hwm=$(hwm_kib "$up_pid")
    stop "$up_pid"
    "$PY" - "$mode" "$n" "$round" "$base" "$hwm" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$out" <<'PYEOF'
import json, sys
mode, n, rnd, base, hwm, ticks, hz, out = sys.argv[1:]
r = json.loads(out)
calls = int(r["calls"])
print(mode, n, rnd, r["ok"], calls, r["mixup_count"], r["error_count"], r["session_ids"],
      f'{calls / r["elapsed_s"]:.1f}', f'{(int(hwm) - int(base)) / 1024:.1f}',
      f'{int(ticks) / int(hz) / calls * 1e6:.0f}')
PYEOF
}

log "sidecar $COMMIT, clients: $CLIENTS, $CALLS calls each, $ROUNDS rounds, echo delay $ECHO_DELAY s"
: >"$TMP/results"
for n in $CLIENTS; do
    for ((round = 1; round <= ROUNDS; round++)); do
        order="pc sh"
        ((round % 2 == 0)) && order="sh pc"
        for mode in $order; do
            line=$(run_mode "$mode" "$n" "$round")
            log "$line"
            echo "$line" >>"$TMP/results"
        done
    done
done

mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/shared.md
{
    echo "# bench/shared.sh, commit $COMMIT, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "$CALLS calls per client, echo delay 0..$ECHO_DELAY s, $ROUNDS rounds; medians over rounds."
    echo
    echo "| clients | mode | ok / calls | mix-ups | errors | calls/s | upstream memory (peak MiB above idle) | sidecar CPU µs per call |"
    echo "|---|---|---|---|---|---|---|---|"
    for n in $CLIENTS; do
        for mode in pc sh; do
            sel() { awk -v m="$mode" -v n="$n" -v c="$1" '$1 == m && $2 == n { print $c }' "$TMP/results"; }
            ok=$(sel 4 | sum)
            calls=$(sel 5 | sum)
            mix=$(sel 6 | sum)
            err=$(sel 7 | sum)
            name=per_client
            [[ $mode == sh ]] && name=shared
            one() { awk '{ printf "%.1f", $1 }'; }
            echo "| $n | $name | $ok / $calls | $mix | $err | $(sel 9 | median | one) | $(sel 10 | median | one) | $(sel 11 | median | one) |"
        done
    done
    echo
    echo "Raw lines (mode clients round ok calls mixups errors client_sessions calls/s upstream_MiB sidecar_us_per_call):"
    echo
    sed 's/^/    /' "$TMP/results"
} >"$REPORT"
cat "$REPORT"
