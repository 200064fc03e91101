#!/bin/sh
# Builds the libFuzzer targets with clang in their own build directory and runs
# each for SECONDS (default 60) on a copy of its committed seed corpus.
#   tests/fuzz/run.sh [SECONDS]
# Environment: BUILD_DIR (default build-fuzz), JOBS (default 2).
set -eu
seconds=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD_DIR:-$root/build-fuzz}
jobs=${JOBS:-2}
targets="record_reassembler call_decoder reply_decoder auth_sys"

command -v clang++ >/dev/null 2>&1 || { echo "run.sh: clang++ not found" >&2; exit 1; }
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DRPCGATE_BUILD_FUZZ=ON -DRPCGATE_BUILD_BENCH=OFF >/dev/null
for t in $targets; do
    cmake --build "$build" -j "$jobs" --target "fuzz_$t"
done

status=0
for t in $targets; do
    work="$build/fuzz-work/$t"
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts"
    cp "$here/corpus/$t/"* "$work/corpus/" 2>/dev/null || true
    echo "== fuzz_$t for ${seconds}s"
    if ! "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -print_final_stats=1 \
            -artifact_prefix="$work/artifacts/" -max_len=65536 "$work/corpus" \
            >"$work/log" 2>&1; then
        echo "fuzz_$t FAILED; log and crashing input under $work" >&2
        tail -n 40 "$work/log" >&2
        status=1
    fi
    grep -E '^stat::number_of_executed_units|^Done' "$work/log" || true
done
exit $status
