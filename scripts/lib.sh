# Sourced by the scripts in this folder: paths and messages, nothing else.

RPCGATE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_rpcgate_script=$(basename "$0")

say() { echo "[$_rpcgate_script] $*" >&2; }
die() { echo "[$_rpcgate_script] error: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root: run it with sudo"
}

# build_bin PRESET NAME: path of an executable target NAME built by PRESET,
# wherever its CMakeLists put it under build/PRESET; fails when there is none.
build_bin() {
    local dir=$RPCGATE_ROOT/build/$1 found
    [ -d "$dir" ] || return 1
    found=$(find "$dir" -path "$dir/CMakeFiles" -prune -o -type f -name "$2" -perm -u+x \
        -print -quit 2>/dev/null)
    [ -n "$found" ] && echo "$found"
}
