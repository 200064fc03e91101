"""Shared by the fault tests and the soak: start the gateway and the echo
backend on free loopback ports, read the gateway's /metrics, fd count and RSS,
and speak the echo program (0x20000001 v1) in plaintext, after an AUTH_TLS
probe (STARTTLS) or with TLS from the first byte.

Every wait has a deadline. Every child dies with the test (PR_SET_PDEATHSIG)
and is stopped at exit. Nothing here sends to any address but 127.0.0.1.
"""
import atexit
import ctypes
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

PROG, VERS = 0x20000001, 1
PROC_NULL, PROC_ECHO = 0, 1
SKIP = 77  # ctest SKIP_RETURN_CODE

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def log(*a):
    print(*a, flush=True)


def wait_until(seconds, pred, what):
    """Polls pred() until true; raises Failure naming `what` after `seconds`."""
    end = time.monotonic() + seconds
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= end:
            raise Failure(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.02)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the wire ---------------------------------------------------------------

def frame(body):
    return struct.pack(">I", 0x80000000 | len(body)) + body


def opaque(data):
    return struct.pack(">I", len(data)) + data + b"\0" * ((4 - len(data) % 4) % 4)


def call_body(xid, proc, args=b"", prog=PROG, cred_flavor=0):
    return struct.pack(">10I", xid, 0, 2, prog, VERS, proc, cred_flavor, 0, 0, 0) + args


def echo_call(xid, payload):
    return frame(call_body(xid, PROC_ECHO, opaque(payload)))


def probe_call(xid):
    return frame(call_body(xid, PROC_NULL, cred_flavor=7))


def parse_reply(body):
    """(xid, accepted_success, results) of a reply record."""
    xid, mtype, stat = struct.unpack(">3I", body[:12])
    if mtype != 1:
        raise Failure(f"record from the gateway is not a REPLY (type {mtype})")
    if stat != 0:
        return xid, False, b""
    vlen = struct.unpack(">I", body[16:20])[0]
    at = 20 + ((vlen + 3) & ~3)
    accept = struct.unpack(">I", body[at:at + 4])[0]
    return xid, accept == 0, body[at + 4:]


def payload_for(xid, size):
    """Deterministic bytes, so a reply can be checked without keeping the call."""
    r = random.Random(xid)
    return r.randbytes(size)


class Closed(Exception):
    """The gateway closed the connection (EOF or reset)."""


class Conn:
    """One client connection; blocking with a timeout on every operation."""

    def __init__(self, port, mode="plain", ca=None, timeout=10.0, server_name="localhost"):
        self.mode = mode
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw = raw
        self.sock = raw
        if mode == "starttls":
            raw.sendall(probe_call(0x5157))
            xid, ok, _ = parse_reply(self.record())
            check(xid == 0x5157 and ok, "the probe was not answered with STARTTLS")
        if mode in ("starttls", "implicit"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.set_alpn_protocols(["sunrpc"])
            if ca:
                ctx.load_verify_locations(ca)
            else:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(raw, server_hostname=server_name)

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError) as e:
            raise Closed(str(e))

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except (ConnectionResetError, ssl.SSLError) as e:
                raise Closed(str(e))
            if not chunk:
                raise Closed("EOF")
            buf += chunk
        return bytes(buf)

    def record(self):
        out = b""
        while True:
            (mark,) = struct.unpack(">I", self.recv_exact(4))
            out += self.recv_exact(mark & 0x7FFFFFFF)
            if mark & 0x80000000:
                return out

    def echo(self, xid, payload):
        """One ECHO call; the reply must carry the same bytes."""
        self.send(echo_call(xid, payload))
        rxid, ok, results = parse_reply(self.record())
        check(rxid == xid, f"reply xid {rxid:#x} for call {xid:#x}")
        check(ok, f"call {xid:#x} not accepted")
        check(results == opaque(payload), f"echo of {len(payload)} bytes came back different")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """Close with RST (SO_LINGER 0), not FIN."""
        # (wrap_socket took the raw socket over: set the option on the TLS one.)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def rpc_null_ok(port):
    try:
        c = Conn(port, timeout=2)
        c.send(frame(call_body(1, PROC_NULL)))
        xid, ok, _ = parse_reply(c.record())
        c.close()
        return xid == 1 and ok
    except (OSError, Closed, Failure, struct.error):
        return False


# ---- processes --------------------------------------------------------------

class Proc:
    def __init__(self, argv, logfile, preexec=None):
        self.argv = argv
        self.logfile = logfile
        self.log = open(logfile, "ab")

        def pre():
            _die_with_parent()
            if preexec:
                preexec()

        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, preexec_fn=pre)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Signals and waits; SIGKILL after `timeout`. Returns the exit status."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.argv[0]} ignored signal {sig} for {timeout} s: SIGKILL")
                self.p.kill()
                self.p.wait(5)
        return self.p.returncode

    def tail(self, n=30):
        try:
            with open(self.logfile, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


class Env:
    """A private work dir, certificates, an echo backend and a gateway."""

    def __init__(self, name, rpcgate, bench, make_certs=None):
        self.rpcgate, self.bench = rpcgate, bench
        self.work = tempfile.mkdtemp(prefix=f"rpcgate-{name}.")
        self.procs = []
        self.gw = None
        self.echo = None
        self.certs = None
        if make_certs:
            self.certs = os.path.join(self.work, "certs")
            subprocess.run(["sh", make_certs, self.certs], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(self.cleanup)

    def cleanup(self):
        for p in self.procs:
            p.stop(signal.SIGKILL if not p.alive() else signal.SIGTERM, timeout=5)
        subprocess.run(["rm", "-rf", self.work])

    def start(self, argv, name, preexec=None):
        p = Proc(argv, os.path.join(self.work, name + ".log"), preexec)
        self.procs.append(p)
        return p

    def start_echo(self, port=None, shards=1):
        self.echo_port = port or free_port()
        self.echo = self.start([self.bench, "serve", "--listen", f"127.0.0.1:{self.echo_port}",
                                "--shards", str(shards)], "echo")
        wait_until(10, lambda: rpc_null_ok(self.echo_port) or not self.echo.alive(),
                   "the echo backend to answer")
        check(self.echo.alive(), "the echo backend exited at start: " + self.echo.tail())
        return self.echo

    def start_gateway(self, *args, tls=True, implicit=False, shards=2, preexec=None,
                      backend_port=None):
        self.gw_port = free_port()
        self.admin_port = free_port()
        argv = [self.rpcgate, "--listen", f"127.0.0.1:{self.gw_port}",
                "--backend", f"536870913=127.0.0.1:{backend_port or self.echo_port}",
                "--shards", str(shards), "--no-reserved-port",
                "--admin", f"127.0.0.1:{self.admin_port}"]
        if tls:
            argv += ["--tls", "opportunistic", "--cert", f"{self.certs}/server.pem",
                     "--key", f"{self.certs}/server.key"]
        self.implicit_port = None
        if implicit:
            self.implicit_port = free_port()
            argv += ["--implicit-tls", f"127.0.0.1:{self.implicit_port}"]
        argv += list(args)
        self.gw = self.start(argv, "gateway", preexec)
        wait_until(10, lambda: self.metrics_ok() or not self.gw.alive(), "the gateway's admin endpoint")
        check(self.gw.alive(), "the gateway exited at start: " + self.gw.tail())
        wait_until(10, lambda: rpc_null_ok(self.gw_port), "the gateway to answer a NULL call")
        # The readiness call's connection is closed on our side at once, but
        # the shard sees that close a moment later: a test that counts
        # connections (a per-source cap, an fd baseline) must not start until
        # the gateway has let it go.
        self.wait_idle("the readiness connection to be closed by the gateway")
        return self.gw

    def wait_idle(self, what, seconds=10):
        """Waits until the gateway reports no open client connection."""
        wait_until(seconds, lambda: self.metrics().get("rpcgate_connections_open", -1) == 0, what)

    @property
    def ca(self):
        return f"{self.certs}/ca.pem" if self.certs else None

    def metrics_ok(self):
        try:
            self.metrics()
            return True
        except OSError:
            return False

    def metrics(self):
        """/metrics summed over labels: {name: value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line[0] == "#":
                continue
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
        return out

    def fds(self, pid=None):
        return len(os.listdir(f"/proc/{pid or self.gw.pid}/fd"))

    def rss_kb(self, pid=None):
        with open(f"/proc/{pid or self.gw.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def main(tests):
    """Runs the test named by argv[1] (a dict name -> function(argv rest)).
    Exit 0 pass, 1 fail (with the reason), 77 skip (with the reason)."""
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in tests:
        print(f"usage: {sys.argv[0]} {'|'.join(tests)} ARGS...", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        rc = tests[name](sys.argv[2:]) or 0
    except Failure as e:
        print(f"FAIL {name}: {e}", flush=True)
        return 1
    print(f"{name}: {'PASS' if rc == 0 else 'SKIP' if rc == SKIP else 'FAIL'} "
          f"in {time.monotonic() - t0:.1f} s", flush=True)
    return rc
