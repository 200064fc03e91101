#!/bin/bash
# Builds rpcgate with the DPDK backend (-DRPCGATE_WITH_DPDK=ON, release
# preset) into build/dpdk and runs its tests: the io_backend seam and the
# end-to-end test over DPDK + lwIP on a veth pair (tests/dpdk/e2e.sh, root).
#
#   sudo ./scripts/test-dpdk.sh [--no-install] [-- CTEST_ARGS...]
#
# Installs the dependencies first (scripts/setup.sh --no-build), fetches
# lwIP's source (scripts/fetch-lwip.sh). Exit status: ctest's.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

install=1
while [ $# -gt 0 ]; do
    case $1 in
        --no-install) install=0 ;;
        --) shift; break ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done

cd "$RPCGATE_ROOT"
if [ "$install" = 1 ]; then
    need_root "installing packages"
    "$RPCGATE_ROOT/scripts/setup.sh" --no-build
fi
"$RPCGATE_ROOT/scripts/fetch-lwip.sh"
build=$RPCGATE_ROOT/build/dpdk
say "configuring $build (release, RPCGATE_WITH_DPDK=ON)"
cmake --preset release -B "$build" -DRPCGATE_WITH_DPDK=ON >/dev/null
say "building rpcgate, rpcgate-bench and the DPDK tests"
cmake --build "$build" -j"${JOBS:-2}" --target rpcgate rpcgate-bench dpdk_seam_tests
say "running the DPDK tests"
ctest --test-dir "$build" --output-on-failure -R '^(dpdk|virtual_stream)\.' "$@"
