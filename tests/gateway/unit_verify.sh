#!/bin/sh
# `systemd-analyze verify` accepts packaging/systemd/rpcgate.service (with
# ExecStart pointed at the binary just built, since it is not installed).
#   unit_verify.sh RPCGATE UNIT
set -eu
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed (package systemd)"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-unit.XXXXXX")
trap 'rm -rf "$work"' EXIT
sed "s|/usr/local/bin/rpcgate|$1|" "$2" >"$work/rpcgate.service"
systemd-analyze verify "$work/rpcgate.service"
echo "systemd-analyze verify: ok"
