#!/bin/bash
# The end-to-end report: every set-up users would compare, the same workloads,
# all in one run on loopback so that each figure can be a ratio against a
# baseline measured minutes apart on the same machine:
#   direct         client -> echo server
#   rpcgate        client -> rpcgate -> echo server
#   rpcgate-nostats  the same with --no-call-stats (not in the default list:
#                  SETUPS="rpcgate rpcgate-nostats" measures what per-call
#                  accounting costs; the summary gives the ratio)
#   haproxy        client -> HAProxy 2.6 (Debian 12, mode tcp) -> echo server
#   haproxy32      client -> HAProxy 3.2 (Debian forky chroot, mode tcp) -> echo server
#   socat          client -> socat (fork per connection) -> echo server
#   rpcgate-tls    client =TLS=> rpcgate (--implicit-tls) -> echo server
#   rpcgate-chain  client -> rpcgate A =RPC-with-TLS (RFC 9289)=> rpcgate B -> echo server
#   haproxy-tls    client =TLS=> HAProxy 2.6 (bind ... ssl) -> echo server
#   haproxy32-tls  client =TLS=> HAProxy 3.2 with forky's OpenSSL -> echo server
#   stunnel        client =TLS=> stunnel4 -> echo server
# (=TLS=>: TLS 1.3 from the first byte, one cipher suite, the same certificate
# everywhere) for the workloads:
#   small  64-byte calls, 64 connections x 16 in flight, closed loop
#   large  1 MiB calls, 8 connections x 1 in flight, closed loop
#   open   64-byte calls, 16 connections, open loop at OPEN_RATE calls/s: latency
#          from each call's intended send time
#   idle   memory per idle connection: each proxy's RSS before and after
#          IDLE_CONNS connections that made one NULL call each (TLS for the TLS
#          set-ups); measured once, first, on the freshly started proxies
# Every closed-loop point also records each proxy's own CPU time (user+system
# of all its threads, /proc/PID/stat, sampled before and after the point) and
# the echo server's: CPU per call and per GB beside ops/s. The run also
# records the load average, each TLS library's OpenSSL version and
# `openssl speed -evp aes-128-gcm` (16 KiB blocks, one core) of the host's and
# the chroot's OpenSSL: the AEAD's own cost per GB.
# HAProxy 3.2 runs from bench/e2e/forky_chroot.sh's chroot, built on first use
# and cached in BUILD_DIR (with --quick it is only used when cached: the
# haproxy32 rows are "n/a (why)" otherwise).
#
#   bench/e2e/report.sh [--quick] [BUILD_DIR] [OUT_DIR]
# --quick: 1 round of 1 s per point and OPEN_RATE 5000 (a CI-sized run, under
# a minute).
# Environment: DURATION (seconds per point, default 3), ROUNDS (default 3:
# each point is the median of its rounds, measured in turn with the others),
# SHARDS (rpcgate and HAProxy threads, default 2), CIPHER (default
# TLS_AES_128_GCM_SHA256), WORKLOADS ("small large open"), SETUPS (default:
# all ten), OPEN_RATE (default 10000), IDLE_CONNS (default 1000; --quick 100),
# BASELINE_RPCGATE (another rpcgate binary, e.g. a copy saved before a change:
# adds the set-ups rpcgate-base and rpcgate-tls-base, which run it, to SETUPS,
# so that a change is measured before and after in the same run), BASELINE_ARGS
# (options for that rpcgate only, e.g. BASELINE_RPCGATE=build/release/tools/rpcgate
# BASELINE_ARGS="--tls-record-layer openssl": the same binary with OpenSSL's
# TLS records beside its own).
# Writes OUT_DIR/results.json, OUT_DIR/summary.md, OUT_DIR/throughput.png and
# OUT_DIR/latency_cdf_<workload>.png, the raw runs in OUT_DIR/raw (redraw with
# report.py OUT_DIR/raw/runs.jsonl OUT_DIR/raw/not_run.jsonl OUT_DIR
# OUT_DIR/raw/meta.json); prints the table. A set-up that cannot
# run here (the chain, in a build without upstream TLS) is a row "n/a (why)".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
e2e_args bench-report "$@"
duration=${DURATION:-$([ "$quick" = 1 ] && echo 1 || echo 3)}
rounds=${ROUNDS:-$([ "$quick" = 1 ] && echo 1 || echo 3)}
workloads=${WORKLOADS:-"small large open idle"}
setups=${SETUPS:-"direct rpcgate haproxy haproxy32 socat rpcgate-tls rpcgate-chain haproxy-tls
    haproxy32-tls stunnel"}
[ -z "${BASELINE_RPCGATE:-}" ] || setups="$setups rpcgate-base rpcgate-tls-base"
setups=$(echo $setups)
idle_conns=${IDLE_CONNS:-$([ "$quick" = 1 ] && echo 100 || echo 1000)}
tls_setups="rpcgate-tls rpcgate-tls-base rpcgate-chain haproxy-tls haproxy32-tls stunnel"
export OPEN_RATE=${OPEN_RATE:-$([ "$quick" = 1 ] && echo 5000 || echo 10000)}
. "$root/tests/peers/peer_lib.sh"
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
gw_extra=()
gw() { # LOG ARGS...: an rpcgate on this run's shards
    e2e_bg "$1" "${gw_bin:-$rpcgate}" "${@:2}" "${gw_extra[@]}" --shards "$shards" \
        --no-reserved-port
}
wanted() { case " $setups " in *" $1 "*) return 0 ;; esac; return 1; }
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(load_avg)
# cpu_pids[SETUP]: the processes whose CPU is the set-up's (none for direct);
# idle_pid[SETUP]: the process whose RSS the idle workload reads.
declare -A cpu_pids=([direct]="") idle_pid=()

# HAProxy 3.2: the forky chroot, cached in the build dir.
chroot_dir=""
if wanted haproxy32 || wanted haproxy32-tls; then
    chroot_opt=$([ "$quick" = 1 ] && echo --cached-only || true)
    if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
        why="HAProxy 3.2 runs in a chroot: needs root and unshare"
    elif chroot_dir=$("$here/forky_chroot.sh" $chroot_opt "$build" 2>"$work/chroot.log"); then
        :
    else
        why="no forky chroot: $(tail -n 1 "$work/chroot.log" | tr -d '"\\' | cut -c1-100)"
        chroot_dir=""
    fi
    if [ -z "$chroot_dir" ]; then
        wanted haproxy32 && not_run haproxy32 "$why"
        wanted haproxy32-tls && not_run haproxy32-tls "$why"
    fi
fi

# --- the echo backend and every set-up in front of it -------------------------------
echo_port=$(peer_free_port)
e2e_bg serve.log "$bench" serve --listen "127.0.0.1:$echo_port" --shards 1
echo_pid=$bg_pid
e2e_wait_ready e2e_rpc_ready "$echo_port"
route="536870913=127.0.0.1:$echo_port"

gw_port=$(peer_free_port)
gw rpcgate.log --listen "127.0.0.1:$gw_port" --backend "$route"
cpu_pids[rpcgate]=$bg_pid idle_pid[rpcgate]=$bg_pid

nostats_port=$(peer_free_port)
if [[ " $setups " == *" rpcgate-nostats "* ]]; then
    gw rpcgate-nostats.log --listen "127.0.0.1:$nostats_port" --backend "$route" --no-call-stats
    cpu_pids[rpcgate-nostats]=$bg_pid
    e2e_wait_ready e2e_rpc_ready "$nostats_port"
fi

gw_tls_port=$(peer_free_port)
gw_tls_starttls=$(peer_free_port)
gw rpcgate-tls.log --listen "127.0.0.1:$gw_tls_starttls" --tls opportunistic \
    --implicit-tls "127.0.0.1:$gw_tls_port" --cert "$certs/server.pem" \
    --key "$certs/server.key" --backend "$route"
cpu_pids[rpcgate-tls]=$bg_pid idle_pid[rpcgate-tls]=$bg_pid
base_port=$(peer_free_port)
base_tls_port=$(peer_free_port)
if [ -n "${BASELINE_RPCGATE:-}" ]; then
    gw_bin=$BASELINE_RPCGATE
    read -r -a gw_extra <<<"${BASELINE_ARGS:-}"
    gw rpcgate-base.log --listen "127.0.0.1:$base_port" --backend "$route"
    cpu_pids[rpcgate-base]=$bg_pid idle_pid[rpcgate-base]=$bg_pid
    gw rpcgate-tls-base.log --listen "127.0.0.1:$(peer_free_port)" --tls opportunistic \
        --implicit-tls "127.0.0.1:$base_tls_port" --cert "$certs/server.pem" \
        --key "$certs/server.key" --backend "$route"
    cpu_pids[rpcgate-tls-base]=$bg_pid idle_pid[rpcgate-tls-base]=$bg_pid
    gw_bin=""
    gw_extra=()
fi

# The chain: B terminates RPC-with-TLS in front of the echo server, A (next to
# the client, plaintext in) originates it towards B.
chain_b=$(peer_free_port)
chain_a=$(peer_free_port)
gw rpcgate-chain-b.log --listen "127.0.0.1:$chain_b" --tls required \
    --cert "$certs/server.pem" --key "$certs/server.key" --backend "$route"
chain_b_pid=$bg_pid
gw rpcgate-chain-a.log --listen "127.0.0.1:$chain_a" --backend "536870913=127.0.0.1:$chain_b" \
    --upstream-tls required --upstream-ca "$certs/ca.pem" --upstream-server-name localhost
chain_a_pid=$bg_pid
cpu_pids[rpcgate-chain]="$chain_a_pid $chain_b_pid"

ha_port=$(peer_free_port)
e2e_start_haproxy "$ha_port" "$echo_port" "" ""
cpu_pids[haproxy]=$ha_pid idle_pid[haproxy]=$ha_pid
ha_tls_port=$(peer_free_port)
ha_tls_bind="ssl crt $work/haproxy.pem alpn sunrpc"
ha_tls_global="    ssl-default-bind-ciphersuites $cipher
    ssl-default-bind-options ssl-min-ver TLSv1.3"
e2e_start_haproxy "$ha_tls_port" "$echo_port" "$ha_tls_bind" "$ha_tls_global"
cpu_pids[haproxy-tls]=$ha_pid idle_pid[haproxy-tls]=$ha_pid
ha32_port=$(peer_free_port)
ha32_tls_port=$(peer_free_port)
if [ -n "$chroot_dir" ]; then
    e2e_start_haproxy "$ha32_port" "$echo_port" "" "" "$chroot_dir"
    cpu_pids[haproxy32]=$ha_pid idle_pid[haproxy32]=$ha_pid
    e2e_start_haproxy "$ha32_tls_port" "$echo_port" "$ha_tls_bind" "$ha_tls_global" "$chroot_dir"
    cpu_pids[haproxy32-tls]=$ha_pid idle_pid[haproxy32-tls]=$ha_pid
fi

st_port=$(peer_free_port)
e2e_start_stunnel "$st_port" "$echo_port"
cpu_pids[stunnel]=$bg_pid idle_pid[stunnel]=$bg_pid
socat_port=$(peer_free_port)
e2e_start_socat "$socat_port" "$echo_port"
cpu_pids[socat]=$bg_pid

e2e_wait_ready e2e_rpc_ready "$gw_port" "$ha_port" "$socat_port"
e2e_wait_ready e2e_tls_ready "$gw_tls_port" "$ha_tls_port" "$st_port"
[ -z "${BASELINE_RPCGATE:-}" ] || {
    e2e_wait_ready e2e_rpc_ready "$base_port"
    e2e_wait_ready e2e_tls_ready "$base_tls_port"
}
[ -z "$chroot_dir" ] || {
    e2e_wait_ready e2e_rpc_ready "$ha32_port"
    e2e_wait_ready e2e_tls_ready "$ha32_tls_port"
}
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
    [haproxy32]=$ha32_port [socat]=$socat_port [rpcgate-tls]=$gw_tls_port
    [rpcgate-chain]=$chain_a [haproxy-tls]=$ha_tls_port [haproxy32-tls]=$ha32_tls_port
    [stunnel]=$st_port [rpcgate-base]=$base_port [rpcgate-tls-base]=$base_tls_port)
e2e_setup_args() {
    case $1 in
        rpcgate-tls | rpcgate-tls-base | haproxy-tls | haproxy32-tls | stunnel)
            setup_args=(--tls implicit "${tls_client[@]}")
            ;;
    esac
}
# Rounds: every set-up once per round, the order reversed every other round,
# so that a burst of load from elsewhere on the machine, or a drift, does not
# land on one set-up only; report.py keeps each point's median round.
results="$out/raw/runs.jsonl"
: >"$results"
# Idle memory first, once, on proxies that have carried no load yet: a round
# after the others would reuse the memory their buffers left behind.
case " $workloads " in
    *" idle "*)
        : >"$work/round.jsonl"
        e2e_collect "$work/round.jsonl" idle "$setups"
        sed "s/^{/{\"round\":1,/" "$work/round.jsonl" >>"$results"
        workloads=$(echo " $workloads " | sed "s/ idle / /")
        ;;
esac
order=$setups
for ((round = 1; round <= rounds; round++)); do
    echo "== round $round of $rounds" >&2
    : >"$work/round.jsonl"
    [ -z "$(echo $workloads)" ] || e2e_collect "$work/round.jsonl" "$workloads" "$order"
    sed "s/^{/{\"round\":$round,/" "$work/round.jsonl" >>"$results"
    order=$(echo $order | tr ' ' '\n' | tac | tr '\n' ' ')
done

load_end=$(load_avg)

# The TLS libraries: which OpenSSL each proxy runs on, and what the AEAD
# alone costs on one core with the host's and the chroot's OpenSSL.
echo "== openssl speed -evp aes-128-gcm (host$([ -z "$chroot_dir" ] || echo ", forky chroot"))" >&2
libs=$(python3 "$here/tls_libs.py" --rpcgate "$rpcgate" ${chroot_dir:+--chroot "$chroot_dir"} \
    --speed-seconds "$([ "$quick" = 1 ] && echo 1 || echo 3)")

machine="$(nproc) cores ($(uname -m), Linux $(uname -r | cut -d- -f1))"
cat >"$out/raw/meta.json" <<JSON
{"duration_s": $duration, "rounds": $rounds, "shards": $shards, "cipher": "$cipher", "open_rate": $OPEN_RATE,
 "quick": $([ "$quick" = 1 ] && echo true || echo false), "machine": "$machine",
 "idle_connections": $idle_conns, "load_start": "$load_start", "load_end": "$load_end",
 "tls_libraries": $libs,
 "date": "$(date -u +%Y-%m-%dT%H:%MZ)"}
JSON
python3 "$here/report.py" "$results" "$na" "$out" "$out/raw/meta.json"
echo "wrote $out/results.json, $out/summary.md and the plots in $out" >&2
