# shellcheck shell=bash
# Sourced by bench/run.sh and bench/proxy.sh, from the repository's root: the settings
# they share (from the environment) and the helpers that measure a server with wrk.
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}

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
    wrk_out=$(taskset -c "$CLIENT_CPU" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
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
