#!/usr/bin/env bash
# Signing benchmark: kiln's Authenticode signer (the sign stage's, streaming the file once)
# against sbsign (which reads the whole file into memory), on a UKI assembled from Debian's
# systemd-stub and kernel and a 150 MB initrd, with an RSA 2048 key as `kiln genkey` writes it.
# Prints the median time and the largest resident set of RUNS runs each, side by side, with
# the ratio, and checks that both signed files verify and are identical (same signing time).
#
#   benches/sign.sh [RUNS]       (default 5; needs sbsign, sbverify, faketime, and the Debian
#                                 mirror or the packages the UKI tests left in
#                                 /var/tmp/kiln-test-debs)
#
# BENCH_DIR (default /var/tmp/kiln-bench/sign) holds the inputs and outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench/sign}
debs=/var/tmp/kiln-test-debs
epoch=1798859045
mkdir -p "$bench_dir" "$debs"
cargo build --release --quiet -p kiln-stages --example assemble_uki --example sign_uki
cargo build --release --quiet --bin kiln
assemble=$PWD/target/release/examples/assemble_uki
sign=$PWD/target/release/examples/sign_uki
kiln=$PWD/target/release/kiln

kernel_package=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-.*\)/\1/p' | head -1)
(cd "$debs" && for package in systemd-boot-efi "$kernel_package"; do
    ls "${package}"_*.deb >/dev/null 2>&1 || apt-get download "$package" >/dev/null
done)
stub=$bench_dir/linuxx64.efi.stub
kernel=$bench_dir/vmlinuz
if [ ! -f "$kernel" ]; then
    dpkg-deb --fsys-tarfile "$(ls "$debs"/systemd-boot-efi_*.deb | tail -1)" \
        | tar -xO ./usr/lib/systemd/boot/efi/linuxx64.efi.stub > "$stub"
    dpkg-deb --fsys-tarfile "$(ls "$debs"/"$kernel_package"_*.deb | tail -1)" \
        | tar -xO --wildcards './boot/vmlinuz-*' > "$kernel"
fi
printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n' > "$bench_dir/os-release"
[ -f "$bench_dir/initrd" ] || head -c 150000000 /dev/urandom > "$bench_dir/initrd"
"$assemble" "$stub" "$kernel" "${kernel_package#linux-image-}" "$bench_dir/os-release" \
    "$bench_dir/initrd" "console=ttyS0 quiet" "$bench_dir/uki.efi"
[ -f "$bench_dir/mkosi.key" ] || "$kiln" -C "$bench_dir" genkey >/dev/null 2>&1

kiln_command=("$sign" "$bench_dir/mkosi.key" "$bench_dir/mkosi.crt" "$bench_dir/uki.efi"
    "$bench_dir/kiln.efi" "$epoch")
sbsign_command=(sbsign --key "$bench_dir/mkosi.key" --cert "$bench_dir/mkosi.crt"
    --output "$bench_dir/sbsign.efi" "$bench_dir/uki.efi")
# Prints "seconds max-rss-kB" of one run of the command.
measure() {
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -o "$bench_dir/rss" -f '%M' "$@" >/dev/null 2>&1
    end=$(date +%s.%N)
    echo "$(echo "$end - $start" | bc) $(cat "$bench_dir/rss")"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Same key, UKI and signing time (sbsign under faketime): the same bytes.
"${kiln_command[@]}"
faketime -f "$(date -u -d "@$epoch" '+%Y-%m-%d %H:%M:%S')" "${sbsign_command[@]}" 2>/dev/null
cmp -s "$bench_dir/kiln.efi" "$bench_dir/sbsign.efi" \
    || { echo "kiln's signed UKI differs from sbsign's" >&2; exit 1; }
sbverify --cert "$bench_dir/mkosi.crt" "$bench_dir/kiln.efi" >/dev/null
kiln_runs=(); sbsign_runs=()
for _ in $(seq "$runs"); do
    kiln_runs+=("$(measure "${kiln_command[@]}")")
    sbsign_runs+=("$(measure "${sbsign_command[@]}")")
done
kiln_time=$(printf '%s\n' "${kiln_runs[@]}" | cut -d' ' -f1 | median)
sbsign_time=$(printf '%s\n' "${sbsign_runs[@]}" | cut -d' ' -f1 | median)
kiln_rss=$(printf '%s\n' "${kiln_runs[@]}" | cut -d' ' -f2 | sort -n | tail -1)
sbsign_rss=$(printf '%s\n' "${sbsign_runs[@]}" | cut -d' ' -f2 | sort -n | tail -1)
printf 'signing %d bytes, %d runs each\n' "$(stat -c %s "$bench_dir/uki.efi")" "$runs"
printf '%-24s %10s %16s\n' "signer" "median (s)" "max RSS (MB)"
printf '%-24s %10.3f %16.1f\n' "kiln (sign_uki)" "$kiln_time" "$(echo "$kiln_rss / 1024" | bc -l)"
printf '%-24s %10.3f %16.1f\n' "sbsign" "$sbsign_time" "$(echo "$sbsign_rss / 1024" | bc -l)"
printf 'ratio sbsign / kiln: time %.2f, memory %.1f\n' \
    "$(echo "$sbsign_time / $kiln_time" | bc -l)" "$(echo "$sbsign_rss / $kiln_rss" | bc -l)"
echo "outputs identical: yes"
