#!/usr/bin/env python3
"""Fault tests: what the gateway does when its peers or its host misbehave.

  faults.py TEST RPCGATE RPCGATE_BENCH MAKE_CERTS [options]

Tests (one ctest each, see CMakeLists.txt):
  client_reset    clients reset (RST, SO_LINGER 0) in the middle of a record,
                  plaintext and TLS: nothing partial reaches the backend, every
                  session and fd is released, the gateway keeps serving
  backend_reset   the backend sends half a reply and resets: the client's
                  connection is closed with no partial record delivered; a
                  backend that comes back is used again
  handshake_flood AUTH_TLS probes at --rate per second for --seconds from
                  throw-away connections, while an established TLS connection
                  and a plaintext one keep calling: every call of theirs
                  completes, p99 stays under --p99-ms, fds come back
  fd_exhaustion   a low RLIMIT_NOFILE at start, and one lowered under a
                  running gateway: every client is either served or closed at
                  once, service resumes once fds are free, nothing crashes
  buffer_exhaustion  8 receive buffers of 4 KiB and many clients sending
                  200 KiB calls: the ring runs dry (ENOBUFS / pressure copies)
                  and every call still comes back intact
  source_limits   --max-connections-per-source and --handshake-rate-per-source:
                  over the cap or the rate is closed and counted, the rest
                  works (skipped when this rpcgate has no such options)
  sigterm         SIGTERM during pipelined load (plaintext and TLS): every
                  reply that arrives is correct, every call without a reply
                  sees its connection closed, and the gateway exits 0

Exit status: 0 pass, 1 fail (with the reason), 77 skipped (with the reason).
"""
import argparse
import os
import random
import resource
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SKIP, Closed, Conn, Env, Failure, check, echo_call, frame, call_body, log,  # noqa: E402
                     opaque, parse_reply, payload_for, probe_call, rpc_null_ok, wait_until)


def args_of(argv, extra=None):
    p = argparse.ArgumentParser()
    p.add_argument("rpcgate")
    p.add_argument("bench")
    p.add_argument("make_certs")
    for a, kw in (extra or {}).items():
        p.add_argument(a, **kw)
    return p.parse_args(argv)


def settle_fds(env, what):
    """The gateway's fd count once it stops changing (accepts in flight land)."""
    last = [None]

    def stable():
        n = env.fds()
        same = n == last[0]
        last[0] = n
        return same

    wait_until(10, stable, what)
    return last[0]


def back_to(env, fds0, what, seconds=10):
    try:
        wait_until(seconds, lambda: env.metrics().get("rpcgate_connections_open", 0) == 0,
                   f"{what}: every client session to end")
    except Failure:
        m = env.metrics()
        log({k: v for k, v in m.items() if "open" in k or "progress" in k or "handshake" in k})
        raise
    wait_until(seconds, lambda: env.fds() <= fds0, f"{what}: the gateway's fds back to {fds0}")


# ---- client_reset -----------------------------------------------------------

def t_client_reset(argv):
    a = args_of(argv)
    env = Env("client-reset", a.rpcgate, a.bench, a.make_certs)
    env.start_echo()
    env.start_gateway(implicit=True)
    Conn(env.gw_port).echo(1, b"warm")  # the backend connection pool exists now
    fds0 = settle_fds(env, "fds to settle")
    m0 = env.metrics()
    cuts = 0
    tls_seen = m0.get("rpcgate_tls_sessions_total", 0)
    for i in range(60):
        mode = ("plain", "starttls", "implicit")[i % 3]
        port = env.implicit_port if mode == "implicit" else env.gw_port
        c = Conn(port, mode)
        if mode != "plain":
            # The handshake ran on the control thread: wait until the connection
            # is back on its shard, where the partial record is to be read.
            wait_until(5, lambda: env.metrics().get("rpcgate_tls_sessions_total", 0) > tls_seen,
                       f"TLS client {i} to reach its shard")
            tls_seen = env.metrics().get("rpcgate_tls_sessions_total", 0)
        seen = env.metrics().get("rpcgate_engine_received_bytes_total", 0)
        rec = echo_call(0x1000 + i, payload_for(i, 256 * 1024))
        cut = (4, 40, len(rec) // 3)[i // 3 % 3]  # in the mark, the header, the payload
        c.send(rec[:cut])
        # Let the gateway read the partial record before the reset arrives.
        wait_until(5, lambda: env.metrics().get("rpcgate_engine_received_bytes_total", 0) > seen,
                   f"the partial record of client {i} ({mode}, {cut} bytes) to reach the gateway")
        c.reset()
        cuts += 1
    back_to(env, fds0, "after 60 resets")
    m1 = env.metrics()
    fwd = m1["rpcgate_calls_forwarded_total"] - m0["rpcgate_calls_forwarded_total"]
    check(fwd == 0, f"{fwd:.0f} partial call(s) were forwarded to the backend")
    cut_n = m1.get("rpcgate_cut_records_total", 0) - m0.get("rpcgate_cut_records_total", 0)
    log(f"{cuts} connections reset inside a record (plaintext, STARTTLS, implicit TLS); "
        f"counted as cut records: {cut_n:.0f}; calls forwarded: {fwd:.0f}; fds {fds0} -> {env.fds()}")
    check(cut_n >= cuts, f"only {cut_n:.0f} of {cuts} cut records counted")
    for mode, port in (("plain", env.gw_port), ("starttls", env.gw_port), ("implicit", env.implicit_port)):
        Conn(port, mode).echo(7, payload_for(7, 1 << 20))
    check(env.gw.alive(), "the gateway died")
    check(env.gw.stop() == 0, "the gateway did not exit 0 on SIGTERM")


# ---- backend_reset ----------------------------------------------------------

class HalfReplyBackend:
    """Reads one call per connection, sends the first half of its reply, resets."""

    def __init__(self, port):
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", port))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.stop = False
        self.cut = 0
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            s.settimeout(10)
            try:
                body = b""
                while True:
                    (mark,) = struct.unpack(">I", _recv(s, 4))
                    body += _recv(s, mark & 0x7FFFFFFF)
                    if mark & 0x80000000:
                        break
                xid = struct.unpack(">I", body[:4])[0]
                args = body[40:]
                reply = frame(struct.pack(">6I", xid, 1, 0, 0, 0, 0) + args)
                s.sendall(reply[:len(reply) // 2])
                time.sleep(0.05)  # let the half reach the gateway before the reset
                self.cut += 1
            except (OSError, struct.error):
                pass
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def close(self):
        self.stop = True
        self.t.join(5)
        self.ls.close()


def _recv(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise OSError("EOF")
        b += c
    return b


def t_backend_reset(argv):
    a = args_of(argv)
    env = Env("backend-reset", a.rpcgate, a.bench, a.make_certs)
    from harness import free_port
    bport = free_port()
    fake = HalfReplyBackend(bport)
    env.echo_port = bport
    env.gw_port = None
    # The readiness check of start_gateway makes a NULL call: the fake cuts it.
    env.gw = None
    gport, aport = free_port(), free_port()
    env.gw_port, env.admin_port = gport, aport
    env.gw = env.start([a.rpcgate, "--listen", f"127.0.0.1:{gport}", "--backend",
                        f"536870913=127.0.0.1:{bport}", "--shards", "2", "--no-reserved-port",
                        "--admin", f"127.0.0.1:{aport}", "--tls", "opportunistic",
                        "--cert", f"{env.certs}/server.pem", "--key", f"{env.certs}/server.key"],
                       "gateway")
    wait_until(10, env.metrics_ok, "the gateway's admin endpoint")
    m0 = env.metrics()
    results = []
    for i in range(20):
        mode = "starttls" if i % 2 else "plain"
        c = Conn(gport, mode, timeout=15)
        c.send(echo_call(0x2000 + i, payload_for(i, 64 * 1024)))
        got = b""
        t0 = time.monotonic()
        try:
            while True:
                chunk = c.sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, OSError) as e:
            if isinstance(e, socket.timeout):
                raise Failure(f"client {i}: not closed within 15 s of the backend's reset")
        results.append((len(got), time.monotonic() - t0))
        check(len(got) == 0, f"client {i} ({mode}) received {len(got)} bytes of a cut reply")
        c.close()
    fake.close()
    m1 = env.metrics()
    lost = m1.get("rpcgate_backend_lost_total", 0) - m0.get("rpcgate_backend_lost_total", 0)
    worst = max(t for _, t in results)
    log(f"20 calls whose reply the backend cut in half and reset ({fake.cut} cut): every client "
        f"closed with 0 bytes of the partial reply, slowest close {worst * 1000:.0f} ms; "
        f"backend_lost counted {lost:.0f}")
    # A backend that comes back on the same port is used again.
    env.start_echo(port=bport)
    Conn(gport).echo(9, payload_for(9, 1 << 20))
    Conn(gport, "starttls").echo(10, payload_for(10, 4096))
    check(env.gw.stop() == 0, "the gateway did not exit 0 on SIGTERM")


# ---- handshake_flood --------------------------------------------------------

# A probe is answered within this, or it failed. Generous: under a flood on a
# shared 2-core machine a probe may wait in the accept queue behind thousands.
PROBE_DEADLINE = 15


def run_delay():
    """Seconds this thread has waited for a CPU while runnable (schedstat)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def flood(port, rate, seconds, out, idx):
    """Probes at `rate`/s: connect, AUTH_TLS probe, read STARTTLS, reset.
    Non-blocking, at most 512 in flight. Results into out[idx].

    Besides the counts it reports why it fell behind schedule, if it did:
    `capped` is the time (s) during which it could not send because 512
    probes were waiting for the gateway (the gateway held it back), `lag` the
    largest backlog of due probes it carried into a pass with room to send
    (its own CPU held it back: a loaded machine)."""
    import selectors
    sel = selectors.DefaultSelector()
    probe = probe_call(0x7777)
    sent = answered = failed = 0
    why = {"connect": 0, "closed": 0, "timeout": 0, "no STARTTLS": 0}
    capped = 0.0
    lag = 0
    capped_since = last_send = None
    waited0 = run_delay()
    start = time.monotonic()
    end = start + seconds
    inflight = {}
    while True:
        now = time.monotonic()
        due = min(int((now - start) * rate), int(seconds * rate)) - sent
        if now < end:
            if len(inflight) < 512:
                lag = max(lag, due)
            while due > 0 and len(inflight) < 512:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                try:
                    s.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                except OSError:
                    failed += 1
                    why["connect"] += 1
                    s.close()
                    sent += 1
                    due -= 1
                    continue
                inflight[s] = [b"", now, False]
                sel.register(s, selectors.EVENT_WRITE)
                sent += 1
                due -= 1
            last_send = time.monotonic()
            if due > 0 and capped_since is None:
                capped_since = now
            elif due <= 0 and capped_since is not None:
                capped += now - capped_since
                capped_since = None
        elif not inflight or now > end + PROBE_DEADLINE:
            break
        for key, ev in sel.select(0.001):
            s = key.fileobj
            st = inflight[s]
            try:
                if ev & selectors.EVENT_WRITE and not st[2]:
                    s.send(probe)
                    st[2] = True
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                chunk = s.recv(64)
                if not chunk:
                    raise OSError("EOF")
                st[0] += chunk
                if len(st[0]) < 36:
                    continue
                if b"STARTTLS" in st[0]:
                    answered += 1
                else:
                    failed += 1
                    why["no STARTTLS"] += 1
            except OSError:
                failed += 1
                why["closed"] += 1
            sel.unregister(s)
            s.close()  # SO_LINGER 0: a reset, and no TIME_WAIT on either side
            del inflight[s]
        # A probe unanswered for PROBE_DEADLINE s is a failure.
        for s, st in list(inflight.items()):
            if now - st[1] > PROBE_DEADLINE:
                failed += 1
                why["timeout"] += 1
                sel.unregister(s)
                s.close()
                del inflight[s]
    if capped_since is not None:
        capped += (last_send or end) - capped_since
    sending = max((last_send or end) - start, 1e-3)
    waited = run_delay() - waited0
    out.put((idx, (sent, answered, failed, time.monotonic() - start, why, sending, capped, lag, waited)))


def t_handshake_flood(argv):
    # The flood must be a flood. It passes on rate when the probes offered in
    # the sending window reach 90 % of the asked rate (--min-rate), or when it
    # drove the gateway past what it can take (handshakes timed out,
    # connections refused at admission: counted). When neither holds, the
    # flooders' scheduler statistics tell why they fell short:
    #  - they had the CPU (runnable but waiting for one under 20 % of the
    #    time): the gateway was too slow for the rate and shed nothing: FAIL;
    #  - they waited for a CPU (a loaded machine; 512 probes in flight then
    #    says nothing, as a starved flooder reads its answers late): every
    #    assertion below still runs at the rate reached, which must be
    #    at least --floor-rate (a flood, not a trickle) and is logged; below
    #    the floor the run proves nothing about floods and is SKIPPED saying
    #    so (tests/skips.allow names this one case).
    # RPCGATE_STRICT_TIMING=1 asks for 90 % of the rate whatever happened.
    a = args_of(argv, {"--rate": dict(type=int, default=5000), "--seconds": dict(type=float, default=10),
                       "--p99-ms": dict(type=float, default=250),
                       "--min-rate": dict(type=float, default=None),
                       "--floor-rate": dict(type=float, default=1500)})
    strict = os.environ.get("RPCGATE_STRICT_TIMING") == "1"
    min_rate = a.min_rate if a.min_rate is not None else a.rate * 0.9
    env = Env("flood", a.rpcgate, a.bench, a.make_certs)
    env.start_echo()
    env.start_gateway("--handshake-timeout", "2000")
    fds0 = settle_fds(env, "fds to settle")
    m0 = env.metrics()
    stop = threading.Event()
    lat = {"starttls": [], "plain": []}
    errors = []

    def steady(mode):
        try:
            c = Conn(env.gw_port, mode, ca=env.ca, timeout=10)
            i = 0
            while not stop.is_set():
                i += 1
                t0 = time.monotonic()
                c.echo(0x3000 + i, payload_for(i, 1024))
                lat[mode].append(time.monotonic() - t0)
                time.sleep(0.005)
            c.close()
        except (Failure, Closed, OSError) as e:
            errors.append(f"{mode}: {e}")

    workers = [threading.Thread(target=steady, args=(m,)) for m in lat]
    for w in workers:
        w.start()
    wait_until(10, lambda: all(len(v) >= 20 for v in lat.values()) or errors, "the steady clients to start")
    before = {m: len(v) for m, v in lat.items()}
    # Two flooding processes (the GIL would cap one): each does half the rate.
    # Spawned, not forked: a forked child would inherit the steady clients'
    # sockets and keep them open on the gateway after they are closed here.
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=flood, args=(env.gw_port, a.rate / 2, a.seconds, q, i)) for i in range(2)]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        i, v = q.get(timeout=a.seconds + 60)
        out[i] = v
    for p in procs:
        p.join(30)
        check(p.exitcode == 0, "a flood process failed")
    stop.set()
    for w in workers:
        w.join(15)
        check(not w.is_alive(), "a steady client is stuck")
    check(not errors, "established connections failed during the flood: " + "; ".join(errors))
    sent = sum(v[0] for v in out.values())
    answered = sum(v[1] for v in out.values())
    failed = sum(v[2] for v in out.values())
    took = max(v[3] for v in out.values())
    why = {k: sum(v[4][k] for v in out.values()) for k in out[0][4]}
    offered = sent / max(a.seconds, max(v[5] for v in out.values()))
    capped = max(v[6] for v in out.values())
    lag = max(v[7] for v in out.values())
    # The share of the window the flooders spent runnable but off the CPU:
    # how loaded the machine was, from their side.
    starved_share = max(v[8] for v in out.values()) / max(took, 1e-3)
    during = sorted(x for m in lat for x in lat[m][before[m]:])
    check(len(during) > 0, "no steady call completed during the flood")
    p99 = during[int(len(during) * 0.99) - 1 if len(during) >= 100 else -1] * 1000
    back_to(env, fds0, "after the flood", seconds=20)
    m = env.metrics()
    log(f"flood: {sent} probes offered at {offered:.0f}/s (asked {a.rate}/s; held back by the gateway "
        f"for {capped:.1f} s, own largest backlog {lag}; waited for a CPU "
        f"{starved_share:.0%} of the time), all done in {took:.1f} s, "
        f"{answered} answered STARTTLS, {failed} failed ({why}); steady calls during it: {len(during)}, "
        f"p99 {p99:.1f} ms, 0 errors; starttls counted {m.get('rpcgate_tls_starttls_total', 0):.0f}; "
        f"fds back to {env.fds()} (from {fds0})")
    log("gateway counters of refusals: " + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(m.items())
        if v and any(w in k for w in ("refused", "rejected", "busy", "drop", "timed_out", "failed"))))
    overload = (m.get("rpcgate_tls_handshakes_timed_out_total", 0)
                - m0.get("rpcgate_tls_handshakes_timed_out_total", 0)
                + m.get("rpcgate_connections_refused_total", 0)
                - m0.get("rpcgate_connections_refused_total", 0))
    starved = False
    if offered < min_rate:
        check(not strict, f"the flood offered {offered:.0f} probes/s, below the {min_rate:.0f}/s "
              f"RPCGATE_STRICT_TIMING asks for (asked {a.rate}/s)")
        check(overload > 0 or starved_share >= 0.2,
              f"the flood offered {offered:.0f} probes/s, below the {min_rate:.0f}/s this test must "
              f"apply (asked {a.rate}/s), on a machine that gave the flooders the CPU ({starved_share:.0%} "
              f"of the time waiting for one), and the gateway shed nothing (no handshake timed out, "
              f"no connection refused): it was too slow for the rate")
        starved = overload == 0
    check(p99 <= a.p99_ms, f"p99 of established calls during the flood {p99:.1f} ms > {a.p99_ms} ms")
    # Every probe is answered, or refused at admission and counted: when the
    # handshake thread falls behind (a loaded machine), connections waiting
    # for it reach --max-connections and the ones over it are closed at once.
    # A probe that hangs, gets no STARTTLS, or is closed uncounted fails.
    refused = m.get("rpcgate_connections_refused_total", 0) - m0.get("rpcgate_connections_refused_total", 0)
    check(why["timeout"] == 0, f"{why['timeout']} probes unanswered for {PROBE_DEADLINE} s")
    check(why["no STARTTLS"] == 0, f"{why['no STARTTLS']} probes answered without STARTTLS")
    check(why["closed"] <= refused, f"{why['closed']} probes closed unanswered, {refused:.0f} refusals counted")
    share = 0.9 if strict else 0.5
    check(answered >= share * sent, f"only {answered} of {sent} probes were answered (at least "
          f"{share:.0%} must be; refused {refused:.0f})")
    check(env.gw.stop() == 0, "the gateway did not exit 0 on SIGTERM")
    if starved:
        if offered < a.floor_rate:
            print(f"SKIP: this machine is too loaded to flood: the flooders' own CPU held them to "
                  f"{offered:.0f} probes/s (they waited for a CPU {starved_share:.0%} of the time), below the "
                  f"{a.floor_rate:.0f}/s floor; the {a.rate}/s claim is unverified by this run")
            return SKIP
        log(f"NOTE: the flood ran at {offered:.0f}/s, not {min_rate:.0f}/s: the flooders' own CPU held "
            f"them back (they waited for a CPU {starved_share:.0%} of the time), and the gateway "
            f"answered all of it")


# ---- fd_exhaustion ----------------------------------------------------------

def served_or_closed(clients, seconds):
    """Each (conn, xid, payload) gets its echo back intact or sees a close
    within `seconds`; returns (served, closed)."""
    served = closed = 0
    for c, xid, payload in clients:
        c.sock.settimeout(seconds)
        try:
            rx, ok, res = parse_reply(c.record())
            check(rx == xid and ok and res == opaque(payload), f"call {xid:#x}: wrong reply")
            served += 1
        except Closed:
            closed += 1
        except (socket.timeout, TimeoutError):
            raise Failure(f"call {xid:#x}: neither answered nor closed within {seconds} s")
    return served, closed


def call_many(port, n, first_xid):
    out = []
    for i in range(n):
        try:
            c = Conn(port, timeout=20)
            xid = first_xid + i
            c.send(echo_call(xid, payload_for(xid, 512)))
            out.append((c, xid, payload_for(xid, 512)))
        except (OSError, Closed):
            pass  # refused at connect: reported to that client
    return out


def t_fd_exhaustion(argv):
    """Two ways to run out of fds.
    (a) `ulimit -n 200` at start: rpcgate keeps --max-connections within the
        limit (2 fds a client here), so the clients beyond are accepted and
        closed at once (counted as refused) instead of accept failing; once
        clients leave, new ones are admitted again.
    (b) the limit lowered under a running gateway (prlimit): io_uring's armed
        multishot accept keeps the limit it was armed with, so clients are
        still accepted, but backend sockets fail with EMFILE: those clients are
        closed; once fds are free again, new clients are served."""
    a = args_of(argv)
    env = Env("fds", a.rpcgate, a.bench, a.make_certs)
    env.start_echo()
    limit = 200

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    env.start_gateway(shards=1, tls=False, preexec=low_limit)
    m0 = env.metrics()
    allowed = (limit - 128) // 2
    batch = call_many(env.gw_port, allowed + 24, 0x4000)
    served, closed = served_or_closed(batch, 20)
    check(env.gw.alive(), "the gateway died at its fd limit")
    m1 = env.metrics()
    refused = m1["rpcgate_connections_refused_total"] - m0["rpcgate_connections_refused_total"]
    log(f"(a) ulimit -n {limit}: {len(batch)} calling clients: {served} served, {closed} closed "
        f"({refused:.0f} refused over the derived --max-connections {allowed}); fds {env.fds()}")
    check(served >= allowed - 1 and closed >= 20, "the fd limit did not divide served and refused clients")
    for c, _, _ in batch:
        c.close()
    wait_until(10, lambda: env.metrics().get("rpcgate_connections_open", 0) == 0, "the clients to leave")
    again = call_many(env.gw_port, allowed, 0x4800)
    s2, c2 = served_or_closed(again, 20)
    log(f"    after they left: {s2} of {len(again)} new clients served")
    check(s2 == len(again), "clients were not admitted again after the others left")
    for c, _, _ in again:
        c.close()
    check(env.gw.stop() == 0, "the gateway did not exit 0 on SIGTERM")

    # (b)
    env.start_gateway(shards=1, tls=False)
    Conn(env.gw_port).echo(1, b"warm")
    base = settle_fds(env, "fds to settle")
    try:
        resource.prlimit(env.gw.pid, resource.RLIMIT_NOFILE, (base + 16, base + 16))
    except (PermissionError, OSError) as e:
        print(f"SKIP: cannot lower the gateway's RLIMIT_NOFILE: {e}")
        return SKIP
    batch = call_many(env.gw_port, 40, 0x5000)
    served, closed = served_or_closed(batch, 20)
    check(env.gw.alive(), "the gateway died when fds ran out")
    emfile = sum("Too many open files" in l for l in env.gw.tail(100000).splitlines())
    log(f"(b) limit lowered to {base + 16} under load: 40 calling clients: {served} served, "
        f"{closed} closed; EMFILE logged {emfile} times")
    check(closed > 0 and emfile > 0, "the lowered limit did not bite")
    for c, _, _ in batch:
        c.close()
    wait_until(10, lambda: env.fds() <= base + 2, "fds to be released")
    again = call_many(env.gw_port, 6, 0x5800)
    s2, _ = served_or_closed(again, 20)
    log(f"    after fds were freed: {s2} of 6 new clients served")
    check(s2 == 6, "service did not resume after fds were freed")
    check(env.gw.stop() == 0, "the gateway did not exit 0 on SIGTERM")


# ---- buffer_exhaustion ------------------------------------------------------

def t_buffer_exhaustion(argv):
    a = args_of(argv)
    env = Env("buffers", a.rpcgate, a.bench, a.make_certs)
    env.start_echo()
    env.start_gateway("--buffers", "8", "--buffer-size", "4096", shards=1)
    m0 = env.metrics()
    errors, done = [], [0]
    lock = threading.Lock()

    def client(k):
        try:
            c = Conn(env.gw_port, "starttls" if k % 4 == 3 else "plain", timeout=30)
            for j in range(10):
                xid = 0x5000 + k * 100 + j
                c.echo(xid, payload_for(xid, 200 * 1024))
                with lock:
                    done[0] += 1
            c.close()
        except (Failure, Closed, OSError) as e:
            errors.append(f"client {k}: {e}")

    ts = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    check(not errors, "; ".join(errors[:5]))
    check(done[0] == 160, f"{done[0]} of 160 calls done")
    m1 = env.metrics()
    enobufs = m1.get("rpcgate_engine_enobufs_total", 0) - m0.get("rpcgate_engine_enobufs_total", 0)
    copies = m1.get("rpcgate_engine_pressure_copies_total", 0) - m0.get("rpcgate_engine_pressure_copies_total", 0)
    wait_until(10, lambda: env.metrics().get("rpcgate_engine_buffers_free", 0) == 8,
               "all 8 receive buffers back in the ring")
    log(f"8 x 4 KiB receive buffers, 16 clients x 10 calls of 200 KiB in {time.monotonic() - t0:.1f} s: "
        f"160/160 intact; ENOBUFS {enobufs:.0f}, pressure copies {copies:.0f}; all buffers back")
    check(enobufs + copies > 0, "the buffer ring never ran low (test not exercising it)")
    check(env.gw.stop() == 0, "the gateway did not exit 0 on SIGTERM")


# ---- sigterm ----------------------------------------------------------------

def t_sigterm(argv):
    a = args_of(argv)
    env = Env("sigterm", a.rpcgate, a.bench, a.make_certs)
    env.start_echo()
    env.start_gateway("--drain-timeout", "3000", implicit=True)
    stats = {"sent": 0, "replied": 0, "closed_with_pending": 0, "conns": 0}
    errors = []
    lock = threading.Lock()
    go = threading.Event()

    def client(k):
        mode = ("plain", "starttls", "implicit")[k % 3]
        port = env.implicit_port if mode == "implicit" else env.gw_port
        try:
            c = Conn(port, mode, timeout=20)
        except OSError as e:
            errors.append(f"client {k}: connect: {e}")
            return
        pending = {}
        xid = 0x60000000 + k * 0x100000
        try:
            while True:
                while len(pending) < 4:  # four calls in flight
                    xid += 1
                    size = random.Random(xid).choice((0, 100, 4096, 65536, 262144))
                    c.send(echo_call(xid, payload_for(xid, size)))
                    pending[xid] = size
                    with lock:
                        stats["sent"] += 1
                    go.set()
                rx, ok, res = parse_reply(c.record())
                check(rx in pending, f"client {k}: reply to unknown xid {rx:#x}")
                check(ok and res == opaque(payload_for(rx, pending.pop(rx))), f"client {k}: wrong reply")
                with lock:
                    stats["replied"] += 1
        except Closed as e:
            with lock:
                stats["closed_with_pending"] += len(pending)
                stats["conns"] += 1
                if "EOF" not in str(e):
                    stats["by_reset"] = stats.get("by_reset", 0) + 1
                    stats.setdefault("reset_modes", []).append(f"{mode}: {e}")
        except (socket.timeout, TimeoutError):
            errors.append(f"client {k}: hung for 20 s with {len(pending)} calls pending")
        except Failure as e:
            errors.append(str(e))

    ts = [threading.Thread(target=client, args=(k,)) for k in range(9)]
    for t in ts:
        t.start()
    go.wait(10)
    wait_until(10, lambda: stats["replied"] >= 200, "load to get going")
    t0 = time.monotonic()
    env.gw.p.send_signal(signal.SIGTERM)
    try:
        rc = env.gw.p.wait(15)
    except Exception:
        raise Failure("the gateway did not exit within 15 s of SIGTERM (drain timeout 3 s)")
    took = time.monotonic() - t0
    for t in ts:
        t.join(30)
        check(not t.is_alive(), "a client thread is stuck")
    check(not errors, "; ".join(errors[:5]))
    # Every call the clients sent ends replied or pending on a closed
    # connection (the client code makes that hold); what shows a loss is the
    # gateway's side: a reply it forwarded that no client read, because the
    # close reset the connection while the reply was still in flight (the
    # lingering close is what prevents that), or a reset instead of a FIN.
    import re as _re
    summary = [l for l in env.gw.tail(200).splitlines() if "calls=" in l]
    fw = _re.search(r"calls=(\d+) replies=(\d+)", summary[-1]) if summary else None
    check(fw is not None, "the gateway's exit line has no calls=/replies= totals: " + env.gw.tail(5))
    # The readiness check's NULL call went through the gateway too.
    unseen = int(fw.group(2)) - 1 - stats["replied"]
    resets = stats.get("by_reset", 0)
    log(f"SIGTERM under load: exit status {rc} after {took:.2f} s; calls sent {stats['sent']}, "
        f"replied intact {stats['replied']}, unanswered on closed connections "
        f"{stats['closed_with_pending']}; {stats['conns']}/9 connections closed, {resets} by a "
        f"reset; gateway at exit: calls forwarded {fw.group(1)}, replies forwarded "
        f"{fw.group(2)}, replies no client read: {unseen}")
    check(rc == 0, f"exit status {rc} on SIGTERM")
    check(stats["conns"] == 9, "not every client saw its connection closed")
    check(resets == 0, f"{resets} of 9 clients saw a reset instead of an orderly close "
          f"({'; '.join(stats.get('reset_modes', []))}; {unseen} replies unread)")
    check(unseen == 0, f"{unseen} replies forwarded by the gateway never reached their client")


# ---- source_limits ----------------------------------------------------------

def t_source_limits(argv):
    """--max-connections-per-source and --handshake-rate-per-source on one shard:
    the connections over the cap are closed at once and counted, the others
    keep working, a slot freed is usable again; probes over the rate are
    closed after their STARTTLS reply is refused (no handshake), and the
    bucket refills."""
    a = args_of(argv)
    import subprocess
    helptext = subprocess.run([a.rpcgate, "--help"], capture_output=True, text=True).stdout
    if "--max-connections-per-source" not in helptext or "--handshake-rate-per-source" not in helptext:
        print("SKIP: this rpcgate has no per-source limits (--max-connections-per-source)")
        return SKIP
    env = Env("source-limits", a.rpcgate, a.bench, a.make_certs)
    env.start_echo()
    # A refill of 1 token a second: the bound on handshakes below stays tight
    # however slowly a loaded or sanitized machine completes them.
    env.start_gateway("--max-connections-per-source", "4", "--handshake-rate-per-source", "1",
                      "--handshake-burst-per-source", "5", shards=1)
    m0 = env.metrics()
    held = [Conn(env.gw_port, timeout=5) for _ in range(4)]
    for i, c in enumerate(held):
        c.echo(0x7000 + i, b"x" * 100)
    extra = Conn(env.gw_port, timeout=5)
    try:
        extra.echo(0x7100, b"y")
        raise Failure("a fifth connection from 127.0.0.1 was served over a cap of 4")
    except Closed:
        pass
    for i, c in enumerate(held):
        c.echo(0x7200 + i, b"still here")
    held[0].close()
    wait_until(5, lambda: rpc_free_slot(env), "the freed slot to be usable")
    m1 = env.metrics()
    refused = m1.get("rpcgate_source_refused_connections_total", 0) - m0.get(
        "rpcgate_source_refused_connections_total", 0)
    check(refused >= 1, "the refusal was not counted (rpcgate_source_refused_connections_total)")
    for c in held[1:]:
        c.close()
    wait_until(5, lambda: env.metrics().get("rpcgate_connections_open", 0) == 0, "the clients to leave")
    # Handshakes: the burst of 5 passes back to back; after it, one a second.
    ok = refused_hs = 0
    t_hs = time.monotonic()
    attempts = 20  # at least one is refused unless the loop takes over 14 s
    for i in range(attempts):
        try:
            c = Conn(env.gw_port, "starttls", timeout=5)
            c.echo(0x7300 + i, b"tls")
            ok += 1
            c.close()
        except (Closed, Failure, OSError):
            refused_hs += 1
    took = time.monotonic() - t_hs
    m2 = env.metrics()
    counted = m2.get("rpcgate_source_refused_handshakes_total", 0) - m1.get(
        "rpcgate_source_refused_handshakes_total", 0)
    # Tokens available over the loop: the burst, plus one per second it took,
    # plus one for a refill that lands between two attempts.
    most = 5 + int(took) + 1
    log(f"per-source cap 4: the 5th connection was closed, the 4 others kept working, a freed slot "
        f"was reused ({refused:.0f} counted); handshakes at 1/s burst 5: {ok} of {attempts} back to back "
        f"in {took:.2f} s completed (at most {most} allowed), {refused_hs} refused "
        f"({counted:.0f} counted)")
    check(ok >= 5, f"only {ok} of {attempts} back-to-back handshakes completed with a burst of 5")
    check(ok <= most, f"{ok} of {attempts} handshakes completed in {took:.2f} s at 1/s with a burst of 5")
    check(refused_hs >= 1, f"no handshake of {attempts} was refused in {took:.2f} s (limit not enforced?)")
    check(counted == refused_hs, f"{refused_hs} handshakes refused but {counted:.0f} counted")
    # The bucket refills at 1/s: within a few seconds another handshake goes through.
    def one_more():
        try:
            c = Conn(env.gw_port, "starttls", timeout=5)
            c.echo(0x7400, b"later")
            c.close()
            return True
        except (Closed, Failure, OSError):
            return False
    wait_until(10, one_more, "a handshake once the bucket refilled")
    check(env.gw.stop() == 0, "the gateway did not exit 0 on SIGTERM")


def rpc_free_slot(env):
    try:
        c = Conn(env.gw_port, timeout=2)
        c.echo(0x7500, b"slot")
        c.close()
        return True
    except (Closed, Failure, OSError):
        return False


TESTS = {
    "client_reset": t_client_reset,
    "backend_reset": t_backend_reset,
    "handshake_flood": t_handshake_flood,
    "fd_exhaustion": t_fd_exhaustion,
    "buffer_exhaustion": t_buffer_exhaustion,
    "sigterm": t_sigterm,
    "source_limits": t_source_limits,
}

if __name__ == "__main__":
    from harness import main
    sys.exit(main(TESTS))
