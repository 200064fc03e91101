#!/usr/bin/env python3
"""Reload of a running `rpcgate` process by its real triggers (docs/operations.md,
"Reload"): SIGHUP, or POST /reload on the admin endpoint.

  reload_test.py sighup|post RPCGATE MAKE_CERTS REVOKE_SH

One gateway in `mtls` mode, with --ca, --crl and --cert-user-map, an implicit
TLS listener and an audit log, in front of a backend (here, in Python) whose
reply to every call is the AUTH_SYS credential it received. Each file the
gateway reads is replaced by rename, as an operator would, then reloaded with
the trigger named by argv[1]; each reload is awaited on
rpcgate_reloads_total, never on a fixed sleep:

  server cert   a new handshake sees the new certificate (serial, subject);
  CA            a client certificate the new CA did not sign is refused, with
                the reason; put back, the same certificate is accepted again;
  cert-user map the backend sees the uid/gids of the new map, and the audit
                line of the handshake carries them (certuser=UID:GID);
  CRL           a client connected since the start is closed once the new CRL
                revokes it (audit line `tls revoked`, rpcgate_tls_revoked_total),
                and its next handshake is refused; another client of the same
                CA is still accepted;
  a bad file    a CA file that does not parse changes nothing and is counted
                in rpcgate_reload_failures_total (POST /reload answers 500).

A connection opened before the first reload carries calls through every
reload until the CRL revokes it. Exit 0 pass, 1 fail (with the reason).
"""
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "faults"))
import harness  # noqa: E402
from harness import Failure, check, log, wait_until  # noqa: E402

PROG = harness.PROG
AUTH_SYS = 1
# Every wait polls its condition until this many seconds: far above what a
# loaded 2-core machine or ASan needs (each condition holds within a second
# there), so that only a reload that does not happen times out.
DEADLINE = 30


# ---- a backend that answers every call with the credential it saw ----------

def recv_record(sock):
    out = b""
    while True:
        hdr = b""
        while len(hdr) < 4:
            chunk = sock.recv(4 - len(hdr))
            if not chunk:
                return None
            hdr += chunk
        (mark,) = struct.unpack(">I", hdr)
        want, frag = mark & 0x7FFFFFFF, b""
        while len(frag) < want:
            chunk = sock.recv(want - len(frag))
            if not chunk:
                return None
            frag += chunk
        out += frag
        if mark & 0x80000000:
            return out


def credential_reply(body):
    """Reply to one call: SUCCESS with results (flavor, uid, gid, gids<>) of its
    credential; uid, gid = 0xffffffff and no gids when it is not AUTH_SYS."""
    xid, _mtype, _rpcvers, _prog, _vers, _proc, flavor, clen = struct.unpack(">8I", body[:32])
    cred = body[32:32 + clen]
    uid = gid = 0xFFFFFFFF
    gids = []
    if flavor == AUTH_SYS:
        at = 4  # stamp
        (nlen,) = struct.unpack(">I", cred[at:at + 4])
        at += 4 + ((nlen + 3) & ~3)
        uid, gid, n = struct.unpack(">3I", cred[at:at + 12])
        gids = list(struct.unpack(f">{n}I", cred[at + 12:at + 12 + 4 * n]))
    results = struct.pack(f">4I{len(gids)}I", flavor, uid, gid, len(gids), *gids)
    return harness.frame(struct.pack(">6I", xid, 1, 0, 0, 0, 0) + results)


class credential_backend:
    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s):
        with s:
            try:
                while (body := recv_record(s)) is not None:
                    s.sendall(credential_reply(body))
            except (OSError, struct.error):
                pass


# ---- the client side --------------------------------------------------------

class Refused(Exception):
    """The gateway refused the TLS session (at the handshake or on the first
    read); `local_port` is the client's side of the connection."""

    def __init__(self, what, local_port):
        super().__init__(what)
        self.local_port = local_port


class tls_client:
    """One implicit-TLS connection with a client certificate; verifies the
    server against the fixture CA."""

    def __init__(self, port, certs, who, timeout=DEADLINE):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(["sunrpc"])
        ctx.load_verify_locations(f"{certs}/ca.pem")
        ctx.load_cert_chain(f"{certs}/{who}.pem", f"{certs}/{who}.key")
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.local_port = raw.getsockname()[1]
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise Refused(str(e), self.local_port)
        self.peer = self.sock.getpeercert()
        self.xid = 1

    def credential(self):
        """One ECHO-procedure call with AUTH_SYS uid 4242: the credential the
        backend got, as (flavor, uid, gid, [gids])."""
        self.xid += 1
        cred = struct.pack(">2I", 1, 6) + b"client\0\0" + struct.pack(">4I", 4242, 4242, 1, 4242)
        body = struct.pack(">8I", self.xid, 0, 2, PROG, 1, 1, AUTH_SYS, len(cred)) + cred + \
            struct.pack(">2I", 0, 0) + harness.opaque(b"who am I")
        try:
            self.sock.sendall(harness.frame(body))
            rec = recv_record(self.sock)
        except (ssl.SSLError, OSError) as e:
            raise Refused(str(e), self.local_port)
        if rec is None:
            raise Refused("EOF", self.local_port)
        xid, ok, results = harness.parse_reply(rec)
        check(xid == self.xid and ok, f"call {self.xid}: reply xid {xid}, accepted {ok}")
        flavor, uid, gid, n = struct.unpack(">4I", results[:16])
        return flavor, uid, gid, list(struct.unpack(f">{n}I", results[16:16 + 4 * n]))

    def serial(self):
        return self.peer["serialNumber"]

    def subject(self):
        return ",".join(f"{k}={v}" for rdn in self.peer["subject"] for k, v in rdn)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def session(gw, who):
    """A connection of `who` that carried a call: (client, credential)."""
    c = tls_client(gw.port, gw.certs, who)
    try:
        return c, c.credential()
    except Refused:
        c.close()
        raise


def refused(gw, who):
    """`who` is refused: (what the client saw, the audit line of the refusal)."""
    try:
        c, cred = session(gw, who)
    except Refused as e:
        return str(e), gw.audit_line(e.local_port, "refused")
    c.close()
    raise Failure(f"{who} was accepted (credential {cred}), expected a refusal")


# ---- the gateway ------------------------------------------------------------

class gateway:
    def __init__(self, env, trigger):
        self.env, self.trigger = env, trigger
        self.certs = env.certs
        self.live = os.path.join(env.work, "live")
        os.makedirs(self.live)
        self.audit = os.path.join(env.work, "audit.log")

    def path(self, name):
        return os.path.join(self.live, name)

    def install(self, name, text=None, source=None):
        """Replaces live/NAME by rename (a reader sees the old or the new file)."""
        tmp = self.path(f".{name}.new")
        if source:
            with open(source, "rb") as f:
                text = f.read()
        with open(tmp, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, self.path(name))

    def start(self, backend_port):
        self.port = harness.free_port()
        self.env.admin_port = harness.free_port()
        argv = [self.env.rpcgate, "--implicit-tls", f"127.0.0.1:{self.port}",
                "--backend", f"{PROG}=127.0.0.1:{backend_port}", "--shards", "2",
                "--no-reserved-port", "--admin", f"127.0.0.1:{self.env.admin_port}",
                "--tls", "mtls",
                "--cert", self.path("server.pem"), "--key", self.path("server.key"),
                "--ca", self.path("ca.pem"), "--crl", self.path("crl.pem"),
                "--cert-user-map", self.path("users.map"), "--audit-log", self.audit]
        self.proc = self.env.start(argv, "gateway")
        self.env.gw = self.proc
        wait_until(DEADLINE, lambda: self.env.metrics_ok() or not self.proc.alive(),
                   "the gateway's admin endpoint")
        check(self.proc.alive(), "the gateway exited at start: " + self.proc.tail())

    def counters(self):
        m = self.env.metrics()
        return (int(m.get("rpcgate_reloads_total", 0)),
                int(m.get("rpcgate_reload_failures_total", 0)))

    def reload(self, expect_ok=True):
        """Reloads by the trigger under test; waits for the counter it moves."""
        ok0, failed0 = self.counters()
        if self.trigger == "sighup":
            os.kill(self.proc.pid, signal.SIGHUP)
        else:
            req = urllib.request.Request(f"http://127.0.0.1:{self.env.admin_port}/reload",
                                         method="POST", data=b"")
            try:
                with urllib.request.urlopen(req, timeout=DEADLINE) as r:
                    status, body = r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                status, body = e.code, e.read().decode()
            want = 200 if expect_ok else 500
            check(status == want,
                  f"POST /reload answered {status} ({body.strip()}), expected {want}")
            if expect_ok:
                check(body.strip() == "reloaded", f"POST /reload answered '{body.strip()}'")
            else:
                check("keeping the old" in body, f"POST /reload gave no reason: '{body.strip()}'")
        what = "rpcgate_reloads_total" if expect_ok else "rpcgate_reload_failures_total"
        wait_until(DEADLINE, lambda: self.counters() != (ok0, failed0), f"{what} to move")
        want = (ok0 + 1, failed0) if expect_ok else (ok0, failed0 + 1)
        check(self.counters() == want,
              f"reload counters (ok, failed) {self.counters()}, expected {want}; "
              f"log: {self.proc.tail(5)}")
        if self.trigger == "sighup" and not expect_ok:  # the reason goes to the log
            wait_until(DEADLINE,
                       lambda: "SIGHUP: reload failed, keeping the old" in self.proc.tail(20),
                       "the log line saying why the SIGHUP reload failed")
        return want

    def audit_line(self, local_port, verdict):
        """The audit line of the handshake from 127.0.0.1:local_port (waited for)."""
        key = f" peer 127.0.0.1:{local_port} tls {verdict}:"

        def find():
            try:
                with open(self.audit) as f:
                    return next((line for line in f if key in line), None)
            except OSError:
                return None
        return wait_until(DEADLINE, find, f"the audit line '{key.strip()}'")


def make_more_certs(certs):
    """server2 (same CA, O=rotated, a new serial) and client2 (same CA)."""
    sh = f"""set -e; cd '{certs}'
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext
for n in server2 client2; do
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $n.key
done
openssl req -new -key server2.key -subj '/CN=localhost/O=rotated' -out server2.csr
openssl x509 -req -in server2.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
  -extfile san.ext -out server2.pem
openssl req -new -key client2.key -subj '/CN=client2' -out client2.csr
openssl x509 -req -in client2.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
  -out client2.pem
"""
    r = subprocess.run(["sh", "-c", sh], capture_output=True, text=True)
    check(r.returncode == 0, f"making server2/client2 failed: {r.stderr}")


def run(trigger, rpcgate, make_certs, revoke_sh):
    env = harness.Env(f"reload-{trigger}", rpcgate, None, make_certs)
    certs = env.certs
    make_more_certs(certs)
    gw = gateway(env, trigger)
    gw.install("server.pem", source=f"{certs}/server.pem")
    gw.install("server.key", source=f"{certs}/server.key")
    gw.install("ca.pem", source=f"{certs}/ca.pem")
    gw.install("crl.pem", source=f"{certs}/crl.pem")
    gw.install("users.map", "subject:CN=client1,O=rpcgate test 1000 1000,20\n")
    backend = credential_backend()
    gw.start(backend.port)
    wait_until(DEADLINE, lambda: probe_ok(gw), "a TLS call through the gateway")

    # Before any reload. `held` stays open until the CRL revokes client1.
    held, cred = session(gw, "client")
    check(cred == (AUTH_SYS, 1000, 1000, [20]),
          f"client1 under the first map reached the backend as {cred}")
    first_serial, first_subject = held.serial(), held.subject()
    log(f"start: server certificate serial {first_serial} ({first_subject}); "
        f"client1 maps to uid 1000")

    def held_still_works(after):
        try:
            held.credential()
        except Refused as e:
            raise Failure(f"the connection opened before the reloads broke after {after}: {e}")

    # 1. The server certificate.
    gw.install("server.pem", source=f"{certs}/server2.pem")
    gw.install("server.key", source=f"{certs}/server2.key")
    gw.reload()
    c, _ = session(gw, "client2")
    check(c.serial() != first_serial, f"after the reload the server certificate is still serial "
          f"{c.serial()}")
    check("organizationName=rotated" in c.subject(),
          f"after the reload the server certificate is {c.subject()}")
    log(f"cert: {trigger} -> serial {c.serial()} ({c.subject()})")
    c.close()
    held_still_works("the certificate reload")

    # 2. The CA: a CA that did not sign client1 -> refused; the old one back -> accepted.
    gw.install("ca.pem", source=f"{certs}/ca2.pem")
    gw.reload()
    why, line = refused(gw, "client")
    check("certificate verify failed" in line and "alert sent: unknown CA" in line,
          f"client1 under ca2 refused for another reason: {line.strip()} (client: {why})")
    log(f"CA: {trigger} to ca2 -> client1 refused ({why})")
    gw.install("ca.pem", source=f"{certs}/ca.pem")
    gw.reload()
    c, cred = session(gw, "client")
    check(cred[1] == 1000, f"client1 back under its CA reached the backend as {cred}")
    c.close()
    log(f"CA: {trigger} back to ca -> client1 accepted")
    held_still_works("the CA reloads")

    # 3. The cert-user map: client1 now maps to 4321 with other groups.
    gw.install("users.map", "# rotated\nsubject:CN=client1,O=rpcgate test 4321 4322,7,8\n")
    gw.reload()
    c, cred = session(gw, "client")
    check(cred == (AUTH_SYS, 4321, 4322, [7, 8]),
          f"after the map reload client1 reached the backend as {cred}, expected uid 4321 "
          f"gid 4322 gids 7,8")
    line = gw.audit_line(c.local_port, "accepted")
    check(" certuser=4321:4322" in line, f"the audit line does not show the new identity: {line}")
    c.close()
    log(f"map: {trigger} -> client1 is uid 4321 gid 4322 gids 7,8 at the backend and in the audit")
    held_still_works("the map reload")

    # 4. The CRL: revoke client1. The held connection is closed, a new one refused.
    r = subprocess.run(["sh", revoke_sh, certs, "client", gw.path(".crl.pem.new")],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"revoke.sh failed: {r.stderr}")
    os.replace(gw.path(".crl.pem.new"), gw.path("crl.pem"))
    revoked0 = env.metrics().get("rpcgate_tls_revoked_total", 0)
    gw.reload()
    wait_until(DEADLINE, lambda: env.metrics().get("rpcgate_tls_revoked_total", 0) == revoked0 + 1,
               "rpcgate_tls_revoked_total to count the held client")
    line = gw.audit_line(held.local_port, "revoked")
    check('CN=client1' in line, f"the revoked audit line names another certificate: {line}")
    wait_until(DEADLINE, lambda: held_is_closed(held), "the revoked client's connection to close")
    held.close()
    why, line = refused(gw, "client")
    check("certificate revoked" in line,
          f"client1 refused for another reason: {line.strip()} (client: {why})")
    c, cred = session(gw, "client2")
    check(cred[0] == AUTH_SYS and cred[1] == 4242, f"client2 (not in the map) reached the backend "
          f"as {cred}")
    c.close()
    log(f"CRL: {trigger} -> the held client1 closed (rpcgate_tls_revoked_total "
        f"{int(revoked0) + 1}), client1 refused ({why}), client2 accepted")

    # 5. A CA file that does not parse: counted as a failure, nothing changes.
    gw.install("ca.pem", "not a certificate\n")
    ok, failed = gw.reload(expect_ok=False)
    c, _ = session(gw, "client2")
    check("organizationName=rotated" in c.subject(), "a failed reload changed the certificate")
    c.close()
    log(f"bad CA file: {trigger} -> rpcgate_reload_failures_total {failed} "
        f"(rpcgate_reloads_total still {ok}), still serving")
    check(gw.proc.alive(), "the gateway died: " + gw.proc.tail())
    # After all that, a clean stop (under ASan: no leak of the replaced
    # contexts, maps or CRLs either).
    status = gw.proc.stop(signal.SIGTERM, timeout=DEADLINE)
    check(status == 0, f"rpcgate exited with status {status} on SIGTERM: {gw.proc.tail(40)}")
    return 0


def probe_ok(gw):
    try:
        c, _ = session(gw, "client2")
        c.close()
        return True
    except (Refused, OSError, Failure):
        return False


def held_is_closed(held):
    try:
        held.credential()
        return False
    except Refused:
        return True


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("sighup", "post"):
        print(f"usage: {sys.argv[0]} sighup|post RPCGATE MAKE_CERTS REVOKE_SH", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], "reload"] + sys.argv[1:]
    return harness.main({"reload": lambda a: run(*a)})


if __name__ == "__main__":
    sys.exit(main())
