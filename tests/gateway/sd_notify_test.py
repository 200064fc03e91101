#!/usr/bin/env python3
"""rpcgate speaks systemd's notify protocol: READY=1 once listening,
WATCHDOG=1 keep-alives at half the WATCHDOG_USEC interval while its threads
answer, STOPPING=1 on SIGTERM, then exit status 0.   sd_notify_test.py RPCGATE"""
import os
import socket
import subprocess
import sys
import tempfile
import time

rpcgate = sys.argv[1]
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    # A 2 s watchdog: keep-alives are due every 1 s (half of it). The window
    # asserted below is [0.8 s, 2 s): not faster than the interval (a loop
    # that does not wait), and never later than the watchdog itself, after
    # which systemd would kill the service. A loaded machine fits inside it.
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="2000000")
    p = subprocess.Popen([rpcgate, "--listen", "127.0.0.1:0", "--backend", "536870913=127.0.0.1:9",
                          "--shards", "2"], env=env, stderr=subprocess.DEVNULL)
    try:
        assert s.recv(100) == b"READY=1", "no READY=1"
        t0 = time.monotonic()
        for _ in range(3):
            assert s.recv(100) == b"WATCHDOG=1", "no WATCHDOG=1"
        per = (time.monotonic() - t0) / 3
        assert 0.8 <= per < 2.0, f"keep-alives every {per:.3f} s, expected about 1 s (< 2 s)"
        p.terminate()
        assert s.recv(100) == b"STOPPING=1", "no STOPPING=1"
        assert p.wait(10) == 0, "exit status not 0"
    finally:
        if p.poll() is None:
            p.kill()
print("READY, WATCHDOG (about every %.2f s), STOPPING, exit 0" % per)
