#!/usr/bin/env python3
"""Soak: a bounded mixed workload through the gateway, then its resources.

  soak.py RPCGATE RPCGATE_BENCH MAKE_CERTS [--seconds 600 | --short] [--report FILE]

For --seconds (default 600; --short: 75) the gateway carries, at once:
  - plaintext, STARTTLS (AUTH_TLS probe) and implicit-TLS clients, each
    opening a connection, making a few ECHO calls of mixed sizes (0 B to
    64 KiB, and one call in eight of 1 MiB), then closing it (FIN, or RST one
    time in four) and starting again;
  - a churn client that opens a connection, makes one NULL call and closes it;
  - the echo backend (`rpcgate-bench serve`) stopped and started again every
    --restart-every seconds (default 60; --short: 10), SIGTERM and SIGKILL in
    turn, so calls are in flight when it goes.

Every loop is bounded by the duration and by a call count. Every call ends
one of three ways, and the counts must add up (sent = replied + refused +
failed-by-close):
  replied          SUCCESS with exactly the bytes sent (anything else fails)
  refused          an RPC error reply from the gateway (e.g. while the
                   backend is down) — a failure reported to the client
  failed-by-close  the connection closed before the reply — reported too
A call with neither a reply nor a close within 30 s is lost: it is counted
(`lost`), its client stops, and the soak fails; the summary prints the count.

Resources: the gateway's RSS and fd count are read after a warm-up (a first
tenth of the run, at least 20 s, with the same mix and restarts), once every client has
left; and again at the end, once every client has left. Both must be within
5 % of the first reading. The warm-up is there because the first minutes
legitimately grow the process: receive-buffer pages are touched for the first
time (the buffer ring is mapped up front but faulted in on use), OpenSSL and
the allocator build their per-thread caches and arenas, the backend pool
opens. Those are paid once; a leak keeps growing after them.
"""
import argparse
import json
import os
import random
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
from harness import (Closed, Conn, Env, Failure, check, echo_call, frame, call_body, log,  # noqa: E402
                     opaque, parse_reply, payload_for, rpc_null_ok, wait_until)

SIZES = [0, 1, 100, 1000, 4096, 16384, 65536]
# A call unanswered this long is lost (a 1 MiB echo through TLS takes well
# under a second here, under ASan a few).
LOST_AFTER = 30


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {"sent": 0, "replied": 0, "refused": 0, "failed_by_close": 0, "bytes": 0,
                  "connections": 0, "resets": 0, "mib_calls": 0, "connect_failures": 0,
                  "lost": 0}

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                self.c[k] += v


def worker(env, mode, counts, stop, errors, seed, max_calls):
    rnd = random.Random(seed)
    xid = seed << 20
    calls = 0
    while not stop.is_set() and calls < max_calls:
        port = env.implicit_port if mode == "implicit" else env.gw_port
        try:
            c = Conn(port, mode, timeout=LOST_AFTER)
        except (OSError, Closed, Failure):
            # Refused at connect or at the probe (e.g. the handshake was cut):
            # no call was sent on it.
            counts.add(connect_failures=1)
            stop.wait(0.05)
            continue
        counts.add(connections=1)
        pending = 0
        try:
            for _ in range(rnd.randint(1, 8)):
                if stop.is_set():
                    break
                xid += 1
                size = 1 << 20 if rnd.random() < 0.125 else rnd.choice(SIZES)
                payload = payload_for(xid, size)
                c.send(echo_call(xid, payload))
                counts.add(sent=1, mib_calls=size == 1 << 20)
                calls += 1
                pending = 1
                rx, ok, res = parse_reply(c.record())
                pending = 0
                if rx != xid:
                    errors.append(f"{mode}: reply xid {rx:#x} for call {xid:#x}")
                    return
                if not ok:
                    counts.add(refused=1)
                    continue
                if res != opaque(payload):
                    errors.append(f"{mode}: echo of {size} bytes came back different")
                    return
                counts.add(replied=1, bytes=size)
            if rnd.random() < 0.25:
                c.reset()
                counts.add(resets=1)
            else:
                c.close()
        except Closed:
            counts.add(failed_by_close=pending)
            c.close()
        except (socket.timeout, TimeoutError):
            counts.add(lost=pending)
            errors.append(f"{mode}: a call got neither a reply nor a close within {LOST_AFTER} s (lost)")
            return
        except (Failure, OSError) as e:
            errors.append(f"{mode}: {e}")
            return


def churn(env, counts, stop, errors, max_conns):
    n = 0
    while not stop.is_set() and n < max_conns:
        n += 1
        try:
            c = Conn(env.gw_port, timeout=LOST_AFTER)
        except OSError:
            counts.add(connect_failures=1)
            continue
        counts.add(connections=1, sent=1)
        try:
            c.send(frame(call_body(n, 0)))
            _, ok, _ = parse_reply(c.record())
            counts.add(replied=ok, refused=not ok)
        except Closed:
            counts.add(failed_by_close=1)
        except (socket.timeout, TimeoutError):
            counts.add(lost=1)
            errors.append(f"churn: a NULL call got neither a reply nor a close within {LOST_AFTER} s (lost)")
            return
        c.close()


def quiet_reading(env, what):
    """RSS (KiB) and fds once every client has left and the numbers settle."""
    wait_until(30, lambda: env.metrics().get("rpcgate_connections_open", 0) == 0,
               f"{what}: every client to leave")
    last = [None]

    def settled():
        now = (env.fds(), env.rss_kb())
        same = last[0] is not None and now[0] == last[0][0] and abs(now[1] - last[0][1]) <= 64
        last[0] = now
        return same

    wait_until(30, settled, f"{what}: fds and RSS to settle")
    return last[0]


def run_phase(env, seconds, restart_every, counts, errors, backend_stops):
    stop = threading.Event()
    threads = []
    budget = int(seconds * 200) + 100  # calls per worker: far above what fits in the time
    for i, mode in enumerate(["plain", "plain", "starttls", "starttls", "implicit"]):
        threads.append(threading.Thread(target=worker, args=(env, mode, counts, stop, errors,
                                                              len(backend_stops) * 16 + i + 1, budget)))
    threads.append(threading.Thread(target=churn, args=(env, counts, stop, errors, budget)))
    for t in threads:
        t.start()
    end = time.monotonic() + seconds
    next_restart = time.monotonic() + restart_every
    while time.monotonic() < end and not errors:
        time.sleep(min(0.2, max(0, end - time.monotonic())))
        if restart_every and time.monotonic() >= next_restart and time.monotonic() < end - 1:
            sig = signal.SIGKILL if len(backend_stops) % 2 else signal.SIGTERM
            env.echo.stop(sig, timeout=10)
            env.procs.remove(env.echo)
            env.start_echo(port=env.echo_port)
            backend_stops.append(sig)
            next_restart += restart_every
        check(env.gw.alive(), "the gateway died: " + env.gw.tail())
    stop.set()
    for t in threads:
        t.join(90)
        check(not t.is_alive(), "a client is stuck")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("rpcgate")
    p.add_argument("bench")
    p.add_argument("make_certs")
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--short", action="store_true",
                   help="75 s (45 s with --sanitized), backend restarted every 10 s")
    p.add_argument("--restart-every", type=float, default=None)
    p.add_argument("--report", default="")
    p.add_argument("--sanitized", action="store_true",
                   help="a sanitizer build: RSS is reported, not compared")
    p.add_argument("--rss-slack-mib", type=float, default=None,
                   help="RSS growth allowed beyond 5 %% (default: 0; --short: 8)")
    a = p.parse_args()
    if a.short:
        # A sanitizer build is there for what goes wrong, not for RSS over
        # time: 45 s still has three backend restarts after the warm-up,
        # and the ASan job's time is the CI budget's largest.
        a.seconds = 45 if a.sanitized else 75
    # The short run (in ctest) allows 8 MiB beyond the 5 %: in 75 s the
    # allocator's arenas and OpenSSL's caches still settle by a few MiB from
    # run to run (51.8 -> 55.4 MiB seen on a loaded machine, flat on a quiet
    # one), while the leaks it is there to catch are per connection and the
    # short run opens ~8,000: 1 KiB each is 8 MiB. Sanitizer runs leave leaks
    # to LeakSanitizer; the long soak (test.sh --soak) keeps the plain 5 %.
    if a.rss_slack_mib is None:
        a.rss_slack_mib = 8 if a.short else 0
    restart = a.restart_every if a.restart_every is not None else (10 if a.short else 60)
    # The warm-up carries the whole mix, backend restarts included: the first
    # restarts reach new peaks (backend connections reopened at once, calls
    # failed and retried) that grow the allocator's arenas once.
    warm = max(20.0, a.seconds / 10)
    t0 = time.monotonic()

    env = Env("soak", a.rpcgate, a.bench, a.make_certs)
    env.start_echo()
    env.start_gateway("--handshake-timeout", "5000", implicit=True)
    counts, errors, stops = Counts(), [], []
    try:
        run_phase(env, warm, restart, counts, errors, stops)
        check(not errors, "; ".join(errors[:5]))
        fds0, rss0 = quiet_reading(env, "after the warm-up")
        log(f"after a {warm:.0f} s warm-up: gateway fds {fds0}, RSS {rss0 / 1024:.1f} MiB")
        warm_counts = dict(counts.c)
        run_phase(env, a.seconds - warm, restart, counts, errors, stops)
        check(not errors, "; ".join(errors[:5]))
        fds1, rss1 = quiet_reading(env, "at the end")
    except Failure as e:
        print(f"FAIL soak: {e} ({counts.c['lost']} calls lost)", flush=True)
        return 1
    c = counts.c
    lost = c["sent"] - c["replied"] - c["refused"] - c["failed_by_close"]
    m = env.metrics()
    report = {
        "seconds": round(time.monotonic() - t0, 1), "load_seconds": a.seconds,
        "backend_restarts": len(stops), **c,
        "fds_start": fds0, "fds_end": fds1, "rss_kib_start": rss0, "rss_kib_end": rss1,
        "gateway_backend_lost": m.get("rpcgate_backend_lost_total", 0),
        "gateway_tls_sessions": m.get("rpcgate_tls_sessions_total", 0),
        "warmup_calls": warm_counts["sent"],
    }
    log(json.dumps(report))
    log(f"soak: {c['sent']} calls ({c['mib_calls']} of 1 MiB, {c['bytes'] / 2**30:.2f} GiB echoed) on "
        f"{c['connections']} connections ({c['resets']} reset by the client), backend restarted "
        f"{len(stops)} times: {c['replied']} replied intact, {c['refused']} refused with an RPC error, "
        f"{c['failed_by_close']} failed by a close, {lost} lost; fds {fds0} -> {fds1}, "
        f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB")
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)
    status = 0
    if lost != 0 or c["lost"] != 0:
        print(f"FAIL soak: {lost} calls lost (sent {c['sent']} != replied + refused + "
              f"failed-by-close), {c['lost']} timed out", flush=True)
        status = 1
    if fds1 > fds0 * 1.05:
        print(f"FAIL soak: fds {fds0} -> {fds1} (more than 5 %)", flush=True)
        status = 1
    if a.sanitized:
        # ASan keeps freed memory in its quarantine (256 MiB by default) and
        # its shadow grows with it: the RSS of such a build measures the
        # sanitizer, not the gateway. Leaks are LeakSanitizer's job there.
        print(f"soak: RSS {rss0} -> {rss1} KiB not compared (sanitized build)", flush=True)
    elif rss1 > rss0 * 1.05 + a.rss_slack_mib * 1024:
        print(f"FAIL soak: RSS {rss0} -> {rss1} KiB (more than 5 % + {a.rss_slack_mib:g} MiB)",
              flush=True)
        status = 1
    if c["replied"] == 0 or len(stops) == 0 and restart < a.seconds - warm:
        print("FAIL soak: no call went through, or the backend was never restarted", flush=True)
        status = 1
    check(env.gw.stop() == 0, "the gateway did not exit 0 on SIGTERM")
    print(f"soak: {'PASS' if status == 0 else 'FAIL'} in {time.monotonic() - t0:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
