#!/usr/bin/env bash
# UKI assembly benchmark: kiln's assembler (the stub's headers patched in place, sections
# streamed file to file) against `objcopy --add-section` (the pipeline ukify and dracut used
# before), for Debian's systemd-stub and kernel and a 150 MB initrd; median of RUNS each, side
# by side, with the ratio. Both outputs' sizes are printed too.
#
#   benches/uki.sh [RUNS]        (default 5; needs the Debian mirror or the packages the UKI
#                                 tests left in /var/tmp/kiln-test-debs)
#
# BENCH_DIR (default /var/tmp/kiln-bench/uki) holds the inputs and outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bench_dir=${BENCH_DIR:-/var/tmp/kiln-bench/uki}
debs=/var/tmp/kiln-test-debs
mkdir -p "$bench_dir" "$debs"
cargo build --release --quiet -p kiln-stages --example assemble_uki
assemble=$PWD/target/release/examples/assemble_uki

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
kver=${kernel_package#linux-image-}
printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n' > "$bench_dir/os-release"
printf 'console=ttyS0 quiet\0' > "$bench_dir/cmdline"
printf '%s' "$kver" > "$bench_dir/uname"
[ -f "$bench_dir/initrd" ] || head -c 150000000 /dev/urandom > "$bench_dir/initrd"

kiln_once() {
    "$assemble" "$stub" "$kernel" "$kver" "$bench_dir/os-release" "$bench_dir/initrd" \
        "console=ttyS0 quiet" "$bench_dir/kiln.efi"
}
# Addresses as ukify's objcopy era laid them out: each section after the previous one.
objcopy_once() {
    objcopy \
        --add-section .osrel="$bench_dir/os-release" --change-section-vma .osrel=0x20000 \
        --add-section .cmdline="$bench_dir/cmdline" --change-section-vma .cmdline=0x30000 \
        --add-section .uname="$bench_dir/uname" --change-section-vma .uname=0x40000 \
        --add-section .linux="$kernel" --change-section-vma .linux=0x2000000 \
        --add-section .initrd="$bench_dir/initrd" --change-section-vma .initrd=0x3000000 \
        "$stub" "$bench_dir/objcopy.efi"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_of() { local start end; start=$(date +%s.%N); "$@"; end=$(date +%s.%N); echo "$end - $start" | bc; }

kiln_once; objcopy_once   # warm the page cache
kiln_times=(); objcopy_times=()
for _ in $(seq "$runs"); do
    kiln_times+=("$(time_of kiln_once)")
    objcopy_times+=("$(time_of objcopy_once)")
done
kiln_median=$(printf '%s\n' "${kiln_times[@]}" | median)
objcopy_median=$(printf '%s\n' "${objcopy_times[@]}" | median)
printf '%-28s %10s %14s\n' "assembler" "median (s)" "output (bytes)"
printf '%-28s %10.3f %14d\n' "kiln assemble_uki" "$kiln_median" "$(stat -c %s "$bench_dir/kiln.efi")"
printf '%-28s %10.3f %14d\n' "objcopy --add-section" "$objcopy_median" "$(stat -c %s "$bench_dir/objcopy.efi")"
printf 'ratio objcopy / kiln: %.1f\n' "$(echo "$objcopy_median / $kiln_median" | bc -l)"
