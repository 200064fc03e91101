#!/bin/bash
# An NFSv3 mount through `--tls required`, as the Linux client does one
# (mount -o vers=3,xprtsec=tls): portmap and MOUNT in plaintext, NFS in TLS.
#
#   rpcgate B: --tls required (default --require-tls-for nfs,nfs_acl) in front
#              of nfs-ganesha, NFS + MOUNT + NLM routed;
#   libtirpc straight to B, in plaintext: portmap GETPORT, MOUNT MNT and an NLM
#              NULL are served; an NFS NULL gets AUTH_TOOWEAK, and
#              tls_too_weak_total moves while tls_plaintext_allowed_total counts
#              the others;
#   libnfs nfs-cp (plaintext) -> rpcgate A (route nfs with tls=required, route
#              mount without) -> B: the file goes in and out through NFS over
#              TLS, mounted through MOUNT in plaintext;
#   B with --require-tls-for all: the MNT is refused too (the old behaviour,
#              still there for who asks for it).
#
#   nfs_v3_mount_policy.sh RPCGATE TIRPC_MOUNT_CLIENT MAKE_CERTS STATEDIR
#   (exit 77: a peer cannot run here)
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 RPCGATE TIRPC_MOUNT_CLIENT MAKE_CERTS STATEDIR" >&2; exit 2; }
rpcgate=$1 mount_client=$2 make_certs=$3 state=$4
peers=$(cd "$(dirname "$0")/../peers" && pwd)
. "$peers/peer_lib.sh"
for tool in nfs-cp; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed" >&2; exit 77; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-v3policy.XXXXXX")
pids=()
trap 'for p in "${pids[@]}"; do peer_stop "$p" 5; done; "$peers/ganesha.sh" stop "$state" || true; rm -rf "$work"' EXIT
rc=0
peer_ganesha_start "$state" || rc=$?
[ "$rc" -eq 0 ] || exit "$rc"
sh "$make_certs" "$work/certs"

fail() {
    echo "FAIL: $*" >&2
    for f in a b c; do
        [ -f "$work/$f.log" ] || continue
        echo "rpcgate $f log tail:" >&2; tail -n 15 "$work/$f.log" | sed 's/^/  | /' >&2
    done
    exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# gateway NAME PORT ADMIN_PORT ARGS...: starts rpcgate, waits for its port.
gateway() {
    local name=$1 port=$2 admin=$3
    shift 3
    "$rpcgate" --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" --shards 2 \
        --no-reserved-port "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    peer_wait_until 10 port_open "$port" || fail "rpcgate $name did not start"
}

tls_b=(--tls required --cert "$work/certs/server.pem" --key "$work/certs/server.key")
routes_b=(--backend "nfs=127.0.0.1:$NFS_PORT" --backend "mount=127.0.0.1:$MNT_PORT"
          --backend "nlm=127.0.0.1:$NLM_PORT")
b_port=$(peer_free_port) b_admin=$(peer_free_port)
gateway b "$b_port" "$b_admin" "${tls_b[@]}" "${routes_b[@]}"
grep -q "TLS demanded for nfs,nfs_acl" "$work/b.log" || fail "B did not log its per-program policy"

# 1. The plaintext steps of mount.nfs, straight to B with libtirpc.
"$mount_client" 127.0.0.1 "$b_port" getport 100005 3 mnt "$EXPORT" null 100021 4 \
    tooweak 100003 3 >"$work/tirpc.out" 2>&1 || { cat "$work/tirpc.out" >&2; fail "libtirpc steps"; }
sed 's/^/  libtirpc -> B (plaintext): /' "$work/tirpc.out"
grep -q "getport 100005 3: port $b_port\$" "$work/tirpc.out" || fail "GETPORT MOUNT is not B's port"
too_weak=$(peer_metric "$b_admin" tls_too_weak_total)
allowed=$(peer_metric "$b_admin" tls_plaintext_allowed_total)
echo "B: tls_too_weak_total $too_weak, tls_plaintext_allowed_total $allowed"
[ "$too_weak" = 1 ] || fail "tls_too_weak_total is $too_weak after one plaintext NFS call"
# GETPORT (answered by B), MNT, NLM NULL.
[ "$allowed" = 3 ] || fail "tls_plaintext_allowed_total is $allowed, expected 3"

# 2. The whole mount and I/O with libnfs, through A: NFS over TLS, MOUNT plain.
a_port=$(peer_free_port) a_admin=$(peer_free_port)
gateway a "$a_port" "$a_admin" --backend "nfs=127.0.0.1:$b_port,tls=required" \
    --backend "mount=127.0.0.1:$b_port" --upstream-ca "$work/certs/ca.pem"
head -c $((4 << 20)) /dev/urandom >"$work/in.bin"
url="nfs://127.0.0.1$EXPORT/policy.bin?nfsport=$a_port&mountport=$a_port"
peer_nfs_roundtrip "$work/in.bin" "$url" "$work/out.bin" >/dev/null || fail "nfs-cp through A -> B"
cmp "$work/in.bin" "$EXPORT_DIR/policy.bin" || fail "the file on the export differs"
up_tls=$(peer_metric "$a_admin" upstream_tls_total)
b_sessions=$(peer_metric "$b_admin" tls_sessions_total)
allowed2=$(peer_metric "$b_admin" tls_plaintext_allowed_total)
too_weak2=$(peer_metric "$b_admin" tls_too_weak_total)
echo "libnfs -> A -> B: 4 MiB in and out, identical; A upstream_tls_total $up_tls," \
    "B tls_sessions_total $b_sessions, tls_plaintext_allowed_total $allowed2, too_weak $too_weak2"
[ "$up_tls" != missing ] && [ "$up_tls" -ge 1 ] || fail "A made no upstream TLS connection"
[ "$b_sessions" -ge 1 ] || fail "B saw no TLS session"
[ "$allowed2" -gt "$allowed" ] || fail "the MOUNT calls through A did not reach B in plaintext"
[ "$too_weak2" = 1 ] || fail "B refused calls of the libnfs run ($too_weak2 AUTH_TOOWEAK)"

# 3. --require-tls-for all: MOUNT in plaintext is refused as before.
c_port=$(peer_free_port) c_admin=$(peer_free_port)
gateway c "$c_port" "$c_admin" "${tls_b[@]}" "${routes_b[@]}" --require-tls-for all
if "$mount_client" 127.0.0.1 "$c_port" mnt "$EXPORT" >"$work/c.out" 2>&1; then
    fail "--require-tls-for all: MNT in plaintext was served: $(cat "$work/c.out")"
fi
grep -q "Authentication error" "$work/c.out" || fail "--require-tls-for all: $(cat "$work/c.out")"
"$mount_client" 127.0.0.1 "$c_port" tooweak 100005 3 >/dev/null || fail "MOUNT NULL not AUTH_TOOWEAK"
echo "--require-tls-for all: MOUNT in plaintext refused ($(head -1 "$work/c.out"))"
