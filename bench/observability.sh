#!/usr/bin/env bash
# What watching sluice costs: the cache-hit path (with a rate-limit check, as bench/run.sh)
# with the per-route counters off (--no-stats), on (the default: what /metrics, /callers and
# /stats read), on with the JSON access log written to /dev/null (the log's own work: the
# lines formatted, put in the ring, written by the writer thread, but no file system), and on
# with it written to a file (--access-log, when the binary has it), in the same run; nginx
# with its access log off and on beside them for reference. Then how long GET /metrics takes
# with 1,000 routes that have served traffic.
#
#   bench/observability.sh                 # 3 rounds of 8 s at 50 connections per peer
#   ROUNDS=5 DURATION=10 bench/observability.sh
#   ROUTES=2000 bench/observability.sh     # routes in the /metrics part
#   CHART=1 bench/observability.sh         # also write docs/bench/observability.dat and .png
#   LOG_DIR=/dev/shm bench/observability.sh   # the access logs (sluice's and nginx's) there
#                                          # (default: the run's directory under /tmp)
#
# Every server runs on CPU 1 (sluice with one worker), wrk on CPU 0. Each round measures the
# peers twice:
# - one after the other, each alone with wrk: req/s, p50 and CPU time per request; the best
#   round of each and the median of each round's ratio to the peer with everything off;
# - side by side (bench/lib.sh side_by_side): each peer at once with the same server with
#   everything off, each with a wrk of its own, the two sharing CPU 1; the CPU time (every
#   thread) each spent per request, against the other's. This machine's
#   speed drifts by up to a fifth between runs of a few seconds, which moves runs one after
#   the other apart by several percent and all the peers of a side-by-side run alike, so
#   the side-by-side ratio is the one to read: its inverse is the throughput each keeps of
#   the peer with everything off (the target: metrics and access log on cost at most 3%).
# Every measured request must be a 2xx hit; the script fails otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. bench/lib.sh
ROUTES=${ROUTES:-1000}

scripts/deps.sh bench
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j"$(nproc)" --target sluice >/dev/null
bin=build-bench/sluice

work=$(mktemp -d /tmp/sluice-observability.XXXXXX)
chmod 755 "$work"
log_dir=$(mktemp -d "${LOG_DIR:-$work}/logs.XXXXXX")
chmod 755 "$log_dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$work"/nginx-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    sleep 0.5
    rm -rf "$work" "$log_dir"
}
trap cleanup EXIT
die() { echo "observability bench: $*" >&2; exit 1; }

body="$root/bench/body.json"
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
$bin check "$work/policies" >/dev/null

# (Read whole first: grep -q stops reading at the first match, and under pipefail the
# writer's SIGPIPE would fail the test.)
has_access_log=0
serve_help=$($bin serve --help)
grep -q -- '--access-log' <<<"$serve_help" && has_access_log=1

# start_sluice NAME ARGS...: sluice on CPU $SERVER_CPU, one worker; sets port_NAME, pid_NAME.
start_sluice() {
    local name=$1 port
    shift
    port=$(free_port)
    taskset -c "$SERVER_CPU" $bin serve --workers 1 --listen "127.0.0.1:$port" --admin off \
        --max-connections-per-ip 0 "$@" "$work/policies" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=("$!")
    printf -v "pid_$name" '%s' "$!"
    printf -v "port_$name" '%s' "$port"
    for _ in $(seq 50); do
        grep -q listening "$work/$name.out" 2>/dev/null && return
        sleep 0.1
    done
    die "$name did not start: $(cat "$work/$name.err")"
}

# start_nginx NAME ACCESS_LOG: nginx proxy_cache + limit_req (as bench/run.sh) with its access
# log off or to a file (buffered, as a busy site would run it).
start_nginx() {
    local name=$1 log=$2 port_origin port
    port_origin=$(free_port)
    port=$(free_port)
    mkdir -p "$work/cache-$name"
    cat >"$work/$name.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx-$name.pid;
error_log $work/$name-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=1000 inactive=60s;
    proxy_cache_path $work/cache-$name levels=1:2 keys_zone=$name:10m max_size=100m inactive=60m use_temp_path=off;
    limit_req_zone \$http_x_user_id zone=lim_$name:10m rate=1000000r/s;
    server {
        listen 127.0.0.1:$port_origin;
        location = /api/bench { default_type application/json; alias $body; }
    }
    server {
        listen 127.0.0.1:$port;
        $log
        location / {
            limit_req zone=lim_$name burst=1000000 nodelay;
            proxy_cache $name;
            proxy_cache_valid 200 5m;
            proxy_cache_key \$uri\$http_x_user_id;
            proxy_pass http://127.0.0.1:$port_origin;
        }
    }
}
EOF
    taskset -c "$SERVER_CPU" nginx -c "$work/$name.conf"
    sleep 0.5
    printf -v "pid_$name" '%s' "$(pgrep -P "$(cat "$work/nginx-$name.pid")" | head -n 1)"
    printf -v "port_$name" '%s' "$port"
}

peers=(off stats)
start_sluice off --no-stats
start_sluice stats
if [ "$has_access_log" = 1 ]; then
    start_sluice stats_null --access-log /dev/null
    start_sluice stats_log --access-log "$log_dir/access.log"
    peers+=(stats_null stats_log)
fi
start_nginx nginx_nolog "access_log off;"
start_nginx nginx_log "access_log $log_dir/nginx-access.log combined buffer=64k flush=1s;"
peers+=(nginx_nolog nginx_log)
declare -A label=(
    [off]="sluice, stats off"
    [stats]="sluice, stats on"
    [stats_null]="sluice, +log to /dev/null"
    [stats_log]="sluice, +log to a file"
    [nginx_nolog]="nginx, access log off"
    [nginx_log]="nginx, access log on"
)

# Every peer answers the same 1 KB body, from its cache.
for p in "${peers[@]}"; do
    port_var=port_$p
    for _ in 1 2; do
        curl -fsS -o "$work/body-$p" -D "$work/h-$p" -H 'X-User-Id: 42' \
            "http://127.0.0.1:${!port_var}/api/bench"
    done
    cmp -s "$work/body-$p" "$body" || die "$p did not answer the body"
done
for p in "${peers[@]}"; do
    case $p in nginx_*) continue ;; esac
    grep -qi '^X-Cache: HIT' "$work/h-$p" || die "$p did not hit its cache"
done

declare -A best best_us sent all_rps all_us
printf '%-30s %5s %12s %9s %12s\n' peer round req/s p50 cpu-us/req
for r in $(seq "$ROUNDS"); do
    for p in "${peers[@]}"; do
        pid_var=pid_$p
        port_var=port_$p
        wait_quiet >/dev/null
        wrk_measure "${!pid_var}" "http://127.0.0.1:${!port_var}/api/bench" -H 'X-User-Id: 42'
        grep -q 'Non-2xx' <<<"$wrk_out" && die "$p answered non-2xx: $(grep Non-2xx <<<"$wrk_out")"
        read -r rps p50 us <<<"$wrk_result"
        sent[$p]=$((${sent[$p]:-2} + $(awk '/requests in/ {print $1}' <<<"$wrk_out")))
        printf '%-30s %5s %12s %9s %12s\n' "${label[$p]}" "$r" "$rps" "$p50" "$us"
        all_rps[$p]+=" $rps" all_us[$p]+=" $us"
        if awk -v a="${best[$p]:-0}" -v b="$rps" 'BEGIN {exit !(b > a)}'; then
            best[$p]=$rps best_us[$p]=$us
        fi
    done
done

# Side by side: each peer at once with the same server with everything off (nginx's with
# nginx's), a pair at a time.
WRK_ARGS=(-H 'X-User-Id: 42')
SBS_DIR=$work
declare -A all_sbs
for p in "${peers[@]}"; do
    port_var=port_$p
    printf -v "url_$p" '%s' "http://127.0.0.1:${!port_var}/api/bench"
done
echo
echo "side by side (each peer at once with the one with everything off, sharing CPU $SERVER_CPU; CPU time per request, every thread):"
for r in $(seq "$ROUNDS"); do
    line=$(printf '  round %2s:' "$r")
    for p in "${peers[@]}"; do
        base=off
        case $p in nginx_*) base=nginx_nolog ;; esac
        [ "$p" = "$base" ] && continue
        wait_quiet >/dev/null
        side_by_side "$base" "$p" || die "a side-by-side run answered non-2xx"
        sent[$p]=$((${sent[$p]} + ${sbs_reqs[$p]})) sent[$base]=$((${sent[$base]} + ${sbs_reqs[$base]}))
        all_sbs[$p]+=" $(awk -v a="${sbs_ns[$p]}" -v b="${sbs_ns[$base]}" 'BEGIN {printf "%.5f", a / b}')"
        line+=$(printf ' %s %s/%s ns' "$p" "${sbs_ns[$p]}" "${sbs_ns[$base]}")
    done
    echo "$line"
done

echo
echo "best round of each (req/s; ratio to the same server with everything off):"
for p in "${peers[@]}"; do
    base=${best[off]}
    case $p in nginx_*) base=${best[nginx_nolog]} ;; esac
    awk -v n="${label[$p]}" -v r="${best[$p]}" -v b="$base" -v u="${best_us[$p]}" \
        'BEGIN {printf "  %-30s %10.0f req/s  %6.1f us/req  ratio %.3f\n", n, r, u, r / b}'
done
echo "paired rounds (each against the same round's peer with everything off; median of rounds):"
for p in "${peers[@]}"; do
    base=off
    case $p in nginx_*) base=nginx_nolog ;; esac
    printf '  %-30s req/s ratio %s, CPU per request ratio %s\n' "${label[$p]}" \
        "$(paired_median "${all_rps[$p]}" "${all_rps[$base]}")" \
        "$(paired_median "${all_us[$p]}" "${all_us[$base]}")"
done
echo "side by side (each run's CPU per request against the peer with everything off beside it; median of rounds):"
declare -A sbs_ratio
for p in "${peers[@]}"; do
    case $p in off | nginx_nolog)
        sbs_ratio[$p]=1.000
        continue
        ;;
    esac
    cost=$(median "${all_sbs[$p]}")
    sbs_ratio[$p]=$(awk -v c="$cost" 'BEGIN {printf "%.3f", 1 / c}')
    printf '  %-30s CPU per request ratio %s: keeps %s of the throughput\n' "${label[$p]}" "$cost" \
        "${sbs_ratio[$p]}"
done
if [ "$has_access_log" = 1 ]; then
    # The access log's own cost: the same server with stats on, with and without it; and
    # of that, what the file system takes (the file against /dev/null).
    printf '  access log alone (paired, against stats on): to /dev/null %s, to the file %s; the file against /dev/null %s\n' \
        "$(paired_median "${all_rps[stats_null]}" "${all_rps[stats]}")" \
        "$(paired_median "${all_rps[stats_log]}" "${all_rps[stats]}")" \
        "$(paired_median "${all_rps[stats_log]}" "${all_rps[stats_null]}")"
    sleep 0.5 # the writer flushes every 200 ms
    lines=$(wc -l <"$log_dir/access.log")
    echo "  (the access log holds $lines lines; wrk counted ${sent[stats_log]} answers, those" \
        "in flight at the end of a round not included; fewer lines would be drops at a full ring)"
fi

# --- GET /metrics with $ROUTES routes -----------------------------------------------------
mkdir -p "$work/routes"
for i in $(seq "$ROUTES"); do
    printf 'endpoint "GET /r/%d" { body = "{}", limit = { limit = 1000, window = "1m", key = "r%d:{ip}" } }\n' "$i" "$i"
done >"$work/routes/routes.lua"
port_r=$(free_port)
port_ra=$(free_port)
$bin serve --workers 2 --listen "127.0.0.1:$port_r" --admin "127.0.0.1:$port_ra" \
    --max-connections-per-ip 0 "$work/routes" >"$work/routes.out" 2>"$work/routes.err" &
pids+=("$!")
for _ in $(seq 100); do
    grep -q listening "$work/routes.out" 2>/dev/null && break
    sleep 0.1
done
# Each route answers 200 and 404 (an unknown query does not matter: two statuses each).
python3 - "$port_r" "$ROUTES" <<'EOF'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(1, n + 1):
    for m in ("GET", "HEAD"):
        c.request(m, "/r/%d" % i)
        c.getresponse().read()
EOF
sleep 1
curl -fsS -o "$work/metrics.txt" "http://127.0.0.1:$port_ra/metrics"
series=$(grep -vc '^#' "$work/metrics.txt")
routes_seen=$(grep -c '^sluice_request_duration_seconds_count{route="GET /r/' "$work/metrics.txt")
[ "$routes_seen" -eq "$ROUTES" ] || die "/metrics shows $routes_seen routes, not $ROUTES"
times=()
for _ in $(seq 21); do
    times+=("$(curl -fsS -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port_ra/metrics")")
done
read -r med worst < <(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR] = $1} END {
    printf "%.1f %.1f\n", a[int((NR + 1) / 2)] * 1000, a[NR] * 1000}')
bytes=$(stat -c %s "$work/metrics.txt")
echo
echo "GET /metrics with $ROUTES routes: $series samples, $bytes bytes; 21 scrapes: median $med ms, slowest $worst ms"

if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/observability.dat"
    {
        echo "# bench/observability.sh: $ROUNDS rounds of ${DURATION}s at $CONNECTIONS connections"
        echo "# peer	req/s (best round alone)	throughput kept, side by side (median of rounds)"
        for p in "${peers[@]}"; do
            printf '%s\t%.0f\t%s\n' "${label[$p]}" "${best[$p]}" "${sbs_ratio[$p]}"
        done
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/observability.png" \
        "Hit path with metrics and access log (1 worker, CPU 1; wrk on CPU 0)" \
        "(\$2/1000)|throughput, best round alone|thousand req/s|%.1f" \
        "3|throughput kept, side by side|ratio to everything off|%.3f"
    echo "wrote $dat and $CHART_DIR/observability.png"
fi
