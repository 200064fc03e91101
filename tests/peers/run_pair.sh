#!/bin/bash
# Runs a peer server and a peer client against each other on loopback.
#
#   run_pair.sh SERVER [SERVER ARGS...] -- CLIENT [CLIENT ARGS...]
#
# The server gets `--port 0` and must print `READY port=N`; the client gets
# `--host 127.0.0.1 --port N`. Exits with the client's status; the server is
# always stopped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/peer_lib.sh"

server=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do server+=("$1"); shift; done
[ $# -gt 1 ] && [ ${#server[@]} -gt 0 ] || { echo "usage: $0 SERVER [ARGS...] -- CLIENT [ARGS...]" >&2; exit 2; }
shift
client=("$@")

work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-pair.XXXXXX")
SRV_PID=
cleanup() {
    [ -z "$SRV_PID" ] || peer_stop "$SRV_PID"
    rm -rf "$work"
}
trap cleanup EXIT

peer_start_ready SRV "$work/server.log" "${server[@]}" --port 0
echo "server ready on port $SRV_PORT (pid $SRV_PID)"

status=0
"${client[@]}" --host 127.0.0.1 --port "$SRV_PORT" || status=$?
if ! peer_alive "$SRV_PID"; then
    echo "server died during the run" >&2
    [ "$status" -ne 0 ] || status=1
fi
if [ "$status" -ne 0 ] && [ -s "$work/server.log" ]; then
    echo "server log:" >&2
    sed 's/^/  | /' "$work/server.log" >&2
fi
exit "$status"
