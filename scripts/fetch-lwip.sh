#!/bin/bash
# Fetches lwIP's source through apt's source mechanism (Debian's `lwip` source
# package) and unpacks it into build/_deps/lwip (ignored by git), for the DPDK
# backend (-DRPCGATE_WITH_DPDK=ON). Debian's binary lwIP is a Hurd build with
# fixed options, so rpcgate compiles the sources with its own dpdk/lwipopts.h.
#
#   ./scripts/fetch-lwip.sh [DEST]        # default DEST: build/_deps/lwip
#
# The machine's apt sources usually carry only binary entries (Types: deb).
# This script derives deb-src entries from them at run time, in a private apt
# state (its own sources file and package lists in a temporary folder), so the
# machine's apt configuration is not touched and no host name lives in the
# repository. Idempotent: an existing DEST/src/core/tcp.c means done.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

dest=${1:-$RPCGATE_ROOT/build/_deps/lwip}
if [ -f "$dest/src/core/tcp.c" ]; then
    say "lwIP source already in $dest"
    exit 0
fi
command -v apt-get >/dev/null || die "apt-get not found: fetch lwIP's source by hand into $dest"
command -v dpkg-source >/dev/null || die "dpkg-source not found: install dpkg-dev"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/src"

# Every binary entry of the machine's sources, as a source entry. Both the
# deb822 (.sources) and the one-line (.list) formats are read.
srcfile=$work/sources.list
: >"$srcfile"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n 's/^[[:space:]]*deb[[:space:]]\+/deb-src /p' "$f" >>"$srcfile"
done
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: one stanza per blank-line-separated block; keep those with Types: deb.
    awk '
        function flush() {
            if (types ~ /(^|[[:space:]])deb($|[[:space:]])/ && uris != "" && suites != "")
                { n = split(suites, s, /[[:space:]]+/)
                  for (i = 1; i <= n; i++) if (s[i] != "")
                      print "deb-src " signed uris " " s[i] " " comps }
            types = uris = suites = comps = signed = ""
        }
        /^[[:space:]]*$/ { flush(); next }
        /^#/ { next }
        /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
        /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
        /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
        /^Components:/ { sub(/^Components:[[:space:]]*/, ""); comps = $0 }
        /^Signed-By:/ { sub(/^Signed-By:[[:space:]]*/, ""); signed = "[signed-by=" $0 "] " }
        END { flush() }
    ' "$f" >>"$srcfile"
done
[ -s "$srcfile" ] || die "no apt sources found to derive a deb-src entry from"

apt_opts=(-o "Dir::Etc::SourceList=$srcfile" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=root")
say "reading source package lists (private apt state)"
if ! out=$(apt-get "${apt_opts[@]}" update 2>&1); then
    echo "$out" | tail -n 20 >&2
    die "apt-get update for source lists failed"
fi
say "apt-get source lwip"
if ! out=$(cd "$work/src" && apt-get "${apt_opts[@]}" source lwip 2>&1); then
    echo "$out" | tail -n 20 >&2
    die "apt-get source lwip failed"
fi
unpacked=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'lwip-*' -print -quit)
[ -n "$unpacked" ] && [ -f "$unpacked/src/core/tcp.c" ] || die "no lwIP tree in what apt fetched"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"
cp -a "$unpacked" "$dest.tmp"
mv "$dest.tmp" "$dest"
say "lwIP $(basename "$unpacked" | sed 's/^lwip-//') unpacked into $dest"
