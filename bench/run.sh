#!/usr/bin/env bash
# Cache-hit path with a rate-limit check: sluice (memory store) against nginx
# proxy_cache + limit_req, serving the same 1 KB JSON body, in the same run.
# Each server runs on one core (CPU 1), wrk on the other (CPU 0).
#
#   bench/run.sh                 # 3 rounds of 8 s at 50 connections
#   ROUNDS=5 DURATION=10 CONNECTIONS=100 bench/run.sh
#   CALLERS=1000 bench/run.sh    # the Redis part with requests spread over 1000 callers
#   CHART=1 bench/run.sh         # also write docs/bench/run.dat and run.png
#
# Prints req/s, p50 latency and server CPU time per request for each peer, and
# the ratio sluice / nginx of the best round of each. With CHART=1 the best round of
# each peer goes to $CHART_DIR/run.dat (default docs/bench), drawn as bars in run.png.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. bench/lib.sh
CALLERS=${CALLERS:-1}
wrk_caller=(-H 'X-User-Id: 42') # who the requests come from: one caller, or a rotation

scripts/deps.sh bench
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j"$(nproc)" --target sluice >/dev/null

work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
pids=()
cleanup() {
    [ -s "$work/nginx-error.log" ] && { echo "nginx error log:"; tail -n 5 "$work/nginx-error.log"; } >&2
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT

body="$root/bench/body.json"
port_origin=$(free_port)
port_nginx=$(free_port)

# --- nginx: proxy_cache + limit_req in front of a static origin --------------------------
mkdir -p "$work/cache"
cat >"$work/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # nginx at its best for this load: long keep-alive, sendfile for cached bodies.
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=1000 inactive=60s;
    proxy_cache_path $work/cache levels=1:2 keys_zone=bench:10m max_size=100m inactive=60m use_temp_path=off;
    limit_req_zone \$http_x_user_id zone=peruser:10m rate=1000000r/s;
    server {
        listen 127.0.0.1:$port_origin;
        location = /api/bench { default_type application/json; alias $body; }
    }
    server {
        listen 127.0.0.1:$port_nginx;
        location / {
            limit_req zone=peruser burst=1000000 nodelay;
            proxy_cache bench;
            proxy_cache_valid 200 5m;
            proxy_cache_key \$uri\$http_x_user_id;
            proxy_pass http://127.0.0.1:$port_origin;
        }
    }
}
EOF
taskset -c "$SERVER_CPU" nginx -c "$work/nginx.conf"
sleep 0.5
nginx_pid=$(pgrep -P "$(cat "$work/nginx.pid")" | head -n 1)

# --- sluice: one worker, the same body from a static source, tier limit + cache ----------
mkdir -p "$work/policies"
{
    echo 'tier "bench" { limit = 1000000000, window = "1h" }'
    echo 'identity { user = header "X-User-Id", default_tier = "bench" }'
    echo 'endpoint "GET /api/bench" {'
    printf '  body = [==[%s]==],\n' "$(cat "$body")"
    echo '  cache = { ttl = "5m", key = "bench:{user}" },'
    echo '  limit = "tier",'
    echo '}'
} >"$work/policies/bench.lua"
build-bench/sluice check "$work/policies"
port_sluice=$(free_port)
taskset -c "$SERVER_CPU" build-bench/sluice serve --workers 1 --listen "127.0.0.1:$port_sluice" \
    --max-connections-per-ip 0 "$work/policies" >"$work/sluice.out" 2>"$work/sluice.err" &
sluice_pid=$!
pids+=("$sluice_pid")
for _ in $(seq 50); do
    grep -q listening "$work/sluice.out" 2>/dev/null && break
    sleep 0.1
done

# Same answer from both (and both caches warm).
a=$(curl -fsS -H 'X-User-Id: 42' "http://127.0.0.1:$port_nginx/api/bench")
b=$(curl -fsS -H 'X-User-Id: 42' "http://127.0.0.1:$port_sluice/api/bench")
[ "$a" = "$b" ] && [ ${#a} -eq 1024 ] || { echo "bench: bodies differ or are not 1 KB" >&2; exit 1; }
curl -fsS -o /dev/null -H 'X-User-Id: 42' "http://127.0.0.1:$port_nginx/api/bench"
curl -fsS -D "$work/h" -o /dev/null -H 'X-User-Id: 42' "http://127.0.0.1:$port_sluice/api/bench"
grep -qi '^X-Cache: HIT' "$work/h" || { echo "bench: sluice did not hit its cache" >&2; exit 1; }
grep -qi '^X-RateLimit-Remaining' "$work/h" || { echo "bench: no rate-limit check" >&2; exit 1; }

# run NAME PID URL -> prints "rps p50 us_per_req"
run() {
    wrk_measure "$2" "$3" "${wrk_caller[@]}"
    if grep -q 'Non-2xx' <<<"$wrk_out"; then
        echo "bench: $1 answered non-2xx responses:" >&2
        grep 'Non-2xx' <<<"$wrk_out" >&2
    fi
    echo "$wrk_result"
}

# keep_best PEER RPS P50 US: remember the round of PEER with the most req/s.
declare -A best best_p50 best_us
peers=()
keep_best() {
    if [ -z "${best[$1]:-}" ]; then
        peers+=("$1")
        best[$1]=0
    fi
    if awk -v a="${best[$1]}" -v b="$2" 'BEGIN {exit !(b > a)}'; then
        best[$1]=$2 best_p50[$1]=$3 best_us[$1]=$4
    fi
}

printf '%-34s %5s %12s %9s %12s\n' peer round req/s p50 cpu-us/req
for r in $(seq "$ROUNDS"); do
    read -r rps p50 us < <(run nginx "$nginx_pid" "http://127.0.0.1:$port_nginx/api/bench")
    printf '%-34s %5s %12s %9s %12s\n' "nginx proxy_cache + limit_req" "$r" "$rps" "$p50" "$us"
    keep_best nginx "$rps" "$p50" "$us"
    read -r rps p50 us < <(run sluice "$sluice_pid" "http://127.0.0.1:$port_sluice/api/bench")
    printf '%-34s %5s %12s %9s %12s\n' "sluice memory store (tier + cache)" "$r" "$rps" "$p50" "$us"
    keep_best sluice "$rps" "$p50" "$us"
done
echo
awk -v s="${best[sluice]}" -v n="${best[nginx]}" 'BEGIN {
    printf "best of each: sluice %.0f req/s, nginx %.0f req/s: ratio sluice/nginx = %.2f\n", s, n, s / n
}'

# === Redis store ==========================================================================
# sluice with REDIS_URL (the limit check and the cache lookup in one EVALSHA per request)
# against nginx + lua-nginx-module doing a Redis-backed sliding-window check
# (lua-resty-redis, Debian's lua-nginx-redis) in front of proxy_cache, on the same body.
# Each server on CPU $SERVER_CPU (sluice: one worker); redis-server shares CPU $CLIENT_CPU
# with wrk. REDIS=0 skips this part. With CALLERS=N (N > 1) its requests come from N callers
# in turn (X-User-Id 0..N-1), so that concurrent requests rarely share a caller: sluice
# then decides nearly every request in a call of its own (no batching).
if [ "${REDIS:-1}" != 0 ]; then
    port_redis=$(free_port)
    taskset -c "$CLIENT_CPU" redis-server --port "$port_redis" --bind 127.0.0.1 --save '' \
        --appendonly no --loglevel warning >/dev/null 2>&1 &
    pids+=("$!")
    for _ in $(seq 50); do
        redis-cli -p "$port_redis" ping >/dev/null 2>&1 && break
        sleep 0.1
    done

    # --- nginx + lua: sliding window (two counters, the weighted estimate) in Redis -------
    port_nginx_lua=$(free_port)
    mkdir -p "$work/cache-lua"
    cat >"$work/limit.lua" <<'EOF'
local key, limit, w = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = now - now % w
local cur = tonumber(redis.call('GET', key .. ':' .. start) or '0')
local prev = tonumber(redis.call('GET', key .. ':' .. (start - w)) or '0')
if math.floor(prev * (w - (now - start)) / w) + cur + 1 > limit then
  return 0
end
redis.call('INCR', key .. ':' .. start)
redis.call('PEXPIRE', key .. ':' .. start, 2 * w)
return 1
EOF
    cat >"$work/nginx-lua.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx-lua.pid;
error_log $work/nginx-lua-error.log warn;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=1000 inactive=60s;
    lua_package_path "/usr/share/lua/5.1/?.lua;;";
    init_by_lua_block {
        local f = io.open("$work/limit.lua")
        LIMIT_SRC = f:read("*a")
        f:close()
        LIMIT_SHA = ngx.encode_base16 and ngx.encode_base16(ngx.sha1_bin(LIMIT_SRC))
            or (ngx.sha1_bin(LIMIT_SRC):gsub(".", function(c) return string.format("%02x", c:byte()) end))
    }
    proxy_cache_path $work/cache-lua levels=1:2 keys_zone=benchlua:10m max_size=100m inactive=60m use_temp_path=off;
    server {
        listen 127.0.0.1:$port_nginx_lua;
        location / {
            access_by_lua_block {
                local redis = require "nginx.redis"
                local red = redis:new()
                red:set_timeout(50)
                local ok, err = red:connect("127.0.0.1", $port_redis)
                if not ok then return ngx.exit(503) end
                local key = "rl:{" .. (ngx.var.http_x_user_id or ngx.var.remote_addr) .. "}"
                local res, err = red:evalsha(LIMIT_SHA, 1, key, 1000000000, 3600000)
                if not res and err and err:find("NOSCRIPT", 1, true) then
                    res, err = red:eval(LIMIT_SRC, 1, key, 1000000000, 3600000)
                end
                red:set_keepalive(10000, 100)
                if not res then return ngx.exit(503) end
                if res == 0 then return ngx.exit(429) end
            }
            proxy_cache benchlua;
            proxy_cache_valid 200 5m;
            proxy_cache_key \$uri\$http_x_user_id;
            proxy_pass http://127.0.0.1:$port_origin;
        }
    }
}
EOF
    taskset -c "$SERVER_CPU" nginx -c "$work/nginx-lua.conf"
    sleep 0.5
    pids+=("$(cat "$work/nginx-lua.pid")")
    nginx_lua_pid=$(pgrep -P "$(cat "$work/nginx-lua.pid")" | head -n 1)

    # --- sluice with the Redis store: the same policy (tier limit + cache) --------------------
    port_sluice_redis=$(free_port)
    REDIS_URL="redis://127.0.0.1:$port_redis" taskset -c "$SERVER_CPU" build-bench/sluice serve \
        --workers 1 --admin off --max-connections-per-ip 0 \
        --listen "127.0.0.1:$port_sluice_redis" "$work/policies" \
        >"$work/sluice-redis.out" 2>"$work/sluice-redis.err" &
    sluice_redis_pid=$!
    pids+=("$sluice_redis_pid")
    for _ in $(seq 50); do
        grep -q listening "$work/sluice-redis.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q 'redis store' "$work/sluice-redis.err" || { echo "bench: sluice is not on Redis" >&2; exit 1; }

    a=$(curl -fsS -H 'X-User-Id: 42' "http://127.0.0.1:$port_nginx_lua/api/bench")
    b=$(curl -fsS -H 'X-User-Id: 42' "http://127.0.0.1:$port_sluice_redis/api/bench")
    [ "$a" = "$b" ] && [ ${#a} -eq 1024 ] || { echo "bench: bodies differ (redis part)" >&2; exit 1; }
    curl -fsS -o /dev/null -H 'X-User-Id: 42' "http://127.0.0.1:$port_nginx_lua/api/bench"
    curl -fsS -D "$work/hr" -o /dev/null -H 'X-User-Id: 42' "http://127.0.0.1:$port_sluice_redis/api/bench"
    grep -qi '^X-Cache: HIT' "$work/hr" || { echo "bench: sluice (redis) did not hit" >&2; exit 1; }
    [ -n "$(redis-cli -p "$port_redis" --scan --pattern 'rl:*' | head -n 1)" ] ||
        { echo "bench: nginx did not count in Redis" >&2; exit 1; }
    [ -n "$(redis-cli -p "$port_redis" --scan --pattern 'sl:*' | head -n 1)" ] ||
        { echo "bench: sluice did not count in Redis" >&2; exit 1; }

    if [ "$CALLERS" -gt 1 ]; then
        cat >"$work/callers.lua" <<EOF
local n = math.random($CALLERS)
request = function()
  n = (n + 1) % $CALLERS
  return wrk.format("GET", nil, {["X-User-Id"] = tostring(n)})
end
EOF
        wrk_caller=(-s "$work/callers.lua")
    fi

    echo
    echo "redis part: requests from $CALLERS caller(s)"
    printf '%-34s %5s %12s %9s %12s\n' peer round req/s p50 cpu-us/req
    for r in $(seq "$ROUNDS"); do
        read -r rps p50 us < <(run nginx-lua "$nginx_lua_pid" "http://127.0.0.1:$port_nginx_lua/api/bench")
        printf '%-34s %5s %12s %9s %12s\n' "nginx+lua redis limit + proxy_cache" "$r" "$rps" "$p50" "$us"
        keep_best nginx-lua-redis "$rps" "$p50" "$us"
        read -r rps p50 us < <(run sluice-redis "$sluice_redis_pid" "http://127.0.0.1:$port_sluice_redis/api/bench")
        printf '%-34s %5s %12s %9s %12s\n' "sluice redis store (tier + cache)" "$r" "$rps" "$p50" "$us"
        keep_best sluice-redis "$rps" "$p50" "$us"
    done
    grep -q degraded "$work/sluice-redis.err" && echo "bench: sluice fell back from Redis during the run" >&2
    echo
    awk -v s="${best[sluice-redis]}" -v n="${best[nginx-lua-redis]}" 'BEGIN {
        printf "redis, best of each: sluice %.0f req/s, nginx+lua %.0f req/s: ratio sluice/nginx+lua = %.2f\n", s, n, s / n
    }'
fi

# --- CHART=1: the best round of each peer as data, and a bar chart ---------------------------
if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/run.dat"
    {
        echo "# bench/run.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): best of $ROUNDS rounds of ${DURATION}s at c$CONNECTIONS,"
        echo "# server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; redis part from $CALLERS caller(s)"
        printf '# peer\treq/s\tp50 (us)\tserver CPU us/req\n'
        for p in "${peers[@]}"; do
            printf '%s\t%s\t%s\t%s\n' "$p" "${best[$p]}" "$(lat_us "${best_p50[$p]}")" "${best_us[$p]}"
        done
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/run.png" \
        "bench/run.sh $(date -u +%Y-%m-%d): 1 KB cache hit + limit check, c$CONNECTIONS, best of $ROUNDS x ${DURATION}s" \
        "(\$2/1000)|req/s (higher is better)|thousand requests per second|%.1fk" \
        "4|server CPU per request (lower is better)|CPU µs per request|%.1f"
    echo "chart: $dat, $CHART_DIR/run.png"
fi
