#!/usr/bin/env python3
"""bench/e2e/profile.sh's arithmetic: perf stat counts per call, and the summary.

    profile_counts.py GW_CSV ECHO_CSV COUNT_JSON RECORD_JSON METRICS_BEFORE METRICS_AFTER
        one profile's counts per call (JSON on stdout)
    profile_counts.py --summary OUT_DIR LOAD_START LOAD_END DURATION SHARDS CIPHER PROFILE...
        summary.md (on stdout) from OUT_DIR/<profile>.counts.json, .symbols.txt, .dso.txt

GW_CSV, ECHO_CSV: `perf stat -x,` output for the gateway and the echo server
over the same client run (COUNT_JSON: rpcgate-bench run --json of that run);
RECORD_JSON: the client run under perf record (its ops/s shows what the
sampling cost); METRICS_*: the gateway's /metrics before and after that run.
Standard library only.
"""
import json
import os
import sys

NAMES = {
    "task-clock": "cpu_us",
    "context-switches": "context_switches",
    "raw_syscalls:sys_enter": "syscalls",
    "syscalls:sys_enter_io_uring_enter": "io_uring_enter",
    "io_uring:io_uring_submit_req": "sqes",
    "io_uring:io_uring_complete": "cqes",
    "io_uring:io_uring_task_work_run": "task_work_runs",
}
ROWS = [("cpu_us", "CPU µs (task-clock)"), ("syscalls", "syscalls"),
        ("io_uring_enter", "io_uring_enter calls"), ("sqes", "SQEs submitted"),
        ("cqes", "CQEs posted"), ("task_work_runs", "task-work runs"),
        ("context_switches", "context switches (sleeps = wake-ups)")]


def read_perf_csv(path):
    """{short name: total} from `perf stat -x,` (value,unit,event,...); task-clock in µs."""
    out = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) < 3 or f[2] not in NAMES:
            continue
        try:
            v = float(f[0])
        except ValueError:  # "<not supported>", "<not counted>"
            continue
        if f[2] == "task-clock":
            v *= 1000.0 if f[1] == "msec" else 1.0
        out[NAMES[f[2]]] = v
    return out


ENGINE = {"rpcgate_engine_loop_passes_total": "loop_passes",
          "rpcgate_engine_receives_total": "receive_completions",
          "rpcgate_engine_sends_total": "sendmsg_ops",
          "rpcgate_engine_pressure_copies_total": "pressure_copies",
          "rpcgate_engine_enobufs_total": "enobufs"}
ENGINE_ROWS = [("loop_passes", "engine loop passes"),
               ("receive_completions", "receive completions"),
               ("sendmsg_ops", "sendmsg operations"), ("pressure_copies", "pressure copies"),
               ("enobufs", "ENOBUFS (ring empty)")]


def read_metrics(path):
    """{short name: sum over shards} of the engine counters in a /metrics text."""
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{")[0].split()[0]
        if name in ENGINE:
            out[ENGINE[name]] = out.get(ENGINE[name], 0) + float(line.split()[-1])
    return out


def per_call(gw_csv, echo_csv, count_json, record_json, metrics0, metrics1):
    run = json.loads(open(count_json).read() or "{}")
    rec = json.loads(open(record_json).read() or "{}")
    calls = run.get("calls", 0)
    gw, echo = read_perf_csv(gw_csv), read_perf_csv(echo_csv)
    m0, m1 = read_metrics(metrics0), read_metrics(metrics1)
    engine = {k: m1[k] - m0.get(k, 0) for k in m1}
    return {"calls": calls, "ops_per_sec": run.get("ops_per_sec", 0),
            "ops_per_sec_sampled": rec.get("ops_per_sec", 0), "errors": run.get("errors", -1),
            "gateway_total": gw, "echo_total": echo, "engine_total": engine,
            "engine_per_call": {k: v / calls for k, v in engine.items()} if calls else {},
            "gateway_per_call": {k: v / calls for k, v in gw.items()} if calls else {},
            "echo_per_call": {k: v / calls for k, v in echo.items()} if calls else {}}


def summary(out, load_start, load_end, duration, shards, cipher, profiles):
    lines = ["# rpcgate profile (bench/e2e/profile.sh)", "",
             f"{duration} s per pass, {shards} shards, TLS 1.3 {cipher}; load average "
             f"(1, 5, 15 min) {load_start} at the start, {load_end} at the end. Counts are "
             "per completed call, from `perf stat` attached to each process over the "
             "same client run; the echo server's are the floor (one socket round trip).", ""]
    for p in profiles:
        c = json.load(open(os.path.join(out, f"{p}.counts.json")))
        g, e = c["gateway_per_call"], c["echo_per_call"]
        lines += [f"## {p}", "",
                  f"{c['calls']} calls, {c['ops_per_sec']:.0f} calls/s while counting, "
                  f"{c['ops_per_sec_sampled']:.0f} calls/s under perf record.", "",
                  "| per call | rpcgate | echo server | rpcgate / echo |", "|---|---:|---:|---:|"]
        for key, label in ROWS:
            gv, ev = g.get(key), e.get(key)
            if gv is None:
                continue
            r = f"{gv / ev:.2f}" if ev else "–"
            lines.append(f"| {label} | {gv:.3f} | {ev if ev is not None else 0:.3f} | {r} |")
        for key, label in ENGINE_ROWS:
            if key in c.get("engine_per_call", {}):
                lines.append(f"| {label} (rpcgate's /metrics) | {c['engine_per_call'][key]:.3f} "
                             "| | |")
        for kind in ("dso", "symbols"):
            path = os.path.join(out, f"{p}.{kind}.txt")
            if os.path.exists(path):
                lines += ["", f"Flat profile by {'DSO' if kind == 'dso' else 'symbol'} "
                          "(self time, cpu-clock samples):", "", "```",
                          open(path).read().rstrip(), "```"]
        lines.append("")
    return "\n".join(lines)


def main():
    if sys.argv[1] == "--summary":
        out, ls, le, d, sh, ci = sys.argv[2:8]
        print(summary(out, ls, le, d, sh, ci, sys.argv[8:]))
    else:
        print(json.dumps(per_call(*sys.argv[1:7]), indent=1))


if __name__ == "__main__":
    main()
