#!/usr/bin/env bash
# Packages benchmark: recipes/debian-rescue (as Format=directory) against the Debian mirror.
# For each scenario, the median time of the whole build and of its packages stage, each as a
# ratio to the cold build:
#
#   cold     an empty store: resolve, download every .deb, install, store the tree
#   warm     nothing changed: resolve again, find the same set, run nothing
#   changed  `tree` added to Packages=: resolve, install again, with every other .deb from the
#            store's package cache
#
#   benches/packages.sh [RUNS]       (default 3 runs per scenario; needs root and the mirror)
#
# BENCH_DIR (default /var/tmp/kiln-bench) holds the project and its store.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
cargo build --release --quiet
kiln=$PWD/target/release/kiln
mkdir -p "$bench_dir"

project=$bench_dir/debian-rescue
store=$bench_dir/store-packages
rm -rf "$project"
cp -a recipes/debian-rescue "$project"
rm -rf "$project/mkosi.output" "$project/mkosi.cache" "$project/kiln.lock"
plain='[Output]
Format=directory
'
changed="$plain[Content]
Packages=tree
"

now() { date +%s.%N; }

# time_build: "<whole build seconds> <packages stage seconds>" of one `kiln build`.
time_build() {
    local start end log=$bench_dir/packages.log
    start=$(now)
    "$kiln" -C "$project" --cache-dir "$store" build >/dev/null 2>"$log" || {
        cat "$log" >&2
        exit 1
    }
    end=$(now)
    # "packages: ran (27.94 s)", "packages: ran (950 ms)" or "packages: cached".
    local line stage=0
    line=$(grep -m1 '^packages: ' "$log" || true)
    case $line in
    *"ran"*) stage=$(sed -E 's/.*\(([0-9.]+) (ms|s)\).*/\1 \2/' <<<"$line" |
        awk '{ print ($2 == "ms") ? $1 / 1000 : $1 }') ;;
    esac
    awk -v a="$start" -v b="$end" -v s="${stage:-0}" 'BEGIN { printf "%.4f %.4f\n", b - a, s }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

cold=() warm=() edit=()
for run in $(seq "$runs"); do
    rm -rf "$store" "$project/mkosi.output"
    printf '%s' "$plain" >"$project/mkosi.local.conf"
    sync
    cold+=("$(time_build)")
    warm+=("$(time_build)")
    printf '%s' "$changed" >"$project/mkosi.local.conf"
    edit+=("$(time_build)")
done
printf '%s' "$plain" >"$project/mkosi.local.conf"

column_median() { printf '%s\n' "$@" | awk -v c="$column" '{ print $c }' | median; }
column=1; cold_build=$(column_median "${cold[@]}")
column=2; cold_stage=$(column_median "${cold[@]}")
echo "kiln packages benchmark (debian-rescue): medians of $runs runs, ratio = scenario / cold"
for scenario in cold warm edit; do
    declare -n times=$scenario
    column=1; whole=$(column_median "${times[@]}")
    column=2; stage=$(column_median "${times[@]}")
    name=$scenario
    [ "$name" = edit ] && name=changed
    printf '%-8s build %8.3f s  ratio %6.4f   packages stage %8.3f s  ratio %6.4f\n' "$name" \
        "$whole" "$(awk -v a="$whole" -v b="$cold_build" 'BEGIN { printf "%.6f", a / b }')" \
        "$stage" "$(awk -v a="$stage" -v b="$cold_stage" 'BEGIN { printf "%.6f", a / b }')"
done
