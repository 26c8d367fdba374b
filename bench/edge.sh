#!/usr/bin/env bash
# What the edge features cost on the cache-hit path (with a rate-limit check, as bench/run.sh),
# in the same run, against the same sluice process:
#   plain     a hit of an endpoint without compress (the client sends Accept-Encoding: gzip)
#   gzip      a hit of an endpoint with compress = true, the client accepting gzip: the gzip
#             form stored with the entry is answered (never coded per hit)
#   cors+gzip a hit of an endpoint with cors and compress = true, the request carrying an
#             allowed Origin and accepting gzip: the CORS fields added as the answer is
#             written, the stored gzip form answered (the target: at least 0.95 of plain;
#             only when this tree's policy language has `cors`, else the column is left out)
#
#   bench/edge.sh                          # 3 rounds of 8 s at 50 connections per peer
#   ROUNDS=5 DURATION=10 bench/edge.sh
#   BODY=path/to/answer.json bench/edge.sh # another answer (default bench/body.json, 1 KB)
#   CHART=1 bench/edge.sh                  # also write docs/bench/edge.dat and edge.png
#   SLUICE_BIN=/path/to/sluice bench/edge.sh   # run that binary, build nothing
#
# sluice runs with one worker on CPU 1, wrk on CPU 0; the peers are taken in turn in each round
# and the best round of each is compared. Prints req/s, p50 and CPU time per request of every
# round, the best of each peer and its ratio to plain (the target for gzip and cors + gzip:
# at least 0.95), and the load average before the rounds. Before measuring, each peer must
# answer a hit (X-Cache: HIT) with the body (gzip: Content-Encoding: gzip, decoding to the
# body; cors: the origin allowed); after, sluice_compressions_total{coding="gzip"} must still
# be one per stored entry that has a form, none per hit. Any non-2xx answer fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. bench/lib.sh
BODY=${BODY:-$root/bench/body.json}

if [ -n "${SLUICE_BIN:-}" ]; then
    bin=$SLUICE_BIN
else
    scripts/deps.sh bench
    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build-bench -j"$(nproc)" --target sluice >/dev/null
    bin=build-bench/sluice
fi

work=$(mktemp -d /tmp/sluice-edge.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "edge bench: $*" >&2; exit 1; }

has_cors=0
grep -q '"cors"' lua/sluice/validate.lua && has_cors=1

mkdir -p "$work/policies"
endpoint() { # endpoint PATH EXTRA-FIELDS
    echo "endpoint \"GET $1\" {"
    printf '  body = [==[%s]==],\n' "$(cat "$BODY")"
    echo '  cache = { ttl = "5m", key = "'"$1"':{user}" },'
    echo '  limit = "tier",'
    echo "  $2"
    echo '}'
}
{
    echo 'tier "bench" { limit = 1000000000, window = "1h" }'
    echo 'identity { user = header "X-User-Id", default_tier = "bench" }'
    endpoint /api/plain 'compress = false,'
    endpoint /api/gzip 'compress = true,'
    [ "$has_cors" = 0 ] ||
        endpoint /api/cors 'compress = true, cors = { origins = { "https://app.example" } },'
} >"$work/policies/bench.lua"
if ! $bin check "$work/policies" >"$work/check.out" 2>&1; then
    [ "$has_cors" = 1 ] || die "sluice check: $(cat "$work/check.out")"
    echo "(this tree's cors takes other fields than this script knows; the cors column is left out)"
    has_cors=0
    {
        echo 'tier "bench" { limit = 1000000000, window = "1h" }'
        echo 'identity { user = header "X-User-Id", default_tier = "bench" }'
        endpoint /api/plain 'compress = false,'
        endpoint /api/gzip 'compress = true,'
    } >"$work/policies/bench.lua"
    $bin check "$work/policies" >/dev/null
fi

port=$(free_port)
admin=$(free_port)
taskset -c "$SERVER_CPU" $bin serve --workers 1 --listen "127.0.0.1:$port" \
    --admin "127.0.0.1:$admin" --max-connections-per-ip 0 "$work/policies" \
    >"$work/sluice.out" 2>"$work/sluice.err" &
pid=$!
pids+=("$pid")
for _ in $(seq 50); do
    grep -q listening "$work/sluice.out" 2>/dev/null && break
    sleep 0.1
done
grep -q listening "$work/sluice.out" || die "sluice did not start: $(cat "$work/sluice.err")"

peers=(plain gzip)
[ "$has_cors" = 0 ] || peers+=(cors)
declare -A label=([plain]="sluice hit, plain" [gzip]="sluice hit, gzip (compress)"
    [cors]="sluice hit, cors + gzip")
declare -A path=([plain]=/api/plain [gzip]=/api/gzip [cors]=/api/cors)
declare -A extra=([plain]="Accept-Encoding: gzip" [gzip]="Accept-Encoding: gzip"
    [cors]="Accept-Encoding: gzip|Origin: https://app.example")
# headers P: sets hdr_args to -H arguments for peer P's request fields.
headers() {
    local h
    hdr_args=(-H 'X-User-Id: 42')
    IFS='|' read -r -a h <<<"${extra[$1]}"
    for f in "${h[@]}"; do hdr_args+=(-H "$f"); done
}

for p in "${peers[@]}"; do
    headers "$p"
    for _ in 1 2; do
        curl -fsS -o "$work/body-$p" -D "$work/h-$p" "${hdr_args[@]}" \
            "http://127.0.0.1:$port${path[$p]}"
    done
    grep -qi '^X-Cache: HIT' "$work/h-$p" || die "$p did not hit its cache"
    if [ "$p" = cors ]; then
        grep -qi '^Access-Control-Allow-Origin: https://app.example' "$work/h-$p" ||
            die "cors did not allow the origin"
    fi
    if [ "$p" = gzip ] || [ "$p" = cors ]; then
        grep -qi '^Content-Encoding: gzip' "$work/h-$p" || die "$p was not answered gzip"
        gunzip -c <"$work/body-$p" >"$work/body-$p.plain"
        cmp -s "$work/body-$p.plain" "$BODY" || die "the gzip answer does not decode to the body"
    else
        cmp -s "$work/body-$p" "$BODY" || die "$p did not answer the body"
    fi
done
gz_bytes=$(stat -c %s "$work/body-gzip")

load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average before the rounds: $load (nproc $(nproc)); body $(stat -c %s "$BODY") bytes, gzip $gz_bytes"
declare -A best best_p50 best_us
printf '%-30s %5s %12s %9s %12s\n' peer round req/s p50 cpu-us/req
for r in $(seq "$ROUNDS"); do
    for p in "${peers[@]}"; do
        wait_quiet >/dev/null
        headers "$p"
        wrk_measure "$pid" "http://127.0.0.1:$port${path[$p]}" "${hdr_args[@]}"
        grep -q 'Non-2xx' <<<"$wrk_out" && die "$p answered non-2xx: $(grep Non-2xx <<<"$wrk_out")"
        read -r rps p50 us <<<"$wrk_result"
        printf '%-30s %5s %12s %9s %12s\n' "${label[$p]}" "$r" "$rps" "$p50" "$us"
        if awk -v a="${best[$p]:-0}" -v b="$rps" 'BEGIN {exit !(b > a)}'; then
            best[$p]=$rps best_p50[$p]=$p50 best_us[$p]=$us
        fi
    done
done

made=$(curl -fsS "http://127.0.0.1:$admin/metrics" |
    awk '/^sluice_compressions_total\{coding="gzip"\}/ {print $2}')
stored=1
[ "$has_cors" = 0 ] || stored=2 # the cors + gzip endpoint's entry has its own form
[ "$made" = "$stored" ] ||
    die "sluice_compressions_total{coding=\"gzip\"} is $made after the rounds, not $stored"

echo
echo "best round of each (req/s; ratio to plain; target for gzip and cors + gzip >= 0.95):"
for p in "${peers[@]}"; do
    awk -v n="${label[$p]}" -v r="${best[$p]}" -v b="${best[plain]}" -v u="${best_us[$p]}" \
        -v l="${best_p50[$p]}" \
        'BEGIN {printf "  %-30s %10.0f req/s  p50 %-9s %6.1f us/req  ratio %.3f\n", n, r, l, u, r / b}'
done
echo "  gzip forms made for the stored entries: $made (none per hit); load average was $load"

if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/edge.dat"
    {
        echo "# bench/edge.sh: best of $ROUNDS rounds of ${DURATION}s at $CONNECTIONS connections; load before: $load"
        echo "# peer	req/s	ratio to plain	cpu us/req"
        for p in "${peers[@]}"; do
            awk -v n="${label[$p]}" -v r="${best[$p]}" -v b="${best[plain]}" -v u="${best_us[$p]}" \
                'BEGIN {printf "%s\t%.0f\t%.3f\t%.1f\n", n, r, r / b, u}'
        done
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/edge.png" \
        "Cache hit with edge features (1 worker, CPU 1; wrk on CPU 0)" \
        "2|throughput|req/s|%.0f" "3|ratio to plain|ratio|%.3f" "4|CPU per request|us|%.1f"
    echo "wrote $dat and $CHART_DIR/edge.png"
fi
