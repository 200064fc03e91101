#!/bin/bash
# `promtool check metrics` (the Prometheus project's own linter) accepts what
# rpcgate serves on /metrics, scraped after some plaintext and TLS traffic.
#   promtool_check.sh RPCGATE RPCGATE_BENCH MAKE_CERTS
set -euo pipefail
rpcgate=$1 bench=$2 make_certs=$3
command -v promtool >/dev/null || { echo "SKIP: promtool not installed (Debian package prometheus; scripts/setup.sh installs it)"; exit 77; }
. "$(cd "$(dirname "$0")/../peers" && pwd)/peer_lib.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-prom.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do peer_stop "$p" 5; done
    rm -rf "$work"
}
trap cleanup EXIT
sh "$make_certs" "$work/certs"
echo_port=$(peer_free_port)
"$bench" serve --listen "127.0.0.1:$echo_port" --shards 1 >"$work/serve.log" 2>&1 &
pids+=($!)
peer_wait_until 10 peer_rpc_null 127.0.0.1 "$echo_port" 0x20000001 1
gw_port=$(peer_free_port) admin_port=$(peer_free_port)
"$rpcgate" --listen "127.0.0.1:$gw_port" --backend "536870913=127.0.0.1:$echo_port" --shards 2 \
    --tls opportunistic --cert "$work/certs/server.pem" --key "$work/certs/server.key" \
    --admin "127.0.0.1:$admin_port" --no-reserved-port >"$work/gw.log" 2>&1 &
pids+=($!)
peer_wait_until 10 peer_rpc_null 127.0.0.1 "$gw_port" 0x20000001 1
"$bench" run --target "127.0.0.1:$gw_port" --connections 2 --depth 2 --size 100 --calls 200 >/dev/null
"$bench" run --target "127.0.0.1:$gw_port" --tls starttls --connections 2 --depth 2 --size 100 --calls 200 >/dev/null
python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$admin_port/metrics').read().decode())" >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt"
grep -q '^rpcgate_tls_handshakes_ok_total 2$' "$work/metrics.txt" || { echo "FAIL: expected 2 TLS handshakes in /metrics" >&2; exit 1; }
echo "promtool accepts $(grep -c '^# TYPE' "$work/metrics.txt") metric families"
