#!/bin/bash
# Acceptance test of the DPDK backend (issue 8), in builds with
# -DRPCGATE_WITH_DPDK=ON:
#
#   client namespace                         gateway namespace
#   rpcgate-bench run  ==veth (offloads off)==>  rpcgate --io-backend dpdk
#                                                 (net_af_packet on the veth, lwIP)
#                                                 -> rpcgate-bench serve on 127.0.0.1
#
# 10,000 echo calls of mixed sizes (0..64 KiB), every reply compared byte for
# byte with its call (--verify), in plaintext, then with RFC 9289 TLS
# (AUTH_TLS probe, STARTTLS, TLS 1.3), then 2,000 over implicit TLS. The same
# runs go through --io-backend uring on the same veth afterwards, and the
# figures of both (one shard each) are printed side by side (bench/e2e/dpdk_vs_uring.sh
# measures them properly). Each run must complete every call with no error;
# a missing peer or a gateway that does not come up fails the test.
#
#   tests/dpdk/e2e.sh RPCGATE RPCGATE_BENCH
# Environment: CALLS (default 10000), KEEP_WORK=1 keeps the logs of a passing
# run. Exit 77 (skip) without root or namespaces.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rpcgate=${1:?usage: e2e.sh RPCGATE RPCGATE_BENCH}
bench=${2:?usage: e2e.sh RPCGATE RPCGATE_BENCH}
calls=${CALLS:-10000}
. "$here/netns_lib.sh"

if ! why=$(ns_can_run); then
    echo "SKIP: $why"
    exit 77
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-dpdk-e2e.XXXXXX")
ns_setup "$work"
ns_certs
ns_start_echo "$bench"

failures=0
# check NAME FILE CALLS: every call answered, verified, no error of any kind.
check() {
    local name=$1 file=$2 want=$3
    if ! python3 - "$work/$file" "$want" <<'EOF'; then
import json, sys
r = json.load(open(sys.argv[1]))
want = int(sys.argv[2])
bad = {k: r[k] for k in ("errors", "connect_errors", "lost_calls", "timeouts", "rpc_errors",
                         "bad_replies", "tls_errors") if r.get(k)}
problems = []
if r["calls"] != want: problems.append(f"calls {r['calls']} != {want}")
if not r["verify"]: problems.append("replies were not verified")
if r["payload_bytes_sent"] != r["payload_bytes_received"]:
    problems.append(f"sent {r['payload_bytes_sent']} B, got back {r['payload_bytes_received']} B")
if bad: problems.append(f"errors: {bad}")
if problems:
    print("; ".join(problems)); sys.exit(1)
EOF
        echo "FAIL: $name"
        tail -n 5 "$work/$file.err" >&2 || true
        failures=$((failures + 1))
        return 0
    fi
    printf 'ok: %-14s %6d calls verified, %8.1f MB/s, p99 %9.0f us\n' "$name" \
        "$(ns_json "$file" calls)" "$(ns_json "$file" mb_per_sec)" "$(ns_json "$file" p99_us)"
}

# Mixed sizes: uniform in [0, 64 KiB], the same sequence for every run (--seed).
mix=(--size 0 --size-max 65536 --seed 8 --connections 4 --depth 8 --verify)
for backend in dpdk uring; do
    ns_start_gateway "$rpcgate" "$backend" "gw-$backend.log" --shards 1 || {
        echo "FAIL: rpcgate --io-backend $backend did not start"
        exit 1
    }
    ns_bench "$backend-plain.json" --target "$gw_ip:2049" "${mix[@]}" --calls "$calls" || true
    check "$backend plain" "$backend-plain.json" "$calls"
    ns_bench "$backend-tls.json" --target "$gw_ip:2049" --tls starttls --ca "$work/ca.pem" \
        --server-name "$gw_ip" "${mix[@]}" --calls "$calls" || true
    check "$backend starttls" "$backend-tls.json" "$calls"
    ns_bench "$backend-implicit.json" --target "$gw_ip:2050" --tls implicit --ca "$work/ca.pem" \
        --server-name "$gw_ip" "${mix[@]}" --calls 2000 || true
    check "$backend implicit" "$backend-implicit.json" 2000
    # Misbehaving clients (resets inside records and handshakes), then the
    # gateway must still serve, and close every connection it accepted.
    if ! timeout 120 ip netns exec "$ns_cl" python3 "$here/abuse.py" "$gw_ip" >"$work/abuse-$backend.log" 2>&1; then
        echo "FAIL: $backend: misbehaving clients: $(tail -n 3 "$work/abuse-$backend.log")"
        failures=$((failures + 1))
    fi
    ns_bench "$backend-after.json" --target "$gw_ip:2049" "${mix[@]}" --calls 1000 || true
    check "$backend after abuse" "$backend-after.json" 1000
    # Every handshake cut short must end (deadline 10 s) before the gateway stops.
    for ((i = 0; i < 150; i++)); do
        grep -q 'handshakes_in_progress 0$' <(ip netns exec "$ns_gw" python3 -c '
import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9049/metrics", timeout=2).read().decode())' 2>/dev/null) && break
        sleep 0.1
    done
    # Every cut handshake ended at once (a FIN or RST reached the control
    # thread), none by its 10 s deadline.
    if grep -q 'no handshake within' "$work/gw-$backend.log"; then
        echo "FAIL: $backend: $(grep -c 'no handshake within' "$work/gw-$backend.log") handshake(s) of" \
            "clients that had gone ended only at the deadline (a lost FIN or RST)"
        failures=$((failures + 1))
    fi
    if ! ns_stop "$gw_pid" 20; then
        echo "FAIL: rpcgate --io-backend $backend did not stop on SIGTERM"
        failures=$((failures + 1))
    fi
    if [ "$backend" = dpdk ]; then
        # Where the DPDK shard's time went (per-stage counters, logged at exit).
        grep -o 'dpdk: rx .*' "$work/gw-dpdk.log" | sed 's/^/  /' || {
            echo "FAIL: the DPDK backend logged no counters at exit"
            failures=$((failures + 1))
        }
        grep -q 'handshakes_ok=[1-9]' "$work/gw-dpdk.log" || {
            echo "FAIL: no TLS handshake counted by the DPDK gateway"
            failures=$((failures + 1))
        }
        # Every TCP connection lwIP accepted was closed through the backend
        # (none left for the exit to abort): no leaked connection or relay.
        accepts=$(grep -o 'accepts [0-9]*' "$work/gw-dpdk.log" | tail -n 1 | cut -d' ' -f2)
        closes=$(grep -o 'closes [0-9]*' "$work/gw-dpdk.log" | tail -n 1 | cut -d' ' -f2)
        if [ -z "$accepts" ] || [ "$accepts" != "$closes" ]; then
            echo "FAIL: the DPDK backend accepted ${accepts:-?} connections but closed ${closes:-?}"
            failures=$((failures + 1))
        else
            echo "ok: dpdk closed all $accepts connections it accepted"
        fi
    fi
done

python3 - "$work" <<'EOF'
import json, sys
w = sys.argv[1]
for mode in ("plain", "tls"):
    d = json.load(open(f"{w}/dpdk-{mode}.json")); u = json.load(open(f"{w}/uring-{mode}.json"))
    if u["mb_per_sec"] and d["p99_us"]:
        print(f"dpdk/uring {mode:5}: throughput {d['mb_per_sec'] / u['mb_per_sec']:.2f}x "
              f"({d['mb_per_sec']:.1f} vs {u['mb_per_sec']:.1f} MB/s), "
              f"p99 {d['p99_us'] / u['p99_us']:.2f}x ({d['p99_us']:.0f} vs {u['p99_us']:.0f} us)")
EOF
if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed; logs in $work"
    exit 1
fi
[ -n "${KEEP_WORK:-}" ] && echo "logs kept in $work" || rm -rf "$work"
echo "all DPDK end-to-end checks passed"
