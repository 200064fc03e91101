#!/usr/bin/env python3
"""An RFC 9289 client that is not rpcgate's code: Python's ssl module (OpenSSL
underneath, but its own handshake driver and record layer use).

  rpc_tls_client.py MODE --port P [options]

Modes (exit 0 when the expected outcome happened, 1 otherwise; 3 means the TLS
handshake was refused, with the reason on stdout):
  echo          probe in plaintext, STARTTLS, TLS 1.3 on the same socket, then
                ECHO calls of --sizes bytes; each reply must match
  implicit      the same without the probe (TLS from the first byte)
  junk          probe, then bytes that are not TLS: the server must close
  probe-in-tls  a second probe inside TLS must get AUTH_ERROR/AUTH_BADCRED
  plain-call    one plaintext ECHO call; prints the reply's stat line
  hold          STARTTLS, then an ECHO call every 50 ms until the server closes
                the connection (exit 0, printing how many calls worked) or
                --timeout passes (exit 1); prints "ready" after the first call
  flood         --count connections each send the probe, read STARTTLS and then
                stay silent; waits until the server has closed all of them and
                prints how long that took
"""
import argparse
import socket
import ssl
import struct
import sys
import time

PROG, VERS = 0x20000001, 1


def record(sock):
    out = b""
    while True:
        hdr = recv_exact(sock, 4)
        (mark,) = struct.unpack(">I", hdr)
        out += recv_exact(sock, mark & 0x7FFFFFFF)
        if mark & 0x80000000:
            return out


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def frame(body):
    return struct.pack(">I", 0x80000000 | len(body)) + body


def call(xid, proc, args=b"", cred_flavor=0):
    return frame(struct.pack(">10I", xid, 0, 2, PROG, VERS, proc, cred_flavor, 0, 0, 0) + args)


def opaque(data):
    return struct.pack(">I", len(data)) + data + b"\0" * ((4 - len(data) % 4) % 4)


def reply_stat(body):
    """(xid, 'accepted SUCCESS' | 'denied AUTH_ERROR 1' | ...), results."""
    xid, mtype, stat = struct.unpack(">3I", body[:12])
    if mtype != 1:
        return xid, "not a reply", b""
    if stat == 0:
        _, vlen = struct.unpack(">2I", body[12:20])
        off = 20 + vlen + (-vlen % 4)
        (astat,) = struct.unpack(">I", body[off:off + 4])
        return xid, f"accepted {astat}", body[off + 4:]
    (rstat,) = struct.unpack(">I", body[12:16])
    if rstat == 1:
        (why,) = struct.unpack(">I", body[16:20])
        return xid, f"denied auth_error {why}", b""
    return xid, "denied rpc_mismatch", b""


def probe(sock):
    sock.sendall(call(1, 0, cred_flavor=7))
    body = record(sock)
    # MSG_ACCEPTED, verifier AUTH_NONE "STARTTLS", SUCCESS (RFC 9289 §4.1)
    expect = struct.pack(">5I", 1, 1, 0, 0, 8) + b"STARTTLS" + struct.pack(">I", 0)
    if body != expect:
        print("probe refused:", body.hex())
        sys.exit(1)


def tls_context(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2 if a.max_version == "1.2" else ssl.TLSVersion.TLSv1_3
    if a.max_version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(a.ca)
    if a.alpn != "none":
        ctx.set_alpn_protocols([a.alpn])
    if a.cert:
        ctx.load_cert_chain(a.cert, a.key)
    return ctx


def handshake(a, sock):
    try:
        t = tls_context(a).wrap_socket(sock, server_hostname="localhost")
        # TLS 1.3: a refused client certificate shows up on the first read.
        t.settimeout(a.timeout)
        return t
    except (ssl.SSLError, ConnectionError, EOFError) as e:
        print("handshake refused:", e)
        sys.exit(3)


def do_echo(a, implicit):
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    if not implicit:
        probe(sock)
    t = handshake(a, sock)
    print("tls", t.version(), t.cipher()[0], t.selected_alpn_protocol())
    subject = dict(x[0] for x in t.getpeercert().get("subject", ()))
    print("server certificate:", ",".join(f"{k}={v}" for k, v in sorted(subject.items())))
    xid = 100
    for size in [int(s) for s in a.sizes.split(",")]:
        payload = bytes((i * 31 + size) & 0xFF for i in range(size))
        try:
            t.sendall(call(xid, 1, opaque(payload)))
            body = record(t)
        except (ssl.SSLError, ConnectionError, EOFError) as e:
            print("refused after the handshake:", e)
            sys.exit(3)
        rx, st, results = reply_stat(body)
        if rx != xid or st != "accepted 0" or results != opaque(payload):
            print(f"bad reply for {size} bytes: xid {rx} {st}")
            sys.exit(1)
        xid += 1
    t.unwrap() if a.close_notify else t.close()
    print("echo ok")


def do_junk(a):
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    probe(sock)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        data = sock.recv(4096)
        print("closed" if not data else f"got {data!r}")
        sys.exit(0 if not data else 1)
    except ConnectionResetError:
        print("reset")
        sys.exit(0)


def do_probe_in_tls(a):
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    probe(sock)
    t = handshake(a, sock)
    t.sendall(call(7, 0, cred_flavor=7))
    _, st, _ = reply_stat(record(t))
    print(st)
    sys.exit(0 if st == "denied auth_error 1" else 1)


def do_plain_call(a):
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    sock.sendall(call(9, 1, opaque(b"plaintext")))
    _, st, _ = reply_stat(record(sock))
    print(st)


def do_hold(a):
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    probe(sock)
    t = handshake(a, sock)
    deadline = time.monotonic() + a.timeout
    calls = 0
    while time.monotonic() < deadline:
        try:
            t.sendall(call(1000 + calls, 1, opaque(b"held")))
            record(t)
        except (ssl.SSLError, ConnectionError, EOFError, OSError):
            print(f"closed by the server after {calls} calls", flush=True)
            sys.exit(0)
        calls += 1
        if calls == 1:
            print("ready", flush=True)
        time.sleep(0.05)
    print(f"still open after {calls} calls")
    sys.exit(1)


def do_flood(a):
    socks = []
    for _ in range(a.count):
        s = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
        probe(s)
        socks.append(s)
    print(f"probes answered {len(socks)}", flush=True)
    start = time.monotonic()
    open_ = set(range(len(socks)))
    deadline = start + a.timeout
    while open_ and time.monotonic() < deadline:
        for i in list(open_):
            socks[i].setblocking(False)
            try:
                if socks[i].recv(1) == b"":
                    open_.discard(i)
            except BlockingIOError:
                pass
            except ConnectionError:
                open_.discard(i)
        time.sleep(0.02)
    print(f"closed {a.count - len(open_)}/{a.count} after {time.monotonic() - start:.2f} s")
    sys.exit(0 if not open_ else 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", default="")
    p.add_argument("--cert", default="")
    p.add_argument("--key", default="")
    p.add_argument("--alpn", default="sunrpc")
    p.add_argument("--max-version", default="1.3")
    p.add_argument("--sizes", default="0,1,100,4096,65536,1048576,2097152")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--timeout", type=float, default=15)
    p.add_argument("--close-notify", action="store_true")
    a = p.parse_args()
    modes = {"echo": lambda: do_echo(a, False), "implicit": lambda: do_echo(a, True),
             "junk": lambda: do_junk(a), "probe-in-tls": lambda: do_probe_in_tls(a),
             "plain-call": lambda: do_plain_call(a), "flood": lambda: do_flood(a),
             "hold": lambda: do_hold(a)}
    modes[a.mode]()


if __name__ == "__main__":
    main()
