#!/usr/bin/env bash
# Benchmark baseline: mcp-sidecar against nginx as a reverse proxy in front of the same fast
# upstream, on loopback only. See docs/benchmarks.md for what is measured and why.
#
# Every request carries a real session: the upstream hands out an Mcp-Session-Id ($request_id)
# on every answer, each sidecar gets one `initialize` through it before measuring, and wrk sends
# that sidecar's own session id, so the sidecar serves it from its local session table
# (via=local). The direct and nginx targets get a made-up id (they do not look at it).
#
#   bench/run.sh                  # build (release), 5 interleaved rounds of 10 s per target
#   ROUNDS=9 bench/run.sh         # more rounds: steadier medians on a noisy machine
#
# Environment:
#   ROUNDS       rounds of measurement (default 5); each round runs every target once
#   DURATION     wrk duration of one measured run (default 10s)
#   WARMUP       wrk duration of the warmup run per target (default 3s)
#   WRK_THREADS  wrk threads (default 2)
#   CONNECTIONS  wrk connections (default 32)
#   SKIP_BUILD   1: use the existing target/release/mcp-sidecar as is (default 0)
#   RESULTS_DIR  where latest.md goes (default bench/results, which is gitignored)
#
# Everything listens on 127.0.0.1 on free ports, with configuration in a temp dir; an EXIT trap
# stops every process the script started and removes the temp dir.

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

# for the targets that do not track sessions (upstream direct, nginx)
ANY_SESSION_ID=6f1c2d3e4b5a69788796a5b4c3d2e1f0

BENCH_NAME=bench
CALL_MAX_TIME=5
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# ---------------------------------------------------------------------------------------------

install_missing
find_tools
build_release
make_tmp

pick_port; UP_PORT=$PORT
pick_port; NGINX_PORT=$PORT
pick_port; MEM_PORT=$PORT
pick_port; MEM_ADMIN=$PORT
pick_port; MEM_PEER=$PORT
pick_port; REDIS_PORT=$PORT
pick_port; RED_PORT=$PORT
pick_port; RED_ADMIN=$PORT
pick_port; RED_PEER=$PORT

# a. fast upstream: fixed JSON-RPC result, no Python in the way
upstream_conf "$UP_PORT" >"$TMP/upstream.conf"

# b. nginx as the reference reverse proxy
cat >"$TMP/nginx-proxy.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
pid $TMP/nginx-proxy.pid;
error_log $TMP/nginx-proxy-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx-proxy-body;
    proxy_temp_path $TMP/nginx-proxy-temp;
    upstream mcp_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /mcp {
            proxy_pass http://mcp_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF

sidecar_conf() { # name listen admin peer redis_url
    cat <<EOF
server:
  listen: "127.0.0.1:$2"
  admin_listen: "127.0.0.1:$3"
  peer_listen: "127.0.0.1:$4"
  threads: 2
  grace_period: 0s
  shutdown_timeout: 1s
  pid_file: "$TMP/$1.pid"
  upgrade_sock: "$TMP/$1-upgrade.sock"
redis:
  url: "$5"
peer:
  secret: "$([[ -n $5 ]] && echo "$PEER_SECRET")"
admin:
  token: "$ADMIN_TOKEN"
routes:
  - prefix: /mcp
    upstream: "http://127.0.0.1:$UP_PORT/mcp"
    server_name: bench
EOF
}
# c. and d.: in-process store, and Redis store
sidecar_conf sidecar-memory "$MEM_PORT" "$MEM_ADMIN" "$MEM_PEER" "" >"$TMP/sidecar-memory.yaml"
sidecar_conf sidecar-redis "$RED_PORT" "$RED_ADMIN" "$RED_PEER" "redis://127.0.0.1:$REDIS_PORT/0" >"$TMP/sidecar-redis.yaml"

"$NGINX" -t -q -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf" || die "upstream nginx config rejected"
"$NGINX" -t -q -e "$TMP/nginx-proxy-error.log" -c "$TMP/nginx-proxy.conf" || die "nginx proxy config rejected"
"$BIN" -t -c "$TMP/sidecar-memory.yaml" >/dev/null || die "sidecar-memory config rejected"
"$BIN" -t -c "$TMP/sidecar-redis.yaml" >/dev/null || die "sidecar-redis config rejected"

start upstream "$NGINX" -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf"
UP_PID=$START_PID
start nginx-proxy "$NGINX" -e "$TMP/nginx-proxy-error.log" -c "$TMP/nginx-proxy.conf"
NGINX_PID=$START_PID
start redis "$REDIS" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --dir "$TMP"
REDIS_PID=$START_PID
start sidecar-memory env RUST_LOG=warn "$BIN" -c "$TMP/sidecar-memory.yaml"
MEM_PID=$START_PID
wait_port upstream "$UP_PID" "$UP_PORT"
wait_port nginx-proxy "$NGINX_PID" "$NGINX_PORT"
wait_port redis "$REDIS_PID" "$REDIS_PORT"
start sidecar-redis env RUST_LOG=warn "$BIN" -c "$TMP/sidecar-redis.yaml"
RED_PID=$START_PID
wait_port sidecar-memory "$MEM_PID" "$MEM_PORT"
wait_port sidecar-redis "$RED_PID" "$RED_PORT"
wait_port sidecar-memory-admin "$MEM_PID" "$MEM_ADMIN"
wait_port sidecar-redis-admin "$RED_PID" "$RED_ADMIN"

# the Redis sidecar must really be on Redis, not degraded
ready=$(curl -sS --max-time 5 "http://127.0.0.1:$RED_ADMIN/readyz") || die "sidecar-redis /readyz failed"
[[ $ready == *'"status":"ready"'* && $ready == *'"store":"redis"'* ]] ||
    die "sidecar-redis is not ready on Redis: $ready"
ready=$(curl -sS --max-time 5 "http://127.0.0.1:$MEM_ADMIN/readyz") || die "sidecar-memory /readyz failed"
[[ $ready == *'"store":"memory"'* ]] || die "sidecar-memory is not on the memory store: $ready"

TARGETS=(direct nginx sidecar-memory sidecar-redis)
declare -A URL=(
    [direct]="http://127.0.0.1:$UP_PORT/mcp"
    [nginx]="http://127.0.0.1:$NGINX_PORT/mcp"
    [sidecar-memory]="http://127.0.0.1:$MEM_PORT/mcp"
    [sidecar-redis]="http://127.0.0.1:$RED_PORT/mcp"
)
declare -A LABEL=(
    [direct]="upstream direct (no proxy)"
    [nginx]="nginx reverse proxy"
    [sidecar-memory]="mcp-sidecar, memory store"
    [sidecar-redis]="mcp-sidecar, Redis store"
)
# whose CPU time a run of the target is charged to: the proxy (or, for direct, the upstream)
declare -A CPU_PIDS=(
    [direct]="$(children_of "$UP_PID" | tr '\n' ' ')"
    [nginx]="$(children_of "$NGINX_PID" | tr '\n' ' ')"
    [sidecar-memory]="$MEM_PID"
    [sidecar-redis]="$RED_PID"
)

declare -A PROC_PID=(
    [upstream]=$UP_PID [nginx-proxy]=$NGINX_PID [redis]=$REDIS_PID
    [sidecar-memory]=$MEM_PID [sidecar-redis]=$RED_PID
)
declare -A ADMIN_PORT=([sidecar-memory]=$MEM_ADMIN [sidecar-redis]=$RED_ADMIN)
declare -A PEER_ADDR=([sidecar-memory]="127.0.0.1:$MEM_PEER" [sidecar-redis]="127.0.0.1:$RED_PEER")

# A real session per sidecar: initialize through it, keep the id the upstream handed out. The
# admin API must list it, owned by that sidecar; wrk then sends that id to that sidecar only.
declare -A SESSION=([direct]=$ANY_SESSION_ID [nginx]=$ANY_SESSION_ID)
for t in sidecar-memory sidecar-redis; do
    init_session "$t" "${URL[$t]}"
    SESSION[$t]=$SID
    listed=$(admin_get "${ADMIN_PORT[$t]}" /api/admin/sessions 5) || die "$t: admin API failed"
    [[ $listed == *"\"sessionId\":\"$SID\""* && $listed == *"\"owner\":\"${PEER_ADDR[$t]}\""* ]] ||
        die "$t: session $SID is not listed as owned by ${PEER_ADDR[$t]}: $listed"
    log "$t: session $SID opened by initialize, listed by the admin API as owned by ${PEER_ADDR[$t]}"
done

for t in "${TARGETS[@]}"; do
    verify "$t" "${URL[$t]}" "${SESSION[$t]}"
done

# The measured sidecars log at warn (no access lines). A short-lived copy of each configuration
# at RUST_LOG=info shows what path such a request takes: its access line must say via=local.
check_via_local() { # name (sidecar-memory | sidecar-redis)
    local name=$1 check=$1-check lp ap pp pid url redis_url="" line
    pick_port; lp=$PORT
    pick_port; ap=$PORT
    pick_port; pp=$PORT
    # db 1, so the check's session and registration stay out of the measured sidecar's keyspace
    [[ $name == sidecar-redis ]] && redis_url="redis://127.0.0.1:$REDIS_PORT/1"
    sidecar_conf "$check" "$lp" "$ap" "$pp" "$redis_url" >"$TMP/$check.yaml"
    RUST_LOG=info "$BIN" -c "$TMP/$check.yaml" >"$TMP/$check.log" 2>&1 &
    pid=$!
    wait_port "$check" "$pid" "$lp"
    url="http://127.0.0.1:$lp/mcp"
    init_session "$check" "$url"
    verify "$check" "$url" "$SID"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    line=$(grep "rpc=tools/call .*session=$SID" "$TMP/$check.log" || true)
    [[ $line == *" via=local"* ]] || die "$check: the tools/call access line does not say via=local: ${line:-none}"
    log "$check (RUST_LOG=info copy of $name): access line ends with via=local"
}
check_via_local sidecar-memory
check_via_local sidecar-redis

RSS_IDLE_MEM=$(rss_kib "$MEM_PID")
RSS_IDLE_RED=$(rss_kib "$RED_PID")
RSS_IDLE_NGINX=$(rss_kib ${CPU_PIDS[nginx]})

for t in "${TARGETS[@]}"; do
    wrk_lua "${SESSION[$t]}" >"$TMP/request-$t.lua"
done

CLK_TCK=$(getconf CLK_TCK)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

check_alive() { # every process started must still run, or the figures mean nothing
    local name pid
    for name in "${!PROC_PID[@]}"; do
        pid=${PROC_PID[$name]}
        kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) is no longer running (crashed, or stopped from outside)"
    done
}

run_wrk() { # target duration outfile
    "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency -s "$TMP/request-$1.lua" "${URL[$1]}" >"$3" 2>&1 ||
        die "wrk against $1 failed: $(cat "$3")"
    check_alive
}

round_row() { # round order...: one row of the per-round table (this_round: req/s by target)
    local r=$1
    shift
    ROUND_ROWS+=("| $r | $* | ${this_round[direct]} | ${this_round[nginx]} | ${this_round[sidecar-memory]} | ${this_round[sidecar-redis]} | $(ratio "${this_round[sidecar-memory]}" "${this_round[nginx]}") | $(ratio "${this_round[sidecar-redis]}" "${this_round[nginx]}") |")
}

warm_up
measure_rounds

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# the sidecars' own complaints (they run at warn): everything at WARN or above
SIDECAR_WARNINGS=$(sidecar_warnings "$TMP"/sidecar-*.log)
[[ -n $SIDECAR_WARNINGS ]] && log "WARNING: the sidecars logged warnings or errors: $SIDECAR_WARNINGS"


# After the runs: every measured request was served from the sidecar's own session table.
tool_calls() { # admin_port -> "answered_200 client_gone other" for tools/call, from /metrics
    # status 0: the client closed the connection before the answer (wrk stopping mid-request)
    curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" | awk '
        /^mcp_sidecar_requests_total\{/ && /method="tools\/call"/ {
            if ($0 ~ /status="200"/) ok += $NF; else if ($0 ~ /status="0"/) gone += $NF; else other += $NF }
        END { printf "%d %d %d\n", ok, gone, other }'
}
declare -A SESSION_CHECK
for t in sidecar-memory sidecar-redis; do
    fwd=$(metric "${ADMIN_PORT[$t]}" 'mcp_sidecar_sessions_total{event="forwarded"}')
    rec=$(metric "${ADMIN_PORT[$t]}" 'mcp_sidecar_sessions_total{event="recovered"}')
    active=$(metric "${ADMIN_PORT[$t]}" 'mcp_sidecar_active_sessions')
    read -r ok gone other < <(tool_calls "${ADMIN_PORT[$t]}")
    ((fwd == 0 && rec == 0 && active == 1)) ||
        die "$t: expected only its own session, served locally: forwarded $fwd, recovered $rec, active $active"
    ((other == 0)) || log "WARNING: $t answered $other tools/call requests with a status other than 200"
    SESSION_CHECK[$t]="tools/call answered 200: $ok, other status: $other, client closed mid-request (end of wrk runs): $gone; sessions forwarded $fwd, recovered $rec, active $active"
done
RSS_MEM=$(rss_kib "$MEM_PID")
RSS_RED=$(rss_kib "$RED_PID")
# shellcheck disable=SC2086
RSS_NGINX=$(rss_kib ${CPU_PIDS[nginx]})

declare -A M_RPS M_P50 M_P99 M_CPU
for t in "${TARGETS[@]}"; do
    M_RPS[$t]=$(words_median "${RPS[$t]}")
    M_P50[$t]=$(words_median "${P50[$t]}")
    M_P99[$t]=$(words_median "${P99[$t]}")
    M_CPU[$t]=$(words_median "${CPU[$t]}")
done

met() { awk -v r="$1" 'BEGIN { print (r >= 0.9 ? "met" : "NOT met") }'; }

TP_MEM=$(ratio "${M_RPS[sidecar-memory]}" "${M_RPS[nginx]}")
TP_RED=$(ratio "${M_RPS[sidecar-redis]}" "${M_RPS[nginx]}")
LAT_MEM=$(ratio "${M_P50[sidecar-memory]}" "${M_P50[nginx]}")
LAT_RED=$(ratio "${M_P50[sidecar-redis]}" "${M_P50[nginx]}")
CPU_MEM=$(ratio "${M_CPU[sidecar-memory]}" "${M_CPU[nginx]}")
CPU_RED=$(ratio "${M_CPU[sidecar-redis]}" "${M_CPU[nginx]}")

CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

REPORT=$(
    cat <<EOF
# mcp-sidecar benchmark

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Commit built and measured: $COMMIT
- Machine: $(nproc) cores (nproc), ${CPU_MODEL:-unknown CPU}, Linux $(uname -r); load average before $LOAD_BEFORE, after $LOAD_AFTER
- Tools: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $("$WRK" -v 2>&1 | head -n1 | awk '{print $1, $2}'), Redis $("$REDIS" --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
- Load: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency, POST tools/call (${#REQ_BODY} bytes) with Mcp-Session-Id (each sidecar: a session it opened itself); $WARMUP warmup per target, then $ROUNDS rounds, order rotated each round
- Upstream: nginx, 1 worker, fixed ${#RESP_BODY}-byte JSON-RPC result; all processes on 127.0.0.1, sharing the same cores as wrk

## Medians over $ROUNDS rounds

| Target | req/s | p50 ms | p99 ms | CPU µs/request | errors |
|---|---:|---:|---:|---:|---:|
EOF
    for t in "${TARGETS[@]}"; do
        printf '| %s | %.0f | %.3f | %.3f | %.1f | %d |\n' "${LABEL[$t]}" "${M_RPS[$t]}" "${M_P50[$t]}" \
            "${M_P99[$t]}" "${M_CPU[$t]}" "${ERR[$t]:-0}"
    done
    cat <<EOF

CPU µs/request is the CPU time of the proxy's own processes during a run divided by the requests
wrk completed (for the direct row: the upstream's). errors = non-2xx responses plus socket errors.

## mcp-sidecar against nginx (medians)

| Store | throughput ratio (sidecar / nginx) | p50 ratio (sidecar / nginx) | CPU per request ratio | target: throughput ≥ 0.9 × nginx |
|---|---:|---:|---:|---|
| memory | $TP_MEM | $LAT_MEM | $CPU_MEM | $(met "$TP_MEM") |
| Redis | $TP_RED | $LAT_RED | $CPU_RED | $(met "$TP_RED") |

## req/s per round

| Round | order | direct | nginx | sidecar-memory | sidecar-redis | memory / nginx | Redis / nginx |
|---:|---|---:|---:|---:|---:|---:|---:|
$(printf '%s\n' "${ROUND_ROWS[@]}")

## Resident memory (VmRSS)

| Process | idle, after startup | after the runs |
|---|---:|---:|
| mcp-sidecar, memory store | $(mib "$RSS_IDLE_MEM") MiB | $(mib "$RSS_MEM") MiB |
| mcp-sidecar, Redis store | $(mib "$RSS_IDLE_RED") MiB | $(mib "$RSS_RED") MiB |
| nginx proxy (master + 2 workers) | $(mib "$RSS_IDLE_NGINX") MiB | $(mib "$RSS_NGINX") MiB |

## Sessions

Each sidecar got one \`initialize\` before the runs and wrk sent the session id it answered
(a RUST_LOG=info copy of each configuration logged \`via=local\` for such a request). The
sidecars' own counters after the runs (warmups and checks included):

- mcp-sidecar, memory store: ${SESSION_CHECK[sidecar-memory]}
- mcp-sidecar, Redis store: ${SESSION_CHECK[sidecar-redis]}

Sidecar log lines at WARN or above (startup notice of single-pod mode excluded): $([[ -n $SIDECAR_WARNINGS ]] && printf '\n\n```\n%s\n```' "$SIDECAR_WARNINGS" || echo none.)
EOF
)

mkdir -p "$RESULTS_DIR"
printf '%s\n' "$REPORT" >"$RESULTS_DIR/latest.md"
printf '\n%s\n\n' "$REPORT"
log "written to $RESULTS_DIR/latest.md"
