#!/usr/bin/env bash
# Hot reload costs: (1) time from a policy file write to the new generation
# serving, through inotify; (2) hit-path throughput while the policy is
# reloaded every 100 ms, against the same server not reloading, same run.
# sluice runs on one core (CPU 1), wrk on the other (CPU 0).
#
#   bench/reload.sh            # 20 write->serve samples, 2 rounds of 8 s each way
#   SAMPLES=50 ROUNDS=3 DURATION=10 bench/reload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES=${SAMPLES:-20}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}

scripts/deps.sh bench
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j"$(nproc)" --target sluice >/dev/null

work=$(mktemp -d /tmp/sluice-reload.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

write_policy() { # LIMIT: the tier limit identifies the generation in X-RateLimit-Limit
    {
        echo "tier \"bench\" { limit = $1, window = \"1h\" }"
        echo 'identity { user = header "X-User-Id", default_tier = "bench" }'
        echo 'endpoint "GET /api/bench" {'
        printf '  body = [==[%s]==],\n' "$(cat bench/body.json)"
        echo '  cache = { ttl = "5m", key = "bench:{user}" },'
        echo '  limit = "tier",'
        echo '}'
    } >"$work/tmp.lua"
    mv "$work/tmp.lua" "$work/policies/bench.lua"
}

mkdir -p "$work/policies"
write_policy 1000000000
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 1 build-bench/sluice serve --workers 1 --listen "127.0.0.1:$port" --admin off \
    --max-connections-per-ip 0 "$work/policies" >"$work/out" 2>"$work/err" &
for _ in $(seq 50); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port/api/bench"

# (1) write -> serving, measured by a client polling every millisecond.
python3 - "$url" "$work/policies" "$SAMPLES" <<'PY'
import os, statistics, sys, time, urllib.request
url, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = open("bench/body.json").read()
def limit():
    req = urllib.request.Request(url, headers={"X-User-Id": "1"})
    with urllib.request.urlopen(req) as r:
        return int(r.headers["X-RateLimit-Limit"])
samples = []
for i in range(n):
    lim = 1000000001 + i
    text = ('tier "bench" { limit = %d, window = "1h" }\n'
            'identity { user = header "X-User-Id", default_tier = "bench" }\n'
            'endpoint "GET /api/bench" {\n  body = [==[%s]==],\n'
            '  cache = { ttl = "5m", key = "bench:{user}" },\n  limit = "tier",\n}\n') % (lim, body)
    with open(os.path.join(d, "tmp.lua.part"), "w") as f:
        f.write(text)
    t0 = time.perf_counter()
    os.rename(os.path.join(d, "tmp.lua.part"), os.path.join(d, "bench.lua"))
    while limit() != lim:
        time.sleep(0.001)
    samples.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.2)
samples.sort()
print("write -> new generation serving (inotify, 100 ms debounce): median %.1f ms, "
      "min %.1f ms, max %.1f ms over %d writes" %
      (statistics.median(samples), samples[0], samples[-1], len(samples)))
PY

# (2) throughput with and without a reload every 100 ms.
rps() {
    taskset -c 0 wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -H 'X-User-Id: 42' "$url" |
        awk '/^Requests\/sec:/ {print $2}'
}
reloader() {
    local i=0
    while :; do
        i=$((i + 1))
        write_policy $((2000000000 + i))
        sleep 0.1
    done
}
best_quiet=0
best_reload=0
for r in $(seq "$ROUNDS"); do
    q=$(rps)
    reloader &
    rp=$!
    l=$(rps)
    kill "$rp"
    wait "$rp" 2>/dev/null || true
    printf 'round %s: %s req/s steady, %s req/s reloading every 100 ms\n' "$r" "$q" "$l"
    best_quiet=$(awk -v a="$best_quiet" -v b="$q" 'BEGIN {print (b > a) ? b : a}')
    best_reload=$(awk -v a="$best_reload" -v b="$l" 'BEGIN {print (b > a) ? b : a}')
done
reloads=$(grep -c 'reloaded' "$work/err" || true)
awk -v q="$best_quiet" -v l="$best_reload" -v n="$reloads" 'BEGIN {
    printf "best of each: %.0f req/s steady, %.0f req/s while reloading (%d reloads in all): %.1f%% of steady\n",
           q, l, n, 100 * l / q
}'
