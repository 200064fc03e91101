# Shared by the end-to-end comparison scripts. Source it after setting $build.
#
#   e2e_find_bin NAME      the executable NAME under $build, wherever CMake put it
#   e2e_workload_args W    sets the array `args` to rpcgate-bench run options of
#                          workload W: large (1 MiB x 8 connections x 1) or
#                          small (64 B x 64 connections x 16)
#   e2e_start_haproxy PORT BACKEND_PORT "BIND EXTRA" "GLOBAL LINES"
#                          HAProxy in TCP mode with $shards threads, config and
#                          log in $work; sets ha_pid and appends it to pids

e2e_find_bin() {
    local p
    p=$(find "$build" -type f -name "$1" -perm -u+x 2>/dev/null | head -n 1)
    [ -n "$p" ] || { echo "$(basename "$0"): $1 not found under $build (build first)" >&2; exit 1; }
    echo "$p"
}

e2e_workload_args() {
    case $1 in
        large) args=(--connections 8 --depth 1 --size 1048576) ;;
        small) args=(--connections 64 --depth 16 --size 64) ;;
        *) echo "unknown workload $1 (large, small)" >&2; exit 2 ;;
    esac
}

e2e_start_haproxy() {
    local port=$1 backend=$2 bind_extra=$3 global_extra=$4
    cat >"$work/haproxy.cfg" <<CFG
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
    haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
    ha_pid=$!
    pids+=($ha_pid)
}
