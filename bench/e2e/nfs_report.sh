#!/bin/bash
# The NFS end-to-end report: `rpcgate-bench nfs` against a private nfs-ganesha
# on loopback, every path in one run so that each figure can be a ratio
# against the direct one measured minutes apart on the same machine:
#   direct         client -> ganesha
#   rpcgate        client -> rpcgate -> ganesha
#   rpcgate-tls    client =RPC-with-TLS (RFC 9289 STARTTLS)=> rpcgate (--tls required) -> ganesha
#   rpcgate-chain  client -> rpcgate A =RPC-with-TLS=> rpcgate B (--tls required) -> ganesha
#   stunnel        client =TLS (from the first byte)=> stunnel4 -> ganesha
#   socat          client -> socat (fork per connection) -> ganesha
# (TLS 1.3, one cipher suite, the same certificate everywhere) for the workloads:
#   read   64 KiB READs at sequential offsets, 4 connections x 4 in flight
#   write  64 KiB WRITEs (UNSTABLE; committed after the run) at random offsets, 4 x 4
#   meta   GETATTR and LOOKUP half and half, 8 connections x 8 in flight
#   read41 as read, in NFSv4.1 (a session per connection, COMPOUNDs)
# The test file (FILE_MIB) is filled with the verify pattern once, first; every
# run has --verify (READs are checked, WRITEs keep the pattern), so a path that
# corrupts data shows up as errors in the table. MOUNT goes through the path
# for the rpcgate set-ups (the gateway routes it on its one port), straight to
# ganesha for stunnel and socat (set-up only: it is not timed).
#
#   bench/e2e/nfs_report.sh [--quick] [BUILD_DIR] [OUT_DIR]
# --quick: 1 s per point and a 16 MiB file (a smoke run).
# Environment: DURATION (seconds per point, default 5), SHARDS (rpcgate
# threads, default 2), CIPHER (default TLS_AES_128_GCM_SHA256), WORKLOADS
# ("read write meta read41"), SETUPS (default: all six), FILE_MIB (default 256).
# Writes OUT_DIR/results.json, OUT_DIR/summary.md and
# OUT_DIR/latency_cdf_<workload>.png (gnuplot), the raw runs in
# OUT_DIR/raw/runs.jsonl; prints the table. ganesha is tests/peers/ganesha.sh's
# (exit 77 when it cannot run here, as there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
e2e_args nfs-report "$@"
duration=${DURATION:-$([ "$quick" = 1 ] && echo 1 || echo 5)}
file_mib=${FILE_MIB:-$([ "$quick" = 1 ] && echo 16 || echo 256)}
workloads=${WORKLOADS:-"read write meta read41"}
setups=${SETUPS:-"direct rpcgate rpcgate-tls rpcgate-chain stunnel socat"}
. "$root/tests/peers/peer_lib.sh"
bench=$(e2e_find_bin rpcgate-bench)
rpcgate=$(e2e_find_bin rpcgate)
e2e_need python3 socat
e2e_init nfsreport
e2e_certs >/dev/null 2>&1

state=$work/ganesha
rc=0
peer_ganesha_start "$state" || rc=$?
[ "$rc" -eq 0 ] || { echo "$(basename "$0"): nfs-ganesha did not start" >&2; exit "$rc"; }
stop_ganesha() { "$root/tests/peers/ganesha.sh" stop "$state" || true; e2e_cleanup; }
trap stop_ganesha EXIT

gateway() {  # LOG PORT ARGS...
    local log=$1 port=$2
    shift 2
    e2e_bg "$log" "$rpcgate" --listen "127.0.0.1:$port" --shards "$shards" --no-reserved-port "$@"
}
routes=(--backend "nfs=127.0.0.1:$NFS_PORT" --backend "mount=127.0.0.1:$MNT_PORT")
tls_in=(--tls required --cert "$certs/server.pem" --key "$certs/server.key")
declare -A target=([direct]=$NFS_PORT) mount=([direct]=$MNT_PORT) extra=()
for s in $setups; do
    p=$(peer_free_port)
    target[$s]=$p
    mount[$s]=$p
    case $s in
        direct) target[$s]=$NFS_PORT mount[$s]=$MNT_PORT ;;
        rpcgate) gateway rpcgate.log "$p" "${routes[@]}" ;;
        rpcgate-tls)
            gateway rpcgate-tls.log "$p" "${tls_in[@]}" "${routes[@]}"
            extra[$s]="--tls starttls ${tls_client[*]}" ;;
        rpcgate-chain)
            b=$(peer_free_port)
            gateway rpcgate-chain-b.log "$b" "${tls_in[@]}" "${routes[@]}"
            gateway rpcgate-chain-a.log "$p" --backend "nfs=127.0.0.1:$b" \
                --backend "mount=127.0.0.1:$b" --upstream-tls required \
                --upstream-ca "$certs/ca.pem" ;;
        stunnel)
            e2e_start_stunnel "$p" "$NFS_PORT"
            mount[$s]=$MNT_PORT
            extra[$s]="--tls implicit --mount-tls off ${tls_client[*]}" ;;
        socat)
            e2e_start_socat "$p" "$NFS_PORT"
            mount[$s]=$MNT_PORT ;;
        *) echo "$(basename "$0"): unknown set-up $s" >&2; exit 2 ;;
    esac
done
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for s in $setups; do e2e_wait_ready port_open "${target[$s]}"; done

file=nfs-report.dat
common=(--export "$EXPORT" --file "$file" --verify --json --quiet --timeout 10)
"$bench" nfs --target "127.0.0.1:$NFS_PORT" --mount-port "$MNT_PORT" "${common[@]}" \
    --file-size $((file_mib << 20)) --fill --mix null=1 --calls 1 >/dev/null ||
    { echo "$(basename "$0"): could not fill the test file" >&2; exit 1; }

# shellcheck disable=SC2054  # the commas are --mix's
workload_args() {
    case $1 in
        read) args=(--mix read=100 --pattern seq --size 65536 --connections 4 --depth 4) ;;
        write) args=(--mix write=100 --pattern rand --size 65536 --connections 4 --depth 4) ;;
        meta) args=(--mix getattr=50,lookup=50 --connections 8 --depth 8) ;;
        read41) args=(--nfs-version 4.1 --mix read=100 --pattern seq --size 65536
                      --connections 4 --depth 4) ;;
        *) echo "unknown workload $1 (read, write, meta, read41)" >&2; exit 2 ;;
    esac
}

mkdir -p "$out/raw"
results=$out/raw/runs.jsonl
: >"$results"
for w in $workloads; do
    workload_args "$w"
    for s in $setups; do
        echo "== $w via $s (${duration} s)" >&2
        # shellcheck disable=SC2086  # extra[] holds options split on purpose
        json=$("$bench" nfs --target "127.0.0.1:${target[$s]}" --mount-port "${mount[$s]}" \
            "${common[@]}" "${args[@]}" ${extra[$s]:-} --duration "$duration" \
            2>>"$work/bench-client.log") || echo "run had errors: $w via $s" >&2
        [ -n "$json" ] ||
            json='{"ops_per_sec":0,"bytes_per_sec":0,"p50_us":0,"p99_us":0,"p999_us":0,"errors":-1}'
        echo "{\"workload\":\"$w\",\"setup\":\"$s\",\"result\":$json}" >>"$results"
    done
done

python3 - "$results" "$out" "$duration" "$file_mib" "$cipher" "$here" "$work" <<'PY'
import json, shutil, sys
path, out, duration, file_mib, cipher, here, work = sys.argv[1:8]
sys.path.insert(0, here)
import report
runs = [json.loads(l) for l in open(path)]
lines, ratios = report.ratio_table(runs, ["direct"])
report.WORKLOAD_TITLE.update({
    "read": "read: 64 KiB READs, sequential, 4 connections x 4 in flight",
    "write": "write: 64 KiB WRITEs, random offsets, 4 connections x 4 in flight",
    "meta": "meta: GETATTR + LOOKUP, 8 connections x 8 in flight",
    "read41": "read41: NFSv4.1 64 KiB READs, sequential, 4 connections x 4 in flight",
})
by = {(r["workload"], r["setup"]): r["result"] for r in runs}
setups = [s for s in report.SETUPS if any(k[1] == s for k in by)]
plots = []
if shutil.which("gnuplot"):
    for w in dict.fromkeys(r["workload"] for r in runs):
        png = report.plot_cdf(by, setups, w, 0, out, work)
        if png:
            plots.append(png)
table = "\n".join(lines)
print(table)
with open(f"{out}/summary.md", "w") as f:
    f.write(f"# NFS through rpcgate: rpcgate-bench nfs against nfs-ganesha "
            f"({duration} s per point, loopback, {file_mib} MiB file, {cipher})\n\n"
            "MB/s: file data read plus written. Every run verifies what it reads.\n\n"
            f"{table}\n")
with open(f"{out}/results.json", "w") as f:
    json.dump({"duration_s": float(duration), "file_mib": int(file_mib), "cipher": cipher,
               "runs": runs, "ratios": ratios, "plots": plots}, f, indent=1)
PY
echo "wrote $out/results.json and $out/summary.md" >&2
