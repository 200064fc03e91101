# Shared by the shell tests of this folder. Source it after `set -euo pipefail`
# with $rpcgate, $bench and $make_certs set.
#
#   gwt_init NAME            a private $work (removed at exit with every pid in
#                            $pids stopped) holding fixture certificates in $work/certs
#   gwt_start_echo           `rpcgate-bench serve` on a free port: sets $echo_port
#   gwt_start_gateway ARGS   rpcgate with opportunistic TLS in front of the echo
#                            server, plus ARGS: sets $gw_port and $gw_pid
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/../peers" && pwd)/peer_lib.sh"

gwt_init() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-$1.XXXXXX")
    pids=()
    trap gwt_cleanup EXIT
    sh "$make_certs" "$work/certs"
}

gwt_cleanup() {
    for p in "${pids[@]}"; do peer_stop "$p" 5; done
    rm -rf "$work"
}

gwt_start_echo() {
    echo_port=$(peer_free_port)
    "$bench" serve --listen "127.0.0.1:$echo_port" --shards 1 >"$work/serve.log" 2>&1 &
    pids+=($!)
    peer_wait_until 10 peer_rpc_null 127.0.0.1 "$echo_port" 0x20000001 1 ||
        { echo "echo server did not start" >&2; exit 1; }
}

gwt_start_gateway() {
    gw_port=$(peer_free_port)
    "$rpcgate" --listen "127.0.0.1:$gw_port" --backend "536870913=127.0.0.1:$echo_port" \
        --shards 2 --tls opportunistic --cert "$work/certs/server.pem" \
        --key "$work/certs/server.key" --no-reserved-port "$@" >"$work/gw.log" 2>&1 &
    gw_pid=$!
    pids+=($gw_pid)
    peer_wait_until 10 peer_rpc_null 127.0.0.1 "$gw_port" 0x20000001 1 ||
        { echo "rpcgate did not start" >&2; cat "$work/gw.log" >&2; exit 1; }
}
