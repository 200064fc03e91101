#!/bin/bash
# End-to-end comparison on loopback, all in one run so the ratios are fair:
#   direct   client -> echo server
#   rpcgate  client -> rpcgate -> echo server
#   haproxy  client -> HAProxy (mode tcp) -> echo server
#   socat    client -> socat (fork per connection) -> echo server
# for two workloads:
#   large  1 MiB calls, 8 connections x 1 in flight
#   small  64-byte calls, 64 connections x 16 in flight
# and the RSS of rpcgate and HAProxy holding 10,000 idle client connections.
#
#   bench/e2e/compare.sh [BUILD_DIR] [OUT_DIR]
# Environment: DURATION (seconds per run, default 10), SHARDS (rpcgate, default 2),
# IDLE_CONNS (default 10000), WORKLOADS ("large small").
# Writes OUT_DIR/results.json and OUT_DIR/summary.md; prints the table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build/release}
out=${2:-$build/bench-e2e}
duration=${DURATION:-10}
shards=${SHARDS:-2}
idle_conns=${IDLE_CONNS:-10000}
workloads=${WORKLOADS:-"large small"}
. "$root/tests/peers/peer_lib.sh"

. "$here/lib.sh"
bench=$(e2e_find_bin rpcgate-bench)
rpcgate=$(e2e_find_bin rpcgate)
e2e_need haproxy socat python3
e2e_init cmp

echo_port=$(peer_free_port)
e2e_bg serve.log "$bench" serve --listen "127.0.0.1:$echo_port" --shards 1
e2e_wait_ready e2e_rpc_ready "$echo_port"

gw_port=$(peer_free_port)
e2e_bg rpcgate.log "$rpcgate" --listen "127.0.0.1:$gw_port" \
    --backend "536870913=127.0.0.1:$echo_port" --shards "$shards" --no-reserved-port
gw_pid=$bg_pid

ha_port=$(peer_free_port)
e2e_start_haproxy "$ha_port" "$echo_port" "" ""

socat_port=$(peer_free_port)
e2e_start_socat "$socat_port" "$echo_port"

e2e_wait_ready e2e_rpc_ready "$gw_port" "$ha_port" "$socat_port"

declare -A target=([direct]=$echo_port [rpcgate]=$gw_port [haproxy]=$ha_port [socat]=$socat_port)
results="$work/runs.jsonl"
: >"$results"
e2e_collect "$results" "$workloads" "direct rpcgate haproxy socat"

# Idle connections: memory of each proxy holding IDLE_CONNS client connections.
idle_rss() { # idle_rss PORT PID -> RSS in KiB while IDLE_CONNS connections are open
    python3 - "$1" "$2" "$idle_conns" <<'PY'
import socket, sys, time
port, pid, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    socks.append(s)
# Every connection accepted: the proxy's fd count has grown by n.
deadline = time.time() + 30
import os
while time.time() < deadline and len(os.listdir(f"/proc/{pid}/fd")) < n:
    time.sleep(0.05)
print(rss())
for s in socks:
    s.close()
PY
}
# rpcgate twice: the instance that carried the load above, and a fresh one.
gw_rss_base=$(awk '/VmRSS/ {print $2}' "/proc/$gw_pid/status")
gw_rss=$(idle_rss "$gw_port" "$gw_pid")
fresh_port=$(peer_free_port)
e2e_bg rpcgate-fresh.log "$rpcgate" --listen "127.0.0.1:$fresh_port" \
    --backend "536870913=127.0.0.1:$echo_port" --shards "$shards" --no-reserved-port
fresh_pid=$bg_pid
e2e_wait_ready e2e_rpc_ready "$fresh_port"
fresh_base=$(awk '/VmRSS/ {print $2}' "/proc/$fresh_pid/status")
fresh_rss=$(idle_rss "$fresh_port" "$fresh_pid")
ha_rss_base=$(awk '/VmRSS/ {print $2}' "/proc/$ha_pid/status")
ha_rss=$(idle_rss "$ha_port" "$ha_pid")

python3 - "$results" "$out" "$duration" "$idle_conns" "$gw_rss_base" "$gw_rss" "$ha_rss_base" "$ha_rss" \
    "$fresh_base" "$fresh_rss" "$here" <<'PY'
import json, sys
path, out, duration, idle = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
gw_base, gw_rss, ha_base, ha_rss, fresh_base, fresh_rss = map(int, sys.argv[5:11])
sys.path.insert(0, sys.argv[11])
from report import ratio_table
runs = [json.loads(l) for l in open(path)]
lines, ratios = ratio_table(runs, ["direct", "haproxy", "socat"])
lines.append("")
lines.append(f"Idle connections, {idle} open clients: rpcgate RSS {fresh_rss/1024:.1f} MiB on a fresh "
             f"instance (at rest {fresh_base/1024:.1f} MiB), {gw_rss/1024:.1f} MiB on the instance that "
             f"carried the load (at rest {gw_base/1024:.1f} MiB: its receive buffers are touched); "
             f"HAProxy RSS {ha_rss/1024:.1f} MiB (at rest {ha_base/1024:.1f} MiB).")
table = "\n".join(lines)
print(table)
with open(f"{out}/summary.md", "w") as f:
    f.write(f"# rpcgate end-to-end comparison ({duration} s per run, loopback)\n\n{table}\n")
with open(f"{out}/results.json", "w") as f:
    json.dump({"duration_s": int(duration), "runs": runs, "ratios": ratios,
               "idle": {"connections": idle, "rpcgate_rss_kib": gw_rss, "rpcgate_rss_base_kib": gw_base,
                        "rpcgate_fresh_rss_kib": fresh_rss, "rpcgate_fresh_base_kib": fresh_base,
                        "haproxy_rss_kib": ha_rss, "haproxy_rss_base_kib": ha_base}}, f, indent=1)
PY
echo "wrote $out/results.json and $out/summary.md" >&2
