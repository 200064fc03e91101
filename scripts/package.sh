#!/bin/bash
# Builds the Debian package of rpcgate from this tree and checks it with lintian.
#
#   ./scripts/package.sh [--out DIR] [--no-lintian]
#
# The tree's files (tracked and new, as git sees them; never build/) are
# copied to DIR/src/rpcgate-VERSION, where dpkg-buildpackage builds the binary
# package (debian/ with debhelper: docs/packaging.md says why); so the tree
# gets no obj-* folder and nothing is written beside it. The .deb, .changes and
# .buildinfo end up in DIR (default build/package), and lintian's verdict in
# DIR/lintian.txt. ccache is used when installed. Needs the packages of
# debian/control's Build-Depends, dpkg-dev, debhelper and lintian
# (scripts/setup.sh installs them).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

out=$RPCGATE_ROOT/build/package
lintian=1
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=${2:?--out needs a directory}; shift ;;
        --no-lintian) lintian=0 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done
command -v dpkg-buildpackage >/dev/null || die "dpkg-buildpackage missing (package dpkg-dev)"
command -v dh >/dev/null || die "dh missing (package debhelper)"

version=$(dpkg-parsechangelog -l "$RPCGATE_ROOT/debian/changelog" -S Version)
src=$out/src/rpcgate-$version
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$out/src/rpcgate-$version
# A fresh copy of the sources; the build folder inside it is kept between runs
# (its ccache hits need the same paths), everything else is laid anew.
mkdir -p "$src"
find "$src" -mindepth 1 -maxdepth 1 ! -name 'obj-*' -exec rm -rf {} +
(cd "$RPCGATE_ROOT" && git ls-files -z --cached --others --exclude-standard |
    xargs -0 -I{} sh -c '[ -e "$1" ] && printf "%s\0" "$1" || true' _ {} |
    tar --null -T - -cf -) | tar -xf - -C "$src"

if command -v ccache >/dev/null; then
    export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
    export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$out}
    # debhelper (compat 13) points HOME into debian/ during the build, which
    # `dh clean` removes: name the cache by its real place, or every build
    # starts from an empty one.
    CCACHE_DIR=${CCACHE_DIR:-$(ccache --get-config cache_dir)}
    export CCACHE_DIR
fi
rm -f "$out"/src/rpcgate_*
say "building rpcgate $version in $src"
t0=$SECONDS
(cd "$src" && dpkg-buildpackage -b -us -uc -j"${RPCGATE_JOBS:-2}" >"$out/build.log" 2>&1) ||
    { tail -n 40 "$out/build.log" >&2; die "dpkg-buildpackage failed (log: $out/build.log)"; }
rm -f "$out"/rpcgate_* "$out"/rpcgate-dbgsym_*
mv "$out"/src/rpcgate_* "$out"/src/rpcgate-dbgsym_* "$out"/ 2>/dev/null || true
deb=$(ls "$out"/rpcgate_"$version"_*.deb)
say "built $(basename "$deb") in $((SECONDS - t0)) s"

if [ "$lintian" = 1 ]; then
    command -v lintian >/dev/null || die "lintian missing (package lintian)"
    changes=$(ls "$out"/rpcgate_"$version"_*.changes)
    # --fail-on error: an error tag fails the build; warnings and infos are
    # listed (each is explained in docs/packaging.md).
    if lintian --info --display-info --pedantic --fail-on error "$changes" >"$out/lintian.txt" 2>&1; then
        say "lintian: $(grep -c '^[EWIP]:' "$out/lintian.txt" || true) tag(s), none an error ($out/lintian.txt)"
    else
        cat "$out/lintian.txt" >&2
        die "lintian found errors"
    fi
    cat "$out/lintian.txt" >&2
fi
echo "$deb"
