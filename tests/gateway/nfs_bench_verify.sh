#!/bin/bash
# rpcgate-bench nfs against a real nfs-ganesha: a file written by libnfs
# (nfs-cp) holding the bench's verify pattern is read back byte for byte by
# `rpcgate-bench nfs --verify`
#   - directly (MOUNT on ganesha's port), sequential 64 KiB READs covering it;
#   - directly, a random mix of READ, WRITE (of the same pattern), GETATTR and
#     LOOKUP; the export's copy must still equal the source afterwards;
#   - a copy with one byte flipped: the run must fail with exactly one
#     mismatching READ of one byte (the check can fail);
#   - through rpcgate (NFS and MOUNT on its one port), plaintext;
#   - through rpcgate with --tls required, with --tls starttls (TLS 1.3);
#   - with NFSv4.1 (sessions, PUTROOTFH/LOOKUP), directly and through the
#     TLS gateway.
#
#   nfs_bench_verify.sh RPCGATE RPCGATE_BENCH MAKE_CERTS STATEDIR
#   (exit 77: ganesha or libnfs-utils cannot run here)
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 RPCGATE RPCGATE_BENCH MAKE_CERTS STATEDIR" >&2; exit 2; }
rpcgate=$1 bench=$2 make_certs=$3 state=$4
peers=$(cd "$(dirname "$0")/../peers" && pwd)
. "$peers/peer_lib.sh"
command -v nfs-cp >/dev/null || { echo "SKIP: nfs-cp is not installed (libnfs-utils)" >&2; exit 77; }

size=$((8 << 20)) chunk=65536
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-nfsbench.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do peer_stop "$p" 5; done
    "$peers/ganesha.sh" stop "$state" || true
    rm -rf "$work"
}
trap cleanup EXIT

peer_ganesha_start "$state" || exit  # 77: it cannot run here

fail() {
    echo "FAIL: $*" >&2
    local f
    for f in "$work"/*.log; do
        [ -e "$f" ] || continue
        echo "$(basename "$f") tail:" >&2; tail -n 15 "$f" | sed 's/^/  | /' >&2
    done
    exit 1
}

# The pattern of tools/bench/nfs_protocol.h, made independently: the byte at
# offset o is byte o%8 of the little-endian word ((o//8) + 1) * 0x9E3779B97F4A7C15.
python3 - "$work" "$size" <<'EOF'
import struct, sys
work, size = sys.argv[1], int(sys.argv[2])
mask = (1 << 64) - 1
data = bytearray(struct.pack("<%dQ" % (size // 8),
                             *[((w + 1) * 0x9E3779B97F4A7C15) & mask for w in range(size // 8)]))
open(work + "/pattern.bin", "wb").write(data)
data[5 * 1024 * 1024 + 123] ^= 0x40
open(work + "/flipped.bin", "wb").write(data)
EOF

direct() { echo "nfs://127.0.0.1$EXPORT/$1?nfsport=$NFS_PORT&mountport=$MNT_PORT"; }
nfs-cp "$work/pattern.bin" "$(direct verify.bin)" >/dev/null || fail "nfs-cp of the pattern file"
nfs-cp "$work/flipped.bin" "$(direct flipped.bin)" >/dev/null || fail "nfs-cp of the flipped file"

# bench NAME PORT MOUNT_PORT ARGS...: runs rpcgate-bench nfs against NFS on
# PORT, MOUNT on MOUNT_PORT; JSON into $work/NAME.json, its status into $st.
bench() {
    local name=$1 port=$2 mport=$3
    shift 3
    st=0
    "$bench" nfs --target "127.0.0.1:$port" --mount-port "$mport" --export "$EXPORT" \
        --size "$chunk" --verify --json --quiet --timeout 20 "$@" \
        >"$work/$name.json" 2>"$work/$name.log" || st=$?
}
# expect NAME STATUS CHECK...: the run exited with STATUS and its JSON passes
# every CHECK, KEY=TEXT or KEY>NUMBER; else FAIL with the run's figures. One
# python per run: starting it costs more than the run on a loaded machine.
expect() {
    local name=$1 want=$2 out
    shift 2
    out=$(python3 - "$work/$name.json" "$@" 2>&1 <<'EOF'
import json, re, sys
try:
    r = json.load(open(sys.argv[1]))
except ValueError:
    sys.exit("no report")
bad = []
for check in sys.argv[2:]:
    key, op, want = re.match(r"(\w+)([=>])(.*)", check).groups()
    got = r.get(key)
    if (op == "=" and str(got) != want) or (op == ">" and not float(got) > float(want)):
        bad.append(f"{check} (got {got})")
print(" ".join(f"{k}={r[k]}" for k in ("calls", "bytes_read", "bytes_written", "errors",
      "rpc_errors", "nfs_errors", "lost_calls", "mismatched_reads", "mismatched_bytes",
      "first_error")))
sys.exit("expected " + ", ".join(bad) if bad else 0)
EOF
    ) && [ "$st" = "$want" ] && return 0
    fail "$name: exit status $st (want $want): $out $(tail -n 3 "$work/$name.log")"
}
# The whole file, once: 128 sequential READs of 64 KiB on 2 connections x 4,
# with no error and nothing mismatched; CHECKs as for expect.
reads=$((size / chunk))
seq_read() {  # NAME PORT MOUNT_PORT [ARGS...] [-- CHECK...]
    local name=$1 port=$2 mport=$3 args=()
    shift 3
    while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
    [ $# -eq 0 ] || shift
    bench "$name" "$port" "$mport" --file verify.bin --mix read=100 --pattern seq \
        --calls "$reads" --connections 2 --depth 4 "${args[@]}"
    expect "$name" 0 calls="$reads" errors=0 mismatched_bytes=0 bytes_read="$size" "$@"
}

seq_read direct "$NFS_PORT" "$MNT_PORT"
echo "direct: $reads READs of $chunk B, $size bytes verified"

bench flipped "$NFS_PORT" "$MNT_PORT" --file flipped.bin --mix read=100 --pattern seq \
    --calls "$reads" --connections 2 --depth 4
expect flipped 1 mismatched_reads=1 mismatched_bytes=1 errors=1
echo "flipped byte: found, exactly one READ with one byte wrong"

bench mixed "$NFS_PORT" "$MNT_PORT" --file verify.bin --mix read=60,write=30,getattr=5,lookup=5 \
    --pattern rand --calls 400 --connections 3 --depth 2
expect mixed 0 calls=400 errors=0 mismatched_bytes=0 "bytes_written>0" "bytes_read>0"
cmp "$work/pattern.bin" "$EXPORT_DIR/verify.bin" || fail "mixed: the export's file changed"
echo "direct mix: 400 calls of READ, WRITE, GETATTR, LOOKUP, verified, file intact"

sh "$make_certs" "$work/certs" >/dev/null 2>&1 || fail "make_certs"
gateway() {  # NAME PORT ARGS...
    local name=$1 port=$2
    shift 2
    "$rpcgate" --listen "127.0.0.1:$port" --shards 1 --no-reserved-port \
        --backend "nfs=127.0.0.1:$NFS_PORT" --backend "mount=127.0.0.1:$MNT_PORT" "$@" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
}
gw_port=$(peer_free_port)
gateway gw "$gw_port"
tls_port=$(peer_free_port)
gateway gw_tls "$tls_port" --tls required --cert "$work/certs/server.pem" \
    --key "$work/certs/server.key"
peer_wait_until 10 peer_rpc_null 127.0.0.1 "$gw_port" 100003 3 || fail "gateway did not answer NULL"

seq_read via_gateway "$gw_port" "$gw_port"
echo "through rpcgate: $size bytes verified"

# It answers a plaintext NULL with AUTH_TOOWEAK only: wait for its port.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
peer_wait_until 10 port_open "$tls_port" || fail "the TLS gateway did not listen"
seq_read via_gateway_tls "$tls_port" "$tls_port" --tls starttls --ca "$work/certs/ca.pem" \
    --server-name localhost -- tls_version=TLSv1.3
echo "through rpcgate --tls required, starttls (TLS 1.3): $size bytes verified"

seq_read v41_direct "$NFS_PORT" "$MNT_PORT" --nfs-version 4.1 -- workload=nfs4.1
echo "NFSv4.1 direct: $size bytes verified"
seq_read v41_via_gateway_tls "$tls_port" "$tls_port" --nfs-version 4.1 --tls starttls \
    --ca "$work/certs/ca.pem" --server-name localhost -- workload=nfs4.1 tls_version=TLSv1.3
echo "NFSv4.1 through rpcgate --tls required, starttls: $size bytes verified"
