#!/usr/bin/env bash
# What verified identity costs, in one run on this machine:
#   (1) the cache-hit path (a fixed 1 KB body, a tier limit, a per-caller key) with the caller
#       named by a trusted header (X-User-Id) against the same hit with the caller verified
#       from an RS256 bearer token (identity { jwt = ... }): after the first request each
#       worker remembers the token (under its text in a per-worker cache), so a hit verifies no
#       signature; wrk on CPU 0, sluice (one worker) on CPU 1. Goal: >= 0.9x the header's req/s.
#   (2) first sight: microseconds to verify a token of each algorithm (a C timing of
#       jwt_verify() on keys OpenSSL makes, bench/jwt_verify.c), and what a remembered token
#       costs instead (a cache hit).
#
#   bench/identity.sh                   # 3 rounds of 8 s each way at 50 connections
#   ROUNDS=5 DURATION=10 bench/identity.sh
#   CHART=1 bench/identity.sh           # also docs/bench/identity.dat, identity.png and
#                                       # identity-verify.dat, identity-verify.png
#   BUILD_DIR=build-x bench/identity.sh
#
# Before measuring, one request each way must be a HIT with a rate-limit field. A measured
# run with any non-2xx answer or socket error fails the script. Before each round the script
# waits (at most QUIET_MAX=15 s) for both cores to be nearly idle and prints how busy they were.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BUILD_DIR=${BUILD_DIR:-build-bench}
VERIFICATIONS=${VERIFICATIONS:-2000}

scripts/deps.sh bench
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target sluice jwt_verify_timing >/dev/null
sluice_bin=$BUILD_DIR/sluice

work=$(mktemp -d /tmp/sluice-identity.XXXXXX)
pids=()
cleanup() {
    local rc=$? f
    if [ "$rc" -ne 0 ]; then
        for f in "$work"/*.err; do
            [ -s "$f" ] && { echo "$(basename "$f"):"; tail -n 5 "$f"; } >&2
        done
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "identity bench: $*" >&2; exit 1; }

# An RS256 key, its JWK set and a token for user 42 valid for two hours.
/usr/bin/python3 - "$work" <<'PY'
import json, sys, time
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
d = sys.argv[1]
k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pub = json.loads(RSAAlgorithm.to_jwk(k.public_key()))
pub.update(kid="bench", alg="RS256", use="sig")
import os
os.makedirs(d + "/jwt", exist_ok=True)
json.dump({"keys": [pub]}, open(d + "/jwt/jwks.json", "w"))
now = int(time.time())
open(d + "/token", "w").write(jwt.encode(
    {"sub": "42", "iss": "https://auth.bench", "aud": "bench", "iat": now, "exp": now + 7200},
    k, algorithm="RS256", headers={"kid": "bench"}))
PY
token=$(cat "$work/token")

endpoint() { # the endpoint both policies share
    echo 'tier "bench" { limit = 1000000000, window = "1h" }'
    echo 'endpoint "GET /api/bench" {'
    printf '  body = [==[%s]==],\n' "$(cat bench/body.json)"
    echo '  cache = { ttl = "1h", key = "bench:{user}" },'
    echo '  limit = "tier",'
    echo '}'
}
mkdir -p "$work/header"
{
    endpoint
    echo 'identity { user = header "X-User-Id", default_tier = "bench" }'
} >"$work/header/bench.lua"
{
    endpoint
    echo 'identity {'
    echo '  jwt = { keys = "jwks.json", issuer = "https://auth.bench", audience = "bench", required = true },'
    echo '  user = claim "sub", default_tier = "bench",'
    echo '}'
} >"$work/jwt/bench.lua"

declare -A port_of pid_of
for mode in header jwt; do
    "$sluice_bin" check "$work/$mode" >/dev/null
    port_of[$mode]=$(free_port)
    taskset -c "$SERVER_CPU" "$sluice_bin" serve --workers 1 --admin off --max-connections-per-ip 0 \
        --listen "127.0.0.1:${port_of[$mode]}" "$work/$mode" >"$work/$mode.out" 2>"$work/$mode.err" &
    pid_of[$mode]=$!
    pids+=("${pid_of[$mode]}")
done
for mode in header jwt; do
    for _ in $(seq 100); do
        grep -q listening "$work/$mode.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q listening "$work/$mode.out" || die "the $mode server did not start"
done
declare -A hdr_of=([header]="X-User-Id: 42" [jwt]="Authorization: Bearer $token")
for mode in header jwt; do
    url="http://127.0.0.1:${port_of[$mode]}/api/bench"
    curl -s -o /dev/null -H "${hdr_of[$mode]}" "$url" # the fill (and the first verification)
    h=$(curl -s -D - -o /dev/null -H "${hdr_of[$mode]}" "$url")
    grep -qi '^x-cache: HIT' <<<"$h" || die "$mode: not a HIT: $h"
    grep -qi '^x-ratelimit-remaining:' <<<"$h" || die "$mode: no rate-limit field: $h"
done

declare -A best best_p50 best_us all_rps all_us
for mode in header jwt; do best[$mode]=0; done
for r in $(seq "$ROUNDS"); do
    for mode in header jwt; do
        pre=$(wait_quiet)
        wrk_measure "${pid_of[$mode]}" "http://127.0.0.1:${port_of[$mode]}/api/bench" -H "${hdr_of[$mode]}"
        grep -q 'Non-2xx\|Socket errors' <<<"$wrk_out" && die "$mode: errors during the run: $wrk_out"
        read -r rps p50 us <<<"$wrk_result"
        printf 'round %s %-7s %10s req/s  p50 %8s  sluice CPU %5s us/req  (pre-busy %s%%)\n' \
            "$r" "$mode" "$rps" "$p50" "$us" "$pre"
        all_rps[$mode]+=" $rps" all_us[$mode]+=" $us"
        if awk -v a="$rps" -v b="${best[$mode]}" 'BEGIN {exit !(a > b)}'; then
            best[$mode]=$rps
            best_p50[$mode]=$p50
            best_us[$mode]=$us
        fi
    done
done
awk -v h="${best[header]}" -v j="${best[jwt]}" -v hu="${best_us[header]}" -v ju="${best_us[jwt]}" 'BEGIN {
    printf "best rounds: header %.0f req/s (%.1f us/req), RS256 token %.0f req/s (%.1f us/req): %.2fx the req/s, +%.1f us of sluice CPU per request (goal >= 0.9x)\n",
        h, hu, j, ju, j / h, ju - hu
}'
echo "paired rounds (each round's token run against the same round's header run): median" \
    "$(paired_median "${all_rps[jwt]}" "${all_rps[header]}")x the req/s," \
    "$(paired_median "${all_us[jwt]}" "${all_us[header]}")x the CPU per request"

echo "first sight, per algorithm (sluice on CPU $SERVER_CPU):"
wait_quiet >/dev/null
taskset -c "$SERVER_CPU" "$BUILD_DIR/tests/jwt_verify_timing" "$VERIFICATIONS" >"$work/verify.tsv"
column -t -s $'\t' "$work/verify.tsv"

# --- CHART=1: the best rounds and the timings as data, and bar charts -----------------------
if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/identity.dat"
    {
        echo "# bench/identity.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): best of $ROUNDS rounds of ${DURATION}s at c$CONNECTIONS,"
        echo "# cache hit of a 1 KB body with a tier limit; sluice (one worker) on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
        printf '# identity\treq/s\tp50 (us)\tsluice CPU us/req\n'
        printf 'sluice hit, X-User-Id header\t%s\t%s\t%s\n' "${best[header]}" "$(lat_us "${best_p50[header]}")" "${best_us[header]}"
        printf 'sluice hit, RS256 bearer token\t%s\t%s\t%s\n' "${best[jwt]}" "$(lat_us "${best_p50[jwt]}")" "${best_us[jwt]}"
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/identity.png" \
        "bench/identity.sh $(date -u +%Y-%m-%d): cache hit, header vs verified token, c$CONNECTIONS, best of $ROUNDS x ${DURATION}s" \
        "(\$2/1000)|req/s (higher is better)|thousand requests per second|%.1fk" \
        "4|sluice CPU per request (lower is better)|CPU µs per request|%.1f" \
        "3|median latency (lower is better)|p50 (µs)|%.0f"
    vdat="$CHART_DIR/identity-verify.dat"
    {
        echo "# bench/identity.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): jwt_verify() of one token, median of 5 rounds,"
        echo "# on CPU $SERVER_CPU (bench/jwt_verify.c); OpenSSL $(openssl version | awk '{print $2}')"
        grep -v '^#' "$work/verify.tsv" | sed 's/ first sight//; s/^/sluice /'
    } >"$vdat"
    # One panel on a log scale: HS256 takes microseconds, ES384 hundreds.
    gnuplot <<GP
set terminal pngcairo size 980,560 font 'DejaVu Sans,11'
set output '$CHART_DIR/identity-verify.png'
set datafile separator tab
set style fill solid 0.85 border lc rgb '#333333'
set boxwidth 0.6
set logscale y
set yrange [0.1:*]
set offsets 0.6, 0.6, 0, 0
set xtics nomirror rotate by -30 left offset -1,0
set ytics nomirror
set border 3
set grid ytics lc rgb '#dddddd'
set bmargin 8
set title "bench/identity.sh $(date -u +%Y-%m-%d): verifying a token the first time it is seen, and a remembered one" font ',12'
set ylabel 'µs per token, log scale (lower is better)'
plot '$vdat' using 0:2:xtic(1) with boxes lc rgb '#4477aa' notitle, \\
     '' using 0:2:(sprintf('%.1f', \$2)) with labels offset 0,0.9 notitle
GP
    echo "chart: $dat, $CHART_DIR/identity.png, $vdat, $CHART_DIR/identity-verify.png"
fi
