#!/usr/bin/env python3
"""Memory per idle connection of a proxy: its RSS before and after N idle connections.

    idle_rss.py --port PORT --pid PID --connections N [--more M] [--tls --ca CA_PEM]

Opens N connections to 127.0.0.1:PORT (with --tls: TLS 1.3 from the first
byte, ALPN sunrpc, verified against CA_PEM for the name localhost), makes one
NULL call to the echo program (0x20000001 v1) on each so that the proxy has
connected its backend side too, then leaves them idle. The proxy's RSS
(VmRSS of PID) is read before the first connection and, after the last, once
it has stopped changing (two equal readings 0.5 s apart, 20 s at most).
With --more M, M more connections are opened the same way after that reading
and the RSS is read again: the first N also pay for memory a proxy touches once
and keeps (rpcgate's receive buffers are first written one by one as the
provided-buffer ring turns; a pool's first pages), the next M only for what one
more idle connection costs.
Prints one JSON object: idle_connections (the ones that answered), the RSS
before and after in KiB, kib_per_connection, errors, and with --more:
more_connections, rss_more_kib, kib_per_more_connection. Standard library only.
"""
import argparse
import json
import socket
import ssl
import struct
import sys
import time

PROG, VERS = 0x20000001, 1


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def null_call(sock, xid):
    """One RPC NULL call (AUTH_NONE) in one record; True when an accepted reply came."""
    body = struct.pack(">IIIIIIIIII", xid, 0, 2, PROG, VERS, 0, 0, 0, 0, 0)
    sock.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
    reply = b""
    while True:
        mark = recv_exact(sock, 4)
        n = struct.unpack(">I", mark)[0]
        reply += recv_exact(sock, n & 0x7FFFFFFF)
        if n & 0x80000000:
            break
    xid_r, mtype, stat = struct.unpack(">III", reply[:12])
    return xid_r == xid and mtype == 1 and stat == 0


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def settled(pid, deadline_s=20.0):
    last, end = -1, time.monotonic() + deadline_s
    while time.monotonic() < end:
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    return rss_kib(pid)


def open_idle(a, ctx, first_xid, count):
    """Opens `count` connections, one NULL call each; (the open ones, errors)."""
    conns, errors = [], 0
    for i in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ctx:
                s = ctx.wrap_socket(s, server_hostname="localhost")
            if null_call(s, first_xid + i):
                conns.append(s)
            else:
                errors += 1
                s.close()
        except (OSError, ConnectionError, ssl.SSLError) as e:
            errors += 1
            if errors == 1:
                print(f"idle_rss.py: connection {first_xid + i - 1}: {e}", file=sys.stderr)
    return conns, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--connections", type=int, required=True)
    ap.add_argument("--more", type=int, default=0)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--ca")
    a = ap.parse_args()
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context(cafile=a.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(["sunrpc"])
    before = settled(a.pid)
    conns, errors = open_idle(a, ctx, 1, a.connections)
    after = settled(a.pid)
    n = len(conns)
    out = {"idle_connections": n, "rss_before_kib": before, "rss_after_kib": after,
           "kib_per_connection": round((after - before) / n, 2) if n else 0,
           "tls": a.tls, "errors": errors}
    if a.more > 0:
        more, more_errors = open_idle(a, ctx, a.connections + 1, a.more)
        rss_more = settled(a.pid)
        out.update({"more_connections": len(more), "rss_more_kib": rss_more,
                    "kib_per_more_connection":
                        round((rss_more - after) / len(more), 2) if more else 0})
        out["errors"] += more_errors
        conns += more
    print(json.dumps(out))
    for s in conns:
        s.close()
    return 0 if n and not out["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
