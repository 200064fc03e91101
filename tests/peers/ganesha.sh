#!/bin/bash
# Starts and stops a private nfs-ganesha for tests, on loopback, on free ports.
#
#   ganesha.sh start STATEDIR    start; print shell assignments on stdout:
#                                  NFS_PORT=.. MNT_PORT=.. NLM_PORT=.. EXPORT=/export
#                                  MEM_EXPORT=/mem EXPORT_DIR=.. EXPORT_FS=tmpfs|dir
#                                  GANESHA_PID=.. GANESHA_LOG=..
#                                (callers: eval "$(ganesha.sh start DIR)")
#   ganesha.sh stop STATEDIR     stop it, unmount the export, remove STATEDIR
#   ganesha.sh status STATEDIR   exit 0 while it runs
#
# Exports (NFSv3 and NFSv4, AUTH_SYS, root not squashed):
#   /export  FSAL VFS over STATEDIR/export, a tmpfs when we may mount one
#            (root), else a plain directory; EXPORT_FS says which.
#   /mem     FSAL MEM: keeps only the first 2 MiB of each file (its maximum
#            Inode_Size); good for metadata and small I/O, not bulk data.
#
# Environment: GANESHA_TMPFS=0 (plain directory), GANESHA_TMPFS_SIZE (512m),
# GANESHA_MINOR_VERSIONS ("0, 1": 4.2's READ_PLUS is broken in 4.3),
# GANESHA_START_TIMEOUT (30 s), GANESHA_DEBUG_LEVEL (NIV_EVENT).
#
# ganesha refuses to start without rpcbind (it registers NFS and MOUNT there),
# so `start` launches `rpcbind -w` when none answers and leaves it running: it
# is shared by every instance; scripts/test.sh owns its lifetime. Clients must
# use the printed ports: with several instances the last one started owns the
# rpcbind entries. Diagnostics go to stderr. Exit 77: ganesha cannot run here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/peer_lib.sh"

die() { echo "ganesha.sh: $*" >&2; exit 1; }
skip() { echo "ganesha.sh: SKIP: $*" >&2; exit 77; }

plugins_dir() {
    # Debian installs the FSALs under the multiarch libdir, not the compiled-in
    # default (/usr/lib64/ganesha); find it rather than hard-code the triplet.
    local f
    for f in /usr/lib/*/ganesha/libfsalvfs.so /usr/lib64/ganesha/libfsalvfs.so \
             /usr/lib/ganesha/libfsalvfs.so; do
        [ -e "$f" ] && { dirname "$f"; return 0; }
    done
    return 1
}

ensure_rpcbind() {
    rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && return 0
    command -v rpcbind >/dev/null || skip "rpcbind is not installed"
    echo "ganesha.sh: no rpcbind answering; starting rpcbind -w" >&2
    rpcbind -w </dev/null >/dev/null 2>&1 || die "rpcbind -w failed"
    peer_wait_until 10 rpcinfo -p 127.0.0.1 || die "rpcbind started but does not answer"
}

mount_export() {
    local dir=$1
    mkdir -p "$dir"
    if [ "${GANESHA_TMPFS:-1}" != 0 ] &&
        mount -t tmpfs -o "size=${GANESHA_TMPFS_SIZE:-512m},mode=0777" rpcgate-ganesha "$dir" \
            2>/dev/null; then
        echo tmpfs
    else
        chmod 0777 "$dir"
        echo dir
    fi
}

write_config() {
    local state=$1 plugins=$2
    cat >"$state/ganesha.conf" <<EOF
# Written by tests/peers/ganesha.sh; see docs/peers.md.
NFS_CORE_PARAM {
    Bind_addr = 127.0.0.1;
    NFS_Port = $NFS_PORT;
    MNT_Port = $MNT_PORT;
    NLM_Port = $NLM_PORT;
    Rquota_Port = $RQUOTA_PORT;
    Enable_RQUOTA = false;
    # UDP listeners would need the same port numbers free for UDP too.
    Enable_UDP = false;
    Protocols = 3, 4;
    # Lets NFSv3 MOUNT the pseudo path (/export), as NFSv4 sees it.
    mount_path_pseudo = true;
    Plugins_Dir = "$plugins";
    # Only matters where a system D-Bus runs: keeps instances from clashing.
    Dbus_Name_Prefix = "rpcgatetest$NFS_PORT";
}
NFS_KRB5 { Active_krb5 = false; }
NFSv4 {
    RecoveryRoot = "$state/recovery";
    # No 90 s grace period after start: tests open files at once.
    Graceless = true;
    Minor_Versions = ${GANESHA_MINOR_VERSIONS:-0, 1};
}
MEM { Inode_Size = 2097152; }
EXPORT {
    Export_Id = 1; Path = "$state/export"; Pseudo = /export;
    Access_Type = RW; Squash = No_Root_Squash; SecType = sys; Protocols = 3, 4;
    FSAL { Name = VFS; }
}
EXPORT {
    Export_Id = 2; Path = /mem; Pseudo = /mem;
    Access_Type = RW; Squash = No_Root_Squash; SecType = sys; Protocols = 3, 4;
    FSAL { Name = MEM; }
}
EOF
}

do_start() {
    local state=$1
    [ "$(id -u)" = 0 ] || skip "needs root (FSAL VFS uses open_by_handle_at)"
    command -v ganesha.nfsd >/dev/null || skip "ganesha.nfsd is not installed (nfs-ganesha)"
    command -v rpcinfo >/dev/null || skip "rpcinfo is not installed (rpcbind)"
    local plugins
    plugins=$(plugins_dir) || skip "no FSAL VFS plugin (nfs-ganesha-vfs)"
    [ -e "$plugins/libfsalmem.so" ] || skip "no FSAL MEM plugin (nfs-ganesha-mem)"
    if [ -e "$state/ganesha.pid" ] && peer_alive "$(cat "$state/ganesha.pid")"; then
        die "already running in $state"
    fi

    mkdir -p "$state/recovery"
    state=$(cd "$state" && pwd)
    ensure_rpcbind

    NFS_PORT=$(peer_free_port)
    MNT_PORT=$(peer_free_port)
    NLM_PORT=$(peer_free_port)
    RQUOTA_PORT=$(peer_free_port)
    local fs
    fs=$(mount_export "$state/export")
    write_config "$state" "$plugins"

    local log=$state/ganesha.log
    : >"$log"
    # ganesha unregisters its programs from rpcbind and then registers them;
    # two instances doing that at once make one fail ("Cannot register NFS V3
    # on TCP", fatal). Start one at a time; the lock is released once this one
    # is initialised, and ganesha itself must not inherit it.
    exec 9>>"${GANESHA_LOCK:-${TMPDIR:-/tmp}/rpcgate-ganesha-start.lock}"
    flock -w $((2 * ${GANESHA_START_TIMEOUT:-30} + 10)) 9 ||
        die "another ganesha start holds the lock"
    # -F keeps it a child we can signal; its stdio must not hold the caller's
    # pipes open (ctest and $(...) wait for every writer to go).
    ganesha.nfsd -F -f "$state/ganesha.conf" -L "$log" -p "$state/ganesha.pid" \
        -N "${GANESHA_DEBUG_LEVEL:-NIV_EVENT}" </dev/null >>"$state/stdio.log" 2>&1 9>&- &
    local pid=$!
    echo "$pid" >"$state/ganesha.pid"

    # The sockets answer before registration is over, and a failed rpcbind
    # registration still kills ganesha: wait for both the ports and the log line.
    local started=$SECONDS end=$((SECONDS + ${GANESHA_START_TIMEOUT:-30}))
    until grep -q 'NFS SERVER INITIALIZED' "$log" &&
        peer_rpc_null 127.0.0.1 "$NFS_PORT" 100003 3 &&
        peer_rpc_null 127.0.0.1 "$MNT_PORT" 100005 3; do
        if ! peer_alive "$pid" || [ "$SECONDS" -ge "$end" ]; then
            local why="still not answering after ${GANESHA_START_TIMEOUT:-30} s"
            peer_alive "$pid" || why="exited"
            echo "ganesha.sh: ganesha did not come up (pid $pid $why); log tail:" >&2
            tail -n 20 "$log" "$state/stdio.log" | sed 's/^/  | /' >&2
            ss -tanp | grep -E ":($NFS_PORT|$MNT_PORT)\b" | sed 's/^/  > /' >&2
            do_stop "$state" >&2 || true
            exit 1
        fi
        sleep 0.05
    done
    # A bad line in the config does not stop ganesha: it starts without the
    # export that holds it. Treat any configuration error as fatal.
    if grep -q ':CONFIG :CRIT' "$log"; then
        echo "ganesha.sh: configuration errors:" >&2
        grep ':CONFIG :CRIT' "$log" | sed 's/^/  | /' >&2
        do_stop "$state" >&2 || true
        exit 1
    fi
    exec 9>&-
    echo "$fs" >"$state/export.fs"
    echo "ganesha.sh: up in about $((SECONDS - started)) s, pid $pid," \
        "nfs $NFS_PORT mount $MNT_PORT, /export on $fs" >&2
    cat <<EOF
NFS_PORT=$NFS_PORT
MNT_PORT=$MNT_PORT
NLM_PORT=$NLM_PORT
EXPORT=/export
MEM_EXPORT=/mem
EXPORT_DIR=$state/export
EXPORT_FS=$fs
GANESHA_PID=$pid
GANESHA_LOG=$log
EOF
}

do_stop() {
    local state=$1
    [ -d "$state" ] || return 0
    state=$(cd "$state" && pwd)
    if [ -s "$state/ganesha.pid" ]; then
        # ganesha can take a few seconds to drain its worker threads on SIGTERM.
        peer_stop "$(cat "$state/ganesha.pid")" 20
    fi
    # Any other ganesha on this state's config: the pid file names only the
    # last one started, and a leftover would hold the pid file's lock ("fcntl
    # failed, Ganesha already started") and the export at the next start.
    local p
    for p in $(pgrep -f -- "ganesha.nfsd -F -f $state/ganesha.conf " || true); do
        echo "ganesha.sh: stopping a leftover ganesha (pid $p) of $state" >&2
        peer_stop "$p" 20
    done
    if mountpoint -q "$state/export" 2>/dev/null; then
        umount "$state/export" || umount -l "$state/export" ||
            die "cannot unmount $state/export"
    fi
    rm -rf "$state"
}

do_status() {
    [ -s "$1/ganesha.pid" ] && peer_alive "$(cat "$1/ganesha.pid")"
}

[ $# -eq 2 ] || { echo "usage: $0 start|stop|status STATEDIR" >&2; exit 2; }
case $1 in
    start) do_start "$2" ;;
    stop) do_stop "$2" ;;
    status) do_status "$2" ;;
    *) echo "usage: $0 start|stop|status STATEDIR" >&2; exit 2 ;;
esac
