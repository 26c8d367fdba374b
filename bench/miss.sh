#!/usr/bin/env bash
# What a miss costs: a cached SQL endpoint answered from PostgreSQL on every request (each
# request names a key never seen before), the same endpoint answered from the cache, and the
# statement alone through pgbench (prepared, one connection: the floor a miss stands on).
#
#   bench/miss.sh                    # 3 rounds of 8 s per peer
#   ROUNDS=5 DURATION=10 bench/miss.sh
#   CHART=1 bench/miss.sh            # also write docs/bench/miss.dat and .png
#
# Runs under its own throwaway PostgreSQL cluster (pg_virtualenv) unless PGHOST names a
# running one. sluice runs on CPU 1 with one worker and one database connection, wrk and
# pgbench on CPU 0, PostgreSQL wherever the kernel puts it. Two loads:
#   - throughput: 50 connections (sluice's CPU per request, miss vs hit);
#   - latency: 1 connection (p50 and p99 of a miss through sluice vs the statement alone).
# Prints every round and the best of each; every measured answer must be a 200 with the
# X-Cache it claims (MISS or HIT), the script fails otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${PGHOST:-}" ] || ! pg_isready -q 2>/dev/null; then
    scripts/deps.sh bench
    exec pg_virtualenv -t "$0" "$@"
fi
. bench/lib.sh
ROWS=${ROWS:-100000}

cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j"$(nproc)" --target sluice >/dev/null
bin=build-bench/sluice

work=$(mktemp -d /tmp/sluice-miss.XXXXXX)
chmod 755 "$work"
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "miss bench: $*" >&2; exit 1; }

PGOPTIONS="-c client_min_messages=warning" psql -qX -v ON_ERROR_STOP=1 >/dev/null <<EOF
DROP TABLE IF EXISTS items;
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
INSERT INTO items SELECT i, 'item ' || i, i % 97 FROM generate_series(1, $ROWS) i;
ANALYZE items;
EOF
query='SELECT id, name, qty FROM items WHERE id = $1::int'

mkdir -p "$work/policies"
cat >"$work/policies/items.lua" <<EOF
endpoint "GET /items/{id}/{n}" {
  sql = [[$query]],
  args = { "{path.id}" },
  one = true,
  cache = { ttl = "5m", key = "item:{path.id}:{path.n}" },
}
EOF
$bin check "$work/policies" >/dev/null

port=$(free_port)
taskset -c "$SERVER_CPU" $bin serve --workers 1 --db-pool 1 --listen "127.0.0.1:$port" \
    --admin off --max-connections-per-ip 0 --cache-bytes 2147483648 "$work/policies" \
    >"$work/sluice.out" 2>"$work/sluice.err" &
pid=$!
for _ in $(seq 50); do
    grep -q listening "$work/sluice.out" 2>/dev/null && break
    sleep 0.1
done
grep -q listening "$work/sluice.out" || die "sluice did not start: $(cat "$work/sluice.err")"

base="http://127.0.0.1:$port"
curl -fsS -D "$work/h1" -o "$work/b1" "$base/items/7/0" >/dev/null
curl -fsS -D "$work/h2" -o "$work/b2" "$base/items/7/0" >/dev/null
grep -qi '^X-Cache: MISS' "$work/h1" || die "the first answer was not a MISS"
grep -qi '^X-Cache: HIT' "$work/h2" || die "the second answer was not a HIT"
grep -q '"name":"item 7"' "$work/b1" || die "unexpected body: $(cat "$work/b1")"

# Each wrk thread walks its own range of ids and keys (n = thread, per-thread counter), so
# no two requests of a run, or of two runs, share a key: every one is a miss.
cat >"$work/miss.lua" <<'EOF'
local counter = 0
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("thread_no", threads)
    thread:set("run", os.time())
end
function request()
    counter = counter + 1
    local id = (counter * 7919) % ROWS + 1
    return wrk.format("GET", string.format("/items/%d/%d-%d-%d", id, run, thread_no, counter))
end
function response(status, headers)
    if status ~= 200 or headers["X-Cache"] ~= "MISS" then
        io.stderr:write("bad answer: ", status, " ", tostring(headers["X-Cache"]), "\n")
        os.exit(3)
    end
end
EOF
sed -i "s/ROWS/$ROWS/" "$work/miss.lua"
cat >"$work/hit.lua" <<'EOF'
function response(status, headers)
    if status ~= 200 or headers["X-Cache"] ~= "HIT" then
        io.stderr:write("bad answer: ", status, " ", tostring(headers["X-Cache"]), "\n")
        os.exit(3)
    end
end
EOF

# pgbench: the same statement, prepared, ids drawn at random; a log line per transaction.
echo "\\set id random(1, $ROWS)" >"$work/pg.sql"
# sluice sends the statement wrapped so that PostgreSQL answers JSON; so does the baseline.
echo "SELECT row_to_json(t)::text FROM (SELECT id, name, qty FROM items WHERE id = :id) t LIMIT 1;" \
    >>"$work/pg.sql"
pg_latency() { # -> "tps p50_us p99_us"
    rm -f "$work"/pgbench_log.*
    (cd "$work" && taskset -c "$CLIENT_CPU" pgbench -n -M prepared -c1 -T"$DURATION" -l \
        -f pg.sql >"$work/pgbench.out" 2>&1) || die "pgbench failed: $(cat "$work/pgbench.out")"
    cat "$work"/pgbench_log.* | awk '{print $3}' | sort -n | awk '
        {v[NR] = $1} END {printf "%.0f %d %d\n", NR / D, v[int(NR * 0.5)], v[int(NR * 0.99)]}' \
        D="$DURATION"
}

# wrk_lat URL SCRIPT: one connection; -> "rps p50_us p99_us us_per_req"
wrk_lat() {
    local p50 p99
    CONNECTIONS=1 WRK_THREADS=1 wrk_measure "$pid" "$1" -s "$2"
    read -r rps p50 us <<<"$wrk_result"
    p99=$(awk '$1 == "99%" {print $2}' <<<"$wrk_out")
    echo "$rps $(lat_us "$p50") $(lat_us "$p99") $us"
}

declare -A best_rps best_us best_p50 best_p99
keep_best() { # NAME RPS US P50 P99
    if awk -v a="${best_rps[$1]:-0}" -v b="$2" 'BEGIN {exit !(b > a)}'; then
        best_rps[$1]=$2 best_us[$1]=$3 best_p50[$1]=$4 best_p99[$1]=$5
    fi
}
printf '%-34s %5s %10s %11s %9s %9s\n' peer round req/s cpu-us/req p50-us p99-us
# at_50 NAME LABEL URL SCRIPT: one round at $CONNECTIONS connections, printed and kept.
at_50() {
    local p50 p99 rps us
    wait_quiet >/dev/null
    wrk_measure "$pid" "$3" -s "$4"
    read -r rps p50 us <<<"$wrk_result"
    p50=$(lat_us "$p50")
    p99=$(lat_us "$(awk '$1 == "99%" {print $2}' <<<"$wrk_out")")
    printf '%-34s %5s %10s %11s %9s %9s\n' "$2" "$r" "$rps" "$us" "$p50" "$p99"
    keep_best "$1" "$rps" "$us" "$p50" "$p99"
}
for r in $(seq "$ROUNDS"); do
    at_50 hit50 "sluice hit, 50 conn" "$base/items/7/0" "$work/hit.lua"
    at_50 miss50 "sluice miss, 50 conn" "$base/" "$work/miss.lua"

    wait_quiet >/dev/null
    read -r rps p50 p99 us <<<"$(wrk_lat "$base/" "$work/miss.lua")"
    printf '%-34s %5s %10s %11s %9s %9s\n' "sluice miss, 1 conn" "$r" "$rps" "$us" "$p50" "$p99"
    keep_best miss1 "$rps" "$us" "$p50" "$p99"

    wait_quiet >/dev/null
    read -r rps p50 p99 <<<"$(pg_latency)"
    printf '%-34s %5s %10s %11s %9s %9s\n' "pgbench, statement alone, 1 conn" "$r" "$rps" - "$p50" "$p99"
    keep_best pg1 "$rps" - "$p50" "$p99"
done

echo
echo "best round of each:"
awk -v h="${best_us[hit50]}" -v m="${best_us[miss50]}" \
    'BEGIN {printf "  sluice CPU per request: hit %.1f us, miss %.1f us (miss/hit %.2f)\n", h, m, m / h}'
awk -v sp50="${best_p50[miss1]}" -v sp99="${best_p99[miss1]}" -v pp50="${best_p50[pg1]}" \
    -v pp99="${best_p99[pg1]}" 'BEGIN {
    printf "  one connection, miss through sluice: p50 %d us, p99 %d us\n", sp50, sp99
    printf "  one connection, statement alone:     p50 %d us, p99 %d us\n", pp50, pp99
    printf "  added by sluice: p50 +%d us, p99 +%d us\n", sp50 - pp50, sp99 - pp99 }'

if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/miss.dat"
    {
        echo "# bench/miss.sh: best of $ROUNDS rounds of ${DURATION}s; name, req/s, cpu us/req, p50 us, p99 us"
        printf 'sluice hit (50 conn)\t%s\t%s\t%s\t%s\n' "${best_rps[hit50]}" "${best_us[hit50]}" "${best_p50[hit50]}" "${best_p99[hit50]}"
        printf 'sluice miss (50 conn)\t%s\t%s\t%s\t%s\n' "${best_rps[miss50]}" "${best_us[miss50]}" "${best_p50[miss50]}" "${best_p99[miss50]}"
        printf 'sluice miss (1 conn)\t%s\t%s\t%s\t%s\n' "${best_rps[miss1]}" "${best_us[miss1]}" "${best_p50[miss1]}" "${best_p99[miss1]}"
        printf 'statement alone (1 conn)\t%s\t0\t%s\t%s\n' "${best_rps[pg1]}" "${best_p50[pg1]}" "${best_p99[pg1]}"
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/miss.png" "What a miss costs (bench/miss.sh)" \
        "3|sluice CPU per request|us|%.1f" "4|p50 latency|us|%.0f" "5|p99 latency|us|%.0f"
    echo "wrote $dat and $CHART_DIR/miss.png"
fi
