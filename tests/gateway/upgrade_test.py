#!/usr/bin/env python3
"""In-place upgrade of a running `rpcgate` (docs/upgrade.md), under load, with
the real daemon, real sockets and `rpcgate-bench` on both ends.

  upgrade_test.py load|accept|tls_move|tls|systemd|stuck|hang|refused RPCGATE RPCGATE_BENCH MAKE_CERTS [UPGRADES]
  upgrade_test.py nfs RPCGATE RPCGATE_BENCH MAKE_CERTS UPGRADES [GANESHA_STATEDIR]

load     `rpcgate-bench run --verify` (mixed sizes, 64 plaintext connections)
         through the gateway to `rpcgate-bench serve`, while UPGRADES (10)
         upgrades happen back to back by SIGUSR2, each awaited until the old
         process has exited (status 0). The bench must see no error at all:
         its 64 connections (it never reconnects: a connection that ends is an
         error) all moved, every time; rpcgate_upgrade_connections_total
         {fate="moved"} says so, and {fate="closed"} stays 0.
         Beside it, new connections all along (connect, NULL, close).
accept   bursts of new connections at each phase of the listeners' hand-over
         (before; the new binary started, not ready; ready while the old
         shards are busy; the old one moving; after): each one answered.
nfs      `nfs-cp` (libnfs, NFSv3) copies a file in and out through the
         gateway to nfs-ganesha, again and again, beside the load of `load`,
         while UPGRADES upgrades happen, each during a copy: every copy
         byte-identical, no error, nothing closed. 77 without ganesha.
tls_move STARTTLS and implicit-TLS load (TLS 1.3, rpcgate's own records:
         the default) across UPGRADES upgrades back to back: every TLS
         connection moves with its keys and record sequence numbers, and the
         bench (--verify) sees no error, no lost call, no TLS error and no
         reconnect. The gateway changes its keys every 64 records
         (--tls-rekey-after), before and after each move.
tls      STARTTLS with OpenSSL's records (--tls-record-layer openssl) across
         one upgrade by POST /upgrade: OpenSSL holds the record state, so
         no TLS connection moves; each is closed cleanly between calls, and
         the bench sees exactly that: one error per closed connection (depth
         1: the call it had just sent, or its next one, lost; or that write
         refused after the close_notify), no timeout, no bad or failed reply. The count of closed connections
         is rpcgate_upgrade_connections_total{fate="drained"}.
systemd  the notify protocol (NOTIFY_SOCKET, sender pids by SCM_CREDENTIALS):
         the new process says MAINPID=<its pid> and READY=1, the old one
         MAINPID=<new pid>, nobody STOPPING=1.
stuck    a connection with half a call sent and then silence cannot move:
         it is closed at --upgrade-drain-timeout (fate closed) while an
         idle one beside it moves and works.
hang     a new binary that never answers is killed at --upgrade-timeout;
         the old process serves on.
refused  a new binary that exits 1 at once, then one that announces another
         hand-off format version (RPCGATE_UPGRADE_WIRE_VERSION), by SIGUSR2 and
         POST /upgrade: both fail, rpcgate_upgrades_total{result="failed"}
         counts them, the same process goes on serving the bench's load with
         no error and the same connections.

The test makes itself a child subreaper (the new process is a child of the
old one; once the old exits it is ours), waits on conditions (/metrics, pids,
the bench's JSON), never on the order of log lines, kills every process it
started or inherited at the end, and fails on any sanitizer report in the
gateway's log (both processes write to it). Exit 0 pass, 1 fail.
"""
import ctypes
import filecmp
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "faults"))
import harness  # noqa: E402
from harness import Failure, check, log, wait_until  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36
# A process start under TSan on a loaded 2-core machine: up to a minute.
START = 60
UPGRADE_MS = 60000  # --upgrade-timeout for the tests (TSan)


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise Failure(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


class Exits:
    """Reaps our children (the first gateway, and each new one that an old
    one leaves to us) and remembers how they ended."""

    def __init__(self):
        self.status = {}

    def reap(self):
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.status[pid] = st

    def gone(self, pid):
        self.reap()
        return pid in self.status or not os.path.exists(f"/proc/{pid}")


def descendants():
    """Every live process whose parent chain leads to us."""
    me = os.getpid()
    parent = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    out = []
    for pid in parent:
        p, seen = pid, 0
        while p in parent and p != me and seen < 64:
            p, seen = parent[p], seen + 1
        if p == me and pid != me:
            out.append(pid)
    return out


def kill_all():
    for pid in descendants():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def metric(env, name, labels=""):
    """One series of /metrics (labels as written, e.g. 'result="failed"'), or None."""
    with urllib.request.urlopen(f"http://127.0.0.1:{env.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    want = name + ("{" + labels + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[1])
    return None


def metric_or(env, name, labels="", default=-1.0):
    try:
        v = metric(env, name, labels)
        return default if v is None else v
    except OSError:
        return default  # between two processes' admin threads: ask again


def total(env, name):
    """A family summed over its series (per shard), or -1 when unreachable."""
    try:
        return env.metrics().get(name, -1.0)
    except OSError:
        return -1.0


def post(env, path):
    req = urllib.request.Request(f"http://127.0.0.1:{env.admin_port}{path}", data=b"",
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def new_pid_after(env, count):
    """The pid of the count-th binary the gateways started ("upgrade: started
    BINARY as pid N" lines): a file condition, not an order of lines."""
    def find():
        with open(env.gw.logfile, errors="replace") as f:
            pids = re.findall(r"upgrade: started \S+ as pid (\d+)", f.read())
        return int(pids[count - 1]) if len(pids) >= count else None
    return wait_until(START, find, f"upgrade {count} to start a new binary")


def sanitizer_clean(env):
    with open(env.gw.logfile, errors="replace") as f:
        text = f.read()
    for marker in ("WARNING: ThreadSanitizer", "ERROR: AddressSanitizer", "runtime error:",
                   "ERROR: LeakSanitizer"):
        check(marker not in text, f"a sanitizer report in the gateway log ({marker}):\n" +
              text[text.find(marker) - 200:text.find(marker) + 3000])


def start_bench(env, *args):
    argv = [env.bench, "run", "--target", f"127.0.0.1:{env.gw_port}", "--json",
            "--duration", "600", "--timeout", "30", *args]
    return env.start(argv, "bench")


def bench_report(env, bench, seconds=60):
    """Stops the bench (SIGINT: it drains and reports) and reads its JSON."""
    if bench.alive():
        bench.p.send_signal(signal.SIGINT)
    try:
        bench.p.wait(seconds)
    except subprocess.TimeoutExpired:
        raise Failure("the bench did not finish after SIGINT: " + bench.tail())
    with open(bench.logfile, errors="replace") as f:
        for line in reversed(f.read().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
    raise Failure("no JSON from the bench: " + bench.tail())


def start(env, conns, *extra, tls=False, drain_ms=20000, timeout_ms=UPGRADE_MS):
    """The echo backend and a 2-shard gateway, each awaited up to a minute."""
    env.echo_port = harness.free_port()
    env.echo = env.start([env.bench, "serve", "--listen", f"127.0.0.1:{env.echo_port}",
                          "--shards", "1"], "echo")
    wait_until(START, lambda: harness.rpc_null_ok(env.echo_port) or not env.echo.alive(),
               "the echo backend to answer")
    check(env.echo.alive(), "the echo backend exited at start: " + env.echo.tail())
    env.gw_port, env.admin_port = harness.free_port(), harness.free_port()
    argv = [env.rpcgate, "--listen", f"127.0.0.1:{env.gw_port}",
            "--backend", f"536870913=127.0.0.1:{env.echo_port}", "--shards", "2",
            "--no-reserved-port", "--admin", f"127.0.0.1:{env.admin_port}",
            "--upgrade-timeout", str(timeout_ms), "--upgrade-drain-timeout", str(drain_ms),
            "--drain-timeout", "20000", *extra]
    if tls:
        argv += ["--tls", "opportunistic", "--cert", f"{env.certs}/server.pem",
                 "--key", f"{env.certs}/server.key"]
    env.gw = env.start(argv, "gateway")
    wait_until(START, lambda: env.metrics_ok() or not env.gw.alive(),
               "the gateway's admin endpoint")
    check(env.gw.alive(), "the gateway exited at start: " + env.gw.tail())
    wait_until(START, lambda: harness.rpc_null_ok(env.gw_port), "the gateway to answer")
    return env.gw.pid


def upgrade_once(env, exits, pid, i):
    """The i-th upgrade by SIGUSR2 to `pid`, awaited until the old process
    exited with status 0 and the new one counts i completed: (the new pid,
    seconds from the signal)."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGUSR2)
    new = new_pid_after(env, i)
    wait_until(START + UPGRADE_MS / 1000, lambda: exits.gone(pid),
               f"old pid {pid} to exit after upgrade {i}")
    st = exits.status.get(pid)
    check(st is None or (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0),
          f"old pid {pid} ended with status {st}: " + env.gw.tail())
    check(os.path.exists(f"/proc/{new}"), f"new pid {new} is not running: " + env.gw.tail())
    wait_until(START, lambda: metric_or(env, "rpcgate_upgrades_total",
                                        'result="completed"') == i,
               f"rpcgate_upgrades_total{{result=\"completed\"}} == {i}")
    return new, time.monotonic() - t0


def load_flowing(env, conns, after):
    """The gateway forwards calls again beyond `after` on `conns` connections."""
    return (total(env, "rpcgate_connections_open") >= conns and
            total(env, "rpcgate_calls_forwarded_total") > after)


def upgrade_under_load(env, exits, pid, upgrades, conns):
    """`upgrades` upgrades back to back by SIGUSR2, each awaited until the old
    process has exited (status 0) and calls flow again on the same `conns`
    connections in the new one. Returns the last pid and each upgrade's time
    from the signal to the old process's exit."""
    times = []
    for i in range(1, upgrades + 1):
        pid, took = upgrade_once(env, exits, pid, i)
        times.append(took)
        # The load goes on in the new process, on the same connections.
        before = total(env, "rpcgate_calls_forwarded_total")
        wait_until(START, lambda: load_flowing(env, conns, before + 100),
                   f"calls to flow on {conns} connections after upgrade {i}")
    return pid, times


def upgrade_outcome(env):
    """After the upgrades: connections moved, drained and closed, upgrades
    failed (as /metrics says them), and the pause per moved connection in
    words for the log."""
    fate = [metric(env, "rpcgate_upgrade_connections_total", f'fate="{f}"')
            for f in ("moved", "drained", "closed")]
    failed = metric(env, "rpcgate_upgrades_total", 'result="failed"')
    pause_max = metric(env, "rpcgate_upgrade_pause_max_seconds")
    pause_sum = metric(env, "rpcgate_upgrade_pause_seconds_sum")
    pause_n = metric(env, "rpcgate_upgrade_pause_seconds_count")
    pause = (f"pause per moved connection: mean {1000 * pause_sum / max(pause_n, 1):.2f} ms, "
             f"max {1000 * pause_max:.2f} ms")
    return fate[0], fate[1], fate[2], failed, pause


def run_load(argv):
    rpcgate, bench, make_certs = argv[:3]
    upgrades = int(argv[3]) if len(argv) > 3 else 10
    env = tracked_env("upgrade-load", rpcgate, bench)
    exits = Exits()
    conns = 64
    try:
        pid = start(env, conns)
        b = start_bench(env, "--connections", str(conns), "--depth", "2", "--size", "64",
                        "--size-max", "65536", "--verify")
        wait_until(START, lambda: load_flowing(env, conns, 1000), "the load to flow")
        # Beside the load, new connections all along (connect, NULL, close):
        # none may be refused or lost while the listeners change hands.
        churn = {"ok": 0, "failed": [], "stop": False}

        def connect_loop():
            xid = 0
            while not churn["stop"]:
                xid += 1
                try:
                    c = harness.Conn(env.gw_port, timeout=30)
                    c.send(harness.frame(harness.call_body(xid, harness.PROC_NULL)))
                    rx, ok, _ = harness.parse_reply(c.record())
                    c.close()
                    if rx == xid and ok:
                        churn["ok"] += 1
                    else:
                        churn["failed"].append(f"call {xid}: reply {rx}, accepted {ok}")
                except (OSError, harness.Closed, Failure) as e:
                    churn["failed"].append(f"connection {xid}: {e!r}")
                time.sleep(0.005)

        churner = threading.Thread(target=connect_loop, daemon=True)
        churner.start()
        t_all = time.monotonic()
        pid, times = upgrade_under_load(env, exits, pid, upgrades, conns)
        churn["stop"] = True
        churner.join(60)
        check(not churn["failed"], f"{len(churn['failed'])} of {churn['ok'] + len(churn['failed'])} "
              f"new connections failed during the upgrades: {churn['failed'][:5]}")
        check(churn["ok"] > 0, "no new connection was made during the upgrades")
        moved, _, closed, failed, pause = upgrade_outcome(env)
        r = bench_report(env, b)
        log(f"{upgrades} upgrades in {time.monotonic() - t_all:.1f} s (each {min(times):.2f}-"
            f"{max(times):.2f} s, signal to old exit); moved {moved:.0f}, closed {closed:.0f}; "
            f"{pause}; bench: {r['calls']} calls, errors {r['errors']}, "
            f"p99.9 {r['p999_us']} us, max {r['max_us']} us; {churn['ok']} new connections "
            f"beside it, none refused")
        check(r["errors"] == 0, f"the bench saw errors: {json.dumps(r)[:600]}")
        check(r["calls"] > 0, "the bench completed no call")
        check(failed == 0, f"{failed} upgrade(s) failed: " + env.gw.tail())
        check(closed == 0, f"{closed} connection(s) closed by the upgrades")
        check(moved >= conns * upgrades,
              f"moved {moved} connections, expected at least {conns} x {upgrades}")
        sanitizer_clean(env)
    finally:
        kill_all()
        exits.reap()
    return 0


def burst(port, n, first_xid, seconds):
    """n new connections at once, a NULL call sent on each, then each reply
    awaited until one deadline `seconds` away: what failed, as text."""
    deadline = time.monotonic() + seconds
    conns, failed = [], []
    for k in range(n):
        xid = first_xid + k
        try:
            c = harness.Conn(port, timeout=seconds)
            c.send(harness.frame(harness.call_body(xid, harness.PROC_NULL)))
            conns.append((xid, c))
        except (OSError, harness.Closed) as e:
            failed.append(f"connection {xid}: {e!r}")
    for xid, c in conns:
        try:
            c.raw.settimeout(max(0.1, deadline - time.monotonic()))
            rx, ok, _ = harness.parse_reply(c.record())
            if rx != xid or not ok:
                failed.append(f"call {xid}: reply {rx}, accepted {ok}")
        except (OSError, harness.Closed, Failure, struct.error) as e:
            failed.append(f"connection {xid}: {e!r}")
        finally:
            c.close()
    return failed


def log_has(env, text):
    with open(env.gw.logfile, errors="replace") as f:
        return text in f.read()


def run_accept(argv):
    """New connections at each phase of the hand-over of the listeners, each a
    burst of 8 (so that both shards' SO_REUSEPORT sockets get some) and then
    nothing until every one is answered: a connection left unanswered in an
    accept queue would wait for a later one to wake an accept up, and there
    is none.
      before    the old process alone;
      starting  the new binary runs but waits for the test's go (it is not
                ready): the old one still alone;
      busy      the new process is ready and accepts, the old one's shards
                are busy (RPCGATE_UPGRADE_BUSY_MS) before they stop
                accepting: io_uring gives each connection's wake-up to the
                old accept, armed first, which only takes it when its shard
                waits on the ring again; by then its accept is cancelled, so
                the old process must take what the queue still holds;
      moving    the old process stopped accepting and waits for a connection
                stuck inside a call (closed at --upgrade-drain-timeout);
      after     the old process is gone."""
    rpcgate, bench, make_certs = argv[:3]
    env = tracked_env("upgrade-accept", rpcgate, bench)
    exits = Exits()
    n, busy_ms, drain_ms, answer_s = 8, 6000, 5000, 20
    gate = os.path.join(env.work, "go")
    script = os.path.join(env.work, "new-rpcgate")
    # The new binary waits for the go (a file), at most a minute.
    write_script(script, f'i=0\nwhile [ ! -e "{gate}" ] && [ $i -lt 1200 ]; do sleep 0.05; '
                 f'i=$((i + 1)); done\nexec "{os.path.abspath(rpcgate)}" "$@"')
    figures = []

    def phase(name, first_xid):
        t0 = time.monotonic()
        failed = burst(env.gw_port, n, first_xid, answer_s)
        took = time.monotonic() - t0
        figures.append(f"{name} {1000 * took:.0f} ms")
        check(not failed, f"phase {name}: {len(failed)} of {n} new connections not answered "
              f"within {answer_s} s: {failed[:4]}")

    os.environ["RPCGATE_UPGRADE_BUSY_MS"] = str(busy_ms)
    try:
        pid = start(env, 0, "--upgrade-binary", script, drain_ms=drain_ms)
    finally:
        del os.environ["RPCGATE_UPGRADE_BUSY_MS"]
    try:
        before = total(env, "rpcgate_calls_forwarded_total")
        stuck = harness.Conn(env.gw_port)
        stuck.echo(1, b"before")
        whole = harness.echo_call(2, b"x" * 1000)
        stuck.send(whole[:500])  # half a call: the old process waits for it to the deadline
        wait_until(START, lambda: total(env, "rpcgate_calls_forwarded_total") >= before + 1,
                   "the stuck connection's first call")
        phase("before", 100)
        os.kill(pid, signal.SIGUSR2)
        new = new_pid_after(env, 1)
        phase("starting", 200)
        check(not log_has(env, "accepts on the"),
              "the new process was ready before the test's go")
        open(gate, "w").close()
        wait_until(START, lambda: log_has(env, "accepts on the"), "the new process to be ready")
        t_ready = time.monotonic()
        phase("busy", 300)
        wait_until(START, lambda: log_has(env, "accept queue, taken here"),
                   "the old process to take the connections left in its accept queues")
        check(not exits.gone(pid), "the old process exited before the phase `moving`")
        phase("moving", 400)
        check(not exits.gone(pid), "the old process exited during the phase `moving`")
        wait_until(START + drain_ms / 1000, lambda: exits.gone(pid), f"old pid {pid} to exit")
        t_exit = time.monotonic()
        st = exits.status.get(pid)
        check(st is None or (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0),
              f"old pid {pid} ended with status {st}: " + env.gw.tail())
        phase("after", 500)
        wait_until(START, lambda: metric_or(env, "rpcgate_upgrade_connections_total",
                                            'fate="closed"') == 1, "fate closed == 1")
        moved = metric(env, "rpcgate_upgrade_connections_total", 'fate="moved"')
        with open(env.gw.logfile, errors="replace") as f:
            taken = sum(int(m) for m in re.findall(r"(\d+) connection\(s\) left in a released "
                                                   r"listener's accept queue", f.read()))
        log(f"accept: {n} new connections per phase, every one answered ({', '.join(figures)}; "
            f"busy shards {busy_ms} ms); {taken} taken from the old accept queues and moved "
            f"({moved:.0f} moved in all); ready to old exit {t_exit - t_ready:.1f} s; "
            f"new pid {new}")
        check(moved >= taken, f"{taken} connections taken from the accept queues, {moved} moved")
        check(harness.rpc_null_ok(env.gw_port), "the new process does not answer")
        sanitizer_clean(env)
    finally:
        kill_all()
        exits.reap()
    return 0


def start_ganesha(state):
    """nfs-ganesha on free loopback ports (tests/peers/ganesha.sh): its
    variables, or None with the reason when it cannot run here (exit 77)."""
    script = os.path.join(HERE, "..", "peers", "ganesha.sh")
    subprocess.run([script, "stop", state], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run([script, "start", state], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=180)
    if r.returncode == harness.SKIP:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "ganesha.sh: 77"
    check(r.returncode == 0, f"ganesha.sh start exited {r.returncode}: {r.stderr[-2000:]}")
    return dict(line.split("=", 1) for line in r.stdout.split()), ""


def stop_ganesha(state):
    script = os.path.join(HERE, "..", "peers", "ganesha.sh")
    subprocess.run([script, "stop", state], stdout=subprocess.DEVNULL, timeout=120)


def same_file(a, b):
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def run_nfs(argv):
    """A libnfs client (nfs-cp, NFSv3, MOUNT and NFS through the gateway's
    port) copies a file in and out through the gateway to nfs-ganesha, again
    and again, while the bench's verifying load runs beside it (64
    connections, 64 B-64 KiB) and UPGRADES upgrades happen back to back,
    each one signalled while a copy is under way. Every copy must succeed
    and come back byte-identical (and the export's file too), the bench see
    no error, and no connection be closed by an upgrade. Skips (77) when
    nfs-cp or ganesha cannot run."""
    rpcgate, bench, make_certs = argv[:3]
    upgrades = int(argv[3]) if len(argv) > 3 else 10
    if not shutil.which("nfs-cp"):
        print("SKIP: nfs-cp is not installed (libnfs-utils)", flush=True)
        return harness.SKIP
    env = tracked_env("upgrade-nfs", rpcgate, bench)
    state = argv[4] if len(argv) > 4 else os.path.join(env.work, "ganesha")
    exits = Exits()
    conns, size = 64, 16 << 20
    max_copies, copy_s = 200, 300
    g = None
    try:
        g, why = start_ganesha(state)
        if g is None:
            print(f"SKIP: nfs-ganesha cannot run here: {why}", flush=True)
            return harness.SKIP
        pid = start(env, conns, "--backend", f"nfs=127.0.0.1:{g['NFS_PORT']}",
                    "--backend", f"mount=127.0.0.1:{g['MNT_PORT']}")
        src = os.path.join(env.work, "src.bin")
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        b = start_bench(env, "--connections", str(conns), "--depth", "2", "--size", "64",
                        "--size-max", "65536", "--verify")
        wait_until(START, lambda: load_flowing(env, conns, 1000), "the load to flow")

        def url(name):
            return (f"nfs://127.0.0.1{g['EXPORT']}/{name}?nfsport={env.gw_port}"
                    f"&mountport={env.gw_port}")

        copy = {"done": 0, "bytes": 0, "errors": [], "stop": False, "busy": 0, "spans": []}

        def copier():
            t_end = time.monotonic() + copy_s
            back = os.path.join(env.work, "back.bin")
            for i in range(max_copies):
                if copy["stop"] or time.monotonic() > t_end:
                    return
                name = f"copy-{i}.bin"
                t0 = time.monotonic()
                for what, cmd in (("in", [src, url(name)]), ("out", [url(name), back])):
                    copy["busy"] = 1
                    try:
                        p = subprocess.run(["nfs-cp", *cmd], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True, timeout=240)
                        err = p.stderr.strip()[-300:] if p.returncode else ""
                        if p.returncode:
                            err = f"exit {p.returncode}: {err}"
                    except subprocess.TimeoutExpired:
                        err = "no end after 240 s"
                    copy["busy"] = 0
                    if err:
                        copy["errors"].append(f"copy {i} {what}: nfs-cp {err}")
                        return
                copy["spans"].append((t0, time.monotonic()))
                exported = os.path.join(g["EXPORT_DIR"], name)
                if not same_file(src, back) or not same_file(src, exported):
                    copy["errors"].append(f"copy {i}: the bytes differ (read back: "
                                          f"{same_file(src, back)}, on the export: "
                                          f"{same_file(src, exported)})")
                    return
                copy["done"] += 1
                copy["bytes"] += 2 * size
                for f in (back, exported):
                    os.remove(f)

        copier_thread = threading.Thread(target=copier, daemon=True)
        copier_thread.start()
        t_all = time.monotonic()
        times, marks = [], []
        for i in range(1, upgrades + 1):
            # Each upgrade while nfs-cp runs (a copy in flight, in or out).
            wait_until(START, lambda: copy["busy"] or copy["errors"] or
                       not copier_thread.is_alive(), f"a copy under way for upgrade {i}")
            check(not copy["errors"], f"before upgrade {i}: {copy['errors']}")
            check(copier_thread.is_alive(), f"the copies ended before upgrade {i} "
                  f"({copy['done']} made, bounded by {max_copies} and {copy_s} s)")
            t0 = time.monotonic()
            pid, took = upgrade_once(env, exits, pid, i)
            times.append(took)
            marks.append((t0, time.monotonic()))
            before = total(env, "rpcgate_calls_forwarded_total")
            wait_until(START, lambda: load_flowing(env, conns, before + 100),
                       f"calls to flow on {conns} connections after upgrade {i}")
        # The copy under way when the upgrades ended finishes (and is checked).
        copy["stop"] = True
        copier_thread.join(copy_s)
        check(not copier_thread.is_alive(), "the last copy did not end")
        closed = metric(env, "rpcgate_upgrade_connections_total", 'fate="closed"')
        failed = metric(env, "rpcgate_upgrades_total", 'result="failed"')
        pause_max = metric(env, "rpcgate_upgrade_pause_max_seconds")
        r = bench_report(env, b)
        # Each old process's last line: what it moved, drained and closed.
        with open(env.gw.logfile, errors="replace") as f:
            fates = [tuple(int(x) for x in m) for m in re.findall(
                r"upgrade complete: pid \d+ serves now; moved (\d+), drained (\d+), closed (\d+)",
                f.read())]
        moved_each = [m for m, _, _ in fates]
        crossed = sum(1 for u0, u1 in marks if any(c0 < u1 and u0 < c1
                                                  for c0, c1 in copy["spans"]))
        log(f"nfs: {upgrades} upgrades in {time.monotonic() - t_all:.1f} s (each "
            f"{', '.join(f'{t:.2f}' for t in times)} s, signal to old exit); moved per upgrade "
            f"{', '.join(str(m) for m in moved_each)} ({conns} bench connections + nfs-cp's), "
            f"drained {sum(d for _, d, _ in fates)}, "
            f"closed {closed:.0f}, pause max {1000 * pause_max:.1f} ms; nfs-cp: {copy['done']} "
            f"copies of {size >> 20} MiB in and out, {copy['bytes'] / 2**20:.0f} MiB, all "
            f"identical, {crossed} of {upgrades} upgrades during a copy, errors "
            f"{len(copy['errors'])}; bench: {r['calls']} calls, errors {r['errors']}")
        check(not copy["errors"], f"nfs-cp through the upgrades: {copy['errors']}")
        check(copy["done"] > 0, "no copy completed")
        check(crossed == upgrades, f"only {crossed} of {upgrades} upgrades during a copy")
        check(r["errors"] == 0, f"the bench saw errors: {json.dumps(r)[:600]}")
        check(failed == 0, f"{failed} upgrade(s) failed: " + env.gw.tail())
        check(closed == 0, f"{closed} connection(s) closed by the upgrades")
        check(len(fates) == upgrades, f"{len(fates)} 'upgrade complete' lines for {upgrades}")
        check(all(m >= conns and c == 0 for m, _, c in fates),
              f"an upgrade moved fewer than the bench's {conns} connections or closed some: "
              f"(moved, drained, closed) {fates}")
        sanitizer_clean(env)
    finally:
        if g is not None:
            stop_ganesha(state)
        kill_all()
        exits.reap()
    return 0


def run_tls(argv):
    rpcgate, bench, make_certs = argv[:3]
    env = tracked_env("upgrade-tls", rpcgate, bench, make_certs)
    exits = Exits()
    conns = 16
    try:
        pid = start(env, conns, "--tls-record-layer", "openssl", tls=True)
        b = start_bench(env, "--connections", str(conns), "--depth", "1", "--size", "64",
                        "--size-max", "16384", "--verify", "--tls", "starttls",
                        "--ca", f"{env.certs}/ca.pem", "--server-name", "localhost")
        wait_until(START, lambda: load_flowing(env, conns, 500), "the TLS load to flow")
        t0 = time.monotonic()
        status, body = post(env, "/upgrade")
        check(status == 202, f"POST /upgrade answered {status}: {body}")
        new = new_pid_after(env, 1)
        wait_until(START + UPGRADE_MS / 1000, lambda: exits.gone(pid), f"old pid {pid} to exit")
        st = exits.status.get(pid)
        check(st is None or (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0),
              f"old pid {pid} ended with status {st}: " + env.gw.tail())
        took = time.monotonic() - t0
        # The old process's last word (what it drained) reaches the new one.
        wait_until(START, lambda: metric_or(env, "rpcgate_upgrade_connections_total",
                                            'fate="drained"') + metric_or(
            env, "rpcgate_upgrade_connections_total", 'fate="closed"') >= conns,
                   "the old process's drained/closed counts")
        drained = metric(env, "rpcgate_upgrade_connections_total", 'fate="drained"')
        closed = metric(env, "rpcgate_upgrade_connections_total", 'fate="closed"')
        moved = metric(env, "rpcgate_upgrade_connections_total", 'fate="moved"')
        # Every bench connection was closed by the server: the bench ends.
        r = bench_report(env, b)
        log(f"TLS upgrade: {took:.2f} s to the old exit; drained {drained:.0f}, closed "
            f"{closed:.0f}, moved {moved:.0f}; bench: {r['calls']} calls, lost {r['lost_calls']}, "
            f"TLS errors {r['tls_errors']}, errors {r['errors']}")
        check(os.path.exists(f"/proc/{new}"), f"new pid {new} is not running")
        check(moved == 0 and closed == 0 and drained == conns,
              f"expected {conns} drained, none moved or closed: drained {drained}, moved {moved}, "
              f"closed {closed}")
        for k in ("timeouts", "rpc_errors", "bad_replies", "connect_errors"):
            check(r[k] == 0, f"bench {k} = {r[k]}: {json.dumps(r)[:600]}")
        # Each connection ends once, at a call boundary, and loses exactly
        # one call: the one it wrote right after the reply that made the
        # gateway idle (or its next one). When the reply and the close_notify
        # came in one read, the bench writes that call before it looks at
        # the close (load_client.cc flushes before it checks for `closed`)
        # and counts the refused write as a TLS error as well. A close inside
        # a call would show as a bad reply, a timeout or a second lost call.
        check(r["lost_calls"] == conns,
              f"bench lost {r['lost_calls']} calls, expected one per connection closed ({conns})")
        check(r["tls_errors"] <= conns, f"bench saw {r['tls_errors']} TLS errors on {conns} "
              "connections: more than the one refused write each")
        check(r["calls"] > 0, "the bench completed no call")
        # The new process serves: a fresh TLS connection works.
        c = harness.Conn(env.gw_port, "starttls", ca=env.ca)
        try:
            c.echo(7, b"after the upgrade")  # checks the bytes that come back
        finally:
            c.close()
        sanitizer_clean(env)
    finally:
        kill_all()
        exits.reap()
    return 0


def run_tls_move(argv):
    rpcgate, bench, make_certs = argv[:3]
    upgrades = int(argv[3]) if len(argv) > 3 else 10
    env = tracked_env("upgrade-tls-move", rpcgate, bench, make_certs)
    exits = Exits()
    starttls, implicit = 12, 4
    conns = starttls + implicit
    try:
        env.tls_port = harness.free_port()
        pid = start(env, conns, "--implicit-tls", f"127.0.0.1:{env.tls_port}",
                    "--tls-rekey-after", "64", tls=True)
        common = ["--depth", "2", "--size", "64", "--size-max", "65536", "--verify",
                  "--ca", f"{env.certs}/ca.pem", "--server-name", "localhost"]
        b1 = start_bench(env, "--connections", str(starttls), "--tls", "starttls", *common)
        b2 = env.start([env.bench, "run", "--target", f"127.0.0.1:{env.tls_port}", "--json",
                        "--duration", "600", "--timeout", "30", "--connections", str(implicit),
                        "--tls", "implicit", *common], "bench-implicit")
        wait_until(START, lambda: load_flowing(env, conns, 500), "the TLS load to flow")
        t_all = time.monotonic()
        pid, times = upgrade_under_load(env, exits, pid, upgrades, conns)
        # The gateway changes its TX key every 64 records (--tls-rekey-after):
        # the moved sessions did so in this process too, from keys derived in
        # the old ones, and the bench read every byte after them.
        rekeys = total(env, "rpcgate_tls_rekeys_tx_own_total")
        check(rekeys >= 0, "no rpcgate_tls_rekeys_tx_own_total in /metrics")
        wait_until(START, lambda: total(env, "rpcgate_tls_rekeys_tx_own_total") > rekeys,
                   "a KeyUpdate of a moved session in the last process")
        moved, drained, closed, failed, pause = upgrade_outcome(env)
        r1, r2 = bench_report(env, b1), bench_report(env, b2)
        log(f"{upgrades} upgrades under TLS load in {time.monotonic() - t_all:.1f} s (each "
            f"{min(times):.2f}-{max(times):.2f} s); moved {moved:.0f}, drained {drained:.0f}, "
            f"closed {closed:.0f}; {pause}; "
            f"STARTTLS bench: {r1['calls']} calls, connects {r1['connects']}, p99.9 "
            f"{r1['p999_us']} us; implicit-TLS bench: {r2['calls']} calls, connects "
            f"{r2['connects']}")
        for name, r, n in (("STARTTLS", r1, starttls), ("implicit-TLS", r2, implicit)):
            for k in ("errors", "lost_calls", "tls_errors", "timeouts", "rpc_errors",
                      "bad_replies", "connect_errors", "reconnects"):
                check(r.get(k, 0) == 0, f"{name} bench {k} = {r.get(k)}: {json.dumps(r)[:600]}")
            check(r["connects"] == n, f"{name} bench connected {r['connects']} times for {n} "
                  "connections: a connection was lost")
            check(r["calls"] > 0, f"the {name} bench completed no call")
        check(failed == 0, f"{failed} upgrade(s) failed: " + env.gw.tail())
        check(drained == 0 and closed == 0,
              f"TLS connections drained ({drained}) or closed ({closed}) instead of moving")
        check(moved >= conns * upgrades,
              f"moved {moved} connections, expected at least {conns} x {upgrades}")
        sanitizer_clean(env)
    finally:
        kill_all()
        exits.reap()
    return 0


def run_systemd(argv):
    """The notify protocol across an upgrade: the new process says
    MAINPID=<its pid> and READY=1 (from its own pid), the old one
    MAINPID=<new pid> and never STOPPING=1 (the service did not stop)."""
    rpcgate, bench, make_certs = argv[:3]
    env = tracked_env("upgrade-systemd", rpcgate, bench)
    exits = Exits()
    path = os.path.join(env.work, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.settimeout(START)
    msgs = []  # (sender pid, text)

    def until(pred, what):
        end = time.monotonic() + START
        while not pred():
            if time.monotonic() > end:
                raise Failure(f"timed out waiting for {what}; got {msgs}")
            data, anc, _, _ = s.recvmsg(256, socket.CMSG_SPACE(12))
            pid = None
            for level, kind, blob in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", blob[:12])[0]
            msgs.append((pid, data.decode()))

    try:
        os.environ["NOTIFY_SOCKET"] = path
        try:
            pid = start(env, 0)
        finally:
            del os.environ["NOTIFY_SOCKET"]
        until(lambda: (pid, "READY=1") in msgs, "READY=1 from the first process")
        os.kill(pid, signal.SIGUSR2)
        new = new_pid_after(env, 1)
        until(lambda: (new, f"MAINPID={new}\nREADY=1") in msgs and
              (pid, f"MAINPID={new}") in msgs, "MAINPID and READY from both processes")
        wait_until(START, lambda: exits.gone(pid), f"old pid {pid} to exit")
        s.settimeout(0.5)
        try:
            until(lambda: False, "")
        except (socket.timeout, Failure):
            pass
        check(not any(t.startswith("STOPPING") for _, t in msgs),
              f"a STOPPING=1 during the upgrade: {msgs}")
        log(f"notify messages: {msgs}")
        check(harness.rpc_null_ok(env.gw_port), "the new process does not answer")
    finally:
        kill_all()
        exits.reap()
    return 0


def run_stuck(argv):
    """A plaintext connection that never reaches a record boundary (half a
    call sent, then silence) cannot move: at --upgrade-drain-timeout it is
    closed, counted as closed; an idle one beside it moves and works."""
    rpcgate, bench, make_certs = argv[:3]
    env = tracked_env("upgrade-stuck", rpcgate, bench)
    exits = Exits()
    try:
        pid = start(env, 2, drain_ms=2000)
        before = total(env, "rpcgate_calls_forwarded_total")
        idle = harness.Conn(env.gw_port)
        idle.echo(1, b"before")
        stuck = harness.Conn(env.gw_port)
        stuck.echo(2, b"before")
        whole = harness.echo_call(3, b"x" * 1000)
        stuck.send(whole[:500])  # half a call: never a boundary
        wait_until(START, lambda: total(env, "rpcgate_calls_forwarded_total") == before + 2,
                   "the two first calls")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGUSR2)
        new = new_pid_after(env, 1)
        wait_until(START + 10, lambda: exits.gone(pid), f"old pid {pid} to exit")
        took = time.monotonic() - t0
        check(took >= 1.5, f"the old process exited after {took:.2f} s, before the 2 s deadline")
        wait_until(START, lambda: metric_or(env, "rpcgate_upgrade_connections_total",
                                            'fate="closed"') == 1, "fate closed == 1")
        check(metric(env, "rpcgate_upgrade_connections_total", 'fate="moved"') == 1,
              "the idle connection did not move")
        idle.echo(4, b"after the upgrade")
        try:
            stuck.send(whole[500:])
            stuck.record()
            raise Failure("the stuck connection was answered after the deadline")
        except (harness.Closed, OSError):
            pass
        log(f"stuck: the old process exited {took:.2f} s after SIGUSR2 (deadline 2 s); "
            f"new pid {new}; 1 moved, 1 closed")
        sanitizer_clean(env)
    finally:
        kill_all()
        exits.reap()
    return 0


def run_hang(argv):
    """A new binary that never answers: at --upgrade-timeout (here 2 s) it
    is killed and reaped, the upgrade counts as failed, and the old process
    serves on with the same connections."""
    rpcgate, bench, make_certs = argv[:3]
    env = tracked_env("upgrade-hang", rpcgate, bench)
    exits = Exits()
    conns = 8
    script = os.path.join(env.work, "new-rpcgate")
    write_script(script, "exec sleep 600")
    try:
        pid = start(env, conns, "--upgrade-binary", script, timeout_ms=2000)
        b = start_bench(env, "--connections", str(conns), "--depth", "1", "--size", "64",
                        "--verify")
        wait_until(START, lambda: load_flowing(env, conns, 200), "the load to flow")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGUSR2)
        wait_until(START, lambda: metric_or(env, "rpcgate_upgrades_total", 'result="failed"') == 1,
                   "rpcgate_upgrades_total{result=\"failed\"} == 1")
        took = time.monotonic() - t0
        check(took >= 1.5, f"failed after {took:.2f} s, before the 2 s timeout")
        check(not any("sleep" in open(f"/proc/{p}/cmdline").read() for p in descendants()
                      if os.path.exists(f"/proc/{p}/cmdline")),
              "the hung new binary was left running")
        before = total(env, "rpcgate_calls_forwarded_total")
        wait_until(START, lambda: load_flowing(env, conns, before + 100),
                   "the same connections to carry calls")
        r = bench_report(env, b)
        log(f"hang: failed after {took:.2f} s (timeout 2 s); bench {r['calls']} calls, "
            f"errors {r['errors']}")
        check(r["errors"] == 0, f"the bench saw errors: {json.dumps(r)[:600]}")
        with open(env.gw.logfile, errors="replace") as f:
            check("did not answer within 2000 ms" in f.read(), "no log line naming the timeout")
        sanitizer_clean(env)
    finally:
        kill_all()
        exits.reap()
    return 0


def write_script(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("#!/bin/sh\n" + text + "\n")
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


def run_refused(argv):
    rpcgate, bench, make_certs = argv[:3]
    env = tracked_env("upgrade-refused", rpcgate, bench)
    exits = Exits()
    conns = 16
    script = os.path.join(env.work, "new-rpcgate")
    write_script(script, "exit 1")
    try:
        pid = start(env, conns, "--upgrade-binary", script)
        b = start_bench(env, "--connections", str(conns), "--depth", "2", "--size", "64",
                        "--size-max", "8192", "--verify")
        wait_until(START, lambda: load_flowing(env, conns, 500), "the load to flow")
        cases = [("a new binary that exits 1", "exit 1", "sigusr2"),
                 ("an incompatible hand-off version",
                  f'RPCGATE_UPGRADE_WIRE_VERSION=99 exec "{os.path.abspath(rpcgate)}" "$@"', "post")]
        for i, (what, text, trigger) in enumerate(cases, 1):
            write_script(script, text)
            before = total(env, "rpcgate_calls_forwarded_total")
            if trigger == "sigusr2":
                os.kill(pid, signal.SIGUSR2)
            else:
                status, body = post(env, "/upgrade")
                check(status == 202, f"POST /upgrade answered {status}: {body}")
            wait_until(START + UPGRADE_MS / 1000,
                       lambda: metric_or(env, "rpcgate_upgrades_total", 'result="failed"') == i,
                       f"{what}: rpcgate_upgrades_total{{result=\"failed\"}} == {i}")
            check(not exits.gone(pid), f"{what}: the gateway exited: " + env.gw.tail())
            check(metric(env, "rpcgate_upgrades_total", 'result="completed"') == 0,
                  f"{what}: counted as completed")
            wait_until(START, lambda: load_flowing(env, conns, before + 100),
                       f"{what}: the same {conns} connections to carry calls")
        # The refused binaries are reaped by the gateway, not left behind.
        for p in descendants():
            try:
                with open(f"/proc/{p}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            check(state != "Z", f"a zombie (pid {p}) under the test")
        with open(env.gw.logfile, errors="replace") as f:
            text = f.read()
        check("exited with status 1" in text, "no log line saying the new binary exited with 1")
        check("hand-off format version 99" in text,
              "no log line naming the incompatible hand-off version")
        r = bench_report(env, b)
        log(f"2 refused upgrades; bench: {r['calls']} calls, errors {r['errors']}")
        check(r["errors"] == 0, f"the bench saw errors: {json.dumps(r)[:600]}")
        check(env.gw.alive(), "the gateway exited")
        sanitizer_clean(env)
    finally:
        kill_all()
        exits.reap()
    return 0


def with_log(test):
    """On a failure, the gateway log's last lines (the work dir goes with the test)."""
    def run(argv):
        try:
            return test(argv)
        except Failure:
            for p in harness.Env.last.procs if harness.Env.last else []:
                log(f"---- {os.path.basename(p.logfile)} (last lines)\n{p.tail(60)}")
            raise
    return run


class tracked_env(harness.Env):
    last = None

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        harness.Env.last = self


if __name__ == "__main__":
    become_subreaper()
    harness.Env.last = None
    sys.exit(harness.main({"load": with_log(run_load), "tls": with_log(run_tls),
                           "tls_move": with_log(run_tls_move),
                           "accept": with_log(run_accept), "nfs": with_log(run_nfs),
                           "refused": with_log(run_refused), "systemd": with_log(run_systemd),
                           "stuck": with_log(run_stuck), "hang": with_log(run_hang)}))
