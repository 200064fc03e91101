#!/bin/bash
# ctest's check of bench/e2e/report.sh at its smallest (not a measurement):
# every set-up starts, every run completes calls, results.json, summary.md
# and the PNG plots are written. A set-up the build cannot run (the chain
# without upstream TLS) may be "n/a"; nothing else may.
#
#   bench/e2e/report_smoke.sh BUILD_DIR OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for tool in haproxy socat gnuplot; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (scripts/setup.sh)"; exit 77; }
done
rm -rf "$2"
DURATION=${DURATION:-0.5} OPEN_RATE=${OPEN_RATE:-2000} "$here/report.sh" --quick "$1" "$2"
python3 - "$2" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "results.json")))
setups = {"direct", "rpcgate", "haproxy", "socat", "rpcgate-tls", "rpcgate-chain",
          "haproxy-tls", "stunnel"}
not_run = r["not_run"]
assert set(not_run) <= {"rpcgate-chain"}, f"set-ups that did not run: {not_run}"
ran = {(x["workload"], x["setup"]): x["result"] for x in r["runs"]}
for w in ("small", "large", "open"):
    for s in setups - set(not_run):
        res = ran.get((w, s))
        assert res is not None, f"{w} via {s}: no run"
        assert res.get("calls", 0) > 0, f"{w} via {s}: no call completed: {res}"
        assert res["histogram"]["count"] == res["calls"], f"{w} via {s}: histogram"
for png in ("throughput.png", "latency_cdf_open.png", "latency_cdf_small.png"):
    with open(os.path.join(out, png), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
md = open(os.path.join(out, "summary.md")).read()
assert "| small | rpcgate |" in md and "![throughput.png]" in md, md
print(f"report smoke: {len(ran)} runs, not run: {not_run or 'none'}")
PY
