#!/usr/bin/env bash
# What the size of a policy set costs: (1) CPU time per cache hit (with a rate-limit check, as
# bench/run.sh) at 10, 1,000 and 10,000 endpoints, in the same run; (2) `sluice check` of
# 1,000, 5,000 and 10,000 endpoints; (3) edit -> live at those sizes: the time from a policy
# file's rename to the new generation serving (inotify, 100 ms debounce, loading, publishing),
# and the CPU time of each reload; (4) hit-path throughput at 5,000 endpoints while the policy
# is reloaded back to back (each write as soon as the last one serves) against the same server
# not reloading.
#
#   bench/routing.sh                        # 3 rounds of 8 s, 10 edits per size
#   ROUNDS=5 SAMPLES=20 bench/routing.sh
#   SLUICE_BIN=/path/to/sluice bench/routing.sh  # measure that binary, build nothing
#   PARTS="3 4" bench/routing.sh            # only some of the four parts
#   CHART=1 bench/routing.sh                # also write docs/bench/routing.dat and .png
#   CHART=1 BEFORE=old/routing.dat bench/routing.sh   # and draw that run's figures beside
#
# Every sluice runs one worker on CPU 1, wrk on CPU 0. In (4) the thread that reloads
# (sluice-reload) is moved to CPU 0 beside wrk, so that the worker's core serves alone and
# what falls on it is what reloading costs the worker (switching generations, letting go of
# old ones). The reloads' own CPU time, which (3) gives, then comes out of wrk's core and so
# out of the req/s wrk reaches: on two cores there is no third for it. So each round has
# three runs: steady; with `sluice check` of the same set looping on CPU 0 (the reloads'
# work without reloading: the control); and reloading back to back. The dip is reloading
# against the control, the same round's; the fall against steady, and the req/s lost per
# second of CPU taken beside wrk by each, are printed with it. (4) also gives the CPU per
# request of the threads that serve (every thread but sluice-reload). CPU per
# request is the server's utime + stime (/proc/PID/stat) over the wrk run divided by the
# requests; every measured request must be a 2xx cache hit. The generated endpoints are fixed
# answers of every route shape: literal, {param}, '*', pinned query, several methods.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
HIT_SIZES=${HIT_SIZES:-"10 1000 10000"}
LOAD_SIZES=${LOAD_SIZES:-"1000 5000 10000"}
DIP_SIZE=${DIP_SIZE:-5000}
SAMPLES=${SAMPLES:-10}
CHECKS=${CHECKS:-5}
PARTS=${PARTS:-"1 2 3 4"}
part() { [[ " $PARTS " == *" $1 "* ]]; }

if [ -n "${SLUICE_BIN:-}" ]; then
    bin=$SLUICE_BIN
else
    scripts/deps.sh bench
    cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build-bench -j"$(nproc)" --target sluice >/dev/null
    bin=build-bench/sluice
fi

work=$(mktemp -d /tmp/sluice-routing.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT
die() { echo "routing bench: $*" >&2; exit 1; }

# routing_chart DAT PNG NOTE [BEFORE]: three panels over the number of endpoints (log scale):
# CPU per hit; sluice check, wall and CPU; edit -> live, median and least, and the CPU of a
# reload. BEFORE, another run's DAT, is drawn beside in dashes.
routing_chart() {
    local before="" b1="" b2="" b3=""
    if [ -n "${4:-}" ]; then
        before=$4
        b1=", '$before' using 1:2 with linespoints dt 2 pt 6 lc rgb '#cc6677' title 'before', '' using 1:2:(sprintf('%.1f', \$2)) with labels offset 0,1 tc rgb '#cc6677' notitle"
        b2=", '$before' using 1:5 with linespoints dt 2 pt 6 lc rgb '#cc6677' title 'CPU before', '' using 1:5:(sprintf('%.2f', \$5)) with labels offset 0,1 tc rgb '#cc6677' notitle"
        b3=", '$before' using 1:7 with linespoints dt 2 pt 6 lc rgb '#cc6677' title 'least before', '' using 1:7:(sprintf('%.0f', \$7)) with labels offset 0,1 tc rgb '#cc6677' notitle"
    fi
    gnuplot <<GP
set terminal pngcairo size 1580,560 font 'DejaVu Sans,11'
set output '$2'
set datafile separator tab
set datafile missing '-'
set logscale x
set xrange [5:20000]
set yrange [0:*]
set xlabel 'endpoints in the policy set'
set grid ytics lc rgb '#dddddd'
set border 3
set xtics nomirror
set ytics nomirror
set key top left
set multiplot layout 1,3 title "Cost of the policy set's size (1 worker on CPU 1, wrk on CPU 0); $3" font ',13'
set title 'CPU time per cache hit'
set ylabel 'us per request'
set key top center
plot '$1' using 1:2 with linespoints pt 7 lc rgb '#4477aa' title 'sluice', \\
     '' using 1:2:(sprintf('%.2f', \$2)) with labels offset 0,1 notitle $b1
set title 'sluice check'
set ylabel 's'
set key top left
plot '$1' using 1:4 with linespoints pt 7 lc rgb '#aaaaaa' title 'wall (median)', \\
     '' using 1:5 with linespoints pt 7 lc rgb '#4477aa' title 'CPU (median)', \\
     '' using 1:5:(sprintf('%.2f', \$5)) with labels offset 0,1 notitle $b2
set title 'edit -> live (inotify, 100 ms debounce, load, publish)'
set ylabel 'ms'
plot '$1' using 1:6 with linespoints pt 7 lc rgb '#aaaaaa' title 'median', \\
     '' using 1:7 with linespoints pt 7 lc rgb '#4477aa' title 'least', \\
     '' using 1:8 with linespoints pt 6 lc rgb '#66aa55' title 'CPU of the reload', \\
     '' using 1:7:(sprintf('%.0f', \$7)) with labels offset 0,1 notitle $b3
unset multiplot
GP
}

# write_bench DIR LIMIT: the cached endpoint wrk asks for; the tier limit names the generation
# (X-RateLimit-Limit). Written whole and renamed, as deploy tools do.
write_bench() {
    {
        echo "tier \"bench\" { limit = $2, window = \"1h\" }"
        echo 'identity { user = header "X-User-Id", default_tier = "bench" }'
        echo 'endpoint "GET /api/bench" {'
        printf '  body = [==[%s]==],\n' "$(cat bench/body.json)"
        echo '  cache = { ttl = "5m", key = "bench:{user}" },'
        echo '  limit = "tier",'
        echo '}'
    } >"$1/.00-bench.tmp"
    mv "$1/.00-bench.tmp" "$1/00-bench.lua"
}

# policies N: a directory of N endpoints (the bench endpoint and N - 1 others in 10 files).
policies() {
    local d=$work/p$1
    mkdir -p "$d"
    write_bench "$d" 1000000000
    python3 - "$d" "$1" <<'EOF'
import sys
d, n = sys.argv[1], int(sys.argv[2])
shapes = ["GET /api/r%d", "GET /api/r%d/{id}", "POST /api/r%d/{id}", "GET /api/r%d?type=a",
          "GET /t/{tenant}/r%d/*", "GET /api/r%d/{id}/items/{item}", "DELETE /api/r%d/{id}"]
files = [open("%s/%02d-gen.lua" % (d, 10 + f), "w") for f in range(10)]
for i in range(1, n):
    files[i % 10].write('endpoint "%s" { body = [==[{"r":%d}]==] }\n' % (shapes[i % 7] % i, i))
for f in files:
    f.close()
EOF
    echo "$d"
}

# start NAME DIR: sluice on CPU $SERVER_CPU, one worker; sets pid_NAME, port_NAME.
start() {
    local name=$1 dir=$2 port
    port=$(free_port)
    taskset -c "$SERVER_CPU" $bin serve --workers 1 --listen "127.0.0.1:$port" --admin off \
        --max-connections-per-ip 0 "$dir" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=("$!")
    printf -v "pid_$name" '%s' "$!"
    printf -v "port_$name" '%s' "$port"
    for _ in $(seq 600); do
        grep -q listening "$work/$name.out" 2>/dev/null && return
        sleep 0.1
    done
    die "$name did not start: $(tail -n 3 "$work/$name.err")"
}

stop() {
    local pid_var=pid_$1
    kill "${!pid_var}" 2>/dev/null || true
    wait "${!pid_var}" 2>/dev/null || true
}

# A hit: the second request of a caller is served from the cache.
warm() {
    local port_var=port_$1
    for _ in 1 2; do
        curl -fsS -o /dev/null -D "$work/h-$1" -H 'X-User-Id: 42' \
            "http://127.0.0.1:${!port_var}/api/bench"
    done
    grep -qi '^X-Cache: HIT' "$work/h-$1" || die "$1 did not hit its cache"
}

# --- (1) CPU per cache hit ----------------------------------------------------------------
declare -A best_us best_rps all_hit_us
part 1 || HIT_SIZES=""
for n in $HIT_SIZES; do
    start "hit$n" "$(policies "$n")"
    warm "hit$n"
done
printf '%-22s %5s %12s %9s %12s\n' endpoints round req/s p50 cpu-us/req
for r in $(seq "$ROUNDS"); do
    for n in $HIT_SIZES; do
        pid_var=pid_hit$n
        port_var=port_hit$n
        wait_quiet >/dev/null
        wrk_measure "${!pid_var}" "http://127.0.0.1:${!port_var}/api/bench" -H 'X-User-Id: 42'
        grep -q 'Non-2xx' <<<"$wrk_out" && die "$n endpoints: non-2xx answers"
        read -r rps p50 us <<<"$wrk_result"
        printf '%-22s %5s %12s %9s %12s\n' "$n" "$r" "$rps" "$p50" "$us"
        all_hit_us[$n]+=" $us"
        if awk -v a="${best_us[$n]:-1e9}" -v b="$us" 'BEGIN {exit !(b < a)}'; then
            best_us[$n]=$us best_rps[$n]=$rps
        fi
    done
done
for n in $HIT_SIZES; do stop "hit$n"; done
if part 1; then
    first=${HIT_SIZES%% *}
    echo
    echo "least CPU per hit of each (ratio to $first endpoints):"
    for n in $HIT_SIZES; do
        awk -v n="$n" -v u="${best_us[$n]}" -v r="${best_rps[$n]}" -v b="${best_us[$first]}" \
            'BEGIN {printf "  %6d endpoints: %6.2f us/req  %8.0f req/s  ratio %.3f\n", n, u, r, u / b}'
    done
    echo "paired rounds (each size against the same round's $first endpoints; median of rounds):"
    for n in $HIT_SIZES; do
        printf '  %6d endpoints: CPU per hit ratio %s\n' "$n" \
            "$(paired_median "${all_hit_us[$n]}" "${all_hit_us[$first]}")"
    done
fi

# --- (2) sluice check ----------------------------------------------------------------------
declare -A check_s check_cpu
echo
for n in $LOAD_SIZES; do
    part 2 || break
    d=$(policies "$n")
    times=()
    for _ in $(seq "$CHECKS"); do
        /usr/bin/time -f '%e %U %S' -o "$work/time" $bin check "$d" >/dev/null ||
            die "sluice check of $n endpoints failed"
        times+=("$(cat "$work/time")")
    done
    read -r check_s[$n] check_cpu[$n] < <(printf '%s\n' "${times[@]}" |
        sort -n | awk '{w[NR] = $1; c[NR] = $2 + $3} END {
            m = int((NR + 1) / 2); printf "%.2f %.2f\n", w[m], c[m]}')
    printf 'sluice check, %6d endpoints: %5.2f s (median of %d; CPU %.2f s)\n' "$n" \
        "${check_s[$n]}" "$CHECKS" "${check_cpu[$n]}"
done

# --- (3) edit -> live ----------------------------------------------------------------------
thread_ticks() { awk '{print $14 + $15}' "/proc/$1/task/$2/stat"; }
# reload_tid NAME DIR: the thread that watches the directory and reloads: sluice-reload, or in
# a build that does not name it, the thread that works most through one reload.
reload_tid() {
    local pid_var=pid_$1 t seen best=0 d
    for t in /proc/"${!pid_var}"/task/*; do
        [ "$(cat "$t/comm")" = sluice-reload ] && { basename "$t"; return; }
    done
    declare -A t0
    for t in /proc/"${!pid_var}"/task/*; do t0[$(basename "$t")]=$(thread_ticks "${!pid_var}" "$(basename "$t")"); done
    seen=$(grep -c reloaded "$work/$1.err" || true)
    write_bench "$2" 1000000000
    while [ "$(grep -c reloaded "$work/$1.err" || true)" -le "$seen" ]; do sleep 0.01; done
    for t in "${!t0[@]}"; do
        d=$(($(thread_ticks "${!pid_var}" "$t") - t0[$t]))
        [ "$d" -ge "$best" ] && { best=$d; seen=$t; }
    done
    echo "$seen"
}

declare -A live_med live_min live_max reload_ms
echo
for n in $LOAD_SIZES; do
    part 3 || break
    [ -d "$work/p$n" ] || policies "$n" >/dev/null
    start "live$n" "$work/p$n"
    warm "live$n"
    pid_var=pid_live$n
    port_var=port_live$n
    tid=$(reload_tid "live$n" "$work/p$n")
    t0=$(thread_ticks "${!pid_var}" "$tid")
    read -r live_med[$n] live_min[$n] live_max[$n] < <(python3 - "${!port_var}" "$work/p$n" \
        "$SAMPLES" <<'EOF'
import http.client, os, statistics, sys, time
port, d, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
body = open("bench/body.json").read()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def limit():
    conn.request("GET", "/api/bench", headers={"X-User-Id": "1"})
    r = conn.getresponse()
    r.read()
    return int(r.headers["X-RateLimit-Limit"])
samples = []
for i in range(n):
    lim = 1000000001 + i
    text = ('tier "bench" { limit = %d, window = "1h" }\n'
            'identity { user = header "X-User-Id", default_tier = "bench" }\n'
            'endpoint "GET /api/bench" {\n  body = [==[%s]==],\n'
            '  cache = { ttl = "5m", key = "bench:{user}" },\n  limit = "tier",\n}\n') % (lim, body)
    with open(os.path.join(d, ".00-bench.tmp"), "w") as f:
        f.write(text)
    t0 = time.perf_counter()
    os.rename(os.path.join(d, ".00-bench.tmp"), os.path.join(d, "00-bench.lua"))
    while limit() != lim:
        time.sleep(0.001)
    samples.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.2)
samples.sort()
print("%.0f %.0f %.0f" % (statistics.median(samples), samples[0], samples[-1]))
EOF
    )
    t1=$(thread_ticks "${!pid_var}" "$tid")
    reload_ms[$n]=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v k="$SAMPLES" \
        'BEGIN {printf "%.0f", t * 1000 / hz / k}')
    printf 'edit -> live, %6d endpoints: median %5s ms (min %s, max %s; %d edits), %s ms CPU per reload\n' \
        "$n" "${live_med[$n]}" "${live_min[$n]}" "${live_max[$n]}" "$SAMPLES" "${reload_ms[$n]}"
    stop "live$n"
done

# --- (4) throughput while reloading back to back -------------------------------------------
dip=-
part 4 && {
[ -d "$work/p$DIP_SIZE" ] || policies "$DIP_SIZE" >/dev/null
start dip "$work/p$DIP_SIZE"
warm dip
dip_tid=$(reload_tid dip "$work/p$DIP_SIZE")
taskset -p -c "$CLIENT_CPU" "$dip_tid" >/dev/null
# reloader: rewrites the bench file as soon as the reload of the last write was logged. One
# Python process on CPU $CLIENT_CPU beside wrk that reads the log's new bytes every 10 ms: a
# shell loop that runs grep 100 times a second would take a good part of a core itself, and
# its cost would show as a dip that reloading does not cause.
reloader() {
    write_bench "$work" __LIMIT__ # the file, its limit left to fill in
    exec taskset -c "$CLIENT_CPU" python3 - "$work/p$DIP_SIZE" "$work/dip.err" \
        "$work/00-bench.lua" <<'EOF'
import os, sys, time
d, err, template = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
fd = os.open(err, os.O_RDONLY)
os.lseek(fd, 0, os.SEEK_END)
buf, n, i = b"", 0, 0
while True:
    i += 1
    tmp = os.path.join(d, ".00-bench.tmp")
    with open(tmp, "w") as f:
        f.write(template.replace("__LIMIT__", str(2000000000 + i)))
    os.rename(tmp, os.path.join(d, "00-bench.lua"))
    want = n + 1
    while n < want:
        time.sleep(0.01)
        lines = (buf + os.read(fd, 1 << 20)).split(b"\n")
        buf = lines.pop()
        n += sum(b"reloaded" in line for line in lines)
EOF
}
# dip_measure: wrk_measure, and the CPU per request of the threads that serve (every thread
# but sluice-reload) in serve_us.
dip_measure() {
    local r0 r1 reqs
    r0=$(thread_ticks "$pid_dip" "$dip_tid")
    wrk_measure "$pid_dip" "http://127.0.0.1:$port_dip/api/bench" -H 'X-User-Id: 42'
    r1=$(thread_ticks "$pid_dip" "$dip_tid")
    grep -q 'Non-2xx' <<<"$wrk_out" && die "dip: non-2xx answers"
    reqs=$(awk '/requests in/ {print $1}' <<<"$wrk_out")
    read -r rps _ us <<<"$wrk_result"
    serve_us=$(awk -v all="$us" -v n="$reqs" -v t=$((r1 - r0)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%.2f", all - t * 1e6 / hz / n}')
    reload_s=$(awk -v t=$((r1 - r0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
}
# control: what the reloads' CPU alone takes from wrk, without reloading: `sluice check` of the
# same policy set, over and over on CPU $CLIENT_CPU, with the watcher's 100 ms pause between.
control() {
    exec taskset -c "$CLIENT_CPU" bash -c 'while :; do "$1" check "$2" >/dev/null; sleep 0.1; done' \
        control "$bin" "$work/p$DIP_SIZE"
}
children_ticks() { awk '{print $16 + $17}' "/proc/$1/stat"; }
all_steady="" all_control="" all_reloading="" all_s_us="" all_c_us="" all_r_us="" all_lost_c="" all_lost_r=""
echo
for r in $(seq "$ROUNDS"); do
    wait_quiet >/dev/null
    dip_measure
    steady=$rps s_us=$serve_us
    wait_quiet >/dev/null
    control &
    cp=$!
    c0=$(children_ticks "$cp")
    dip_measure
    c1=$(children_ticks "$cp")
    kill "$cp"
    wait "$cp" 2>/dev/null || true
    ctl=$rps c_us=$serve_us
    ctl_s=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
    wait_quiet >/dev/null
    before=$(grep -c reloaded "$work/dip.err" || true)
    reloader &
    rp=$!
    dip_measure
    kill "$rp"
    wait "$rp" 2>/dev/null || true
    n_reloads=$(($(grep -c reloaded "$work/dip.err" || true) - before))
    printf 'round %s, %d endpoints: steady %s req/s (%s us/req serving); checking beside %s req/s (%s us/req; %s s of CPU checking); reloading back to back %s req/s (%s us/req; %d reloads, %s s of CPU reloading)\n' \
        "$r" "$DIP_SIZE" "$steady" "$s_us" "$ctl" "$c_us" "$ctl_s" "$rps" "$serve_us" "$n_reloads" "$reload_s"
    all_steady+=" $steady" all_control+=" $ctl" all_reloading+=" $rps"
    all_s_us+=" $s_us" all_c_us+=" $c_us" all_r_us+=" $serve_us"
    lost() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN {printf "%.0f", (t > 0 ? (a - b) / t : 0)}'; }
    all_lost_c+=" $(lost "$steady" "$ctl" "$ctl_s")" all_lost_r+=" $(lost "$steady" "$rps" "$reload_s")"
done
stop dip
pct() { awk -v p="$1" 'BEGIN {printf "%.1f", 100 * (1 - p)}'; }
vs_steady=$(paired_median "$all_reloading" "$all_steady")
vs_control=$(paired_median "$all_reloading" "$all_control")
dip=$(pct "$vs_control")
echo "paired rounds (each round's reloading run against the same round's others; median):"
printf '  req/s reloading against steady: dip %s%% (the reloads'"'"' CPU taken from wrk included)\n' "$(pct "$vs_steady")"
printf '  req/s checking against steady: dip %s%% (that CPU alone)\n' "$(pct "$(paired_median "$all_control" "$all_steady")")"
printf '  req/s reloading against checking: dip %s%% (what reloading costs beyond its CPU)\n' "$dip"
printf '  CPU per request of the serving threads, reloading against checking: %sx\n' \
    "$(paired_median "$all_r_us" "$all_c_us")"
printf '  req/s lost per second of CPU beside wrk: checking %s, reloading %s (median of rounds)\n' \
    "$(median "$all_lost_c" | cut -d. -f1)" "$(median "$all_lost_r" | cut -d. -f1)"
}

if [ "$CHART" = 1 ] && [ "$PARTS" != "1 2 3 4" ]; then
    echo "no chart: CHART=1 needs every part"
elif [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/routing.dat"
    {
        echo "# bench/routing.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): CPU per hit, the least of $ROUNDS rounds of ${DURATION}s at $CONNECTIONS connections;"
        echo "# sluice check: median of $CHECKS runs (wall, and CPU user + sys); edit -> live: median and least of $SAMPLES edits;"
        echo "# reload dip at $DIP_SIZE endpoints: $dip% (median of $ROUNDS paired rounds, req/s reloading back to back against sluice check looping beside)"
        echo "# endpoints	cpu-us/hit	req/s	check-s	check-cpu-s	edit-live-ms	edit-live-min-ms	reload-cpu-ms"
        for n in $(printf '%s\n' $HIT_SIZES $LOAD_SIZES | sort -n -u); do
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "${best_us[$n]:--}" "${best_rps[$n]:--}" \
                "${check_s[$n]:--}" "${check_cpu[$n]:--}" "${live_med[$n]:--}" "${live_min[$n]:--}" \
                "${reload_ms[$n]:--}"
        done
    } >"$dat"
    routing_chart "$dat" "$CHART_DIR/routing.png" "reload dip at $DIP_SIZE endpoints: $dip%" \
        "${BEFORE:-}"
    echo "wrote $dat and $CHART_DIR/routing.png"
fi
