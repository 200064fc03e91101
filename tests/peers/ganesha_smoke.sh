#!/bin/bash
# nfs-ganesha and libnfs agree with each other, before any gateway is put
# between them:
#   - NFSv3 (MOUNT + NFS on the ports ganesha.sh printed, no rpcbind lookup):
#     nfs-cp a 10 MiB random file into /export and back out, cmp;
#   - nfs-ls of /export with NFSv3 and with version=4 both list it;
#   - the FSAL MEM export /mem round-trips a 2 MiB file.
#
#   ganesha_smoke.sh STATEDIR      (exit 77: ganesha cannot run on this machine)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/peer_lib.sh"

[ $# -eq 1 ] || { echo "usage: $0 STATEDIR" >&2; exit 2; }
state=$1
for tool in nfs-cp nfs-ls; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (libnfs-utils)" >&2; exit 77; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-nfs.XXXXXX")
cleanup() {
    "$here/ganesha.sh" stop "$state" || true
    rm -rf "$work"
}
trap cleanup EXIT
peer_ganesha_start "$state" || exit

url() { # url PATH [EXTRA_ARGS]
    echo "nfs://127.0.0.1$1?nfsport=$NFS_PORT&mountport=$MNT_PORT${2:+&$2}"
}
fail() {
    echo "FAIL: $*" >&2
    echo "ganesha log tail:" >&2
    tail -n 20 "$GANESHA_LOG" | sed 's/^/  | /' >&2
    exit 1
}

head -c $((10 << 20)) /dev/urandom >"$work/in.bin"
times=$(peer_nfs_roundtrip "$work/in.bin" "$(url "$EXPORT/smoke.bin")" "$work/out.bin") ||
    fail "NFSv3 round trip through $EXPORT"
cmp "$work/in.bin" "$EXPORT_DIR/smoke.bin" || fail "the file on the export differs from what was sent"
echo "NFSv3 $EXPORT ($EXPORT_FS): 10 MiB $times, identical"

listing=$(nfs-ls "$(url "$EXPORT")") || fail "nfs-ls NFSv3"
grep -q " $((10 << 20)) smoke.bin\$" <<<"$listing" || fail "nfs-ls NFSv3 does not show smoke.bin: $listing"
# NFSv4 needs no MOUNT: only the NFS port.
listing=$(nfs-ls "nfs://127.0.0.1$EXPORT?version=4&nfsport=$NFS_PORT") || fail "nfs-ls NFSv4"
grep -q " $((10 << 20)) smoke.bin\$" <<<"$listing" || fail "nfs-ls NFSv4 does not show smoke.bin: $listing"
echo "nfs-ls NFSv3 and NFSv4: smoke.bin listed with its size"

# FSAL MEM keeps Inode_Size (2 MiB) bytes per file: stay within it.
head -c $((2 << 20)) /dev/urandom >"$work/mem.bin"
times=$(peer_nfs_roundtrip "$work/mem.bin" "$(url "$MEM_EXPORT/mem.bin")" "$work/mem.out") ||
    fail "NFSv3 round trip through $MEM_EXPORT (FSAL MEM)"
echo "NFSv3 $MEM_EXPORT (FSAL MEM): 2 MiB $times, identical"
