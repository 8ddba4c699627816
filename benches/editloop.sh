#!/usr/bin/env bash
# Edit-loop benchmark: recipes/debian-rescue against the Debian mirror, run as a user runs it
# (from inside the project, with a relative store), as Format=directory unless FORMAT says
# otherwise. Prints the median time of each scenario and its ratio to the cold build, measured
# side by side in one run:
#
#   cold        an empty store: resolve, download, install, every stage, the output
#   no-op       nothing changed (the mirror's index is checked, nothing runs)
#   -f          nothing changed, the output checked and rewritten by its difference
#   extra edit  one file of mkosi.extra changed
#   finalize    mkosi.finalize changed
#   graph show  the plan, read only
#
#   benches/editloop.sh [RUNS]       (default 3 cold builds, 5 of each rebuild per cold build;
#                                     needs root and the mirror)
#
# BENCH_DIR (default /var/tmp/kiln-bench) holds the project and its store.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
repeats=${REPEATS:-5}
format=${FORMAT:-directory}
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
cargo build --release --quiet
kiln=$PWD/target/release/kiln
mkdir -p "$bench_dir"

project=$bench_dir/editloop/debian-rescue
store=../store
rm -rf "$bench_dir/editloop"
mkdir -p "$bench_dir/editloop"
cp -a recipes/debian-rescue "$project"
rm -rf "$project/mkosi.output" "$project/kiln.lock"
printf '[Output]\nFormat=%s\n' "$format" >"$project/mkosi.local.conf"
cp "$project/mkosi.finalize" "$bench_dir/editloop/finalize.orig"

now() { date +%s.%N; }

# timed ARGS...: seconds of one `kiln ARGS` run inside the project.
timed() {
    local start end log=$bench_dir/editloop/last.log
    start=$(now)
    (cd "$project" && "$kiln" --cache-dir "$store" "$@") >/dev/null 2>"$log" || {
        cat "$log" >&2
        exit 1
    }
    end=$(now)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f\n", b - a }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A times
add() { times[$1]+="$2 "; }
for run in $(seq "$runs"); do
    rm -rf "$bench_dir/editloop/store" "$project/mkosi.output"
    sync
    add cold "$(timed build)"
    for i in $(seq "$repeats"); do
        add no-op "$(timed build)"
        add -f "$(timed -f build)"
        echo "edit $run.$i" >"$project/mkosi.extra/etc/kiln-bench"
        add "extra edit" "$(timed build)"
        cp "$bench_dir/editloop/finalize.orig" "$project/mkosi.finalize"
        echo "echo 'KILN_BENCH=$run.$i' >> \"\$BUILDROOT/etc/os-release\"" >>"$project/mkosi.finalize"
        add finalize "$(timed build)"
        add "graph show" "$(timed graph show)"
    done
    rm -f "$project/mkosi.extra/etc/kiln-bench"
    cp "$bench_dir/editloop/finalize.orig" "$project/mkosi.finalize"
done

cold=$(printf '%s\n' ${times[cold]} | median)
echo "kiln edit-loop benchmark (debian-rescue, Format=$format): medians; ratio = scenario / cold"
for scenario in cold no-op -f "extra edit" finalize "graph show"; do
    m=$(printf '%s\n' ${times[$scenario]} | median)
    n=$(printf '%s\n' ${times[$scenario]} | wc -l)
    printf '%-11s %9.3f s  ratio %7.4f  (%d runs)\n' "$scenario" "$m" \
        "$(awk -v a="$m" -v b="$cold" 'BEGIN { printf "%.6f", a / b }')" "$n"
done
