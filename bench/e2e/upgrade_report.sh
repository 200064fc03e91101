#!/bin/bash
# The upgrade report: what a proxy's upgrade (or reload) under load costs the
# clients. For each set-up in front of one `rpcgate-bench serve`:
#   rpcgate    rpcgate handing itself over to a new process (SIGUSR2); needs a
#              build whose `rpcgate --help` has the upgrade options, else the
#              row is "n/a (why)"
#   haproxy    HAProxy 2.6 (Debian 12), reloaded the documented seamless way:
#              a new process started with `-x <stats socket>` (the socket has
#              `expose-fd listeners`) and `-sf <old pid>`
#   haproxy32  the same with HAProxy 3.2 from bench/e2e/forky_chroot.sh's
#              chroot (built on first use; with --quick only when cached)
#   rpcgate-tls, haproxy-tls, haproxy32-tls
#              the same with implicit TLS 1.3 (CIPHER, default
#              TLS_AES_128_GCM_SHA256) between the load and the proxy:
#              rpcgate moves its TLS connections with their keys (its own
#              record layer, the default); HAProxy's stay in the old process
# two load runs of DURATION seconds with the same load:
#   baseline   no upgrade
#   upgrade    UPGRADES upgrades back to back, from 1 s after the start; each
#              one waits until the old process is gone and the new one answers
#              (at most GONE_WAIT s; a process still there is "not gone", and
#              the next upgrade goes ahead). Upgrades stop 2 s before the run
#              ends; the report says how many were done.
# The load: `rpcgate-bench run --verify --reconnect`, CONNECTIONS (64)
# connections x DEPTH (2) calls in flight, payloads of SIZE..SIZE_MAX bytes
# (64..65536), plaintext. --reconnect reopens a connection the proxy closes:
# calls in flight at that moment are lost (counted), a close between calls
# loses nothing, and the bench counts connects and both kinds of close.
# HAProxy keeps its established TCP connections in the old process until they
# end; `hard-stop-after` (HAPROXY_HARD_STOP, default 1s; "none": not set,
# the old processes then stay while the load runs) is how its users bound an
# old process's life, and what makes it close them.
#
#   bench/e2e/upgrade_report.sh [--quick] [BUILD_DIR] [OUT_DIR]
# --quick: 2 upgrades in 6 s runs (the ctest smoke).
# Environment: UPGRADES (10), DURATION (30; 4 to 30), SETUPS ("rpcgate
# haproxy haproxy32 rpcgate-tls haproxy32-tls"; haproxy-tls on demand), CONNECTIONS, DEPTH, SIZE, SIZE_MAX, GONE_WAIT (5),
# HAPROXY_HARD_STOP, SHARDS (rpcgate and HAProxy threads, 2), RPCGATE (the
# rpcgate binary to upgrade, e.g. another build's; default BUILD_DIR's).
# Writes OUT_DIR/results.json and OUT_DIR/summary.md (the table, printed too),
# and the raw runs and upgrade steps in OUT_DIR/raw; the processes' logs in
# OUT_DIR/logs. docs/upgrade-bench.md says what each column means.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
e2e_args upgrade-report "$@"
upgrades=${UPGRADES:-$([ "$quick" = 1 ] && echo 2 || echo 10)}
duration=${DURATION:-$([ "$quick" = 1 ] && echo 6 || echo 30)}
setups=${SETUPS:-"rpcgate haproxy haproxy32 rpcgate-tls haproxy32-tls"}
cipher=${CIPHER:-TLS_AES_128_GCM_SHA256}
connections=${CONNECTIONS:-64}
depth=${DEPTH:-2}
size=${SIZE:-64}
size_max=${SIZE_MAX:-65536}
gone_wait=${GONE_WAIT:-5}
hard_stop=${HAPROXY_HARD_STOP:-1s}
awk -v d="$duration" 'BEGIN { exit !(d >= 4 && d <= 30) }' ||
    { echo "$(basename "$0"): DURATION must be 4..30 s (got $duration)" >&2; exit 2; }
. "$root/tests/peers/peer_lib.sh"
bench=$(e2e_find_bin rpcgate-bench)
probe=$(e2e_find_bin rpcgate-probe)
rpcgate=${RPCGATE:-$(e2e_find_bin rpcgate)}
e2e_need haproxy curl python3
e2e_init upgrade
mkdir -p "$out/raw"
e2e_certs
cat "$certs/server.pem" "$certs/server.key" >"$work/haproxy.pem"
tls=0        # the set-up being run speaks implicit TLS to the load
load_tls=()  # the load's TLS options then
runs=$out/raw/runs.jsonl
steps=$out/raw/upgrades.jsonl
na=$out/raw/not_run.jsonl
: >"$runs"
: >"$steps"
: >"$na"
not_run() { # SETUP WHY
    echo "$1: not run: $2" >&2
    printf '{"setup":"%s","why":"%s"}\n' "$1" "$(echo "$2" | tr -d '"\\' | cut -c1-160)" >>"$na"
}
now_s() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.3f", b - a }'; }

# --- the echo backend -----------------------------------------------------------------
echo_port=$(peer_free_port)
e2e_bg serve.log "$bench" serve --listen "127.0.0.1:$echo_port" --shards 1
e2e_wait_ready e2e_rpc_ready "$echo_port"

# --- set-ups: start, upgrade, stop ----------------------------------------------------
# Each set-up defines <kind>_start PORT (sets proxy_pid), <kind>_upgrade
# (starts one upgrade of $proxy_pid; sets new_pid when it knows it, else "")
# and <kind>_new_pid (finds it later; prints it or nothing). cur_pids holds
# every process of the set-up that may still run, for the stop at its end.

rpcgate_start() {
    admin_port=$(peer_free_port)
    local listen=(--listen "127.0.0.1:$1")
    # TLS: the load's port is the implicit-TLS one (the plaintext listener
    # beside it takes nothing).
    [ "$tls" = 0 ] || listen=(--listen "127.0.0.1:$(peer_free_port)" --implicit-tls "127.0.0.1:$1"
        --cert "$certs/server.pem" --key "$certs/server.key")
    e2e_bg "rpcgate-$1.log" "$rpcgate" "${listen[@]}" --admin "127.0.0.1:$admin_port" \
        --backend "536870913=127.0.0.1:$echo_port" --shards "$shards" --no-reserved-port
    proxy_pid=$bg_pid
}
rpcgate_healthy() { curl -fsS -m 2 "http://127.0.0.1:$admin_port/healthz" >/dev/null; }
rpcgate_upgrade() {
    kill -USR2 "$proxy_pid"
    new_pid=""
}
# The new process is the old one's child until the old one exits; after
# that, the one process whose command line has this set-up's unique port
# (written "127.0.0.1:PORT " with a space, so that no longer port matches).
rpcgate_new_pid() {
    local p
    for p in $(pgrep -P "$proxy_pid" 2>/dev/null) \
        $(pgrep -f -- " 127.0.0.1:$port " 2>/dev/null); do
        [ "$p" != "$proxy_pid" ] && peer_alive "$p" && { echo "$p"; return; }
    done
    true
}
# Can this rpcgate upgrade? Its --help names the options of the hand-over.
rpcgate_can_upgrade() { "$rpcgate" --help 2>&1 | grep -q -- '--upgrade'; }

haproxy_start() { # PORT [CHROOT]
    local global="    stats socket $work/haproxy-$1.sock mode 600 level admin expose-fd listeners"
    [ "$hard_stop" = none ] || global="$global
    hard-stop-after $hard_stop"
    ha_chroot=${2:-}
    local bind=""
    [ "$tls" = 0 ] || bind="ssl crt $work/haproxy.pem alpn sunrpc"
    e2e_haproxy_config "$1" "$echo_port" "$bind" "$global"
    e2e_haproxy_bg "haproxy-$1.log" "$ha_chroot" -f "$work/haproxy-$1.cfg" -db
    proxy_pid=$bg_pid
    ha_reloads=0
}
haproxy_healthy() { if [ "$tls" = 0 ]; then e2e_rpc_ready "$port"; else e2e_tls_ready "$port"; fi; }
haproxy_upgrade() {
    ha_reloads=$((ha_reloads + 1))
    e2e_haproxy_bg "haproxy-$port-reload-$ha_reloads.log" "$ha_chroot" \
        -f "$work/haproxy-$port.cfg" -db -x "$work/haproxy-$port.sock" -sf "$proxy_pid"
    new_pid=$bg_pid
}
haproxy_new_pid() { echo "$new_pid"; }

# One load run against $port; its JSON (or errors -1 when it printed none) goes
# to the file $1.
load_start() {
    "$bench" run --target "127.0.0.1:$port" --connections "$connections" --depth "$depth" \
        --size "$size" --size-max "$size_max" --verify --reconnect --duration "$duration" "${load_tls[@]}" \
        --json --quiet >"$1" 2>>"$work/bench-client.log" &
    load_pid=$!
}
load_finish() { # FILE: waits for the run (bounded: it ends itself) and fills in a failure
    local rc=0
    wait "$load_pid" || rc=$?
    [ -s "$1" ] || echo '{"calls":0,"errors":-1,"p50_us":0,"p99_us":0,"p999_us":0}' >"$1"
    [ "$rc" = 0 ] || echo "load run exited with status $rc (see logs/bench-client.log)" >&2
}

run_setup() { # SETUP KIND [CHROOT]
    local s=$1 kind=$2 i t0 t_up start_run old gone answers ok left
    port=$(peer_free_port)
    "${kind}_start" "$port" "${3:-}"
    cur_pids=("$proxy_pid")
    if ! peer_wait_until 30 "${kind}_healthy"; then
        not_run "$s" "did not start: $(tail -n 1 "$work"/*"-$port.log" 2>/dev/null | tail -n 1)"
        stop_setup
        return
    fi
    echo "== $s: baseline, ${duration} s" >&2
    load_start "$work/base.json"
    load_finish "$work/base.json"
    printf '{"setup":"%s","run":"baseline","result":%s}\n' "$s" "$(cat "$work/base.json")" >>"$runs"

    echo "== $s: $upgrades upgrades under load, ${duration} s" >&2
    start_run=$(now_s)
    load_start "$work/up.json"
    sleep 1 # the connections open; the run's own clock started with them
    for ((i = 1; i <= upgrades; i++)); do
        left=$(awk -v d="$duration" -v e="$(elapsed "$start_run")" 'BEGIN { print (d - e > 2) }')
        if [ "$left" != 1 ]; then
            echo "$s: the run ends in less than 2 s; $((i - 1)) upgrades done" >&2
            break
        fi
        old=$proxy_pid
        t_up=$(now_s)
        "${kind}_upgrade"
        # Done when the old process is gone and a new one answers.
        upgrade_done() {
            [ -n "$new_pid" ] || new_pid=$("${kind}_new_pid")
            [ -n "$new_pid" ] && ! peer_alive "$old" && "${kind}_healthy"
        }
        gone=false answers=false
        if peer_wait_until "$gone_wait" upgrade_done; then
            gone=true answers=true
        else
            peer_alive "$old" || gone=true
            [ -n "$new_pid" ] && "${kind}_healthy" && answers=true
        fi
        printf '{"setup":"%s","upgrade":%d,"old_pid":%s,"new_pid":%s,"old_gone":%s,"new_answers":%s,"seconds":%s}\n' \
            "$s" "$i" "$old" "${new_pid:-0}" "$gone" "$answers" "$(elapsed "$t_up")" >>"$steps"
        echo "$s: upgrade $i: old $old gone $gone, new ${new_pid:-?} answers $answers ($(elapsed "$t_up") s)" >&2
        # pids: the exit trap stops it too (rpcgate's new process is not our child).
        [ -z "$new_pid" ] || { cur_pids+=("$new_pid"); pids+=("$new_pid"); }
        if [ -z "$new_pid" ] || ! peer_alive "$new_pid"; then
            echo "$s: no new process after upgrade $i; no more upgrades" >&2
            break
        fi
        proxy_pid=$new_pid
    done
    # Old processes still there after the last upgrade, while the load still
    # runs (HAProxy without hard-stop-after keeps the one that holds the
    # connections until they close; they close when the load ends).
    local left_over=0 p
    for p in "${cur_pids[@]}"; do
        [ "$p" = "$proxy_pid" ] || ! peer_alive "$p" || left_over=$((left_over + 1))
    done
    load_finish "$work/up.json"
    printf '{"setup":"%s","run":"upgrade","old_alive_at_end":%d,"result":%s}\n' "$s" \
        "$left_over" "$(cat "$work/up.json")" >>"$runs"
    stop_setup
}
stop_setup() {
    local p
    for p in "${cur_pids[@]}"; do peer_stop "$p" 5; done
    # An rpcgate whose new process we never learnt of: its unique port finds it.
    for p in $(pgrep -f -- " 127.0.0.1:$port " 2>/dev/null || true); do
        peer_stop "$p" 5
    done
}

for s in $setups; do
    tls=0 load_tls=()
    case $s in *-tls) tls=1 load_tls=(--tls implicit "${tls_client[@]}") ;; esac
    case ${s%-tls} in
        rpcgate)
            if rpcgate_can_upgrade; then
                run_setup "$s" rpcgate
            else
                not_run "$s" "this rpcgate cannot upgrade itself (no --upgrade option in --help)"
            fi
            ;;
        haproxy) run_setup "$s" haproxy ;;
        haproxy32)
            chroot_opt=$([ "$quick" = 1 ] && echo --cached-only || true)
            if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
                not_run "$s" "HAProxy 3.2 runs in a chroot: needs root and unshare"
            elif chroot_dir=$("$here/forky_chroot.sh" $chroot_opt "$build" 2>"$work/chroot.log"); then
                run_setup "$s" haproxy "$chroot_dir"
            else
                not_run "$s" "no forky chroot: $(tail -n 1 "$work/chroot.log")"
            fi
            ;;
        *) echo "$(basename "$0"): unknown set-up $s (rpcgate haproxy haproxy32, each also -tls)" >&2; exit 2 ;;
    esac
done

versions=$(printf '{"haproxy":"%s","haproxy32":"%s"}' \
    "$(haproxy -v 2>/dev/null | head -n 1 | cut -d' ' -f3)" \
    "$([ -z "${chroot_dir:-}" ] || cut -d' ' -f3 "$chroot_dir/.rpcgate-complete")")
cat >"$out/raw/meta.json" <<JSON
{"upgrades": $upgrades, "duration_s": $duration, "connections": $connections, "depth": $depth,
 "size": $size, "size_max": $size_max, "gone_wait_s": $gone_wait, "shards": $shards,
 "haproxy_hard_stop_after": "$hard_stop", "versions": $versions,
 "machine": "$(nproc) cores ($(uname -m), Linux $(uname -r | cut -d- -f1))",
 "load": "$(cut -d' ' -f1-3 /proc/loadavg)", "date": "$(date -u +%Y-%m-%dT%H:%MZ)"}
JSON
python3 "$here/upgrade_report.py" "$out/raw" "$out"
echo "wrote $out/results.json and $out/summary.md" >&2
