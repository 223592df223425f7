#!/usr/bin/env bash
# Redis deployments: owned and forwarded request throughput, and Redis commands per forwarded
# request, on a plain standalone Redis, a standalone Redis over TLS, a Redis Cluster (3
# primaries) and the same cluster over TLS, all in one run. Two sidecars A and B per deployment
# (like two pods) in front of the fast nginx upstream; a session opened through A is sent to A
# (owned) and to B (forwarded: B looks the owner up in Redis, then hops to A). On loopback only.
#
#   bench/redis-modes.sh                # build (release), 3 interleaved rounds of 10 s per target
#
# Environment: ROUNDS (3), DURATION (10s), WARMUP (3s), WRK_THREADS (2), CONNECTIONS (32),
# SKIP_BUILD (0), RESULTS_DIR (bench/results; the report goes to redis-modes.md there).

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

BENCH_NAME=redis-modes
CALL_MAX_TIME=5
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

install_missing redis-cli:redis-tools openssl:openssl
find_tools
REDIS_CLI=$(find_cmd redis-cli) || die "redis-cli not found after install"
build_release
make_tmp

MODES=(plain tls cluster cluster-tls)
declare -A MODE_LABEL=(
    [plain]="standalone"
    [tls]="standalone, TLS"
    [cluster]="cluster, 3 primaries"
    [cluster-tls]="cluster, 3 primaries, TLS"
)

# ---------------------------------------------------------------------------------------------
# TLS material: a CA and a server certificate for 127.0.0.1

openssl_q() { openssl "$@" >>"$TMP/openssl.log" 2>&1 || die "openssl $*"; }
openssl_q req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$TMP/ca.key" \
    -out "$TMP/ca.crt" -days 2 -subj "/CN=bench ca" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
openssl_q req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$TMP/server.key" \
    -out "$TMP/server.csr" -subj "/CN=127.0.0.1"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$TMP/server.ext"
openssl_q x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.crt" -CAkey "$TMP/ca.key" -CAcreateserial \
    -out "$TMP/server.crt" -days 2 -extfile "$TMP/server.ext"
TLS_ARGS=(--tls-cert-file "$TMP/server.crt" --tls-key-file "$TMP/server.key"
    --tls-ca-cert-file "$TMP/ca.crt" --tls-auth-clients no)

# ---------------------------------------------------------------------------------------------
# Redis deployments; NODES[mode] lists each one's ports, CLI_TLS[mode] redis-cli's TLS options

declare -A NODES CLI_TLS REDIS_SECTION REDIS_PIDS
redis_node() { # mode port [args...]: starts one redis-server
    local mode=$1 port=$2
    shift 2
    local listen=(--port "$port")
    [[ $mode == *tls ]] && listen=(--port 0 --tls-port "$port" "${TLS_ARGS[@]}")
    start "redis-$mode-$port" "$REDIS" --bind 127.0.0.1 "${listen[@]}" --save "" --appendonly no \
        --daemonize no --dir "$TMP" "$@"
    REDIS_PIDS[$mode]+="$START_PID "
    wait_port "redis-$mode-$port" "$START_PID" "$port"
}
rcli() { # mode port args...
    local mode=$1 port=$2
    shift 2
    # shellcheck disable=SC2086 # options are space separated on purpose
    "$REDIS_CLI" -h 127.0.0.1 -p "$port" ${CLI_TLS[$mode]} "$@"
}

for mode in "${MODES[@]}"; do
    CLI_TLS[$mode]=""
    scheme=redis
    if [[ $mode == *tls ]]; then
        CLI_TLS[$mode]="--tls --cacert $TMP/ca.crt"
        scheme=rediss
    fi
    if [[ $mode == cluster* ]]; then
        ports=()
        for i in 1 2 3; do
            pick_port; p=$PORT
            pick_port; bus=$PORT
            extra=(--cluster-enabled yes --cluster-port "$bus" --cluster-config-file "$TMP/nodes-$p.conf")
            [[ $mode == *tls ]] && extra+=(--tls-cluster yes)
            redis_node "$mode" "$p" "${extra[@]}"
            ports+=("$p")
        done
        # shellcheck disable=SC2086
        "$REDIS_CLI" ${CLI_TLS[$mode]} --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-yes \
            >"$TMP/cluster-create-$mode.log" 2>&1 || die "redis-cli --cluster create ($mode): $(cat "$TMP/cluster-create-$mode.log")"
        for ((i = 0; i < 100; i++)); do
            ok=1
            for p in "${ports[@]}"; do
                rcli "$mode" "$p" cluster info 2>/dev/null | grep -q cluster_state:ok || ok=0
            done
            ((ok)) && break
            sleep 0.1
        done
        ((ok)) || die "cluster $mode did not become ok"
        NODES[$mode]="${ports[*]}"
        REDIS_SECTION[$mode]="{url: '$scheme://127.0.0.1:${ports[0]}', mode: cluster"
    else
        pick_port; p=$PORT
        redis_node "$mode" "$p"
        NODES[$mode]=$p
        REDIS_SECTION[$mode]="{url: '$scheme://127.0.0.1:$p'"
    fi
    [[ $mode == *tls ]] && REDIS_SECTION[$mode]+=", tls: {ca_file: '$TMP/ca.crt'}"
    REDIS_SECTION[$mode]+="}"
    log "redis $mode: ports ${NODES[$mode]}"
done

# ---------------------------------------------------------------------------------------------
# The upstream and two sidecars per deployment

pick_port; UP_PORT=$PORT
upstream_conf "$UP_PORT" >"$TMP/upstream.conf"
start upstream "$NGINX" -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf"
UP_PID=$START_PID
wait_port upstream "$UP_PID" "$UP_PORT"

declare -A SC_LISTEN SC_ADMIN SC_PEER SC_PID
start_sidecar() { # name redis_section
    local name=$1 lp ap pp ready
    pick_port; lp=$PORT
    pick_port; ap=$PORT
    pick_port; pp=$PORT
    cat >"$TMP/$name.yaml" <<EOF
server:
  listen: "127.0.0.1:$lp"
  admin_listen: "127.0.0.1:$ap"
  peer_listen: "127.0.0.1:$pp"
  threads: 2
  grace_period: 0s
  shutdown_timeout: 1s
  pid_file: "$TMP/$name.pid"
  upgrade_sock: "$TMP/$name-upgrade.sock"
redis: $2
peer:
  secret: "$PEER_SECRET"
admin:
  token: "$ADMIN_TOKEN"
routes:
  - prefix: /mcp
    upstream: "http://127.0.0.1:$UP_PORT/mcp"
    server_name: bench
EOF
    "$BIN" -t -c "$TMP/$name.yaml" >/dev/null || die "$name config rejected"
    start "$name" env RUST_LOG=warn "$BIN" -c "$TMP/$name.yaml"
    SC_PID[$name]=$START_PID
    SC_LISTEN[$name]=$lp
    SC_ADMIN[$name]=$ap
    SC_PEER[$name]=$pp
    wait_port "$name" "$START_PID" "$lp"
    wait_port "$name-admin" "$START_PID" "$ap"
    for ((i = 0; i < 50; i++)); do
        ready=$(curl -sS --max-time 5 "http://127.0.0.1:$ap/readyz") || die "$name /readyz failed"
        [[ $ready == *'"status":"ready"'* ]] && return 0
        sleep 0.1
    done
    die "$name is not ready: $ready"
}
url_of() { echo "http://127.0.0.1:${SC_LISTEN[$1]}/mcp"; }

TARGETS=()
declare -A URL LABEL CPU_PIDS SESSION
for mode in "${MODES[@]}"; do
    start_sidecar "A-$mode" "${REDIS_SECTION[$mode]}"
    start_sidecar "B-$mode" "${REDIS_SECTION[$mode]}"
    init_session "A-$mode" "$(url_of "A-$mode")"
    SESSION[$mode]=$SID
    TARGETS+=("owned-$mode" "forwarded-$mode")
    URL[owned-$mode]=$(url_of "A-$mode")
    URL[forwarded-$mode]=$(url_of "B-$mode")
    CPU_PIDS[owned-$mode]=${SC_PID[A-$mode]}
    CPU_PIDS[forwarded-$mode]="${SC_PID[A-$mode]} ${SC_PID[B-$mode]}"
    verify "owned-$mode" "${URL[owned-$mode]}" "$SID"
    verify "forwarded-$mode" "${URL[forwarded-$mode]}" "$SID"
    wrk_lua "$SID" >"$TMP/request-$mode.lua"
done

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
CLK_TCK=$(getconf CLK_TCK)

run_wrk() { # target duration outfile
    local mode=${1#*-}
    "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency -s "$TMP/request-$mode.lua" "${URL[$1]}" >"$3" 2>&1 ||
        die "wrk against $1 failed: $(cat "$3")"
    local pid
    for pid in ${REDIS_PIDS[$mode]} "${SC_PID[A-$mode]}" "${SC_PID[B-$mode]}" "$UP_PID"; do
        kill -0 "$pid" 2>/dev/null || die "process $pid is no longer running"
    done
}
round_row() {
    local r=$1 t row="| $1 |"
    for t in "${TARGETS[@]}"; do row+=" ${this_round[$t]} |"; done
    ROUND_ROWS+=("$row")
}

warm_up
measure_rounds

# nothing was recovered: every forwarded request went to the owner over the hop
for mode in "${MODES[@]}"; do
    for s in A B; do
        rec=$(metric "${SC_ADMIN[$s-$mode]}" 'mcp_sidecar_sessions_total{event="recovered"}')
        ((${rec%.*} == 0)) || die "$s-$mode recovered $rec sessions; the owner should have stayed put"
    done
done

# ---------------------------------------------------------------------------------------------
# Redis commands per forwarded request: INFO commandstats of every node around one wrk run

cmdstats() { # mode -> "command calls" summed over the deployment's nodes
    local mode=$1 p
    for p in ${NODES[$mode]}; do
        rcli "$mode" "$p" INFO commandstats
    done | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ { sub(/^cmdstat_/, "", $1); s[$1] += $3 } END { for (c in s) print c, s[c] }'
}
declare -A C_TABLE C_OTHER C_REQS
for mode in "${MODES[@]}"; do
    n=$(wc -w <<<"${NODES[$mode]}")
    cmdstats "$mode" >"$TMP/cmd-$mode-before"
    run_wrk "forwarded-$mode" "$DURATION" "$TMP/cmd-$mode.out"
    cmdstats "$mode" >"$TMP/cmd-$mode-after"
    read -r reqs _ < <(parse_wrk <"$TMP/cmd-$mode.out") || die "could not parse wrk output"
    C_REQS[$mode]=$reqs
    # the INFO calls of the first snapshot are ours; SET is the pods' heartbeats
    C_TABLE[$mode]=$(awk -v n="$n" 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if ($1 == "info") d -= n; if (d > 0) print $1, d }' \
        "$TMP/cmd-$mode-before" "$TMP/cmd-$mode-after" | sort)
    C_OTHER[$mode]=$(awk '$1 != "set" { s += $2 } END { print s + 0 }' <<<"${C_TABLE[$mode]}")
    log "forwarded-$mode: $reqs requests, Redis commands: $(tr '\n' ' ' <<<"${C_TABLE[$mode]}")"
done

# ---------------------------------------------------------------------------------------------
# Report

declare -A M_RPS M_P50 M_P99 M_CPU
for t in "${TARGETS[@]}"; do
    M_RPS[$t]=$(words_median "${RPS[$t]}")
    M_P50[$t]=$(words_median "${P50[$t]}")
    M_P99[$t]=$(words_median "${P99[$t]}")
    M_CPU[$t]=$(words_median "${CPU[$t]}")
done
per_req() { awk -v a="$1" -v n="$2" 'BEGIN { printf "%.2f", (n > 0 ? a / n : 0) }'; }

REPORT=$(
    echo "# Redis deployments: \`ROUNDS=$ROUNDS bench/redis-modes.sh\`"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT, $(nproc) cores, load average before: $LOAD_BEFORE."
    echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION per run, $WARMUP warmup per target, targets interleaved with the order rotated; medians over $ROUNDS rounds."
    echo
    echo "| Redis | target | req/s | p50 ms | p99 ms | CPU µs/request (sidecars) | errors | req/s vs standalone |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for mode in "${MODES[@]}"; do
        for kind in owned forwarded; do
            t=$kind-$mode
            echo "| ${MODE_LABEL[$mode]} | $kind | ${M_RPS[$t]} | ${M_P50[$t]} | ${M_P99[$t]} | ${M_CPU[$t]} | ${ERR[$t]} | $(ratio "${M_RPS[$t]}" "${M_RPS[$kind-plain]}") |"
        done
    done
    echo
    echo "req/s per round (columns in the order of TARGETS: ${TARGETS[*]}):"
    echo
    printf '| round |'; for t in "${TARGETS[@]}"; do printf ' %s |' "$t"; done; echo
    printf '|---:|'; for t in "${TARGETS[@]}"; do printf -- '---:|'; done; echo
    printf '%s\n' "${ROUND_ROWS[@]}"
    echo
    echo "Redis commands per forwarded request (INFO commandstats of every node around one $DURATION run; SET = heartbeats):"
    echo
    echo "| Redis | requests | commands by name | non-heartbeat commands per request |"
    echo "|---|---:|---|---:|"
    for mode in "${MODES[@]}"; do
        echo "| ${MODE_LABEL[$mode]} | ${C_REQS[$mode]} | $(tr '\n' ' ' <<<"${C_TABLE[$mode]}") | $(per_req "${C_OTHER[$mode]}" "${C_REQS[$mode]}") |"
    done
)
mkdir -p "$RESULTS_DIR"
printf '%s\n' "$REPORT" >"$RESULTS_DIR/redis-modes.md"
printf '\n%s\n\n' "$REPORT"
log "written to $RESULTS_DIR/redis-modes.md"
