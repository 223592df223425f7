#!/usr/bin/env bash
# The era bridge: what a modern (2026-07-28) tools/call costs through the bridge, against a
# legacy tools/call on a session the pod owns, and how modern requests spread over pods.
# Upstreams are bench/echo_upstream.mjs (Node: a legacy MCP server answering JSON with the
# request's own id, fast enough that the proxy's cost shows). On loopback only.
#
#   a. one sidecar (Redis store) in front of one upstream; wrk POSTs tools/call:
#        legacy: on a session opened through the sidecar (Mcp-Session-Id, 2025-06-18)
#        modern: MCP-Protocol-Version 2026-07-28, Mcp-Method, Mcp-Name and _meta, no session
#      ROUNDS rounds, the order alternated, medians; modern/legacy is the same-run ratio
#   b. Redis commands per steady-state modern request (INFO commandstats around one run)
#   c. three sidecars (each in front of its own upstream, one Redis) behind nginx round robin
#      (no affinity); one modern wrk run; each pod's share from its own metrics
#
#   bench/eras.sh                  # build (release), then a, b, c
#   ROUNDS=5 SKIP_BUILD=1 bench/eras.sh
#
# Environment: ROUNDS (default 3), DURATION (10s), WARMUP (3s), WRK_THREADS (2),
# CONNECTIONS (32), SKIP_BUILD (0), RESULTS_DIR (bench/results, gitignored).

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
WRK_THREADS=${WRK_THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
SKIP_BUILD=${SKIP_BUILD:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$REPO/bench/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/mcp-sidecar

BENCH_NAME=eras
CALL_MAX_TIME=5
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

MODERN_BODY='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'

install_missing redis-cli:redis-tools node:nodejs
find_tools
REDIS_CLI=$(find_cmd redis-cli) || die "redis-cli not found after install"
NODE=$(find_cmd node) || die "node not found after install"
build_release
make_tmp

rcli() { "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
cmdstats() { rcli INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ { sub(/^cmdstat_/, "", $1); print $1, $3 }'; }
total_cmds() { cmdstats | grep -v '^info ' | awk '{ s += $2 } END { print s + 0 }'; }

pick_port; REDIS_PORT=$PORT
start redis "$REDIS" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
wait_port redis "$START_PID" "$REDIS_PORT"

declare -A SC_LISTEN SC_ADMIN SC_PID UP_PORT
start_pod() { # name: an upstream and its sidecar
    local name=$1 lp ap pp up
    pick_port; up=$PORT
    start "up-$name" "$NODE" "$REPO/bench/echo_upstream.mjs" "$up"
    wait_port "up-$name" "$START_PID" "$up"
    pick_port; lp=$PORT
    pick_port; ap=$PORT
    pick_port; pp=$PORT
    cat >"$TMP/$name.yaml" <<EOF
server:
  listen: 127.0.0.1:$lp
  admin_listen: 127.0.0.1:$ap
  peer_listen: 127.0.0.1:$pp
  threads: 2
  pid_file: $TMP/$name.pid
  upgrade_sock: $TMP/$name.sock
redis:
  url: redis://127.0.0.1:$REDIS_PORT
peer:
  secret: $PEER_SECRET
routes:
  - {prefix: /mcp, upstream: 'http://127.0.0.1:$up/mcp', server_name: echo, era: legacy}
EOF
    RUST_LOG=warn start "$name" "$BIN" -c "$TMP/$name.yaml"
    wait_port "$name" "$START_PID" "$lp"
    SC_LISTEN[$name]=$lp SC_ADMIN[$name]=$ap SC_PID[$name]=$START_PID UP_PORT[$name]=$up
}

modern_lua() {
    cat <<EOF
wrk.method = "POST"
wrk.body = '$MODERN_BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "echo"
EOF
}

run_wrk() { # lua url duration out
    "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$3" --latency -s "$1" "$2" >"$4" 2>&1 || die "wrk failed: $(cat "$4")"
}

# ---- a: modern through the bridge against legacy on an owned session
start_pod a
URL_A="http://127.0.0.1:${SC_LISTEN[a]}/mcp"
init_session a "$URL_A"
wrk_lua "$SID" >"$TMP/legacy.lua"
modern_lua >"$TMP/modern.lua"
check=$(curl -sS --max-time 5 -X POST "$URL_A" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \
    -H 'Mcp-Method: tools/call' -H 'Mcp-Name: echo' --data-binary "$MODERN_BODY")
[[ $check == *'"resultType":"complete"'* && $check == *'"id":1'* ]] || die "the bridge answered: $check"
log "verified: a modern tools/call through the bridge is answered with resultType complete"

CLK_TCK=$(getconf CLK_TCK)
declare -A RPS P50 CPU
for kind in legacy modern; do run_wrk "$TMP/$kind.lua" "$URL_A" "$WARMUP" "$TMP/warm-$kind.out"; done
for ((r = 1; r <= ROUNDS; r++)); do
    order=(legacy modern)
    ((r % 2)) || order=(modern legacy)
    for kind in "${order[@]}"; do
        before=$(cpu_ticks "${SC_PID[a]}")
        run_wrk "$TMP/$kind.lua" "$URL_A" "$DURATION" "$TMP/r$r-$kind.out"
        after=$(cpu_ticks "${SC_PID[a]}")
        read -r reqs rps p50 _ err < <(parse_wrk <"$TMP/r$r-$kind.out") || die "unparsable wrk output"
        ((err == 0)) || log "WARNING: $kind had $err errors in round $r"
        cpu=$(awk -v d="$((after - before))" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
        RPS[$kind]+="$rps " P50[$kind]+="$p50 " CPU[$kind]+="$cpu "
        log "round $r $kind: $rps req/s, p50 $p50 ms, $cpu us sidecar CPU/req"
    done
done

# ---- b: Redis commands per steady-state modern request
before=$(total_cmds)
run_wrk "$TMP/modern.lua" "$URL_A" "$WARMUP" "$TMP/redis-modern.out"
after=$(total_cmds)
read -r reqs _ _ _ _ < <(parse_wrk <"$TMP/redis-modern.out")
REDIS_PER_REQ=$(awk -v d="$((after - before))" -v n="$reqs" 'BEGIN { printf "%.4f", d / n }')
log "Redis commands during $reqs modern requests: $((after - before)) (pod heartbeats included)"

# ---- c: three pods behind round robin
start_pod b
start_pod c
pick_port; LB_PORT=$PORT
cat >"$TMP/lb.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/lb.pid;
error_log $TMP/lb-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/lb-body;
    proxy_temp_path $TMP/lb-temp;
    upstream pods {
        server 127.0.0.1:${SC_LISTEN[a]};
        server 127.0.0.1:${SC_LISTEN[b]};
        server 127.0.0.1:${SC_LISTEN[c]};
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$LB_PORT;
        location /mcp { proxy_pass http://pods; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
start lb "$NGINX" -e "$TMP/lb-error.log" -c "$TMP/lb.conf"
wait_port lb "$START_PID" "$LB_PORT"
modern_served() { # admin_port -> modern tools/call answered 200 (Prometheus sorts the labels)
    curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" | awk '/^mcp_sidecar_requests_total\{/ &&
        /era="modern"/ && /method="tools\/call"/ && /status="200"/ { s += $NF } END { print s + 0 }'
}
declare -A BEFORE
for p in a b c; do BEFORE[$p]=$(modern_served "${SC_ADMIN[$p]}"); done
run_wrk "$TMP/modern.lua" "http://127.0.0.1:$LB_PORT/mcp" "$DURATION" "$TMP/spread.out"
read -r spread_reqs spread_rps _ _ spread_err < <(parse_wrk <"$TMP/spread.out")
SHARES=""
total=0
declare -A SERVED
for p in a b c; do
    now=$(modern_served "${SC_ADMIN[$p]}")
    SERVED[$p]=$(awk -v a="$now" -v b="${BEFORE[$p]}" 'BEGIN { print a - b }')
    total=$(awk -v t="$total" -v s="${SERVED[$p]}" 'BEGIN { print t + s }')
done
for p in a b c; do SHARES+="| $p | ${SERVED[$p]} | $(awk -v s="${SERVED[$p]}" -v t="$total" 'BEGIN { printf "%.1f %%", 100 * s / t }') |"$'\n'; done

mkdir -p "$RESULTS_DIR"
{
    echo "# Era bridge ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT)"
    echo
    echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, medians; one sidecar (Redis store) in front of bench/echo_upstream.mjs"
    echo
    echo "| request | req/s | p50 ms | sidecar CPU µs/req |"
    echo "|---|---:|---:|---:|"
    for kind in legacy modern; do
        echo "| $kind | $(words_median "${RPS[$kind]}") | $(words_median "${P50[$kind]}") | $(words_median "${CPU[$kind]}") |"
    done
    echo
    echo "- modern/legacy throughput: $(ratio "$(words_median "${RPS[modern]}")" "$(words_median "${RPS[legacy]}")") (per round: legacy ${RPS[legacy]}/ modern ${RPS[modern]})"
    echo "- Redis commands per steady-state modern request: $REDIS_PER_REQ (heartbeats included)"
    echo "- three pods, round robin, $spread_reqs modern requests at $spread_rps req/s, $spread_err errors:"
    echo
    echo "| pod | modern tools/call served | share |"
    echo "|---|---:|---:|"
    printf '%s' "$SHARES"
} | tee "$RESULTS_DIR/eras.md"
