#!/usr/bin/env python3
"""The man pages (docs/man) cannot drift from the programs silently.

  man_pages_test.py MANDIR VERSION CONFIG_CC RPCGATE RPCGATE_PROBE RPCGATE_BENCH

For each page:
  - `MANWIDTH=80 man --warnings -l PAGE` renders it with nothing on stderr
    (groff's warnings: a bad macro, a line it cannot break, ...);
  - its .TH line names "rpcgate VERSION" (the project's version);
and:
  - every long option that `rpcgate --help` prints is in rpcgate(8), those of
    `rpcgate-probe --help` in rpcgate-probe(1), those of `rpcgate-bench --help`
    and of each of its subcommands' --help in rpcgate-bench(1);
  - every key the configuration parser knows (the `known[]` table of
    gateway/config_file.cc) is in rpcgate.toml(5).
Exit 0 pass, 1 fail (listing every miss), 77 skip (no man-db).
"""
import os
import re
import shutil
import subprocess
import sys

failures = []


def fail(what):
    failures.append(what)
    print("FAIL:", what, flush=True)


def page_text(path):
    """The roff source with \\- as -, so that options read as on the command line."""
    with open(path) as f:
        return f.read().replace("\\-", "-")


def long_options(help_text):
    """The options a CLI11 help text lists, one a line ("  -l,--listen ..."); not
    the ones its descriptions mention (the EAL arguments of --dpdk-args)."""
    return sorted(set(re.findall(r"^ +(?:-\w,)*(--[a-z0-9][a-z0-9-]*)", help_text, re.M)))


def run_help(argv):
    r = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        fail(f"{' '.join(argv)} --help exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def check_options(page, text, argvs):
    for argv in argvs:
        for opt in long_options(run_help(argv)):
            if not re.search(re.escape(opt) + r"(?![a-z0-9-])", text):
                fail(f"{os.path.basename(page)} does not describe {opt} "
                     f"(from `{' '.join(os.path.basename(a) for a in argv)} --help`)")


def subcommands(help_text):
    """Names listed under "Subcommands:" in a CLI11 help text."""
    out, inside = [], False
    for line in help_text.splitlines():
        if line.startswith("Subcommands:"):
            inside = True
        elif inside and re.match(r"^  (\w+)\s", line):
            out.append(line.split()[0])
    return out


def config_keys(config_cc):
    with open(config_cc) as f:
        src = f.read()
    m = re.search(r"known\[\]\s*=\s*\{(.*?)\};", src, re.S)
    if not m:
        fail(f"{config_cc}: no known[] table of configuration keys")
        return []
    return re.findall(r'"([a-z_0-9]+)"', m.group(1))


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    mandir, version, config_cc, rpcgate, probe, bench = sys.argv[1:]
    if not shutil.which("man"):
        print("SKIP: man not installed (package man-db)")
        return 77
    pages = {name: os.path.join(mandir, name) for name in
             ("rpcgate.8", "rpcgate.toml.5", "rpcgate-probe.1", "rpcgate-bench.1")}
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    for name, path in pages.items():
        r = subprocess.run(["man", "--warnings", "-l", path], capture_output=True, text=True,
                           env=env, timeout=60)
        if r.returncode != 0 or r.stderr.strip() or len(r.stdout) < 200:
            fail(f"man --warnings -l {name}: exit {r.returncode}, stderr: {r.stderr.strip()!r}")
        th = re.search(r"^\.TH .*$", page_text(path), re.M)
        if not th or f"rpcgate {version}" not in th.group(0):
            fail(f"{name}: the .TH line does not name rpcgate {version}: "
                 f"{th.group(0) if th else 'none'}")

    check_options(pages["rpcgate.8"], page_text(pages["rpcgate.8"]), [[rpcgate]])
    check_options(pages["rpcgate-probe.1"], page_text(pages["rpcgate-probe.1"]), [[probe]])
    bench_argvs = [[bench]] + [[bench, s] for s in subcommands(run_help([bench]))]
    if len(bench_argvs) < 2:
        fail("rpcgate-bench --help lists no subcommands")
    check_options(pages["rpcgate-bench.1"], page_text(pages["rpcgate-bench.1"]), bench_argvs)

    toml_text = page_text(pages["rpcgate.toml.5"])
    keys = config_keys(config_cc)
    for key in keys:
        if not re.search(r"(?<![a-z_])" + re.escape(key) + r"(?![a-z_])", toml_text):
            fail(f"rpcgate.toml.5 does not describe the key {key}")

    if failures:
        print(f"{len(failures)} problem(s) in the man pages")
        return 1
    print(f"man pages ok: 4 pages render without warnings; every long option and "
          f"{len(keys)} configuration keys are described")
    return 0


if __name__ == "__main__":
    sys.exit(main())
