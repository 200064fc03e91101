#!/usr/bin/env python3
"""Turns the runs of bench/e2e/report.sh into results.json, summary.md and PNG plots.

    report.py RUNS_JSONL NA_JSONL OUT_DIR META_JSON

RUNS_JSONL: one {"round", "workload", "setup", "result"} a line (result:
rpcgate-bench run --json). With several rounds, each point is its median
round (by ops/s; by p99 for the open loop), and the spread of the rounds,
(max - min) / median, is shown beside it. NA_JSONL: one {"setup", "why"} a line for set-ups that could not
run. META_JSON: what the run was (duration, shards, cipher, rate, machine).
Plots are drawn with gnuplot (Debian's package); without it they are skipped
with a line on stderr. Standard library only.
"""
import json
import math
import os
import shutil
import subprocess
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_cpu  # noqa: E402

# Display order, and which HAProxy each set-up is held against: the one doing
# the same job (plain TCP forwarding, or TLS on the client side).
SETUPS = ["direct", "rpcgate", "rpcgate-nostats", "rpcgate-base", "haproxy", "haproxy32", "socat",
          "rpcgate-tls", "rpcgate-tls-base", "rpcgate-chain", "haproxy-tls", "haproxy32-tls",
          "stunnel"]
TLS = report_cpu.TLS
LABEL = {
    "direct": "direct (no proxy)",
    "rpcgate": "rpcgate",
    "rpcgate-nostats": "rpcgate --no-call-stats",
    "rpcgate-base": "rpcgate (BASELINE_RPCGATE)",
    "haproxy": "HAProxy tcp",
    "haproxy32": "HAProxy 3.2 tcp",
    "socat": "socat",
    "rpcgate-tls": "rpcgate TLS",
    "rpcgate-tls-base": "rpcgate TLS (BASELINE_RPCGATE)",
    "rpcgate-chain": "rpcgate A->B TLS",
    "haproxy-tls": "HAProxy TLS",
    "haproxy32-tls": "HAProxy 3.2 TLS",
    "stunnel": "stunnel TLS",
}
WORKLOAD_TITLE = {
    "small": "small: 64 B calls, 64 connections x 16 in flight (closed loop)",
    "large": "large: 1 MiB calls, 8 connections x 1 in flight (closed loop)",
    "open": "open: 64 B calls, 16 connections, open loop at a fixed rate",
}


# Two lines ("\\n" is gnuplot's escape inside a double-quoted string).
THROUGHPUT_TITLE = ("Throughput per set-up: the median round, whiskers from the lowest to the "
                    "highest\\nblue plaintext, orange TLS; on top, the ratio vs the HAProxy "
                    "doing the same job")


def peer_of(setup):
    """The HAProxy (2.6, Debian 12's) that the throughput ratios hold SETUP against."""
    return "haproxy-tls" if setup in TLS else "haproxy"


def ratio(a, b):
    return a / b if a and b else None


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}"


def ratio_table(runs, baselines):
    """compare.sh's and compare_tls.sh's table: a row per run, its ops/s as a
    ratio against each baseline set-up's in the same workload. Returns the
    markdown lines and {"workload/setup": {"vs_<baseline>": ratio}} (0 when
    the baseline did not run)."""
    by = {(r["workload"], r["setup"]): r["result"] for r in runs}
    lines = ["| workload | setup | ops/s | MB/s | p50 µs | p99 µs | p999 µs | errors | "
             + " | ".join(f"vs {b}" for b in baselines) + " |",
             "|---|---|" + "---:|" * (6 + len(baselines))]
    ratios = {}
    for (w, s), r in by.items():
        rs = [ratio(r["ops_per_sec"], by.get((w, b), {}).get("ops_per_sec")) or 0.0
              for b in baselines]
        ratios[f"{w}/{s}"] = {"vs_" + b.replace("-", "_"): x for b, x in zip(baselines, rs)}
        lines.append(f"| {w} | {s} | {r['ops_per_sec']:.0f} | {r['bytes_per_sec'] / 1e6:.1f} | "
                     f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['p999_us']:.0f} | "
                     f"{r['errors']} | " + " | ".join(f"{x:.2f}" for x in rs) + " |")
    return lines, ratios


def cdf_points(result):
    """(latency µs, fraction of calls at or below it) per non-empty bucket."""
    h = result.get("histogram") or {}
    total = h.get("count", 0)
    points, seen = [], 0
    for lo, hi, n in h.get("buckets", []):
        seen += n
        points.append(((hi + 1) / 1000.0, seen / total))
    return points


def median_rounds(runs):
    """{(workload, setup): the median round's result}, {(workload, setup): spread},
    {(workload, setup): every round's result, sorted}."""
    groups = {}
    for r in runs:
        groups.setdefault((r["workload"], r["setup"]), []).append(r["result"])
    by, spread = {}, {}
    for k, results in groups.items():
        key = "p99_us" if k[0] == "open" else "ops_per_sec"
        results.sort(key=lambda x: x.get(key, 0))
        by[k] = results[(len(results) - 1) // 2]
        mid = by[k].get(key, 0)
        if len(results) > 1 and mid:
            spread[k] = (results[-1].get(key, 0) - results[0].get(key, 0)) / mid
    return by, spread, groups


def fmt_spread(spread, k):
    return f" ±{spread[k] * 50:.0f}%" if k in spread else ""


def summarize(runs, na, meta):
    by, spread, groups = median_rounds(runs)
    workloads = [w for w in ("small", "large", "open") if any(k[0] == w for k in by)]
    setups = [s for s in SETUPS if any(k[1] == s for k in by) or s in na]
    rounds = meta.get("rounds", 1)
    load = (f" Load average (1, 5, 15 min) {meta['load_start']} at the start, "
            f"{meta['load_end']} at the end." if meta.get("load_start") else "")
    lines = [f"Loopback, {meta['duration_s']} s per point"
             + (f", median of {rounds} rounds (± half the spread of the rounds)" if rounds > 1 else "")
             + f", rpcgate and HAProxy with "
             f"{meta['shards']} threads, TLS 1.3 {meta['cipher']} with the same certificate "
             f"everywhere; {meta['machine']}. \"vs HAProxy\" holds each set-up against the "
             "HAProxy doing the same job (tcp for plaintext, TLS termination for the TLS "
             "set-ups); \"vs direct\" against the client talking to the echo server itself. "
             "HAProxy without a version is Debian 12's 2.6. Throughput ratios: higher is better."
             + load, ""]
    ratios = {}
    closed = [w for w in workloads if w != "open"]
    if closed:
        lines += ["| workload | setup | ops/s | MB/s | p50 µs | p99 µs | p999 µs | errors "
                  "| vs HAProxy | vs direct |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in closed:
        for s in setups:
            if s in na:
                lines.append(f"| {w} | {LABEL[s]} | n/a ({na[s]}) | | | | | | | |")
                continue
            r = by.get((w, s))
            if r is None:
                continue
            vs_ha = ratio(r["ops_per_sec"], by.get((w, peer_of(s)), {}).get("ops_per_sec"))
            vs_direct = ratio(r["ops_per_sec"], by.get((w, "direct"), {}).get("ops_per_sec"))
            ratios[f"{w}/{s}"] = {"vs_haproxy": vs_ha, "vs_direct": vs_direct,
                                  "haproxy": peer_of(s)}
            lines.append(f"| {w} | {LABEL[s]} | {r['ops_per_sec']:.0f}{fmt_spread(spread, (w, s))} | "
                         f"{r['bytes_per_sec'] / 1e6:.1f} | {r['p50_us']:.0f} | "
                         f"{r['p99_us']:.0f} | {r['p999_us']:.0f} | {r['errors']} | "
                         f"{fmt_ratio(vs_ha)} | {fmt_ratio(vs_direct)} |")
    if "open" in workloads:
        lines += ["", f"Open loop at {meta['open_rate']:.0f} calls/s (latency from each call's "
                  "intended send time, so a stall counts for every call it delays; send lag: "
                  "how late the client itself sent). Latency ratios: lower is better.", "",
                  "| setup | ops/s | p50 µs | p90 µs | p99 µs | p999 µs | max µs | missed "
                  "| send lag p99 µs | errors | p99 vs HAProxy | p99 vs direct |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in setups:
            if s in na:
                lines.append(f"| {LABEL[s]} | n/a ({na[s]}) | | | | | | | | | | |")
                continue
            r = by.get(("open", s))
            if r is None:
                continue
            vs_ha = ratio(r["p99_us"], by.get(("open", peer_of(s)), {}).get("p99_us"))
            vs_direct = ratio(r["p99_us"], by.get(("open", "direct"), {}).get("p99_us"))
            ratios[f"open/{s}"] = {"p99_vs_haproxy": vs_ha, "p99_vs_direct": vs_direct,
                                   "haproxy": peer_of(s)}
            lines.append(f"| {LABEL[s]} | {r['ops_per_sec']:.0f} | {r['p50_us']:.0f} | "
                         f"{r.get('p90_us', 0):.0f} | {r['p99_us']:.0f}{fmt_spread(spread, ('open', s))} | "
                         f"{r['p999_us']:.0f} | "
                         f"{r.get('max_us', 0):.0f} | {r.get('missed_calls', 0)} | "
                         f"{r.get('send_lag_p99_us', 0):.0f} | {r['errors']} | "
                         f"{fmt_ratio(vs_ha)} | {fmt_ratio(vs_direct)} |")
    cost = [(w, ratio(by[(w, "rpcgate")]["ops_per_sec"], by[(w, "rpcgate-nostats")]["ops_per_sec"]))
            for w in workloads if (w, "rpcgate") in by and (w, "rpcgate-nostats") in by]
    if cost:
        lines += ["", "Per-call accounting (rpcgate vs rpcgate --no-call-stats, ops/s, same run): "
                  + ", ".join(f"{w} {fmt_ratio(r)}" for w, r in cost) + "."]
        for w, r in cost:
            ratios.setdefault(f"{w}/rpcgate", {})["vs_rpcgate_nostats"] = r
        for w, _ in cost:
            paired = report_cpu.paired_cpu(runs, w, "rpcgate", "rpcgate-nostats")
            if not paired:
                continue
            mid = statistics.median(paired)
            lines.append(f"Its cost in proxy CPU per call, {w}: {(mid - 1) * 100:+.1f} % (the "
                         f"median over {len(paired)} rounds of each round's ratio; "
                         f"{(paired[0] - 1) * 100:+.1f} to {(paired[-1] - 1) * 100:+.1f} %).")
            ratios[f"{w}/rpcgate"]["cpu_vs_rpcgate_nostats"] = mid
    cpu_lines, cpu = report_cpu.cpu_table(groups, closed, setups, LABEL, meta)
    idle_lines, idle = report_cpu.idle_table(groups, setups, LABEL, meta)
    lib_lines = report_cpu.library_lines(meta)
    for extra in (cpu_lines, idle_lines, lib_lines):
        if extra:
            lines += [""] + extra
    for k, row in cpu.items():
        ratios.setdefault(k, {}).update(
            {n: row[n] for n in ("cpu_vs_haproxy32", "cpu_vs_haproxy", "x_aead")})
    for s, row in idle.items():
        ratios[f"idle/{s}"] = {k: row[k] for k in ("vs_haproxy32", "vs_haproxy",
                                                    "vs_haproxy32_next", "vs_haproxy_next")}
    return by, groups, workloads, setups, "\n".join(lines), ratios, {"cpu": cpu, "idle": idle}


def gnuplot_quote(s):
    return '"' + s.replace('"', "'") + '"'


def plot_throughput(by, groups, setups, na, out, work):
    """One panel per closed-loop workload: a bar per set-up (the median round)
    with a whisker from the lowest to the highest round, ratio vs HAProxy on top."""
    panels = []
    for w, unit, key, scale in (("small", "ops/s (thousands)", "ops_per_sec", 1e3),
                                ("large", "MB/s (payload, both ways)", "bytes_per_sec", 1e6)):
        if not any((w, s) in by for s in setups):
            continue
        dat = os.path.join(work, f"tp_{w}.dat")
        with open(dat, "w") as f:
            for i, s in enumerate(setups):
                r = by.get((w, s))
                v = r[key] / scale if r else 0
                rounds = groups.get((w, s)) or [r or {}]
                lo, hi = (min(x.get(key, 0) for x in rounds) / scale,
                          max(x.get(key, 0) for x in rounds) / scale)
                peer = by.get((w, peer_of(s)))
                rr = ratio(r[key], peer[key]) if r and peer else None
                shown = rr and s not in ("direct", peer_of(s))
                note = "n/a" if s in na else (f"{rr:.2f}x" if shown else "")
                f.write(f"{i} {v:.3f} {1 if s in TLS else 0} {lo:.3f} {hi:.3f} "
                        f"{gnuplot_quote(LABEL[s])} {gnuplot_quote(note)}\n")
        panels.append((w, unit, dat))
    if not panels:
        return None
    png = os.path.join(out, "throughput.png")
    gp = [f"set terminal pngcairo size {620 * len(panels)},520 font ',10'",
          f"set output {gnuplot_quote(png)}",
          f"set multiplot layout 1,{len(panels)} title "
          f"{gnuplot_quote(THROUGHPUT_TITLE)}",
          "set style fill solid 0.85 border -1", "set boxwidth 0.7", "set grid ytics",
          "set xtics rotate by -35 left nomirror", "set yrange [0:*]", "set offsets 0,0,graph 0.08,0",
          "set key off", "set linetype 1 lc rgb '#4477aa'", "set linetype 2 lc rgb '#ee7733'"]
    for w, unit, dat in panels:
        gp += [f"set title {gnuplot_quote(WORKLOAD_TITLE[w].split(' (')[0])}",
               f"set ylabel {gnuplot_quote(unit)}",
               f"plot {gnuplot_quote(dat)} using 1:2:($3+1):xtic(6) with boxes lc variable, "
               "'' using 1:2:4:5 with yerrorbars lc rgb '#333333' pt 7 ps 0 lw 1, "
               f"'' using 1:5:7 with labels offset 0,0.7 font ',9'"]
    gp.append("unset multiplot")
    return run_gnuplot(gp, work, "throughput") and png


def plot_cdf(by, setups, workload, rate, out, work):
    """Latency CDF on a 'nines' axis: y = -log10(1 - fraction)."""
    series = []
    for s in setups:
        r = by.get((workload, s))
        if not r or not r.get("histogram", {}).get("count"):
            continue
        total = r["histogram"]["count"]
        dat = os.path.join(work, f"cdf_{workload}_{s}.dat")
        with open(dat, "w") as f:
            for us, frac in cdf_points(r):
                nines = -math.log10(max(1.0 - frac, 1.0 / total))
                f.write(f"{us:.3f} {nines:.5f}\n")
        series.append((s, dat))
    if not series:
        return None
    png = os.path.join(out, f"latency_cdf_{workload}.png")
    title = WORKLOAD_TITLE[workload]
    if workload == "open":
        title = f"open loop at {rate:.0f} calls/s: 64 B calls, 16 connections"
    gp = ["set terminal pngcairo size 900,560 font ',10'",
          f"set output {gnuplot_quote(png)}",
          f"set title {gnuplot_quote('Latency CDF - ' + title)}",
          "set logscale x", "set xlabel 'latency (µs, log scale)'", "set ylabel 'percentile'",
          "set ytics ('0%%' 0, '90%%' 1, '99%%' 2, '99.9%%' 3, '99.99%%' 4, '99.999%%' 5)",
          "set yrange [0:*]", "set grid xtics ytics mxtics", "set key bottom right",
          "set linetype 1 lc rgb '#000000' lw 2", "set linetype 2 lc rgb '#4477aa' lw 2",
          "set linetype 3 lc rgb '#66ccee' lw 2", "set linetype 4 lc rgb '#999999' lw 2",
          "set linetype 5 lc rgb '#ee7733' lw 2", "set linetype 6 lc rgb '#cc3311' lw 2",
          "set linetype 7 lc rgb '#ee3377' lw 2", "set linetype 8 lc rgb '#009988' lw 2"]
    plots = [f"{gnuplot_quote(dat)} using 1:2 with steps lt {SETUPS.index(s) + 1} "
             f"dt {2 if s in TLS else 1} title {gnuplot_quote(LABEL[s])}" for s, dat in series]
    gp.append("plot " + ", ".join(plots))
    return run_gnuplot(gp, work, f"cdf_{workload}") and png


def run_gnuplot(lines, work, name):
    script = os.path.join(work, f"{name}.gp")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    done = subprocess.run(["gnuplot", script], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"report.py: gnuplot failed on {name}: {done.stderr.strip()}", file=sys.stderr)
        return False
    return True


def main():
    runs_path, na_path, out, meta_path = sys.argv[1:5]
    runs = [json.loads(l) for l in open(runs_path) if l.strip()]
    na = {}
    if os.path.exists(na_path):
        for l in open(na_path):
            if l.strip():
                d = json.loads(l)
                na[d["setup"]] = d["why"]
    meta = json.load(open(meta_path))
    by, groups, workloads, setups, table, ratios, sections = summarize(runs, na, meta)
    plots = []
    if shutil.which("gnuplot"):
        work = os.path.join(out, "plot-data")
        os.makedirs(work, exist_ok=True)
        plots.append(plot_throughput(by, groups, setups, na, out, work))
        for w in ("open", "small", "large"):
            if w in workloads:
                plots.append(plot_cdf(by, setups, w, meta["open_rate"], out, work))
    else:
        print("report.py: gnuplot is not installed (scripts/setup.sh): no plots", file=sys.stderr)
    plots = [os.path.basename(p) for p in plots if p]
    md = ["# rpcgate end-to-end report", "",
          f"`bench/e2e/report.sh`, {meta.get('date', '')}"
          + (" (--quick)" if meta.get("quick") else "") + ".", "", table, ""]
    md += [f"![{p}]({p})" for p in plots]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "not_run": na, "runs": runs, "ratios": ratios,
                   **sections, "plots": plots}, f, indent=1)
    print(table)


if __name__ == "__main__":
    main()
