#!/bin/sh
# `systemd-analyze verify` accepts the systemd unit as configured for
# installation (packaging/systemd/rpcgate.service.in), with its rpcgate path
# pointed at the binary just built, since that is not installed.
#   unit_verify.sh RPCGATE UNIT INSTALLED_RPCGATE
set -eu
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed (package systemd)"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-unit.XXXXXX")
trap 'rm -rf "$work"' EXIT
grep -q "^ExecStartPre=$3 .*--check-config" "$2" || { echo "FAIL: no ExecStartPre= --check-config in $2"; exit 1; }
sed "s|$3|$1|g" "$2" >"$work/rpcgate.service"
# --man=no: the pages it names are not installed yet (tests/packaging checks them).
systemd-analyze verify --man=no "$work/rpcgate.service"
echo "systemd-analyze verify: ok"
