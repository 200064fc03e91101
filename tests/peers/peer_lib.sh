# Shell helpers for starting real peers in tests. Source it; it defines
# functions only. Every wait has a deadline: nothing sleeps "long enough".
#
#   peer_free_port                 print a TCP port free on 127.0.0.1 right now
#   peer_wait_until SECS CMD...    run CMD until it succeeds or SECS pass (1 = timed out)
#   peer_alive PID                 true while PID runs (a zombie counts as gone)
#   peer_stop PID [SECS]           SIGTERM, then SIGKILL after SECS (default 10)
#   peer_rpc_null HOST PORT PROG VERS
#                                  one NULL call over TCP straight to PORT; true if it
#                                  is accepted with SUCCESS. (`rpcinfo -n PORT -t` still
#                                  asks rpcbind and fails when the program is not
#                                  registered there, whatever the server says.)
#   peer_ganesha_start STATEDIR    ganesha.sh stop (leftovers) + start, and set its
#                                  variables (NFS_PORT, MNT_PORT, EXPORT, ...) here;
#                                  returns ganesha.sh's status (77: cannot run here).
#                                  Stop it with: ganesha.sh stop STATEDIR
#   peer_nfs_roundtrip FILE URL COPY
#                                  nfs-cp FILE to the libnfs URL and back into COPY,
#                                  cmp them; prints "in N ms, out M ms". Each nfs-cp
#                                  gets $PEER_NFS_TIMEOUT (default 180) s
#   peer_metric ADMIN_PORT NAME    rpcgate_NAME from the gateway's /metrics on
#                                  127.0.0.1:ADMIN_PORT, summed over its series
#                                  (shards, labels); "missing" if it has none
#   peer_start_ready VAR LOG CMD...
#                                  start CMD in the background (stdout and stderr to
#                                  LOG), wait up to $PEER_READY_TIMEOUT (default 30) s
#                                  for a line `READY port=N`; set VAR_PID and VAR_PORT

peer_free_port() {
    # A random port of the ephemeral range that no TCP or UDP socket on this
    # machine uses, in any state (`ss`), and that is not among the last 1,024
    # handed out by any test of this user (kept in a small locked file): two
    # calls never return the same port (once in CI, ganesha's NFS and MOUNT
    # ports came out equal and MOUNT never answered). Bash, ss and flock only:
    # a python3 start per port cost seconds on a loaded machine.
    local file=${TMPDIR:-/tmp}/rpcgate-free-ports.$(id -u) lo hi port try fd
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    exec {fd}>>"$file"
    flock "$fd"
    local -A avoid=()
    for port in $(tail -n 1024 "$file") $(ss -Htuan | awk '{n = split($5, a, ":"); print a[n]}'); do
        avoid[$port]=1
    done
    for ((try = 0; try < 1000; try++)); do
        port=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
        [ -z "${avoid[$port]:-}" ] && break
    done
    if [ "$try" -ge 1000 ]; then
        exec {fd}>&-
        echo "peer_free_port: no free port in $lo-$hi outside the 1,024 handed out last" >&2
        return 1
    fi
    local recent
    recent=$(tail -n 1023 "$file")
    printf '%s\n' $recent "$port" >"$file"  # one port a line, the last 1,024
    exec {fd}>&-
    echo "$port"
}

peer_tshark_read() {  # peer_tshark_read CAPTURE OUT ARGS...: tshark -r CAPTURE ARGS... >OUT
    # A filter or field tshark does not know exits non-zero and would
    # otherwise read as "0 matches": on an error this prints tshark's message
    # and returns 1.
    local cap=$1 out=$2 rc=0
    shift 2
    tshark -r "$cap" "$@" >"$out" 2>"$out.err" || rc=$?
    [ "$rc" = 0 ] && return 0
    echo "tshark -r $cap $* exited with status $rc: $(grep -v '^Running as user' "$out.err")"
    return 1
}

peer_wait_until() {
    local secs=$1; shift
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.05
    done
}

peer_alive() {
    local state
    [ -r "/proc/$1/stat" ] || return 1
    # Field 3 of /proc/PID/stat is the state; the command name before it is in
    # parentheses and may contain spaces, so cut after the last ')'.
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

peer_stop() {
    local pid=$1 secs=${2:-10}
    peer_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! peer_wait_until "$secs" eval '! peer_alive '"$pid"; then
        echo "peer $pid ignored SIGTERM for ${secs}s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        peer_wait_until 5 eval '! peer_alive '"$pid" || true
    fi
}

peer_rpc_null() {
    python3 - "$@" <<'PY'
import socket, struct, sys
host, port, prog, vers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0), int(sys.argv[4])
# RFC 5531: xid, CALL, rpcvers 2, prog, vers, proc 0, AUTH_NONE cred and verf.
call = struct.pack(">10I", 0x52504347, 0, 2, prog, vers, 0, 0, 0, 0, 0)
try:
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(struct.pack(">I", 0x80000000 | len(call)) + call)
        reply = b""
        while len(reply) < 4 + 24:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
except OSError:
    sys.exit(1)
# mark, xid, REPLY, MSG_ACCEPTED, verf flavor, verf len 0, accept_stat
if len(reply) < 28:
    sys.exit(1)
_, xid, mtype, stat, _, vlen, astat = struct.unpack(">7I", reply[:28])
sys.exit(0 if (xid, mtype, stat, vlen, astat) == (0x52504347, 1, 0, 0, 0) else 1)
PY
}

peer_ganesha_start() {
    local script env
    script=$(dirname "${BASH_SOURCE[0]}")/ganesha.sh
    "$script" stop "$1"
    env=$("$script" start "$1") || return
    eval "$env"
}

peer_nfs_roundtrip() {
    local t0 t1 t2 limit=${PEER_NFS_TIMEOUT:-180}
    t0=$(date +%s%3N)
    timeout "$limit" nfs-cp "$1" "$2" >/dev/null || { echo "nfs-cp $1 -> $2 failed" >&2; return 1; }
    t1=$(date +%s%3N)
    timeout "$limit" nfs-cp "$2" "$3" >/dev/null || { echo "nfs-cp $2 -> $3 failed" >&2; return 1; }
    t2=$(date +%s%3N)
    cmp "$1" "$3" >&2 || { echo "what came back from $2 differs from $1" >&2; return 1; }
    echo "in $((t1 - t0)) ms, out $((t2 - t1)) ms"
}

peer_metric() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
name = "rpcgate_" + sys.argv[2]
vals = [int(l.split()[1]) for l in text.splitlines() if l.split(" ")[0].split("{")[0] == name]
print(sum(vals) if vals else "missing")
PY
}

peer_start_ready() {
    local var=$1 log=$2; shift 2
    local pid line port=
    "$@" >"$log" 2>&1 </dev/null &
    pid=$!
    eval "${var}_PID=$pid"
    local end=$((SECONDS + ${PEER_READY_TIMEOUT:-30}))
    while [ "$SECONDS" -lt "$end" ]; do
        line=$(grep -m1 '^READY port=' "$log" 2>/dev/null || true)
        if [ -n "$line" ]; then
            port=${line#READY port=}
            break
        fi
        if ! peer_alive "$pid"; then
            echo "peer exited before READY: $*" >&2
            sed 's/^/  | /' "$log" >&2
            return 1
        fi
        sleep 0.05
    done
    if [ -z "$port" ]; then
        echo "peer not READY within ${PEER_READY_TIMEOUT:-30}s: $*" >&2
        sed 's/^/  | /' "$log" >&2
        peer_stop "$pid"
        return 1
    fi
    eval "${var}_PORT=$port"
}
