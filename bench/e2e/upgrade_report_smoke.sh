#!/bin/bash
# ctest's check of bench/e2e/upgrade_report.sh at its smallest: two upgrades
# of each set-up in 8 s runs (rpcgate, plaintext and implicit TLS, only when
# the build can upgrade itself; HAProxy 2.6 always). Not a measurement; it asserts what a bug would break:
#   - the table has its columns, results.json its figures;
#   - every baseline run completed calls with no error and no reconnect;
#   - HAProxy really reloaded (a new pid each time), every old process was
#     gone within GONE_WAIT (hard-stop-after 1s), and the bench accounted for
#     it honestly: every byte verified (no bad reply, no timeout), the only
#     errors are lost calls and refused connects, every lost call belongs to
#     a close with calls in flight, each old process's exit closed every
#     connection it held (closes >= connections x old processes gone), and
#     every connect after the first ones is a reconnect;
#   - rpcgate, when it ran: issue 16's acceptance, plaintext and TLS: no
#     error, no lost call, no reconnect, every old process gone.
#
#   bench/e2e/upgrade_report_smoke.sh BUILD_DIR OUT_DIR   (exit 77: a peer is missing)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for tool in haproxy curl; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (scripts/setup.sh)"; exit 77; }
done
rm -rf "$2"
SETUPS=${SETUPS:-"rpcgate haproxy rpcgate-tls"} DURATION=${DURATION:-8} GONE_WAIT=${GONE_WAIT:-6} \
    HAPROXY_HARD_STOP=1s "$here/upgrade_report.sh" --quick "$1" "$2"
python3 - "$2" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "results.json")))
md = open(os.path.join(out, "summary.md")).read()
header = ("| set-up | upgrades | old gone | calls | errors | lost calls | reconnects | clean closes "
          "| closes mid-call | p50 µs | p99 µs | p99.9 µs | p99.9 baseline µs | p99.9 ratio |")
assert header in md, md
conns = r["meta"]["connections"]
rows = {x["setup"]: x for x in r["setups"]}
steps = [json.loads(l) for l in open(os.path.join(out, "raw", "upgrades.jsonl")) if l.strip()]
assert set(r["not_run"]) <= {"rpcgate", "rpcgate-tls"}, f"not run: {r['not_run']}"
assert "haproxy" in rows, rows
for s, x in rows.items():
    b = x["baseline"]
    assert b["calls"] > 0 and b["errors"] == 0 and b["reconnects"] == 0, f"{s} baseline: {b}"
    assert x["calls"] > 0, f"{s}: no call completed during the upgrades: {x}"
    assert x["upgrades"] >= 1, f"{s}: no upgrade done: {x}"
    assert x["old_gone"] == x["upgrades"] and x["new_answered"] == x["upgrades"], x
    mine = [st for st in steps if st["setup"] == s]
    pids = [mine[0]["old_pid"]] + [st["new_pid"] for st in mine]
    assert len(set(pids)) == len(pids) and 0 not in pids, f"{s}: pids {pids}"
    assert x["bad_replies"] == 0 and x["timeouts"] == 0, f"{s}: {x}"
    assert x["errors"] == x["lost_calls"] + x["connect_errors"], f"{s}: {x}"
    assert x["lost_calls"] >= x["closes_in_flight"], f"{s}: {x}"
    closes = x["clean_closes"] + x["closes_in_flight"]
    assert x["connects"] == conns + x["reconnects"], f"{s}: {x}"
    assert x["reconnects"] <= closes, f"{s}: {x}"
    assert x["p999_ratio"] is not None and x["p999_ratio"] > 0, f"{s}: {x}"
h = rows["haproxy"]
# hard-stop-after ended each old process: every connection it held was closed.
assert h["clean_closes"] + h["closes_in_flight"] >= conns * h["old_gone"], h
# rpcgate moves its connections, TLS ones with their keys: nothing lost.
for s in ("rpcgate", "rpcgate-tls"):
    if s in rows:
        g = rows[s]
        assert g["errors"] == 0 and g["lost_calls"] == 0 and g["reconnects"] == 0, g
    else:
        print(f"upgrade report smoke: {s} not run: {r['not_run'].get(s)}")
said = [f"{s}: {x['upgrades']} upgrades, {x['lost_calls']} lost, {x['reconnects']} reconnects"
        for s, x in rows.items()]
print("upgrade report smoke: " + "; ".join(said))
PY
