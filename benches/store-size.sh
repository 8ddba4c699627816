#!/usr/bin/env bash
# Store size benchmark: how many bytes the store of a recipes/debian-rescue build takes on disk
# (every stage cached: the packages cache and state, blobs, variants, trees, the index, shared
# checkouts; a file with several hard links counted once, as `du -sb` does) against the size of
# the image's final tree (the same recipe built as Format=directory from that store, `du -sb`),
# and their ratio. `kiln cache stats` must say the same total as `du`.
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
# The directory build takes every tree stage from the store; the tree is its output.
build "$tree"
tree_bytes=$(du -sb "$tree/mkosi.output/debian-rescue" | cut -f1)
store_after=$(du -sb "$store" | cut -f1)
packages_bytes=$(du -sb "$store/v1/packages" | cut -f1)
stats_total=$("$KILN" --cache-dir "$store" cache stats | awk '$1 == "total" { print $2, $3 }')

echo "kiln store size benchmark (debian-rescue, every stage cached)"
printf 'store (du -sb)          %12d bytes\n' "$store_bytes"
printf '  of which v1/packages  %12d bytes\n' "$packages_bytes"
printf 'store after the directory build %12d bytes\n' "$store_after"
printf 'final tree (du -sb)     %12d bytes\n' "$tree_bytes"
printf 'ratio store / tree      %12.3f\n' "$(awk -v a="$store_bytes" -v b="$tree_bytes" 'BEGIN { print a / b }')"
printf 'kiln cache stats total  %s\n' "$stats_total"
