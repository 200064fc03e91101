#!/usr/bin/env python3
"""The audit log survives logrotate: rename it, send SIGHUP, and the next
audit line is in a new file at the configured name.

  audit_reopen_test.py RPCGATE RPCGATE_BENCH MAKE_CERTS

A gateway with --tls opportunistic and --audit-log in front of the echo
backend. One STARTTLS client writes an `accepted` audit line; the file is
renamed (as logrotate does before its postrotate `systemctl reload`), SIGHUP
is sent and awaited on rpcgate_reloads_total (the reopen comes first in the
same step), and a second client's line must be in the new file, the first
one's only in the renamed file. Exit 0 pass, 1 fail.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import harness  # noqa: E402
from harness import Conn, Failure, check, log, wait_until  # noqa: E402

DEADLINE = 30  # seconds; each condition holds within a second on a loaded machine


def accepted_lines(path):
    try:
        with open(path) as f:
            return [line for line in f if " tls accepted:" in line]
    except FileNotFoundError:
        return []


def one_tls_client(env, xid):
    c = Conn(env.gw_port, mode="starttls", ca=env.ca)
    c.echo(xid, b"audit")
    c.close()


def main():
    rpcgate, bench, make_certs = sys.argv[1:4]
    env = harness.Env("audit-reopen", rpcgate, bench, make_certs)
    audit = os.path.join(env.work, "audit.log")
    env.start_echo()
    env.start_gateway("--audit-log", audit)

    one_tls_client(env, 1)
    wait_until(DEADLINE, lambda: len(accepted_lines(audit)) == 1, "the first audit line")

    os.rename(audit, audit + ".1")
    reloads = env.metrics().get("rpcgate_reloads_total", 0)
    env.gw.p.send_signal(signal.SIGHUP)
    wait_until(DEADLINE, lambda: env.metrics().get("rpcgate_reloads_total", 0) > reloads,
               "the SIGHUP reload")
    check(os.path.exists(audit), "SIGHUP did not create a new audit log at " + audit)

    one_tls_client(env, 2)
    wait_until(DEADLINE, lambda: len(accepted_lines(audit)) == 1,
               "the second client's audit line in the new file")
    check(len(accepted_lines(audit + ".1")) == 1,
          "the renamed file got more lines after the reopen")
    log("audit log reopened on SIGHUP: one line in the rotated file, one in the new")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print("FAIL:", e)
        sys.exit(1)
