#!/bin/bash
# The end-to-end report: every set-up users would compare, the same workloads,
# all in one run on loopback so that each figure can be a ratio against a
# baseline measured minutes apart on the same machine:
#   direct         client -> echo server
#   rpcgate        client -> rpcgate -> echo server
#   rpcgate-nostats  the same with --no-call-stats (not in the default list:
#                  SETUPS="rpcgate rpcgate-nostats" measures what per-call
#                  accounting costs; the summary gives the ratio)
#   haproxy        client -> HAProxy (mode tcp) -> echo server
#   socat          client -> socat (fork per connection) -> echo server
#   rpcgate-tls    client =TLS=> rpcgate (--implicit-tls) -> echo server
#   rpcgate-chain  client -> rpcgate A =RPC-with-TLS (RFC 9289)=> rpcgate B -> echo server
#   haproxy-tls    client =TLS=> HAProxy (bind ... ssl) -> echo server
#   stunnel        client =TLS=> stunnel4 -> echo server
# (=TLS=>: TLS 1.3 from the first byte, one cipher suite, the same certificate
# everywhere) for the workloads:
#   small  64-byte calls, 64 connections x 16 in flight, closed loop
#   large  1 MiB calls, 8 connections x 1 in flight, closed loop
#   open   64-byte calls, 16 connections, open loop at OPEN_RATE calls/s: latency
#          from each call's intended send time
#
#   bench/e2e/report.sh [--quick] [BUILD_DIR] [OUT_DIR]
# --quick: 1 round of 1 s per point and OPEN_RATE 5000 (a CI-sized run, under
# a minute).
# Environment: DURATION (seconds per point, default 3), ROUNDS (default 3:
# each point is the median of its rounds, measured in turn with the others),
# SHARDS (rpcgate and HAProxy threads, default 2), CIPHER (default
# TLS_AES_128_GCM_SHA256), WORKLOADS ("small large open"), SETUPS (default:
# all eight), OPEN_RATE (default 10000).
# Writes OUT_DIR/results.json, OUT_DIR/summary.md, OUT_DIR/throughput.png and
# OUT_DIR/latency_cdf_<workload>.png, the raw runs in OUT_DIR/raw (redraw with
# report.py OUT_DIR/raw/runs.jsonl OUT_DIR/raw/not_run.jsonl OUT_DIR
# OUT_DIR/raw/meta.json); prints the table. A set-up that cannot
# run here (the chain, in a build without upstream TLS) is a row "n/a (why)".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
quick=0
if [ "${1:-}" = --quick ]; then
    quick=1
    shift
fi
build=${1:-$root/build/release}
out=${2:-$build/bench-report}
duration=${DURATION:-$([ "$quick" = 1 ] && echo 1 || echo 3)}
rounds=${ROUNDS:-$([ "$quick" = 1 ] && echo 1 || echo 3)}
shards=${SHARDS:-2}
cipher=${CIPHER:-TLS_AES_128_GCM_SHA256}
workloads=${WORKLOADS:-"small large open"}
setups=${SETUPS:-"direct rpcgate haproxy socat rpcgate-tls rpcgate-chain haproxy-tls stunnel"}
export OPEN_RATE=${OPEN_RATE:-$([ "$quick" = 1 ] && echo 5000 || echo 10000)}
. "$root/tests/peers/peer_lib.sh"

. "$here/lib.sh"
bench=$(e2e_find_bin rpcgate-bench)
rpcgate=$(e2e_find_bin rpcgate)
probe=$(e2e_find_bin rpcgate-probe)
e2e_need haproxy socat openssl python3
e2e_init report
e2e_certs
cat "$certs/server.pem" "$certs/server.key" >"$work/haproxy.pem"
# The raw figures stay in OUT_DIR/raw: report.py can redraw from them alone.
mkdir -p "$out/raw"
na="$out/raw/not_run.jsonl"
: >"$na"
not_run() { # SETUP WHY: the set-up is a row "n/a (WHY)"
    echo "$1: not run: $2" >&2
    echo "{\"setup\":\"$1\",\"why\":\"$2\"}" >>"$na"
    setups=$(echo " $setups " | sed "s/ $1 / /")
}
gw() { # LOG ARGS...: an rpcgate on this run's shards
    e2e_bg "$1" "$rpcgate" "${@:2}" --shards "$shards" --no-reserved-port
}

# --- the echo backend and every set-up in front of it -------------------------------
echo_port=$(peer_free_port)
e2e_bg serve.log "$bench" serve --listen "127.0.0.1:$echo_port" --shards 1
e2e_wait_ready e2e_rpc_ready "$echo_port"
route="536870913=127.0.0.1:$echo_port"

gw_port=$(peer_free_port)
gw rpcgate.log --listen "127.0.0.1:$gw_port" --backend "$route"

nostats_port=$(peer_free_port)
if [[ " $setups " == *" rpcgate-nostats "* ]]; then
    gw rpcgate-nostats.log --listen "127.0.0.1:$nostats_port" --backend "$route" --no-call-stats
    e2e_wait_ready e2e_rpc_ready "$nostats_port"
fi

gw_tls_port=$(peer_free_port)
gw_tls_starttls=$(peer_free_port)
gw rpcgate-tls.log --listen "127.0.0.1:$gw_tls_starttls" --tls opportunistic \
    --implicit-tls "127.0.0.1:$gw_tls_port" --cert "$certs/server.pem" \
    --key "$certs/server.key" --backend "$route"

# The chain: B terminates RPC-with-TLS in front of the echo server, A (next to
# the client, plaintext in) originates it towards B.
chain_b=$(peer_free_port)
chain_a=$(peer_free_port)
gw rpcgate-chain-b.log --listen "127.0.0.1:$chain_b" --tls required \
    --cert "$certs/server.pem" --key "$certs/server.key" --backend "$route"
gw rpcgate-chain-a.log --listen "127.0.0.1:$chain_a" --backend "536870913=127.0.0.1:$chain_b" \
    --upstream-tls required --upstream-ca "$certs/ca.pem" --upstream-server-name localhost
chain_a_pid=$bg_pid

ha_port=$(peer_free_port)
e2e_start_haproxy "$ha_port" "$echo_port" "" ""
ha_tls_port=$(peer_free_port)
e2e_start_haproxy "$ha_tls_port" "$echo_port" "ssl crt $work/haproxy.pem alpn sunrpc" \
    "    ssl-default-bind-ciphersuites $cipher
    ssl-default-bind-options ssl-min-ver TLSv1.3"

st_port=$(peer_free_port)
e2e_start_stunnel "$st_port" "$echo_port"
socat_port=$(peer_free_port)
e2e_start_socat "$socat_port" "$echo_port"

e2e_wait_ready e2e_rpc_ready "$gw_port" "$ha_port" "$socat_port"
e2e_wait_ready e2e_tls_ready "$gw_tls_port" "$ha_tls_port" "$st_port"
# A build without upstream TLS refuses the option at start-up; say so in the
# table instead of failing the report.
chain_settled() { e2e_rpc_ready "$chain_a" || ! peer_alive "$chain_a_pid"; }
peer_wait_until 15 chain_settled || true
if e2e_rpc_ready "$chain_a"; then
    :
elif grep -q "not in this build" "$work/rpcgate-chain-a.log"; then
    not_run rpcgate-chain "no upstream TLS in this build"
else
    not_run rpcgate-chain "the chain did not answer: $(tail -n 1 "$work/rpcgate-chain-a.log" |
        tr -d '"\\' | cut -c1-120)"
fi

declare -A target=([direct]=$echo_port [rpcgate]=$gw_port [rpcgate-nostats]=$nostats_port
    [haproxy]=$ha_port
    [socat]=$socat_port [rpcgate-tls]=$gw_tls_port [rpcgate-chain]=$chain_a
    [haproxy-tls]=$ha_tls_port [stunnel]=$st_port)
e2e_setup_args() {
    case $1 in
        rpcgate-tls | haproxy-tls | stunnel) setup_args=(--tls implicit "${tls_client[@]}") ;;
    esac
}
# Rounds: every set-up once per round, the order reversed every other round,
# so that a burst of load from elsewhere on the machine, or a drift, does not
# land on one set-up only; report.py keeps each point's median round.
results="$out/raw/runs.jsonl"
: >"$results"
order=$setups
for ((round = 1; round <= rounds; round++)); do
    echo "== round $round of $rounds" >&2
    : >"$work/round.jsonl"
    e2e_collect "$work/round.jsonl" "$workloads" "$order"
    sed "s/^{/{\"round\":$round,/" "$work/round.jsonl" >>"$results"
    order=$(echo $order | tr ' ' '\n' | tac | tr '\n' ' ')
done

machine="$(nproc) cores ($(uname -m), Linux $(uname -r | cut -d- -f1))"
cat >"$out/raw/meta.json" <<JSON
{"duration_s": $duration, "rounds": $rounds, "shards": $shards, "cipher": "$cipher", "open_rate": $OPEN_RATE,
 "quick": $([ "$quick" = 1 ] && echo true || echo false), "machine": "$machine",
 "date": "$(date -u +%Y-%m-%dT%H:%MZ)"}
JSON
python3 "$here/report.py" "$results" "$na" "$out" "$out/raw/meta.json"
echo "wrote $out/results.json, $out/summary.md and the plots in $out" >&2
