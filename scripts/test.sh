#!/bin/bash
# The test command: installs what is missing, builds, starts the shared peers
# and runs every test, then the sanitizer jobs and the fuzzers. Exits non-zero
# when any job failed; ends with one line per job (time and exit status).
#
#   sudo ./scripts/test.sh [--preset NAME] [--no-sanitizers] [--no-setup] [--fuzz SECONDS]
#                          [--soak SECONDS] [-- CTEST ARGS...]
#
#   --preset NAME     configure/build/test preset (default: release)
#   --no-sanitizers   skip the sanitizer jobs that follow by default:
#                       asan: every ctest test again under ASan+UBSan (`asan` preset)
#                       tsan: the engine (core), TLS and control-thread gateway tests
#                             under ThreadSanitizer (`tsan` preset)
#   --asan            (kept for old command lines; the asan job is on by default)
#   --no-dpdk         skip the DPDK job (scripts/test-dpdk.sh: a build with DPDK + lwIP
#                     and the tests on a veth pair), which runs by default
#   --no-setup        skip scripts/setup.sh (packages and build are up to date)
#   --fuzz SECONDS    afterwards, each libFuzzer target for SECONDS (default 20; 0 = skip)
#   --soak SECONDS    afterwards, the full soak (tests/soak/soak.py) for SECONDS on the
#                     first preset's build (default 0: only the 75 s one inside ctest)
#   -- ARGS           passed to ctest, e.g. `-- -R peers -L nfs` (then only the
#                     asan job follows, with the same ARGS)
#
# `sudo ./scripts/test.sh --fuzz 600 --soak 600` reruns every figure of
# docs/hardening.md.
#
# rpcbind is the one peer shared by all tests: nfs-ganesha will not start
# without it. It is started here when none runs and stopped again at the end;
# everything else (ganesha, echo servers) each test starts on free ports.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

presets=(release)
setup=1
sanitizers=1
dpdk=1
fuzz_seconds=20
soak_seconds=0
ctest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --preset) presets[0]=${2:?--preset needs a name}; shift ;;
        --asan) ;;
        --no-sanitizers) sanitizers=0 ;;
        --no-dpdk) dpdk=0 ;;
        --no-setup) setup=0 ;;
        --fuzz) fuzz_seconds=${2:?--fuzz needs SECONDS}; shift ;;
        --soak) soak_seconds=${2:?--soak needs SECONDS}; shift ;;
        --) shift; ctest_args=("$@"); break ;;
        -h | --help) sed -n '2,29p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done
need_root "running the tests (ganesha, tmpfs, rpcbind)"
[ "$sanitizers" = 1 ] && [ "${presets[0]}" != asan ] && presets+=(asan)

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

# job NAME CMD...: runs CMD, records its time and exit status for the summary.
status=0
summary=()
jobs_passed=0
jobs_failed=0
job() {
    local name=$1 t0=$SECONDS rc=0
    shift
    say "job $name: $*"
    "$@" || rc=$?
    summary+=("$(printf '%-8s %5d s  exit %d' "$name" $((SECONDS - t0)) "$rc")")
    if [ "$rc" -eq 0 ]; then jobs_passed=$((jobs_passed + 1)); else jobs_failed=$((jobs_failed + 1)); fi
    say "job $name: exit status $rc after $((SECONDS - t0)) s"
    [ "$status" -ne 0 ] || status=$rc
    return 0
}

run_preset() {
    local preset=$1
    if [ "$setup" = 1 ]; then
        "$RPCGATE_ROOT/scripts/setup.sh" --preset "$preset" || return
    fi
    [ -n "$rpcbind_pid" ] || start_rpcbind
    (cd "$RPCGATE_ROOT" && ctest --preset "$preset" --output-on-failure -j2 --timeout 600 \
        "${ctest_args[@]}")
}

# ThreadSanitizer on the tests whose code runs on more than one thread: the
# engine (shards, mailboxes, timers), the TLS sessions, and the in-process
# gateway with its TLS control thread (connections handed over and back).
# Only these targets are built, which keeps the job short.
tsan_targets=(core_unit_tests tls_unit_tests gateway_tls_tests gateway_tests)
run_tsan() {
    local dir=$RPCGATE_ROOT/build/tsan t rc=0
    (cd "$RPCGATE_ROOT" && cmake --preset tsan >/dev/null) || return
    for t in "${tsan_targets[@]}"; do
        cmake --build "$dir" -j2 --target "$t" || return
    done
    [ -n "$rpcbind_pid" ] || start_rpcbind
    for t in "${tsan_targets[@]}"; do
        local bin
        bin=$(find "$dir" -path "$dir/CMakeFiles" -prune -o -type f -name "$t" -perm -u+x -print -quit)
        [ -n "$bin" ] || { say "tsan: no $t built"; rc=1; continue; }
        say "tsan: $t"
        # scripts/tsan.supp says why each suppression is there (one: a test peer's library).
        (cd "$(dirname "$bin")" &&
            TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:exitcode=66:suppressions=$RPCGATE_ROOT/scripts/tsan.supp" \
            "$bin" --gtest_brief=1) || rc=$?
    done
    return $rc
}

for preset in "${presets[@]}"; do
    job "$preset" run_preset "$preset"
done
if [ "$sanitizers" = 1 ] && [ ${#ctest_args[@]} -eq 0 ]; then
    job tsan run_tsan
fi
# The DPDK build (-DRPCGATE_WITH_DPDK=ON, lwIP from Debian's source package)
# and its tests on a veth pair; the default build above has no DPDK.
if [ "$dpdk" = 1 ] && [ ${#ctest_args[@]} -eq 0 ]; then
    job dpdk "$RPCGATE_ROOT/scripts/test-dpdk.sh" --no-install
fi
run_soak() {
    local dir=$RPCGATE_ROOT/build/${presets[0]}
    python3 "$RPCGATE_ROOT/tests/soak/soak.py" "$(build_bin "${presets[0]}" rpcgate)" \
        "$(build_bin "${presets[0]}" rpcgate-bench)" "$RPCGATE_ROOT/tests/tls/make_certs.sh" \
        --seconds "$soak_seconds" --report "$dir/soak-report.json"
}
if [ "$soak_seconds" -gt 0 ]; then
    job soak run_soak
fi
# The parsers fed by the network or an operator, and the stateful connection
# target, each under libFuzzer for a bounded time, from the committed seed
# corpora (tests/fuzz/corpus/).
if [ "$fuzz_seconds" -gt 0 ] && [ ${#ctest_args[@]} -eq 0 ]; then
    job fuzz env BUILD_DIR="$RPCGATE_ROOT/build/fuzz" "$RPCGATE_ROOT/tests/fuzz/run.sh" "$fuzz_seconds"
fi
say "summary (job, wall time, exit status):"
for line in "${summary[@]}"; do say "  $line"; done
echo "jobs: $jobs_passed passed, $jobs_failed failed"
exit "$status"
