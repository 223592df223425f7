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

REQ_BODY='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'
RESP_BODY='{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
INIT_BODY='{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}'
# for the targets that do not track sessions (upstream direct, nginx)
ANY_SESSION_ID=6f1c2d3e4b5a69788796a5b4c3d2e1f0
ADMIN_TOKEN=bench-admin-token-0123456789
PEER_SECRET=bench-peer-secret-0123456789
PROTOCOL_VERSION=2025-06-18

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

PIDS=()
TMP=""

die() {
    printf '\n[bench] FAILED: %s\n' "$*" >&2
    if [[ -n $TMP && -d $TMP ]]; then
        local f
        for f in "$TMP"/*.log; do
            [[ -s $f ]] || continue
            printf -- '--- last lines of %s ---\n' "$(basename "$f")" >&2
            tail -n 20 "$f" >&2
        done
    fi
    exit 1
}

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    [[ -n $TMP && -d $TMP ]] && rm -rf "$TMP"
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Tools

find_cmd() { # name -> path (also looks in sbin, which a non-root PATH may lack)
    local c
    c=$(command -v "$1" 2>/dev/null) || { [[ -x /usr/sbin/$1 ]] && c=/usr/sbin/$1; } || return 1
    echo "$c"
}

install_missing() {
    local missing=()
    find_cmd nginx >/dev/null || missing+=(nginx-light)
    find_cmd wrk >/dev/null || missing+=(wrk)
    find_cmd redis-server >/dev/null || missing+=(redis-server)
    find_cmd cmake >/dev/null || missing+=(cmake)
    find_cmd curl >/dev/null || missing+=(curl)
    ((${#missing[@]})) || return 0
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "missing ${missing[*]} and not root (no sudo to install them)"
        sudo=(sudo)
    fi
    log "installing ${missing[*]}"
    "${sudo[@]}" apt-get update
    # Debian 13 no longer ships nginx-light; plain nginx does the same job here
    if [[ " ${missing[*]} " == *" nginx-light "* ]] && ! apt-cache show nginx-light >/dev/null 2>&1; then
        missing=("${missing[@]/nginx-light/nginx}")
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

# ---------------------------------------------------------------------------------------------
# Processes and ports

USED_PORTS=" "
PORT=""
# Listen ports come from outside the kernel's ephemeral range: a port from inside it can be taken
# as the source port of some outgoing connection (wrk's, a proxy's) between the check and the bind.
read -r EPH_LO EPH_HI </proc/sys/net/ipv4/ip_local_port_range || { EPH_LO=32768 EPH_HI=60999; }
if ((EPH_LO > 12000)); then
    PORT_BASE=10000 PORT_SPAN=$((EPH_LO - 10000))
else
    PORT_BASE=$((EPH_HI + 1)) PORT_SPAN=$((65535 - EPH_HI))
fi
port_in_use() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
pick_port() { # sets PORT
    local p i
    for ((i = 0; i < 500; i++)); do
        p=$((PORT_BASE + (RANDOM * 32768 + RANDOM) % PORT_SPAN))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! port_in_use "$p"; then
            USED_PORTS+="$p "
            PORT=$p
            return 0
        fi
    done
    die "found no free loopback port"
}

START_PID=""
start() { # name cmd... ; output to $TMP/name.log, pid in START_PID
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    START_PID=$!
    PIDS+=("$START_PID")
}

wait_port() { # name pid port
    local i
    for ((i = 0; i < 150; i++)); do
        kill -0 "$2" 2>/dev/null || die "$1 exited during startup"
        port_in_use "$3" && return 0
        sleep 0.1
    done
    die "$1 did not listen on 127.0.0.1:$3 within 15s"
}

children_of() { # pid -> the pid and its direct children (nginx master + workers)
    local kids
    echo "$1"
    kids=$(cat "/proc/$1/task/$1/children" 2>/dev/null || true)
    [[ -n $kids ]] && printf '%s\n' $kids
    return 0
}

cpu_ticks() { # pids... -> utime+stime summed over them
    local total=0 p t
    for p in "$@"; do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || continue
        total=$((total + t))
    done
    echo "$total"
}

rss_kib() { # pids... -> VmRSS summed, KiB
    local total=0 p v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------------------------
# Measurement helpers

# wrk --latency output -> "requests rps p50_ms p99_ms errors"
parse_wrk() {
    awk '
        function ms(v,   n, u) {
            n = v; u = v
            sub(/[a-z]+$/, "", n); sub(/^[0-9.]+/, "", u)
            if (u == "us") return n / 1000
            if (u == "ms") return n + 0
            if (u == "s")  return n * 1000
            if (u == "m")  return n * 60000
            return -1
        }
        /^ *50% / { p50 = ms($2) }
        /^ *99% / { p99 = ms($2) }
        / requests in / { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
        END {
            if (rps == "" || p50 == "" || p99 == "" || reqs == "") exit 1
            printf "%d %.2f %.3f %.3f %d\n", reqs, rps, p50, p99, err
        }'
}

median() { # numbers on stdin -> median
    sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

verify() { # name url session: one POST must give 200, JSON content type and the exact body
    local name=$1 url=$2 sid=$3 code body
    code=$(curl -sS --max-time 5 -o "$TMP/verify.body" -D "$TMP/verify.headers" -w '%{http_code}' \
        -X POST "$url" \
        -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        -H "Mcp-Session-Id: $sid" \
        -H "MCP-Protocol-Version: $PROTOCOL_VERSION" \
        --data-binary "$REQ_BODY") || die "$name: curl $url failed"
    body=$(cat "$TMP/verify.body")
    [[ $code == 200 ]] || die "$name: $url answered HTTP $code, not 200; body: $body"
    [[ $body == "$RESP_BODY" ]] || die "$name: $url answered an unexpected body: $body"
    grep -qi '^content-type: *application/json' "$TMP/verify.headers" ||
        die "$name: $url answered without Content-Type application/json: $(cat "$TMP/verify.headers")"
    log "verified $name: 200, application/json, expected body"
}

SID=""
init_session() { # name url: POSTs initialize through url; sets SID to the Mcp-Session-Id answered
    local name=$1 url=$2 code
    code=$(curl -sS --max-time 5 -o "$TMP/init.body" -D "$TMP/init.headers" -w '%{http_code}' \
        -X POST "$url" \
        -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        --data-binary "$INIT_BODY") || die "$name: initialize to $url failed"
    [[ $code == 200 ]] || die "$name: initialize to $url answered HTTP $code: $(cat "$TMP/init.body")"
    SID=$(awk 'tolower($1) == "mcp-session-id:" { sub(/\r$/, "", $2); print $2 }' "$TMP/init.headers")
    [[ $SID =~ ^[0-9a-f]{32}$ ]] ||
        die "$name: initialize answered no usable Mcp-Session-Id: $(cat "$TMP/init.headers")"
}

admin_sessions() { # admin_port -> the admin API's session list (JSON)
    curl -sS --max-time 5 -H "X-Auth-Token: $ADMIN_TOKEN" "http://127.0.0.1:$1/api/admin/sessions"
}

metric() { # admin_port name{labels} -> its value, 0 when absent
    curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v m="$2" 'index($0, m " ") == 1 { v = $2 } END { print v + 0 }'
}

# ---------------------------------------------------------------------------------------------

install_missing
NGINX=$(find_cmd nginx) || die "nginx not found after install"
WRK=$(find_cmd wrk) || die "wrk not found after install"
REDIS=$(find_cmd redis-server) || die "redis-server not found after install"

if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release)
fi
[[ -x $BIN ]] || die "no release binary at $BIN"
# what is measured: the commit at build time, and whether the binary may differ from it
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    COMMIT+=" + uncommitted changes in src/ or Cargo files"
fi
if [[ -n $(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$BIN" -print -quit 2>/dev/null) ]]; then
    COMMIT+=" (WARNING: sources are newer than the binary; SKIP_BUILD=1?)"
fi

TMP=$(mktemp -d /tmp/mcp-sidecar-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers drop to an unprivileged user when started as root
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
cat >"$TMP/upstream.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/upstream.pid;
error_log $TMP/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/upstream-body;
    server {
        listen 127.0.0.1:$UP_PORT;
        location = /mcp {
            default_type application/json;
            # a fresh session id (32 hex) on every answer, so an initialize opens a session
            add_header Mcp-Session-Id \$request_id always;
            return 200 '$RESP_BODY';
        }
    }
}
EOF

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
    listed=$(admin_sessions "${ADMIN_PORT[$t]}") || die "$t: admin API failed"
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
    cat >"$TMP/request-$t.lua" <<EOF
wrk.method = "POST"
wrk.body = '$REQ_BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = "${SESSION[$t]}"
wrk.headers["MCP-Protocol-Version"] = "$PROTOCOL_VERSION"
EOF
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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

run_wrk() { # target duration outfile
    "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency -s "$TMP/request-$1.lua" "${URL[$1]}" >"$3" 2>&1 ||
        die "wrk against $1 failed: $(cat "$3")"
    check_alive
}

for t in "${TARGETS[@]}"; do
    log "warmup $t ($WARMUP)"
    run_wrk "$t" "$WARMUP" "$TMP/warmup-$t.out"
done

declare -A RPS P50 P99 CPU ERR
ROUND_ROWS=()
for ((r = 1; r <= ROUNDS; r++)); do
    # rotate the order each round so no target always runs first or last
    order=()
    for ((k = 0; k < ${#TARGETS[@]}; k++)); do
        order+=("${TARGETS[$(((k + r - 1) % ${#TARGETS[@]}))]}")
    done
    declare -A this_round=()
    for t in "${order[@]}"; do
        out=$TMP/round$r-$t.out
        # shellcheck disable=SC2086 # pid lists are space separated on purpose
        before=$(cpu_ticks ${CPU_PIDS[$t]})
        run_wrk "$t" "$DURATION" "$out"
        # shellcheck disable=SC2086
        after=$(cpu_ticks ${CPU_PIDS[$t]})
        read -r reqs rps p50 p99 err < <(parse_wrk <"$out") || die "could not parse wrk output: $(cat "$out")"
        ((reqs > 0)) || die "wrk made no requests against $t: $(cat "$out")"
        cpu_us=$(awk -v d="$((after - before))" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
        RPS[$t]+="$rps "
        P50[$t]+="$p50 "
        P99[$t]+="$p99 "
        CPU[$t]+="$cpu_us "
        ERR[$t]=$((${ERR[$t]:-0} + err))
        this_round[$t]=$rps
        ((err == 0)) || log "WARNING: $t had $err non-2xx responses or socket errors in round $r"
        log "round $r/$ROUNDS $t: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, ${cpu_us} us CPU/req"
    done
    ROUND_ROWS+=("| $r | ${order[*]} | ${this_round[direct]} | ${this_round[nginx]} | ${this_round[sidecar-memory]} | ${this_round[sidecar-redis]} | $(ratio "${this_round[sidecar-memory]}" "${this_round[nginx]}") | $(ratio "${this_round[sidecar-redis]}" "${this_round[nginx]}") |")
    unset this_round
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# the sidecars' own complaints (they run at warn): everything at WARN or above, except the
# single-pod notice a memory-store sidecar prints at startup
SIDECAR_WARNINGS=$(for f in "$TMP"/sidecar-*.log; do
    [[ -f $f ]] || continue
    grep -E '^\[[^]]* (WARN|ERROR) ' "$f" | grep -v 'single-pod mode' |
        sed -E "s/^\[[^ ]+ +([A-Z]+) +([^]]+)\] */$(basename "$f" .log): \1 \2: /" || true
done | sed -E 's/request_id=[0-9a-f-]+/request_id=…/g' | sort | uniq -c | sort -rn | head -n 10 || true)
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
    M_RPS[$t]=$(tr ' ' '\n' <<<"${RPS[$t]}" | grep . | median)
    M_P50[$t]=$(tr ' ' '\n' <<<"${P50[$t]}" | grep . | median)
    M_P99[$t]=$(tr ' ' '\n' <<<"${P99[$t]}" | grep . | median)
    M_CPU[$t]=$(tr ' ' '\n' <<<"${CPU[$t]}" | grep . | median)
done

met() { awk -v r="$1" 'BEGIN { print (r >= 0.9 ? "met" : "NOT met") }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

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
