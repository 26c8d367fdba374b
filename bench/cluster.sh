#!/usr/bin/env bash
# The Redis store on a Redis Cluster of 3 masters against one Redis: a cached endpoint with a
# limit, every request a hit and a counted limit, callers spread over 1,000 users so that the
# keys cover every master. Two endpoints: /page, a fixed 1 KB body whose cache key, tag and
# limit all end in the user (one EVALSHA per request, as bench/run.sh's hit), and /up, an
# upstream answer, which also carries the tag url:/up, in another slot than the user's (on a
# cluster: a GET of the entry beside the lookup, and a read of the tag per loop turn).
#
#   bench/cluster.sh                    # 3 rounds of 8 s per setup
#   ROUNDS=5 DURATION=10 bench/cluster.sh
#   CHART=1 bench/cluster.sh            # also write docs/bench/cluster.dat and .png
#
# sluice runs on CPU 1 with one worker, wrk on CPU 0, the Redis servers wherever the kernel
# puts them (one redis-server, or three cluster masters without replicas: replication is not
# what is measured). Prints every round, the best of each setup, sluice's CPU per request
# and the sum of the Redis servers' CPU per request, and the ratio cluster / one Redis.
# Every measured answer must be a 200 HIT; the script fails otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
USERS=${USERS:-1000}

cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j"$(nproc)" --target sluice >/dev/null
bin=build-bench/sluice

work=$(mktemp -d /tmp/sluice-cluster.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "cluster bench: $*" >&2; exit 1; }

# Ports: base..base+3 and their cluster bus ports (+10000) free.
port_free() { ! (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
base=
for _ in $(seq 100); do
    b=$((21000 + RANDOM % 7000))
    ok=1
    for i in 0 1 2 3; do port_free $((b + i)) && port_free $((b + i + 10000)) || ok=0; done
    [ $ok = 1 ] && base=$b && break
done
[ -n "$base" ] || die "no free ports"

redis() { # PORT [ARG...]: a redis-server in $work/PORT, in the background
    local port=$1
    shift
    mkdir -p "$work/$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/$port" \
        --loglevel warning --logfile "$work/$port/log" "$@" >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return; sleep 0.05; done
    die "redis-server $port did not start: $(cat "$work/$port/log" 2>/dev/null)"
}
redis "$base"
single_pid=${pids[-1]}
cluster_pids=()
for i in 1 2 3; do
    redis $((base + i)) --cluster-enabled yes --cluster-config-file "$work/$((base + i))/nodes.conf"
    cluster_pids+=("${pids[-1]}")
done
redis-cli --cluster create 127.0.0.1:$((base + 1)) 127.0.0.1:$((base + 2)) 127.0.0.1:$((base + 3)) \
    --cluster-yes >"$work/create.out" 2>&1 || die "cluster create: $(cat "$work/create.out")"
for _ in $(seq 100); do
    redis-cli -p $((base + 1)) cluster info | grep -q cluster_state:ok && break
    sleep 0.1
done

# The origin answers once per user; then everything is a hit.
oport=$(free_port)
python3 tests/e2e/origin.py --port "$oport" >"$work/origin.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$work/origin.out" 2>/dev/null && break; sleep 0.1; done

mkdir -p "$work/policies"
{
    echo 'identity { user = header "X-User-Id" }'
    echo "upstream \"origin\" { url = \"http://127.0.0.1:$oport\" }"
    echo 'endpoint "GET /page" {'
    printf '  body = [==[%s]==],\n' "$(cat bench/body.json)"
    echo '  cache = { ttl = "1h", key = "page:{user}", tags = { "pages:{user}" } },'
    echo '  limit = { limit = 100000000, window = "1h", key = "reads:{user}" },'
    echo '}'
    echo 'endpoint "GET /up" {'
    echo '  upstream = "origin",'
    echo '  cache = { ttl = "1h", key = "up:{user}", tags = { "ups:{user}" } },'
    echo '  limit = { limit = 100000000, window = "1h", key = "upreads:{user}" },'
    echo '}'
} >"$work/policies/bench.lua"
$bin check "$work/policies" >/dev/null

cat >"$work/hit.lua" <<EOF
local counter = 0
request = function()
    counter = counter + 1
    return wrk.format("GET", wrk.path, { ["X-User-Id"] = tostring(counter % $USERS) })
end
response = function(status, headers)
    if status ~= 200 or headers["X-Cache"] ~= "HIT" then
        io.stderr:write("bad answer: ", status, " ", tostring(headers["X-Cache"]), "\n")
        os.exit(3)
    end
end
EOF

sluice_pid=
start_sluice() { # REDIS_URL PATH
    if [ -n "$sluice_pid" ]; then kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true; fi
    port=$(free_port)
    # A generous deadline: a busy machine must not turn a slow answer into a bypass.
    REDIS_URL=$1 taskset -c "$SERVER_CPU" $bin serve --workers 1 --listen "127.0.0.1:$port" \
        --redis-deadline 1s \
        --admin off --max-connections-per-ip 0 "$work/policies" >"$work/sluice.out" 2>"$work/sluice.err" &
    sluice_pid=$!
    pids+=("$sluice_pid")
    for _ in $(seq 50); do grep -q listening "$work/sluice.out" 2>/dev/null && break; sleep 0.1; done
    grep -q listening "$work/sluice.out" || die "sluice did not start: $(cat "$work/sluice.err")"
    sleep 0.3 # the slot map
    # Fill every user's entry (the misses are not measured).
    for u in $(seq 0 $((USERS - 1))); do
        curl -fsS -o /dev/null -H "X-User-Id: $u" "http://127.0.0.1:$port$2" || die "warm-up failed"
    done
    sleep 0.2
}

ticks_sum() { local t=0 p; for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done; echo $t; }

declare -A best_rps best_us best_rus best_p50
printf '%-22s %5s %10s %11s %17s %8s\n' setup round req/s cpu-us/req redis-cpu-us/req p50
measure() { # NAME URL PATH REDIS_PID...
    local name=$1 url=$2 path=$3 r0 r1 rps p50 us rus reqs hz
    shift 3
    start_sluice "$url" "$path"
    for r in $(seq "$ROUNDS"); do
        wait_quiet >/dev/null
        r0=$(ticks_sum "$@")
        wrk_measure "$sluice_pid" "http://127.0.0.1:$port$path" -s "$work/hit.lua"
        r1=$(ticks_sum "$@")
        read -r rps p50 us <<<"$wrk_result"
        reqs=$(awk '/requests in/ {print $1}' <<<"$wrk_out")
        hz=$(getconf CLK_TCK)
        rus=$(awk -v t=$((r1 - r0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
        printf '%-22s %5s %10s %11s %17s %8s\n' "$name" "$r" "$rps" "$us" "$rus" "$p50"
        if awk -v a="${best_rps[$name]:-0}" -v b="$rps" 'BEGIN {exit !(b > a)}'; then
            best_rps[$name]=$rps best_us[$name]=$us best_rus[$name]=$rus best_p50[$name]=$(lat_us "$p50")
        fi
    done
}
echo "load before: $(uptime | sed 's/.*load average: //')"
one="one Redis" cl="cluster, 3 masters" upone="upstream, one Redis" upcl="upstream, cluster"
measure "$one" "redis://127.0.0.1:$base" /page "$single_pid"
measure "$cl" "redis+cluster://127.0.0.1:$((base + 1))" /page "${cluster_pids[@]}"
if [ "${UPSTREAM:-1}" = 1 ]; then
    measure "$upone" "redis://127.0.0.1:$base" /up "$single_pid"
    measure "$upcl" "redis+cluster://127.0.0.1:$((base + 1))" /up "${cluster_pids[@]}"
fi
echo "load after: $(uptime | sed 's/.*load average: //')"

echo
echo "best round of each:"
ratio() { # LABEL ONE CLUSTER
    awk -v l="$1" -v r1="${best_rps[$2]}" -v u1="${best_us[$2]}" -v r2="${best_rps[$3]}" \
        -v u2="${best_us[$3]}" -v ru1="${best_rus[$2]}" -v ru2="${best_rus[$3]}" 'BEGIN {
        printf "  %s, one Redis: %8.0f req/s, sluice %5.1f us/req, redis %5.1f us/req\n", l, r1, u1, ru1
        printf "  %s, cluster:   %8.0f req/s, sluice %5.1f us/req, redis %5.1f us/req\n", l, r2, u2, ru2
        printf "  %s, cluster / one Redis: throughput %.2f, sluice CPU per request %.2f\n", l, r2 / r1, u2 / u1 }'
}
ratio "body  " "$one" "$cl"
[ "${UPSTREAM:-1}" = 1 ] && ratio "upstream" "$upone" "$upcl"

if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/cluster.dat"
    {
        echo "# bench/cluster.sh: best of $ROUNDS rounds of ${DURATION}s; name, req/s, sluice cpu us/req, redis cpu us/req, p50 us"
        for n in "$one" "$cl" "$upone" "$upcl"; do
            [ -n "${best_rps[$n]:-}" ] || continue
            printf 'sluice, %s\t%s\t%s\t%s\t%s\n' "$n" "${best_rps[$n]}" "${best_us[$n]}" "${best_rus[$n]}" "${best_p50[$n]}"
        done
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/cluster.png" "Hit + limit on one Redis and on a 3-master cluster (bench/cluster.sh)" \
        "(\$2/1000)|throughput|thousand req/s|%.1f" "3|sluice CPU per request|us|%.1f" \
        "4|Redis CPU per request (all servers)|us|%.1f"
    echo "wrote $dat and $CHART_DIR/cluster.png"
fi
