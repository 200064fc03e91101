#!/bin/bash
# Real NFS through the gateway: libnfs (nfs-cp, nfs-ls) -> rpcgate -> nfs-ganesha.
#   - NFSv3: MOUNT and NFS both through the gateway's one port
#     (nfs://127.0.0.1/export/f?nfsport=GW&mountport=GW, no rpcbind lookup);
#     a 100 MiB random file copied in and back out, cmp'd against the source
#     and against the export's own copy;
#   - nfs-ls with version=4 through the gateway lists it.
#
#   nfs_through_gateway.sh RPCGATE STATEDIR [SIZE_MIB]   (exit 77: ganesha cannot run)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 RPCGATE STATEDIR [SIZE_MIB]" >&2; exit 2; }
rpcgate=$1 state=$2 size_mib=${3:-100}
peers=$(cd "$(dirname "$0")/../peers" && pwd)
. "$peers/peer_lib.sh"
for tool in nfs-cp nfs-ls; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (libnfs-utils)" >&2; exit 77; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-nfsgw.XXXXXX")
gw_pid=
cleanup() {
    [ -n "$gw_pid" ] && peer_stop "$gw_pid" 5
    "$peers/ganesha.sh" stop "$state" || true
    rm -rf "$work"
}
trap cleanup EXIT

peer_ganesha_start "$state" || exit  # 77: it cannot run here

fail() {
    echo "FAIL: $*" >&2
    echo "rpcgate log tail:" >&2; tail -n 20 "$work/gw.log" | sed 's/^/  | /' >&2
    echo "ganesha log tail:" >&2; tail -n 20 "$GANESHA_LOG" | sed 's/^/  | /' >&2
    exit 1
}

gw_port=$(peer_free_port)
"$rpcgate" --listen "127.0.0.1:$gw_port" --backend "nfs=127.0.0.1:$NFS_PORT" \
    --backend "mount=127.0.0.1:$MNT_PORT" --shards 2 >"$work/gw.log" 2>&1 &
gw_pid=$!
peer_wait_until 10 peer_rpc_null 127.0.0.1 "$gw_port" 100003 3 || fail "gateway did not answer a NULL call on NFSv3"

url() { echo "nfs://127.0.0.1$1?nfsport=$gw_port&mountport=$gw_port${2:+&$2}"; }
ms() { date +%s%3N; }

head -c $((size_mib << 20)) /dev/urandom >"$work/in.bin"
t0=$(ms)
nfs-cp "$work/in.bin" "$(url "$EXPORT/big.bin")" >/dev/null || fail "nfs-cp in through the gateway"
t1=$(ms)
nfs-cp "$(url "$EXPORT/big.bin")" "$work/out.bin" >/dev/null || fail "nfs-cp out through the gateway"
t2=$(ms)
cmp "$work/in.bin" "$EXPORT_DIR/big.bin" || fail "the file on the export differs from the source"
cmp "$work/in.bin" "$work/out.bin" || fail "the file read back through the gateway differs"
echo "NFSv3 through rpcgate: ${size_mib} MiB in $((t1 - t0)) ms, out $((t2 - t1)) ms, identical"

listing=$(nfs-ls "nfs://127.0.0.1$EXPORT?version=4&nfsport=$gw_port") || fail "nfs-ls NFSv4 through the gateway"
grep -q " $((size_mib << 20)) big.bin\$" <<<"$listing" || fail "nfs-ls NFSv4 does not show big.bin: $listing"
echo "nfs-ls NFSv4 through rpcgate: big.bin listed with its size"

peer_stop "$gw_pid" 10
wait "$gw_pid" 2>/dev/null && st=0 || st=$?
gw_pid=
[ "$st" -eq 0 ] || fail "rpcgate exited with status $st on SIGTERM"
grep -q "stopped: " "$work/gw.log" || fail "rpcgate did not log its stop summary"
grep "stopped: " "$work/gw.log" | sed 's/^.*stopped: /gateway counters: /'
