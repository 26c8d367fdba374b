#!/usr/bin/env bash
# What a cached entry costs in memory: sluice's memory store (two workers) filled past its
# cache budget with answers of 200 bytes and of 2 KiB under new keys (bench/memory.py a200
# and a2k, pipelined from one Python client), with budgets that hold about ENTRIES entries
# of this tree (default a million: 430 and 2270 bytes an entry, so 410 MiB and 2165 MiB),
# and 1.5 x ENTRIES requests of each size, so that the budget fills and then evicts.
#
#   bench/entry_memory.sh                       # this tree, built in build-bench (Release)
#   BASE=main bench/entry_memory.sh             # and the engine of git ref main beside it
#   BASE=main CHART=1 bench/entry_memory.sh     # also write docs/bench/entry_memory.dat and .png
#   ENTRIES=200000 SIZES=a200 bench/entry_memory.sh
#   SLUICE_BIN=/path/to/sluice SLUICE_LABEL=x bench/entry_memory.sh   # that binary, no build
#
# For each binary and answer size it prints the entries held at the end, the bytes the store
# charged each (its own count: what the allocator holds for it), the RSS grown per entry
# ((peak - baseline) / entries, VmRSS sampled every 1000 answers) and the RSS grown over the
# cache budget. BASE=REF builds REF's tree from `git archive` in a temporary directory
# (Release) and measures it first, with the same budgets (grey bars in the chart). Each server runs alone; the 2 KiB
# run needs about 2.5 GB of memory at the default ENTRIES. With CHART=1 the figures go to
# $CHART_DIR/entry_memory.dat (default docs/bench) and a bar chart to entry_memory.png.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BUILD_DIR=${BUILD_DIR:-build-bench}
ENTRIES=${ENTRIES:-1000000}
SIZES=${SIZES:-a200 a2k}
BASE=${BASE:-}

declare -A body_of=([a200]=200 [a2k]=2048) name_of=([a200]="200 B" [a2k]="2 KiB")
declare -A per_entry=([a200]=430 [a2k]=2270)

if [ "$CHART" = 1 ] && ! command -v gnuplot >/dev/null; then
    echo "CHART=1 needs gnuplot (scripts/deps.sh bench)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

bins=() labels=()
if [ -n "$BASE" ]; then
    git archive "$BASE" | tar -x -C "$tmp" --one-top-level=base
    cmake -S "$tmp/base" -B "$tmp/base/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$tmp/base/build" -j"$(nproc)" --target sluice >/dev/null
    bins+=("$tmp/base/build/sluice")
    labels+=("$BASE $(git rev-parse --short "$BASE")") # not "sluice ...": a grey bar
fi
if [ -z "${SLUICE_BIN:-}" ]; then
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target sluice >/dev/null
    bins+=("$BUILD_DIR/sluice")
    # named by the last commit that changed the engine (+: changed since)
    labels+=("sluice $(git log -1 --format=%h -- engine)$(git diff --quiet HEAD -- engine || echo +)")
else
    bins+=("$SLUICE_BIN")
    labels+=("sluice ${SLUICE_LABEL:-$SLUICE_BIN}")
fi

rows=()
for i in "${!bins[@]}"; do
    for shape in $SIZES; do
        budget=$((ENTRIES * ${per_entry[$shape]}))
        requests=$((ENTRIES * 3 / 2))
        tsv="$tmp/$i-$shape.tsv"
        SLUICE_BIN=${bins[$i]} python3 bench/memory.py --cache-bytes "$budget" \
            --requests "$requests" --tsv "$tsv" "$shape" >/dev/null
        # shape requests cache limit base peak entries cache_bytes
        row=$(awk -F'\t' -v name="${labels[$i]}, ${name_of[$shape]}" -v body="${body_of[$shape]}" '{
            grown = $6 - $5
            printf "%s\t%d\t%.0f\t%d\t%.0f\t%.0f\t%.3f\n", name, body, $3 / 1048576, $7,
                $8 / $7, grown / $7, grown / $3
        }' "$tsv")
        rows+=("$row")
        awk -F'\t' '{
            printf "%-34s budget %5d MiB: %7d entries, %4.0f B charged and %4.0f B resident each, RSS grown / budget %.2f\n",
                $1, $3, $4, $5, $6, $7
        }' <<<"$row"
    done
done

# --- CHART=1: the figures as data, and a bar chart ----------------------------------------
if [ "$CHART" = 1 ]; then
    mkdir -p "$CHART_DIR"
    dat="$CHART_DIR/entry_memory.dat"
    {
        echo "# bench/entry_memory.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): memory store, two workers,"
        echo "# budgets for $ENTRIES entries of this tree, $((ENTRIES * 3 / 2)) requests of new keys each; RSS = VmRSS peak - baseline"
        printf '# build, answer\tbody bytes\tcache budget (MiB)\tentries held\tbytes charged per entry\tRSS bytes per entry\tRSS / budget\n'
        printf '%s\n' "${rows[@]}"
    } >"$dat"
    chart_bars "$dat" "$CHART_DIR/entry_memory.png" \
        "bench/entry\\_memory.sh $(date -u +%Y-%m-%d): cache filled past a budget for $ENTRIES entries, 200 B and 2 KiB answers" \
        "(\$6-\$2)|RSS per entry beyond its body (lower is better)|bytes|%.0f" \
        "(\$4/1000)|entries held in the budget (higher is better)|thousands|%.0fk" \
        "7|RSS grown / cache budget|ratio|%.2f"
    echo "chart: $dat, $CHART_DIR/entry_memory.png"
fi
