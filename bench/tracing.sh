#!/usr/bin/env bash
# What tracing costs: throughput, latency and CPU per request of one sidecar with tracing off,
# on at 100 % sampling and on at 1 %, against the build before tracing existed, in the same run.
# On loopback only. One fast nginx upstream (a fixed JSON-RPC result, a fresh Mcp-Session-Id on
# every answer), one nginx "collector" that takes every OTLP/HTTP export (POST /v1/traces → 200),
# and one sidecar per target, all on the in-process store; each target's session is opened
# through it, so every request is served via=local. wrk POSTs tools/call.
#
#   before   BEFORE_BIN: a release build of the commit before tracing (default: the
#            obs-before target directory beside this one's)
#   off      this build, no tracing section
#   on100    this build, tracing.endpoint = the collector, sampling_ratio 1.0
#   on1      this build, the same with sampling_ratio 0.01
#
#   BEFORE_BIN=/path/to/old/mcp-sidecar bench/tracing.sh
#   ROUNDS=5 SKIP_BUILD=1 bench/tracing.sh
#
# Environment: ROUNDS (default 5), DURATION (10s), WARMUP (3s), WRK_THREADS (2), CONNECTIONS
# (32), SKIP_BUILD (0), BEFORE_BIN, RESULTS_DIR (bench/results, gitignored).

set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
WRK_THREADS=${WRK_THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
SKIP_BUILD=${SKIP_BUILD:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$REPO/bench/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/mcp-sidecar
BEFORE_BIN=${BEFORE_BIN:-$TARGET_DIR-before/release/mcp-sidecar}

BENCH_NAME=tracing
CALL_MAX_TIME=5
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

find_tools
build_release
[[ -x $BEFORE_BIN ]] || die "no binary of the build before tracing at $BEFORE_BIN (set BEFORE_BIN)"
make_tmp

pick_port; UP_PORT=$PORT
upstream_conf "$UP_PORT" >"$TMP/upstream.conf"
start upstream "$NGINX" -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf"
wait_port upstream "$START_PID" "$UP_PORT"

pick_port; COLLECTOR_PORT=$PORT
cat >"$TMP/collector.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/collector.pid;
error_log $TMP/collector-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_max_body_size 64m;
    client_body_temp_path $TMP/collector-body;
    server {
        listen 127.0.0.1:$COLLECTOR_PORT;
        location = /v1/traces { default_type application/x-protobuf; return 200 ''; }
    }
}
EOF
start collector "$NGINX" -e "$TMP/collector-error.log" -c "$TMP/collector.conf"
wait_port collector "$START_PID" "$COLLECTOR_PORT"

TARGETS=(before off on100 on1)
declare -A LISTEN ADMIN SC_PID CPU_PIDS URL LUA
for t in "${TARGETS[@]}"; do
    pick_port; LISTEN[$t]=$PORT
    pick_port; ADMIN[$t]=$PORT
    pick_port; peer=$PORT
    tracing=""
    case $t in
        on100) tracing="tracing: {endpoint: 'http://127.0.0.1:$COLLECTOR_PORT', sampling_ratio: 1.0}" ;;
        on1) tracing="tracing: {endpoint: 'http://127.0.0.1:$COLLECTOR_PORT', sampling_ratio: 0.01}" ;;
    esac
    cat >"$TMP/$t.yaml" <<EOF
server:
  listen: 127.0.0.1:${LISTEN[$t]}
  admin_listen: 127.0.0.1:${ADMIN[$t]}
  peer_listen: 127.0.0.1:$peer
  threads: 2
  pid_file: $TMP/$t.pid
  upgrade_sock: $TMP/$t.sock
admin:
  token: $ADMIN_TOKEN
$tracing
routes:
  - {prefix: /mcp, upstream: 'http://127.0.0.1:$UP_PORT/mcp', server_name: bench}
EOF
    bin=$BIN
    [[ $t == before ]] && bin=$BEFORE_BIN
    RUST_LOG=warn start "$t" "$bin" -c "$TMP/$t.yaml"
    wait_port "$t" "$START_PID" "${LISTEN[$t]}"
    SC_PID[$t]=$START_PID
    CPU_PIDS[$t]=$START_PID
    URL[$t]="http://127.0.0.1:${LISTEN[$t]}/mcp"
    init_session "$t" "${URL[$t]}"
    wrk_lua "$SID" >"$TMP/$t.lua"
    LUA[$t]=$TMP/$t.lua
    verify "$t" "${URL[$t]}" "$SID"
done

run_wrk() { # target duration out
    "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency -s "${LUA[$1]}" "${URL[$1]}" >"$3" 2>&1 ||
        die "wrk failed: $(cat "$3")"
}

round_row() { # round order...
    local r=$1 t row="| $1 |"
    shift
    for t in "${TARGETS[@]}"; do row+=" ${this_round[$t]} |"; done
    ROUND_ROWS+=("$row order: $*")
}

CLK_TCK=$(getconf CLK_TCK)
warm_up
measure_rounds

exported=$(metric "${ADMIN[on100]}" mcp_sidecar_trace_spans_exported_total)
dropped=$(curl -sS --max-time 5 "http://127.0.0.1:${ADMIN[on100]}/metrics" |
    awk '/^mcp_sidecar_trace_spans_dropped_total/ { s += $2 } END { print s + 0 }')
exported1=$(metric "${ADMIN[on1]}" mcp_sidecar_trace_spans_exported_total)
((exported > 0)) || die "the on100 sidecar exported no span"

mkdir -p "$RESULTS_DIR"
base=$(words_median "${RPS[before]}")
{
    echo "# Tracing cost ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT)"
    echo
    echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, medians; before = $BEFORE_BIN"
    echo
    echo "| target | req/s | × before | p50 ms | p99 ms | sidecar CPU µs/req | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        rps=$(words_median "${RPS[$t]}")
        echo "| $t | $rps | $(ratio "$rps" "$base") | $(words_median "${P50[$t]}") | $(words_median "${P99[$t]}") | $(words_median "${CPU[$t]}") | ${ERR[$t]} |"
    done
    echo
    echo "- on100: $exported spans exported, $dropped dropped; on1: $exported1 exported"
    echo "- req/s per round (columns: ${TARGETS[*]}):"
    echo
    printf '%s\n' "${ROUND_ROWS[@]}"
} | tee "$RESULTS_DIR/tracing.md"
