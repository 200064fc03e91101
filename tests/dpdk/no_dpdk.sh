#!/bin/sh
# A build without DPDK: `--io-backend dpdk` exists, fails, and says why in one line.
out=$("$1" --listen 127.0.0.1:0 --backend 100003=127.0.0.1:9 --io-backend dpdk 2>&1)
rc=$?
echo "$out"
[ "$rc" -ne 0 ] || { echo "FAIL: rpcgate --io-backend dpdk exited 0 in a build without DPDK"; exit 1; }
echo "$out" | grep -q "this build has no DPDK" || { echo "FAIL: no line saying the build has no DPDK"; exit 1; }
echo "ok: exit $rc"
