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
while read -r name cmd; do
    [ -n "$name" ] || continue
    say "BEGIN $name"
    cd /tmp
    # shellcheck disable=SC2086 # the command line is split as written
    timeout -s KILL "$per_test" $cmd
    rc=$?
    if [ $rc = 0 ]; then say "PASS $name"; else say "FAIL $name rc=$rc"; fi
done </etc/rpcgate-vm.tests
echo "--- /proc/net/tls_stat"
cat /proc/net/tls_stat 2>&1
say "END $(uptime_s)"
sync
poweroff -f
