#!/usr/bin/env python3
"""Reads a ctest JUnit file (`ctest --output-junit FILE`) and says what ran.

  ctest_report.py JUNIT JOB [--allow FILE] [--strict] [--line FILE]

Prints each skipped test with its reason, then one line:
  JOB: P passed, F failed, S skipped (A allowed)
and appends `JOB P F S` to --line FILE (test.sh builds its table from it).

A test counts as skipped when ctest did not run it to a verdict (exit code
77, `status="notrun"`) or when GoogleTest skipped it (`[  SKIPPED ]` in its
output: CMake 3.25 reports those as run). The reason is the test's own words:
the line after GoogleTest's "Skipped", or a line starting with "SKIP".

--allow FILE lists the skips that are expected on this kind of machine, one
per line: `JOB TEST-REGEX -- REASON` (`*` for any job). With --strict (test.sh
sets it when CI is set), a skip that no line allows fails: a peer that should
have been installed, a namespace that could not be made, a qemu that is gone
must not turn into a green run.

Exit status: 1 when a test failed or (with --strict) a skip is not allowed.
"""
import argparse
import re
import sys
import xml.etree.ElementTree as ET


def skip_reason(out):
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if re.search(r": Skipped$", line) and i + 1 < len(lines) and lines[i + 1].strip():
            return lines[i + 1].strip()
    for line in reversed(lines):
        if re.match(r"\s*(SKIP|skip(ped)?)\b[:\s]", line):
            return line.strip()
    for line in reversed(lines):
        if "skip" in line.lower():
            return line.strip()
    return "(the test gave no reason)"


def load_allow(path, job):
    rules = []
    if not path:
        return rules
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.match(r"(\S+)\s+(\S+)\s+--\s+(.+)$", line)
            if not m:
                sys.exit(f"{path}:{n}: expected 'JOB TEST-REGEX -- REASON'")
            if m.group(1) in ("*", job):
                rules.append((re.compile(m.group(2)), m.group(3)))
    return rules


def main():
    p = argparse.ArgumentParser()
    p.add_argument("junit")
    p.add_argument("job")
    p.add_argument("--allow")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--line")
    a = p.parse_args()
    try:
        root = ET.parse(a.junit).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"{a.job}: no ctest result to read ({e})")
        if a.line:
            with open(a.line, "a") as f:
                f.write(f"{a.job} 0 1 0\n")
        return 1
    rules = load_allow(a.allow, a.job)
    passed = failed = disabled = 0
    skipped = []
    for tc in root.iter("testcase"):
        name = tc.get("name")
        status = tc.get("status")
        out = "".join(e.text or "" for e in tc.iter("system-out"))
        if status == "disabled":
            # DISABLED_ GoogleTest cases (figures run by hand): not a verdict either way.
            disabled += 1
        elif status == "notrun" or (status == "run" and "[  SKIPPED ]" in out):
            skipped.append((name, skip_reason(out)))
        elif status == "run":
            passed += 1
        else:
            failed += 1
    not_allowed = 0
    for name, why in skipped:
        allowed = next((r for rx, r in rules if rx.search(name)), None)
        if allowed:
            print(f"  skipped {name}: {why} [allowed: {allowed}]")
        else:
            not_allowed += 1
            print(f"  skipped {name}: {why} [NOT on the allow-list]")
    print(f"{a.job}: {passed} passed, {failed} failed, {len(skipped)} skipped "
          f"({len(skipped) - not_allowed} allowed), {disabled} disabled")
    if a.line:
        with open(a.line, "a") as f:
            f.write(f"{a.job} {passed} {failed} {len(skipped)}\n")
    if failed:
        return 1
    if a.strict and not_allowed:
        print(f"{a.job}: {not_allowed} skips are not on the allow-list ({a.allow}); in CI a "
              "test that this machine should run must run")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
