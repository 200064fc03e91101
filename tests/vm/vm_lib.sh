# Shell functions shared by the guest builders of tests/vm (run_vm.sh,
# nfs_vm.sh): a Debian suite's kernel package fetched through apt and
# unpacked into a cache, with nothing installed on the host and the host's
# apt state untouched. Source it; it defines functions and one array.
#
# The caller sets: cache (an absolute directory), kernel (the suite:
# bookworm, trixie, trixie-backports), busybox (a static busybox, for its
# depmod), and the functions say and die.
#
#   vm_apt_init               host_suite, apt_dir (a private apt state under
#                             the cache for a suite other than the host's)
#   apt_private TOOL ARGS     apt-get|apt-cache on the host's state or the private one
#   vm_host_mirror            print the host's Debian mirror (from its apt sources)
#   refresh_private_lists     (re)make the private lists for $kernel
#   resolve_kernel            print PACKAGE_VERSION of the suite's versioned image
#   vm_prepare_kernel SUBDIR BUILDER FILE
#                             under a lock on the cache: resolve the kernel,
#                             set kdir=$cache/SUBDIR/PACKAGE_VERSION and run
#                             BUILDER (which fills $kdir) unless $kdir/FILE is
#                             there; refreshes the lists and retries once when
#                             the download fails; drops older kernels of SUBDIR
#   vm_fetch_kernel_tree WORK download the image (and 7.x's linux-binary and
#                             linux-modules) into WORK/deb, unpack into WORK/x;
#                             set kroot (the tree holding lib/modules), kver
#                             and vmlinuz
#   vm_module_closure MROOT NAME...
#                             the modules of NAME... this kernel has (mod_got)
#                             and every module they need (mod_closure, paths
#                             relative to MROOT, from the modules' own
#                             depends=: the package has no modules.dep);
#                             fails if tls is missing
#   vm_copy_modules MROOT DEST  mod_closure into DEST, uncompressed, with a
#                             modules.dep and modules.alias of their own
#   vm_shared_libs FILE       print the shared libraries ldd lists for FILE
#                             (the loader too), a path a line; nothing for a
#                             script or a data file
#
# vm_ktls_modules: the modules kernel TLS needs where the kernel has them as
# modules (names change across versions: 7.x builds ghash, ctr and the x86
# chacha/poly1305 glue in).

vm_ktls_modules=(
    tls gcm ghash-generic ghash-clmulni-intel aesni-intel ctr
    chacha20poly1305 chacha chacha_generic chacha-x86_64 poly1305_generic poly1305-x86_64
    inet_diag tcp_diag
)

# The host's own suite comes from the host's apt lists. Another suite gets a
# private apt state under the cache (its own lists, never the host's): the
# same mirror as the host's main archive, the suite's `main`, verified with
# the host's Debian keyring.
vm_apt_init() {
    host_suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    apt_dir=""
    if [ "$kernel" != "$host_suite" ]; then
        apt_dir=$cache/apt
        mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/parts"
    fi
}

apt_private() { # apt_private apt-get|apt-cache ARGS: the host's or the private state
    local tool=$1
    shift
    if [ -z "$apt_dir" ]; then
        "$tool" "$@"
        return
    fi
    "$tool" -o Dir::State="$apt_dir/state" -o Dir::State::status=/dev/null \
        -o Dir::Cache="$apt_dir/cache" -o Dir::Etc::SourceList="$apt_dir/sources.list" \
        -o Dir::Etc::SourceParts="$apt_dir/parts" -o Dir::Etc::Preferences=/dev/null \
        -o Dir::Etc::PreferencesParts="$apt_dir/parts" "$@"
}

vm_host_mirror() {
    local mirror
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME)' 'Identifier: Packages' 2>/dev/null |
        awk -v s="$host_suite" '$2 == s { print $1; exit }')
    [ -n "$mirror" ] || mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    [ -n "$mirror" ] || { say "no Debian mirror in the host's apt sources"; return 1; }
    echo "$mirror"
}

# The private lists: made on first use, refreshed when older than a day or
# when a download fails (Debian replaces kernels; old lists name removed files).
refresh_private_lists() {
    local mirror
    mirror=$(vm_host_mirror) || return 1
    local base=${kernel%-backports}
    {
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $base main"
        [ "$base" = "$kernel" ] ||
            echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $kernel main"
    } >"$apt_dir/sources.list.$kernel"
    # One state per cache; its source list is the union of what tests asked for.
    sort -u "$apt_dir"/sources.list.* >"$apt_dir/sources.list"
    say "refreshing the private apt lists for $kernel ($mirror)"
    apt_private apt-get update -qq >"$apt_dir/update.log" 2>&1 || {
        tail -n 5 "$apt_dir/update.log" >&2
        return 1
    }
}

# The metapackage of the suite depends on the versioned image package. Since
# Debian 13's backports that one may be a shell depending on
# linux-binary-<abi> (vmlinuz) and linux-modules-<abi>: those are fetched too.
resolve_kernel() {
    local pkg ver sel=""
    # The host's suite: apt's candidate (updates and security included).
    [ -z "$apt_dir" ] || sel=/$kernel
    pkg=$(apt_private apt-cache depends "linux-image-amd64$sel" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
    [ -n "$pkg" ] || return 1
    ver=$(apt_private apt-cache show --no-all-versions "$pkg$sel" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
    [ -n "$ver" ] || return 1
    echo "${pkg}_${ver}"
}

vm_prepare_kernel() {
    local sub=$1 builder=$2 file=$3 fd
    exec {fd}>"$cache/.lock"
    flock "$fd"
    if [ -n "$apt_dir" ]; then
        if [ ! -f "$apt_dir/sources.list.$kernel" ] ||
            [ -z "$(find "$apt_dir/state/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ]; then
            refresh_private_lists || say "cannot refresh the private apt lists for $kernel"
        fi
    fi
    local kcache=$cache/$sub
    mkdir -p "$kcache"
    if key=$(resolve_kernel); then
        :
    elif key=$(ls -1 "$kcache" 2>/dev/null | grep '^linux-image-.*_' | sort -V | tail -n 1) && [ -n "$key" ]; then
        say "apt cannot resolve linux-image-amd64/$kernel now; using the cached $key"
    else
        die "apt-cache cannot resolve linux-image-amd64/$kernel (run apt-get update, as scripts/setup.sh does)"
    fi
    kdir=$kcache/$key
    pkg=${key%%_*}
    if [ ! -f "$kdir/$file" ]; then
        if ! "$builder"; then
            # Lists older than the mirror name a kernel it no longer has:
            # refresh them once (as root for the host's: what scripts/setup.sh
            # does) and retry.
            if [ -n "$apt_dir" ]; then
                refresh_private_lists || die "cannot refresh the private apt lists for $kernel"
            else
                [ "$(id -u)" = 0 ] || die "cannot fetch the kernel (apt-get update as root may help)"
                say "refreshing apt's package lists and retrying"
                apt-get update -qq >/dev/null 2>&1 || true
            fi
            key=$(resolve_kernel) || die "apt-cache cannot resolve linux-image-amd64/$kernel"
            kdir=$kcache/$key
            pkg=${key%%_*}
            "$builder" || die "cannot fetch $key"
        fi
        # Kernels of this suite from earlier runs are not needed any more.
        local old
        for old in "$kcache"/linux-image-*; do
            [ "$old" = "$kdir" ] || rm -rf "$old"
        done
    fi
    flock -u "$fd"
    exec {fd}>&-
}

vm_fetch_kernel_tree() {
    local work=$1
    rm -rf "$work"
    mkdir -p "$work/deb"
    local ver=${key#*_} pkgs=("$pkg=${key#*_}") dep
    for dep in $(apt_private apt-cache depends "$pkg=$ver" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-\(binary\|modules\)-[0-9][^ ]*\)$/\1/p'); do
        pkgs+=("$dep=$ver")
    done
    say "fetching ${pkgs[*]} (apt-get download; nothing is installed)"
    (cd "$work/deb" && apt_private apt-get download -q "${pkgs[@]}" >download.log 2>&1) || {
        tail -n 5 "$work/deb/download.log" >&2
        say "apt-get download $pkg failed"
        return 1
    }
    local deb
    for deb in "$work"/deb/*.deb; do dpkg -x "$deb" "$work/x" || return 1; done
    # Debian 12 ships /lib/modules, Debian 13 /usr/lib/modules (merged /usr);
    # vmlinuz is in /boot or, in 7.x's linux-binary, beside the modules.
    kroot=$work/x
    [ -d "$kroot/lib/modules" ] || kroot=$work/x/usr
    kver=$(ls -1 "$kroot/lib/modules" | head -n 1)
    vmlinuz=$work/x/boot/vmlinuz-$kver
    [ -f "$vmlinuz" ] || vmlinuz=$kroot/lib/modules/$kver/vmlinuz
    [ -n "$kver" ] && [ -f "$vmlinuz" ] || die "$pkg holds no vmlinuz/modules"
}

vm_modinfo_depends() { # vm_modinfo_depends FILE: the modules FILE needs (its .modinfo depends=)
    case $1 in
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -qdc "$1" ;;
        *) cat "$1" ;;
    esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '
}

vm_module_closure() {
    local mroot=$1 m path dep
    shift
    mod_got=()
    mod_closure=()
    # Module names use '_' where file names may use '-' (aesni-intel.ko is
    # aesni_intel); depends= gives names.
    local -A where=()
    while read -r path; do
        m=${path##*/}
        m=${m%%.ko*}
        where[${m//-/_}]=$path
    done < <(cd "$mroot" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')
    local queue=()
    for m in "$@"; do
        path=${where[${m//-/_}]:-}
        if [ -z "$path" ]; then
            [ "$m" != tls ] || { say "$pkg has no module tls"; return 1; }
            continue
        fi
        queue+=("$path")
        mod_got+=("$m")
    done
    # Close over depends= (a module names the ones it needs directly), reading
    # only these modules: a depmod of the whole tree decompresses thousands.
    local seen=" " i=0
    while [ "$i" -lt ${#queue[@]} ]; do
        path=${queue[$i]}
        i=$((i + 1))
        case $seen in *" $path "*) continue ;; esac
        seen+="$path "
        mod_closure+=("$path")
        for dep in $(vm_modinfo_depends "$mroot/$path"); do
            [ -z "${where[$dep]:-}" ] || queue+=("${where[$dep]}")
        done
    done
}

vm_copy_modules() {
    local mroot=$1 dest=$2 path
    # Debian 13 compresses modules (xz); busybox's modprobe may not
    # decompress, so they go in plain.
    for path in "${mod_closure[@]}"; do
        mkdir -p "$dest/$(dirname "$path")"
        case $path in
            *.ko.xz) xz -dc "$mroot/$path" >"$dest/${path%.xz}" ;;
            *.ko.zst) zstd -qdc "$mroot/$path" >"$dest/${path%.zst}" ;;
            *) cp "$mroot/$path" "$dest/$path" ;;
        esac
    done
    local f
    for f in modules.builtin modules.order; do
        [ ! -f "$mroot/$f" ] || cp "$mroot/$f" "$dest/"
    done
    # modules.dep and modules.alias for just this subset: the kernel's own
    # request_module("crypto-...") then finds them through modprobe. depmod
    # -b takes the directory that holds lib/modules.
    local top=${dest%/lib/modules/*}
    "$busybox" depmod -b "$top" "$(basename "$dest")"
}

vm_shared_libs() {
    # ldd prints "name => /path (addr)" and "/lib64/ld-linux-x86-64.so.2 (addr)".
    ldd "$1" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p'
}
