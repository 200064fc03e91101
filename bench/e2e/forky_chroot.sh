#!/bin/bash
# A Debian forky root file system with HAProxy 3.2 (the current LTS) and
# forky's OpenSSL, for the end-to-end report to run next to Debian 12's
# HAProxy 2.6. Built with mmdebstrap on first use and cached; prints its path.
#
#   bench/e2e/forky_chroot.sh [--cached-only] BUILD_DIR
# --cached-only: build nothing; exit 3 with the reason on stderr when the
# chroot is not there (CI's quick run skips HAProxy 3.2 then).
#
# The chroot lives in BUILD_DIR/forky-chroot (a stamp file says it is
# complete). The mirror is the one this machine's own apt sources use for its
# Debian release (/etc/apt/sources.list and sources.list.d, one-line or
# deb822 format), read at run time; the host's sources are never changed.
# Forky is a testing suite whose Release file may have expired in a frozen
# mirror: the chroot's apt runs with Acquire::Check-Valid-Until "false".
# Needs root (or mmdebstrap's unshare mode) and the network to the mirror.
set -euo pipefail
cached_only=0
if [ "${1:-}" = --cached-only ]; then
    cached_only=1
    shift
fi
build=${1:?usage: forky_chroot.sh [--cached-only] BUILD_DIR}
dir=$build/forky-chroot
stamp=$dir/.rpcgate-complete
if [ -f "$stamp" ]; then
    echo "$dir"
    exit 0
fi
if [ "$cached_only" = 1 ]; then
    echo "no forky chroot in $dir (bench/e2e/forky_chroot.sh BUILD_DIR builds it)" >&2
    exit 3
fi
command -v mmdebstrap >/dev/null ||
    { echo "forky_chroot.sh: mmdebstrap is not installed (scripts/setup.sh)" >&2; exit 1; }

# The mirror: the first source of this machine's own release (not -security
# or -updates), in either format.
host_mirror() {
    local codename f
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || return 1
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        case $f in
            *.sources)
                # deb822: paragraphs of "Key: value" lines, a blank line between.
                awk -v want="$codename" '
                    function flush() {
                        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uri != "")
                            { print uri; found = 1; exit }
                        types = suites = uri = ""
                    }
                    /^[ \t]*$/ { flush(); next }
                    /^[ \t]*#/ { next }
                    tolower($1) == "types:" { $1 = ""; types = $0 }
                    tolower($1) == "suites:" { $1 = ""; suites = $0 }
                    tolower($1) == "uris:" { uri = $2 }
                    END { if (!found) flush() }' "$f"
                ;;
            *)
                # deb [options] URI SUITE COMPONENTS...
                awk -v want="$codename" '$1 == "deb" {
                        i = 2
                        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                        if ($(i + 1) == want) { print $i; exit } }' "$f"
                ;;
        esac
    done | head -n 1
}
mirror=$(host_mirror) || true
[ -n "$mirror" ] || { echo "forky_chroot.sh: no Debian source for this release in /etc/apt" >&2; exit 1; }

echo "forky_chroot.sh: building $dir from $mirror (forky, haproxy, openssl)" >&2
rm -rf "$dir" "$dir.tmp"
mkdir -p "$build"
# --aptopt lands in the chroot's own /etc/apt/apt.conf.d, for this build and
# any later apt run inside it. No daemon starts: mmdebstrap installs with a
# policy that forbids it.
nice -n 10 mmdebstrap --variant=essential --include=haproxy,openssl,ca-certificates \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    forky "$dir.tmp" "$mirror" >&2
mv "$dir.tmp" "$dir"
chroot "$dir" haproxy -v | head -n 1 >"$stamp"
echo "$dir"
