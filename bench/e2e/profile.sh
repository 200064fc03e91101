#!/bin/bash
# Where the gateway's CPU goes, per call: the profile behind docs/performance.md.
# One rpcgate (plaintext and implicit-TLS listeners) in front of the echo
# server, as in report.sh, under two workloads:
#   small-plain  64 B calls, 64 connections x 16 in flight, plaintext
#   large-tls    1 MiB calls, 8 connections x 1 in flight, implicit TLS 1.3
# For each, with the load running, a counting pass and a sampling pass, both
# attached to the gateway's process (all threads) for the whole client run:
#   perf stat: syscalls (raw_syscalls:sys_enter), io_uring_enter calls, SQEs
#     (io_uring:io_uring_submit_req), CQEs (io_uring:io_uring_complete), task
#     work runs, context switches (each a sleep and its wake-up), the CPU
#     time (task-clock), divided by the calls the client completed; the echo
#     server's own counts beside them (the floor: one socket round trip a call);
#     and the gateway's own engine counters (/metrics: loop passes, receive
#     completions, sendmsg operations, pressure copies) over the same run
#   perf record -e cpu-clock -g (a software clock: no hardware counters in
#     a VM): flat profiles by symbol and by DSO, kernel and user
#
#   bench/e2e/profile.sh [BUILD_DIR] [OUT_DIR]
# Environment: DURATION (seconds per pass, default 5), SHARDS (default 2),
# CIPHER (default TLS_AES_128_GCM_SHA256), PROFILES ("small-plain large-tls"),
# CALL_GRAPH (perf record --call-graph: fp, the default, walks the kernel's
# stacks but not those of a release build without frame pointers; dwarf
# walks both at a far higher sampling cost).
# Writes OUT_DIR/<profile>.counts.json, <profile>.symbols.txt, <profile>.dso.txt
# (flat profiles), <profile>.callers.txt (who called the top symbols),
# <profile>.perf.data and OUT_DIR/summary.md; prints the summary. On a
# paravirtualised guest, samples that fall while interrupts are off land on
# the function that turns them back on (pvm_irq_enable, or
# native_irq_enable / _raw_spin_unlock_irqrestore): the callers file says
# whose time that is. Needs perf
# (Debian's linux-perf) and root (or perf_event_paranoid <= -1) for the
# tracepoints.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build/release}
out=${2:-$build/bench-profile}
duration=${DURATION:-5}
shards=${SHARDS:-2}
cipher=${CIPHER:-TLS_AES_128_GCM_SHA256}
profiles=${PROFILES:-"small-plain large-tls"}
call_graph=${CALL_GRAPH:-fp}
. "$root/tests/peers/peer_lib.sh"
. "$here/lib.sh"
bench=$(e2e_find_bin rpcgate-bench)
rpcgate=$(e2e_find_bin rpcgate)
probe=$(e2e_find_bin rpcgate-probe)
e2e_need perf openssl python3
e2e_init profile
e2e_certs
mkdir -p "$out"

echo_port=$(peer_free_port)
e2e_bg serve.log "$bench" serve --listen "127.0.0.1:$echo_port" --shards 1
echo_pid=$bg_pid
e2e_wait_ready e2e_rpc_ready "$echo_port"
gw_port=$(peer_free_port)
gw_tls_port=$(peer_free_port)
admin_port=$(peer_free_port)
e2e_bg rpcgate.log "$rpcgate" --listen "127.0.0.1:$gw_port" --implicit-tls "127.0.0.1:$gw_tls_port" \
    --admin "127.0.0.1:$admin_port" \
    --cert "$certs/server.pem" --key "$certs/server.key" \
    --backend "536870913=127.0.0.1:$echo_port" --shards "$shards" --no-reserved-port
gw_pid=$bg_pid
e2e_wait_ready e2e_rpc_ready "$gw_port"
e2e_wait_ready e2e_tls_ready "$gw_tls_port"

metrics() {
    python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "http://127.0.0.1:$admin_port/metrics"
}
events=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter
events+=,io_uring:io_uring_submit_req,io_uring:io_uring_complete,io_uring:io_uring_task_work_run
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for p in $profiles; do
    case $p in
        small-plain) e2e_workload_args small; tls=() port=$gw_port ;;
        large-tls) e2e_workload_args large; tls=(--tls implicit "${tls_client[@]}") port=$gw_tls_port ;;
        *) echo "unknown profile $p (small-plain, large-tls)" >&2; exit 2 ;;
    esac
    client=("$bench" run --target "127.0.0.1:$port" "${tls[@]}" "${args[@]}" --duration "$duration"
        --quiet --json)
    echo "== $p: counting (${duration} s)" >&2
    # Two perf stat sessions, one per process, around the same client run.
    perf stat -x, -e "$events" -p "$echo_pid" -o "$work/$p.echo.csv" &
    echo_stat=$!
    metrics >"$work/$p.metrics0"
    perf stat -x, -e "$events" -p "$gw_pid" -o "$work/$p.gw.csv" -- "${client[@]}" \
        >"$work/$p.count.json" 2>>"$work/bench-client.log"
    metrics >"$work/$p.metrics1"
    kill -INT "$echo_stat"
    wait "$echo_stat" || true
    echo "== $p: sampling (${duration} s)" >&2
    perf record -q -e cpu-clock -F 4999 --call-graph "$call_graph" -p "$gw_pid" \
        -o "$out/$p.perf.data" -- "${client[@]}" >"$work/$p.record.json" 2>>"$work/bench-client.log"
    report=(perf report -i "$out/$p.perf.data" --stdio --no-children)
    "${report[@]}" -g none --sort dso,symbol --percent-limit 0.5 2>/dev/null | grep '%' |
        sed 's/ *- *- *$//; s/ *$//' | head -n 40 >"$out/$p.symbols.txt" || true
    "${report[@]}" -g none --sort dso 2>/dev/null | grep '%' | sed 's/ *$//' |
        head -n 12 >"$out/$p.dso.txt" || true
    "${report[@]}" -g caller,0.5,callee,function,percent --sort symbol --percent-limit 3 \
        2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 400 >"$out/$p.callers.txt" || true
    python3 "$here/profile_counts.py" "$work/$p.gw.csv" "$work/$p.echo.csv" "$work/$p.count.json" \
        "$work/$p.record.json" "$work/$p.metrics0" "$work/$p.metrics1" >"$out/$p.counts.json"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
python3 "$here/profile_counts.py" --summary "$out" "$load_start" "$load_end" "$duration" \
    "$shards" "$cipher" $profiles >"$out/summary.md"
cat "$out/summary.md"
echo "wrote $out/summary.md (perf report -i $out/<profile>.perf.data for the call graphs)" >&2
