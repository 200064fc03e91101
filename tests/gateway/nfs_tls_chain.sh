#!/bin/bash
# NFS over RPC-with-TLS end to end, with a real client and server:
#
#   libnfs nfs-cp (plaintext) -> rpcgate A (plaintext in, --upstream-tls required)
#     -> rpcgate B (--tls required in, plaintext out) -> nfs-ganesha
#
#   - a SIZE_MIB random file copied in and back out through the chain is
#     byte-identical (and the export's own copy too);
#   - tshark, capturing the A -> B port the whole time, finds each connection's
#     AUTH_TLS probe and STARTTLS reply in clear and after them TLS records
#     only: no NFS or MOUNT procedure can be decoded there;
#   - A straight in front of ganesha, which answers the probe with
#     AUTH_REJECTEDCRED: `opportunistic` lists the export in plaintext and logs
#     why; `required` refuses with a clear error and closes the client.
#
#   nfs_tls_chain.sh RPCGATE MAKE_CERTS STATEDIR [SIZE_MIB]   (exit 77: a peer cannot run)
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 RPCGATE MAKE_CERTS STATEDIR [SIZE_MIB]" >&2; exit 2; }
rpcgate=$1 make_certs=$2 state=$3 size_mib=${4:-100}
peers=$(cd "$(dirname "$0")/../peers" && pwd)
. "$peers/peer_lib.sh"
for tool in nfs-cp nfs-ls tshark; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed" >&2; exit 77; }
done
[ "$(id -u)" -eq 0 ] || { echo "SKIP: capturing on loopback with tshark needs root" >&2; exit 77; }

work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-nfstls.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do peer_stop "$p" 5; done
    "$peers/ganesha.sh" stop "$state" || true
    # RPCGATE_KEEP_WORK=1 keeps the logs and the capture for a look.
    if [ "${RPCGATE_KEEP_WORK:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

peer_ganesha_start "$state" || exit  # 77: it cannot run here
sh "$make_certs" "$work/certs"

fail() {
    echo "FAIL: $*" >&2
    for f in a b a2 a3; do
        [ -f "$work/$f.log" ] || continue
        echo "rpcgate $f log tail:" >&2; tail -n 15 "$work/$f.log" | sed 's/^/  | /' >&2
    done
    echo "ganesha log tail:" >&2; tail -n 10 "$GANESHA_LOG" | sed 's/^/  | /' >&2
    exit 1
}

# gateway NAME PORT ARGS...: starts rpcgate, waits for its NFSv3 NULL.
gateway() {
    local name=$1 port=$2
    shift 2
    "$rpcgate" --listen "127.0.0.1:$port" --shards 2 --no-reserved-port "$@" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
    eval "${name}_pid=$!"
}

b_port=$(peer_free_port)
gateway b "$b_port" --tls required --cert "$work/certs/server.pem" \
    --key "$work/certs/server.key" --backend "nfs=127.0.0.1:$NFS_PORT" \
    --backend "mount=127.0.0.1:$MNT_PORT"
a_port=$(peer_free_port)
gateway a "$a_port" --backend "nfs=127.0.0.1:$b_port" --backend "mount=127.0.0.1:$b_port" \
    --upstream-tls required --upstream-ca "$work/certs/ca.pem"
# B answers a plaintext NULL only with AUTH_TOOWEAK; A's NULL goes through TLS.
peer_wait_until 10 peer_rpc_null 127.0.0.1 "$a_port" 100003 3 ||
    fail "the chain did not answer a NULL call on NFSv3"

# Capture A -> B from here on. dumpcap says "Capturing on" once it listens.
# tshark loads every dissector first: 16 s on a loaded 2-core machine.
tshark -i lo -f "tcp port $b_port" -w "$work/ab.pcap" >"$work/tshark.log" 2>&1 &
pids+=($!)
peer_wait_until 60 grep -q "Capturing on" "$work/tshark.log" ||
    fail "tshark did not start capturing within 60 s: $(cat "$work/tshark.log")"

url() { echo "nfs://127.0.0.1$1?nfsport=$a_port&mountport=$a_port${2:+&$2}"; }
ms() { date +%s%3N; }
head -c $((size_mib << 20)) /dev/urandom >"$work/in.bin"
t0=$(ms)
nfs-cp "$work/in.bin" "$(url "$EXPORT/chain.bin")" >/dev/null || fail "nfs-cp in through the chain"
t1=$(ms)
nfs-cp "$(url "$EXPORT/chain.bin")" "$work/out.bin" >/dev/null || fail "nfs-cp out through the chain"
t2=$(ms)
cmp "$work/in.bin" "$EXPORT_DIR/chain.bin" || fail "the file on the export differs from the source"
cmp "$work/in.bin" "$work/out.bin" || fail "the file read back through the chain differs"
echo "NFSv3 through rpcgate A -> TLS -> rpcgate B: ${size_mib} MiB in $((t1 - t0)) ms, out $((t2 - t1)) ms, identical"
listing=$(nfs-ls "nfs://127.0.0.1$EXPORT?version=4&nfsport=$a_port") || fail "nfs-ls NFSv4 through the chain"
grep -q " $((size_mib << 20)) chain.bin\$" <<<"$listing" || fail "nfs-ls NFSv4 does not show chain.bin"
echo "nfs-ls NFSv4 through the chain: chain.bin listed with its size"

# Let the capture flush, then read it.
tshark_pid=${pids[-1]}
peer_stop "$tshark_pid" 10
unset 'pids[-1]'
# Every read of the capture must work (peer_tshark_read fails on a filter or
# field tshark does not know). ts_read NAME ARGS...: into $work/NAME.txt.
ts_read() {
    local name=$1 msg
    shift
    msg=$(peer_tshark_read "$work/ab.pcap" "$work/$name.txt" "$@") || fail "$msg"
}
lines() { wc -l <"$work/$1.txt"; }
ts_read frames -T fields -e frame.number
frames=$(lines frames)
[ "$frames" -gt $((size_mib * 8)) ] || fail "the capture holds only $frames frames"
# RPC is found by tshark's heuristic on any port: only the probes (NULL with
# AUTH_TLS, flavor 7) and their STARTTLS replies may show up as RPC.
ts_read rpc -Y rpc -T fields -E occurrence=f -e rpc.msgtyp -e rpc.auth.flavor
probes=$(awk '$1 == 0 && $2 == 7' "$work/rpc.txt" | wc -l)
other_calls=$(awk '$1 == 0 && $2 != 7' "$work/rpc.txt" | wc -l)
replies=$(awk '$1 == 1' "$work/rpc.txt" | wc -l)
# The probes are NULL calls of NFS and MOUNT: any other procedure is a leak.
# The same filter with `== 0` must find the probes themselves, so that it is
# known to match NFS and MOUNT in this capture at all.
nfs_or_mount="(nfs || mount)"
ts_read nfs_procs -Y "$nfs_or_mount && rpc.procedure != 0"
nfs_frames=$(lines nfs_procs)
ts_read nfs_null -Y "$nfs_or_mount && rpc.procedure == 0"
nfs_null=$(lines nfs_null)
# Read as TLS (after the heuristic picked RPC for the probe, tshark would
# not look again): TLS 1.3 application data records. The outer record type of
# TLS 1.3 is `tls.record.opaque_type` (`tls.record.content_type` is the inner,
# encrypted one, which tshark cannot see: `content_type == 23` matches nothing).
ts_read tls_app -d "tcp.port==$b_port,tls" -Y "tls.record.opaque_type == 23"
tls_frames=$(lines tls_app)
# The probe replies carry the verifier AUTH_NONE "STARTTLS" (hex 5354415254544c53).
ts_read replies -Y "rpc.msgtyp == 1" -T fields -e tcp.payload
starttls=$(grep -c 5354415254544c53 "$work/replies.txt" || true)
echo "capture A -> B: $frames frames; RPC in clear: $probes AUTH_TLS probe(s), $replies reply(ies), $other_calls other call(s); NFS/MOUNT procedures other than the probes' NULL: $nfs_frames (NULL: $nfs_null); TLS application-data frames: $tls_frames"
[ "$probes" -ge 1 ] || fail "no AUTH_TLS probe in clear on the A -> B port"
[ "$replies" -eq "$probes" ] || fail "$replies replies in clear for $probes probes"
[ "$starttls" -eq "$probes" ] || fail "$starttls of $probes probe replies carry the STARTTLS verifier"
[ "$other_calls" -eq 0 ] || fail "$other_calls RPC calls other than the probe went in clear"
[ "$nfs_null" -ge "$probes" ] ||
    fail "the NFS/MOUNT filter found $nfs_null NULL frames for $probes probes: it cannot see NFS here"
[ "$nfs_frames" -eq 0 ] || fail "$nfs_frames NFS/MOUNT frames decodable on the A -> B port"
[ "$tls_frames" -gt 100 ] || fail "only $tls_frames TLS application-data frames on the A -> B port"
grep -q "tls established" "$work/a.log" || fail "A logged no established upstream TLS session"

# ganesha refuses the probe with AUTH_REJECTEDCRED.
a2_port=$(peer_free_port)
gateway a2 "$a2_port" --backend "nfs=127.0.0.1:$NFS_PORT" --backend "mount=127.0.0.1:$MNT_PORT" \
    --upstream-tls opportunistic --upstream-ca "$work/certs/ca.pem"
peer_wait_until 10 peer_rpc_null 127.0.0.1 "$a2_port" 100003 3 ||
    fail "opportunistic: no NULL reply in plaintext from ganesha"
nfs-ls "nfs://127.0.0.1$EXPORT?version=4&nfsport=$a2_port" | grep -q "chain.bin" ||
    fail "opportunistic: nfs-ls through A in front of ganesha"
grep -q "does not offer RPC-with-TLS (probe refused: MSG_DENIED AUTH_ERROR AUTH_REJECTEDCRED)" "$work/a2.log" ||
    fail "opportunistic: no log line saying ganesha refused the probe"
echo "opportunistic towards ganesha: plaintext after AUTH_REJECTEDCRED, logged"

a3_port=$(peer_free_port)
gateway a3 "$a3_port" --backend "nfs=127.0.0.1:$NFS_PORT" --backend "mount=127.0.0.1:$MNT_PORT" \
    --upstream-tls required --upstream-ca "$work/certs/ca.pem"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
peer_wait_until 10 port_open "$a3_port" || fail "required: rpcgate did not start"
if timeout 20 nfs-ls "nfs://127.0.0.1$EXPORT?version=4&nfsport=$a3_port" >"$work/ls3.out" 2>&1; then
    fail "required: nfs-ls worked although ganesha refused TLS"
fi
peer_wait_until 10 grep -q "upstream TLS required failed: probe refused: MSG_DENIED AUTH_ERROR AUTH_REJECTEDCRED" \
    "$work/a3.log" || fail "required: no clear error in the log"
echo "required towards ganesha: refused ($(grep -o 'upstream TLS required failed: [^(]*' "$work/a3.log" | head -1)), client closed"
