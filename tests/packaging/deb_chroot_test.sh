#!/bin/bash
# The Debian package installs into a fresh Debian 12 and works there as
# shipped.
#
#   deb_chroot_test.sh DEB_DIR CACHE_DIR
#
# A Debian 12 root file system is made by mmdebstrap from this machine's own
# apt sources, with the packages the .deb depends on (plus man-db and
# logrotate) already in it, and cached as CACHE_DIR/bookworm-HASH.tar (HASH
# of that package list: a new dependency makes a new tarball). Each run
# unpacks the tarball into a new folder and, chrooted there:
#   dpkg -i the .deb (no network: every dependency is in the tarball);
#   rpcgate --version names the package's version;
#   the system user rpcgate exists; the key postinst made is root:rpcgate 0640;
#     /var/log/rpcgate belongs to rpcgate;
#   rpcgate --check-config of the installed /etc/rpcgate/rpcgate.toml passes,
#     run as the user rpcgate (as the unit's ExecStartPre= does);
#   man rpcgate, rpcgate.toml, rpcgate-probe, rpcgate-bench render without
#     warnings; logrotate accepts /etc/logrotate.d/rpcgate;
#   dpkg --purge removes it and what postinst made.
# Exit 0 pass, 1 fail, 77 skip (no mmdebstrap, not root, or no .deb: build one
# with scripts/package.sh).
set -euo pipefail
# RPCGATE_CHROOT_CACHE, when set, wins over CACHE_DIR: a place that outlives
# the clone (CI runs in a fresh one each time), so that only the first run on a
# machine pays for mmdebstrap.
deb_dir=$1 cache=${RPCGATE_CHROOT_CACHE:-$2}
fail() { echo "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "SKIP: chroot needs root"; exit 77; }
command -v mmdebstrap >/dev/null || { echo "SKIP: mmdebstrap not installed (scripts/setup.sh installs it)"; exit 77; }
deb=$(ls "$deb_dir"/rpcgate_*.deb 2>/dev/null | head -n 1 || true)
[ -n "$deb" ] || { echo "SKIP: no rpcgate_*.deb in $deb_dir (scripts/package.sh builds it)"; exit 77; }
version=$(dpkg-deb -f "$deb" Version)

# The dependencies by name (first of each alternative, versions dropped).
deps=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' | grep . | sort -u)
include=$(printf '%s\n' $deps man-db logrotate | sort -u | paste -sd, -)
mkdir -p "$cache"
tarball=$cache/bookworm-$(echo "$include" | sha256sum | cut -c1-16).tar
t0=$SECONDS
if [ ! -s "$tarball" ]; then
    # The machine's own apt sources (enabled ones), never a mirror of our choosing.
    sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -s "$f" ] && sources+=("$f")
    done
    [ ${#sources[@]} -gt 0 ] || fail "no apt sources on this machine to make the chroot from"
    echo "making the Debian 12 base tarball (cached as $tarball)"
    mmdebstrap --quiet --variant=apt --include="$include" bookworm "${tarball%.tar}.new.tar" \
        "${sources[@]}" ||
        fail "mmdebstrap failed"
    mv "${tarball%.tar}.new.tar" "$tarball"
    echo "base tarball made in $((SECONDS - t0)) s"
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/rpcgate-chroot.XXXXXX")
trap 'rm -rf "$root"' EXIT
tar -xf "$tarball" -C "$root"
cp "$deb" "$root/tmp/rpcgate.deb"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }

in_root dpkg -i /tmp/rpcgate.deb >"$root/tmp/dpkg.log" 2>&1 || { cat "$root/tmp/dpkg.log"; fail "dpkg -i"; }
echo "dpkg -i: ok"

v=$(in_root rpcgate --version) || fail "rpcgate --version exited non-zero"
[ "$v" = "rpcgate $version" ] || fail "rpcgate --version says '$v', the package is $version"
echo "rpcgate --version: $v"

in_root getent passwd rpcgate >/dev/null || fail "no user rpcgate"
key_stat=$(in_root stat -c '%U:%G %a' /etc/rpcgate/server.key) || fail "postinst made no key"
[ "$key_stat" = "root:rpcgate 640" ] || fail "/etc/rpcgate/server.key is $key_stat, not root:rpcgate 640"
log_owner=$(in_root stat -c %U /var/log/rpcgate)
[ "$log_owner" = rpcgate ] || fail "/var/log/rpcgate belongs to $log_owner"
echo "user, key and log directory: ok"

out=$(in_root setpriv --reuid=rpcgate --regid=rpcgate --init-groups \
    rpcgate --config /etc/rpcgate/rpcgate.toml --check-config 2>&1) ||
    fail "rpcgate --check-config of the installed config, as rpcgate: $out"
echo "$out"

for page in rpcgate rpcgate.toml rpcgate-probe rpcgate-bench; do
    text=$(in_root env MANWIDTH=80 man --warnings "$page" 2>"$root/tmp/man.err") ||
        fail "man $page exited non-zero: $(cat "$root/tmp/man.err")"
    [ ! -s "$root/tmp/man.err" ] || fail "man $page warns: $(cat "$root/tmp/man.err")"
    [ "$(echo "$text" | wc -l)" -gt 20 ] || fail "man $page rendered $(echo "$text" | wc -l) lines"
done
echo "man pages: ok"
in_root logrotate --debug /etc/logrotate.d/rpcgate >"$root/tmp/logrotate.log" 2>&1 ||
    { cat "$root/tmp/logrotate.log"; fail "logrotate rejects /etc/logrotate.d/rpcgate"; }
! grep -qi "error" "$root/tmp/logrotate.log" || { cat "$root/tmp/logrotate.log"; fail "logrotate: error"; }
echo "logrotate: ok"

in_root dpkg --purge rpcgate >"$root/tmp/purge.log" 2>&1 || { cat "$root/tmp/purge.log"; fail "dpkg --purge"; }
for f in /etc/rpcgate /var/log/rpcgate /usr/sbin/rpcgate; do
    [ ! -e "$root$f" ] || fail "$f is left after dpkg --purge"
done
echo "dpkg --purge: ok"
echo "deb in a fresh Debian 12: ok ($((SECONDS - t0)) s)"
