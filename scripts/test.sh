#!/bin/bash
# The test command: installs what is missing, builds, starts the shared peers
# and runs every test. Exits with ctest's status.
#
#   sudo ./scripts/test.sh [--preset NAME] [--asan] [--no-setup] [--fuzz SECONDS] [-- CTEST ARGS...]
#
#   --preset NAME   configure/build/test preset (default: release)
#   --asan          afterwards, the same again with the `asan` preset
#   --no-setup      skip scripts/setup.sh (packages and build are up to date)
#   --fuzz SECONDS  afterwards, each libFuzzer target for SECONDS (default 20; 0 = skip)
#   -- ARGS         passed to ctest, e.g. `-- -R peers -L nfs`
#
# rpcbind is the one peer shared by all tests: nfs-ganesha will not start
# without it. It is started here when none runs and stopped again at the end;
# everything else (ganesha, echo servers) each test starts on free ports.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

presets=(release)
setup=1
fuzz_seconds=20
ctest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --preset) presets[0]=${2:?--preset needs a name}; shift ;;
        --asan) presets+=(asan) ;;
        --no-setup) setup=0 ;;
        --fuzz) fuzz_seconds=${2:?--fuzz needs SECONDS}; shift ;;
        --) shift; ctest_args=("$@"); break ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done
need_root "running the tests (ganesha, tmpfs, rpcbind)"

rpcbind_pid=
stop_rpcbind() {
    if [ -n "$rpcbind_pid" ]; then
        kill "$rpcbind_pid" 2>/dev/null || true
        wait "$rpcbind_pid" 2>/dev/null || true
    fi
}
trap stop_rpcbind EXIT

start_rpcbind() {
    rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && { say "rpcbind already running"; return 0; }
    # -f: stay in the foreground, so that this script owns it and can stop it.
    # -w: warm start, keeps registrations of a previous instance (harmless).
    rpcbind -f -w </dev/null >/dev/null 2>&1 &
    rpcbind_pid=$!
    local end=$((SECONDS + 10))
    until rpcinfo -p 127.0.0.1 >/dev/null 2>&1; do
        kill -0 "$rpcbind_pid" 2>/dev/null || die "rpcbind exited at start"
        [ "$SECONDS" -lt "$end" ] || die "rpcbind does not answer after 10 s"
        sleep 0.05
    done
    say "started rpcbind (pid $rpcbind_pid)"
}

status=0
for preset in "${presets[@]}"; do
    if [ "$setup" = 1 ]; then
        "$RPCGATE_ROOT/scripts/setup.sh" --preset "$preset"
    fi
    [ -n "$rpcbind_pid" ] || start_rpcbind
    say "ctest --preset $preset ${ctest_args[*]}"
    rc=0
    (cd "$RPCGATE_ROOT" && ctest --preset "$preset" --output-on-failure -j2 --timeout 600 \
        "${ctest_args[@]}") || rc=$?
    say "preset $preset: ctest exit status $rc"
    [ "$status" -ne 0 ] || status=$rc
done
# The parsers fed by the network, each under libFuzzer for a bounded time,
# from the committed seed corpora (tests/fuzz/corpus/).
if [ "$fuzz_seconds" -gt 0 ] && [ ${#ctest_args[@]} -eq 0 ]; then
    say "fuzzing each target for ${fuzz_seconds} s"
    rc=0
    BUILD_DIR="$RPCGATE_ROOT/build/fuzz" "$RPCGATE_ROOT/tests/fuzz/run.sh" "$fuzz_seconds" || rc=$?
    say "fuzz exit status $rc"
    [ "$status" -ne 0 ] || status=$rc
fi
exit "$status"
