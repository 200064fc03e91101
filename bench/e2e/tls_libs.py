#!/usr/bin/env python3
"""Which OpenSSL each TLS set-up of the report runs on, and what the AEAD costs alone.

    tls_libs.py --rpcgate RPCGATE_BINARY [--chroot FORKY_DIR] [--speed-seconds S]

Prints one JSON object:
  versions: {"rpcgate", "haproxy", "haproxy32", "stunnel", "openssl", "openssl_chroot"}:
            the OpenSSL version each runs on (rpcgate: the libssl its binary loads,
            asked for OpenSSL_version(); HAProxy: `haproxy -vv`'s "Running on";
            stunnel: `stunnel -version`'s "Running with"; the openssl command of
            the host and of the chroot)
  aead:     {"host": {...}, "chroot": {...}}: `openssl speed -evp aes-128-gcm
            -bytes 16384` (one core, 16 KiB blocks as in full TLS records):
            gb_per_s and s_per_gb (10^9 bytes)
A figure that cannot be had is null. Standard library only.
"""
import argparse
import ctypes
import json
import re
import shutil
import subprocess

# `haproxy -vv`: "Running on OpenSSL version : ..." (2.6), "... SSL library version" (3.x).
RUNNING = r"Running on (?:OpenSSL|SSL library) version"


def out_of(cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def line_after(text, pattern):
    m = re.search(pattern + r"\s*:?\s*(.+)", text)
    return m.group(1).strip() if m else None


def linked_openssl(binary):
    """OpenSSL_version(OPENSSL_VERSION) of the libssl that BINARY loads."""
    m = re.search(r"libssl\.so[.\d]*\s*=>\s*(\S+)", out_of(["ldd", binary]))
    if not m:
        return None
    try:
        lib = ctypes.CDLL(m.group(1))
        lib.OpenSSL_version.restype = ctypes.c_char_p
        lib.OpenSSL_version.argtypes = [ctypes.c_int]
        return lib.OpenSSL_version(0).decode()
    except (OSError, AttributeError):
        return None


def speed(prefix, seconds):
    """AES-128-GCM throughput of one core in GB/s from `openssl speed`."""
    text = out_of(prefix + ["openssl", "speed", "-evp", "aes-128-gcm", "-bytes", "16384",
                            "-seconds", str(seconds)])
    # The table's last line: "AES-128-GCM   2212345.67k" (k = 1000 bytes/s).
    m = re.search(r"^AES-128-GCM\s+([\d.]+)k\s*$", text, re.M | re.I)
    if not m:
        return None
    gbps = float(m.group(1)) * 1000 / 1e9
    return {"gb_per_s": round(gbps, 3), "s_per_gb": round(1 / gbps, 4) if gbps else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rpcgate", required=True)
    ap.add_argument("--chroot")
    ap.add_argument("--speed-seconds", type=int, default=3)
    a = ap.parse_args()
    root = ["chroot", a.chroot] if a.chroot else None
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    versions = {
        "rpcgate": linked_openssl(a.rpcgate),
        "haproxy": line_after(out_of(["haproxy", "-vv"]), RUNNING),
        "haproxy32": line_after(out_of(root + ["haproxy", "-vv"]), RUNNING) if root else None,
        # "HAProxy version 3.2.26-1 2026/10/14 - ...": the version alone.
        "haproxy32_version": (out_of(root + ["haproxy", "-v"]).split() + ["", "", ""])[2] or None
                             if root else None,
        "stunnel": line_after(out_of([stunnel, "-version"]), r"Running\s+with") if stunnel else None,
        "openssl": out_of(["openssl", "version"]).strip() or None,
        "openssl_chroot": out_of(root + ["openssl", "version"]).strip() if root else None,
    }
    aead = {"host": speed([], a.speed_seconds),
            "chroot": speed(root, a.speed_seconds) if root else None}
    print(json.dumps({"versions": versions, "aead": aead}))


if __name__ == "__main__":
    main()
