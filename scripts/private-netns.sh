#!/bin/bash
# private-netns.sh CMD...: run CMD (as root) in its own network and mount
# namespaces with its own rpcbind, so that an NFS benchmark or test started
# beside a CI run cannot touch the host's rpcbind registrations or ports:
# nfs-ganesha registers NFS and MOUNT with the rpcbind it finds, through
# /run/rpcbind.sock, which a private tmpfs on /run hides. The namespace has
# loopback and one veth address (glibc's getaddrinfo with AI_ADDRCONFIG, which
# ganesha uses, finds no IPv4 address without one besides loopback, and then
# cannot resolve "127.0.0.1"). Exits with CMD's status.
#
#   sudo scripts/private-netns.sh bench/e2e/nfs_report.sh build/release /tmp/nfs-report
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 CMD..." >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root (unshare -n -m)" >&2; exit 2; }
exec unshare -n -m --propagation private bash -c '
set -e
ip link set lo up
ip link add rg0 type veth peer name rg1
ip addr add 10.211.0.1/24 dev rg0
ip link set rg1 up
ip link set rg0 up
mount -t tmpfs tmpfs /run
mkdir -p /run/rpcbind /run/lock
rpcbind -w
for i in $(seq 100); do rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.1; done
rpcinfo -p 127.0.0.1 >/dev/null || { echo "private-netns.sh: rpcbind does not answer" >&2; exit 1; }
set +e
"$@"
rc=$?
pkill -x -n rpcbind
exit $rc' bash "$@"
