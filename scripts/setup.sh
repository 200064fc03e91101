#!/bin/bash
# Installs every build and test dependency of rpcgate from Debian 12 packages,
# then configures and builds one CMake preset into build/<preset>/.
#
#   sudo ./scripts/setup.sh [--preset NAME] [--no-build] [--no-install]
#
# Idempotent and quiet: nothing is asked of apt when every package is already
# installed, and `apt-get update` runs only when the package lists are missing
# or older than a day (or an install failed on stale lists). Package scripts
# are not allowed to start services during the install (policy-rc.d): the
# tests start their own rpcbind and nfs-ganesha on free ports.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

preset=release
build=1
install=1
while [ $# -gt 0 ]; do
    case $1 in
        --preset) preset=${2:?--preset needs a name}; shift ;;
        --no-build) build=0 ;;
        --no-install) install=0 ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done

# One entry per need; "a|b" is satisfied by either (the first is installed).
packages=(
    # build
    build-essential cmake ninja-build pkg-config g++ clang clang-format
    liburing-dev libssl-dev openssl
    libgtest-dev googletest libgmock-dev libbenchmark-dev
    libtomlplusplus-dev libcli11-dev libfmt-dev
    libtirpc-dev rpcsvc-proto
    # real peers and tools the tests drive
    nfs-ganesha nfs-ganesha-vfs nfs-ganesha-mem libnfs-utils rpcbind
    tshark haproxy socat stunnel4
    prometheus  # promtool checks the /metrics format
    systemd     # systemd-analyze verifies the unit file
    man-db groff-base  # tests/packaging: the man pages render without warnings
    debhelper lintian mmdebstrap  # scripts/package.sh and the .deb in a Debian 12 chroot
    "gnuplot-nox|gnuplot-qt|gnuplot-x11"
    procps iproute2 util-linux python3
    # bench/e2e: HAProxy 3.2 from a Debian forky chroot (forky_chroot.sh), the
    # profile (profile.sh: perf record -e cpu-clock, io_uring tracepoints)
    mmdebstrap linux-perf
    # the DPDK backend (-DRPCGATE_WITH_DPDK=ON, scripts/test-dpdk.sh): DPDK, lwIP's
    # source through apt (dpkg-dev unpacks it), ethtool for the veth offloads
    dpdk-dev libdpdk-dev dpkg-dev ethtool
    qemu-system-x86 busybox-static cpio xz-utils  # tests/vm: boots kernels with kTLS (6.1, 6.12, 7.x)
)

installed() { # installed PKG: true if dpkg has it fully installed
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

missing_packages() {
    local entry alt found
    for entry in "${packages[@]}"; do
        found=0
        for alt in ${entry//|/ }; do
            installed "$alt" && { found=1; break; }
        done
        [ "$found" = 1 ] || echo "${entry%%|*}"
    done
}

lists_fresh() {
    # Fresh: some Packages index exists and is less than a day old.
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit \
        2>/dev/null)" ]
}

apt_quiet() {
    # apt is chatty even with -qq; keep its output for when it fails.
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" | tail -n 30 >&2
        return 1
    fi
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [ ${#missing[@]} -eq 0 ]; then
        say "all ${#packages[@]} dependencies are installed"
        return 0
    fi
    need_root "installing packages"
    say "installing ${#missing[@]} packages: ${missing[*]}"

    export DEBIAN_FRONTEND=noninteractive
    # tshark would otherwise ask whether non-root users may capture.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' |
        debconf-set-selections

    # Keep maintainer scripts from starting daemons (rpcbind, nfs-ganesha,
    # haproxy): without systemd they fail and fail the install, with it they
    # would hold ports. Exit 101 = "action forbidden" (invoke-rc.d policy).
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# rpcgate scripts/setup.sh: no service starts during install\nexit 101\n' \
            >"$policy"
        chmod 755 "$policy"
        ours=1
        # Expanded now: $policy is local and gone when the trap runs.
        trap "rm -f '$policy'" EXIT
    fi

    lists_fresh || apt_quiet apt-get update -qq
    if ! apt_quiet apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        say "install failed; refreshing package lists and retrying"
        apt_quiet apt-get update -qq
        apt_quiet apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi

    # Under systemd the units are enabled even when not started; a system
    # nfs-ganesha would take port 2049 at the next boot. Only for what we just
    # installed, never for a service the machine already had.
    if [ -d /run/systemd/system ]; then
        local pkg
        for pkg in "${missing[@]}"; do
            case $pkg in
                nfs-ganesha) systemctl disable --quiet nfs-ganesha.service 2>/dev/null || true ;;
                haproxy) systemctl disable --quiet haproxy.service 2>/dev/null || true ;;
            esac
        done
    fi
    if [ "$ours" = 1 ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    local still
    still=$(missing_packages | tr '\n' ' ')
    [ -z "$still" ] || die "still missing after apt-get install: $still"
}

[ "$install" = 0 ] || install_packages

if [ "$build" = 1 ]; then
    cd "$RPCGATE_ROOT"
    say "configuring and building preset '$preset' into build/$preset"
    cmake --preset "$preset" --log-level=WARNING >/dev/null
    cmake --build --preset "$preset" ${RPCGATE_JOBS:+--parallel "$RPCGATE_JOBS"}
fi
