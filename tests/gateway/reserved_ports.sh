#!/bin/bash
# Reserved source ports towards the backends (knfsd's `secure`):
#   - root, --reserved-ports with a free pair of ports, four clients at once: at most two
#     backend connections get them (fewer while an earlier one's port
#     sits in TIME_WAIT), the others fall back to ephemeral ports; the
#     counters add up, and one warning line names the range;
#   - an unprivileged user with only CAP_NET_BIND_SERVICE (what a systemd unit
#     with User= and AmbientCapabilities= gives): reserved ports are used;
#   - the same user without the capability: not used, and the log says why.
#   reserved_ports.sh RPCGATE BENCH      (exit 77: not root, or no setpriv)
set -euo pipefail
rpcgate=$1 bench=$2
. "$(cd "$(dirname "$0")/../peers" && pwd)/peer_lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: binding ports < 1024 and changing user need root" >&2; exit 77; }
command -v setpriv >/dev/null || { echo "SKIP: setpriv (util-linux) is not installed" >&2; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-resvport.XXXXXX")
chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do peer_stop "$p" 5; done; rm -rf "$work"' EXIT
fail() {
    echo "FAIL: $*" >&2
    for f in "$work"/gw*.log; do echo "$f:" >&2; tail -n 8 "$f" | sed 's/^/  | /' >&2; done
    exit 1
}

echo_port=$(peer_free_port)
"$bench" serve --listen "127.0.0.1:$echo_port" --shards 1 >"$work/serve.log" 2>&1 &
pids+=($!)
peer_wait_until 10 peer_rpc_null 127.0.0.1 "$echo_port" 0x20000001 1 || fail "echo server"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
metric() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
name = "rpcgate_" + sys.argv[2]
print(sum(int(l.split()[1]) for l in text.splitlines() if l.split(" ")[0].split("{")[0] == name))
PY
}
# gateway NAME [PREFIX...] :: ARGS: rpcgate under PREFIX (e.g. setpriv ...).
gateway() {
    local name=$1
    shift
    local prefix=()
    while [ "$1" != :: ]; do prefix+=("$1"); shift; done
    shift
    gw_port=$(peer_free_port) admin=$(peer_free_port)
    "${prefix[@]}" "$rpcgate" --listen "127.0.0.1:$gw_port" --admin "127.0.0.1:$admin" \
        --backend "536870913=127.0.0.1:$echo_port" --shards 1 "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    peer_wait_until 20 port_open "$gw_port" || fail "rpcgate $name"
}
# load N: N clients at once, each with a call in flight (one backend link each).
load() {
    "$bench" run --target "127.0.0.1:$gw_port" --connections "$1" --depth 1 --size 64 \
        --duration 1 >"$work/load.out" 2>&1 || fail "rpcgate-bench run: $(cat "$work/load.out")"
}

# A port the gateway closed sits in TIME_WAIT for a minute and cannot be bound
# again meanwhile: each case (and each run) takes a pair of its own. The pairs
# come from 300-499, below what the other tests running beside this one walk
# through (rpcgate's default range 512-1023, bindresvport(3)'s 512-1023: once,
# under TSan, the default-range gateways of the other tests held 720 and 721
# in TIME_WAIT and this case got neither), and a pair is taken only when no
# socket of any state has either port.
free_pair() {  # free_pair: sets lo and hi to two free adjacent ports
    local p
    for _ in $(seq 50); do
        p=$((300 + (RANDOM % 100) * 2))
        if [ -z "$(ss -Htan "( sport = :$p or sport = :$((p + 1)) )")" ]; then
            lo=$p hi=$((p + 1))
            return 0
        fi
    done
    fail "no free pair of ports in 300-499 after 50 picks: $(ss -Htan '( sport >= :300 and sport <= :499 )' | wc -l) sockets there"
}
free_pair
gateway gw_root :: --reserved-ports "$lo-$hi"
grep -q "backend source ports: reserved, $hi down to $lo (CAP_NET_BIND_SERVICE)" \
    "$work/gw_root.log" || fail "root: no 'reserved' start line"
binds0=$(metric "$admin" backend_reserved_port_binds_total)
load 4
binds=$(metric "$admin" backend_reserved_port_binds_total)
falls=$(metric "$admin" backend_reserved_port_fallbacks_total)
warns=$(grep -c "no free reserved source port ($lo-$hi)" "$work/gw_root.log" || true)
echo "root, range $lo-$hi, 4 clients at once: $((binds - binds0)) reserved, $falls ephemeral, $warns warning line(s)"
[ "$((binds - binds0))" -ge 1 ] || fail "no backend connection got a reserved port"
[ "$((binds + falls - binds0))" -ge 4 ] || fail "4 clients, $((binds - binds0)) + $falls backend connections"
[ "$falls" -ge 2 ] || fail "the range holds 2 ports, yet only $falls fell back"
[ "$warns" -eq 1 ] || fail "$warns warning lines for $falls fallbacks (one a minute)"

caps=(setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=+net_bind_service
      --ambient-caps=+net_bind_service --)
free_pair
gateway gw_cap "${caps[@]}" :: --reserved-ports "$lo-$hi"
grep -q "backend source ports: reserved, $hi down to $lo (CAP_NET_BIND_SERVICE)" \
    "$work/gw_cap.log" || fail "nobody + CAP_NET_BIND_SERVICE: no 'reserved' start line"
load 1
binds=$(metric "$admin" backend_reserved_port_binds_total)
[ "$binds" -ge 1 ] || fail "nobody + CAP_NET_BIND_SERVICE: no reserved port bound"
echo "user nobody with CAP_NET_BIND_SERVICE: $binds reserved bind(s)"

gateway gw_nocap setpriv --reuid=nobody --regid=nogroup --clear-groups -- :: --reserved-ports 1000-1001
grep -q "backend source ports: ephemeral, no CAP_NET_BIND_SERVICE" "$work/gw_nocap.log" ||
    fail "nobody without the capability: no 'ephemeral' start line"
load 1
[ "$(metric "$admin" backend_reserved_port_binds_total)" -eq 0 ] || fail "bound without the capability"
echo "user nobody without it: ephemeral ports, said at start"
