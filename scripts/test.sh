#!/bin/bash
# The test command: installs what is missing, builds, starts the shared peers
# and runs every test, then the sanitizer jobs and the fuzzers. Exits non-zero
# when any job failed; ends with a table of the jobs (tests passed, failed and
# skipped, wall time, exit status); docs/testing.md has the same table for a
# clean-clone run and says what each job covers.
#
# Skips: every skipped test is listed with its reason. When CI is set (as in
# .ci/run), a skip that tests/skips.allow does not list fails its job: on this
# kind of machine the peers are installed by this script, so a test that
# skips here means a broken set-up, not a pass.
#
#   sudo ./scripts/test.sh [--preset NAME] [--no-sanitizers] [--no-setup] [--fuzz SECONDS]
#                          [--soak SECONDS] [-- CTEST ARGS...]
#
#   --preset NAME     configure/build/test preset (default: release)
#   --no-sanitizers   skip the sanitizer jobs that follow by default:
#                       asan: every ctest test again under ASan+UBSan (`asan` preset)
#                       tsan: every test whose binaries start threads (all but the
#                             qemu guests, the soak and the benchmark scripts) under
#                             ThreadSanitizer (`tsan` preset)
#   --asan            (kept for old command lines; the asan job is on by default)
#   --no-dpdk         skip the DPDK job (scripts/test-dpdk.sh: a build with DPDK + lwIP
#                     and the tests on a veth pair), which runs by default
#   --package         also the package job (scripts/package.sh: the .deb, lintian, then
#                     ctest -L packaging: the .deb in a fresh Debian 12 chroot). Off by
#                     default: a cold package build is a second full build (~17 min
#                     here) and the chroot ~3.5 min, which the CI budget has no room
#                     for; run it before a release (`--no-package` is accepted, a no-op)
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
package=0
fuzz_seconds=20
soak_seconds=0
ctest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --preset) presets[0]=${2:?--preset needs a name}; shift ;;
        --asan) ;;
        --no-sanitizers) sanitizers=0 ;;
        --no-dpdk) dpdk=0 ;;
        --package) package=1 ;;
        --no-package) package=0 ;;
        --no-setup) setup=0 ;;
        --fuzz) fuzz_seconds=${2:?--fuzz needs SECONDS}; shift ;;
        --soak) soak_seconds=${2:?--soak needs SECONDS}; shift ;;
        --) shift; ctest_args=("$@"); break ;;
        -h | --help) sed -n '2,42p' "$0"; exit 0 ;;
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

# Each ctest job writes a JUnit file; scripts/ctest_report.py lists its skips
# with their reasons, appends "JOB PASSED FAILED SKIPPED" to $counts_file, and
# (strict when CI is set) fails the job on a skip tests/skips.allow does not list.
counts_file=$(mktemp)
trap 'stop_rpcbind; rm -f "$counts_file"' EXIT
strict=()
[ -n "${CI:-}" ] && strict=(--strict)
report() { # report JOB JUNIT
    python3 "$RPCGATE_ROOT/scripts/ctest_report.py" "$2" "$1" \
        --allow "$RPCGATE_ROOT/tests/skips.allow" --line "$counts_file" "${strict[@]}"
}

# job NAME CMD...: runs CMD, records its time and exit status for the summary.
status=0
summary=()
jobs_passed=0
jobs_failed=0
total_t0=$SECONDS
job() {
    local name=$1 t0=$SECONDS rc=0 counts p f k
    shift
    say "job $name: $*"
    "$@" || rc=$?
    counts=$(awk -v j="$name" '$1 == j { p += $2; f += $3; k += $4; n++ }
        END { if (n) printf "%d %d %d", p, f, k; else printf "- - -" }' "$counts_file")
    read -r p f k <<<"$counts"
    summary+=("$(printf '%-8s %7s %7s %8s %7d s   %d' "$name" "$p" "$f" "$k" $((SECONDS - t0)) "$rc")")
    if [ "$rc" -eq 0 ]; then jobs_passed=$((jobs_passed + 1)); else jobs_failed=$((jobs_failed + 1)); fi
    say "job $name: exit status $rc after $((SECONDS - t0)) s"
    [ "$status" -ne 0 ] || status=$rc
    return 0
}

# run_ctest JOB BUILD_DIR CTEST_ARGS...: ctest in BUILD_DIR, then its report.
run_ctest() {
    local name=$1 dir=$2 rc=0
    shift 2
    [ -n "$rpcbind_pid" ] || start_rpcbind
    rm -f "$dir/ctest-junit.xml"
    (cd "$dir" && ctest --output-on-failure -j2 --timeout 600 --output-junit "$dir/ctest-junit.xml" \
        "$@") || rc=$?
    report "$name" "$dir/ctest-junit.xml" || rc=$?
    return $rc
}

# Run once, in the first job: 10,000 libtirpc calls of up to 2 MiB (~10 GiB
# through the gateway, 45 s in release, many minutes under a sanitizer, which
# the same paths at smaller volume already cover); the 64 MiB kTLS rekey echo
# in the 7.x guest (~80 s of TCG in release; the sanitizer jobs run the same
# code at 4 MiB on the host and the smaller rekey tests in the guests); the
# upgrade benchmark's smoke (ten HAProxy reloads and rpcgate upgrades under
# load, 22-46 s in release: the gateway.upgrade_* tests run the same upgrade
# code under each sanitizer); the kTLS upgrade tests in the 6.1 and 7.x guests
# (45-140 s each in release; the upgrade code is the same one the host's
# gateway.upgrade_* and gateway_ktls_upgrade_tests run under each sanitizer);
# Linux's knfsd and NFS client against the gateway in the 6.12 and 7.x guests
# (linux_nfs_tls_vm*, 41-90 s each on a quiet machine, 3-6 min beside a
# build; the Debian 13 guest built once into the build dir, 50 s quiet); the
# kTLS suite in the 6.12 guest (50-60 s; 6.12 takes the 6.1 paths, no kTLS
# rekey, and the sanitizer jobs run the suite in the 6.1 and 7.x guests).
# The other two report smokes (the echo and NFS reports at their smallest,
# 25-45 s each under ASan) are timing scripts too: once, in release.
once_only='vm_harness_names_oom|tirpc_client_10000_calls|gateway_rekey_bulk_vm_7|e2e_report_upgrade_smoke|gateway_ktls_upgrade_vm|linux_nfs_tls_vm|ktls_vm_6_12|e2e_report_smoke|e2e_report_nfs_smoke'
run_preset() {
    local preset=$1 extra=()
    if [ "$setup" = 1 ]; then
        "$RPCGATE_ROOT/scripts/setup.sh" --preset "$preset" || return
    fi
    [ "$preset" = "${presets[0]}" ] || [ ${#ctest_args[@]} -gt 0 ] || extra=(-E "$once_only")
    # The .deb in a chroot is the package job's (it needs the .deb that job builds).
    [ ${#ctest_args[@]} -gt 0 ] || extra+=(-LE packaging)
    run_ctest "$preset" "$RPCGATE_ROOT/build/$preset" "${extra[@]}" "${ctest_args[@]}"
}

# ThreadSanitizer on every test whose binaries start threads: the engine, the
# TLS threads, the gateway in process and as the real daemon under the fault
# tests, the client, probe and bench programs. Left out, each with its reason:
#   vm        the qemu guests boot a busybox initramfs without TSan's runtime
#             (their code is the release build's, covered by the release job);
#   soak      75 s of load whose point is resource figures, not interleavings;
#   e2e/bench benchmark scripts and the splice bench, timing tools only;
#   faults.handshake_flood  asks for a 5,000/s probe flood that a TSan daemon
#             (5-15x slower) cannot serve, so its rate check would be a timing
#             failure, not a race; the other fault tests run.
#   the 10 GiB libtirpc test, run once in the first job ($once_only).
tsan_exclude="^(gateway_ktls_vm|ktls_vm|splice_bench_ktls_vm|soak\\.|e2e_report|splice_bench|faults\\.handshake_flood\$)|$once_only"
run_tsan() {
    local dir=$RPCGATE_ROOT/build/tsan
    (cd "$RPCGATE_ROOT" && cmake --preset tsan --log-level=WARNING >/dev/null) || return
    cmake --build "$dir" -j2 || return
    # scripts/tsan.supp says why each suppression is there (one: a test peer's library).
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:exitcode=66:suppressions=$RPCGATE_ROOT/scripts/tsan.supp" \
        run_ctest tsan "$dir" -E "$tsan_exclude" -LE 'vm|packaging'
}

# The tree is as clang-format writes it (seconds; before the long jobs).
if [ ${#ctest_args[@]} -eq 0 ]; then
    [ "$setup" = 0 ] || "$RPCGATE_ROOT/scripts/setup.sh" --no-build || die "installing packages failed"
    job format "$RPCGATE_ROOT/scripts/check-format.sh"
fi
for preset in "${presets[@]}"; do
    job "$preset" run_preset "$preset"
done
if [ "$sanitizers" = 1 ] && [ ${#ctest_args[@]} -eq 0 ]; then
    job tsan run_tsan
fi
run_dpdk() {
    local rc=0
    "$RPCGATE_ROOT/scripts/test-dpdk.sh" --no-install -- \
        --output-junit "$RPCGATE_ROOT/build/dpdk/ctest-junit.xml" || rc=$?
    report dpdk "$RPCGATE_ROOT/build/dpdk/ctest-junit.xml" || rc=$?
    return $rc
}
# The DPDK build (-DRPCGATE_WITH_DPDK=ON, lwIP from Debian's source package)
# and its tests on a veth pair; the default build above has no DPDK.
if [ "$dpdk" = 1 ] && [ ${#ctest_args[@]} -eq 0 ]; then
    job dpdk run_dpdk
fi
# The Debian package: built from the tree (scripts/package.sh, lintian must find
# no error), then installed into a fresh Debian 12 chroot (tests/packaging,
# label packaging: the base tarball is cached under build/package, so only the
# first run on a machine pays for mmdebstrap).
run_package() {
    "$RPCGATE_ROOT/scripts/package.sh" || return
    run_ctest package "$RPCGATE_ROOT/build/${presets[0]}" -L packaging
}
if [ "$package" = 1 ] && [ ${#ctest_args[@]} -eq 0 ]; then
    job package run_package
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
run_fuzz() { # counts a target as passed when it ran its time without a finding
    local rc=0 log=$RPCGATE_ROOT/build/fuzz-run.log
    mkdir -p "$RPCGATE_ROOT/build"
    BUILD_DIR="$RPCGATE_ROOT/build/fuzz" "$RPCGATE_ROOT/tests/fuzz/run.sh" "$fuzz_seconds" 2>&1 |
        tee "$log"
    rc=${PIPESTATUS[0]}
    echo "fuzz $(grep -c '^fuzz_.*execs in' "$log") $(grep -c 'FAILED' "$log") 0" >>"$counts_file"
    return $rc
}
# The parsers fed by the network or an operator, and the stateful connection
# target, each under libFuzzer for a bounded time, from the committed seed
# corpora (tests/fuzz/corpus/).
if [ "$fuzz_seconds" -gt 0 ] && [ ${#ctest_args[@]} -eq 0 ]; then
    job fuzz run_fuzz
fi
say "summary ($((SECONDS - total_t0)) s in all):"
say "  job       passed  failed  skipped    time   exit"
for line in "${summary[@]}"; do say "  $line"; done
echo "jobs: $jobs_passed passed, $jobs_failed failed"
exit "$status"
