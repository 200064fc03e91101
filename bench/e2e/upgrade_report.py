#!/usr/bin/env python3
"""The table and JSON of bench/e2e/upgrade_report.sh, from its raw files.

  upgrade_report.py RAW_DIR OUT_DIR

RAW_DIR holds runs.jsonl ({"setup", "run": "baseline"|"upgrade", "result":
rpcgate-bench run --json}; the upgrade run also has "old_alive_at_end": old
processes still running after the last upgrade, before the load ended),
upgrades.jsonl (one line per upgrade: "setup", "upgrade", "old_pid",
"new_pid", "old_gone", "new_answers", "seconds"),
not_run.jsonl ({"setup", "why"}) and meta.json. Writes OUT_DIR/results.json
(meta, one object per set-up, not_run) and OUT_DIR/summary.md, and prints the
table. docs/upgrade-bench.md says what each column means.
"""
import json
import os
import sys

COLUMNS = ["set-up", "upgrades", "old gone", "calls", "errors", "lost calls", "reconnects",
           "clean closes", "closes mid-call", "p50 µs", "p99 µs", "p99.9 µs",
           "p99.9 baseline µs", "p99.9 ratio"]


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(setup, runs, steps):
    """One set-up's figures: the upgrade run beside its baseline."""
    base = runs.get((setup, "baseline"), {})
    up = runs.get((setup, "upgrade"), {})
    mine = [s for s in steps if s["setup"] == setup]
    gone = sum(1 for s in mine if s["old_gone"])
    answers = sum(1 for s in mine if s["new_answers"])
    b999, u999 = base.get("p999_us", 0), up.get("p999_us", 0)
    return {
        "setup": setup,
        "upgrades": len(mine),
        "old_gone": gone,
        "new_answered": answers,
        "upgrade_seconds": [s["seconds"] for s in mine],
        "calls": up.get("calls", 0),
        "errors": up.get("errors", -1),
        "lost_calls": up.get("lost_calls", 0),
        "connects": up.get("connects", 0),
        "reconnects": up.get("reconnects", 0),
        "clean_closes": up.get("clean_closes", 0),
        "closes_in_flight": up.get("closes_in_flight", 0),
        "connect_errors": up.get("connect_errors", 0),
        "timeouts": up.get("timeouts", 0),
        "bad_replies": up.get("bad_replies", 0),
        "ops_per_sec": up.get("ops_per_sec", 0),
        "p50_us": up.get("p50_us", 0),
        "p99_us": up.get("p99_us", 0),
        "p999_us": u999,
        "max_us": up.get("max_us", 0),
        "baseline": {k: base.get(k, 0) for k in
                     ("calls", "errors", "ops_per_sec", "p50_us", "p99_us", "p999_us",
                      "max_us", "reconnects", "lost_calls")},
        "p999_ratio": round(u999 / b999, 2) if b999 > 0 else None,
    }


def row(r):
    n = r["upgrades"]
    gone = "yes" if n and r["old_gone"] == n else f"no ({r['old_gone']} of {n})"
    if r.get("old_alive_at_end"):
        gone += f", {r['old_alive_at_end']} left after the last"
    ratio = "n/a" if r["p999_ratio"] is None else f"{r['p999_ratio']:.2f}"
    return [r["setup"], str(n), gone, str(r["calls"]), str(r["errors"]), str(r["lost_calls"]),
            str(r["reconnects"]), str(r["clean_closes"]), str(r["closes_in_flight"]),
            f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}", f"{r['p999_us']:.0f}",
            f"{r['baseline']['p999_us']:.0f}", ratio]


def table(rows, not_run):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in rows]
    for s, why in not_run.items():
        lines.append(f"| {s} | n/a ({why}) |" + " |" * (len(COLUMNS) - 2))
    return "\n".join(lines)


def main():
    raw, out = sys.argv[1], sys.argv[2]
    lines = read_jsonl(f"{raw}/runs.jsonl")
    runs = {(x["setup"], x["run"]): x["result"] for x in lines}
    alive = {x["setup"]: x["old_alive_at_end"] for x in lines if "old_alive_at_end" in x}
    steps = read_jsonl(f"{raw}/upgrades.jsonl")
    not_run = {x["setup"]: x["why"] for x in read_jsonl(f"{raw}/not_run.jsonl")}
    with open(f"{raw}/meta.json") as f:
        meta = json.load(f)
    setups = []
    for s, _ in runs:
        if s not in setups:
            setups.append(s)
    rows = [summarize(s, runs, steps) for s in setups]
    for r in rows:
        r["old_alive_at_end"] = alive.get(r["setup"], 0)
    with open(f"{out}/results.json", "w") as f:
        json.dump({"meta": meta, "setups": rows, "not_run": not_run}, f, indent=1)
    m = meta
    text = (f"# Upgrades under load\n\n"
            f"{m['upgrades']} upgrades asked per set-up, in runs of {m['duration_s']} s of "
            f"`rpcgate-bench run --verify --reconnect`: {m['connections']} connections x "
            f"{m['depth']} in flight, {m['size']}..{m['size_max']} B, plaintext (the -tls "
            f"set-ups: implicit TLS 1.3 from the load to the proxy); baseline: "
            f"the same run without upgrades. HAProxy reloads with `-x` and `-sf`, "
            f"hard-stop-after {m['haproxy_hard_stop_after']}. {m['machine']}, load "
            f"{m['load']}, {m['date']}. Versions: {json.dumps(m['versions'])}.\n\n"
            + table(rows, not_run) + "\n")
    with open(f"{out}/summary.md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
