#!/bin/bash
# The run command: builds if needed, then runs the gateway in the foreground
# in front of an embedded echo backend (`rpcgate-bench serve`), with a
# self-signed certificate for RPC-with-TLS. Ctrl-C stops both.
#
#   sudo ./scripts/run-demo.sh [--no-setup] [--preset NAME] [--listen ADDR:PORT]
#                              [--backend PROG=HOST:PORT]...
#
#   --listen    where the gateway listens (default 0.0.0.0:20490)
#   --backend   route PROG to a real server instead of the echo backend, e.g.
#               --backend nfs=HOST:2049 --backend mount=HOST:MOUNTPORT
#   --no-setup  skip scripts/setup.sh (packages and build are up to date)
#
# State (certificate, key, logs) lives in build/demo/.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$RPCGATE_ROOT/tests/peers/peer_lib.sh"

preset=release
setup=1
listen=0.0.0.0:20490
echo_port=${RPCGATE_DEMO_ECHO_PORT:-20491}
echo_prog=536870913 # 0x20000001, the echo program (DESIGN.md)
backends=()
while [ $# -gt 0 ]; do
    case $1 in
        --preset) preset=${2:?--preset needs a name}; shift ;;
        --listen) listen=${2:?--listen needs ADDR:PORT}; shift ;;
        --backend) backends+=(--backend "${2:?--backend needs PROG=HOST:PORT}"); shift ;;
        --no-setup) setup=0 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done

[ "$setup" = 0 ] || "$RPCGATE_ROOT/scripts/setup.sh" --preset "$preset"

state=$RPCGATE_ROOT/build/demo
mkdir -p "$state"
if [ ! -s "$state/cert.pem" ] || [ ! -s "$state/key.pem" ]; then
    say "generating a self-signed certificate (CN=localhost) in build/demo/"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$state/key.pem" -out "$state/cert.pem" 2>/dev/null
    chmod 600 "$state/key.pem"
fi

gateway=$(build_bin "$preset" rpcgate) || gateway=
bench=$(build_bin "$preset" rpcgate-bench) || bench=
if [ -z "$gateway" ] || { [ ${#backends[@]} -eq 0 ] && [ -z "$bench" ]; }; then
    # The gateway is still being written: say what exists rather than fail obscurely.
    if [ -n "$gateway" ]; then
        "$gateway" --version
        say "rpcgate-bench is not built yet: no demo backend to put behind the gateway."
        say "Use --backend PROG=HOST:PORT to route to a real server instead."
        exit 0
    fi
    die "rpcgate is not built yet (nothing under build/$preset/); run scripts/setup.sh"
fi

echo_pid=
gateway_pid=
cleanup() {
    trap - INT TERM EXIT
    [ -z "$gateway_pid" ] || peer_stop "$gateway_pid" 10
    [ -z "$echo_pid" ] || peer_stop "$echo_pid" 5
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ ${#backends[@]} -eq 0 ]; then
    "$bench" serve --listen "127.0.0.1:$echo_port" >"$state/echo.log" 2>&1 </dev/null &
    echo_pid=$!
    peer_wait_until 10 peer_rpc_null 127.0.0.1 "$echo_port" "$echo_prog" 1 ||
        { sed 's/^/  | /' "$state/echo.log" >&2; die "the echo backend did not answer on $echo_port"; }
    say "echo backend (rpcgate-bench serve) on 127.0.0.1:$echo_port"
    backends=(--backend "$echo_prog=127.0.0.1:$echo_port")
fi

say "gateway on $listen (RFC 9289 STARTTLS offered, plaintext allowed); Ctrl-C to stop"
say "try:  $(dirname "$bench")/rpcgate-bench run --target ${listen/0.0.0.0/127.0.0.1} --connections 4 --depth 8 --size 4096 --duration 5"
"$gateway" --listen "$listen" "${backends[@]}" --tls opportunistic \
    --cert "$state/cert.pem" --key "$state/key.pem" &
gateway_pid=$!
rc=0
wait "$gateway_pid" || rc=$?
gateway_pid=
exit "$rc"
