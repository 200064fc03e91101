#!/bin/sh
# A CRL from a fixture CA that revokes one more certificate: for reload tests.
#   revoke.sh CERTDIR NAME OUT.pem    (CERTDIR from make_certs.sh; NAME.pem is revoked)
# The CRL also lists revoked.pem, like the one make_certs.sh wrote.
set -eu
[ $# -eq 3 ] || { echo "usage: $0 CERTDIR NAME OUT" >&2; exit 2; }
certs=$1 name=$2 out=$3
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
: >"$d/index.txt"
echo 2000 >"$d/crlnumber"
cat >"$d/ca.cnf" <<CNF
[ ca ]
default_ca = ca_default
[ ca_default ]
database = $d/index.txt
crlnumber = $d/crlnumber
certificate = $certs/ca.pem
private_key = $certs/ca.key
default_md = sha256
default_crl_days = 30
CNF
for c in revoked "$name"; do
    openssl ca -config "$d/ca.cnf" -batch -revoke "$certs/$c.pem" >"$d/log" 2>&1 ||
        { cat "$d/log" >&2; exit 1; }
done
openssl ca -config "$d/ca.cnf" -batch -gencrl -out "$out" >"$d/log" 2>&1 || { cat "$d/log" >&2; exit 1; }
