#!/usr/bin/env bash
# Throughput of `tally sum` next to `cat` and `wc -l` on generated files.
#
# Usage: scripts/bench-sum.sh            (after `cargo build --release`)
# Env:   TALLY=path/to/tally  BENCH_DIR=dir  RUNS=5  ROWS="1000000 10000000"
#
# Files are generated once (`tally gen`) and reused; the page cache is warmed
# before timing, so this measures parsing, not the disk. Prints a markdown
# table with the median of RUNS runs and the peak RSS of one extra run.
set -euo pipefail

TALLY=${TALLY:-target/release/tally}
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/tally-bench}
RUNS=${RUNS:-5}
ROWS=${ROWS:-"1000000 10000000"}

[[ -x $TALLY ]] || { echo "no executable at $TALLY; run cargo build --release or set TALLY" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time is needed for peak RSS (apt-get install time)" >&2; exit 1; }
mkdir -p "$BENCH_DIR"

now_ns() { date +%s%N; }

# Median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# bench LABEL FILE CMD...: one table row.
bench() {
    local label=$1 file=$2
    shift 2
    local bytes rates=() start end rss
    bytes=$(stat -c %s "$file")
    for _ in $(seq "$RUNS"); do
        start=$(now_ns)
        "$@" >/dev/null
        end=$(now_ns)
        rates+=("$(awk -v b="$bytes" -v ns=$((end - start)) 'BEGIN { printf "%.0f", b / (ns / 1e9) / 1e6 }')")
    done
    rss=$( { /usr/bin/time -v "$@" >/dev/null; } 2>&1 | awk -F': ' '/Maximum resident set size/ { printf "%.1f MB", $2 / 1024 }')
    local sorted
    sorted=$(printf '%s\n' "${rates[@]}" | sort -g | tr '\n' ' ')
    printf '| %s | %s | %s | %s | %s |\n' "$(basename "$file")" "$label" \
        "$(printf '%s\n' "${rates[@]}" | median)" "${sorted% }" "$rss"
}

echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo); runs: $RUNS"
echo
echo "| file | command | median MB/s | all runs MB/s | peak RSS |"
echo "| --- | --- | ---: | --- | ---: |"
for rows in $ROWS; do
    file="$BENCH_DIR/rows-$rows.csv"
    if [[ ! -s $file ]]; then
        "$TALLY" gen --rows "$rows" --seed 1 --out "$file" >/dev/null
    fi
    cat "$file" >/dev/null # warm the page cache
    bench "cat" "$file" cat "$file"
    bench "wc -l" "$file" wc -l "$file"
    bench "tally sum --threads 1" "$file" "$TALLY" sum "$file" --threads 1
    bench "tally sum (all cores)" "$file" "$TALLY" sum "$file"
done
