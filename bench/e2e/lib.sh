# Shared by the end-to-end comparison scripts. Source it after setting $build,
# $out and $shards (and $cipher for TLS), or source it first and let e2e_args
# set them; it defines functions only.
#
#   e2e_args OUT_NAME [--quick] [BUILD_DIR] [OUT_DIR]
#                          the report scripts' command line: sets quick (1 with
#                          --quick, else 0), build (default $root/build/release),
#                          out (default $build/OUT_NAME), shards ($SHARDS,
#                          default 2) and cipher ($CIPHER, default
#                          TLS_AES_128_GCM_SHA256)
#   e2e_find_bin NAME      the executable NAME under $build, wherever CMake put it
#   e2e_need TOOL...       exit with one line if a tool is not installed
#   e2e_init NAME          work dir $work, the pids array, a trap that stops every
#                          pid, keeps the logs in $out/logs and removes $work;
#                          raises the open-file limit
#   e2e_bg LOG CMD...      CMD in the background, output to $work/LOG; sets bg_pid
#                          and appends it to pids
#   e2e_certs              the TLS tests' certificates in $certs; sets the array
#                          tls_client (rpcgate-bench run options that trust them)
#   e2e_workload_args W    sets the array `args` to rpcgate-bench run options of
#                          workload W: large (1 MiB x 8 connections x 1),
#                          small (64 B x 64 connections x 16) or
#                          open (64 B x 16 connections, open loop at $OPEN_RATE/s)
#   e2e_start_haproxy PORT BACKEND_PORT "BIND EXTRA" "GLOBAL LINES" [CHROOT]
#                          HAProxy in TCP mode with $shards threads, config and
#                          log in $work; sets ha_pid and appends it to pids.
#                          With CHROOT (bench/e2e/forky_chroot.sh's directory):
#                          the HAProxy installed there, run in a private mount
#                          namespace that binds $work at the same path inside
#                          (the network, loopback included, is the host's)
#   e2e_haproxy_config PORT BACKEND_PORT "BIND EXTRA" "GLOBAL LINES"
#                          e2e_start_haproxy's config file only: writes
#                          $work/haproxy-PORT.cfg
#   e2e_haproxy_bg LOG CHROOT ARGS...
#                          `haproxy ARGS...` in the background as e2e_bg does,
#                          in CHROOT as above when it is not "" (its pid is
#                          HAProxy's either way); for reloads (-x, -sf)
#   e2e_start_stunnel PORT BACKEND_PORT
#                          stunnel4 terminating TLS 1.3 ($cipher, $certs/server.*)
#   e2e_start_socat PORT BACKEND_PORT
#                          socat, one forked process per connection
#   e2e_rpc_ready PORT     the echo program answers a NULL call on PORT (plaintext)
#   e2e_tls_ready PORT     ... over implicit TLS, verified against $certs ($probe)
#   e2e_wait_ready CHECK PORT...
#                          until `CHECK PORT` succeeds for every port (15 s
#                          each); else prints the logs' tails and exits
#   e2e_collect RESULTS "WORKLOADS" "SETUPS"
#                          rpcgate-bench run --json for every workload x setup
#                          against 127.0.0.1:${target[SETUP]}, $duration s each,
#                          plus the options that the caller's e2e_setup_args
#                          SETUP puts in the array setup_args (if it defines
#                          it); one line {"workload","setup","result"} each is
#                          appended to RESULTS. A run with errors keeps its
#                          figures; one that printed nothing gets errors -1.
#                          When the caller's array cpu_pids has SETUP (pids
#                          of the proxy's processes, space-separated), the
#                          line also has "cpu": the proxy's and the echo
#                          server's ($echo_pid) CPU seconds over the run.
#                          Workload idle (e2e_idle) instead of a run when
#                          the caller's array idle_pid has SETUP.
#   e2e_cpu_seconds PID... user+system CPU seconds of these processes (all
#                          their threads, their reaped children and their
#                          live descendants), from /proc/PID/stat
#   e2e_idle SETUP         RSS of ${idle_pid[SETUP]} before and after
#                          $idle_conns idle connections (one NULL call each,
#                          TLS for the TLS set-ups) to ${target[SETUP]}:
#                          prints the JSON result (bench/e2e/idle_rss.py)

e2e_args() {
    local name=$1
    shift
    quick=0
    if [ "${1:-}" = --quick ]; then
        quick=1
        shift
    fi
    build=${1:-$root/build/release}
    out=${2:-$build/$name}
    shards=${SHARDS:-2}
    cipher=${CIPHER:-TLS_AES_128_GCM_SHA256}
}

e2e_find_bin() {
    local p d
    # Where the build puts the programs first; then anywhere else in the build
    # dir, but not in forky_chroot.sh's root file system or the qemu guests'
    # payloads (tests/vm), which hold copies that may be older.
    for d in tools tools/bench tools/probe; do
        [ -x "$build/$d/$1" ] && [ -f "$build/$d/$1" ] && { echo "$build/$d/$1"; return; }
    done
    p=$(find "$build" \( -path "$build/forky-chroot*" -o -path "$build/vm" \) -prune -o -type f \
        -name "$1" -perm -u+x -print 2>/dev/null | head -n 1)
    [ -n "$p" ] || { echo "$(basename "$0"): $1 not found under $build (build first)" >&2; exit 1; }
    echo "$p"
}

e2e_need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null ||
            { echo "$(basename "$0"): $tool is not installed (scripts/setup.sh)" >&2; exit 1; }
    done
}

e2e_init() {
    mkdir -p "$out"
    work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-$1.XXXXXX")
    pids=()
    trap e2e_cleanup EXIT
    ulimit -n "$(ulimit -Hn)"
}

e2e_cleanup() {
    local p
    for p in "${pids[@]}"; do peer_stop "$p" 5; done
    # The servers' logs stay with the results: errors in a run are explained there.
    mkdir -p "$out/logs" && cp "$work"/*.log "$out/logs/" 2>/dev/null || true
    rm -rf "$work"
}

e2e_bg() {
    local log=$1; shift
    "$@" >"$work/$log" 2>&1 &
    bg_pid=$!
    pids+=($bg_pid)
}

e2e_certs() {
    certs=$work/certs
    "$root/tests/tls/make_certs.sh" "$certs"
    tls_client=(--ca "$certs/ca.pem" --server-name localhost --ciphersuites "$cipher")
}

e2e_workload_args() {
    case $1 in
        large) args=(--connections 8 --depth 1 --size 1048576) ;;
        small) args=(--connections 64 --depth 16 --size 64) ;;
        open) args=(--connections 16 --depth 64 --size 64 --rate "${OPEN_RATE:-10000}") ;;
        *) echo "unknown workload $1 (large, small, open)" >&2; exit 2 ;;
    esac
}

e2e_start_haproxy() {
    e2e_haproxy_config "$1" "$2" "$3" "$4"
    e2e_haproxy_bg "haproxy-$1.log" "${5:-}" -f "$work/haproxy-$1.cfg" -db
    ha_pid=$bg_pid
}

e2e_haproxy_config() {
    local port=$1 backend=$2 bind_extra=$3 global_extra=$4
    cat >"$work/haproxy-$port.cfg" <<CFG
global
    nbthread $shards
    maxconn $(( ($(ulimit -n) - 200) / 2 ))
$global_extra
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$port $bind_extra
    default_backend be
backend be
    server echo 127.0.0.1:$backend
CFG
}

e2e_haproxy_bg() {
    local log=$1 chroot_dir=$2
    shift 2
    if [ -z "$chroot_dir" ]; then
        e2e_bg "$log" haproxy "$@"
    else
        # unshare without --fork and every step exec'ing: the pid is HAProxy's.
        e2e_bg "$log" unshare --mount --propagation private sh -c '
            set -e
            mkdir -p "$1$2"
            mount --bind "$2" "$1$2"
            mount -t proc proc "$1/proc"
            mount --bind /dev "$1/dev"
            root=$1
            shift 2
            exec chroot "$root" haproxy "$@"' sh "$chroot_dir" "$work" "$@"
    fi
}

e2e_start_stunnel() {
    local port=$1 backend=$2 stunnel
    stunnel=$(command -v stunnel4 || command -v stunnel) ||
        { echo "$(basename "$0"): stunnel4 is not installed (scripts/setup.sh)" >&2; exit 1; }
    cat >"$work/stunnel-$port.conf" <<CFG
foreground = yes
pid =
debug = warning
[rpc]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$backend
cert = $certs/server.pem
key = $certs/server.key
sslVersionMin = TLSv1.3
ciphersuites = $cipher
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
CFG
    e2e_bg "stunnel-$port.log" "$stunnel" "$work/stunnel-$port.conf"
}

e2e_start_socat() {
    e2e_bg "socat-$1.log" socat "TCP-LISTEN:$1,bind=127.0.0.1,fork,reuseaddr,nodelay" \
        "TCP:127.0.0.1:$2,nodelay"
}

e2e_rpc_ready() {
    peer_rpc_null 127.0.0.1 "$1" 0x20000001 1
}

e2e_tls_ready() {
    "$probe" "127.0.0.1:$1" --implicit --prog 536870913 --vers 1 --ca "$certs/ca.pem" \
        --server-name localhost --timeout 2
}

e2e_wait_ready() {
    local check=$1 p; shift
    for p in "$@"; do
        peer_wait_until 15 "$check" "$p" || {
            echo "$(basename "$0"): the server on port $p did not start; logs:" >&2
            tail -n 5 "$work"/*.log >&2
            exit 1
        }
    done
}

e2e_collect() {
    local results=$1 workloads=$2 setups=$3 w s json cpu p0 e0
    for w in $workloads; do
        [ "$w" = idle ] || e2e_workload_args "$w"
        for s in $setups; do
            if [ "$w" = idle ]; then
                e2e_has idle_pid "$s" || continue
                echo "== idle via $s ($idle_conns connections)" >&2
                json=$(e2e_idle "$s") || echo "idle run had errors: $s" >&2
                [ -n "$json" ] || json='{"idle_connections":0,"errors":-1}'
                echo "{\"workload\":\"$w\",\"setup\":\"$s\",\"result\":$json}" >>"$results"
                continue
            fi
            setup_args=()
            if declare -F e2e_setup_args >/dev/null; then e2e_setup_args "$s"; fi
            echo "== $w via $s (${duration} s)" >&2
            cpu=""
            if e2e_has cpu_pids "$s"; then
                p0=$(e2e_cpu_seconds ${cpu_pids[$s]})
                e0=$(e2e_cpu_seconds "$echo_pid")
            fi
            json=$("$bench" run --target "127.0.0.1:${target[$s]}" "${setup_args[@]}" "${args[@]}" \
                --duration "$duration" --quiet --json 2>>"$work/bench-client.log") ||
                echo "run had errors: $w via $s (see logs/bench-client.log)" >&2
            if e2e_has cpu_pids "$s"; then
                cpu=$(awk -v p0="$p0" -v p1="$(e2e_cpu_seconds ${cpu_pids[$s]})" -v e0="$e0" \
                    -v e1="$(e2e_cpu_seconds "$echo_pid")" \
                    'BEGIN { printf ",\"cpu\":{\"proxy_s\":%.2f,\"echo_s\":%.2f}", p1 - p0, e1 - e0 }')
            fi
            [ -n "$json" ] ||
                json='{"ops_per_sec":0,"bytes_per_sec":0,"p50_us":0,"p99_us":0,"p999_us":0,"errors":-1}'
            # The CPU figures go inside the result object (its last byte is its "}").
            [ -z "$cpu" ] || json="${json%\}}$cpu}"
            echo "{\"workload\":\"$w\",\"setup\":\"$s\",\"result\":$json}" >>"$results"
        done
    done
}

e2e_has() { # ARRAY KEY: the caller declared the associative ARRAY and it has KEY
    declare -p "$1" >/dev/null 2>&1 || return 1
    local -n arr=$1
    [ -n "${arr[$2]+x}" ]
}

e2e_cpu_seconds() {
    # awk, not python: it runs four times a point, on a loaded machine.
    # A process that exits between the glob and the read fails cat: not an error.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" -v hz="$(getconf CLK_TCK)" '
        {
            # After the last ")" (the command name may hold any byte): state ppid
            # ... utime(14) stime(15) cutime(16) cstime(17), counted from pid = 1.
            n = split($0, part, ")"); split(part[n], f, " ")
            pid = $1; ppid[pid] = f[2]; own[pid] = f[12] + f[13]; reaped[pid] = f[14] + f[15]
            kids[f[2]] = kids[f[2]] " " pid
        }
        END {
            ticks = 0; top = 0
            m = split(roots, r, " ")
            # A root counts its reaped children too (socat forks per connection);
            # a live descendant counts by itself.
            for (i = 1; i <= m; i++) if (r[i] in own) { stack[++top] = r[i]; ticks += reaped[r[i]] }
            while (top > 0) {
                p = stack[top--]
                if (p in seen) continue
                seen[p] = 1; ticks += own[p]
                k = split(kids[p], c, " ")
                for (j = 1; j <= k; j++) stack[++top] = c[j]
            }
            printf "%.2f\n", ticks / hz
        }'
}

e2e_idle() {
    local s=$1 tls=()
    case " ${tls_setups:-} " in
        *" $s "*) tls=(--tls --ca "$certs/ca.pem") ;;
    esac
    python3 "$here/idle_rss.py" --port "${target[$s]}" --pid "${idle_pid[$s]}" \
        --connections "$idle_conns" --more "$idle_conns" "${tls[@]}"
}
