#!/usr/bin/env bash
# Sessions across pods: what owning, forwarding and recovering a session costs. Two sidecars,
# A and B, share one Redis (like two pods of a deployment) in front of a fast nginx upstream that
# hands out a fresh Mcp-Session-Id on every answer. On loopback only. Measures, in one run:
#
#   a. an owned request (session opened through A, sent to A) against the upstream direct
#   b. a forwarded request (the same session sent to B, which forwards it to A over the signed
#      peer hop) against the owned request; a and b run interleaved, ROUNDS rounds, medians
#   c. Redis commands per steady-state request (INFO commandstats around one wrk run), owned and
#      forwarded; the pods' heartbeats are shown apart
#   d. the first request after the owner dies (SIGKILL), sent to B: with A's registration still
#      standing (A's peer port refuses) and with it deleted; against an owned request on B
#   e. sidecar RSS with SESSIONS live sessions, memory store and Redis store
#
#   bench/sessions.sh                   # build (release), then everything above
#   ROUNDS=5 bench/sessions.sh          # more rounds for a and b
#
# Environment:
#   ROUNDS          rounds for a and b (default 3); each round runs every target once
#   DURATION        wrk duration of one measured run (default 10s), also for c
#   WARMUP          wrk warmup per target (default 3s)
#   WRK_THREADS     wrk threads (default 2)
#   CONNECTIONS     wrk connections (default 32)
#   RECOVERY_RUNS   repetitions of d (default 10)
#   SESSIONS        sessions opened for e (default 10000)
#   SKIP_BUILD      1: use the existing target/release/mcp-sidecar as is (default 0)
#   RESULTS_DIR     where sessions.md goes (default bench/results, which is gitignored)
#
# Everything listens on 127.0.0.1 on free ports outside the ephemeral range, with configuration
# in a temp dir; an EXIT trap stops every process the script started and removes the temp dir.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
WRK_THREADS=${WRK_THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
RECOVERY_RUNS=${RECOVERY_RUNS:-10}
SESSIONS=${SESSIONS:-10000}
SKIP_BUILD=${SKIP_BUILD:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$REPO/bench/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/mcp-sidecar

HEARTBEAT_S=2 # session.heartbeat_interval (the default; the configs below do not change it)

BENCH_NAME=sessions
CALL_MAX_TIME=10 # a call in d may be the one that recovers a session from a dead owner
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# ---------------------------------------------------------------------------------------------
# Processes

stop() { # signal pid: stops one process started here and forgets it
    local sig=$1 pid=$2 p keep=()
    kill "-$sig" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------------------------------------
# Measurement helpers

maximum() { sort -g | tail -n 1; }

rcli() { "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

cmdstats() { # -> "command calls" lines from INFO commandstats
    rcli INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ { sub(/^cmdstat_/, "", $1); print $1, $3 }'
}

# ---------------------------------------------------------------------------------------------

install_missing redis-cli:redis-tools
find_tools
REDIS_CLI=$(find_cmd redis-cli) || die "redis-cli not found after install"
build_release
make_tmp

pick_port; UP_PORT=$PORT
pick_port; REDIS_PORT=$PORT

# the fast upstream: a fixed JSON-RPC result, and a fresh session id ($request_id, 32 hex) on
# every answer, so every initialize opens a new session and a replayed one gets a new upstream id
upstream_conf "$UP_PORT" >"$TMP/upstream.conf"
"$NGINX" -t -q -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf" || die "upstream nginx config rejected"

# name -> "listen admin peer" of a running sidecar
declare -A SC_LISTEN SC_ADMIN SC_PEER SC_PID

start_sidecar() { # name redis_url(empty: memory store)
    local name=$1 redis_url=$2 lp ap pp
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
redis:
  url: "$redis_url"
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
    wait_port "$name-peer" "$START_PID" "$pp"
    local want=memory ready
    [[ -n $redis_url ]] && want=redis
    ready=$(curl -sS --max-time 5 "http://127.0.0.1:$ap/readyz") || die "$name /readyz failed"
    [[ $ready == *'"status":"ready"'* && $ready == *"\"store\":\"$want\""* ]] ||
        die "$name is not ready on the $want store: $ready"
}
url_of() { echo "http://127.0.0.1:${SC_LISTEN[$1]}/mcp"; }

start upstream "$NGINX" -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf"
UP_PID=$START_PID
start redis "$REDIS" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --dir "$TMP"
REDIS_PID=$START_PID
wait_port upstream "$UP_PID" "$UP_PORT"
wait_port redis "$REDIS_PID" "$REDIS_PORT"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
start_sidecar A "$REDIS_URL"
start_sidecar B "$REDIS_URL"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# a. and b.: owned (A), forwarded (B -> A), upstream direct; interleaved rounds

init_session A "$(url_of A)"
S_AB=$SID
listed=$(admin_get "${SC_ADMIN[B]}" /api/admin/sessions) || die "admin API on B failed"
[[ $listed == *"\"sessionId\":\"$S_AB\""* && $listed == *"\"owner\":\"127.0.0.1:${SC_PEER[A]}\""* ]] ||
    die "session $S_AB is not in the store as owned by A (127.0.0.1:${SC_PEER[A]}): $listed"
log "session $S_AB opened through A; the store lists it as owned by A"

TARGETS=(direct owned forwarded)
declare -A URL=(
    [direct]="http://127.0.0.1:$UP_PORT/mcp"
    [owned]=$(url_of A)
    [forwarded]=$(url_of B)
)
declare -A LABEL=(
    [direct]="upstream direct (no proxy)"
    [owned]="owned: session opened via A, sent to A"
    [forwarded]="forwarded: the same session sent to B (B → A)"
)
# whose CPU a run is charged to: the proxies on the path (for direct, the upstream)
declare -A CPU_PIDS=(
    [direct]="$(children_of "$UP_PID" | tr '\n' ' ')"
    [owned]="${SC_PID[A]}"
    [forwarded]="${SC_PID[A]} ${SC_PID[B]}"
)
for t in "${TARGETS[@]}"; do
    verify "$t" "${URL[$t]}" "$S_AB"
done

wrk_lua "$S_AB" >"$TMP/request.lua"

check_alive() {
    local pid
    for pid in "$UP_PID" "$REDIS_PID" "${SC_PID[A]}" "${SC_PID[B]}"; do
        kill -0 "$pid" 2>/dev/null || die "process $pid is no longer running (crashed, or stopped from outside)"
    done
}

run_wrk() { # target duration outfile
    "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency -s "$TMP/request.lua" "${URL[$1]}" >"$3" 2>&1 ||
        die "wrk against $1 failed: $(cat "$3")"
    check_alive
}

round_row() { # round order...: one row of the per-round table (this_round: req/s by target)
    local r=$1
    shift
    ROUND_ROWS+=("| $r | $* | ${this_round[direct]} | ${this_round[owned]} | ${this_round[forwarded]} | $(ratio "${this_round[owned]}" "${this_round[direct]}") | $(ratio "${this_round[forwarded]}" "${this_round[owned]}") |")
}

warm_up
FWD_BEFORE=$(metric "${SC_ADMIN[B]}" 'mcp_sidecar_sessions_total{event="forwarded"}')
measure_rounds

# every forwarded request really went over the hop, and nothing was recovered
FWD_AFTER=$(metric "${SC_ADMIN[B]}" 'mcp_sidecar_sessions_total{event="forwarded"}')
FWD_COUNTED=$((${FWD_AFTER%.*} - ${FWD_BEFORE%.*}))
for s in A B; do
    rec=$(metric "${SC_ADMIN[$s]}" 'mcp_sidecar_sessions_total{event="recovered"}')
    ((${rec%.*} == 0)) || die "$s recovered $rec sessions during a and b; the owner should have stayed put"
done
A_FWD=$(metric "${SC_ADMIN[A]}" 'mcp_sidecar_sessions_total{event="forwarded"}')
((${A_FWD%.*} == 0)) || die "A forwarded $A_FWD requests; it owns the session"
((FWD_COUNTED >= REQS[forwarded])) ||
    die "B counted $FWD_COUNTED forwarded requests, fewer than the ${REQS[forwarded]} wrk completed against it"
log "B forwarded $FWD_COUNTED requests during the rounds (wrk completed ${REQS[forwarded]})"

statuses() { # admin_port -> "status×count, ..." of tools/call requests, from /metrics
    curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" | awk '
        /^mcp_sidecar_requests_total\{/ && /method="tools\/call"/ {
            match($0, /status="[0-9]*"/); st = substr($0, RSTART + 8, RLENGTH - 9)
            printf "%s%s×%d", (n++ ? ", " : ""), st, $NF }'
}
STATUS_A=$(statuses "${SC_ADMIN[A]}")
STATUS_B=$(statuses "${SC_ADMIN[B]}")
log "tools/call answers by status (warmups and checks included): A: $STATUS_A; B: $STATUS_B"

declare -A M_RPS M_P50 M_P99 M_CPU
for t in "${TARGETS[@]}"; do
    M_RPS[$t]=$(words_median "${RPS[$t]}")
    M_P50[$t]=$(words_median "${P50[$t]}")
    M_P99[$t]=$(words_median "${P99[$t]}")
    M_CPU[$t]=$(words_median "${CPU[$t]}")
done

# ---------------------------------------------------------------------------------------------
# c. Redis commands per steady-state request (owned, then forwarded)

declare -A C_TOTAL C_HB C_OTHER C_REQS C_SECS C_TABLE
redis_per_request() { # target
    local t=$1 before after t0 t1 out reqs rest
    cmdstats >"$TMP/cmdstats-$t-before"
    t0=$(date +%s.%N)
    run_wrk "$t" "$DURATION" "$TMP/redis-$t.out"
    t1=$(date +%s.%N)
    cmdstats >"$TMP/cmdstats-$t-after"
    read -r reqs rest < <(parse_wrk <"$TMP/redis-$t.out") || die "could not parse wrk output"
    # per command: calls after - calls before; the INFO that took the first snapshot is ours
    C_TABLE[$t]=$(awk 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if ($1 == "info") d -= 1; if (d > 0) print $1, d }' \
        "$TMP/cmdstats-$t-before" "$TMP/cmdstats-$t-after" | sort)
    C_TOTAL[$t]=$(awk '{ s += $2 } END { print s + 0 }' <<<"${C_TABLE[$t]}")
    # pod heartbeats: one SET ... PX ... GET per sidecar every heartbeat interval
    C_HB[$t]=$(awk '$1 == "set" { print $2 } END { }' <<<"${C_TABLE[$t]}")
    C_HB[$t]=${C_HB[$t]:-0}
    C_OTHER[$t]=$((C_TOTAL[$t] - C_HB[$t]))
    C_REQS[$t]=$reqs
    C_SECS[$t]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    log "c. $t: $reqs requests, Redis commands ${C_TOTAL[$t]} (SET ${C_HB[$t]}, other ${C_OTHER[$t]}) in ${C_SECS[$t]} s: $(tr '\n' ' ' <<<"${C_TABLE[$t]}")"
}
redis_per_request owned
redis_per_request forwarded

# ---------------------------------------------------------------------------------------------
# d. the first request after the owner dies

# A's part is done; B stays. Each repetition starts a fresh owner A<i> on fresh ports.
stop TERM "${SC_PID[A]}"
D_STANDING="" D_GONE="" D_OWNED=""
REC_BEFORE=$(metric "${SC_ADMIN[B]}" 'mcp_sidecar_sessions_total{event="recovered"}')
for ((i = 1; i <= RECOVERY_RUNS; i++)); do
    a=A$i
    start_sidecar "$a" "$REDIS_URL"
    init_session "$a" "$(url_of "$a")"
    s1=$SID
    init_session "$a" "$(url_of "$a")"
    s2=$SID
    # the client's requests had been landing on B: B forwards s1 to its owner once
    call "d.$i forwarded before the kill" "$(url_of B)" "$s1"
    stop KILL "${SC_PID[$a]}"
    port_in_use "${SC_PEER[$a]}" && die "$a's peer port still answers after SIGKILL"
    [[ $(rcli EXISTS "mcp:pod:127.0.0.1:${SC_PEER[$a]}") == 1 ]] ||
        die "d.$i: $a's registration is already gone; the 'standing' case would not be measured"
    # 1: A's registration still stands (pod_ttl 10 s), its peer port refuses: B recovers
    call "d.$i registration standing" "$(url_of B)" "$s1"
    D_STANDING+="$CALL_MS "
    # 2: A's registration is gone (as after its TTL ran out): B recovers without trying A
    rcli DEL "mcp:pod:127.0.0.1:${SC_PEER[$a]}" >/dev/null
    call "d.$i registration gone" "$(url_of B)" "$s2"
    D_GONE+="$CALL_MS "
    # 3: for comparison, the next request of s1 on B, which owns it now
    call "d.$i owned on B" "$(url_of B)" "$s1"
    D_OWNED+="$CALL_MS "
    for s in "$s1" "$s2"; do
        owner=$(rcli HGET "mcp:session:$s" owner)
        [[ $owner == "127.0.0.1:${SC_PEER[B]}" ]] || die "d.$i: session $s is owned by '$owner' after recovery, not B"
    done
    log "d. $i/$RECOVERY_RUNS: registration standing $(awk '{print $NF}' <<<"$D_STANDING") ms, gone $(awk '{print $NF}' <<<"$D_GONE") ms, owned on B $(awk '{print $NF}' <<<"$D_OWNED") ms"
done
REC_AFTER=$(metric "${SC_ADMIN[B]}" 'mcp_sidecar_sessions_total{event="recovered"}')
RECOVERED=$((${REC_AFTER%.*} - ${REC_BEFORE%.*}))
((RECOVERED == 2 * RECOVERY_RUNS)) ||
    die "B counted $RECOVERED recoveries, expected $((2 * RECOVERY_RUNS))"
check_d() { tr ' ' '\n' <<<"$1" | grep . | "$2"; }

# ---------------------------------------------------------------------------------------------
# e. RSS with $SESSIONS live sessions, memory store and Redis store

stop TERM "${SC_PID[B]}"
declare -A E_IDLE E_WARM E_FULL E_COUNT E_SECS E_CODES
E_REDIS_MEM_BEFORE="" E_REDIS_MEM_AFTER="" E_REDIS_KEYS="" E_REDIS_CALLS=""

# curl URL globbing: N requests over one keep-alive connection per parallel transfer slot
many() { # url count body extra-header... -> prints one HTTP code per line
    local url=$1 n=$2 body=$3
    shift 3
    # (curl 7.88 draws its parallel progress meter even with -s: stderr goes to a file)
    curl -sS --max-time 600 -Z --parallel-max 4 -o /dev/null -w '%{http_code}\n' -X POST \
        -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
        "$@" --data-binary "$body" "$url?n=[1-$n]" 2>"$TMP/many.err" ||
        die "curl against $url failed: $(tail -c 2000 "$TMP/many.err")"
}

rss_with_sessions() { # name redis_url
    local name=$1 redis_url=$2 pid url t0 t1 codes listed
    start_sidecar "$name" "$redis_url"
    pid=${SC_PID[$name]}
    url=$(url_of "$name")
    sleep 1
    E_IDLE[$name]=$(rss_kib "$pid")
    # warm the request path (threads, buffers, connection pools) without opening sessions:
    # tools/call without a session id is proxied, never captured
    codes=$(many "$url" 2000 "$REQ_BODY" | sort | uniq -c | awk '{ printf "%s×%s ", $2, $1 }')
    [[ $codes == "200×2000 " ]] || die "$name: warmup answers: $codes"
    sleep 1
    E_WARM[$name]=$(rss_kib "$pid")
    t0=$(date +%s.%N)
    codes=$(many "$url" "$SESSIONS" "$INIT_BODY" | sort | uniq -c | awk '{ printf "%s×%s ", $2, $1 }')
    t1=$(date +%s.%N)
    E_CODES[$name]=$codes
    [[ $codes == "200×$SESSIONS " ]] || die "$name: initialize answers: $codes"
    E_SECS[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    sleep 1
    E_FULL[$name]=$(rss_kib "$pid")
    # count them: the sidecar's own table, and the admin API's listing
    local active listed_n
    active=$(metric "${SC_ADMIN[$name]}" 'mcp_sidecar_active_sessions')
    listed=$(admin_get "${SC_ADMIN[$name]}" /api/admin/sessions) || die "$name: admin API failed"
    listed_n=$(grep -o '"sessionId"' <<<"$listed" | wc -l)
    E_COUNT[$name]="active_sessions gauge ${active%.*}, admin API lists $listed_n"
    ((${active%.*} == SESSIONS && listed_n == SESSIONS)) ||
        die "$name: expected $SESSIONS sessions: ${E_COUNT[$name]}"
    log "e. $name: ${E_COUNT[$name]}; RSS idle $(mib "${E_IDLE[$name]}") MiB, warm $(mib "${E_WARM[$name]}") MiB, with sessions $(mib "${E_FULL[$name]}") MiB"
}

rss_with_sessions e-memory ""
stop TERM "${SC_PID[e-memory]}"
# Redis: its own database (1), so only this sidecar's sessions are in it
rcli -n 1 FLUSHDB >/dev/null
E_REDIS_MEM_BEFORE=$(rcli INFO memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }')
cmdstats >"$TMP/cmdstats-e-before"
rss_with_sessions e-redis "redis://127.0.0.1:$REDIS_PORT/1"
cmdstats >"$TMP/cmdstats-e-after"
E_REDIS_MEM_AFTER=$(rcli INFO memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }')
E_REDIS_KEYS=$(rcli -n 1 --scan --pattern 'mcp:session:*' | wc -l)
((E_REDIS_KEYS == SESSIONS)) || die "Redis db 1 holds $E_REDIS_KEYS session keys, expected $SESSIONS"
E_REDIS_CALLS=$(awk 'NR == FNR { b[$1] = $2; next } $1 != "info" && $1 != "scan" && $1 != "hgetall" && $1 != "pttl" { d = $2 - b[$1]; if (d > 0) printf "%s %d, ", $1, d }' \
    "$TMP/cmdstats-e-before" "$TMP/cmdstats-e-after")
E_REDIS_CALLS=${E_REDIS_CALLS%, }
stop TERM "${SC_PID[e-redis]}"

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# the sidecars' own complaints (they run at warn): everything at WARN or above
SIDECAR_WARNINGS=$(sidecar_warnings "$TMP"/A*.log "$TMP"/B.log "$TMP"/e-*.log)
[[ -n $SIDECAR_WARNINGS ]] && log "WARNING: the sidecars logged warnings or errors: $SIDECAR_WARNINGS"


# ---------------------------------------------------------------------------------------------
# Report

CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
join_table() { awk 'NF { printf "%s%s %s", (n++ ? ", " : ""), $1, $2 }' <<<"$1"; }
per_req() { awk -v a="$1" -v n="$2" 'BEGIN { printf "%.5f", a / n }'; }
per_session() { awk -v a="$1" -v b="$2" -v n="$SESSIONS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }'; }

REPORT=$(
    cat <<EOF
# mcp-sidecar sessions across pods

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Commit built and measured: $COMMIT
- Machine: $(nproc) cores (nproc), ${CPU_MODEL:-unknown CPU}, Linux $(uname -r); load average before $LOAD_BEFORE, after $LOAD_AFTER
- Tools: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $("$WRK" -v 2>&1 | head -n1 | awk '{print $1, $2}'), Redis $("$REDIS" --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
- Setup: sidecars A and B (\`threads: 2\`, RUST_LOG=warn, same \`redis.url\`, \`peer.secret\`, \`admin.token\`), one Redis, one nginx upstream (1 worker, fixed ${#RESP_BODY}-byte result, \`Mcp-Session-Id: \$request_id\` on every answer); all on 127.0.0.1, sharing the cores with wrk
- Load for a, b, c: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency, POST tools/call (${#REQ_BODY} bytes) with the Mcp-Session-Id of one session opened through A; $WARMUP warmup per target, then $ROUNDS rounds, order rotated each round

## a, b. Owned and forwarded requests (medians over $ROUNDS rounds)

| Target | req/s | p50 ms | p99 ms | CPU µs/request | errors |
|---|---:|---:|---:|---:|---:|
EOF
    for t in "${TARGETS[@]}"; do
        printf '| %s | %.0f | %.3f | %.3f | %.1f | %d |\n' "${LABEL[$t]}" "${M_RPS[$t]}" "${M_P50[$t]}" \
            "${M_P99[$t]}" "${M_CPU[$t]}" "${ERR[$t]:-0}"
    done
    cat <<EOF

CPU µs/request: CPU time of the proxies on the path (owned: A; forwarded: A + B; direct: the
upstream) divided by the requests wrk completed. errors = non-2xx responses plus socket errors.
B's own counter: $FWD_COUNTED requests forwarded during the rounds (wrk completed ${REQS[forwarded]}); no
session was recovered. tools/call answers by HTTP status as the sidecars count them (warmups and
checks included; 0 = the client closed the connection first): A: $STATUS_A; B: $STATUS_B.

| Ratio (medians) | req/s | p50 | p99 | CPU per request |
|---|---:|---:|---:|---:|
| a. owned / upstream direct | $(ratio "${M_RPS[owned]}" "${M_RPS[direct]}") | $(ratio "${M_P50[owned]}" "${M_P50[direct]}") | $(ratio "${M_P99[owned]}" "${M_P99[direct]}") | $(ratio "${M_CPU[owned]}" "${M_CPU[direct]}") |
| b. forwarded / owned | $(ratio "${M_RPS[forwarded]}" "${M_RPS[owned]}") | $(ratio "${M_P50[forwarded]}" "${M_P50[owned]}") | $(ratio "${M_P99[forwarded]}" "${M_P99[owned]}") | $(ratio "${M_CPU[forwarded]}" "${M_CPU[owned]}") |

req/s per round:

| Round | order | direct | owned | forwarded | owned / direct | forwarded / owned |
|---:|---|---:|---:|---:|---:|---:|
$(printf '%s\n' "${ROUND_ROWS[@]}")

## c. Redis commands per steady-state request

\`INFO commandstats\` before and after one wrk run ($DURATION); the calls of the INFO itself are
left out. Heartbeats: each of the 2 sidecars renews its registration with one \`SET … PX … GET\`
every ${HEARTBEAT_S} s.

| Run | requests | seconds | Redis commands | of which SET (heartbeats; 2 sidecars × seconds / ${HEARTBEAT_S} s ≈ seconds) | other commands | other commands per request |
|---|---:|---:|---:|---:|---:|---:|
| owned (wrk → A) | ${C_REQS[owned]} | ${C_SECS[owned]} | ${C_TOTAL[owned]} | ${C_HB[owned]} | ${C_OTHER[owned]} | $(per_req "${C_OTHER[owned]}" "${C_REQS[owned]}") |
| forwarded (wrk → B → A) | ${C_REQS[forwarded]} | ${C_SECS[forwarded]} | ${C_TOTAL[forwarded]} | ${C_HB[forwarded]} | ${C_OTHER[forwarded]} | $(per_req "${C_OTHER[forwarded]}" "${C_REQS[forwarded]}") |

Commands by name: owned: $(join_table "${C_TABLE[owned]}"); forwarded: $(join_table "${C_TABLE[forwarded]}").

Target for owned requests: 0 Redis round trips per request: **$(awk -v o="${C_OTHER[owned]}" -v n="${C_REQS[owned]}" 'BEGIN { print (o / n < 0.001 ? "met" : "NOT met") }')** ($(per_req "${C_OTHER[owned]}" "${C_REQS[owned]}") non-heartbeat commands per request).

## d. First request after the owner dies ($RECOVERY_RUNS repetitions)

Each repetition: a fresh sidecar A<i> opens two sessions (initialize), B forwards one request of
the first to A<i>, A<i> gets SIGKILL; then single curl requests to B (new connection each, time_total):

| Request to B | median ms | max ms | answers |
|---|---:|---:|---|
| first after the kill, A's registration still standing (peer port refuses → replay) | $(check_d "$D_STANDING" median) | $(check_d "$D_STANDING" maximum) | $RECOVERY_RUNS × 200 |
| first after the kill, A's registration deleted (\`DEL mcp:pod:…\`) → replay | $(check_d "$D_GONE" median) | $(check_d "$D_GONE" maximum) | $RECOVERY_RUNS × 200 |
| next request of the same session, now owned by B | $(check_d "$D_OWNED" median) | $(check_d "$D_OWNED" maximum) | $RECOVERY_RUNS × 200 |

B counted $RECOVERED recoveries (2 per repetition); afterwards the store names B as the owner of
both sessions. Per run, ms: standing: $D_STANDING; gone: $D_GONE; owned: $D_OWNED

## e. Resident memory with $SESSIONS live sessions

$SESSIONS initialize POSTs (curl, 4 parallel keep-alive connections), each answered with a new
session id; counted afterwards by the \`mcp_sidecar_active_sessions\` gauge and the admin API.
Warm = after 2000 tools/call requests without a session id (the request path warmed up, no
session opened). Bytes per session = (with sessions − warm) / $SESSIONS.

| Sidecar | idle after startup | warm, no sessions | with $SESSIONS sessions | bytes per session | initialize time | count check |
|---|---:|---:|---:|---:|---:|---|
| memory store | $(mib "${E_IDLE[e-memory]}") MiB | $(mib "${E_WARM[e-memory]}") MiB | $(mib "${E_FULL[e-memory]}") MiB | $(per_session "${E_WARM[e-memory]}" "${E_FULL[e-memory]}") | ${E_SECS[e-memory]} s | ${E_COUNT[e-memory]} |
| Redis store | $(mib "${E_IDLE[e-redis]}") MiB | $(mib "${E_WARM[e-redis]}") MiB | $(mib "${E_FULL[e-redis]}") MiB | $(per_session "${E_WARM[e-redis]}" "${E_FULL[e-redis]}") | ${E_SECS[e-redis]} s | ${E_COUNT[e-redis]} |

Redis (store side): $E_REDIS_KEYS \`mcp:session:*\` keys, used_memory $(awk -v a="$E_REDIS_MEM_BEFORE" 'BEGIN { printf "%.1f", a / 1048576 }') → $(awk -v a="$E_REDIS_MEM_AFTER" 'BEGIN { printf "%.1f", a / 1048576 }') MiB, $(awk -v a="$E_REDIS_MEM_BEFORE" -v b="$E_REDIS_MEM_AFTER" -v n="$SESSIONS" 'BEGIN { printf "%.0f", (b - a) / n }') bytes per session. Redis commands while opening them
(admin listing excluded): $E_REDIS_CALLS.

## Sidecar logs

Lines at WARN or above from A, A1…A$RECOVERY_RUNS, B and the two sidecars of e (startup notice of
single-pod mode excluded): $([[ -n $SIDECAR_WARNINGS ]] && printf '\n\n```\n%s\n```' "$SIDECAR_WARNINGS" || echo none.)
EOF
)

mkdir -p "$RESULTS_DIR"
printf '%s\n' "$REPORT" >"$RESULTS_DIR/sessions.md"
printf '\n%s\n\n' "$REPORT"
log "written to $RESULTS_DIR/sessions.md"
