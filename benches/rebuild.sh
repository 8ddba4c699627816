#!/usr/bin/env bash
# Rebuild benchmark: for recipes/tiny and for a generated tree of ~30k files / ~600 MB, the
# median time of a full build (cold store), a no-op rebuild, a rebuild after editing
# mkosi.finalize and one after editing one file of mkosi.extra, each as a ratio to the full build.
#
#   benches/rebuild.sh [RUNS]        (default 5 runs per scenario; needs root, like kiln build)
#
# BENCH_DIR (default /var/tmp/kiln-bench) holds the generated projects and stores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
cargo build --release --quiet
kiln=$PWD/target/release/kiln
mkdir -p "$bench_dir"

# A project like recipes/tiny whose base tree is ~30k files / ~600 MB.
make_big() {
    local dir=$1
    [ -f "$dir/.complete" ] && return
    rm -rf "$dir"
    cp -a recipes/tiny "$dir"
    rm -rf "$dir/mkosi.output"
    python3 - "$dir/base/usr/share/bench" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
total = 0
for d in range(300):
    sub = os.path.join(root, f"dir{d:03}")
    os.makedirs(sub, exist_ok=True)
    for f in range(100):
        size = rng.randint(1000, 39000)
        with open(os.path.join(sub, f"file{f:03}"), "wb") as out:
            out.write(rng.randbytes(size))
        total += size
print(f"generated 30000 files, {total / 1e6:.0f} MB", file=sys.stderr)
PY
    touch "$dir/.complete"
}

now() { date +%s.%N; }

# time_build PROJECT STORE: seconds of one `kiln build`.
time_build() {
    local start end
    start=$(now)
    "$kiln" -C "$1" --cache-dir "$2" build >/dev/null 2>"$bench_dir/last.log" || {
        cat "$bench_dir/last.log" >&2
        exit 1
    }
    end=$(now)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f\n", b - a }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

bench_project() {
    local name=$1 project=$2
    local store=$bench_dir/store-$name
    local full=() noop=() finalize=() extra=()
    local original_finalize
    original_finalize=$(cat "$project/mkosi.finalize")
    for run in $(seq "$runs"); do
        rm -rf "$store" "$project/mkosi.output"
        printf '%s\n' "$original_finalize" >"$project/mkosi.finalize"
        printf 'tiny\n' >"$project/mkosi.extra/etc/hostname"
        sync
        full+=("$(time_build "$project" "$store")")
        noop+=("$(time_build "$project" "$store")")
        printf '%s\necho "finalize edit %s" >> "$BUILDROOT/etc/motd"\n' "$original_finalize" "$run" >"$project/mkosi.finalize"
        finalize+=("$(time_build "$project" "$store")")
        printf 'tiny-%s\n' "$run" >"$project/mkosi.extra/etc/hostname"
        extra+=("$(time_build "$project" "$store")")
    done
    printf '%s\n' "$original_finalize" >"$project/mkosi.finalize"
    printf 'tiny\n' >"$project/mkosi.extra/etc/hostname"
    local full_median
    full_median=$(printf '%s\n' "${full[@]}" | median)
    for scenario in full noop finalize extra; do
        local -n times=$scenario
        local m
        m=$(printf '%s\n' "${times[@]}" | median)
        printf '%-6s %-22s median %8.3f s   ratio %7.4f  (%s runs)\n' "$name" "$scenario" "$m" \
            "$(awk -v a="$m" -v b="$full_median" 'BEGIN { printf "%.6f", a / b }')" "$runs"
    done
}

tiny=$bench_dir/tiny
rm -rf "$tiny"
cp -a recipes/tiny "$tiny"
rm -rf "$tiny/mkosi.output"
big=$bench_dir/big
make_big "$big"

echo "kiln rebuild benchmark: medians of $runs runs, ratio = scenario / full build"
bench_project tiny "$tiny"
bench_project big "$big"
