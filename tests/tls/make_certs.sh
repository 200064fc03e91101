#!/bin/sh
# Certificate fixtures for the TLS tests: make_certs.sh OUTDIR
#
# Writes into OUTDIR (created if missing), all keys EC P-256, all PEM:
#   ca.pem ca.key                 the trusted CA
#   server.pem server.key         CN=localhost, SAN DNS:localhost, IP:127.0.0.1
#   client.pem client.key         CN=client1, SAN email:client1@example.org
#   expired.pem expired.key       CN=expired, valid 2020-01-01 .. 2020-12-31
#   selfsigned.pem selfsigned.key CN=selfsigned, issued by itself
#   revoked.pem revoked.key       CN=revoked, issued by the CA, then revoked
#   crl.pem                       the CA's CRL listing revoked.pem
#   ca2.pem ca2.key               a second CA that nobody trusts
#   untrusted.pem untrusted.key   CN=untrusted, issued by ca2
#
# Idempotent: a complete OUTDIR is left alone (the `.complete` stamp is written
# last). Quiet: prints nothing unless something fails, then exits non-zero.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$1
[ -f "$out/.complete" ] && exit 0
mkdir -p "$out"

work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$work/log

# Runs openssl with its chatter in the log; prints the log if it fails.
ossl() {
    if ! openssl "$@" >>"$log" 2>&1; then
        echo "make_certs.sh: openssl $1 failed:" >&2
        cat "$log" >&2
        exit 1
    fi
}

key() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$1.key"; }

# A minimal `openssl ca` set-up for one CA: its database, serial and policy.
ca_config() {  # name
    d=$work/$1.db
    mkdir -p "$d/new"
    : >"$d/index.txt"
    echo 1000 >"$d/serial"
    echo 1000 >"$d/crlnumber"
    cat >"$work/$1.cnf" <<EOF
[ ca ]
default_ca = this_ca
[ this_ca ]
dir = $d
database = \$dir/index.txt
new_certs_dir = \$dir/new
serial = \$dir/serial
crlnumber = \$dir/crlnumber
certificate = $work/$1.pem
private_key = $work/$1.key
default_md = sha256
default_days = 3650
default_crl_days = 3650
policy = any
unique_subject = no
copy_extensions = none
[ any ]
organizationName = optional
commonName = supplied
[ server_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[ client_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = email:\${ENV::SAN_EMAIL}
[ crl_ext ]
authorityKeyIdentifier = keyid:always
EOF
}

make_ca() {  # name cn
    key "$1"
    ossl req -new -x509 -key "$work/$1.key" -out "$work/$1.pem" -days 3650 -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    ca_config "$1"
}

# issue CA NAME SUBJECT EXT EMAIL [extra `openssl ca` options]
issue() {
    ca=$1 name=$2 subj=$3 ext=$4 email=$5
    shift 5
    key "$name"
    ossl req -new -key "$work/$name.key" -out "$work/$name.csr" -subj "$subj"
    SAN_EMAIL=$email ossl ca -batch -notext -config "$work/$ca.cnf" \
        -extensions "$ext" -in "$work/$name.csr" -out "$work/$name.pem" "$@"
}

export SAN_EMAIL=unused@example.org
make_ca ca "rpcgate test CA"
make_ca ca2 "rpcgate untrusted CA"
issue ca server "/CN=localhost" server_ext -
issue ca client "/O=rpcgate test/CN=client1" client_ext client1@example.org
issue ca expired "/CN=expired" client_ext expired@example.org \
    -startdate 20200101000000Z -enddate 20201231000000Z
issue ca revoked "/CN=revoked" client_ext revoked@example.org
issue ca2 untrusted "/CN=untrusted" client_ext untrusted@example.org
ossl ca -config "$work/ca.cnf" -revoke "$work/revoked.pem" -crl_reason keyCompromise
ossl ca -config "$work/ca.cnf" -gencrl -crlexts crl_ext -out "$work/crl.pem"

key selfsigned
ossl req -new -x509 -key "$work/selfsigned.key" -out "$work/selfsigned.pem" -days 3650 \
    -subj "/CN=selfsigned" -addext "basicConstraints=critical,CA:FALSE" \
    -addext "extendedKeyUsage=clientAuth"

for n in ca ca2 server client expired selfsigned revoked untrusted; do
    cp "$work/$n.pem" "$work/$n.key" "$out/"
done
cp "$work/crl.pem" "$out/"
chmod 600 "$out"/*.key
: >"$out/.complete"
