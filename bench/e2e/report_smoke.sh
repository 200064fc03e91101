#!/bin/bash
# ctest's check of bench/e2e/report.sh at its smallest (not a measurement):
# every set-up starts, every run completes calls, results.json, summary.md
# and the PNG plots are written, each proxy's CPU per call is there and the
# idle workload counted memory per connection. A set-up the build cannot run
# (the chain without upstream TLS) may be "n/a", and so may HAProxy 3.2 when
# bench/e2e/forky_chroot.sh has not built its chroot in BUILD_DIR (the
# reason is printed); nothing else may.
#
#   bench/e2e/report_smoke.sh BUILD_DIR OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for tool in haproxy socat gnuplot; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (scripts/setup.sh)"; exit 77; }
done
rm -rf "$2"
DURATION=${DURATION:-0.5} OPEN_RATE=${OPEN_RATE:-2000} IDLE_CONNS=${IDLE_CONNS:-20} \
    "$here/report.sh" --quick "$1" "$2"
python3 - "$2" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "results.json")))
setups = {"direct", "rpcgate", "haproxy", "haproxy32", "socat", "rpcgate-tls", "rpcgate-chain",
          "haproxy-tls", "haproxy32-tls", "stunnel"}
not_run = r["not_run"]
assert set(not_run) <= {"rpcgate-chain", "haproxy32", "haproxy32-tls"}, \
    f"set-ups that did not run: {not_run}"
for s in ("haproxy32", "haproxy32-tls"):
    if s in not_run:
        print(f"report smoke: {s} not run: {not_run[s]}")
ran = {(x["workload"], x["setup"]): x["result"] for x in r["runs"]}
for w in ("small", "large", "open"):
    for s in setups - set(not_run):
        res = ran.get((w, s))
        assert res is not None, f"{w} via {s}: no run"
        assert res.get("calls", 0) > 0, f"{w} via {s}: no call completed: {res}"
        assert res["histogram"]["count"] == res["calls"], f"{w} via {s}: histogram"
        if w != "open" and s not in ("direct", "socat"):
            cpu = r["cpu"].get(f"{w}/{s}") or {}
            assert (cpu.get("proxy_us_per_call") or 0) > 0, f"{w} via {s}: no proxy CPU: {cpu}"
idle_setups = {"rpcgate", "haproxy", "haproxy32", "rpcgate-tls", "haproxy-tls", "haproxy32-tls",
               "stunnel"} - set(not_run)
for s in idle_setups:
    res = ran.get(("idle", s))
    assert res and res["idle_connections"] > 0 and res["errors"] == 0, f"idle via {s}: {res}"
    assert res["rss_after_kib"] > 0, f"idle via {s}: {res}"
    assert res.get("more_connections", 0) > 0 and res["rss_more_kib"] > 0, f"idle via {s}: {res}"
assert r["meta"]["tls_libraries"]["aead"]["host"]["gb_per_s"] > 0, r["meta"]["tls_libraries"]
for png in ("throughput.png", "latency_cdf_open.png", "latency_cdf_small.png"):
    with open(os.path.join(out, png), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
md = open(os.path.join(out, "summary.md")).read()
assert "| small | rpcgate |" in md and "![throughput.png]" in md, md
assert "CPU µs/call" in md and "KiB per connection" in md, md
print(f"report smoke: {len(ran)} runs, not run: {not_run or 'none'}")
PY
