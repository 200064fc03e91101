#!/bin/busybox sh
# PID 1 of the kTLS test guest (tests/vm/run_vm.sh builds the initramfs).
# Loads the kTLS modules, runs each test of /etc/rpcgate-vm.tests
# ("NAME COMMAND...") and reports on the serial console with the
# RPCGATE-VM lines that run_vm.sh parses, then powers off.
/bin/busybox --install -s /bin
ln -s /bin/busybox /sbin/modprobe # the kernel's request_module() runs /sbin/modprobe
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
exec </dev/console >/dev/console 2>&1

say() { echo "RPCGATE-VM $*"; }
uptime_s() { cut -d ' ' -f 1 /proc/uptime; }
say "BOOT $(uname -r) $(uptime_s)"
ip link set lo up
# The kTLS modules this kernel has (run_vm.sh lists them when it builds the
# base initramfs: names differ across kernel versions).
for m in $(cat /etc/rpcgate-vm.modules); do
    if modprobe "$m" 2>/dev/null; then say "MODULE $m ok"; else say "MODULE $m fail"; fi
done
. /etc/rpcgate-vm.env
# Per test: the host's whole-boot timeout is the backstop; this keeps one
# hung test from eating the others' time.
per_test=${RPCGATE_VM_TEST_TIMEOUT:-240}
# Each test in its own memory cgroup: its peak is reported (the guest's RAM
# holds the initramfs too, and an ASan build's quarantine is large), and a
# kill by the OOM killer is told apart from the timeout's.
cgroot=""
if mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null &&
    echo +memory >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    cgroot=/sys/fs/cgroup
fi
say "MEMORY $(sed -n 's/^MemAvailable: *//p' /proc/meminfo) available before the tests"
while read -r name cmd; do
    [ -n "$name" ] || continue
    say "BEGIN $name"
    cd /tmp
    cg=/nonexistent
    [ -n "$cgroot" ] && mkdir -p "$cgroot/$name" && cg=$cgroot/$name
    # The shell that execs the test moves itself into the cgroup first.
    # shellcheck disable=SC2086,SC2016 # the command line is split as written
    sh -c '[ -d "$1" ] && echo $$ >"$1/cgroup.procs"; shift; exec timeout -s KILL "$@"' \
        sh "$cg" "$per_test" $cmd
    rc=$?
    if [ -d "$cg" ]; then
        peak=$(cat "$cg/memory.peak" 2>/dev/null || echo 0)
        say "MEMORY $name peak $((peak / 1048576)) MiB"
        oom=$(sed -n 's/^oom_kill //p' "$cg/memory.events")
        [ "${oom:-0}" = 0 ] ||
            say "OOM $name: $oom process(es) killed by the kernel's OOM killer (guest RAM $(sed -n 's/^MemTotal: *//p' /proc/meminfo))"
    fi
    if [ $rc = 0 ]; then say "PASS $name"; else say "FAIL $name rc=$rc"; fi
done </etc/rpcgate-vm.tests
echo "--- /proc/net/tls_stat"
cat /proc/net/tls_stat 2>&1
say "END $(uptime_s)"
sync
poweroff -f
