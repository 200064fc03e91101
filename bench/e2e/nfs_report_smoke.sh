#!/bin/bash
# ctest's check of bench/e2e/nfs_report.sh at its smallest (not a
# measurement): every set-up starts and every workload completes calls with
# no error (every READ verified), results.json, summary.md and the latency
# CDF plots are written.
#
#   bench/e2e/nfs_report_smoke.sh BUILD_DIR OUT_DIR   (exit 77: a peer is missing)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for tool in ganesha.nfsd socat gnuplot stunnel4; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (scripts/setup.sh)"; exit 77; }
done
rm -rf "$2"
DURATION=${DURATION:-0.5} "$here/nfs_report.sh" --quick "$1" "$2"
python3 - "$2" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "results.json")))
setups = {"direct", "rpcgate", "rpcgate-tls", "rpcgate-chain", "stunnel", "socat"}
workloads = {"read", "write", "meta", "read41"}
ran = {(x["workload"], x["setup"]): x["result"] for x in r["runs"]}
for w in workloads:
    for s in setups:
        res = ran.get((w, s))
        assert res is not None, f"{w} via {s}: no run"
        assert res.get("calls", 0) > 0, f"{w} via {s}: no call completed: {res}"
        assert res["errors"] == 0, f"{w} via {s}: {res['errors']} errors: {res['first_error']}"
        assert res["histogram"]["count"] == res["calls"], f"{w} via {s}: histogram"
        assert res["workload"] == ("nfs4.1" if w == "read41" else "nfs3"), res["workload"]
for w in workloads:
    with open(os.path.join(out, f"latency_cdf_{w}.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", w
md = open(os.path.join(out, "summary.md")).read()
assert "| read | rpcgate-tls |" in md, md
print(f"nfs report smoke: {len(ran)} runs, no errors")
PY
