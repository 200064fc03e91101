#!/bin/bash
# kTLS record options measured in a qemu guest (issue: current kernels): the
# gateway with its defaults, with --ktls-rx-no-pad, and with
# --ktls-tx-record-size 4096 and 1024, in turn, ROUNDS times, in one guest.
# Prints every RESULT line and a table of medians with each setting's ratio
# to the default of the same run. TCG emulates AES-NI in software: absolute
# figures are the emulator's, only the ratios between settings carry over.
#
#   bench/vm/ktls_records.sh [--build DIR] [--kernel SUITE] [--seconds S] [--rounds N]
# DIR: a configured and built tree (default build/release).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=$here/build/release
kernel=trixie-backports
secs=6
rounds=3
while [ $# -gt 0 ]; do
    case $1 in
        --build) build=$(realpath "$2"); shift 2 ;;
        --kernel) kernel=$2; shift 2 ;;
        --seconds) secs=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "ktls_records: unknown argument $1" >&2; exit 2 ;;
    esac
done
for t in tools/rpcgate tools/bench/rpcgate-bench; do
    [ -x "$build/$t" ] || { echo "ktls_records: $build/$t is missing: build first" >&2; exit 2; }
done
certs=$build/vm-certs
[ -r "$certs/server.pem" ] || sh "$here/tests/tls/make_certs.sh" "$certs" >/dev/null
"$here/tests/vm/run_vm.sh" --cache "$build/vm" --kernel "$kernel" \
    --timeout $((120 + rounds * 4 * (secs + 12))) --env RPCGATE_REQUIRE_KTLS=1 \
    --add "$build/tools/rpcgate" --add "$build/tools/bench/rpcgate-bench" \
    --add "$certs/server.pem" --add "$certs/server.key" \
    --run ktls_records "$here/bench/vm/ktls_records_guest.sh /opt/bin $secs $rounds"
log=$build/vm/run-ktls_records-$kernel/console.log
grep -a '^RESULT' "$log" | tr -d '\r'
grep -a '^RESULT' "$log" | tr -d '\r' | python3 -c '
import sys, statistics
rows = {}
for line in sys.stdin:
    f = line.split()
    kv = dict(x.split("=", 1) for x in f[2:])
    rows.setdefault(f[1], []).append({k: float(v) for k, v in kv.items()})
base = rows.get("default")
def med(name, key):
    return statistics.median(r[key] for r in rows[name])
print("| setting | MB/s | ratio | gateway CPU s/GB | ratio | no-pad violations | decrypt retries |")
print("|---|---|---|---|---|---|---|")
for name in rows:
    mb, cpu = med(name, "mb_per_sec"), med(name, "gw_cpu_s_per_gb")
    rmb = mb / med("default", "mb_per_sec") if base else float("nan")
    rcpu = cpu / med("default", "gw_cpu_s_per_gb") if base else float("nan")
    viol = int(sum(r["no_pad_violations"] for r in rows[name]))
    retr = int(sum(r["decrypt_retries"] for r in rows[name]))
    print(f"| {name} | {mb:.1f} | {rmb:.2f} | {cpu:.2f} | {rcpu:.2f} | {viol} | {retr} |")
'
