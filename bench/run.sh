#!/usr/bin/env bash
# Cache-hit path with a rate-limit check: sluice (memory store) against nginx
# proxy_cache + limit_req, serving the same 1 KB JSON body, in the same run.
# Each server runs on one core (CPU 1), wrk on the other (CPU 0).
#
#   bench/run.sh                 # 3 rounds of 8 s at 50 connections
#   ROUNDS=5 DURATION=10 CONNECTIONS=100 bench/run.sh
#
# Prints req/s, p50 latency and server CPU time per request for each peer, and
# the ratio sluice / nginx of the best round of each.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}

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

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

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
    "$work/policies" >"$work/sluice.out" 2>"$work/sluice.err" &
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

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME PID URL -> prints "rps p50 us_per_req"
run() {
    local pid=$2 url=$3 t0 t1 out rps p50 reqs
    t0=$(cpu_ticks "$pid")
    out=$(taskset -c "$CLIENT_CPU" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        -H 'X-User-Id: 42' "$url")
    t1=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    local hz
    hz=$(getconf CLK_TCK)
    local us
    us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "bench: $1 answered non-2xx responses:" >&2
        grep 'Non-2xx' <<<"$out" >&2
    fi
    echo "$rps $p50 $us"
}

printf '%-34s %5s %12s %9s %12s\n' peer round req/s p50 cpu-us/req
best_s=0
best_n=0
for r in $(seq "$ROUNDS"); do
    read -r rps p50 us < <(run nginx "$nginx_pid" "http://127.0.0.1:$port_nginx/api/bench")
    printf '%-34s %5s %12s %9s %12s\n' "nginx proxy_cache + limit_req" "$r" "$rps" "$p50" "$us"
    best_n=$(awk -v a="$best_n" -v b="$rps" 'BEGIN {print (b > a) ? b : a}')
    read -r rps p50 us < <(run sluice "$sluice_pid" "http://127.0.0.1:$port_sluice/api/bench")
    printf '%-34s %5s %12s %9s %12s\n' "sluice memory store (tier + cache)" "$r" "$rps" "$p50" "$us"
    best_s=$(awk -v a="$best_s" -v b="$rps" 'BEGIN {print (b > a) ? b : a}')
done
echo
awk -v s="$best_s" -v n="$best_n" 'BEGIN {
    printf "best of each: sluice %.0f req/s, nginx %.0f req/s: ratio sluice/nginx = %.2f\n", s, n, s / n
}'
