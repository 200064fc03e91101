#!/bin/bash
# `promtool check metrics` (the Prometheus project's own linter) accepts what
# rpcgate serves on /metrics, scraped after some plaintext and TLS traffic.
#   promtool_check.sh RPCGATE RPCGATE_BENCH MAKE_CERTS
set -euo pipefail
rpcgate=$1 bench=$2 make_certs=$3
command -v promtool >/dev/null || { echo "SKIP: promtool not installed (Debian package prometheus; scripts/setup.sh installs it)"; exit 77; }
. "$(dirname "$0")/script_lib.sh"
gwt_init prom
gwt_start_echo
admin_port=$(peer_free_port)
gwt_start_gateway --admin "127.0.0.1:$admin_port"
"$bench" run --target "127.0.0.1:$gw_port" --connections 2 --depth 2 --size 100 --calls 200 >/dev/null
"$bench" run --target "127.0.0.1:$gw_port" --tls starttls --connections 2 --depth 2 --size 100 --calls 200 >/dev/null
python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$admin_port/metrics').read().decode())" >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt"
grep -q '^rpcgate_tls_handshakes_ok_total 2$' "$work/metrics.txt" || { echo "FAIL: expected 2 TLS handshakes in /metrics" >&2; exit 1; }
# Operator metrics: build info, the server certificate's expiry, per-call
# accounting of the echo calls, backend labels without the spec's options.
for want in '^rpcgate_build_info{version="[^"]*",openssl="OpenSSL [^"]*",compiler="[^"]*",io_backend="uring"} 1$' \
    '^rpcgate_certificate_not_after_seconds{role="server",subject="[^"]*",serial="[0-9A-F]*"} [0-9]\{10\}$' \
    '^rpcgate_rpc_calls_total{program="echo",version="1",procedure="echo"} 400$' \
    '^rpcgate_rpc_duration_seconds_count{program="echo",version="1",procedure="echo"} 400$' \
    "^rpcgate_backend_connects_total{backend=\"536870913\",address=\"127.0.0.1:$echo_port\"} [0-9]*\$"; do
    grep -q "$want" "$work/metrics.txt" || { echo "FAIL: /metrics has no line matching $want" >&2; exit 1; }
done
# The Grafana dashboard asks only for families that /metrics serves (those
# that need kernel TLS are absent here).
python3 - "$(dirname "$0")/../../deploy/grafana/rpcgate-dashboard.json" "$work/metrics.txt" <<'PY'
import json, re, sys
dash = json.load(open(sys.argv[1]))
served = {l.split()[2] for l in open(sys.argv[2]) if l.startswith("# TYPE ")}
absent_here = re.compile(r"^rpcgate_kernel_")
missing = set()
for panel in dash["panels"]:
    for t in panel.get("targets", []):
        for name in re.findall(r"rpcgate_[a-z0-9_]+", t["expr"]):
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if family not in served and name not in served and not absent_here.match(name):
                missing.add(name)
if missing:
    sys.exit("FAIL: the dashboard asks for families /metrics does not serve: " + ", ".join(sorted(missing)))
print(f"dashboard: {len(dash['panels'])} panels, every family it asks for is served")
PY
echo "promtool accepts $(grep -c '^# TYPE' "$work/metrics.txt") metric families"
