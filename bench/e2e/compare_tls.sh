#!/bin/bash
# TLS termination on loopback, all in one run so the ratios are fair. The
# client (rpcgate-bench run --tls implicit) speaks TLS 1.3 with one pinned
# cipher suite and the same certificates to:
#   direct-tls  rpcgate-bench serve --tls implicit (TLS in the echo server itself)
#   rpcgate     rpcgate --implicit-tls -> plaintext echo server
#   haproxy     HAProxy 2.6 (mode tcp, bind ... ssl alpn sunrpc) -> echo server
#   haproxy32   HAProxy 3.2 on forky's OpenSSL (bench/e2e/forky_chroot.sh's
#               chroot, built on first use; left out with a line when it cannot be)
#   stunnel     stunnel4 (server mode) -> echo server
# for two workloads:
#   large  1 MiB calls, 8 connections x 1 in flight
#   small  64-byte calls, 64 connections x 16 in flight
# then handshakes per second (connect, TLS, one NULL call, close) through each
# of them, rpcgate also with RFC 9289 STARTTLS, against the in-process OpenSSL
# loop (rpcgate-bench handshake --baseline) in the same run; and the RSS of
# rpcgate (and HAProxy) holding IDLE_TLS_CONNS idle TLS connections. Every
# run also records each proxy's own CPU and the echo server's (report.sh's
# CPU table: per call, per GB, against both HAProxys and the AEAD's cost).
#
#   bench/e2e/compare_tls.sh [BUILD_DIR] [OUT_DIR]
# Environment: DURATION (seconds per run, default 10), SHARDS (rpcgate and
# HAProxy threads, default 2), CIPHER (default TLS_AES_128_GCM_SHA256),
# WORKLOADS ("large small"), HS_CONNS (handshake client threads, default 4),
# IDLE_TLS_CONNS (default 2000).
# Writes OUT_DIR/results.json and OUT_DIR/summary.md; prints the table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build/release}
out=${2:-$build/bench-e2e-tls}
duration=${DURATION:-10}
shards=${SHARDS:-2}
cipher=${CIPHER:-TLS_AES_128_GCM_SHA256}
workloads=${WORKLOADS:-"large small"}
hs_conns=${HS_CONNS:-4}
idle_conns=${IDLE_TLS_CONNS:-2000}
. "$root/tests/peers/peer_lib.sh"

. "$here/lib.sh"
bench=$(e2e_find_bin rpcgate-bench)
rpcgate=$(e2e_find_bin rpcgate)
probe=$(e2e_find_bin rpcgate-probe)
e2e_need haproxy openssl python3
e2e_init cmp-tls

# --- certificates: the TLS tests' fixtures --------------------------------------
e2e_certs
cat "$certs/server.pem" "$certs/server.key" >"$work/haproxy.pem"

# --- the echo backend and the four TLS endpoints ----------------------------------
echo_port=$(peer_free_port)
e2e_bg serve.log "$bench" serve --listen "127.0.0.1:$echo_port" --shards 1
echo_pid=$bg_pid
e2e_wait_ready e2e_rpc_ready "$echo_port"
declare -A cpu_pids=()

direct_port=$(peer_free_port)
e2e_bg direct-tls.log "$bench" serve --listen "127.0.0.1:$direct_port" --shards "$shards" \
    --tls implicit --cert "$certs/server.pem" --key "$certs/server.key" --ciphersuites "$cipher"

gw_port=$(peer_free_port)
gw_starttls_port=$(peer_free_port)
e2e_bg rpcgate.log "$rpcgate" --listen "127.0.0.1:$gw_starttls_port" --tls opportunistic \
    --implicit-tls "127.0.0.1:$gw_port" --cert "$certs/server.pem" --key "$certs/server.key" \
    --backend "536870913=127.0.0.1:$echo_port" --shards "$shards" --no-reserved-port
gw_pid=$bg_pid
cpu_pids[rpcgate]=$gw_pid

ha_port=$(peer_free_port)
e2e_start_haproxy "$ha_port" "$echo_port" "ssl crt $work/haproxy.pem alpn sunrpc" "    ssl-default-bind-ciphersuites $cipher
    ssl-default-bind-options ssl-min-ver TLSv1.3"
cpu_pids[haproxy]=$ha_pid
setups="direct-tls rpcgate haproxy stunnel"
ha32_port=$(peer_free_port)
if chroot_dir=$("$here/forky_chroot.sh" "$build"); then
    e2e_start_haproxy "$ha32_port" "$echo_port" "ssl crt $work/haproxy.pem alpn sunrpc" \
        "    ssl-default-bind-ciphersuites $cipher
    ssl-default-bind-options ssl-min-ver TLSv1.3" "$chroot_dir"
    cpu_pids[haproxy32]=$ha_pid
    setups="direct-tls rpcgate haproxy haproxy32 stunnel"
    e2e_wait_ready e2e_tls_ready "$ha32_port"
else
    echo "compare_tls.sh: no HAProxy 3.2 (forky chroot) in this run" >&2
    chroot_dir=""
fi

st_port=$(peer_free_port)
e2e_start_stunnel "$st_port" "$echo_port"
cpu_pids[stunnel]=$bg_pid
cpu_pids[direct-tls]=""

e2e_wait_ready e2e_tls_ready "$direct_port" "$gw_port" "$ha_port" "$st_port"
# The RFC 9289 path too, and keep what the probe says for the report.
"$probe" "127.0.0.1:$gw_starttls_port" --prog 536870913 --vers 1 --ca "$certs/ca.pem" \
    --server-name localhost >"$work/probe.txt" || { cat "$work/probe.txt" >&2; exit 1; }

declare -A target=([direct-tls]=$direct_port [rpcgate]=$gw_port [haproxy]=$ha_port
    [haproxy32]=$ha32_port [stunnel]=$st_port)
e2e_setup_args() { setup_args=(--tls implicit "${tls_client[@]}"); }
results="$work/runs.jsonl"
: >"$results"
e2e_collect "$results" "$workloads" "$setups"

# --- handshake rate ----------------------------------------------------------------
hs_results="$work/handshakes.jsonl"
: >"$hs_results"
hs_duration=$(( duration < 5 ? duration : 5 ))
hs_run() { # NAME ARGS...
    local name=$1; shift
    echo "== handshakes: $name (${hs_duration} s)" >&2
    local json
    json=$("$bench" handshake "$@" --duration "$hs_duration" --json 2>>"$work/bench-client.log") ||
        echo "handshake run had errors: $name" >&2
    [ -n "$json" ] || json='{"handshakes_per_sec":0,"errors":-1}'
    echo "{\"setup\":\"$name\",\"result\":$json}" >>"$hs_results"
}
hs_run baseline --baseline --cert "$certs/server.pem" --key "$certs/server.key" "${tls_client[@]}"
for s in $setups; do
    hs_run "$s" --target "127.0.0.1:${target[$s]}" --tls implicit --connections "$hs_conns" "${tls_client[@]}"
done
hs_run rpcgate-starttls --target "127.0.0.1:$gw_starttls_port" --tls starttls \
    --connections "$hs_conns" "${tls_client[@]}"

# --- memory per idle TLS connection -------------------------------------------------
idle_tls_rss() { # PORT PID -> "before after n" (KiB, KiB, connections completed)
    python3 - "$1" "$2" "$idle_conns" "$certs/ca.pem" <<'PY'
import os, socket, ssl, sys, time
port, pid, n, ca = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.set_alpn_protocols(["sunrpc"])
time.sleep(0.5)
before = rss()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    conns.append(ctx.wrap_socket(s, server_hostname="localhost"))
# The server finishes its side after the client's Finished: let it settle.
deadline = time.time() + 30
last = -1
while time.time() < deadline:
    time.sleep(0.5)
    now = rss()
    if now == last:
        break
    last = now
print(before, rss(), len(conns))
for c in conns:
    c.close()
PY
}
echo "== idle TLS connections: $idle_conns via rpcgate and haproxy" >&2
read -r gw_before gw_after gw_n < <(idle_tls_rss "$gw_port" "$gw_pid")
read -r ha_before ha_after ha_n < <(idle_tls_rss "$ha_port" "$ha_pid")

libs=$(python3 "$here/tls_libs.py" --rpcgate "$rpcgate" ${chroot_dir:+--chroot "$chroot_dir"})
python3 - "$results" "$hs_results" "$out" "$duration" "$cipher" "$work/probe.txt" \
    "$gw_before" "$gw_after" "$gw_n" "$ha_before" "$ha_after" "$ha_n" "$here" "$libs" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys
path, hs_path, out, duration, cipher, probe_txt = sys.argv[1:7]
gw_before, gw_after, gw_n, ha_before, ha_after, ha_n = map(int, sys.argv[7:13])
sys.path.insert(0, sys.argv[13])
libs, load = json.loads(sys.argv[14]), sys.argv[15]
from report import ratio_table
import report_cpu
runs = [json.loads(l) for l in open(path)]
hs = [json.loads(l) for l in open(hs_path)]
table, ratios = ratio_table(runs, ["direct-tls", "haproxy", "stunnel"])
lines = [f"Implicit TLS 1.3, {cipher}, same certificates everywhere; {duration} s per run; "
         f"load average at the end {load}. haproxy: Debian 12's 2.6; haproxy32: 3.2 (forky).",
         ""] + table
groups = {}
for r in runs:
    groups.setdefault((r["workload"], r["setup"]), []).append(r["result"])
setups = list(dict.fromkeys(r["setup"] for r in runs))
cpu_lines, cpu = report_cpu.cpu_table(
    groups, list(dict.fromkeys(r["workload"] for r in runs)), setups, {}, {"tls_libraries": libs},
    peers=lambda s: ("haproxy32", "haproxy"), tls=set(setups))
lines += [""] + cpu_lines + [""] + report_cpu.library_lines({"tls_libraries": libs})
base = next((h["result"] for h in hs if h["setup"] == "baseline"), {})
base_loop = base.get("handshakes_per_sec", 0)
base_server = base.get("server_handshakes_per_sec", 0)
lines += ["", "Handshakes (connect, TLS 1.3, one NULL call, close) against the in-process OpenSSL "
          f"loop: {base_loop:.0f}/s for both sides in one thread, {base_server:.0f}/s for the "
          "server side alone (one thread's ceiling).", "",
          "| setup | handshakes/s | p50 µs | p99 µs | errors | vs loop | vs server-side ceiling |",
          "|---|---:|---:|---:|---:|---:|---:|"]
for h in hs:
    r = h["result"]
    rate = r.get("handshakes_per_sec", 0)
    lines.append(f"| {h['setup']} | {rate:.0f} | {r.get('p50_us', 0):.0f} | {r.get('p99_us', 0):.0f} | "
                 f"{r.get('errors', 0)} | {rate / base_loop if base_loop else 0:.2f} | "
                 f"{rate / base_server if base_server else 0:.2f} |")
def per_conn(before, after, n):
    return (after - before) / n if n else 0.0
gw_pc, ha_pc = per_conn(gw_before, gw_after, gw_n), per_conn(ha_before, ha_after, ha_n)
lines += ["", f"Idle TLS connections after the handshake: rpcgate {gw_n} connections, RSS "
          f"{gw_before/1024:.1f} -> {gw_after/1024:.1f} MiB = {gw_pc:.1f} KiB per connection; "
          f"HAProxy {ha_n}: {ha_before/1024:.1f} -> {ha_after/1024:.1f} MiB = {ha_pc:.1f} KiB per connection.",
          "", "rpcgate-probe on the RFC 9289 (STARTTLS) listener:", "", "```",
          open(probe_txt).read().rstrip(), "```"]
table = "\n".join(lines)
print(table)
with open(f"{out}/summary.md", "w") as f:
    f.write(f"# rpcgate TLS termination comparison (loopback)\n\n{table}\n")
with open(f"{out}/results.json", "w") as f:
    json.dump({"duration_s": int(duration), "cipher": cipher, "runs": runs, "ratios": ratios,
               "cpu": cpu, "tls_libraries": libs, "load_end": load, "handshakes": hs,
               "idle_tls": {"rpcgate": {"connections": gw_n, "rss_before_kib": gw_before,
                                        "rss_after_kib": gw_after, "kib_per_connection": gw_pc},
                            "haproxy": {"connections": ha_n, "rss_before_kib": ha_before,
                                        "rss_after_kib": ha_after, "kib_per_connection": ha_pc}}},
              f, indent=1)
PY
echo "wrote $out/results.json and $out/summary.md" >&2
