#!/bin/sh
# PID 1 of the NFS guest (tests/vm/nfs_vm.sh builds it: Debian 13 userspace
# with nfs-kernel-server, nfs-common and ktls-utils, as an initramfs).
#
# 1. knfsd + tlshd: exports /srv/tls (xprtsec=tls) and /srv/mtls
#    (xprtsec=mtls); the host writes and reads a file in each through
#    rpcgate's client role, then a file `done` holding the data's sha256; the
#    guest checks its own copy against it.
# 2. The Linux client: mounts the host's rpcgate (server role) with
#    xprtsec=tls and mtls (NFSv4.1, nfs-ganesha behind it) and tls and mtls
#    (NFSv4.2, this guest's knfsd behind it), reads the server's file and
#    writes one of its own, and reports the sha256 of both; then tries the
#    mtls gateway without a client certificate (both ways) and reports how
#    the mount ends.
#
# Reports on the serial console (nfs_vm.sh reads these):
#   RPCGATE-VM BOOT <release> <uptime>      RPCGATE-VM KNFSD <uptime>
#   RPCGATE-VM KGW up <uptime> | KGW fail <log tail>
#   RPCGATE-VM CHECK <name> ok|fail <detail>
#   RPCGATE-VM SHA <name> <sha256>          RPCGATE-VM TIME <name> <ms>
#   RPCGATE-VM TRACE <handshake tracepoint line>
#   RPCGATE-VM END <uptime>
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
while read -r fstype dir; do mount -t "$fstype" "$fstype" "$dir"; done <<EOF
proc /proc
sysfs /sys
devtmpfs /dev
tmpfs /run
tmpfs /tmp
EOF
exec </dev/console >/dev/console 2>&1

say() { echo "RPCGATE-VM $*"; }
uptime_s() { cut -d ' ' -f 1 /proc/uptime; }
ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
check() { # check NAME DETAIL CMD...: one CHECK line, ok when CMD succeeds
    local name=$1 detail=$2
    shift 2
    if "$@"; then say "CHECK $name ok $detail"; else say "CHECK $name fail $detail"; fi
}
finish() {
    echo "--- /proc/net/tls_stat"
    cat /proc/net/tls_stat
    grep -E 'TlsCurr|TlsTx|TlsRx|TlsDecryptError' /proc/net/tls_stat | while read -r k v; do
        say "TLSSTAT $k $v"
    done
    grep handshake_ /sys/kernel/tracing/trace 2>/dev/null | while read -r line; do say "TRACE $line"; done
    for f in /tmp/kgw-tls.log /tmp/kgw-mtls.log; do
        echo "--- $f (tail)"
        tail -n 12 "$f" 2>/dev/null
    done
    echo "--- tlshd log (tail)"
    tail -n 40 /tmp/tlshd.log 2>/dev/null
    echo "--- the initramfs (unpack time)"
    dmesg | grep -iE 'initramfs|initrd'
    echo "--- dmesg (tail)"
    dmesg | tail -n 40
    say "END $(uptime_s)"
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}

say "BOOT $(uname -r) $(uptime_s)"
. /etc/rpcgate-vm.env
# The modules came without kmod's indexes (the host has no kmod): make them.
depmod -a "$(uname -r)" 2>/dev/null
load() { if modprobe "$1" 2>/dev/null; then say "MODULE $1 ok"; else say "MODULE $1 fail"; fi; }
# The NFS client's modules (13 s of TCG on 7.x) load while knfsd starts and
# the host runs its part; the client waits for them.
client_modules_pid=""
for m in $(cat /etc/rpcgate-vm.modules); do
    case $m in
        nfsv4) load "$m" & client_modules_pid=$! ;;
        *) load "$m" ;;
    esac
done

# slirp: the guest is 10.0.2.15, the host 10.0.2.2.
hostname knfsd-guest
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

# The kernel's handshake upcalls, timed: submit (knfsd or the client asks
# for a handshake) to done (tlshd's answer).
if mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null &&
    [ -d /sys/kernel/tracing/events/handshake ]; then
    echo 1 >/sys/kernel/tracing/events/handshake/enable
fi

# tlshd: one daemon for both sides (knfsd's handshakes and the client's).
# tlshd.conf(5); a client certificate only when CLIENT_CERT=1.
tlshd_conf() {
    {
        printf '[debug]\nloglevel=%s\ntls=0\nnl=0\n\n[authenticate]\n\n' "${TLSHD_LOGLEVEL:-1}"
        printf '[authenticate.client]\nx509.truststore=/etc/rpcgate-vm/ca.pem\n'
        if [ "$1" = 1 ]; then
            printf 'x509.certificate=/etc/rpcgate-vm/client.pem\nx509.private_key=/etc/rpcgate-vm/client.key\n'
        fi
        printf '\n[authenticate.server]\nx509.truststore=/etc/rpcgate-vm/ca.pem\n'
        printf 'x509.certificate=/etc/rpcgate-vm/server.pem\nx509.private_key=/etc/rpcgate-vm/server.key\n'
    } >/etc/tlshd.conf
}
tlshd_pid=""
tlshd_start() { # tlshd_start 0|1: (re)start tlshd, with a client certificate or without
    if [ -n "$tlshd_pid" ]; then
        kill "$tlshd_pid" 2>/dev/null
        wait "$tlshd_pid" 2>/dev/null
    fi
    tlshd_conf "$1"
    echo "--- tlshd start (client certificate: $1) at $(uptime_s)" >>/tmp/tlshd.log
    tlshd -s -c /etc/tlshd.conf >>/tmp/tlshd.log 2>&1 &
    tlshd_pid=$!
}
tlshd_start 0

# knfsd: NFSv3 and v4 on 2049, mountd on 20048 (the host forwards both).
mkdir -p /srv /var/lib/nfs/v4recovery /run/rpcbind /proc/fs/nfsd
mount -t tmpfs -o size=400m srv /srv
mkdir -p /srv/tls /srv/mtls /srv/plain
chmod 0777 /srv/tls /srv/mtls /srv/plain
cat >/etc/exports <<EOF
/srv/tls  *(rw,insecure,no_root_squash,no_subtree_check,fsid=1,xprtsec=tls)
/srv/mtls *(rw,insecure,no_root_squash,no_subtree_check,fsid=2,xprtsec=mtls)
/srv/plain *(rw,insecure,no_root_squash,no_subtree_check,fsid=3)
EOF
mount -t nfsd nfsd /proc/fs/nfsd
# NFSv4's grace period would hold the host's first opens for 90 s.
echo 10 >/proc/fs/nfsd/nfsv4leasetime 2>/dev/null
echo 10 >/proc/fs/nfsd/nfsv4gracetime 2>/dev/null
rpcbind -w
exportfs -ra
rpc.mountd -p 20048
rpc.nfsd -p 2049 4
say "KNFSD $(uptime_s)"
exportfs -v

# ---- 1b. rpcgate in this guest, its upstream TLS in this kernel ----
# The host's build, run by the host's loader with the host's libraries
# (nfs_vm.sh copies them), in front of knfsd: the host's nfs-cp comes in
# through forwarded ports, the gateway's admin port too.
kgw() { # kgw NAME PORT ADMIN_PORT ARGS... (KGW_ARGS: the host's RPCGATE_KGW_ARGS)
    local name=$1 port=$2 admin=$3
    shift 3
    # shellcheck disable=SC2086 # KGW_ARGS is split as written
    /opt/rpcgate/lib/ld-linux-x86-64.so.2 --library-path /opt/rpcgate/lib /opt/rpcgate/rpcgate \
        --listen "0.0.0.0:$port" --admin "0.0.0.0:$admin" --shards 1 --no-reserved-port \
        --ktls on --log-level info --upstream-ca /etc/rpcgate-vm/ca.pem \
        --backend nfs=127.0.0.1:2049 --backend mount=127.0.0.1:20048,tls=off $KGW_ARGS "$@" \
        >"/tmp/kgw-$name.log" 2>&1 </dev/null &
}
kgw tls 3049 9049 --upstream-tls required
kgw mtls 3050 9050 --upstream-tls mtls --upstream-cert /etc/rpcgate-vm/client.pem \
    --upstream-key /etc/rpcgate-vm/client.key
deadline=$(($(ms) + 60000))
while [ "$(ms)" -lt "$deadline" ] && ! { grep -q 'listening on port 3049 (' /tmp/kgw-tls.log &&
    grep -q 'listening on port 3050 (' /tmp/kgw-mtls.log; }; do sleep 0.2; done
if grep -q 'listening on port 3049 (' /tmp/kgw-tls.log && grep -q 'listening on port 3050 (' /tmp/kgw-mtls.log; then
    say "KGW up $(uptime_s)"
else
    say "KGW fail $(tail -n 2 /tmp/kgw-tls.log /tmp/kgw-mtls.log | tr '\n' ' ' | cut -c 1-300)"
fi

# ---- 1. server role: the host's writes and reads through rpcgate ----
for x in tls mtls; do
    deadline=$(($(ms) + ${SERVER_WAIT_S:-150} * 1000))
    while [ ! -s "/srv/$x/done" ] && [ "$(ms)" -lt "$deadline" ]; do sleep 0.2; done
    if [ ! -s "/srv/$x/done" ]; then
        say "CHECK server-$x fail no done file from the host"
        continue
    fi
    want=$(cat "/srv/$x/done")
    got=$(sha256sum "/srv/$x/data.bin" | cut -d ' ' -f 1)
    say "SHA server-$x $got"
    check "server-$x" "sha256 of the guest's copy" [ "$got" = "$want" ]
done
grep -E 'TlsCurr|TlsTx|TlsRx' /proc/net/tls_stat | while read -r k v; do say "TLSSTAT-SERVER $k $v"; done

# ---- 2. client role: the Linux client through the host's rpcgate ----
# to ganesha on the host (NFSv4.1, tls and mtls: CLIENT_MIB each way) and to
# knfsd in this guest (NFSv4.2, tls and mtls: K42_MIB each way, /srv/plain takes
# plaintext from the gateway). ganesha 4.3 fails the 4.2 client's reads
# (READ_PLUS: EIO, the gateway left out too), hence knfsd for 4.2.
[ -z "$client_modules_pid" ] || wait "$client_modules_pid"
mkdir -p /mnt/c
head -c "$((CLIENT_MIB << 20))" /dev/urandom >/tmp/out.bin
head -c "$((K42_MIB << 20))" /dev/urandom >/tmp/out42.bin
head -c "$((K42_MIB << 20))" /dev/urandom >/srv/plain/in.bin
say "SHA client-source $(sha256sum /tmp/out.bin | cut -d ' ' -f 1)"
# client_run NAME PORT EXPORT OPTIONS SOURCE [DIR]: mount rpcgate's EXPORT,
# read in.bin, write SOURCE as out-NAME.bin, unmount. DIR: where knfsd keeps
# EXPORT in this guest (both copies are compared here); without it the host
# compares them (ganesha's export).
client_run() {
    local name=$1 port=$2 export=$3 opts=$4 source=$5 dir=${6:-} t0 got want rc
    t0=$(ms)
    if ! timeout "${MOUNT_TIMEOUT_S:-90}" mount -t nfs -o "$opts,port=$port" "10.0.2.2:$export" /mnt/c; then
        say "CHECK client-$name fail mount -o $opts: exit $? after $(($(ms) - t0)) ms"
        dmesg | tail -n 5
        return
    fi
    say "TIME client-$name-mount $(($(ms) - t0))"
    grep ' /mnt/c ' /proc/mounts
    want=$IN_SHA
    [ -z "$dir" ] || want=$(sha256sum "$dir/in.bin" | cut -d ' ' -f 1)
    t0=$(ms)
    got=$(sha256sum /mnt/c/in.bin | cut -d ' ' -f 1)
    say "TIME client-$name-read $(($(ms) - t0))"
    say "SHA client-$name-read $got"
    check "client-$name-read" "sha256 of in.bin read through the mount" [ "$got" = "$want" ]
    t0=$(ms)
    cp "$source" "/mnt/c/out-$name.bin" && sync
    rc=$?
    say "TIME client-$name-write $(($(ms) - t0))"
    # The transport's connects and the READ/WRITE counts, retransmissions,
    # timeouts and times (nfsiostat's source): a stall shows here.
    sed -n '\|mounted on /mnt/c |,$p' /proc/self/mountstats | grep -E '^[[:space:]]*(xprt|READ|WRITE):' |
        while read -r line; do say "MOUNTSTATS $name $line"; done
    umount /mnt/c
    check "client-$name-write" "cp to the mount" [ "$rc" = 0 ]
    if [ -n "$dir" ]; then
        got=$(sha256sum "$dir/out-$name.bin" | cut -d ' ' -f 1)
        want=$(sha256sum "$source" | cut -d ' ' -f 1)
        check "client-$name-stored" "sha256 of knfsd's copy of out-$name.bin" [ "$got" = "$want" ]
    fi
}
if [ "${DIAG_GANESHA_42:-0}" = 1 ]; then # the READ_PLUS failure, without the gateway
    if mount -t nfs -o "vers=4.2,port=$GANESHA_PORT" 10.0.2.2:/export /mnt/c; then
        head -c 1048576 /mnt/c/in.bin >/dev/null
        say "DIAG ganesha-direct-4.2 read rc=$?"
        umount /mnt/c
    fi
fi
client_run tls41 "$GW_TLS_PORT" /export vers=4.1,xprtsec=tls /tmp/out.bin
client_run tls42 "$GW_KNFSD_PORT" /srv/plain vers=4.2,xprtsec=tls /tmp/out42.bin /srv/plain

# refused_mount NAME TAG OPTIONS: a mount of the mtls gateway that must
# fail; its time and exit status reported (TIME client-NAME, TAG rc=N), a
# mount that went through is a failed CHECK.
refused_mount() {
    local name=$1 tag=$2 opts=$3 t0 rc
    t0=$(ms)
    timeout "${MTLS_REFUSAL_TIMEOUT_S:-60}" mount -t nfs -o "$opts,port=$GW_MTLS_PORT" 10.0.2.2:/export /mnt/c
    rc=$?
    say "TIME client-$name $(($(ms) - t0))"
    say "$tag rc=$rc"
    dmesg | tail -n 8
    if grep -q ' /mnt/c ' /proc/mounts; then
        say "CHECK client-$name fail mounted the mtls port with $opts and no client certificate"
        umount /mnt/c
    fi
}
# mtls without a client certificate: the gateway must refuse the handshake;
# what the kernel makes of that is measured here (nfs_vm.sh asserts it).
tlshd_start 0
refused_mount mtls-nocert MTLS-NOCERT vers=4.1,xprtsec=mtls
# xprtsec=tls (no client certificate offered) to the gateway's mtls port:
# here the gateway is the one that refuses. timeo=50: when the kernel
# misses the refusal (see nfs_vm.sh), it finds out at its first
# retransmission, 5 s on, not the default 60 s.
refused_mount mtls-tlsonly MTLS-TLSONLY vers=4.1,xprtsec=tls,timeo=50,retrans=1
# The same, with the gateway's refusal late on purpose: everything the
# guest sends to the mtls port waits 400 ms (netem on that port only), so
# tlshd has finished and handed the socket to the kernel before the alert
# and FIN come: what the kernel itself does with a refusal, every time.
if tc qdisc add dev eth0 root handle 1: prio 2>/dev/null &&
    tc qdisc add dev eth0 parent 1:3 handle 30: netem delay 400ms &&
    tc filter add dev eth0 parent 1:0 protocol ip prio 1 u32 match ip dport "$GW_MTLS_PORT" 0xffff flowid 1:3; then
    refused_mount mtls-late MTLS-LATE vers=4.1,xprtsec=tls,timeo=50,retrans=1
    tc qdisc del dev eth0 root
else
    say "MTLS-LATE no netem: $(tc qdisc show dev eth0 2>&1 | head -n 1)"
fi
tlshd_start 1
client_run mtls41 "$GW_MTLS_PORT" /export vers=4.1,xprtsec=mtls /tmp/out.bin
client_run mtls42 "$GW_KNFSD_MTLS_PORT" /srv/plain vers=4.2,xprtsec=mtls /tmp/out42.bin /srv/plain
finish
