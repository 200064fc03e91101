#!/bin/sh
# Runs inside the kTLS guest (tests/vm/run_vm.sh, busybox): the real programs
# end to end. rpcgate-bench serve <- rpcgate --tls required (STARTTLS and
# --implicit-tls, --ktls auto) <- rpcgate-bench run --verify. Passes only if
# the gateway says kernel TLS is on, /connections shows ktls-sw for TX and RX
# while the load runs, /metrics counts them, every reply is byte-identical,
# and /proc/net/tls_stat TlsTxSw/TlsRxSw rose by at least the connections
# made. The guest is a machine of its own: fixed loopback ports are free.
#
#   gateway_cli_guest.sh DIR [MODE]
# DIR holds rpcgate, rpcgate-bench, server.pem, server.key. MODE is what
# /connections must show: ktls-sw (default, the guest), or userspace for a
# dry run of this script on a host without kTLS (no tls_stat checks then).
set -u
dir=${1:-/opt/bin}
mode=${2:-ktls-sw}
work=/tmp/gateway_cli
mkdir -p "$work"
gw_pid=""
be_pid=""
load_pid=""

say() { echo "gateway_cli: $*"; }
fail() {
    say "FAIL: $*"
    echo "---- rpcgate log"
    cat "$work/gw.log" 2>/dev/null
    echo "---- rpcgate-bench serve log"
    cat "$work/be.log" 2>/dev/null
    for p in $load_pid $gw_pid $be_pid; do kill "$p" 2>/dev/null; done
    exit 1
}
stat_of() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat; }
# busybox 1.35 wget -T crashes; timeout bounds it instead.
http() { timeout 5 wget -q -O - "http://127.0.0.1:20090$1"; }
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
# wait_for MS COMMAND...: until COMMAND succeeds, at most MS milliseconds.
wait_for() {
    limit=$(($(now_ms) + $1))
    shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$limit" ] || return 1
        sleep 0.05
    done
}

if [ "$mode" = ktls-sw ]; then
    [ -r /proc/net/tls_stat ] || fail "the guest kernel has no /proc/net/tls_stat (tls module not loaded?)"
    tx0=$(stat_of TlsTxSw)
    rx0=$(stat_of TlsRxSw)
fi

"$dir/rpcgate-bench" serve --listen 127.0.0.1:20001 --shards 1 >"$work/be.log" 2>&1 &
be_pid=$!
"$dir/rpcgate" --listen 127.0.0.1:20049 --implicit-tls 127.0.0.1:20050 \
    --backend 536870913=127.0.0.1:20001 --tls required --ktls auto \
    --cert "$dir/server.pem" --key "$dir/server.key" --admin 127.0.0.1:20090 \
    --shards 1 --buffers 64 --no-reserved-port >"$work/gw.log" 2>&1 &
gw_pid=$!
wait_for 20000 http /healthz || fail "rpcgate did not become healthy within 20 s"
if [ "$mode" = ktls-sw ]; then
    grep -q "kernel TLS: on" "$work/gw.log" || fail "rpcgate did not turn kernel TLS on"
fi

# STARTTLS load; while it runs, /connections and /metrics must show kTLS.
# Under TCG on a loaded host the two handshakes alone can take many seconds:
# the load runs until the checks are done (at most 120 s), then SIGTERM ends
# it early with its report.
"$dir/rpcgate-bench" run --target 127.0.0.1:20049 --tls starttls --verify --connections 2 \
    --depth 4 --size 20000 --size-max 70000 --duration 120 --json >"$work/run1.json" 2>"$work/run1.err" &
load_pid=$!
both_ktls() {
    [ "$(http /connections | grep -o "\"protection\":{\"tx\":\"$mode\",\"rx\":\"$mode\"}" | wc -l)" -eq 2 ]
}
wait_for 90000 both_ktls || fail "/connections does not show 2 connections with $mode TX and RX within 90 s: $(http /connections)"
http /connections | grep -o '"protection":{[^}]*}' | sed 's/^/gateway_cli: \/connections /'
metrics=$(http /metrics)
for d in tx rx; do
    echo "$metrics" | grep -q "^rpcgate_tls_connections_open{direction=\"$d\",protection=\"$mode\"} 2\$" ||
        fail "/metrics does not count 2 $d $mode connections: $(echo "$metrics" | grep tls_connections_open)"
done
kill -TERM "$load_pid"
wait "$load_pid"
rc=$?
load_pid=""
cat "$work/run1.json"
[ $rc = 0 ] || fail "rpcgate-bench run (starttls) exited $rc: $(cat "$work/run1.err")"
grep -q '"errors":0' "$work/run1.json" || fail "the STARTTLS run had errors"

# Implicit TLS, a shorter run.
"$dir/rpcgate-bench" run --target 127.0.0.1:20050 --tls implicit --verify --connections 1 \
    --depth 2 --size 4096 --calls 200 --json >"$work/run2.json" 2>"$work/run2.err"
rc=$?
cat "$work/run2.json"
[ $rc = 0 ] || fail "rpcgate-bench run (implicit) exited $rc: $(cat "$work/run2.err")"
grep -q '"errors":0' "$work/run2.json" || fail "the implicit-TLS run had errors"

if [ "$mode" = ktls-sw ]; then
    tx1=$(stat_of TlsTxSw)
    rx1=$(stat_of TlsRxSw)
    say "tls_stat TlsTxSw $tx0 -> $tx1, TlsRxSw $rx0 -> $rx1"
    # The gateway's 3 connections; the bench client is userspace OpenSSL.
    [ "$tx1" -ge $((tx0 + 3)) ] || fail "TlsTxSw rose by less than 3"
    [ "$rx1" -ge $((rx0 + 3)) ] || fail "TlsRxSw rose by less than 3"
fi

kill -TERM "$gw_pid"
wait "$gw_pid"
rc=$?
gw_pid=""
[ $rc = 0 ] || fail "rpcgate exited $rc on SIGTERM"
grep -E "kernel TLS|audit" "$work/gw.log" | head -n 4
kill "$be_pid" 2>/dev/null
wait "$be_pid" 2>/dev/null
say "ok"
