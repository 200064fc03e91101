"""Clients that misbehave against the gateway (tests/dpdk/e2e.sh runs it in
the client namespace): records cut by a reset, STARTTLS probes followed by a
truncated ClientHello and a reset or a close, implicit-TLS connections closed
at once. Exits non-zero if the gateway does not answer a probe with STARTTLS.

    python3 abuse.py HOST
"""
import socket
import struct
import sys

host = sys.argv[1]
ECHO_PROG = 536870913


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def recv_some(s, n=4096):
    s.settimeout(5)
    return s.recv(n)


for i in range(30):  # a record mark promising 1000 bytes, 100 sent, then RST
    s = socket.create_connection((host, 2049), timeout=5)
    s.sendall(struct.pack(">I", 0x80000000 | 1000) + b"x" * 100)
    reset(s)

for i in range(20):  # AUTH_TLS probe, STARTTLS, half a handshake, then RST or FIN
    s = socket.create_connection((host, 2049), timeout=5)
    body = struct.pack(">10I", 0x1000 + i, 0, 2, ECHO_PROG, 1, 0, 7, 0, 0, 0)
    s.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
    reply = recv_some(s)
    if b"STARTTLS" not in reply:
        print(f"probe {i}: no STARTTLS in the reply: {reply!r}")
        sys.exit(1)
    s.sendall(b"\x16\x03\x01\x02\x00" + b"\x01" * 40)  # a ClientHello cut short
    if i % 2:
        reset(s)
    else:
        s.close()

for i in range(20):  # implicit TLS: connect and go away
    s = socket.create_connection((host, 2050), timeout=5)
    if i % 2:
        reset(s)
    else:
        s.close()
print("abuse: 70 misbehaving connections made")
