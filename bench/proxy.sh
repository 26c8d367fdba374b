#!/usr/bin/env bash
# Proxy cache-hit path with a rate-limit check, in one run on this machine:
#   sluice (memory store, one worker) with an upstream source, a cache and a tier limit,
#   sluice-catchall: sluice as a plain shared cache (endpoint "* /*", ttl = "origin", no limit),
#   nginx proxy_cache + limit_req (one worker),
#   Varnish (plain hit), and Varnish with a vsthrottle check per request (varnish-modules),
# all in front of the same upstream (a separate nginx serving bench/body.json, 1 KB, with
# Cache-Control: max-age=3600; it is only asked on the first miss of each peer).
# Each peer runs on one core (CPU 1); wrk runs on the other (CPU 0), as in bench/run.sh.
#
#   bench/proxy.sh                          # 3 rounds of 8 s at 50 connections
#   ROUNDS=5 DURATION=10 CONNECTIONS=100 bench/proxy.sh
#   PEERS="nginx varnish varnish-vsthrottle" bench/proxy.sh   # leave sluice out
#   CHART=1 bench/proxy.sh                  # also write docs/bench/proxy.dat and proxy.png
#   BUILD_DIR=build-pb bench/proxy.sh       # build and run sluice from another build dir
#   SLUICE_BIN=/path/to/sluice bench/proxy.sh   # run that binary, build nothing
#   PEERS="sluice sluice-body nginx" bench/proxy.sh   # sluice-body: the same cache and limit
#                                           # on a fixed-body source (the hit path of bench/run.sh)
#   PROFILE=1 bench/proxy.sh                # then perf record -g on sluice for one more run
#
# Before measuring, one verification request per peer (after a warming one) must answer
# 200 with a body identical to the upstream's, from the peer's cache (X-Cache: HIT), and
# for sluice and sluice-body with a rate-limit check (X-RateLimit-Remaining). A measured
# run with any non-2xx answer or socket error fails the script.
# Prints req/s, p50 latency and server CPU time per request (utime + stime of the
# serving process, all its threads) for every round, the best round of each, and the
# ratios of each sluice peer to nginx and Varnish (and sluice-catchall / sluice). With
# CHART=1 the best rounds go to $CHART_DIR/proxy.dat (default docs/bench) and a bar chart
# of req/s, CPU per request and p50 to proxy.png. Before each round the script waits (at
# most QUIET_MAX=15 s) for both cores to be nearly idle, and prints how busy they were
# (pre-busy): a busy machine skews req/s more than CPU time per request.
# Targets: sluice >= nginx, sluice >= 1.5 x Varnish.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. bench/lib.sh
BUILD_DIR=${BUILD_DIR:-build-bench}
PEERS=${PEERS:-sluice sluice-catchall nginx varnish varnish-vsthrottle}
PROFILE=${PROFILE:-0}
# Varnish on one core: one thread pool; enough threads for every connection at once.
VARNISH_PARAMS=${VARNISH_PARAMS:--p thread_pools=1 -p thread_pool_min=100 -p thread_pool_max=1000}
user_id=42

has_peer() { [[ " $PEERS " == *" $1 "* ]]; }

scripts/deps.sh bench
if { has_peer sluice || has_peer sluice-body || has_peer sluice-catchall; } && [ -z "${SLUICE_BIN:-}" ]; then
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target sluice >/dev/null
fi
sluice_bin=${SLUICE_BIN:-$BUILD_DIR/sluice}

work=$(mktemp -d /tmp/sluice-proxy.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    local rc=$? f
    if [ "$rc" -ne 0 ]; then
        for f in "$work"/*error.log; do
            [ -s "$f" ] && { echo "$(basename "$f"):"; tail -n 5 "$f"; } >&2
        done
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$work"/nginx-*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "proxy bench: $*" >&2; exit 1; }

wait_port() { # PORT: until something answers HTTP there (at most 10 s)
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    die "nothing answers on port $1"
}

body="$root/bench/body.json"
[ "$(wc -c <"$body")" -eq 1024 ] || die "bench/body.json is not 1 KB"

# nginx common settings: nginx at its best for this load (as in bench/run.sh).
nginx_http_common='
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=1000 inactive=60s;'

# --- the upstream: nginx serving the 1 KB body, on the client core --------------------------
port_up=$(free_port)
mkdir -p "$work/www"
cp "$body" "$work/www/bench"
cat >"$work/nginx-upstream.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx-upstream.pid;
error_log $work/nginx-upstream-error.log warn;
events { worker_connections 1024; }
http {
    $nginx_http_common
    server {
        listen 127.0.0.1:$port_up;
        access_log $work/upstream-access.log;
        root $work/www;
        location = /bench {
            default_type application/json;
            add_header Cache-Control "max-age=3600" always;
        }
        location / { return 204; }
    }
}
EOF
taskset -c "$CLIENT_CPU" nginx -c "$work/nginx-upstream.conf"
wait_port "$port_up"

declare -A pid_of port_of label_of
label_of[sluice]="sluice memory store (tier + cache)"
label_of[sluice-body]="sluice fixed body (tier + cache)"
label_of[sluice-catchall]="sluice catch-all (* /*, no limit)"
label_of[nginx]="nginx proxy_cache + limit_req"
label_of[varnish]="varnish 7.1 hit"
label_of[varnish-vsthrottle]="varnish 7.1 vsthrottle + hit"

# --- nginx: proxy_cache + limit_req keyed by the same header, one worker on CPU 1 ----------
if has_peer nginx; then
    port_of[nginx]=$(free_port)
    mkdir -p "$work/cache"
    cat >"$work/nginx-proxy.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy-error.log warn;
events { worker_connections 4096; }
http {
    $nginx_http_common
    # The cache lifetime comes from the upstream's Cache-Control (max-age=3600).
    proxy_cache_path $work/cache levels=1:2 keys_zone=bench:10m max_size=100m inactive=60m use_temp_path=off;
    # A per-caller limit that never refuses at this load.
    limit_req_zone \$http_x_user_id zone=peruser:10m rate=100000000r/s;
    server {
        listen 127.0.0.1:${port_of[nginx]};
        location / {
            limit_req zone=peruser burst=100000000 nodelay;
            proxy_cache bench;
            proxy_cache_key \$uri\$http_x_user_id;
            proxy_pass http://127.0.0.1:$port_up;
            add_header X-Cache \$upstream_cache_status;
        }
    }
}
EOF
    taskset -c "$SERVER_CPU" nginx -c "$work/nginx-proxy.conf"
    wait_port "${port_of[nginx]}"
    pid_of[nginx]=$(pgrep -P "$(cat "$work/nginx-proxy.pid")" | head -n 1)
fi

# --- Varnish: plain hit, and a vsthrottle check per request, on CPU 1 -----------------------
start_varnish() { # NAME VCL_RECV_BODY
    local name=$1 port
    port=$(free_port)
    port_of[$name]=$port
    local import=""
    [[ "$2" == *vsthrottle* ]] && import="import vsthrottle;"
    cat >"$work/$name.vcl" <<EOF
vcl 4.1;
$import
backend app { .host = "127.0.0.1"; .port = "$port_up"; }
sub vcl_recv {
    $2
    return (hash);
}
sub vcl_hash {
    hash_data(req.url);
    hash_data(req.http.X-User-Id);
    return (lookup);
}
sub vcl_deliver {
    if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; }
}
EOF
    mkdir -p "$work/$name-state"
    # -F: stays in the foreground (the manager); the cache child serves and is measured.
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CPU" varnishd -F -j none -n "$work/$name-state" -a "127.0.0.1:$port" \
        -T 127.0.0.1:0 -f "$work/$name.vcl" -s malloc,256m $VARNISH_PARAMS \
        >"$work/$name.out" 2>"$work/$name-error.log" &
    pids+=("$!")
    local mgr=$!
    wait_port "$port"
    pid_of[$name]=$(pgrep -P "$mgr" -f varnishd | head -n 1)
    [ -n "${pid_of[$name]}" ] || die "no varnish cache process for $name"
}
has_peer varnish && start_varnish varnish ''
has_peer varnish-vsthrottle && start_varnish varnish-vsthrottle \
    'if (vsthrottle.is_denied("u:" + req.http.X-User-Id, 100000000, 1h)) { return (synth(429)); }'

start_sluice() { # NAME POLICY_DIR: one worker on CPU 1, memory store, no admin listener
    local name=$1 dir=$2
    "$sluice_bin" check "$dir" >/dev/null
    port_of[$name]=$(free_port)
    env -u REDIS_URL taskset -c "$SERVER_CPU" "$sluice_bin" serve --workers 1 --admin off \
        --max-connections-per-ip 0 --listen "127.0.0.1:${port_of[$name]}" "$dir" \
        >"$work/$name.out" 2>"$work/$name-error.log" &
    pid_of[$name]=$!
    pids+=("$!")
    for _ in $(seq 100); do
        grep -q listening "$work/$name.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q listening "$work/$name.out" || die "$name did not start"
}

# --- sluice: one worker, memory store, the upstream source with a cache and a tier limit ---
if has_peer sluice; then
    mkdir -p "$work/policies"
    cat >"$work/policies/bench.lua" <<EOF
upstream "app" { url = "http://127.0.0.1:$port_up", timeout = "5s" }
tier "free" { limit = 100000000, window = "1h" }   -- a limit check on every request that never refuses
identity { user = header "X-User-Id", default_tier = "free" }
endpoint "GET /bench" { upstream = "app", cache = { ttl = "1h", key = "bench:{user}" }, limit = "tier" }
EOF
    start_sluice sluice "$work/policies"
fi

# --- sluice-body (optional): the same tier limit and cache on a fixed-body source --------
if has_peer sluice-body; then
    mkdir -p "$work/policies-body"
    {
        echo 'tier "free" { limit = 100000000, window = "1h" }'
        echo 'identity { user = header "X-User-Id", default_tier = "free" }'
        echo 'endpoint "GET /bench" {'
        printf '  body = [==[%s]==],\n' "$(cat "$body")"
        echo '  cache = { ttl = "1h", key = "bench:{user}" },'
        echo '  limit = "tier",'
        echo '}'
    } >"$work/policies-body/bench.lua"
    start_sluice sluice-body "$work/policies-body"
fi

# --- sluice-catchall: the plain shared cache of docs/policies.md in front of the upstream ---
# Every method and path forwarded; what is stored and for how long is the upstream's word
# (Cache-Control: max-age=3600 on /bench); no identity, no limit.
if has_peer sluice-catchall; then
    mkdir -p "$work/policies-catchall"
    cat >"$work/policies-catchall/bench.lua" <<EOF
upstream "origin" { url = "http://127.0.0.1:$port_up" }
endpoint "* /*" { upstream = "origin", cache = { ttl = "origin" } }
EOF
    start_sluice sluice-catchall "$work/policies-catchall"
fi

# --- verification: a warming request, then one that must be a cache hit --------------------
order=()
for p in sluice sluice-catchall sluice-body nginx varnish varnish-vsthrottle; do has_peer "$p" && order+=("$p"); done
[ ${#order[@]} -gt 0 ] || die "no peer in PEERS='$PEERS'"
for p in "${order[@]}"; do
    url="http://127.0.0.1:${port_of[$p]}/bench"
    code=$(curl -sS -o "$work/$p.body0" -w '%{http_code}' -H "X-User-Id: $user_id" "$url") ||
        die "$p: first request failed (curl: $?)"
    if [ "$code" = 501 ] && [ "$p" = sluice ]; then
        die "sluice answers 501 for its upstream endpoint: the upstream source is not served by this build (PEERS='nginx varnish varnish-vsthrottle' measures the others)"
    fi
    [ "$code" = 200 ] || die "$p: first request answered $code"
    code=$(curl -sS -D "$work/$p.h" -o "$work/$p.body" -w '%{http_code}' -H "X-User-Id: $user_id" "$url") ||
        die "$p: verification request failed (curl: $?)"
    [ "$code" = 200 ] || die "$p: verification request answered $code"
    cmp -s "$work/$p.body" "$body" || die "$p: body differs from the upstream's"
    cmp -s "$work/$p.body0" "$body" || die "$p: body of the first (miss) request differs from the upstream's"
    grep -qi '^X-Cache: *HIT' "$work/$p.h" || { cat "$work/$p.h" >&2; die "$p: verification request was not a cache hit"; }
    if [ "$p" = sluice ] || [ "$p" = sluice-body ]; then
        grep -qi '^X-RateLimit-Remaining' "$work/$p.h" || { cat "$work/$p.h" >&2; die "$p: no rate-limit check on the hit"; }
    fi
done
echo "verified: 200, X-Cache: HIT, body identical to the upstream's (1024 bytes) for: ${order[*]}"
for p in sluice sluice-catchall; do
    has_peer "$p" || continue
    echo "$p hit headers:"
    tr -d '\r' <"$work/$p.h" | sed -n '2,$p' | grep . | sed 's/^/    /'
done

# run PEER -> prints "rps p50 us_per_req"
run() {
    wrk_measure "${pid_of[$1]}" "http://127.0.0.1:${port_of[$1]}/bench" -H "X-User-Id: $user_id"
    if grep -qE 'Non-2xx|Socket errors' <<<"$wrk_out"; then
        echo "$wrk_out" >&2
        die "$1: errors or non-2xx answers during the run"
    fi
    echo "$wrk_result"
}

declare -A best best_p50 best_us
for p in "${order[@]}"; do best[$p]=0; done
echo
echo "c$CONNECTIONS, ${DURATION}s rounds, server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %5s %12s %9s %12s %9s\n' peer round req/s p50 cpu-us/req pre-busy
for r in $(seq "$ROUNDS"); do
    for p in "${order[@]}"; do
        pre=$(wait_quiet)
        read -r rps p50 us < <(run "$p")
        printf '%-34s %5s %12s %9s %12s %8s%%\n' "${label_of[$p]}" "$r" "$rps" "$p50" "$us" "$pre"
        if awk -v a="${best[$p]}" -v b="$rps" 'BEGIN {exit !(b > a)}'; then
            best[$p]=$rps best_p50[$p]=$p50 best_us[$p]=$us
        fi
    done
done

echo
proxied=0
for p in "${order[@]}"; do [ "$p" = sluice-body ] || proxied=$((proxied + 1)); done
echo "requests for /bench that reached the upstream: $(grep -c 'GET /bench ' "$work/upstream-access.log") (one miss per proxy expected: $proxied)"
echo "best round of each:"
printf '%-34s %12s %9s %12s\n' peer req/s p50 cpu-us/req
for p in "${order[@]}"; do
    printf '%-34s %12s %9s %12s\n' "${label_of[$p]}" "${best[$p]}" "${best_p50[$p]}" "${best_us[$p]}"
done
ratio() { # SLUICE_PEER PEER TARGET
    has_peer "$1" && has_peer "$2" || return 0
    awk -v s="${best[$1]}" -v n="${best[$2]}" -v t="$3" -v a="$1" -v b="$2" \
        -v su="${best_us[$1]}" -v nu="${best_us[$2]}" 'BEGIN {
        r = s / n
        printf "%-15s / %-18s = %.2f  (target >= %.1f: %s); server CPU per request %.2fx less\n",
            a, b, r, t, (r >= t) ? "met" : "NOT met", nu / su
    }'
}
for s in sluice sluice-catchall sluice-body; do
    ratio "$s" nginx 1.0
    ratio "$s" varnish 1.5
    ratio "$s" varnish-vsthrottle 1.5
done
if has_peer sluice-catchall && has_peer sluice; then
    awk -v c="${best[sluice-catchall]}" -v s="${best[sluice]}" \
        -v cu="${best_us[sluice-catchall]}" -v su="${best_us[sluice]}" 'BEGIN {
        printf "sluice-catchall / sluice = %.2f (req/s); server CPU per request: %.2fx\n", c / s, cu / su
    }'
fi

# --- CHART=1: the best round of each peer as data, and a bar chart ---------------------------
if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/proxy.dat"
    {
        echo "# bench/proxy.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): best of $ROUNDS rounds of ${DURATION}s at c$CONNECTIONS,"
        echo "# server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; PEERS=\"$PEERS\""
        printf '# peer\treq/s\tp50 (us)\tserver CPU us/req\n'
        for p in "${order[@]}"; do
            printf '%s\t%s\t%s\t%s\n' "$p" "${best[$p]}" "$(lat_us "${best_p50[$p]}")" "${best_us[$p]}"
        done
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/proxy.png" \
        "bench/proxy.sh $(date -u +%Y-%m-%d): 1 KB cache hit, c$CONNECTIONS, best of $ROUNDS x ${DURATION}s, server on one core" \
        "(\$2/1000)|req/s (higher is better)|thousand requests per second|%.1fk" \
        "4|server CPU per request (lower is better)|CPU µs per request|%.1f" \
        "3|median latency (lower is better)|p50 (µs)|%.0f"
    echo "chart: $dat, $CHART_DIR/proxy.png"
fi

# --- optional profile of sluice under the same load ---------------------------------------
PROFILE_PEER=${PROFILE_PEER:-sluice}
if [ "$PROFILE" = 1 ] && has_peer "$PROFILE_PEER"; then
    prof=${PROFILE_OUT:-/tmp/sluice-proxy-perf.data}
    echo
    echo "perf record -g on $PROFILE_PEER (pid ${pid_of[$PROFILE_PEER]}) during one more ${DURATION}s run -> $prof"
    perf record -q -g -o "$prof" -p "${pid_of[$PROFILE_PEER]}" -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
    sleep 0.2
    run "$PROFILE_PEER" >/dev/null
    wait "$perf_pid" || true
    echo "by object:"
    perf report -i "$prof" --no-children --sort dso --stdio 2>/dev/null |
        grep -E '^ +[0-9]+\.[0-9]+%' | head -n 8
    echo "by symbol (>= 1%):"
    perf report -i "$prof" --no-children --percent-limit 1 --stdio 2>/dev/null |
        grep -E '^ +[0-9]+\.[0-9]+%' | head -n 40
    echo "sluice's own code (top 25):"
    perf report -i "$prof" --no-children --dsos sluice --stdio 2>/dev/null |
        grep -E '^ +[0-9]+\.[0-9]+%' | head -n 25
fi
