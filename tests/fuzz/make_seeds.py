#!/usr/bin/env python3
"""Writes the seed corpora of the auth_tls, portmap, config and connection
fuzz targets (tests/fuzz/corpus/<target>/). Rerun after changing a target's
input format; the files are committed."""
import os
import struct
import sys

here = os.path.dirname(os.path.abspath(__file__))


def w(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def u32(*v):
    return b"".join(struct.pack(">I", x) for x in v)


def auth(flavor, body=b""):
    return u32(flavor, len(body)) + body + b"\0" * ((4 - len(body) % 4) % 4)


def call(xid, prog, vers, proc, cred=auth(0), verf=auth(0), args=b""):
    return u32(xid, 0, 2, prog, vers, proc) + cred + verf + args


# auth_tls: byte 0 = over_tls bit + cut shape, then a record body.
w("auth_tls", "probe", b"\x02" + call(1, 100003, 4, 0, auth(7)))
w("auth_tls", "probe_over_tls", b"\x03" + call(2, 100003, 4, 0, auth(7)))
w("auth_tls", "misuse_proc", b"\x04" + call(3, 100003, 3, 1, auth(7)))
w("auth_tls", "misuse_body", b"\x06" + call(4, 100005, 3, 0, auth(7, b"x")))
w("auth_tls", "misuse_verf", b"\x08" + call(5, 100003, 4, 0, auth(7), auth(1, b"abcd")))
w("auth_tls", "authsys", b"\x0a" + call(6, 100003, 3, 0, auth(1, u32(0) + u32(4) + b"host" + u32(0, 0, 0))))
w("auth_tls", "starttls_reply", b"\x00" + u32(7, 1, 0) + auth(0, b"STARTTLS") + u32(0))
w("auth_tls", "rejected_reply", b"\x00" + u32(8, 1, 1, 1, 1))

# portmap: byte 0 = cut shape, then GETPORT args / a result / a program name.
w("portmap", "getport_nfs", b"\x01" + u32(100003, 3, 6, 0))
w("portmap", "getport_mount", b"\x05" + u32(100005, 3, 17, 111))
w("portmap", "result", b"\x02" + u32(2049))
w("portmap", "name_nfs", b"\x00nfs")
w("portmap", "name_hex", b"\x00" + b"0x186a3")
w("portmap", "name_dec", b"\x00" + b"100021")
w("portmap", "trailing", b"\x03" + u32(100003, 3, 6, 0, 9))

# config: TOML files.
w("config", "minimal", 'listen = "127.0.0.1:2049"\nbackend = "nfs=127.0.0.1:3049"\n')
w("config", "full", """listen = ["127.0.0.1:2049", "[::1]:2049"]
implicit_tls = ["127.0.0.1:20490"]
shards = 2
tls = "opportunistic"
cert = "server.pem"
key = "server.key"
ca = "ca.pem"
crl = "crl.pem"
admin = "127.0.0.1:9049"
idle_timeout = 300
connect_timeout = 5000
drain_timeout = 5000
handshake_timeout = 10000
max_connections = 65536
max_record = 4259840
max_inflight = 8388608
buffers = 512
buffer_size = 32768
log_level = "info,tls=debug"
tls_auto = true
alpn_strict = false
portmap = true
reserved_port = false

[backends]
nfs = "127.0.0.1:3049"
mount = "127.0.0.1:3050"
""")
w("config", "upstream", """listen = "127.0.0.1:2049"
backend = ["nfs=127.0.0.1:3049", "100005=localhost:3050"]
upstream_tls = true
upstream_ca = "ca.pem"
upstream_server_name = "nfs.example.org"
""")
w("config", "bad_type", 'listen = 2049\nbackend = "nfs=127.0.0.1:1"\n')
w("config", "big_int", 'listen = "127.0.0.1:1"\nbackend = "nfs=127.0.0.1:1"\nbuffers = 4294967296\n')
w("config", "unknown_key", 'listen = "127.0.0.1:1"\nfoo = 1\n')
# Floats and out-of-range integers for integer keys: refused, never converted
# or narrowed (the target once had to skip the floats: their conversion was
# undefined behaviour).
w("config", "float_int", 'listen = "127.0.0.1:1"\nbackend = "nfs=127.0.0.1:1"\nshards = 4.29e124\n')
w("config", "negative_int", 'listen = "127.0.0.1:1"\nbackend = "nfs=127.0.0.1:1"\nmax_record = -1\n')

# connection: a script, one byte an op (op & 31; (op >> 5) % 3 picks the
# connection), then the op's parameter bytes. See connection_fuzz.cc.
CONNECT, IMPLICIT, AUTO, ECHO, ECHO_BIG, NULL_, FRAGS, PARTIAL, RAW = 0, 2, 3, 4, 6, 7, 8, 9, 10
PROBE, MISUSE, GETPORT, KEYUPDATE, NOTIFY, TLSRAW, HALF, FIN, RST = 11, 12, 13, 14, 15, 16, 17, 18, 19
BRESET, BCUT, READ, WAIT = 20, 21, 22, 24


def c(op, conn=0):
    return bytes([op | conn << 5])


w("connection", "echo", c(CONNECT) + c(ECHO) + b"\x40" + c(NULL_) + c(WAIT) + b"\x05" + b"\x00")
w("connection", "starttls", c(CONNECT) + c(PROBE) + b"\x00" + c(ECHO) + b"\x80" + c(KEYUPDATE) + b"\x01"
  + c(ECHO) + b"\x10" + c(WAIT) + b"\x05" + c(NOTIFY) + b"\x00")
w("connection", "implicit", c(IMPLICIT) + c(ECHO) + b"\x20" + c(FRAGS) + b"\x10\x05" + c(READ) + b"\x03")
w("connection", "auto", c(AUTO, 1) + c(ECHO, 1) + b"\x20" + c(TLSRAW, 1) + b"\x04\x17\x03\x03\x00" + b"\x00")
w("connection", "partial_rst", c(CONNECT) + c(PARTIAL) + b"\x20\x30" + c(RST) + c(CONNECT, 1)
  + c(ECHO, 1) + b"\x10" + b"\x00")
w("connection", "garbage", c(CONNECT) + c(RAW) + b"\x08" + b"\x80\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x00"
  + b"\x00\x00\x00\x02" + c(WAIT) + b"\x03" + b"\x07")
w("connection", "backend_reset", c(CONNECT) + c(CONNECT, 1) + c(ECHO) + b"\x30" + c(BRESET) + c(ECHO, 1)
  + b"\x30" + c(WAIT) + b"\x08" + b"\x00")
w("connection", "backend_cut", c(CONNECT) + c(BCUT) + c(ECHO_BIG) + b"\x20" + c(WAIT) + b"\x08"
  + c(CONNECT, 1) + c(ECHO, 1) + b"\x04" + b"\x00")
w("connection", "oversize", c(CONNECT) + c(ECHO_BIG) + b"\xff" + c(WAIT) + b"\x05" + b"\x00")
w("connection", "probe_silent", c(CONNECT, 2) + c(PROBE, 2) + b"\x06" + c(CONNECT) + c(NULL_) + b"\x00")
w("connection", "misuse_getport", c(CONNECT) + c(MISUSE) + c(GETPORT) + b"\x01" + c(HALF) + c(WAIT) + b"\x02"
  + b"\x05")
