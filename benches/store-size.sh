#!/usr/bin/env bash
# Store size benchmark: how many bytes the store of a recipes/debian-rescue build takes on disk
# (every stage cached: the packages cache and state, blobs, variants, trees, the index, shared
# checkouts; a file with several hard links counted once, as `du -sb` does) against the size of
# the image's final tree (the same recipe built as Format=directory from that store, `du -sb`),
# and their ratio, right after the build, after `kiln cache gc` and after `kiln cache gc
# --drop-package-files` (both keep every stage cached: the bench checks that the same build then
# runs no stage), and what the first edits after gc cost. `kiln cache stats` must say
# the same total as `du`.
#
#   benches/store-size.sh            (needs root and the Debian mirror; ~3 minutes cold)
#
# BENCH_DIR (default /var/tmp/kiln-bench) holds the projects and the store; KILN (default
# target/debug/kiln, built here) is the binary measured.
set -euo pipefail
cd "$(dirname "$0")/.."
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench}
if [ -z "${KILN:-}" ]; then
    cargo build --quiet --bin kiln
    KILN=$PWD/target/debug/kiln
fi
mkdir -p "$bench_dir"

uki=$bench_dir/size-uki
tree=$bench_dir/size-tree
store=$bench_dir/store-size
rm -rf "$uki" "$tree" "$store"
for project in "$uki" "$tree"; do
    cp -a recipes/debian-rescue "$project"
    rm -rf "$project/mkosi.output" "$project/mkosi.cache" "$project/kiln.lock"
done
printf '[Output]\nFormat=directory\n' >"$tree/mkosi.local.conf"

build() {
    "$KILN" -C "$1" --cache-dir "$store" build >/dev/null 2>"$bench_dir/size.log" || {
        cat "$bench_dir/size.log" >&2
        exit 1
    }
}

build "$uki"
store_bytes=$(du -sb "$store" | cut -f1)
# gc keeps every stage of the build cached; it freezes what no checkout links.
"$KILN" --cache-dir "$store" cache gc >"$bench_dir/size-gc.log"
gc_bytes=$(du -sb "$store" | cut -f1)
gc_allocated=$(du -s --block-size=1 "$store" | cut -f1)
packages_bytes=$(du -sb "$store/v1/packages" | cut -f1)
debs_bytes=$(du -sb "$store/v1/packages/debs" 2>/dev/null | cut -f1)
"$KILN" --cache-dir "$store" cache stats >"$bench_dir/size-stats.log"
stats_total=$(awk '$1 == "total" { print $2, $3 }' "$bench_dir/size-stats.log")
# The same without the downloaded packages: every stage stays cached.
"$KILN" --cache-dir "$store" cache gc --drop-package-files >>"$bench_dir/size-gc.log"
lean_bytes=$(du -sb "$store" | cut -f1)
lean_allocated=$(du -s --block-size=1 "$store" | cut -f1)
# Every stage is still cached after gc: the same build runs none.
build "$uki"
grep -q ', 0 of [0-9]* stages ran' "$bench_dir/size.log" || {
    echo "a stage ran again after gc:" >&2
    cat "$bench_dir/size.log" >&2
    exit 1
}
# What freezing costs the edit loop: the first edit after gc thaws what its stages read, the
# next one finds it thawed.
edit_build() {
    echo "$1" >"$uki/mkosi.extra/etc/kiln-store-size"
    local t0 t1
    t0=$(date +%s.%N)
    build "$uki"
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
first_edit=$(edit_build one)
second_edit=$(edit_build two)
rm "$uki/mkosi.extra/etc/kiln-store-size"
build "$uki"
# The directory build's output is the image's final tree.
build "$tree"
tree_bytes=$(du -sb "$tree/mkosi.output/debian-rescue" | cut -f1)
tree_allocated=$(du -s --block-size=1 "$tree/mkosi.output/debian-rescue" | cut -f1)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

echo "kiln store size benchmark (debian-rescue, every stage cached)"
printf 'store after the build (du -sb)     %12d bytes\n' "$store_bytes"
printf 'store after cache gc (du -sb)      %12d bytes\n' "$gc_bytes"
printf '  of which v1/packages             %12d bytes (downloaded .debs %d)\n' "$packages_bytes" "${debs_bytes:-0}"
printf '  on disk (du -s, blocks)          %12d bytes\n' "$gc_allocated"
printf 'final tree (du -sb)                %12d bytes (on disk %d)\n' "$tree_bytes" "$tree_allocated"
printf 'ratio store / tree after the build %12s\n' "$(ratio "$store_bytes" "$tree_bytes")"
printf 'ratio store / tree after cache gc  %12s (on disk %s)\n' "$(ratio "$gc_bytes" "$tree_bytes")" "$(ratio "$gc_allocated" "$tree_allocated")"
printf 'store after gc --drop-package-files %11d bytes (on disk %d)\n' "$lean_bytes" "$lean_allocated"
printf 'ratio after gc --drop-package-files %11s (on disk %s)\n' "$(ratio "$lean_bytes" "$tree_bytes")" "$(ratio "$lean_allocated" "$tree_allocated")"
printf 'kiln cache stats total after gc    %s\n' "$stats_total"
printf 'an mkosi.extra edit after gc       %12s s (thaws what it reads); the next edit %s s\n' "$first_edit" "$second_edit"
