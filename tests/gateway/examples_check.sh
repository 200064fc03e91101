#!/bin/bash
# Every example config passes `rpcgate --check-config` as shipped: the file is
# used unchanged, and only the placeholders each example documents in its
# header are supplied, the way an operator would: the TLS files it names
# (/etc/rpcgate/..., build/demo/...) exist here as fixture certificates, given
# on the command line (which wins over the file), or under build/demo/ in the
# working directory for the benchmark rig. Hosts are documentation addresses
# (RFC 5737) that resolve without DNS. The check must write nothing: the
# examples' audit log is not created and the working directory is unchanged.
#   examples_check.sh RPCGATE MAKE_CERTS EXAMPLES_DIR
set -euo pipefail
rpcgate=$1 make_certs=$2 dir=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-examples.XXXXXX")
trap 'rm -rf "$work"' EXIT
sh "$make_certs" "$work/certs" >/dev/null 2>&1
mkdir -p "$work/cwd/build/demo"
cp "$work/certs/server.pem" "$work/cwd/build/demo/cert.pem"
cp "$work/certs/server.key" "$work/cwd/build/demo/key.pem"
c=$work/certs
n=0
for f in "$dir"/*.toml; do
    args=()
    # Each /etc/rpcgate/ file the example names, by the key that names it.
    while read -r key; do
        case $key in
            cert) args+=(--cert "$c/server.pem") ;;
            key) args+=(--key "$c/server.key") ;;
            ca) args+=(--ca "$c/ca.pem") ;;
            crl) args+=(--crl "$c/crl.pem") ;;
            upstream_ca) args+=(--upstream-ca "$c/ca.pem") ;;
            *) echo "FAIL: $f: $key names a file under /etc/rpcgate/ this test does not supply" >&2
               exit 1 ;;
        esac
    done < <(sed -n 's|^\([a-z_]*\) *= *"/etc/rpcgate/.*|\1|p' "$f")
    before=$(find "$work/cwd" | sort)
    if ! (cd "$work/cwd" && "$rpcgate" --config "$f" "${args[@]}" --check-config) \
        >"$work/out" 2>&1; then
        echo "FAIL: $(basename "$f") does not pass --check-config:" >&2
        sed 's/^/  | /' "$work/out" >&2
        exit 1
    fi
    grep -q "configuration OK" "$work/out" || { cat "$work/out" >&2; exit 1; }
    [ "$before" = "$(find "$work/cwd" | sort)" ] || { echo "FAIL: the check wrote files" >&2; exit 1; }
    # Only warnings about where the audit log goes may remain (no such
    # directory on a test machine); anything else is a flaw of the example.
    if grep "warning:" "$work/out" | grep -v -- "--audit-log" >&2; then
        echo "FAIL: $(basename "$f") draws the warnings above" >&2
        exit 1
    fi
    echo "$(basename "$f"): $(grep "configuration OK" "$work/out")"
    n=$((n + 1))
done
[ "$n" -ge 3 ] || { echo "FAIL: only $n examples found in $dir" >&2; exit 1; }
