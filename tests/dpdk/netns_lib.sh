# Sourced by tests/dpdk/e2e.sh and bench/e2e/dpdk_vs_uring.sh: two network
# namespaces joined by a veth pair, with the rpcgate processes that run in them.
#
#   gateway namespace ($ns_gw)   veth $if_gw      the echo backend on 127.0.0.1,
#                                                 rpcgate over DPDK (lwIP address
#                                                 $ip_dpdk) or io_uring ($ip_uring)
#   client namespace ($ns_cl)    veth $if_cl      rpcgate-bench run, $ip_cl
#
# Offloads are off on both ends (ethtool -K): the kernel would otherwise hand
# net_af_packet frames with unfilled checksums and 64 KiB GSO super-frames.
# Everything started with ns_bg is killed, and both namespaces deleted, by
# ns_cleanup (installed as an EXIT trap by ns_setup). Every wait has a deadline.

ip_cl=10.213.0.10
ip_uring=10.213.0.1
ip_dpdk=10.213.0.2
echo_port=7001
ns_pids=()

ns_say() { echo "[$(basename "$0")] $*" >&2; }

# ns_can_run: 0 if this machine can build the rig, else prints why (caller skips).
ns_can_run() {
    [ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, veth, AF_PACKET)"; return 1; }
    command -v ip >/dev/null || { echo "needs ip (iproute2)"; return 1; }
    command -v ethtool >/dev/null || { echo "needs ethtool"; return 1; }
    command -v python3 >/dev/null || { echo "needs python3"; return 1; }
    local probe="rg8probe$$"
    ip netns add "$probe" 2>/dev/null || { echo "cannot create a network namespace"; return 1; }
    ip netns del "$probe"
    return 0
}

ns_setup() { # ns_setup WORKDIR
    work=$1
    local tag="rg8$$"
    ns_gw="${tag}g"
    ns_cl="${tag}c"
    if_gw="${tag}g0"
    if_cl="${tag}c0"
    trap ns_cleanup EXIT
    trap 'exit 130' INT TERM
    ip netns add "$ns_gw"
    ip netns add "$ns_cl"
    ip link add "$if_gw" type veth peer name "$if_cl"
    ip link set "$if_gw" netns "$ns_gw"
    ip link set "$if_cl" netns "$ns_cl"
    ip -n "$ns_gw" link set lo up
    ip -n "$ns_cl" link set lo up
    ip -n "$ns_cl" addr add "$ip_cl/24" dev "$if_cl"
    ip -n "$ns_gw" link set "$if_gw" up
    ip -n "$ns_cl" link set "$if_cl" up
    ip netns exec "$ns_gw" ethtool -K "$if_gw" tx off rx off tso off gso off gro off >/dev/null 2>&1
    ip netns exec "$ns_cl" ethtool -K "$if_cl" tx off rx off tso off gso off gro off >/dev/null 2>&1
    ip netns exec "$ns_cl" ethtool -k "$if_cl" | grep -q '^tx-checksumming: off' ||
        { ns_say "could not turn tx checksum offload off on $if_cl"; return 1; }
}

ns_cleanup() {
    local rc=$?
    local p
    for p in "${ns_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for p in "${ns_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${ns_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    # Anything else left inside our own namespaces (started by what we started).
    local ns
    for ns in "${ns_gw:-}" "${ns_cl:-}"; do
        [ -n "$ns" ] || continue
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    exit "$rc"
}

# ns_bg NS LOG CMD...: runs CMD in namespace NS in the background; $bg_pid.
ns_bg() {
    local ns=$1 log=$2
    shift 2
    ip netns exec "$ns" "$@" >"$work/$log" 2>&1 &
    bg_pid=$!
    ns_pids+=("$bg_pid")
}

# ns_wait_log PID LOG PATTERN SECONDS: until LOG has PATTERN; fails if PID dies or time runs out.
ns_wait_log() {
    local pid=$1 log=$2 pattern=$3 secs=$4 i
    for ((i = 0; i < secs * 10; i++)); do
        grep -q -- "$pattern" "$work/$log" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { ns_say "process $pid exited early:"; tail -n 20 "$work/$log" >&2; return 1; }
        sleep 0.1
    done
    ns_say "no '$pattern' in $log within ${secs}s:"
    tail -n 20 "$work/$log" >&2
    return 1
}

# ns_stop PID SECONDS: SIGTERM, then waits; fails (and kills) if it does not exit in time.
ns_stop() {
    local pid=$1 secs=$2 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    ns_say "process $pid did not exit within ${secs}s of SIGTERM"
    kill -KILL "$pid" 2>/dev/null || true
    return 1
}

# ns_certs: a CA and a server certificate for the gateway in $work.
ns_certs() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=rpcgate-test-ca" -keyout "$work/ca.key" -out "$work/ca.pem" >/dev/null 2>&1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=gateway" -keyout "$work/server.key" -out "$work/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=IP:%s,IP:%s\n' "$ip_dpdk" "$ip_uring" >"$work/san.ext"
    openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
        -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/server.pem" >/dev/null 2>&1
}

# ns_start_echo BENCH: the echo backend on the gateway side's loopback.
ns_start_echo() {
    ns_bg "$ns_gw" echo.log "$1" serve --listen "127.0.0.1:$echo_port" --shards 1
    echo_pid=$bg_pid
    local i
    for ((i = 0; i < 100; i++)); do
        ip netns exec "$ns_gw" ss -ltnH "sport = :$echo_port" 2>/dev/null | grep -q . && return 0
        kill -0 "$echo_pid" 2>/dev/null || break
        sleep 0.1
    done
    ns_say "the echo backend did not come up:"
    tail -n 20 "$work/echo.log" >&2
    return 1
}

# ns_start_gateway RPCGATE BACKEND(uring|dpdk) LOG [ARGS...]: rpcgate on the
# gateway side, listening on 2049 (and 2050 for implicit TLS) at the address
# of that backend; waits until it says it listens. Sets $gw_pid and $gw_ip.
ns_start_gateway() {
    local rpcgate=$1 backend=$2 log=$3
    shift 3
    if [ "$backend" = dpdk ]; then
        gw_ip=$ip_dpdk
        # The kernel must not own the lwIP address (it would answer with RSTs).
        ip -n "$ns_gw" addr flush dev "$if_gw"
        set -- --io-backend dpdk \
            --dpdk-args "--no-huge --no-pci --vdev=net_af_packet0,iface=$if_gw${DPDK_VDEV_OPTS:-}" "$@"
    else
        gw_ip=$ip_uring
        ip -n "$ns_gw" addr replace "$ip_uring/24" dev "$if_gw"
        set -- --io-backend uring "$@"
    fi
    ns_bg "$ns_gw" "$log" "$rpcgate" --listen "$gw_ip:2049" --implicit-tls "$gw_ip:2050" \
        --backend "536870913=127.0.0.1:$echo_port" --no-reserved-port \
        --tls opportunistic --cert "$work/server.pem" --key "$work/server.key" \
        --admin 127.0.0.1:9049 "$@"
    gw_pid=$bg_pid
    ns_wait_log "$gw_pid" "$log" "listening on port" 30
}

# ns_bench OUT.json ARGS...: rpcgate-bench run in the client namespace (bounded
# by --timeout and by `timeout`); the JSON object goes to $work/OUT.json.
ns_bench() {
    local out=$1
    shift
    timeout 300 ip netns exec "$ns_cl" "$bench" run --json --quiet --timeout 20 "$@" \
        >"$work/$out" 2>"$work/$out.err"
}

# ns_json FILE KEY: one value of a bench JSON object.
ns_json() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/$1" "$2"
}
