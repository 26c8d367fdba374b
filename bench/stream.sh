#!/usr/bin/env bash
# Pass-through of large answers, streamed, in one run on this machine:
#   sluice (one worker, an upstream endpoint with no cache: every answer streamed),
#   nginx with proxy_buffering off (one worker, keep-alive to the upstream), as configured by
#   default (it reads the upstream proxy_buffer_size at a time: one page, 4 KiB), and with
#   proxy_buffer_size 64k (the size sluice reads a streamed answer at),
# both in front of the same upstream (a separate nginx serving files of 1 MiB and 50 MiB
# with sendfile). Each peer runs on one core (CPU 1); wrk and the upstream on the other
# (CPU 0), as in bench/proxy.sh.
#
#   bench/stream.sh                        # 3 rounds of 8 s per size
#   ROUNDS=5 DURATION=10 bench/stream.sh
#   CHART=1 bench/stream.sh                # also write docs/bench/stream.dat and stream.png
#   BUILD_DIR=build-sb bench/stream.sh     # build and run sluice from another build dir
#   SLUICE_BIN=/path/to/sluice bench/stream.sh   # run that binary, build nothing
#   SIZES="1m" C_1M=16 bench/stream.sh     # sizes (1m, 50m) and wrk connections per size
#
# Before measuring, one request per peer and size must answer 200 with the upstream's body,
# byte for byte. For each size and peer: req/s and throughput (wrk), p50 of a whole answer,
# the serving process's CPU time per request (utime + stime, all threads), and the time to
# the first byte of the 50 MiB answer (curl, median of 9). The best round of each is
# compared: sluice / nginx for throughput and CPU per request (goal: same or better).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BUILD_DIR=${BUILD_DIR:-build-bench}
SIZES=${SIZES:-1m 50m}
C_1M=${C_1M:-16}
C_50M=${C_50M:-4}
PEERS="sluice nginx nginx-64k"

scripts/deps.sh bench
if [ -z "${SLUICE_BIN:-}" ]; then
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target sluice >/dev/null
fi
sluice_bin=${SLUICE_BIN:-$BUILD_DIR/sluice}

work=$(mktemp -d /tmp/sluice-stream.XXXXXX)
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
die() { echo "stream bench: $*" >&2; exit 1; }

wait_port() { # PORT: until something answers HTTP there (at most 10 s)
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    die "nothing answers on port $1"
}

# --- the upstream: nginx serving the files with sendfile, on the client core ----------------
mkdir -p "$work/www"
head -c $((1 << 20)) /dev/urandom >"$work/www/1m"
head -c $((50 << 20)) /dev/urandom >"$work/www/50m"
port_up=$(free_port)
nginx_common='
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;'
cat >"$work/nginx-upstream.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx-upstream.pid;
error_log $work/nginx-upstream-error.log warn;
events { worker_connections 1024; }
http {
    $nginx_common
    server {
        listen 127.0.0.1:$port_up;
        root $work/www;
        default_type application/octet-stream;
        location / { add_header Cache-Control "no-store" always; }
    }
}
EOF
taskset -c "$CLIENT_CPU" nginx -c "$work/nginx-upstream.conf"
wait_port "$port_up"

declare -A pid_of port_of label_of
label_of[sluice]="sluice (streamed pass-through)"
label_of[nginx]="nginx proxy_buffering off"
label_of[nginx-64k]="nginx off, proxy_buffer_size 64k"

# --- nginx: proxy_buffering off, keep-alive to the upstream, one worker on CPU 1 -----------
start_nginx() { # NAME EXTRA_DIRECTIVES
    local name=$1
    port_of[$name]=$(free_port)
    cat >"$work/nginx-$name.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx-$name.pid;
error_log $work/nginx-$name-error.log warn;
events { worker_connections 4096; }
http {
    $nginx_common
    upstream up { server 127.0.0.1:$port_up; keepalive 64; }
    server {
        listen 127.0.0.1:${port_of[$name]};
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            $2
        }
    }
}
EOF
    taskset -c "$SERVER_CPU" nginx -c "$work/nginx-$name.conf"
    wait_port "${port_of[$name]}"
    pid_of[$name]=$(pgrep -P "$(cat "$work/nginx-$name.pid")" | head -n 1)
}
start_nginx nginx ''
start_nginx nginx-64k 'proxy_buffer_size 64k; proxy_buffers 4 64k; proxy_busy_buffers_size 128k;'

# --- sluice: one worker, memory store, an upstream endpoint with nothing cached ------------
mkdir -p "$work/policies"
cat >"$work/policies/bench.lua" <<EOF
upstream "app" { url = "http://127.0.0.1:$port_up", timeout = "30s" }
endpoint "GET /{file}" { upstream = "app" }
EOF
"$sluice_bin" check "$work/policies" >/dev/null
port_of[sluice]=$(free_port)
env -u REDIS_URL taskset -c "$SERVER_CPU" "$sluice_bin" serve --workers 1 --admin off \
    --max-connections-per-ip 0 --listen "127.0.0.1:${port_of[sluice]}" "$work/policies" \
    >"$work/sluice.out" 2>"$work/sluice-error.log" &
pid_of[sluice]=$!
pids+=("$!")
for _ in $(seq 100); do
    grep -q listening "$work/sluice.out" 2>/dev/null && break
    sleep 0.1
done
grep -q listening "$work/sluice.out" || die "sluice did not start"

# --- verification: each size through each peer, byte for byte ---------------------------------
for size in $SIZES; do
    for p in $PEERS; do
        code=$(curl -sS -o "$work/check" -w '%{http_code}' "http://127.0.0.1:${port_of[$p]}/$size") ||
            die "$p: /$size failed (curl: $?)"
        [ "$code" = 200 ] || die "$p: /$size answered $code"
        cmp -s "$work/check" "$work/www/$size" || die "$p: /$size differs from the upstream's"
    done
done
echo "verified: 200 and the upstream's bytes for /${SIZES// /, /} through: $PEERS"

# first_byte PEER: the median time to the first byte of /50m over 9 requests (curl), in ms
first_byte() {
    local i
    for i in $(seq 9); do
        taskset -c "$CLIENT_CPU" curl -sS -o /dev/null -w '%{time_starttransfer}\n' \
            "http://127.0.0.1:${port_of[$1]}/50m"
    done | sort -n | awk '{v[NR] = $1} END {printf "%.2f", v[5] * 1000}'
}

bytes_of() { case $1 in 1m) echo $((1 << 20)) ;; 50m) echo $((50 << 20)) ;; esac; }
conns_of() { case $1 in 1m) echo "$C_1M" ;; 50m) echo "$C_50M" ;; esac; }

declare -A best best_p50 best_us best_mibs ttfb
echo
echo "${DURATION}s rounds, server on CPU $SERVER_CPU, wrk and the upstream on CPU $CLIENT_CPU; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-32s %5s %5s %4s %9s %9s %10s %12s %9s\n' peer size round c req/s MiB/s p50 cpu-ms/req pre-busy
for size in $SIZES; do
    for p in $PEERS; do best[$p,$size]=0; done
    for r in $(seq "$ROUNDS"); do
        for p in $PEERS; do
            pre=$(wait_quiet)
            CONNECTIONS=$(conns_of "$size") wrk_measure "${pid_of[$p]}" \
                "http://127.0.0.1:${port_of[$p]}/$size" --timeout 30s
            if grep -qE 'Non-2xx|Socket errors' <<<"$wrk_out"; then
                echo "$wrk_out" >&2
                die "$p: errors or non-2xx answers during the run"
            fi
            read -r rps p50 us <<<"$wrk_result"
            mibs=$(awk -v r="$rps" -v b="$(bytes_of "$size")" 'BEGIN {printf "%.0f", r * b / 1048576}')
            ms=$(awk -v u="$us" 'BEGIN {printf "%.3f", u / 1000}')
            printf '%-32s %5s %5s %4s %9s %9s %10s %12s %8s%%\n' "${label_of[$p]}" "$size" "$r" \
                "$(conns_of "$size")" "$rps" "$mibs" "$p50" "$ms" "$pre"
            if awk -v a="${best[$p,$size]}" -v b="$rps" 'BEGIN {exit !(b > a)}'; then
                best[$p,$size]=$rps best_p50[$p,$size]=$p50 best_us[$p,$size]=$us
                best_mibs[$p,$size]=$mibs
            fi
        done
    done
done
for p in $PEERS; do ttfb[$p]=$(first_byte "$p"); done

echo
echo "best round of each:"
printf '%-32s %5s %9s %9s %10s %12s\n' peer size req/s MiB/s p50 cpu-ms/req
for size in $SIZES; do
    for p in $PEERS; do
        printf '%-32s %5s %9s %9s %10s %12.3f\n' "${label_of[$p]}" "$size" "${best[$p,$size]}" \
            "${best_mibs[$p,$size]}" "${best_p50[$p,$size]}" \
            "$(awk -v u="${best_us[$p,$size]}" 'BEGIN {print u / 1000}')"
    done
done
for p in $PEERS; do
    echo "time to the first byte of /50m, ${label_of[$p]}: ${ttfb[$p]} ms (median of 9, curl)"
done
for size in $SIZES; do
    for n in nginx nginx-64k; do
        awk -v s="${best[sluice,$size]}" -v n="${best[$n,$size]}" -v su="${best_us[sluice,$size]}" \
            -v nu="${best_us[$n,$size]}" -v sp="$(lat_us "${best_p50[sluice,$size]}")" \
            -v np="$(lat_us "${best_p50[$n,$size]}")" -v z="$size" -v peer="$n" 'BEGIN {
            printf "%3s: sluice / %-9s throughput %.2f (goal >= 1: %s), p50 %.2fx, server CPU per request %.2fx (goal <= 1: %s)\n",
                z, peer, s / n, (s >= n) ? "met" : "NOT met", sp / np, su / nu, (su <= nu) ? "met" : "NOT met"
        }'
    done
done

# --- CHART=1: the best round of each as data, and a bar chart --------------------------------
if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/stream.dat"
    {
        echo "# bench/stream.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): best of $ROUNDS rounds of ${DURATION}s,"
        echo "# 1m at c$C_1M, 50m at c$C_50M; server on CPU $SERVER_CPU, wrk and the upstream on CPU $CLIENT_CPU"
        printf '# peer\tsize\treq/s\tMiB/s\tp50 (ms)\tserver CPU ms/req\tserver CPU ms per 100 MiB\tfirst byte of 50m (ms)\n'
        for size in $SIZES; do
            for p in $PEERS; do
                printf '%s %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$size" "$size" "${best[$p,$size]}" \
                    "${best_mibs[$p,$size]}" \
                    "$(awk -v u="$(lat_us "${best_p50[$p,$size]}")" 'BEGIN {printf "%.2f", u / 1000}')" \
                    "$(awk -v u="${best_us[$p,$size]}" 'BEGIN {printf "%.3f", u / 1000}')" \
                    "$(awk -v u="${best_us[$p,$size]}" -v b="$(bytes_of "$size")" 'BEGIN {printf "%.1f", u / 1000 * 104857600 / b}')" \
                    "${ttfb[$p]}"
            done
        done
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/stream.png" \
        "bench/stream.sh $(date -u +%Y-%m-%d): streamed pass-through, best of $ROUNDS x ${DURATION}s, server on one core" \
        "4|throughput (higher is better)|MiB per second|%.0f" \
        "7|server CPU per 100 MiB (lower is better)|CPU ms|%.1f" \
        "5|median time per answer (lower is better)|ms|%.1f"
    echo "chart: $dat, $CHART_DIR/stream.png"
fi
