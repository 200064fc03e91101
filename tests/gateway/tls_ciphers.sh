#!/bin/bash
# The TLS knobs an evaluator needs, checked by what is negotiated:
#   - rpcgate's default TLS 1.3 suites prefer AES-128-GCM where the CPU has
#     AES instructions (ChaCha20-Poly1305 where not), against a client whose
#     own first choice is AES-256-GCM (OpenSSL's default order): the server's
#     order wins;
#   - rpcgate --tls-ciphersuites TLS_CHACHA20_POLY1305_SHA256: that suite, as
#     rpcgate-bench reports it and as `openssl s_client` sees it;
#   - rpcgate-bench serve and run with --tls-max-version 1.2, --ciphers and
#     --groups: TLS 1.2 with that AEAD (the bench's report), and the server's
#     only group is the key exchange `openssl s_client` sees; --tls-max-version
#     1.2 pins 1.2: s_client, which offers 1.3 too, gets 1.2;
#   - rpcgate-bench handshake --baseline with --tls-max-version 1.2, --ciphers
#     and --groups: its in-memory server takes them too (TLS 1.2 with that
#     AEAD; before, the server kept TLS 1.3 and every handshake failed), and
#     with --ciphersuites a server that has only that suite.
#   tls_ciphers.sh RPCGATE BENCH MAKE_CERTS
set -euo pipefail
rpcgate=$1 bench=$2 make_certs=$3
. "$(cd "$(dirname "$0")" && pwd)/script_lib.sh"
gwt_init tls-ciphers
c=$work/certs
fail() { echo "FAIL: $*" >&2; exit 1; }
gwt_start_echo

# field FILE NAME: a string field of the bench's --json report.
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# bench_run PORT OUT ARGS...: one implicit-TLS connection for a second, --json into OUT.
bench_run() {
    local port=$1 out=$2
    shift 2
    "$bench" run --target "127.0.0.1:$port" --tls implicit --ca "$c/ca.pem" --server-name localhost \
        --connections 1 --depth 1 --size 64 --duration 1 --json --quiet "$@" >"$out" 2>"$out.err" ||
        fail "rpcgate-bench run $*: $(cat "$out.err" "$out")"
}
# s_client PORT ARGS...: the handshake as OpenSSL's own client sees it.
s_client() {
    local port=$1
    shift
    openssl s_client -connect "127.0.0.1:$port" -CAfile "$c/ca.pem" -brief "$@" </dev/null 2>&1 |
        tr -s ' '
}

if grep -qw aes /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; then
    want_default=TLS_AES_128_GCM_SHA256
else
    want_default=TLS_CHACHA20_POLY1305_SHA256
fi
implicit=$(peer_free_port)
gwt_start_gateway --implicit-tls "127.0.0.1:$implicit"
grep -q "TLS 1.3 cipher suites, in this order: $want_default" "$work/gw.log" ||
    fail "rpcgate's start line does not put $want_default first: $(grep 'cipher suites' "$work/gw.log")"
bench_run "$implicit" "$work/default.json" \
    --ciphersuites TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256
got=$(field "$work/default.json" tls_cipher)
echo "rpcgate default suites, client prefers AES-256-GCM: negotiated $got (want $want_default)"
[ "$got" = "$want_default" ] || fail "negotiated $got, expected $want_default"
peer_stop "$gw_pid" 5

implicit=$(peer_free_port)
gwt_start_gateway --implicit-tls "127.0.0.1:$implicit" --tls-ciphersuites TLS_CHACHA20_POLY1305_SHA256
bench_run "$implicit" "$work/chacha.json"
got=$(field "$work/chacha.json" tls_cipher)
seen=$(s_client "$implicit" -ciphersuites TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256)
echo "rpcgate --tls-ciphersuites TLS_CHACHA20_POLY1305_SHA256: bench $got; s_client: $(grep -m1 'Ciphersuite' <<<"$seen")"
[ "$got" = TLS_CHACHA20_POLY1305_SHA256 ] || fail "the bench negotiated $got"
grep -q "Ciphersuite: TLS_CHACHA20_POLY1305_SHA256" <<<"$seen" || fail "s_client saw: $seen"
if s_client "$implicit" -ciphersuites TLS_AES_128_GCM_SHA256 | grep -q "Ciphersuite:"; then
    fail "a client without ChaCha20 completed a handshake"
fi

# The bench on both ends, TLS 1.2 with a chosen AEAD and group.
peer_start_ready srv "$work/srv.log" "$bench" serve --listen 127.0.0.1:0 --shards 1 \
    --tls implicit --cert "$c/server.pem" --key "$c/server.key" --tls-max-version 1.2 \
    --ciphers ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256 --groups P-384 ||
    fail "rpcgate-bench serve"
pids+=("$srv_PID")
# In TLS 1.2 the client's groups also bound the curve of an ECDSA certificate
# (the fixture's is P-256): offer both, the server allows only P-384.
bench_run "$srv_PORT" "$work/tls12.json" --tls-max-version 1.2 \
    --ciphers ECDHE-ECDSA-AES128-GCM-SHA256 --groups P-384:P-256
version=$(field "$work/tls12.json" tls_version)
got=$(field "$work/tls12.json" tls_cipher)
seen=$(s_client "$srv_PORT")
echo "rpcgate-bench TLS 1.2, --ciphers ECDHE-ECDSA-AES128-GCM-SHA256: $version $got; s_client: $(grep -m1 -E 'Server Temp Key|Peer Temp Key' <<<"$seen")"
[ "$version" = TLSv1.2 ] || fail "the bench negotiated $version"
[ "$got" = ECDHE-ECDSA-AES128-GCM-SHA256 ] || fail "the bench negotiated $got"
grep -qE "(Server|Peer) Temp Key: ECDH, (P-384|secp384r1)" <<<"$seen" || fail "s_client saw: $seen"
grep -q "Protocol version: TLSv1.2" <<<"$seen" || fail "serve --tls-max-version 1.2 is not 1.2 only: $seen"

# handshake --baseline: both in-memory ends take the options.
baseline() {
    local out=$1
    shift
    "$bench" handshake --baseline --cert "$c/server.pem" --key "$c/server.key" --duration 0.2 \
        --json "$@" >"$out" 2>"$out.err" || fail "handshake --baseline $*: $(cat "$out.err" "$out")"
}
baseline "$work/base12.json" --tls-max-version 1.2 --ciphers ECDHE-ECDSA-AES256-GCM-SHA384 \
    --groups P-384:P-256
version=$(field "$work/base12.json" version)
got=$(field "$work/base12.json" cipher)
echo "rpcgate-bench handshake --baseline --tls-max-version 1.2 --ciphers ECDHE-ECDSA-AES256-GCM-SHA384: $version $got, $(field "$work/base12.json" handshakes) handshakes"
[ "$version" = TLSv1.2 ] || fail "the baseline negotiated $version"
[ "$got" = ECDHE-ECDSA-AES256-GCM-SHA384 ] || fail "the baseline negotiated $got"
baseline "$work/base13.json" --ciphersuites TLS_CHACHA20_POLY1305_SHA256 --groups X25519
got=$(field "$work/base13.json" cipher)
echo "rpcgate-bench handshake --baseline --ciphersuites TLS_CHACHA20_POLY1305_SHA256: $(field "$work/base13.json" version) $got"
[ "$got" = TLS_CHACHA20_POLY1305_SHA256 ] || fail "the baseline negotiated $got"
