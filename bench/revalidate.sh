#!/usr/bin/env bash
# What serving a stale entry costs sluice: revalidation (the upstream answers 304 to
# If-None-Match, the stored 100 KB answer is served, X-Cache: REVALIDATED) against a full
# refill of the same 100 KB answer (the upstream answers 200 with the body every time,
# X-Cache: MISS), the same refill of an answer without an ETag (sluice then makes one from
# the body at every fill), and a plain hit of a fresh 100 KB entry as the baseline.
#
# sluice (one worker, memory store) is the plain shared cache of docs/policies.md,
#   upstream "origin" { url = ... }
#   endpoint "* /*" { upstream = "origin", cache = { ttl = "origin" } }
# in front of an nginx serving one 100 KB file (bench/body.json 100 times) under four
# prefixes, each answer with Last-Modified:
#   /revalidate/N  Cache-Control: max-age=0 and nginx's ETag: every request finds the entry
#                  stale, sluice asks with If-None-Match (and If-Modified-Since), nginx
#                  answers 304, sluice serves the stored body;
#   /refill/N      Cache-Control: max-age=0 and an ETag, but nginx ignores the conditionals
#                  (etag off and if_modified_since off, the ETag added after nginx's check):
#                  every request finds the entry stale, sluice asks as above, nginx answers
#                  200 with the 100 KB body, sluice stores it again and serves it;
#   /refill-noetag/N  the same without an ETag: the entry's validator is Last-Modified,
#                  sluice asks with If-Modified-Since only, and makes the stored answer's
#                  ETag from the body at each fill;
#   /hit/N         Cache-Control: max-age=3600: a fresh entry, served without the upstream.
# Each wrk thread rotates over its own share of KEYS URLs of a mode (default 1000), so
# no two requests in flight ask for the same entry: concurrent requests of one key would
# share one upstream request (the waiters get its answer as a HIT) and hide its cost.
# sluice runs on CPU 1; wrk and the upstream nginx share CPU 0.
#
#   bench/revalidate.sh                     # 3 rounds of 8 s at 50 connections per mode
#   ROUNDS=5 DURATION=10 CONNECTIONS=100 bench/revalidate.sh
#   MODES="revalidate refill" bench/revalidate.sh   # leave refill-noetag and the hit baseline out
#   KEYS=2000 bench/revalidate.sh           # URLs per mode
#   BUILD_DIR=build-pb bench/revalidate.sh  # build and run sluice from another build dir
#   SLUICE_BIN=/path/to/sluice bench/revalidate.sh   # run that binary, build nothing
#   CHART=1 bench/revalidate.sh             # also write docs/bench/revalidate.dat and .png
#
# Before measuring, every URL is requested during a warming run, then one curl per mode
# must get 200, the upstream's body, the mode's X-Cache (REVALIDATED, MISS, MISS, HIT) and
# the mode's upstream answer (a 304 to a request with If-None-Match; a 200 of 102400 bytes
# to one with If-None-Match, or with If-Modified-Since only; none). In each measured run
# every request must have been answered 2xx, and but for hit at least 98% of them must
# have gone to the upstream with the mode's answer; the script fails otherwise.
# Prints, for every round and for the best round (most req/s) of each mode: req/s, p50,
# sluice CPU time per request (utime + stime of the process, from /proc, as bench/run.sh),
# the upstream nginx's CPU time per request and upstream answers per request; then the
# ratios of the refills to revalidation. With CHART=1 the best rounds go to
# $CHART_DIR/revalidate.dat (default docs/bench) and a bar chart to revalidate.png.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BUILD_DIR=${BUILD_DIR:-build-bench}
MODES=${MODES:-revalidate refill refill-noetag hit}
KEYS=${KEYS:-1000}
WARMUP=${WARMUP:-3}

scripts/deps.sh bench
if [ -z "${SLUICE_BIN:-}" ]; then
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target sluice >/dev/null
fi
sluice_bin=${SLUICE_BIN:-$BUILD_DIR/sluice}

work=$(mktemp -d /tmp/sluice-revalidate.XXXXXX)
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
    if [ -f "$work/nginx-upstream.pid" ]; then kill "$(cat "$work/nginx-upstream.pid")" 2>/dev/null || true; fi
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "revalidate bench: $*" >&2; exit 1; }

has_mode() { [[ " $MODES " == *" $1 "* ]]; }
for m in $MODES; do
    case "$m" in revalidate | refill | refill-noetag | hit) ;; *) die "unknown mode '$m' in MODES='$MODES'" ;; esac
done
[ "$KEYS" -ge 200 ] || die "KEYS=$KEYS: at least 200, so that requests in flight never share a key"

# --- the upstream: nginx serving one 100 KB file, on the client core -----------------------
mkdir -p "$work/www"
for _ in $(seq 100); do cat bench/body.json; done >"$work/www/body100k"
size=$(wc -c <"$work/www/body100k")
[ "$size" -eq 102400 ] || die "the upstream's body is $size bytes, not 102400"
port_up=$(free_port)
cat >"$work/nginx-upstream.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx-upstream.pid;
error_log $work/nginx-upstream-error.log warn;
events { worker_connections 1024; }
http {
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=1000 inactive=60s;
    default_type application/octet-stream;
    # One line per upstream request: what sluice asked and what it got.
    log_format rv '\$status \$body_bytes_sent inm=\$http_if_none_match ims=\$http_if_modified_since';
    access_log $work/upstream-access.log rv buffer=256k flush=1s;
    server {
        listen 127.0.0.1:$port_up;
        root $work/www;
        location /revalidate/ {
            rewrite ^ /body100k break;
            add_header Cache-Control "max-age=0" always;
        }
        # nginx checks conditionals before add_header runs: with its own ETag off and
        # if_modified_since off, nothing matches, and the answer still carries an ETag.
        location /refill/ {
            rewrite ^ /body100k break;
            etag off;
            if_modified_since off;
            add_header ETag '"body100k"';
            add_header Cache-Control "max-age=0" always;
        }
        location /refill-noetag/ {
            rewrite ^ /body100k break;
            etag off;
            if_modified_since off;
            add_header Cache-Control "max-age=0" always;
        }
        location /hit/ {
            rewrite ^ /body100k break;
            add_header Cache-Control "max-age=3600" always;
        }
        location / { return 204; }
    }
}
EOF
taskset -c "$CLIENT_CPU" nginx -c "$work/nginx-upstream.conf"
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port_up/" && break
    sleep 0.1
done
up_pid=$(pgrep -P "$(cat "$work/nginx-upstream.pid")" | head -n 1)
[ -n "$up_pid" ] || die "no upstream nginx worker"

# --- sluice: the plain shared cache, one worker, memory store, on CPU 1 ---------------------
mkdir -p "$work/policies"
cat >"$work/policies/cache.lua" <<EOF
upstream "origin" { url = "http://127.0.0.1:$port_up", timeout = "5s" }
endpoint "* /*" { upstream = "origin", cache = { ttl = "origin" } }
EOF
"$sluice_bin" check "$work/policies" >/dev/null
port_s=$(free_port)
# Room for every entry of every mode (100 KB each) and more.
cache_bytes=$(((4 * KEYS * 128 + 65536) * 1024))
env -u REDIS_URL taskset -c "$SERVER_CPU" "$sluice_bin" serve --workers 1 --admin off \
    --max-connections-per-ip 0 --cache-bytes "$cache_bytes" --listen "127.0.0.1:$port_s" "$work/policies" \
    >"$work/sluice.out" 2>"$work/sluice-error.log" &
sluice_pid=$!
pids+=("$sluice_pid")
for _ in $(seq 100); do
    grep -q listening "$work/sluice.out" 2>/dev/null && break
    sleep 0.1
done
grep -q listening "$work/sluice.out" || die "sluice did not start"

# The wrk script of a mode: wrk_measure runs two threads; each rotates over its own half of
# the mode's KEYS URLs.
for m in $MODES; do
    cat >"$work/$m.lua" <<EOF
local threads = 0
function setup(thread)
  thread:set("first", threads)
  threads = threads + 1
end
function init(args)
  per = math.floor($KEYS / 2)
  base = first * per
  n = 0
end
function request()
  n = (n + 1) % per
  return wrk.format("GET", "/$m/" .. (base + n))
end
EOF
done

log_lines() { # the upstream's access log, once nginx has flushed its buffer
    sleep 1.2
    wc -l <"$work/upstream-access.log"
}

# --- warming: every URL of every mode requested at least once ------------------------------
for m in $MODES; do
    taskset -c "$CLIENT_CPU" wrk -t2 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$work/$m.lua" \
        "http://127.0.0.1:$port_s" >"$work/warm-$m.out"
    n=$(awk '/requests in/ {print $1}' "$work/warm-$m.out")
    [ "$n" -ge "$((2 * KEYS))" ] || die "$m: the warming run made $n requests, fewer than twice KEYS=$KEYS"
done

# --- verification: one request per mode, its X-Cache and what the upstream answered --------
declare -A xcache=([revalidate]=REVALIDATED [refill]=MISS [refill-noetag]=MISS [hit]=HIT)
for m in $MODES; do
    before=$(log_lines)
    code=$(curl -sS -D "$work/$m.h" -o "$work/$m.body" -w '%{http_code}' "http://127.0.0.1:$port_s/$m/0") ||
        die "$m: verification request failed (curl: $?)"
    after=$(log_lines)
    [ "$code" = 200 ] || die "$m: verification request answered $code"
    cmp -s "$work/$m.body" "$work/www/body100k" || die "$m: body differs from the upstream's"
    grep -qi "^X-Cache: *${xcache[$m]}" "$work/$m.h" ||
        { cat "$work/$m.h" >&2; die "$m: verification request was not X-Cache: ${xcache[$m]}"; }
    asked=$(sed -n "$((before + 1)),${after}p" "$work/upstream-access.log")
    case "$m" in
    revalidate) [[ "$asked" =~ ^304\ 0\ inm=[^-] ]] ||
        die "$m: the upstream was not asked with If-None-Match and did not answer 304: '$asked'" ;;
    refill) [[ "$asked" =~ ^200\ 102400\ inm=[^-] ]] && grep -qi '^ETag: "body100k"' "$work/$m.h" ||
        die "$m: the upstream was not asked with If-None-Match and did not answer 200 with the body and its ETag: '$asked'" ;;
    refill-noetag) [[ "$asked" =~ ^200\ 102400\ inm=-\ ims=[A-Z] ]] && grep -qiE '^ETag: "[0-9a-f]{16}"' "$work/$m.h" ||
        die "$m: the upstream was not asked with If-Modified-Since and did not answer 200 with the body, or sluice made no ETag: '$asked'" ;;
    hit) [ -z "$asked" ] || die "$m: the upstream was asked: '$asked'" ;;
    esac
    echo "verified $m: 200, X-Cache: ${xcache[$m]}, body identical to the upstream's (102400 bytes); upstream: ${asked:-not asked}"
done
if has_mode revalidate; then
    echo "sluice's revalidated answer:"
    tr -d '\r' <"$work/revalidate.h" | sed -n '2,$p' | grep . | sed 's/^/    /'
fi

# run MODE -> prints "rps p50 us_per_req upstream_us_per_req upstream_answers_per_req"; fails
# on any non-2xx answer or socket error, or when the upstream did not answer as the mode says.
run() {
    local m=$1 before after t0 t1 reqs good hz
    before=$(log_lines)
    t0=$(cpu_ticks "$up_pid")
    wrk_measure "$sluice_pid" "http://127.0.0.1:$port_s" -s "$work/$m.lua"
    t1=$(cpu_ticks "$up_pid")
    if grep -qE 'Non-2xx|Socket errors' <<<"$wrk_out"; then
        echo "$wrk_out" >&2
        die "$m: errors or non-2xx answers during the run"
    fi
    after=$(log_lines)
    reqs=$(awk '/requests in/ {print $1}' <<<"$wrk_out")
    case "$m" in
    revalidate) good=$(sed -n "$((before + 1)),${after}p" "$work/upstream-access.log" | grep -c '^304 0 inm=[^-]' || true) ;;
    refill) good=$(sed -n "$((before + 1)),${after}p" "$work/upstream-access.log" | grep -c '^200 102400 inm=[^-]' || true) ;;
    refill-noetag) good=$(sed -n "$((before + 1)),${after}p" "$work/upstream-access.log" | grep -c '^200 102400 inm=- ims=[A-Z]' || true) ;;
    hit) good=$((after - before)) ;;
    esac
    if [ "$m" != hit ] && [ $((good * 100)) -lt $((reqs * 98)) ]; then
        die "$m: only $good of $reqs requests got the mode's upstream answer ($((after - before)) upstream requests)"
    fi
    hz=$(getconf CLK_TCK)
    awk -v r="$wrk_result" -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" -v u=$((after - before)) 'BEGIN {
        printf "%s %.1f %.3f\n", r, t * 1e6 / hz / n, u / n
    }'
}

declare -A label_of=(
    [revalidate]="304 revalidation (REVALIDATED)"
    [refill]="200 refill, 100 KB (MISS)"
    [refill-noetag]="200 refill, no ETag (MISS)"
    [hit]="fresh hit, 100 KB (HIT)"
)
declare -A best best_p50 best_us best_up best_ask
for m in $MODES; do best[$m]=0; done
echo
echo "c$CONNECTIONS, ${DURATION}s rounds, $KEYS URLs per mode, sluice on CPU $SERVER_CPU, wrk and the upstream on CPU $CLIENT_CPU; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-32s %5s %10s %9s %11s %11s %9s %8s\n' mode round req/s p50 sluice-us upstream-us up/req pre-busy
for r in $(seq "$ROUNDS"); do
    for m in $MODES; do
        pre=$(wait_quiet)
        read -r rps p50 us up ask < <(run "$m")
        printf '%-32s %5s %10s %9s %11s %11s %9s %7s%%\n' "${label_of[$m]}" "$r" "$rps" "$p50" "$us" "$up" "$ask" "$pre"
        if awk -v a="${best[$m]}" -v b="$rps" 'BEGIN {exit !(b > a)}'; then
            best[$m]=$rps best_p50[$m]=$p50 best_us[$m]=$us best_up[$m]=$up best_ask[$m]=$ask
        fi
    done
done

echo
echo "best round of each (sluice-us: sluice CPU per request; upstream-us: the upstream nginx's):"
printf '%-32s %10s %9s %11s %11s %9s\n' mode req/s p50 sluice-us upstream-us up/req
for m in $MODES; do
    printf '%-32s %10s %9s %11s %11s %9s\n' "${label_of[$m]}" "${best[$m]}" "${best_p50[$m]}" \
        "${best_us[$m]}" "${best_up[$m]}" "${best_ask[$m]}"
done
for m in refill refill-noetag; do
    has_mode revalidate && has_mode "$m" || continue
    awk -v m="$m" -v vr="${best[revalidate]}" -v fr="${best[$m]}" -v vu="${best_us[revalidate]}" \
        -v fu="${best_us[$m]}" -v vp="$(lat_us "${best_p50[revalidate]}")" \
        -v fp="$(lat_us "${best_p50[$m]}")" 'BEGIN {
        printf "%s / revalidate: sluice CPU per request %.2fx, p50 %.2fx; req/s revalidate / %s = %.2f\n",
            m, fu / vu, fp / vp, m, vr / fr
    }'
done
if has_mode refill && has_mode refill-noetag; then
    awk -v a="${best_us[refill-noetag]}" -v b="${best_us[refill]}" 'BEGIN {
        printf "refill without an ETag over refill with one: %.1f us of sluice CPU per request more\n", a - b
    }'
fi
if has_mode hit; then
    for m in revalidate refill refill-noetag; do
        has_mode "$m" || continue
        awk -v m="$m" -v u="${best_us[$m]}" -v h="${best_us[hit]}" 'BEGIN {
            printf "%s over a fresh hit: %.1f us of sluice CPU per request more (%.2fx)\n", m, u - h, u / h
        }'
    done
fi

# --- CHART=1: the best round of each mode as data, and a bar chart ------------------------
if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/revalidate.dat"
    declare -A name_of=([revalidate]="sluice 304 revalidation" [refill]="sluice 200 refill"
        [refill-noetag]="sluice 200 refill, no ETag" [hit]="baseline: sluice fresh hit")
    {
        echo "# bench/revalidate.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): best of $ROUNDS rounds of ${DURATION}s at c$CONNECTIONS,"
        echo "# 100 KB answer, $KEYS URLs per mode; sluice on CPU $SERVER_CPU, wrk and the upstream on CPU $CLIENT_CPU"
        printf '# mode\treq/s\tp50 (us)\tsluice CPU us/req\tupstream CPU us/req\tupstream answers/req\n'
        for m in $MODES; do
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${name_of[$m]}" "${best[$m]}" "$(lat_us "${best_p50[$m]}")" \
                "${best_us[$m]}" "${best_up[$m]}" "${best_ask[$m]}"
        done
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/revalidate.png" \
        "bench/revalidate.sh $(date -u +%Y-%m-%d): stale 100 KB entry, c$CONNECTIONS, best of $ROUNDS x ${DURATION}s, sluice on one core" \
        "4|sluice CPU per request (lower is better)|CPU µs per request|%.1f" \
        "(\$2/1000)|req/s (higher is better)|thousand requests per second|%.1fk" \
        "3|median latency (lower is better)|p50 (µs)|%.0f"
    echo "chart: $dat, $CHART_DIR/revalidate.png"
fi
