# shellcheck shell=bash
# Helpers shared by bench/run.sh and bench/sessions.sh; sourced, not run. The sourcing script
# sets these first (and REPO, BIN, SKIP_BUILD, which the helpers read when called):
#
#   BENCH_NAME     log prefix ([$BENCH_NAME ...]) and temp dir name (/tmp/mcp-sidecar-$BENCH_NAME.*)
#   CALL_MAX_TIME  curl --max-time of one tools/call in call and verify, seconds

: "${BENCH_NAME:?set BENCH_NAME before sourcing bench/lib.sh}"
: "${CALL_MAX_TIME:?set CALL_MAX_TIME before sourcing bench/lib.sh}"

# what every benchmark sends and what the fast upstream answers
REQ_BODY='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'
RESP_BODY='{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
INIT_BODY='{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}'
PROTOCOL_VERSION=2025-06-18
ADMIN_TOKEN=bench-admin-token-0123456789
PEER_SECRET=bench-peer-secret-0123456789

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2; }

PIDS=()
TMP=""

die() {
    printf '\n[%s] FAILED: %s\n' "$BENCH_NAME" "$*" >&2
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

make_tmp() { # sets TMP; from here on an exit stops every process started and removes TMP
    TMP=$(mktemp -d "/tmp/mcp-sidecar-$BENCH_NAME.XXXXXX")
    chmod 755 "$TMP" # nginx workers drop to an unprivileged user when started as root
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------------------------------------
# Tools

find_cmd() { # name -> path (also looks in sbin, which a non-root PATH may lack)
    local c
    c=$(command -v "$1" 2>/dev/null) || { [[ -x /usr/sbin/$1 ]] && c=/usr/sbin/$1; } || return 1
    echo "$c"
}

install_missing() { # [command:package ...]: the script's own tools beyond the common ones
    local missing=() pair
    find_cmd nginx >/dev/null || missing+=(nginx-light)
    find_cmd wrk >/dev/null || missing+=(wrk)
    find_cmd redis-server >/dev/null || missing+=(redis-server)
    for pair in "$@"; do
        find_cmd "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
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

find_tools() { # sets NGINX, WRK, REDIS
    NGINX=$(find_cmd nginx) || die "nginx not found after install"
    WRK=$(find_cmd wrk) || die "wrk not found after install"
    REDIS=$(find_cmd redis-server) || die "redis-server not found after install"
}

build_release() { # builds unless SKIP_BUILD=1; sets COMMIT
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
# Upstream, load and logs

upstream_conf() { # port -> nginx config of the fast upstream: a fixed JSON-RPC result, no Python in the way
    cat <<EOF
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
        listen 127.0.0.1:$1;
        location = /mcp {
            default_type application/json;
            # a fresh session id (32 hex) on every answer, so an initialize opens a session
            add_header Mcp-Session-Id \$request_id always;
            return 200 '$RESP_BODY';
        }
    }
}
EOF
}

wrk_lua() { # session -> wrk script: POST tools/call with that Mcp-Session-Id
    cat <<EOF
wrk.method = "POST"
wrk.body = '$REQ_BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = "$1"
wrk.headers["MCP-Protocol-Version"] = "$PROTOCOL_VERSION"
EOF
}

sidecar_warnings() { # sidecar logs... -> their lines at WARN or above, counted, 10 most frequent
    local f
    for f in "$@"; do
        [[ -f $f ]] || continue
        # a memory-store sidecar's single-pod notice at startup is expected, not a complaint
        grep -E '^\[[^]]* (WARN|ERROR) ' "$f" | grep -v 'single-pod mode' |
            sed -E "s/^\[[^ ]+ +([A-Z]+) +([^]]+)\] */$(basename "$f" .log): \1 \2: /" || true
    done | sed -E 's/request_id=[0-9a-f-]+/request_id=…/g' | sort | uniq -c | sort -rn | head -n 10 || true
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
words_median() { tr ' ' '\n' <<<"$1" | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

CALL_CODE="" CALL_MS=""
call() { # name url session: one tools/call; must give 200 and the exact body; sets CALL_CODE, CALL_MS
    local name=$1 url=$2 sid=$3 out body
    out=$(curl -sS --max-time "$CALL_MAX_TIME" -o "$TMP/call.body" -D "$TMP/call.headers" -w '%{http_code} %{time_total}' \
        -X POST "$url" \
        -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        -H "Mcp-Session-Id: $sid" \
        -H "MCP-Protocol-Version: $PROTOCOL_VERSION" \
        --data-binary "$REQ_BODY") || die "$name: curl $url failed"
    read -r CALL_CODE CALL_MS <<<"$out"
    CALL_MS=$(awk -v s="$CALL_MS" 'BEGIN { printf "%.3f", s * 1000 }')
    body=$(cat "$TMP/call.body")
    [[ $CALL_CODE == 200 ]] || die "$name: $url answered HTTP $CALL_CODE, not 200; body: $body"
    [[ $body == "$RESP_BODY" ]] || die "$name: $url answered an unexpected body: $body"
    grep -qi '^content-type: *application/json' "$TMP/call.headers" ||
        die "$name: $url answered without Content-Type application/json: $(cat "$TMP/call.headers")"
}

verify() { # name url session: call, and say so
    call "$@"
    log "verified $1: 200, application/json, expected body"
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

admin_get() { # admin_port path [max seconds; default 30, enough to list 10k sessions]
    curl -sS --max-time "${3:-30}" -H "X-Auth-Token: $ADMIN_TOKEN" "http://127.0.0.1:$1$2"
}

metric() { # admin_port name{labels} -> its value, 0 when absent
    curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v m="$2" 'index($0, m " ") == 1 { v = $2 } END { print v + 0 }'
}

warm_up() { # one short wrk run per target (the script's run_wrk)
    local t
    for t in "${TARGETS[@]}"; do
        log "warmup $t ($WARMUP)"
        run_wrk "$t" "$WARMUP" "$TMP/warmup-$t.out"
    done
}

# Runs ROUNDS rounds over TARGETS with the order rotated each round, so noise and drift hit every
# target alike. Needs the script's run_wrk, CPU_PIDS and round_row; fills RPS P50 P99 CPU
# (space-separated per-round values), ERR, REQS and ROUND_ROWS.
measure_rounds() {
    local t r k out before after reqs rps p50 p99 err cpu_us order
    declare -gA RPS P50 P99 CPU ERR REQS
    ROUND_ROWS=()
    for ((r = 1; r <= ROUNDS; r++)); do
        order=()
        for ((k = 0; k < ${#TARGETS[@]}; k++)); do
            order+=("${TARGETS[$(((k + r - 1) % ${#TARGETS[@]}))]}")
        done
        declare -gA this_round=()
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
            REQS[$t]=$((${REQS[$t]:-0} + reqs))
            this_round[$t]=$rps
            ((err == 0)) || log "WARNING: $t had $err non-2xx responses or socket errors in round $r"
            log "round $r/$ROUNDS $t: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, ${cpu_us} us CPU/req"
        done
        round_row "$r" "${order[@]}"
        unset this_round
    done
}
