#!/bin/sh
# Every example config passes `rpcgate --check-config` once its host names and
# file paths point at things that exist here (fixture certificates, loopback).
#   examples_check.sh RPCGATE MAKE_CERTS EXAMPLES_DIR
set -eu
rpcgate=$1 make_certs=$2 dir=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-examples.XXXXXX")
trap 'rm -rf "$work"' EXIT
sh "$make_certs" "$work/certs"
: >"$work/users.map"
mkdir -p "$work/build/demo"
cp "$work/certs/server.pem" "$work/build/demo/cert.pem"
cp "$work/certs/server.key" "$work/build/demo/key.pem"
for f in "$dir"/*.toml; do
    sed -e "s|/etc/rpcgate/server.pem|$work/certs/server.pem|" \
        -e "s|/etc/rpcgate/server.key|$work/certs/server.key|" \
        -e "s|/etc/rpcgate/clients-ca.pem|$work/certs/ca.pem|" \
        -e "s|/etc/rpcgate/server-ca.pem|$work/certs/ca.pem|" \
        -e "s|/etc/rpcgate/clients.crl|$work/certs/crl.pem|" \
        -e "s|/var/log/rpcgate/|$work/|" \
        -e "s|\"build/demo/|\"$work/build/demo/|" \
        -e "s|nfs.example.org|127.0.0.1|g; s|10.0.0.5|127.0.0.1|g" "$f" >"$work/$(basename "$f")"
    "$rpcgate" --config "$work/$(basename "$f")" --check-config
done
