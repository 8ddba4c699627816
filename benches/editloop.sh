#!/usr/bin/env bash
# Edit-loop benchmark: recipes/debian-rescue against the Debian mirror, run as a user runs it
# (from inside the project, with a relative store), as Format=uki unless FORMAT says otherwise.
# Prints the median time of each scenario and its ratio to the cold build, measured side by
# side in one run, and kiln's peak memory:
#
#   cold           an empty store: resolve, download, install, every stage, the outputs
#   no-op          nothing changed (the mirror's index is checked, nothing runs)
#   -f             nothing changed, the outputs checked and rewritten by their difference
#   extra edit     one file of mkosi.extra changed
#   finalize edit  mkosi.finalize changed
#   image version  --image-version changed (a new versioned output)
#   module rule    one KernelModulesInclude= rule added
#   graph show     the plan, read only
#
#   benches/editloop.sh [RUNS]       (default 3 cold builds, 5 of each rebuild per cold build;
#                                     needs root and the mirror)
#
# BENCH_DIR (default /var/tmp/kiln-bench) holds the project and its store.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
repeats=${REPEATS:-5}
format=${FORMAT:-uki}
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
cargo build --release --quiet
kiln=$PWD/target/release/kiln
work=$bench_dir/editloop
project=$work/debian-rescue
store=../store
rm -rf "$work"
mkdir -p "$work"
cp -a recipes/debian-rescue "$project"
rm -rf "$project/mkosi.output" "$project/kiln.lock"
cp "$project/mkosi.finalize" "$work/finalize.orig"

set_local() { printf '[Output]\nFormat=%s\n%s' "$format" "${1:-}" >"$project/mkosi.local.conf"; }
set_local

now() { date +%s.%N; }

# timed ARGS...: seconds of one `kiln ARGS` run inside the project; its peak RSS (KB) goes to
# $work/rss.
timed() {
    local start end log=$work/last.log
    start=$(now)
    (cd "$project" && /usr/bin/time -f %M -o "$work/rss" "$kiln" --cache-dir "$store" "$@") \
        >/dev/null 2>"$log" || {
        cat "$log" >&2
        exit 1
    }
    end=$(now)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f\n", b - a }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A times
add() { times[$1]+="$2 "; }
peak=0
track_rss() {
    local rss
    rss=$(cat "$work/rss")
    ((rss > peak)) && peak=$rss
    return 0
}
for run in $(seq "$runs"); do
    rm -rf "$work/store" "$project/mkosi.output"
    sync
    add cold "$(timed build)"
    track_rss
    for i in $(seq "$repeats"); do
        add no-op "$(timed build)"
        add -f "$(timed -f build)"
        echo "edit $run.$i" >"$project/mkosi.extra/etc/kiln-bench"
        add "extra edit" "$(timed build)"
        track_rss
        cp "$work/finalize.orig" "$project/mkosi.finalize"
        echo "echo 'KILN_BENCH=$run.$i' >> \"\$BUILDROOT/etc/os-release\"" >>"$project/mkosi.finalize"
        add "finalize edit" "$(timed build)"
        add "image version" "$(timed --image-version "bench.$run.$i" build)"
        rm -rf "$project/mkosi.output/debian-rescue_bench."*
        timed build >/dev/null
        set_local "[Content]
KernelModulesInclude=drivers/nvme/host/nvme.ko
"
        add "module rule" "$(timed build)"
        track_rss
        set_local
        timed build >/dev/null
        add "graph show" "$(timed graph show)"
    done
    rm -f "$project/mkosi.extra/etc/kiln-bench"
    cp "$work/finalize.orig" "$project/mkosi.finalize"
done

cold=$(printf '%s\n' ${times[cold]} | median)
echo "kiln edit-loop benchmark (debian-rescue, Format=$format): medians; ratio = scenario / cold"
for scenario in cold no-op -f "extra edit" "finalize edit" "image version" "module rule" "graph show"; do
    m=$(printf '%s\n' ${times[$scenario]} | median)
    n=$(printf '%s\n' ${times[$scenario]} | wc -l)
    printf '%-14s %9.3f s  ratio %7.4f  (%d runs)\n' "$scenario" "$m" \
        "$(awk -v a="$m" -v b="$cold" 'BEGIN { printf "%.6f", a / b }')" "$n"
done
echo "peak RSS of kiln over all builds: $((peak / 1024)) MB"
if [[ $format == uki ]]; then
    ls -l "$project/mkosi.output/debian-rescue.efi" | awk '{ printf "UKI size: %.1f MB\n", $5 / 1e6 }'
fi
