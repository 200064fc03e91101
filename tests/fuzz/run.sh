#!/bin/sh
# Builds the libFuzzer targets with clang in their own build directory and runs
# each for SECONDS (default 60) on a copy of its committed seed corpus.
#   tests/fuzz/run.sh [SECONDS [TARGET...]]
# Environment: BUILD_DIR (default build-fuzz), JOBS (default 2), NICE (default
# 0: the fuzzers' niceness, e.g. 19 for long runs beside other work).
# Prints one line per target: executions, executions a second, corpus size.
set -eu
seconds=${1:-60}
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD_DIR:-$root/build-fuzz}
jobs=${JOBS:-2}
nice_level=${NICE:-0}
targets=${*:-"record_reassembler call_decoder reply_decoder auth_sys auth_tls portmap config connection"}

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
    # The stateful target runs a script against a live gateway per input: a few
    # KiB of script is plenty, and one input may take seconds (its waits have
    # deadlines of up to 3 s each).
    case $t in
        connection) extra="-max_len=4096 -timeout=60" ;;
        *) extra="-max_len=65536" ;;
    esac
    echo "== fuzz_$t for ${seconds}s"
    # shellcheck disable=SC2086
    if ! nice -n "$nice_level" "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" \
            -print_final_stats=1 -artifact_prefix="$work/artifacts/" $extra "$work/corpus" \
            >"$work/log" 2>&1; then
        echo "fuzz_$t FAILED; log and crashing input under $work" >&2
        tail -n 40 "$work/log" >&2
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log")
    echo "fuzz_$t: ${execs:-?} execs in ${seconds} s (${rate:-?}/s), corpus $(ls "$work/corpus" | wc -l) inputs"
done
exit $status
