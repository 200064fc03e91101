#!/bin/bash
# DPDK + lwIP vs io_uring for the client-facing side, on the same veth pair in
# the same run (issue 8). The rig is tests/dpdk/netns_lib.sh's: rpcgate-bench
# run in a client namespace, rpcgate and its echo backend (on loopback) in a
# gateway namespace, the veth between them with offloads off. The DPDK gateway
# reads the veth through net_af_packet; the io_uring one through the kernel's
# TCP. Both run ONE shard (the DPDK backend has one; the same for io_uring
# keeps the comparison engine-to-engine), with the same routes and TLS setup.
#
# Workloads, each in plaintext and with RFC 9289 TLS (STARTTLS):
#   mixed  echo calls of 0..64 KiB, 4 connections x 8 in flight
#   small  64-byte calls, 16 connections x 16 in flight
#
#   sudo bench/e2e/dpdk_vs_uring.sh [BUILD_DIR] [OUT_DIR]
# BUILD_DIR defaults to build/dpdk (configured with -DRPCGATE_WITH_DPDK=ON, as
# scripts/test-dpdk.sh does). Environment: DURATION (seconds a run, default 5),
# WORKLOADS ("mixed small"), ROUNDS (default 3: dpdk and uring alternate, the
# median of the rounds is reported, so that a busy machine hurts both alike),
# PERF=1 to profile the DPDK gateway during its first run (perf record; top
# symbols in OUT_DIR/perf-dpdk.txt).
# Writes OUT_DIR/results.json and OUT_DIR/summary.md (ratios dpdk/uring for
# throughput and p99, client retransmissions), plus the DPDK shard's
# per-stage time counters.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build/dpdk}
out=${2:-$build/bench-dpdk}
duration=${DURATION:-5}
workloads=${WORKLOADS:-"mixed small"}
rounds=${ROUNDS:-3}
rpcgate=$build/tools/rpcgate
bench=$build/tools/bench/rpcgate-bench
[ -x "$rpcgate" ] && [ -x "$bench" ] || {
    echo "no rpcgate/rpcgate-bench in $build (scripts/test-dpdk.sh builds them)" >&2
    exit 1
}
. "$root/tests/dpdk/netns_lib.sh"
if ! why=$(ns_can_run); then
    echo "cannot run: $why" >&2
    exit 1
fi
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.retrans "$out/dpdk-counters.txt"
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-dpdk-bench.XXXXXX")
ns_setup "$work"
ns_certs
ns_start_echo "$bench"

workload_args() {
    case $1 in
        mixed) echo "--size 0 --size-max 65536 --seed 8 --connections 4 --depth 8" ;;
        small) echo "--size 64 --connections 16 --depth 16" ;;
        *) echo "unknown workload $1" >&2; return 1 ;;
    esac
}

# TCP segments the client's kernel sent again (a loss, or a late ACK, on the way).
client_retransmits() {
    ip netns exec "$ns_cl" nstat -az TcpRetransSegs 2>/dev/null | awk '/TcpRetransSegs/ {print $2}' |
        grep . || echo 0
}

profiled=0
for round in $(seq "$rounds"); do
for backend in dpdk uring; do
    ns_start_gateway "$rpcgate" "$backend" "gw-$backend.log" --shards 1
    for w in $workloads; do
        read -r -a args <<<"$(workload_args "$w")"
        for tls in off starttls; do
            tls_args=()
            [ "$tls" = starttls ] && tls_args=(--tls starttls --ca "$work/ca.pem" --server-name "$gw_ip")
            name="$backend-$w-$tls-r$round"
            perf_pid=
            if [ "${PERF:-0}" = 1 ] && [ "$backend" = dpdk ] && [ "$profiled" = 0 ] &&
                command -v perf >/dev/null; then
                perf record -q -g -o "$work/perf.data" -p "$gw_pid" -- sleep "$duration" \
                    >/dev/null 2>&1 &
                perf_pid=$!
                profiled=1
            fi
            retrans0=$(client_retransmits)
            ns_bench "$name.json" --target "$gw_ip:2049" "${args[@]}" "${tls_args[@]}" \
                --threads 1 --duration "$duration" || true
            [ -n "$perf_pid" ] && wait "$perf_pid" 2>/dev/null || true
            cp "$work/$name.json" "$out/$name.json" 2>/dev/null || true
            retrans=$(($(client_retransmits) - retrans0))
            echo "$retrans" >"$out/$name.retrans"
            if [ -s "$work/$name.json" ]; then
                printf '%-22s %8.0f ops/s %8.1f MB/s p99 %8.0f us, %s errors, %s client retransmits\n' \
                    "$name" "$(ns_json "$name.json" ops_per_sec)" "$(ns_json "$name.json" mb_per_sec)" \
                    "$(ns_json "$name.json" p99_us)" "$(ns_json "$name.json" errors)" "$retrans"
            else
                echo "$name: no result: $(tail -n 2 "$work/$name.json.err")"
            fi
        done
    done
    ns_stop "$gw_pid" 20 || true
    if [ "$backend" = dpdk ]; then
        grep -o 'dpdk: rx .*' "$work/gw-dpdk.log" >>"$out/dpdk-counters.txt" || true
    fi
done
done
if [ -f "$work/perf.data" ]; then
    perf report -q -i "$work/perf.data" --no-children --sort dso,symbol -g none --stdio \
        2>/dev/null | grep -v '^$' | head -n 40 >"$out/perf-dpdk.txt" || true
fi

python3 - "$out" "$workloads" "$duration" "$rounds" <<'EOF'
import json, os, statistics, sys
out, workloads, duration, rounds = sys.argv[1], sys.argv[2].split(), sys.argv[3], int(sys.argv[4])
keys = ("ops_per_sec", "mb_per_sec", "p50_us", "p99_us", "errors")

def load(backend, w, tls):
    runs = []
    for r in range(1, rounds + 1):
        try:
            d = json.load(open(f"{out}/{backend}-{w}-{tls}-r{r}.json"))
            d["retrans"] = int(open(f"{out}/{backend}-{w}-{tls}-r{r}.retrans").read() or 0)
            runs.append(d)
        except (OSError, ValueError):
            pass
    if not runs:
        return None
    med = {k: statistics.median(x[k] for x in runs) for k in keys + ("retrans",)}
    med["runs"] = len(runs)
    return med

rows, results = [], {}
for w in workloads:
    for tls in ("off", "starttls"):
        d, u = load("dpdk", w, tls), load("uring", w, tls)
        if not d or not u:
            rows.append(f"| {w} | {tls} | (missing) | | | |")
            continue
        tr = d["ops_per_sec"] / u["ops_per_sec"] if u["ops_per_sec"] else 0
        pr = d["p99_us"] / u["p99_us"] if u["p99_us"] else 0
        results[f"{w}-{tls}"] = {"dpdk": d, "uring": u, "throughput_ratio": tr, "p99_ratio": pr}
        fmt = lambda x: (f"{x['ops_per_sec']:.0f} ops/s, {x['mb_per_sec']:.1f} MB/s, "
                         f"p99 {x['p99_us'] / 1000:.1f} ms, {x['retrans']:.0f} retr.")
        rows.append(f"| {w} | {tls} | {fmt(d)} | {fmt(u)} | {tr:.2f}x | {pr:.2f}x |")
path = f"{out}/dpdk-counters.txt"
counters = open(path).read().strip().splitlines() if os.path.exists(path) else []
json.dump({"duration_s": float(duration), "rounds": rounds, "results": results,
           "dpdk_counters": counters}, open(f"{out}/results.json", "w"), indent=1)
md = ["# DPDK + lwIP vs io_uring (client side), same veth, same run", "",
      f"{duration} s a run, median of {rounds} alternating rounds; one shard each; echo backend "
      "on the gateway's loopback; `retr.` = TCP segments the client retransmitted.", "",
      "| workload | TLS | dpdk | uring | throughput dpdk/uring | p99 dpdk/uring |",
      "|---|---|---|---|---|---|"] + rows + ["", "DPDK shard counters at exit, per round:", ""] + \
     ["    " + c for c in counters] + [""]
open(f"{out}/summary.md", "w").write("\n".join(md))
print("\n".join(md))
EOF
rm -rf "$work"
