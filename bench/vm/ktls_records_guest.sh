#!/bin/sh
# Runs inside the kTLS guest (bench/vm/ktls_records.sh): the gateway's kTLS
# record options measured end to end. For each setting, rpcgate-bench run
# (userspace OpenSSL, implicit TLS) -> rpcgate (--ktls auto) -> rpcgate-bench
# serve, with large calls; one RESULT line each: calls/s, MB/s, the gateway's
# own CPU seconds per GB (utime+stime of /proc/PID/stat), and the kernel's
# TlsRxNoPadViolation / TlsDecryptRetry during the run.
#
#   ktls_records_guest.sh DIR SECONDS ROUNDS
# DIR holds rpcgate, rpcgate-bench, server.pem, server.key.
set -u
dir=${1:-/opt/bin}
secs=${2:-6}
rounds=${3:-2}
work=/tmp/ktls_records
mkdir -p "$work"
say() { echo "ktls_records: $*"; }
stat_of() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat; }
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
# CPU ticks (utime + stime) of PID.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=100
wait_for() {
    limit=$(($(now_ms) + $1))
    shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$limit" ] || return 1
        sleep 0.05
    done
}
healthy() { timeout 5 wget -q -O - "http://127.0.0.1:20090/healthz"; }

[ -r /proc/net/tls_stat ] || { say "FAIL: no kTLS in this guest"; exit 1; }
"$dir/rpcgate-bench" serve --listen 127.0.0.1:20001 --shards 1 >"$work/be.log" 2>&1 &
be_pid=$!

# run NAME GATEWAY-OPTIONS...
run() {
    name=$1
    shift
    "$dir/rpcgate" --listen 127.0.0.1:20049 --implicit-tls 127.0.0.1:20050 \
        --backend 536870913=127.0.0.1:20001 --tls required --ktls auto \
        --cert "$dir/server.pem" --key "$dir/server.key" --admin 127.0.0.1:20090 \
        --shards 1 --no-reserved-port --log-level warn "$@" >"$work/gw.log" 2>&1 &
    gw=$!
    if ! wait_for 20000 healthy; then
        say "FAIL: $name: rpcgate did not start: $(cat "$work/gw.log")"
        kill "$gw" 2>/dev/null
        return 1
    fi
    v0=$(stat_of TlsRxNoPadViolation)
    r0=$(stat_of TlsDecryptRetry)
    t0=$(ticks "$gw")
    "$dir/rpcgate-bench" run --target 127.0.0.1:20050 --tls implicit --verify --connections 2 \
        --depth 4 --size 262144 --duration "$secs" --json >"$work/run.json" 2>"$work/run.err"
    rc=$?
    t1=$(ticks "$gw")
    v1=$(stat_of TlsRxNoPadViolation)
    r1=$(stat_of TlsDecryptRetry)
    kill -TERM "$gw"
    wait "$gw"
    if [ $rc != 0 ] || ! grep -q '"errors":0' "$work/run.json"; then
        say "FAIL: $name: the run failed ($rc): $(cat "$work/run.err") $(head -c 400 "$work/run.json")"
        return 1
    fi
    ops=$(sed 's/.*"ops_per_sec":\([0-9.]*\).*/\1/' "$work/run.json")
    mbs=$(sed 's/.*"mb_per_sec":\([0-9.]*\).*/\1/' "$work/run.json")
    bytes=$(sed 's/.*"payload_bytes_sent":\([0-9]*\).*/\1/' "$work/run.json")
    # The gateway moves each payload byte twice each way (client <-> backend).
    cpu=$(awk -v t=$((t1 - t0)) -v hz=$hz -v b="$bytes" \
        'BEGIN { if (b > 0) printf "%.2f", (t / hz) / (2 * b / 1e9); else print "nan" }')
    echo "RESULT $name ops_per_sec=$ops mb_per_sec=$mbs gw_cpu_s_per_gb=$cpu" \
        "no_pad_violations=$((v1 - v0)) decrypt_retries=$((r1 - r0))"
}

fails=0
i=1
while [ $i -le "$rounds" ]; do
    run default || fails=$((fails + 1))
    run no-pad --ktls-rx-no-pad || fails=$((fails + 1))
    for sz in 4096 1024; do
        run "record-$sz" --ktls-tx-record-size $sz || fails=$((fails + 1))
    done
    i=$((i + 1))
done
grep -h "warn" "$work/gw.log" | head -n 3
kill "$be_pid" 2>/dev/null
[ $fails = 0 ] || { say "FAIL: $fails runs failed"; exit 1; }
say "ok"
