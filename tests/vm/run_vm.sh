#!/bin/bash
# Boots Debian's own kernel (CONFIG_TLS=m: kernel TLS) under qemu with a
# busybox initramfs, runs test programs inside, and reads their verdicts from
# the serial console. The host kernel of these machines has no kTLS; this is
# where kTLS is really exercised.
#
#   tests/vm/run_vm.sh --cache DIR [--kernel SUITE] [--timeout SECONDS] [--env NAME=VALUE]...
#                      [--add FILE]... --run NAME 'PROGRAM [ARG...]' [--run NAME '...']...
#
#   --cache DIR   where the guest pieces are kept between runs (a build dir):
#                 per suite the kernel package, its vmlinuz and a base
#                 initramfs with busybox and the kTLS modules, rebuilt only
#                 when Debian publishes a new kernel
#   --kernel SUITE  whose linux-image-amd64 boots: bookworm (Debian 12,
#                 6.1; the default), trixie (Debian 13, 6.12) or
#                 trixie-backports (the newest backport, 7.x)
#   --run NAME 'PROGRAM ARGS'   a host program (copied in with the shared
#                 libraries ldd lists) and its arguments; NAME passes if it
#                 exits 0 inside the guest. Runs in order, each in /tmp.
#   --env NAME=VALUE   set for every program in the guest
#   --add FILE    copy FILE into the guest's /opt/bin (with the shared
#                 libraries ldd lists, for a program) without running it: the
#                 programs and data a --run script uses
#   --timeout S   hard limit for the whole boot (default 480)
#   --mem MIB     the guest's RAM (default 1536). The initramfs lives in it
#                 (an ASan build's programs are ~250 MiB unpacked) and so does
#                 an ASan process's quarantine (256 MiB by default); qemu
#                 takes host memory only as the guest touches it
#
# Nothing is installed on the host and its apt state is not changed: the
# kernel package is fetched with `apt-get download` (a suite other than the
# host's through a private apt state in the cache) and unpacked with
# `dpkg -x` into the cache. The guest boots with `-accel tcg` (no KVM needed)
# in about 8 s.
#
# Serial protocol (one line each, parsed here; anything else is the log):
#   RPCGATE-VM BOOT <kernel release> <guest uptime, s>
#   RPCGATE-VM MODULE <name> ok|fail
#   RPCGATE-VM BEGIN <name>
#   RPCGATE-VM PASS <name> | RPCGATE-VM FAIL <name> rc=<n>
#   RPCGATE-VM MEMORY <name> peak <MiB> MiB   (each test's memory cgroup)
#   RPCGATE-VM OOM <name>: ...                (the OOM killer ended it)
#   RPCGATE-VM END <guest uptime, s>
# Exit: 0 every --run passed; 1 a failure, a missing verdict, a hang (the
# guest is killed at the timeout) or a guest that could not be built; 77 (skip)
# only where qemu cannot run at all (no qemu-system-x86_64, not an x86-64 host).
set -euo pipefail

say() { echo "run_vm: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
skip() { say "SKIP: $*"; exit 77; }

cache=""
timeout_s=480
mem_mib=1536
kernel=bookworm
envs=()
adds=()
names=()
cmds=()
while [ $# -gt 0 ]; do
    case $1 in
        --cache) cache=${2:?--cache needs a directory}; shift ;;
        --timeout) timeout_s=${2:?--timeout needs seconds}; shift ;;
        --mem) mem_mib=${2:?--mem needs MiB}; shift ;;
        --kernel) kernel=${2:?--kernel needs a suite}; shift ;;
        --env) envs+=("${2:?--env needs NAME=VALUE}"); shift ;;
        --add) adds+=("${2:?--add needs a file}"); shift ;;
        --run) names+=("${2:?--run needs a name}"); cmds+=("${3:?--run needs a command}"); shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done
[ -n "$cache" ] || die "--cache DIR is required"
[ ${#names[@]} -gt 0 ] || die "nothing to run (--run NAME 'PROGRAM ARGS')"
case $kernel in
    bookworm | trixie | trixie-backports) ;;
    *) die "--kernel $kernel: bookworm, trixie or trixie-backports" ;;
esac

[ "$(uname -m)" = x86_64 ] || skip "the guest is x86-64 and this host is $(uname -m)"
qemu=$(command -v qemu-system-x86_64) ||
    skip "qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)"
busybox=$(command -v busybox) || die "busybox is not installed (scripts/setup.sh: busybox-static)"
# The initramfs runs busybox before any library is there: it must be static.
if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is dynamically linked: install busybox-static"; fi
for tool in apt-get apt-cache dpkg cpio gzip xz timeout flock; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# ---- the kernel: a Debian suite's linux-image-amd64, cached per version ----

. "$(dirname "$0")/vm_lib.sh"
vm_apt_init
# tls is required; the rest (the AEADs kTLS asks the crypto API for --
# gcm(aes), rfc7539(chacha20,poly1305) -- with their x86 implementations,
# and sock_diag for TCP: INET_DIAG_ULP_INFO says where a socket's crypto
# runs) are taken where the kernel has them as modules: names change across
# versions (7.x folds ghash, ctr and the x86 chacha/poly1305 glue into the
# kernel or into lib/crypto).
modules=("${vm_ktls_modules[@]}")

build_kernel_pieces() {
    local work=$kdir.tmp
    vm_fetch_kernel_tree "$work" || return 1
    local mroot=$kroot/lib/modules/$kver path
    vm_module_closure "$mroot" "${modules[@]}" || return 1
    local base=$work/base
    mkdir -p "$base/bin" "$base/sbin" "$base/etc" "$base/lib/modules/$kver"
    cp "$busybox" "$base/bin/busybox"
    vm_copy_modules "$mroot" "$base/lib/modules/$kver"
    # What the guest loads (and reports) at boot: the modules this kernel has.
    printf '%s\n' "${mod_got[@]}" >"$base/etc/rpcgate-vm.modules"
    (cd "$base" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$work/base.cpio.gz"
    cp "$vmlinuz" "$work/vmlinuz"
    echo "$kver" >"$work/release"
    printf '%s\n' "${mod_closure[@]}" >"$work/modules.txt"
    rm -rf "$work/x" "$work/base" "$work/deb"
    rm -rf "$kdir"
    mv "$work" "$kdir"
    # The cache's layout before suites: <cache>/linux-image-*.
    rm -rf "$cache"/linux-image-*
}

# Several VM tests may start at once (ctest -j): one builds the kernel
# pieces, the others wait for it (vm_prepare_kernel holds a lock on the
# cache meanwhile).
vm_prepare_kernel "kernel-$kernel" build_kernel_pieces base.cpio.gz
kver=$(cat "$kdir/release")

# ---- the payload: init, the programs and their libraries (every run) ----

# Per run name, so that parallel VM tests keep their own payload and console.
run_dir=$cache/run-${names[0]}-$kernel
rm -rf "$run_dir"
mkdir -p "$run_dir/root/opt/bin" "$run_dir/root/etc"
root=$run_dir/root

copy_with_path() { # copy_with_path FILE: same absolute path inside the guest
    local f=$1
    [ -e "$root$f" ] && return 0
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
}

libdirs=" "
copy_to_opt_bin() { # FILE into /opt/bin, with the shared libraries of a program
    cp -L "$1" "$root/opt/bin/"
    local lib
    while read -r lib; do
        copy_with_path "$lib"
        case $libdirs in *" $(dirname "$lib") "*) ;; *) libdirs+="$(dirname "$lib") " ;; esac
    done < <(vm_shared_libs "$1")
}

guest_cmds=()
for i in "${!cmds[@]}"; do
    read -r -a words <<<"${cmds[$i]}"
    prog=${words[0]}
    [ -x "$prog" ] || die "--run ${names[$i]}: $prog is not an executable file"
    copy_to_opt_bin "$prog"
    args="${words[*]:1}"
    guest_cmds+=("/opt/bin/$(basename "$prog")${args:+ $args}")
done

for f in ${adds[@]+"${adds[@]}"}; do
    [ -f "$f" ] || die "--add $f: not a file"
    copy_to_opt_bin "$f"
done

{
    echo "export LD_LIBRARY_PATH=$(echo $libdirs | tr ' ' ':')"
    for e in "${envs[@]}"; do printf 'export %q\n' "$e"; done
} >"$root/etc/rpcgate-vm.env"
: >"$root/etc/rpcgate-vm.tests"
for i in "${!names[@]}"; do
    printf '%s %s\n' "${names[$i]}" "${guest_cmds[$i]}" >>"$root/etc/rpcgate-vm.tests"
done
cp "$(dirname "$0")/guest_init.sh" "$root/init"
chmod 755 "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$run_dir/payload.cpio.gz"
# Concatenated cpio archives are one initramfs to the kernel: the cached base
# (busybox, modules) and this run's payload.
cat "$kdir/base.cpio.gz" "$run_dir/payload.cpio.gz" >"$run_dir/initrd.cpio.gz"

# ---- boot ----

log=$run_dir/console.log
say "booting $kver under qemu (tcg), at most ${timeout_s}s; console: $log"
start=$(date +%s)
set +e
# -cpu max: TCG then emulates AES-NI and PCLMULQDQ, so aesni-intel loads.
# -no-reboot + panic=-1: a kernel panic ends qemu instead of looping.
timeout --kill-after=10 "$timeout_s" "$qemu" -accel tcg -cpu max -m "$mem_mib" -smp 1 \
    -nographic -no-reboot -nodefaults -serial stdio -monitor none \
    -kernel "$kdir/vmlinuz" -initrd "$run_dir/initrd.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init" \
    </dev/null >"$log" 2>&1
qrc=$?
set -e
took=$(($(date +%s) - start))
tr -d '\r' <"$log" >"$log.txt"

verdicts=$(grep -o 'RPCGATE-VM [A-Z]* .*' "$log.txt" || true)
fail=0
if [ $qrc = 124 ] || [ $qrc = 137 ]; then
    say "the guest did not finish within ${timeout_s}s (killed)"
    fail=1
elif ! grep -q 'RPCGATE-VM END' "$log.txt"; then
    say "the guest stopped without its END line (qemu exit $qrc)"
    fail=1
fi
grep -q "RPCGATE-VM BOOT" "$log.txt" || { say "the guest never booted"; fail=1; }
while read -r line; do
    case $line in *" MODULE "*" fail"*) say "guest: $line"; fail=1 ;; esac
done <<<"$verdicts"
grep -E 'RPCGATE-VM (MEMORY|OOM) ' <<<"$verdicts" | sed 's/^RPCGATE-VM /guest: /' >&2 || true
for n in "${names[@]}"; do
    if grep -q "RPCGATE-VM PASS $n\$" <<<"$verdicts"; then
        say "PASS $n"
    elif v=$(grep "RPCGATE-VM FAIL $n " <<<"$verdicts"); then
        why=${v##* }
        grep -q "RPCGATE-VM OOM $n:" <<<"$verdicts" && why+=", the OOM killer: raise --mem"
        say "FAIL $n ($why)"
        fail=1
    else
        say "FAIL $n (no verdict)"
        fail=1
    fi
done
if [ $fail != 0 ]; then
    echo "---- guest console (last 150 lines) ----" >&2
    tail -n 150 "$log.txt" >&2
    die "VM tests failed after ${took}s"
fi
# Guest uptime at BOOT and END: the boot and the tests, per kernel (the
# figures tests/vm/README.md gives).
boot_s=$(sed -n 's/.*RPCGATE-VM BOOT [^ ]* \([0-9.]*\).*/\1/p' "$log.txt" | head -n 1)
end_s=$(sed -n 's/.*RPCGATE-VM END \([0-9.]*\).*/\1/p' "$log.txt" | head -n 1)
if [ -n "$boot_s" ] && [ -n "$end_s" ]; then
    say "$kernel ($kver): boot ${boot_s}s, tests $(awk -v a="$boot_s" -v b="$end_s" 'BEGIN { printf "%.1f", b - a }')s (guest clock)"
fi
say "all ${#names[@]} passed in the guest ($kver, ${took}s including boot)"
