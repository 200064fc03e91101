#!/usr/bin/env python3
"""Readiness and port ownership, against a running rpcgate and its echo backend.

  readyz_test.py readyz RPCGATE BENCH MAKE_CERTS
      /readyz is 200 with every route reachable; the backend is killed and
      /readyz turns 503 within 1 s, naming the route and the error, while
      /healthz stays 200 (the threads are alive); the backend comes back on
      the same port and /readyz is 200 again.
  readyz_test.py second_instance RPCGATE BENCH MAKE_CERTS
      a second rpcgate on the port a running one holds exits with a clear
      line; with --reuse-port it starts and shares the port.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
from harness import Env, check, free_port, log, main, wait_until  # noqa: E402


def get(port, path):
    """(status, body) of GET http://127.0.0.1:PORT/PATH."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def readyz(argv):
    env = Env("readyz", *argv[:3])
    env.start_echo()
    env.start_gateway(tls=False)
    status, body = get(env.admin_port, "/readyz")
    check(status == 200, f"/readyz {status} with the backend up: {body}")
    doc = json.loads(body)
    check(doc["ready"] and doc["listeners"] == "up", body)
    check(len(doc["routes"]) == 1 and doc["routes"][0]["reachable"], body)
    log(f"backend up: /readyz 200 {body.strip()}")

    env.echo.stop(signal.SIGKILL)
    t_dead = time.monotonic()
    wait_until(1.0, lambda: get(env.admin_port, "/readyz")[0] == 503,
               "/readyz to say 503 after the backend died")
    took = time.monotonic() - t_dead
    status, body = get(env.admin_port, "/readyz")
    doc = json.loads(body)
    route = doc["routes"][0]
    check(status == 503 and not doc["ready"] and not route["reachable"], body)
    check(route["route"] == "prog(536870913)" and
          route["backend"] == f"127.0.0.1:{env.echo_port}", body)
    check("refused" in route["error"], body)
    health = get(env.admin_port, "/healthz")
    check(health[0] == 200, f"/healthz {health} while only the backend is down")
    log(f"backend killed: /readyz 503 after {took * 1000:.0f} ms {body.strip()}; /healthz 200")

    env.start_echo(port=env.echo_port)
    t_back = time.monotonic()
    wait_until(5.0, lambda: get(env.admin_port, "/readyz")[0] == 200,
               "/readyz to say 200 after the backend came back")
    log(f"backend back: /readyz 200 after {(time.monotonic() - t_back) * 1000:.0f} ms")


def second_instance(argv):
    env = Env("reuseport", *argv[:3])
    env.start_echo()
    env.start_gateway(tls=False)
    argv2 = [env.rpcgate, "--listen", f"127.0.0.1:{env.gw_port}",
             "--backend", f"536870913=127.0.0.1:{env.echo_port}", "--shards", "1",
             "--no-reserved-port"]
    p = subprocess.run(argv2, capture_output=True, text=True, timeout=30)
    check(p.returncode != 0, f"a second rpcgate started on a taken port: {p.stderr}")
    check("already in use" in p.stderr and "--reuse-port" in p.stderr, p.stderr)
    check(env.gw.alive(), "the first rpcgate died")
    log(f"second instance refused: exit {p.returncode}: {p.stderr.strip()}")

    admin2 = free_port()
    second = env.start(argv2 + ["--reuse-port", "--admin", f"127.0.0.1:{admin2}"], "second")
    wait_until(10, lambda: not second.alive() or get_ok(admin2), "the --reuse-port instance")
    check(second.alive(), "--reuse-port instance exited: " + second.tail())
    log("--reuse-port: the second instance runs beside the first")


def get_ok(port):
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main({"readyz": readyz, "second_instance": second_instance}))
