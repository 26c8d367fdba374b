# shellcheck shell=bash
# Sourced by bench/run.sh, bench/proxy.sh and bench/revalidate.sh, from the repository's
# root: the settings they share (from the environment), the helpers that measure a server
# with wrk, and the chart a run draws with CHART=1.
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
# CHART=1: the script writes its best figures to $CHART_DIR/NAME.dat and draws
# $CHART_DIR/NAME.png with gnuplot; without it a run writes nothing into the tree.
CHART=${CHART:-0}
CHART_DIR=${CHART_DIR:-docs/bench}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# wrk_measure PID URL [WRK_ARG...]: wrk on CPU $CLIENT_CPU against URL for $DURATION s at
# $CONNECTIONS connections. Sets wrk_out (wrk's report) and wrk_result ("rps p50
# us_per_req": the CPU time the process PID spent per request meanwhile).
wrk_measure() {
    local pid=$1 url=$2 t0 t1 rps p50 reqs hz us
    shift 2
    t0=$(cpu_ticks "$pid")
    wrk_out=$(taskset -c "$CLIENT_CPU" wrk -t"${WRK_THREADS:-2}" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        "$@" "$url")
    t1=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$wrk_out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$wrk_out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$wrk_out")
    hz=$(getconf CLK_TCK)
    us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
    # shellcheck disable=SC2034 # read by the scripts that source this file
    wrk_result="$rps $p50 $us"
}

# cpu_ns PID: the CPU time (ns) all threads of PID have run, from their schedstat.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }

# side_by_side NAME...: the servers NAME (pid_NAME and url_NAME set) measured at the same
# time: all run on CPU $SERVER_CPU, each loaded by a wrk of its own on CPU $CLIENT_CPU for
# $DURATION s at $CONNECTIONS connections (WRK_ARGS: an array of more wrk arguments). Sets
# sbs_ns[NAME] to the CPU time (ns, every thread) it spent per request meanwhile, and
# sbs_reqs[NAME] to its requests. The machine's speed, which drifts by up to a fifth between
# runs of a few seconds here, moves every one of them alike, since they run in the same
# instants; so the ratios of their costs over the calls of one run stay within a point or
# two, where runs one after the other differ by several percent.
declare -A sbs_ns sbs_reqs
side_by_side() {
    local n url_var pid_var wpids=()
    declare -A c0
    for n in "$@"; do
        pid_var=pid_$n
        c0[$n]=$(cpu_ns "${!pid_var}")
    done
    for n in "$@"; do
        url_var=url_$n
        taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "${WRK_ARGS[@]}" \
            "${!url_var}" >"${SBS_DIR:-/tmp}/sbs-$n.txt" &
        wpids+=("$!")
    done
    wait "${wpids[@]}"
    for n in "$@"; do
        pid_var=pid_$n
        sbs_reqs[$n]=$(awk '/requests in/ {print $1}' "${SBS_DIR:-/tmp}/sbs-$n.txt")
        if grep -q 'Non-2xx' "${SBS_DIR:-/tmp}/sbs-$n.txt"; then
            echo "side_by_side: $n answered non-2xx" >&2
            return 1
        fi
        # shellcheck disable=SC2034 # read by the scripts that source this file
        sbs_ns[$n]=$(awk -v a="${c0[$n]}" -v b="$(cpu_ns "${!pid_var}")" -v q="${sbs_reqs[$n]}" \
            'BEGIN {printf "%.1f", (b - a) / q}')
    done
}

# lat_us LATENCY: wrk's latency ("512.00us", "1.23ms", "1.01s") in microseconds.
lat_us() {
    awk -v l="$1" 'BEGIN {
        v = l + 0
        if (l ~ /us$/) f = 1; else if (l ~ /ms$/) f = 1e3; else if (l ~ /m$/) f = 60e6; else f = 1e6
        printf "%.0f", v * f
    }'
}

# Other work on this machine skews a round. Before each round, wait (at most QUIET_MAX s)
# for a second in which both cores are at most QUIET_PCT % busy; print what was seen.
QUIET_PCT=${QUIET_PCT:-10}
QUIET_MAX=${QUIET_MAX:-15}
busy_pct() { # over one second, all cores
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {split(a, x); split(b, y); u = y[1] - x[1]; i = y[2] - x[2];
        printf "%.0f", (u + i > 0) ? 100 * u / (u + i) : 0}'
}
wait_quiet() { # -> prints the busy % of the last second before the round
    local t0=$SECONDS b
    while :; do
        b=$(busy_pct)
        if [ "$b" -le "$QUIET_PCT" ] || [ $((SECONDS - t0)) -ge "$QUIET_MAX" ]; then
            echo "$b"
            return
        fi
    done
}

# chart_bars DAT PNG TITLE PANEL...: a PNG with one bar chart per PANEL, side by side, from
# the tab-separated DAT (first column: the bar's name; lines starting with # are comments).
# PANEL is "COLUMN|panel title|y-axis label|printf format of the value over each bar";
# COLUMN is a column number or a gnuplot expression in parentheses, e.g. ($2/1000).
# Bars whose name starts with "sluice" are blue, the others grey.
chart_bars() {
    local dat=$1 png=$2 title=$3 n panel col ptitle ylabel fmt gp expr
    shift 3
    n=$#
    gp="set terminal pngcairo size $((500 * n + 80)),580 font 'DejaVu Sans,11'
set output '$png'
set datafile separator tab
set style fill solid 0.85 border lc rgb '#333333'
set boxwidth 0.6
set yrange [0:*]
set offsets 0.6, 0.6, graph 0.12, 0
set xtics nomirror rotate by -35 left offset -1,0
set ytics nomirror
set border 3
set grid ytics lc rgb '#dddddd'
set bmargin 7
set multiplot layout 1,$n title '$title' font ',13'"
    for panel in "$@"; do
        IFS='|' read -r col ptitle ylabel fmt <<<"$panel"
        if [[ "$col" == "("* ]]; then expr=$col; else expr="column($col)"; fi
        gp+="
set title '$ptitle'
set ylabel '$ylabel'
plot '$dat' using 0:($expr):(strstrt(strcol(1), 'sluice') == 1 ? 0x4477aa : 0xaaaaaa):xtic(1) \\
        with boxes lc rgb variable notitle, \\
     '' using 0:($expr):(sprintf('$fmt', $expr)) with labels offset 0,0.9 notitle"
    done
    gp+="
unset multiplot"
    gnuplot <<<"$gp"
}

# median LIST: the median of a space-separated list of numbers.
median() {
    awk -v a="$1" 'BEGIN {
        n = split(a, r, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] + 0 < r[i] + 0) { t = r[i]; r[i] = r[j]; r[j] = t }
        printf "%.3f", n % 2 ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
    }'
}

# paired_median A B: the median over rounds of a[i] / b[i], from two space-separated lists of
# one value per round (two peers measured one after the other in each round). A machine whose
# speed drifts between rounds moves both sides of a round alike, so this ratio is steadier
# than best round against best round.
paired_median() {
    median "$(awk -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) printf " %.6f", x[i] / y[i]
    }')"
}
