"""report.py's CPU, memory and TLS library sections (bench/e2e/report.sh).

Each closed-loop run of report.sh carries "cpu": {"proxy_s", "echo_s"}: the
CPU seconds (user + system, all threads) the proxy's processes and the echo
server spent over the run. From them, per set-up and workload, the median
over the rounds of each figure on its own:
  proxy_cores        proxy CPU / the run's elapsed time
  proxy_us_per_call  proxy CPU per completed call
  proxy_s_per_gb     proxy CPU per 10^9 payload bytes (both directions)
  echo_us_per_call   the echo server's CPU per call: one socket round trip
                     per call, the floor a proxy (two of them) is held to
  proxy_vs_echo      proxy CPU / echo server CPU
and ratios of proxy_us_per_call against each HAProxy doing the same job
(lower is better), and, for the TLS set-ups' bulk rows, against the AEAD's
own cost (openssl speed of the library the set-up runs on).
Idle runs carry {"idle_connections", "rss_before_kib", "rss_after_kib",
"kib_per_connection"}. Standard library only.
"""

TLS = {"rpcgate-tls", "rpcgate-tls-base", "rpcgate-chain", "haproxy-tls", "haproxy32-tls",
       "stunnel"}
CPU_KEYS = ("proxy_cores", "proxy_us_per_call", "proxy_s_per_gb", "echo_us_per_call",
            "proxy_vs_echo")


def haproxies(setup):
    """(HAProxy 3.2, HAProxy 2.6) doing the same job as SETUP."""
    return ("haproxy32-tls", "haproxy-tls") if setup in TLS else ("haproxy32", "haproxy")


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[(len(xs) - 1) // 2] if xs else None


def cpu_figures(result):
    """The per-run figures of one result (None where they cannot be had)."""
    cpu = result.get("cpu")
    calls = result.get("calls", 0)
    if cpu is None or not calls:
        return None
    elapsed = result.get("elapsed_s") or 0
    nbytes = result.get("payload_bytes_sent", 0) + result.get("payload_bytes_received", 0)
    proxy, echo = cpu.get("proxy_s"), cpu.get("echo_s")
    f = {"echo_us_per_call": echo * 1e6 / calls if echo is not None else None}
    if proxy is not None and proxy > 0:
        f["proxy_cores"] = proxy / elapsed if elapsed else None
        f["proxy_us_per_call"] = proxy * 1e6 / calls
        f["proxy_s_per_gb"] = proxy / (nbytes / 1e9) if nbytes else None
        f["proxy_vs_echo"] = proxy / echo if echo else None
    return f


def paired_cpu(runs, workload, a, b):
    """Set-up A's proxy CPU per call over B's, round by round (the two ran
    side by side in each round, so a round's load cancels out): the sorted
    ratios, or [] when no round has both."""
    per = {}
    for r in runs:
        if r["workload"] == workload and r["setup"] in (a, b):
            f = cpu_figures(r["result"]) or {}
            if f.get("proxy_us_per_call"):
                per.setdefault(r.get("round", 1), {})[r["setup"]] = f["proxy_us_per_call"]
    return sorted(d[a] / d[b] for d in per.values() if a in d and b in d)


def cpu_table(groups, workloads, setups, labels, meta, peers=haproxies, tls=TLS):
    """Markdown lines and {"workload/setup": figures and ratios}. PEERS(setup): the
    (HAProxy 3.2, HAProxy 2.6) set-ups it is held against; TLS: the TLS set-ups."""
    aead = (meta.get("tls_libraries") or {}).get("aead") or {}
    med = {}
    for k, results in groups.items():
        per_run = [f for f in (cpu_figures(r) for r in results) if f]
        if per_run:
            med[k] = {key: median(f.get(key) for f in per_run) for key in CPU_KEYS}
    if not med:
        return [], {}
    lines = ["Each proxy's own CPU (user + system, all threads, /proc/PID/stat before and after "
             "each point) and the echo server's; each figure the median of its rounds. CPU ratios: "
             "lower is better; \"x AEAD\": CPU per GB over what AES-128-GCM alone costs per GB "
             "(openssl speed, one core) with the OpenSSL the set-up runs on.", "",
             "| workload | setup | ops/s | proxy CPU (cores) | CPU µs/call | CPU s/GB | "
             "vs HAProxy 3.2 | vs HAProxy 2.6 | x AEAD | echo CPU µs/call | proxy / echo |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    out = {}
    for w in workloads:
        for s in setups:
            f = med.get((w, s))
            if f is None:
                continue
            ops = median(r.get("ops_per_sec") for r in groups[(w, s)])
            row = dict(f)
            for name, peer in zip(("cpu_vs_haproxy32", "cpu_vs_haproxy"), peers(s)):
                p = med.get((w, peer), {}).get("proxy_us_per_call")
                mine = f.get("proxy_us_per_call")
                row[name] = mine / p if mine and p and s != peer else None
            lib = aead.get("chroot" if s.startswith("haproxy32") else "host") or {}
            row["x_aead"] = (f["proxy_s_per_gb"] / lib["s_per_gb"]
                             if s in tls and w == "large" and f.get("proxy_s_per_gb")
                             and lib.get("s_per_gb") else None)
            out[f"{w}/{s}"] = row
            lines.append(f"| {w} | {labels.get(s, s)} | {ops or 0:.0f} | {fmt(f.get('proxy_cores'))} | "
                         f"{fmt(f.get('proxy_us_per_call'))} | {fmt(f.get('proxy_s_per_gb'), 3)} | "
                         f"{fmt(row['cpu_vs_haproxy32'])} | {fmt(row['cpu_vs_haproxy'])} | "
                         f"{fmt(row['x_aead'])} | {fmt(f.get('echo_us_per_call'))} | "
                         f"{fmt(f.get('proxy_vs_echo'))} |")
    lines += floor_lines(med, setups, labels, aead, out)
    return lines, out


# A TLS set-up and the same proxy forwarding the same bytes in plaintext.
PLAIN_TWIN = {"rpcgate-tls": "rpcgate", "rpcgate-tls-base": "rpcgate-base",
              "haproxy-tls": "haproxy", "haproxy32-tls": "haproxy32"}


def floor_lines(med, setups, labels, aead, out):
    """The bulk TLS rows against their floor: the same proxy's plaintext CPU per
    GB in this run plus the AEAD's own (openssl speed). No user-space TLS proxy
    forwarding through these sockets can spend less, so floor / AEAD is the
    lowest "x AEAD" that set-up could reach here."""
    rows = []
    for s in setups:
        tls, plain = med.get(("large", s)), med.get(("large", PLAIN_TWIN.get(s, "")))
        lib = aead.get("chroot" if s.startswith("haproxy32") else "host") or {}
        if not tls or not plain or not lib.get("s_per_gb"):
            continue
        t, p, a = tls.get("proxy_s_per_gb"), plain.get("proxy_s_per_gb"), lib["s_per_gb"]
        if not t or not p:
            continue
        floor = p + a
        out.setdefault(f"large/{s}", {}).update({"floor_s_per_gb": floor, "x_floor": t / floor,
                                                 "floor_x_aead": floor / a})
        rows.append(f"| {labels.get(s, s)} | {t:.3f} | {p:.3f} | {a:.3f} | {floor:.3f} | "
                    f"{t / floor:.2f} | {t / a:.2f} | {floor / a:.2f} |")
    if not rows:
        return []
    return ["", "1 MiB TLS against its floor: the same proxy's plaintext CPU per GB in this run "
            "(the sockets' and the kernel's part) plus the AEAD's own cost (openssl speed, the "
            "set-up's OpenSSL). \"floor x AEAD\" is the lowest \"x AEAD\" a user-space TLS proxy "
            "doing that forwarding can reach on this machine.", "",
            "| setup | TLS s/GB | plaintext s/GB | AEAD s/GB | floor s/GB | TLS / floor | "
            "x AEAD | floor x AEAD |", "|---|---:|---:|---:|---:|---:|---:|---:|"] + rows


def idle_table(groups, setups, labels, meta):
    """Markdown lines and {setup: the idle figures and ratios}."""
    runs = {s: groups[("idle", s)][0] for s in setups if ("idle", s) in groups}
    if not runs:
        return [], {}
    lines = [f"Memory per idle connection: the proxy's RSS before and after "
             f"{meta.get('idle_connections', '?')} connections that made one NULL call each "
             "(TLS 1.3 for the TLS set-ups), measured once on the freshly started proxies, "
             "then after as many more: \"next\" is what one more idle connection costs, "
             "without the memory a proxy touches once and keeps (receive buffers, pools). "
             "Lower is better.", "",
             "| setup | connections | RSS before MiB | RSS after MiB | KiB per connection | "
             "vs HAProxy 3.2 | vs HAProxy 2.6 | KiB per next connection | next vs HAProxy 3.2 | "
             "errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    out = {}
    for s, r in runs.items():
        row = {k: r.get(k) for k in ("idle_connections", "rss_before_kib", "rss_after_kib",
                                     "kib_per_connection", "more_connections", "rss_more_kib",
                                     "kib_per_more_connection", "errors")}
        for key, suffix in (("kib_per_connection", ""), ("kib_per_more_connection", "_next")):
            mine = r.get(key)
            for name, peer in zip(("vs_haproxy32", "vs_haproxy"), haproxies(s)):
                p = runs.get(peer, {}).get(key)
                row[name + suffix] = mine / p if mine and p and s != peer else None
        out[s] = row
        lines.append(f"| {labels.get(s, s)} | {r.get('idle_connections', 0)} | "
                     f"{r.get('rss_before_kib', 0) / 1024:.1f} | {r.get('rss_after_kib', 0) / 1024:.1f} | "
                     f"{fmt(r.get('kib_per_connection'), 1)} | {fmt(row['vs_haproxy32'])} | "
                     f"{fmt(row['vs_haproxy'])} | {fmt(r.get('kib_per_more_connection'), 1)} | "
                     f"{fmt(row['vs_haproxy32_next'])} | {r.get('errors', 0)} |")
    return lines, out


def library_lines(meta):
    libs = meta.get("tls_libraries")
    if not libs:
        return []
    v, aead = libs.get("versions", {}), libs.get("aead", {})
    lines = ["TLS libraries in this run (the OpenSSL each runs on): "
             + "; ".join(f"{name}: {v.get(key) or 'n/a'}" for name, key in (
                 ("rpcgate", "rpcgate"), ("HAProxy 2.6", "haproxy"),
                 ("HAProxy 3.2", "haproxy32"), ("stunnel", "stunnel"))) + "."]
    for where, key in (("host", "host"), ("forky chroot", "chroot")):
        a = aead.get(key)
        if a:
            lines.append(f"AES-128-GCM alone, one core, 16 KiB blocks (`openssl speed -evp "
                         f"aes-128-gcm -bytes 16384`, {where}: "
                         f"{v.get('openssl' if key == 'host' else 'openssl_chroot')}): "
                         f"{a['gb_per_s']:.2f} GB/s = {a['s_per_gb']:.3f} s of CPU per GB.")
    return lines


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"
