#!/usr/bin/env bash
# What finding the client behind trusted proxies costs on the hit path: a cached upstream
# answer with a rate-limit check keyed by {ip}, every request carrying
# "X-Forwarded-For: 203.0.113.7, 10.0.0.2", served by sluice without --trusted-proxies (the
# field is ignored) and with --trusted-proxies 127.0.0.1/32,10.0.0.0/8 (the field is walked:
# 10.0.0.2 is skipped, 203.0.113.7 is the client), the two alternating in each round.
#
#   bench/realip.sh                          # 3 rounds of 8 s at 50 connections
#   ROUNDS=5 DURATION=5 bench/realip.sh
#   SLUICE_BIN=/path/to/sluice bench/realip.sh   # measure that binary, build nothing
#
# First the walk alone (realip_walk_timing, bench/realip_walk.c): CPU nanoseconds per request.
# One worker on CPU 1, wrk on CPU 0. Prints req/s, p50 and the server's CPU time per
# request (utime + stime over the wrk run / requests) of each run, then the medians and
# their ratio trusted / plain. Every measured request is a cache hit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

if [ -n "${SLUICE_BIN:-}" ]; then
    bin=$SLUICE_BIN
    walk=$(dirname "$bin")/tests/realip_walk_timing
else
    scripts/deps.sh bench
    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build-bench -j"$(nproc)" --target sluice realip_walk_timing >/dev/null
    bin=build-bench/sluice
    walk=build-bench/tests/realip_walk_timing
fi
# The walk alone, in CPU time (steadier than req/s on a shared machine).
[ -x "$walk" ] && taskset -c "$SERVER_CPU" "$walk"

work=$(mktemp -d /tmp/sluice-realip.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT

port_origin=$(free_port)
python3 tests/e2e/origin.py --port "$port_origin" >/dev/null 2>&1 &
pids+=($!)
mkdir -p "$work/policy"
cat >"$work/policy/bench.lua" <<POL
upstream "origin" { url = "http://127.0.0.1:$port_origin", timeout = "5s" }
endpoint "GET /api/bench" {
  upstream = "origin",
  cache = { ttl = "5m", shared = true },
  limit = { { limit = 1000000000, window = "1m", key = "bench:{ip}" } },
}
POL
xff='X-Forwarded-For: 203.0.113.7, 10.0.0.2'

# run NAME [ARG...]: one sluice with ARGs, warmed, measured; appends "NAME rps p50 us" to results.
run() {
    local name=$1 port pid
    shift
    port=$(free_port)
    taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$port" --admin off --workers 1 \
        --max-connections-per-ip 0 --no-watch --log-level error "$@" "$work/policy" \
        >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/bench" -H "$xff" && break; sleep 0.05; done
    [ "$(curl -s -o /dev/null -D - "http://127.0.0.1:$port/api/bench" -H "$xff" | tr -d '\r' |
        awk -F': ' 'tolower($1) == "x-cache" {print $2}')" = HIT ] || { echo "$name: not a hit" >&2; exit 1; }
    wrk_measure "$pid" "http://127.0.0.1:$port/api/bench" -H "$xff"
    grep -q "Non-2xx" <<<"$wrk_out" && { echo "$name: answers other than 2xx" >&2; exit 1; }
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo "$name $wrk_result" | tee -a "$work/results"
}

echo "run req/s p50 cpu_us/req"
for _ in $(seq "$ROUNDS"); do
    run plain
    run trusted --trusted-proxies 127.0.0.1/32,10.0.0.0/8
done
awk '
    { rps[$1] = rps[$1] " " $2; us[$1] = us[$1] " " $4 }
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END {
        p = median(rps["plain"]); t = median(rps["trusted"]); pu = median(us["plain"]); tu = median(us["trusted"])
        printf "median req/s: plain %.0f, trusted %.0f (ratio %.3f); CPU us/req: plain %.2f, trusted %.2f (ratio %.3f)\n", p, t, t / p, pu, tu, tu / pu
    }' "$work/results"
