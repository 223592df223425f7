#!/usr/bin/env bash
# Hub auth overhead: what `auth: required` costs a request whose MCPHub key is already in the
# sidecar's key cache, against the same route with auth off, in the same run. On loopback only.
# One Redis, one fast nginx upstream (a fresh Mcp-Session-Id on every answer), and one sidecar
# per target, all on the Redis store. Measures, in one run:
#
#   a. req/s, p50, p99 and CPU per request, interleaved rounds, medians, for:
#        direct       wrk → the upstream, no proxy
#        noauth       sidecar, route without auth and without inject_headers
#        auth-bearer  sidecar, `auth: required`, key in `Authorization: Bearer`, three injected
#                     headers (user id, a service token, the session id)
#        auth-query   the same, key in `?key=` (the sidecar strips it from the upstream query)
#      The key is made with the real CLI (`mcp-sidecar keys create`) into Redis; each auth
#      sidecar's session is opened by an `initialize` carrying that key (sessions are bound to
#      their user).
#   b. Redis commands during the measured runs (INFO commandstats around each run): HGETALL
#      (a key lookup that missed the cache) per request, and the sidecar's own
#      mcp_sidecar_auth_cache_total{result="hit"|"miss"}.
#
#   bench/auth.sh                   # build (release), then everything above
#   ROUNDS=5 bench/auth.sh          # more rounds
#
# Environment:
#   ROUNDS       rounds of measurement (default 3); each round runs every target once
#   DURATION     wrk duration of one measured run (default 10s)
#   WARMUP       wrk duration of the warmup run per target (default 3s)
#   WRK_THREADS  wrk threads (default 2)
#   CONNECTIONS  wrk connections (default 32)
#   CACHE_TTL    auth.cache_ttl of the auth sidecars (default 10s, the sidecar's default)
#   SKIP_BUILD   1: use the existing target/release/mcp-sidecar as is (default 0)
#   RESULTS_DIR  where auth.md goes (default bench/results, which is gitignored)
#
# Everything listens on 127.0.0.1 on free ports outside the ephemeral range, with configuration
# in a temp dir; an EXIT trap stops every process the script started and removes the temp dir.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
WRK_THREADS=${WRK_THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
CACHE_TTL=${CACHE_TTL:-10s}
SKIP_BUILD=${SKIP_BUILD:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$REPO/bench/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/mcp-sidecar

# for the upstream direct (it does not look at it)
ANY_SESSION_ID=6f1c2d3e4b5a69788796a5b4c3d2e1f0
# what the key holds and the templates inject
BENCH_USER=bench
BENCH_TOKEN=ghp_bench0123456789

BENCH_NAME=auth
CALL_MAX_TIME=5
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# ---------------------------------------------------------------------------------------------
# Helpers

rcli() { "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

cmdstats() { # -> "command calls" lines from INFO commandstats
    rcli INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ { sub(/^cmdstat_/, "", $1); print $1, $3 }'
}

# lib.sh's init_session and call, with extra curl arguments (the key's header) and a URL that
# may carry ?key=
auth_init() { # name url curl-args...: initialize; sets SID
    local name=$1 url=$2 code
    shift 2
    code=$(curl -sS --max-time 5 -o "$TMP/init.body" -D "$TMP/init.headers" -w '%{http_code}' \
        -X POST "$url" \
        -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        "$@" --data-binary "$INIT_BODY") || die "$name: initialize to $url failed"
    [[ $code == 200 ]] || die "$name: initialize to $url answered HTTP $code: $(cat "$TMP/init.body")"
    SID=$(awk 'tolower($1) == "mcp-session-id:" { sub(/\r$/, "", $2); print $2 }' "$TMP/init.headers")
    [[ $SID =~ ^[0-9a-f]{32}$ ]] ||
        die "$name: initialize answered no usable Mcp-Session-Id: $(cat "$TMP/init.headers")"
}

masked() { echo "${1//$BENCH_TOKEN/<token>}"; } # the service token, not shown

auth_call() { # name url session expected-code curl-args...: one tools/call; prints the body
    local name=$1 url=$2 sid=$3 want=$4 code
    shift 4
    code=$(curl -sS --max-time "$CALL_MAX_TIME" -o "$TMP/call.body" -w '%{http_code}' \
        -X POST "$url" \
        -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        -H "Mcp-Session-Id: $sid" \
        -H "MCP-Protocol-Version: $PROTOCOL_VERSION" \
        "$@" --data-binary "$REQ_BODY") || die "$name: curl $url failed"
    [[ $code == "$want" ]] || die "$name: $url answered HTTP $code, not $want; body: $(cat "$TMP/call.body")"
    cat "$TMP/call.body"
}

# ---------------------------------------------------------------------------------------------

install_missing redis-cli:redis-tools sha256sum:coreutils
find_tools
REDIS_CLI=$(find_cmd redis-cli) || die "redis-cli not found after install"
build_release
make_tmp

pick_port; UP_PORT=$PORT
pick_port; REDIS_PORT=$PORT
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

# The fast upstream, plus /mcp/seen: it answers with what reached it (the injected headers, and
# whatever is left of the key), so a check can see that the sidecar injects and strips. The
# measured requests go to /mcp, which is lib.sh's upstream unchanged.
upstream_conf "$UP_PORT" | awk '
    /location = \/mcp \{/ {
        print "        location = /mcp/seen {"
        print "            default_type text/plain;"
        print "            add_header Mcp-Session-Id $request_id always;"
        print "            return 200 \"user=[$http_x_mcphub_user_id] token=[$http_x_mcphub_github_token] session=[$http_x_mcphub_session_id] authorization=[$http_authorization] key_header=[$http_x_mcphub_key] args=[$args]\";"
        print "        }"
    }
    { print }' >"$TMP/upstream.conf"
"$NGINX" -t -q -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf" || die "upstream nginx config rejected"

start upstream "$NGINX" -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf"
UP_PID=$START_PID
start redis "$REDIS" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --dir "$TMP"
REDIS_PID=$START_PID
wait_port upstream "$UP_PID" "$UP_PORT"
wait_port redis "$REDIS_PID" "$REDIS_PORT"

declare -A SC_LISTEN SC_ADMIN SC_PID

sidecar_conf() { # name auth(none|required) listen admin peer
    cat <<EOF
server:
  listen: "127.0.0.1:$3"
  admin_listen: "127.0.0.1:$4"
  peer_listen: "127.0.0.1:$5"
  threads: 2
  grace_period: 0s
  shutdown_timeout: 1s
  pid_file: "$TMP/$1.pid"
  upgrade_sock: "$TMP/$1-upgrade.sock"
redis:
  url: "$REDIS_URL"
peer:
  secret: "$PEER_SECRET"
admin:
  token: "$ADMIN_TOKEN"
auth:
  cache_ttl: $CACHE_TTL
routes:
  - prefix: /mcp
    upstream: "http://127.0.0.1:$UP_PORT/mcp"
    server_name: bench
EOF
    [[ $2 == required ]] || return 0
    cat <<EOF
    auth: required
    required_tokens: [GITHUB_TOKEN]
    inject_headers:
      X-MCPHub-User-Id: "{user.id}"
      X-MCPHub-GitHub-Token: "{token.GITHUB_TOKEN}"
      X-MCPHub-Session-Id: "{session.id}"
EOF
}

start_sidecar() { # name auth(none|required)
    local name=$1 lp ap pp ready
    pick_port; lp=$PORT
    pick_port; ap=$PORT
    pick_port; pp=$PORT
    sidecar_conf "$name" "$2" "$lp" "$ap" "$pp" >"$TMP/$name.yaml"
    "$BIN" -t -c "$TMP/$name.yaml" >/dev/null || die "$name config rejected"
    start "$name" env RUST_LOG=warn "$BIN" -c "$TMP/$name.yaml"
    SC_PID[$name]=$START_PID
    SC_LISTEN[$name]=$lp
    SC_ADMIN[$name]=$ap
    wait_port "$name" "$START_PID" "$lp"
    wait_port "$name-admin" "$START_PID" "$ap"
    ready=$(curl -sS --max-time 5 "http://127.0.0.1:$ap/readyz") || die "$name /readyz failed"
    [[ $ready == *'"status":"ready"'* && $ready == *'"store":"redis"'* ]] ||
        die "$name is not ready on the Redis store: $ready"
}
start_sidecar noauth none
start_sidecar auth-bearer required
start_sidecar auth-query required

# The key, made with the real CLI into Redis (it prints the key alone on stdout)
KEY=$("$BIN" -c "$TMP/auth-bearer.yaml" keys create --user "$BENCH_USER" --group dev \
    --token "GITHUB_TOKEN=$BENCH_TOKEN" 2>"$TMP/keys-create.log") ||
    die "keys create failed: $(cat "$TMP/keys-create.log")"
[[ $KEY =~ ^mcphub_[0-9a-f]{64}$ ]] || die "keys create printed no well-formed key: $KEY"
KEY_DIGEST=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
[[ $(rcli HGET "mcp:hub:key:$KEY_DIGEST" user_id) == "$BENCH_USER" ]] ||
    die "Redis has no mcp:hub:key:<sha256 of the key> for user $BENCH_USER: $(rcli HGETALL "mcp:hub:key:$KEY_DIGEST" | tr '\n' ' ')"
log "key ${KEY:0:15}… created with keys create; Redis holds mcp:hub:key:${KEY_DIGEST:0:12}… (user $BENCH_USER)"

TARGETS=(direct noauth auth-bearer auth-query)
SIDECARS=(noauth auth-bearer auth-query)
declare -A URL=(
    [direct]="http://127.0.0.1:$UP_PORT/mcp"
    [noauth]="http://127.0.0.1:${SC_LISTEN[noauth]}/mcp"
    [auth-bearer]="http://127.0.0.1:${SC_LISTEN[auth-bearer]}/mcp"
    [auth-query]="http://127.0.0.1:${SC_LISTEN[auth-query]}/mcp?key=$KEY"
)
# the same with /seen: the upstream echoes what reached it
declare -A SEEN_URL=(
    [noauth]="http://127.0.0.1:${SC_LISTEN[noauth]}/mcp/seen"
    [auth-bearer]="http://127.0.0.1:${SC_LISTEN[auth-bearer]}/mcp/seen"
    [auth-query]="http://127.0.0.1:${SC_LISTEN[auth-query]}/mcp/seen?key=$KEY"
)
# curl arguments that carry the key (the query target has it in its URL)
declare -A KEY_ARGS=([direct]="" [noauth]="" [auth-bearer]="Authorization: Bearer $KEY" [auth-query]="")
declare -A LABEL=(
    [direct]="upstream direct (no proxy)"
    [noauth]="mcp-sidecar, auth off"
    [auth-bearer]="mcp-sidecar, auth required, key in Authorization: Bearer"
    [auth-query]="mcp-sidecar, auth required, key in ?key="
)
declare -A CPU_PIDS=(
    [direct]="$(children_of "$UP_PID" | tr '\n' ' ')"
    [noauth]="${SC_PID[noauth]}"
    [auth-bearer]="${SC_PID[auth-bearer]}"
    [auth-query]="${SC_PID[auth-query]}"
)
key_args() { # target -> curl -H arguments, one per line (none without a key header)
    [[ -n ${KEY_ARGS[$1]} ]] && printf '%s\n%s\n' -H "${KEY_ARGS[$1]}"
    return 0
}

# Sessions: each sidecar opens one with initialize (the auth ones with the key), then checks.
declare -A SESSION=([direct]=$ANY_SESSION_ID)
for t in "${SIDECARS[@]}"; do
    mapfile -t args < <(key_args "$t")
    auth_init "$t" "${URL[$t]}" "${args[@]}"
    SESSION[$t]=$SID
    log "$t: session $SID opened by initialize"
done

for t in "${TARGETS[@]}"; do
    mapfile -t args < <(key_args "$t")
    body=$(auth_call "$t" "${URL[$t]}" "${SESSION[$t]}" 200 "${args[@]}")
    [[ $body == "$RESP_BODY" ]] || die "$t: unexpected body: $body"
    log "verified $t: 200, expected body"
done

# what reaches the upstream: auth off passes nothing of the hub's; auth on injects the user,
# the token and the client's session id, and neither the key nor Authorization goes through
declare -A SEEN
for t in "${SIDECARS[@]}"; do
    mapfile -t args < <(key_args "$t")
    SEEN[$t]=$(auth_call "$t /seen" "${SEEN_URL[$t]}" "${SESSION[$t]}" 200 "${args[@]}")
    want="user=[] token=[] session=[] authorization=[] key_header=[] args=[]"
    [[ $t == auth-* ]] &&
        want="user=[$BENCH_USER] token=[$BENCH_TOKEN] session=[${SESSION[$t]}] authorization=[] key_header=[] args=[]"
    [[ ${SEEN[$t]} == "$want" ]] || die "$t: the upstream saw '${SEEN[$t]}', expected '$want'"
    log "$t: the upstream saw $(masked "${SEEN[$t]}")"
done

# without the key the same request is refused (not measured)
auth_call "auth-bearer without key" "${URL[auth-bearer]}" "${SESSION[auth-bearer]}" 401 >/dev/null
log "checked: auth-bearer answers 401 without a key"

for t in "${TARGETS[@]}"; do
    wrk_lua "${SESSION[$t]}" >"$TMP/request-$t.lua"
done
echo "wrk.headers[\"Authorization\"] = \"Bearer $KEY\"" >>"$TMP/request-auth-bearer.lua"

CLK_TCK=$(getconf CLK_TCK)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

check_alive() {
    local pid
    for pid in "$UP_PID" "$REDIS_PID" "${SC_PID[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "process $pid is no longer running (crashed, or stopped from outside)"
    done
}

# Redis commands and cache counters around each measured run of a sidecar target
COUNTING=0
declare -A R_REQS R_HGETALL R_OTHER R_HIT R_MISS R_TABLE
run_wrk() { # target duration outfile
    local t=$1 hit0=0 miss0=0 reqs rest
    if ((COUNTING)) && [[ $t != direct ]]; then
        cmdstats >"$TMP/cmdstats-before"
        hit0=$(metric "${SC_ADMIN[$t]}" 'mcp_sidecar_auth_cache_total{result="hit"}')
        miss0=$(metric "${SC_ADMIN[$t]}" 'mcp_sidecar_auth_cache_total{result="miss"}')
    fi
    "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency -s "$TMP/request-$t.lua" "${URL[$t]}" >"$3" 2>&1 ||
        die "wrk against $t failed: $(cat "$3")"
    check_alive
    ((COUNTING)) && [[ $t != direct ]] || return 0
    cmdstats >"$TMP/cmdstats-after"
    read -r reqs rest < <(parse_wrk <"$3") || die "could not parse wrk output: $(cat "$3")"
    # per command: calls after - calls before; the INFO that took the first snapshot is ours
    awk 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if ($1 == "info") d -= 1; if (d > 0) print $1, d }' \
        "$TMP/cmdstats-before" "$TMP/cmdstats-after" >"$TMP/cmdstats-delta"
    R_REQS[$t]=$((${R_REQS[$t]:-0} + reqs))
    R_HGETALL[$t]=$((${R_HGETALL[$t]:-0} + $(awk '$1 == "hgetall" { s += $2 } END { print s + 0 }' "$TMP/cmdstats-delta")))
    # everything but the pods' heartbeats (SET … PX … GET) and the lookups counted above
    R_OTHER[$t]=$((${R_OTHER[$t]:-0} + $(awk '$1 != "hgetall" && $1 != "set" { s += $2 } END { print s + 0 }' "$TMP/cmdstats-delta")))
    R_TABLE[$t]+="$(awk '{ printf "%s%s %s", (n++ ? ", " : ""), $1, $2 }' "$TMP/cmdstats-delta"); "
    local hit1 miss1
    hit1=$(metric "${SC_ADMIN[$t]}" 'mcp_sidecar_auth_cache_total{result="hit"}')
    miss1=$(metric "${SC_ADMIN[$t]}" 'mcp_sidecar_auth_cache_total{result="miss"}')
    R_HIT[$t]=$((${R_HIT[$t]:-0} + ${hit1%.*} - ${hit0%.*}))
    R_MISS[$t]=$((${R_MISS[$t]:-0} + ${miss1%.*} - ${miss0%.*}))
}

round_row() { # round order...: one row of the per-round table (this_round: req/s by target)
    local r=$1
    shift
    ROUND_ROWS+=("| $r | $* | ${this_round[direct]} | ${this_round[noauth]} | ${this_round[auth-bearer]} | ${this_round[auth-query]} | $(ratio "${this_round[auth-bearer]}" "${this_round[noauth]}") | $(ratio "${this_round[auth-query]}" "${this_round[noauth]}") |")
}

warm_up
COUNTING=1
measure_rounds
COUNTING=0

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# After the runs: every request was served from the sidecar's own session, and none refused
statuses() { # admin_port -> "status×count, ..." of tools/call requests, from /metrics
    curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" | awk '
        /^mcp_sidecar_requests_total\{/ && /method="tools\/call"/ {
            match($0, /status="[0-9]*"/); st = substr($0, RSTART + 8, RLENGTH - 9)
            printf "%s%s×%d", (n++ ? ", " : ""), st, $NF }'
}
auth_results() { # admin_port -> "result×count, ..." of mcp_sidecar_auth_total
    curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" | awk '
        /^mcp_sidecar_auth_total\{/ {
            match($0, /result="[a-z_]*"/); r = substr($0, RSTART + 8, RLENGTH - 9)
            printf "%s%s×%d", (n++ ? ", " : ""), r, $NF }
        END { if (!n) printf "none" }'
}
declare -A CHECK
for t in "${SIDECARS[@]}"; do
    fwd=$(metric "${SC_ADMIN[$t]}" 'mcp_sidecar_sessions_total{event="forwarded"}')
    rec=$(metric "${SC_ADMIN[$t]}" 'mcp_sidecar_sessions_total{event="recovered"}')
    active=$(metric "${SC_ADMIN[$t]}" 'mcp_sidecar_active_sessions')
    ((${fwd%.*} == 0 && ${rec%.*} == 0 && ${active%.*} == 1)) ||
        die "$t: expected only its own session, served locally: forwarded $fwd, recovered $rec, active $active"
    CHECK[$t]="tools/call by status: $(statuses "${SC_ADMIN[$t]}"); key checks: $(auth_results "${SC_ADMIN[$t]}"); sessions forwarded $fwd, recovered $rec, active $active"
    log "$t: ${CHECK[$t]}"
done

SIDECAR_WARNINGS=$(sidecar_warnings "$TMP"/noauth.log "$TMP"/auth-*.log)
[[ -n $SIDECAR_WARNINGS ]] && log "WARNING: the sidecars logged warnings or errors: $SIDECAR_WARNINGS"

declare -A M_RPS M_P50 M_P99 M_CPU
for t in "${TARGETS[@]}"; do
    M_RPS[$t]=$(words_median "${RPS[$t]}")
    M_P50[$t]=$(words_median "${P50[$t]}")
    M_P99[$t]=$(words_median "${P99[$t]}")
    M_CPU[$t]=$(words_median "${CPU[$t]}")
done

# ---------------------------------------------------------------------------------------------
# Report

CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
per_req() { awk -v a="$1" -v n="$2" 'BEGIN { printf "%.6f", a / n }'; }
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", a - b }'; }
ratio_row() { # target
    printf '| %s / auth off | %s | %s | %s | %s | %s |\n' "$1" "$(ratio "${M_RPS[$1]}" "${M_RPS[noauth]}")" \
        "$(ratio "${M_P50[$1]}" "${M_P50[noauth]}")" "$(ratio "${M_P99[$1]}" "${M_P99[noauth]}")" \
        "$(ratio "${M_CPU[$1]}" "${M_CPU[noauth]}")" "$(diff_us "${M_CPU[$1]}" "${M_CPU[noauth]}")"
}
redis_row() { # target
    printf '| %s | %d | %d | %s | %d | %d | %d |\n' "$1" "${R_REQS[$1]}" "${R_HGETALL[$1]:-0}" \
        "$(per_req "${R_HGETALL[$1]:-0}" "${R_REQS[$1]}")" "${R_OTHER[$1]:-0}" "${R_HIT[$1]:-0}" "${R_MISS[$1]:-0}"
}

# shellcheck disable=SC2016 # the backticks below are a Markdown code fence
REPORT=$(
    cat <<EOF
# mcp-sidecar hub auth overhead

- Date: $(date -u '+%Y-%m-%d %H:%M UTC')
- Commit built and measured: $COMMIT
- Machine: $(nproc) cores (nproc), ${CPU_MODEL:-unknown CPU}, Linux $(uname -r); load average before $LOAD_BEFORE, after $LOAD_AFTER
- Tools: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $("$WRK" -v 2>&1 | head -n1 | awk '{print $1, $2}'), Redis $("$REDIS" --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
- Setup: one sidecar per target (\`threads: 2\`, RUST_LOG=warn, the same Redis as store and key registry, \`auth.cache_ttl: $CACHE_TTL\`), one nginx upstream (1 worker, fixed ${#RESP_BODY}-byte result, \`Mcp-Session-Id: \$request_id\` on every answer); all on 127.0.0.1, sharing the cores with wrk
- Auth routes: \`auth: required\`, \`required_tokens: [GITHUB_TOKEN]\`, three \`inject_headers\` (\`{user.id}\`, \`{token.GITHUB_TOKEN}\`, \`{session.id}\`); key made by \`mcp-sidecar keys create\` into Redis
- Load: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency, POST tools/call (${#REQ_BODY} bytes) with the Mcp-Session-Id of a session the sidecar opened (auth targets: with the key); $WARMUP warmup per target, then $ROUNDS rounds, order rotated each round

## Medians over $ROUNDS rounds

| Target | req/s | p50 ms | p99 ms | CPU µs/request | errors |
|---|---:|---:|---:|---:|---:|
EOF
    for t in "${TARGETS[@]}"; do
        printf '| %s | %.0f | %.3f | %.3f | %.1f | %d |\n' "${LABEL[$t]}" "${M_RPS[$t]}" "${M_P50[$t]}" \
            "${M_P99[$t]}" "${M_CPU[$t]}" "${ERR[$t]:-0}"
    done
    cat <<EOF

CPU µs/request: CPU time of the sidecar (for the direct row: the upstream) divided by the requests
wrk completed. errors = non-2xx responses plus socket errors.

| Ratio (medians) | req/s | p50 | p99 | CPU per request | CPU µs/request, difference |
|---|---:|---:|---:|---:|---:|
$(ratio_row auth-bearer)
$(ratio_row auth-query)

## req/s per round

| Round | order | direct | noauth | auth-bearer | auth-query | bearer / noauth | query / noauth |
|---:|---|---:|---:|---:|---:|---:|---:|
$(printf '%s\n' "${ROUND_ROWS[@]}")

## Redis commands during the measured runs

\`INFO commandstats\` before and after each measured run of a sidecar target, summed over the
$ROUNDS rounds (the INFO's own calls left out). HGETALL on \`mcp:hub:key:…\` is a key lookup
that missed the local cache; the pods' heartbeat SETs (every 2 s per sidecar) are left out of
"other". Cache counters: \`mcp_sidecar_auth_cache_total\` from the sidecar's \`/metrics\`, same runs.

| Target | requests | HGETALL | HGETALL per request | other commands | cache hits | cache misses |
|---|---:|---:|---:|---:|---:|---:|
$(redis_row noauth)
$(redis_row auth-bearer)
$(redis_row auth-query)

Commands per run: noauth: ${R_TABLE[noauth]:-none}
auth-bearer: ${R_TABLE[auth-bearer]:-none}
auth-query: ${R_TABLE[auth-query]:-none}

## Checks

- What reached the upstream (\`/mcp/seen\` echoes it; token shown as <token>): noauth: \`${SEEN[noauth]}\`; auth-bearer: \`$(masked "${SEEN[auth-bearer]}")\`; auth-query: \`$(masked "${SEEN[auth-query]}")\`
- auth-bearer without a key: 401.
- Counters after the runs (warmups and checks included; status 0 = the client closed first):
  - noauth: ${CHECK[noauth]}
  - auth-bearer: ${CHECK[auth-bearer]}
  - auth-query: ${CHECK[auth-query]}

Sidecar log lines at WARN or above: $([[ -n $SIDECAR_WARNINGS ]] && printf '\n\n```\n%s\n```' "$SIDECAR_WARNINGS" || echo none.)
EOF
)

mkdir -p "$RESULTS_DIR"
printf '%s\n' "$REPORT" >"$RESULTS_DIR/auth.md"
printf '\n%s\n\n' "$REPORT"
log "written to $RESULTS_DIR/auth.md"
