#!/usr/bin/env bash
# What TLS to the upstream costs on a miss: the same uncached upstream endpoint (every request
# goes to the app) through a plain-HTTP upstream and through an https one, verified against a
# test CA (ca_file), both served by one nginx (the 1 KB bench/body.json, Cache-Control:
# no-store) on two ports of the same server block.
#
#   bench/https.sh                       # 3 rounds of 8 s per upstream, alternated
#   ROUNDS=5 DURATION=10 bench/https.sh
#   CHART=1 bench/https.sh               # also write docs/bench/https.dat and .png
#   SLUICE_BIN=/path/to/sluice bench/https.sh   # run that binary, build nothing
#
# sluice runs on CPU 1 with one worker; wrk and nginx (one worker) on CPU 0. Kept connections
# are what is measured: CONNECTIONS defaults to 32, the pool's idle connections per upstream
# and worker, so every upstream connection stays open between requests (more clients than
# that would close and reopen some on each wave, which is another cost). Each round prints
# the upstream connections nginx accepted meanwhile (stub_status): it must stay near 0, i.e.
# no handshake per request. Every measured answer must be a 200 of 1,024 bytes.
# Prints req/s, p50, and sluice's CPU time per request (utime + stime, all threads) for each
# round, the best round of each, and the ratios https/http.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
CONNECTIONS=${CONNECTIONS:-32}
. bench/lib.sh
BUILD_DIR=${BUILD_DIR:-build-bench}

scripts/deps.sh bench
if [ -z "${SLUICE_BIN:-}" ]; then
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target sluice >/dev/null
fi
bin=${SLUICE_BIN:-$BUILD_DIR/sluice}

work=$(mktemp -d /tmp/sluice-https.XXXXXX)
chmod 755 "$work"
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "https bench: $*" >&2; exit 1; }

# --- a test CA and the upstream's certificate (P-256, for 127.0.0.1) -------------------------
(
    cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
        -out ca.pem -days 2 -subj "/CN=sluice bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout up.key -out up.csr \
        -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n' >up.ext
    openssl x509 -req -in up.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile up.ext -out up.pem 2>/dev/null
)

# --- the upstream: nginx, one server block on a plain and a TLS port, on the client core ----
port_http=$(free_port)
port_tls=$(free_port)
port_status=$(free_port)
mkdir -p "$work/www/http" "$work/www/https"
cp bench/body.json "$work/www/http/bench"
cp bench/body.json "$work/www/https/bench"
cat >"$work/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile off;  # the TLS port cannot use it: both ports write head and body in one go
    tcp_nodelay on;
    open_file_cache max=1000 inactive=60s;
    ssl_certificate $work/up.pem;
    ssl_certificate_key $work/up.key;
    ssl_session_cache shared:tls:1m;
    server {
        listen 127.0.0.1:$port_http;
        listen 127.0.0.1:$port_tls ssl;
        root $work/www;
        location ~ ^/https?/bench\$ {
            default_type application/json;
            add_header Cache-Control "no-store" always;
        }
    }
    server {
        listen 127.0.0.1:$port_status;
        location / { stub_status; }
    }
}
EOF
taskset -c "$CLIENT_CPU" nginx -c "$work/nginx.conf"
for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port_status/" && break
    sleep 0.1
done
accepted() { curl -fsS "http://127.0.0.1:$port_status/" | awk 'NR == 3 {print $1}'; }

# --- sluice: the same endpoint shape on each upstream, never cached ---------------------------
mkdir -p "$work/policies"
cp "$work/ca.pem" "$work/policies/ca.pem"
cat >"$work/policies/bench.lua" <<EOF
upstream "plain" { url = "http://127.0.0.1:$port_http" }
upstream "tls"   { url = "https://127.0.0.1:$port_tls", ca_file = "ca.pem" }
endpoint "GET /http/*"  { upstream = "plain" }
endpoint "GET /https/*" { upstream = "tls" }
EOF
$bin check "$work/policies" >/dev/null
port=$(free_port)
taskset -c "$SERVER_CPU" $bin serve --workers 1 --listen "127.0.0.1:$port" --admin off \
    --max-connections-per-ip 0 "$work/policies" >"$work/sluice.out" 2>"$work/sluice.err" &
pid=$!
for _ in $(seq 50); do
    grep -q listening "$work/sluice.out" 2>/dev/null && break
    sleep 0.1
done
grep -q listening "$work/sluice.out" || die "sluice did not start: $(cat "$work/sluice.err")"
base="http://127.0.0.1:$port"
for scheme in http https; do
    curl -fsS -o "$work/b" "$base/$scheme/bench" || die "$scheme: $(tail -n 3 "$work/sluice.err")"
    cmp -s "$work/b" bench/body.json || die "$scheme: the body is not bench/body.json"
done

cat >"$work/check.lua" <<'EOF'
function response(status, headers, body)
    if status ~= 200 or #body ~= 1024 then
        io.stderr:write("bad answer: ", status, " ", #body, " bytes\n")
        os.exit(3)
    end
end
EOF

# Warm-up: each upstream's connections are opened (and its TLS sessions made) before rounds.
for scheme in http https; do
    DURATION=1 wrk_measure "$pid" "$base/$scheme/bench" -s "$work/check.lua"
done

declare -A best_rps best_us best_p50 all_us
printf '%-26s %5s %9s %10s %11s %9s %s\n' upstream round pre-busy req/s cpu-us/req p50-us \
    upstream-conns-opened
for r in $(seq "$ROUNDS"); do
    for scheme in http https; do
        busy=$(wait_quiet)
        a0=$(accepted)
        wrk_measure "$pid" "$base/$scheme/bench" -s "$work/check.lua"
        a1=$(accepted)
        read -r rps p50 us <<<"$wrk_result"
        p50=$(lat_us "$p50")
        # the status request itself is one accepted connection
        printf '%-26s %5s %8s%% %10s %11s %9s %s\n' "sluice miss, $scheme upstream" "$r" \
            "$busy" "$rps" "$us" "$p50" "$((a1 - a0 - 1))"
        all_us[$scheme]+="$us "
        if awk -v a="${best_rps[$scheme]:-0}" -v b="$rps" 'BEGIN {exit !(b > a)}'; then
            best_rps[$scheme]=$rps best_us[$scheme]=$us best_p50[$scheme]=$p50
        fi
    done
done

echo
echo "best round of each ($CONNECTIONS connections, ${DURATION}s; load: $(uptime | sed 's/.*load/load/'))"
awk -v hr="${best_rps[http]}" -v tr="${best_rps[https]}" -v hu="${best_us[http]}" \
    -v tu="${best_us[https]}" 'BEGIN {
    printf "  http upstream:  %8.0f req/s, %6.1f us CPU/req\n", hr, hu
    printf "  https upstream: %8.0f req/s, %6.1f us CPU/req\n", tr, tu
    printf "  https/http: req/s x%.2f, CPU/req x%.2f (+%.1f us)\n", tr / hr, tu / hu, tu - hu }'
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
mh=$(median "${all_us[http]}")
mt=$(median "${all_us[https]}")
awk -v h="$mh" -v t="$mt" 'BEGIN {
    printf "  median of the rounds, CPU/req: http %.1f us, https %.1f us (x%.2f, +%.1f us)\n",
        h, t, t / h, t - h }'

if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/https.dat"
    {
        echo "# bench/https.sh: best of $ROUNDS rounds of ${DURATION}s at $CONNECTIONS connections; name, req/s, cpu us/req, p50 us"
        printf 'sluice, http\t%s\t%s\t%s\n' "${best_rps[http]}" "${best_us[http]}" "${best_p50[http]}"
        printf 'sluice, https\t%s\t%s\t%s\n' "${best_rps[https]}" "${best_us[https]}" "${best_p50[https]}"
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/https.png" "A miss through an https upstream (bench/https.sh)" \
        "2|requests per second|req/s|%.0f" "3|sluice CPU per request|us|%.1f" "4|p50 latency|us|%.0f"
    echo "wrote $dat and $CHART_DIR/https.png"
fi
