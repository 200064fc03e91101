#!/bin/bash
# `rpcgate --check-config` checks what a start would trip on, with
# certificates made here by openssl:
#   - a key that does not match its certificate: refused (exit 2, the reason);
#   - a certificate that expires in 10 days: warned, still OK; an expired one
#     (the fixture's): warned;
#   - a wildcard upstream server name: refused; a non-loopback --admin: warned;
#   - upstream TLS on a MOUNT route: warned;
#   - a backend host that does not resolve: refused;
#   - an unknown TLS 1.3 suite in --tls-ciphersuites (or the TOML key), even
#     beside a known one: refused, naming it;
#   - it writes nothing: the --audit-log file is not created.
#   check_config.sh RPCGATE MAKE_CERTS
set -euo pipefail
rpcgate=$1 make_certs=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-checkconfig.XXXXXX")
trap 'rm -rf "$work"' EXIT
sh "$make_certs" "$work/certs" >/dev/null 2>&1
c=$work/certs
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 10 \
    -subj /CN=soon.example.org -keyout soon.key -out soon.pem 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key 2>/dev/null

fail() { echo "FAIL: $*" >&2; sed 's/^/  | /' "$work/out" >&2; exit 1; }
# check WANT_RC ARGS...: runs --check-config, output in $work/out.
check() {
    local want=$1 rc=0
    shift
    "$rpcgate" --listen 127.0.0.1:2049 --check-config "$@" >"$work/out" 2>&1 || rc=$?
    [ "$rc" -eq "$want" ] || fail "--check-config $* exited $rc, expected $want"
}
has() { grep -q -- "$1" "$work/out" || fail "no '$1' in the output"; }
tls=(--backend nfs=127.0.0.1:2049 --tls required)

check 2 "${tls[@]}" --cert "$c/server.pem" --key other.key
has "error: TLS: key_file 'other.key': key values mismatch"
has "configuration NOT OK"
echo "mismatched key: refused ($(grep -o 'key values mismatch' "$work/out"))"

check 0 "${tls[@]}" --cert soon.pem --key soon.key
has "warning: --cert soon.pem: certificate '/CN=soon.example.org' expires on"
has "configuration OK"
echo "certificate expiring in 10 days: $(grep -o 'expires on .*' "$work/out")"

check 0 "${tls[@]}" --cert "$c/expired.pem" --key "$c/expired.key"
has "certificate '.*' expired on"
echo "expired certificate: warned"

check 2 --backend "nfs=127.0.0.1:2049,tls=required,name=*.example.org" --upstream-ca "$c/ca.pem"
has "server name '\*.example.org' has a wildcard"
check 2 --backend nfs=127.0.0.1:2049 --upstream-tls required --upstream-ca "$c/ca.pem" \
    --upstream-server-name "*.example.org"
has "has a wildcard"
echo "wildcard upstream server name: refused"

check 0 --backend nfs=127.0.0.1:2049 --admin 0.0.0.0:9049
has "warning: --admin 0.0.0.0:9049 is not a loopback address"
check 0 --backend nfs=127.0.0.1:2049 --admin 127.0.0.1:9049
grep -q "warning:" "$work/out" && fail "a loopback --admin drew a warning"
echo "non-loopback admin: warned"

check 0 --backend nfs=127.0.0.1:2049 --backend mount=127.0.0.1:20048 \
    --upstream-tls required --upstream-ca "$c/ca.pem"
has "warning: backend 'mount=127.0.0.1:20048': upstream TLS required for mount"
grep -q "backend 'nfs=" "$work/out" && fail "the NFS route drew the MOUNT warning"
echo "upstream TLS on MOUNT: warned"

check 2 --backend nfs=host.invalid:2049
has "cannot resolve 'host.invalid'"
echo "unresolvable backend: refused"

check 2 "${tls[@]}" --cert "$c/server.pem" --key "$c/server.key" \
    --tls-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_128_GCM_SHA384
has "unknown TLS 1.3 cipher suite 'TLS_AES_128_GCM_SHA384'"
printf 'tls_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256 : TLS_AES_256_GCM_SHA256"\n' >suites.toml
check 2 "${tls[@]}" --cert "$c/server.pem" --key "$c/server.key" --config suites.toml
has "unknown TLS 1.3 cipher suite 'TLS_AES_256_GCM_SHA256'"
echo "unknown TLS 1.3 suite: refused ($(grep -o "unknown TLS 1.3 cipher suite '[^']*'" "$work/out"))"
check 0 "${tls[@]}" --cert "$c/server.pem" --key "$c/server.key" \
    --tls-ciphersuites "TLS_AES_256_GCM_SHA384:TLS_AES_128_CCM_SHA256"

check 0 "${tls[@]}" --cert "$c/server.pem" --key "$c/server.key" --audit-log "$work/audit.log"
[ ! -e "$work/audit.log" ] || fail "--check-config created the audit log"
check 0 "${tls[@]}" --cert "$c/server.pem" --key "$c/server.key" --audit-log "$work/no/audit.log"
has "warning: --audit-log $work/no/audit.log: the directory $work/no does not exist"
echo "audit log: not created by the check"
