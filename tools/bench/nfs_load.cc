#include "tools/bench/nfs_load.h"

#include <fmt/format.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "rpc/portmap.h"
#include "tls/client/blocking_client.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/load_client.h"
#include "tools/bench/nfs4_protocol.h"

namespace rpcgate::bench {
namespace {

using std::chrono::milliseconds;

constexpr uint32_t k_fill_chunk = 1024 * 1024;
constexpr uint64_t k_default_file_size = 16 * 1024 * 1024;
constexpr uint32_t k_create_mode = 0644;
constexpr uint16_t k_portmap_port = 111;
// NFSv4.1 sessions: room for the COMPOUND around READ's or WRITE's data.
constexpr uint32_t k_v4_headroom = 8192;

// What the set-up found, shared read-only by the connection threads (the
// cursors and the call budget are atomic).
struct shared_run {
    const nfs_options& opt;
    const tls::context* ctx = nullptr;
    rpc::opaque_auth cred;
    nfs3::file_handle root, fh;
    nfs4::file_handle dir4, fh4;  // --nfs-version 4.1
    std::string owner;            // NFSv4.1 client owners: this + the connection
    uint64_t file_size = 0;
    uint64_t slots = 1;  // size-aligned offsets in the file
    unsigned mix_total = 0;
    uint64_t end_ns = UINT64_MAX;
    const std::atomic<bool>* stop = nullptr;
    std::vector<uint8_t> write_block;  // WRITE payload without --verify
    std::atomic<uint64_t> issued{0};
    std::atomic<uint64_t> cursor[2] = {0, 0};  // sequential READ, WRITE

    explicit shared_run(const nfs_options& o) : opt(o) {}

    bool may_issue(uint64_t now) {
        if (stop && stop->load(std::memory_order_relaxed)) return false;
        if (now >= end_ns) return false;
        return opt.calls == 0 || issued.fetch_add(1, std::memory_order_relaxed) < opt.calls;
    }
    nfs_op pick(rng& g) const {
        uint64_t x = g.below(mix_total);
        for (unsigned i = 0; i < nfs_op_count; ++i) {
            if (x < opt.mix[i]) return nfs_op(i);
            x -= opt.mix[i];
        }
        return nfs_op::read;
    }
    uint64_t offset(nfs_op op, rng& g) {
        uint64_t k =
            opt.random
                ? g.below(slots)
                : cursor[op == nfs_op::write].fetch_add(1, std::memory_order_relaxed) % slots;
        return k * opt.size;
    }
};

// One connection's figures: the thread's own, merged after the join; `live`
// (under `mu`) and the atomics are for the progress lines.
struct conn_result {
    std::mutex mu;
    latency_histogram live;
    std::atomic<uint64_t> calls{0}, errors{0};
    std::atomic<bool> done{false};
    uint64_t connect_errors = 0, lost_calls = 0, rpc_errors = 0, nfs_errors = 0;
    uint64_t bad_replies = 0, mismatched_reads = 0, mismatched_bytes = 0;
    uint64_t bytes_read = 0, bytes_written = 0;
    uint64_t op_calls[nfs_op_count] = {};
    latency_histogram op_latency[nfs_op_count];
    uint64_t first_send_ns = UINT64_MAX, last_reply_ns = 0;
    std::string tls_version, tls_cipher, first_error;

    void error(uint64_t* counter, const std::string& why, uint64_t n = 1) {
        *counter += n;
        errors.fetch_add(n, std::memory_order_relaxed);
        if (first_error.empty()) first_error = why;
    }
};

// A call in flight.
struct pending {
    bool busy = false;
    nfs_op op = nfs_op::null;
    uint32_t xid = 0;
    uint64_t offset = 0;
    uint64_t sent_ns = 0;
};

client::blocking_client open_conn(const nfs_options& opt, const tls::context* ctx, uint16_t port,
                                  uint32_t prog, uint32_t vers,
                                  std::optional<client::tls_mode> mode = std::nullopt) {
    return client::blocking_client::open(opt.host, port, mode.value_or(opt.tls), prog, vers, ctx,
                                         milliseconds(opt.timeout_ms));
}

std::string conn_error(const client::blocking_client& c, const char* what) {
    return fmt::format("{}: {}: {}", what, client::to_string(c.failed_at()), c.error());
}

// MOUNT's port: given, or portmap's answer.
bool mount_port(const nfs_options& opt, uint16_t* port, std::string* err) {
    if (opt.mount_port) {
        *port = opt.mount_port;
        return true;
    }
    client::blocking_client c =
        client::blocking_client::open(opt.host, k_portmap_port, client::tls_mode::off, 0, 0,
                                      nullptr, milliseconds(opt.timeout_ms));
    if (!c.ok()) {
        *err = conn_error(c, "portmap");
        return false;
    }
    rpc::pmap_mapping m;
    m.prog = nfs3::mount_prog;
    m.vers = nfs3::mount_vers;
    core::slice_chain res;
    std::string why;
    if (!nfs3::exchange(c, rpc::build_getport_call(1, m), opt.timeout_ms, &res, &why)) {
        *err = "portmap GETPORT of MOUNT v3: " + why;
        return false;
    }
    auto p = rpc::decode_getport_result(res);
    if (!p || *p == 0 || *p > 65535) {
        *err = "portmap: MOUNT v3 over TCP is not registered (give --mount-port)";
        return false;
    }
    *port = uint16_t(*p);
    return true;
}

bool status_ok(uint32_t st, const char* what, std::string* err) {
    if (st == nfs3::nfs3_ok) return true;
    *err = st == nfs3::malformed ? fmt::format("{}: malformed reply", what)
                                 : fmt::format("{}: status {}", what, st);
    return false;
}

// The part of the file that offsets cover.
void size_file(shared_run& s, uint64_t size) {
    const nfs_options& opt = s.opt;
    s.file_size = opt.file_size ? opt.file_size : size >= opt.size ? size : k_default_file_size;
    s.slots = std::max<uint64_t>(1, s.file_size / opt.size);
}

// --fill: the pattern over the file in chunks, then a COMMIT. `write(offset,
// data, &written)` and `commit()` make one call each and return its status
// (nfs3::malformed with `err` set when the call itself failed).
template <typename Write, typename Commit>
bool fill(const shared_run& s, Write&& write, Commit&& commit, std::string* err) {
    std::vector<uint8_t> chunk(std::min<uint64_t>(k_fill_chunk, s.file_size));
    for (uint64_t off = 0; off < s.file_size; off += chunk.size()) {
        const size_t n = size_t(std::min<uint64_t>(chunk.size(), s.file_size - off));
        nfs3::fill_pattern(off, {chunk.data(), n});
        core::slice_chain data;
        data.push_back(core::slice::unowned(chunk.data(), n));
        uint32_t written = 0;
        const uint32_t st = write(off, std::move(data), &written);
        if (st != nfs3::nfs3_ok && !err->empty()) return false;
        if (!status_ok(st, "WRITE (--fill)", err)) return false;
        if (written != n) {
            *err = fmt::format("WRITE (--fill): {} of {} bytes written", written, n);
            return false;
        }
    }
    const uint32_t st = commit();
    if (st != nfs3::nfs3_ok && !err->empty()) return false;
    return status_ok(st, "COMMIT (--fill)", err);
}

// MNT, LOOKUP/CREATE, the file's size, and --fill.
bool set_up(shared_run& s, std::string* err) {
    const nfs_options& opt = s.opt;
    uint16_t mport = 0;
    if (!mount_port(opt, &mport, err)) return false;
    core::slice_chain res;
    std::string why;
    {
        client::blocking_client m =
            open_conn(opt, s.ctx, mport, nfs3::mount_prog, nfs3::mount_vers, opt.mount_tls);
        if (!m.ok()) {
            *err = conn_error(m, "MOUNT connection");
            return false;
        }
        if (!nfs3::exchange(m, nfs3::build_mnt(1, s.cred, opt.export_path), opt.timeout_ms, &res,
                            &why)) {
            *err = "MNT: " + why;
            return false;
        }
        if (!status_ok(nfs3::decode_mnt(res, &s.root), ("MNT " + opt.export_path).c_str(), err))
            return false;
        m.close();
    }
    client::blocking_client c = open_conn(opt, s.ctx, opt.port, rpc::nfs_prog, nfs3::nfs_vers);
    if (!c.ok()) {
        *err = conn_error(c, "NFS connection");
        return false;
    }
    uint32_t xid = 1;
    auto call = [&](core::slice_chain&& rec, const char* what) {
        if (nfs3::exchange(c, std::move(rec), opt.timeout_ms, &res, &why)) return true;
        *err = fmt::format("{}: {}", what, why);
        return false;
    };
    if (!call(nfs3::build_lookup(xid++, s.cred, s.root, opt.file), "LOOKUP")) return false;
    uint64_t size = 0;
    uint32_t st = nfs3::decode_lookup(res, &s.fh, &size);
    if (st == nfs3::nfs3err_noent) {
        if (!call(nfs3::build_create(xid++, s.cred, s.root, opt.file, k_create_mode), "CREATE"))
            return false;
        bool has_fh = false;
        if (!status_ok(nfs3::decode_create(res, &s.fh, &has_fh), "CREATE", err)) return false;
        st = nfs3::nfs3_ok;
        if (!has_fh) {
            if (!call(nfs3::build_lookup(xid++, s.cred, s.root, opt.file), "LOOKUP")) return false;
            st = nfs3::decode_lookup(res, &s.fh, &size);
        }
    }
    if (!status_ok(st, "LOOKUP", err)) return false;
    if (!call(nfs3::build_getattr(xid++, s.cred, s.fh), "GETATTR")) return false;
    if (!status_ok(nfs3::decode_getattr(res, &size), "GETATTR", err)) return false;
    size_file(s, size);
    if (!opt.fill) return true;
    return fill(
        s,
        [&](uint64_t off, core::slice_chain&& data, uint32_t* written) {
            return call(nfs3::build_write(xid++, s.cred, s.fh, off, nfs3::stable_how::unstable,
                                          std::move(data)),
                        "WRITE (--fill)")
                       ? nfs3::decode_write(res, written)
                       : nfs3::malformed;
        },
        [&] {
            return call(nfs3::build_commit(xid++, s.cred, s.fh), "COMMIT (--fill)")
                       ? nfs3::decode_commit(res)
                       : nfs3::malformed;
        },
        err);
}

// NFSv4.1: a session for the set-up, the handles by LOOKUP, and --fill.
bool set_up4(shared_run& s, std::string* err) {
    const nfs_options& opt = s.opt;
    client::blocking_client c = open_conn(opt, s.ctx, opt.port, rpc::nfs_prog, nfs4::nfs_vers);
    if (!c.ok()) {
        *err = conn_error(c, "NFS connection");
        return false;
    }
    nfs4::session sess;
    if (!nfs4::open_session(c, s.cred, s.owner + "-setup", 1, k_fill_chunk + k_v4_headroom,
                            opt.timeout_ms, &sess, err))
        return false;
    uint64_t size = 0;
    bool ok = nfs4::look_up(c, s.cred, sess, opt.export_path, opt.file, &s.dir4, &s.fh4, &size,
                            opt.timeout_ms, err) == nfs4::nfs4_ok;
    if (ok) size_file(s, size);
    if (ok)
        ok = nfs4::open_file(c, s.cred, sess, s.fh4, s.owner + "-setup", opt.timeout_ms, err) ==
             nfs4::nfs4_ok;
    core::slice_chain res;
    std::string why;
    auto call = [&](core::slice_chain&& rec) {
        if (nfs3::exchange(c, std::move(rec), opt.timeout_ms, &res, &why)) return true;
        *err = why;
        return false;
    };
    uint32_t xid = 100;
    if (ok && opt.fill)
        ok = fill(
            s,
            [&](uint64_t off, core::slice_chain&& data, uint32_t* written) {
                return call(nfs4::build_write(xid++, s.cred, sess, 0, s.fh4, off,
                                              nfs3::stable_how::unstable, std::move(data)))
                           ? nfs4::decode_write(res, written)
                           : nfs3::malformed;
            },
            [&] {
                return call(nfs4::build_commit(xid++, s.cred, sess, 0, s.fh4))
                           ? nfs4::decode_commit(res)
                           : nfs3::malformed;
            },
            err);
    (void)nfs4::close_file(c, s.cred, sess, s.fh4, opt.timeout_ms);
    nfs4::close_session(c, s.cred, sess, opt.timeout_ms);
    return ok;
}

// The call for `p`: NFSv3, or with `v4` a COMPOUND on session slot `slot`.
core::slice_chain build(shared_run& s, nfs4::session* v4, uint32_t slot, pending& p, uint32_t xid) {
    const nfs_options& opt = s.opt;
    switch (p.op) {
        case nfs_op::read:
            return v4 ? nfs4::build_read(xid, s.cred, *v4, slot, s.fh4, p.offset, opt.size)
                      : nfs3::build_read(xid, s.cred, s.fh, p.offset, opt.size);
        case nfs_op::write: {
            core::slice_chain data;
            if (opt.verify) {
                core::slice b = core::slice::allocate(opt.size);
                nfs3::fill_pattern(p.offset, {b.mutable_data(), opt.size});
                data.push_back(std::move(b));
            } else {
                data.push_back(core::slice::unowned(s.write_block.data(), opt.size));
            }
            return v4 ? nfs4::build_write(xid, s.cred, *v4, slot, s.fh4, p.offset, opt.stable,
                                          std::move(data))
                      : nfs3::build_write(xid, s.cred, s.fh, p.offset, opt.stable, std::move(data));
        }
        case nfs_op::getattr:
            return v4 ? nfs4::build_getattr(xid, s.cred, *v4, slot, s.fh4)
                      : nfs3::build_getattr(xid, s.cred, s.fh);
        case nfs_op::lookup:
            return v4 ? nfs4::build_lookup(xid, s.cred, *v4, slot, s.dir4, opt.file)
                      : nfs3::build_lookup(xid, s.cred, s.root, opt.file);
        case nfs_op::null:
            return v4 ? nfs4::build_null(xid, s.cred) : nfs3::build_null(xid, s.cred);
    }
    return {};
}

// A reply's status (both versions' OK is 0); READ's bytes and WRITE's count.
uint32_t decode_op(bool v4, nfs_op op, const core::slice_chain& res, uint32_t* count,
                   core::slice_chain* data) {
    bool eof = false;
    uint64_t size = 0;
    nfs3::file_handle fh;
    switch (op) {
        case nfs_op::read:
            return v4 ? nfs4::decode_read(res, count, &eof, data)
                      : nfs3::decode_read(res, count, &eof, data);
        case nfs_op::write:
            return v4 ? nfs4::decode_write(res, count) : nfs3::decode_write(res, count);
        case nfs_op::getattr:
            return v4 ? nfs4::decode_getattr(res, &size) : nfs3::decode_getattr(res, &size);
        case nfs_op::lookup:
            return v4 ? nfs4::decode_lookup(res) : nfs3::decode_lookup(res, &fh, &size);
        case nfs_op::null:
            break;
    }
    return res.empty() ? nfs3::nfs3_ok : nfs3::malformed;
}

// Checks one reply's results; true if the call succeeded.
bool check_reply(shared_run& s, const pending& p, const core::slice_chain& res, conn_result& cr) {
    const nfs_options& opt = s.opt;
    uint32_t count = 0;
    core::slice_chain data;
    const uint32_t st = decode_op(opt.v4, p.op, res, &count, &data);
    switch (st == nfs3::nfs3_ok ? p.op : nfs_op::null) {
        case nfs_op::read: {
            cr.bytes_read += count;
            if (!opt.verify) break;
            const uint64_t want =
                p.offset < s.file_size ? std::min<uint64_t>(opt.size, s.file_size - p.offset) : 0;
            uint64_t bad = nfs3::count_mismatches(p.offset, data);
            if (count < want) bad += want - count;
            if (bad) {
                cr.mismatched_bytes += bad;
                cr.error(&cr.mismatched_reads,
                         fmt::format("READ at {}: {} byte(s) differ from the pattern "
                                     "({} of {} read)",
                                     p.offset, bad, count, want));
            }
            return true;
        }
        case nfs_op::write:
            if (count != opt.size) {
                cr.error(&cr.bad_replies, fmt::format("WRITE at {}: {} of {} bytes written",
                                                      p.offset, count, opt.size));
                return false;
            }
            cr.bytes_written += count;
            break;
        default:
            break;
    }
    if (st == nfs3::malformed) {
        cr.error(&cr.bad_replies, fmt::format("{}: malformed reply", to_string(p.op)));
        return false;
    }
    if (st != nfs3::nfs3_ok) {
        cr.error(&cr.nfs_errors, fmt::format("{}: NFS status {}", to_string(p.op), st));
        return false;
    }
    return true;
}

// NFSv4.1, after the run: a COMMIT of this connection's writes (not timed)
// and the session's end.
void end_session(shared_run& s, client::blocking_client& c, nfs4::session& sess, bool wrote,
                 conn_result& cr) {
    core::slice_chain res;
    std::string why;
    if (wrote && s.opt.stable != nfs3::stable_how::file_sync) {
        if (!nfs3::exchange(c, nfs4::build_commit(1, s.cred, sess, 0, s.fh4), s.opt.timeout_ms,
                            &res, &why))
            cr.error(&cr.nfs_errors, "COMMIT: " + why);
        else if (uint32_t st = nfs4::decode_commit(res); st != nfs4::nfs4_ok)
            cr.error(&cr.nfs_errors, fmt::format("COMMIT: status {}", st));
    }
    if (uint32_t st = nfs4::close_file(c, s.cred, sess, s.fh4, s.opt.timeout_ms);
        st != nfs4::nfs4_ok)
        cr.error(&cr.nfs_errors, fmt::format("CLOSE: status {}", st));
    nfs4::close_session(c, s.cred, sess, s.opt.timeout_ms);
}

void run_conn(shared_run& s, unsigned index, conn_result& cr) {
    const nfs_options& opt = s.opt;
    client::blocking_client c =
        open_conn(opt, s.ctx, opt.port, rpc::nfs_prog, opt.v4 ? nfs4::nfs_vers : nfs3::nfs_vers);
    if (!c.ok()) {
        cr.error(&cr.connect_errors, conn_error(c, "NFS connection"));
        return;
    }
    nfs4::session sess;
    std::string why;
    if (opt.v4 && !nfs4::open_session(c, s.cred, fmt::format("{}-{}", s.owner, index), opt.depth,
                                      opt.size + k_v4_headroom, opt.timeout_ms, &sess, &why)) {
        cr.error(&cr.connect_errors, why);
        return;
    }
    if (opt.v4 && nfs4::open_file(c, s.cred, sess, s.fh4, fmt::format("{}-{}", s.owner, index),
                                  opt.timeout_ms, &why) != nfs4::nfs4_ok) {
        cr.error(&cr.nfs_errors, why);
        nfs4::close_session(c, s.cred, sess, opt.timeout_ms);
        return;
    }
    if (c.tls()) {
        cr.tls_version = c.tls()->version();
        cr.tls_cipher = c.tls()->cipher();
    }
    rng g{opt.seed * 0x100000001b3ull + index};
    std::vector<pending> slots(opt.depth);
    unsigned in_flight = 0;
    uint32_t next_xid = (index + 1) << 20;
    bool issuing = true;
    for (;;) {
        for (pending& p : slots) {
            if (!issuing || p.busy) continue;
            uint64_t now = now_ns();
            if (!s.may_issue(now)) {
                issuing = false;
                break;
            }
            p.op = s.pick(g);
            p.offset = p.op == nfs_op::read || p.op == nfs_op::write ? s.offset(p.op, g) : 0;
            p.xid = ++next_xid;
            p.busy = true;
            p.sent_ns = now;
            cr.first_send_ns = std::min(cr.first_send_ns, now);
            ++in_flight;
            const uint32_t slot = uint32_t(&p - slots.data());
            if (!c.send(build(s, opt.v4 ? &sess : nullptr, slot, p, p.xid),
                        milliseconds(opt.timeout_ms))) {
                cr.error(&cr.lost_calls, "send: " + c.error(), in_flight);
                return;
            }
        }
        if (in_flight == 0) break;
        core::slice_chain rec = c.receive(milliseconds(opt.timeout_ms));
        if (rec.empty()) {
            cr.error(&cr.lost_calls, "receive: " + c.error(), in_flight);
            return;
        }
        const uint64_t now = now_ns();
        nfs3::rpc_reply r = nfs3::open_reply(rec);
        auto it = std::find_if(slots.begin(), slots.end(),
                               [&](const pending& p) { return p.busy && p.xid == r.xid; });
        if (it == slots.end()) {
            cr.error(&cr.bad_replies, fmt::format("a reply with unknown xid {}", r.xid));
            continue;
        }
        it->busy = false;
        --in_flight;
        cr.last_reply_ns = now;
        if (!r.ok) {
            cr.error(&cr.rpc_errors, fmt::format("{}: {}", to_string(it->op), r.why));
            continue;
        }
        if (!check_reply(s, *it, r.results, cr)) continue;
        const uint64_t ns = now - it->sent_ns;
        ++cr.op_calls[unsigned(it->op)];
        cr.op_latency[unsigned(it->op)].record(ns);
        {
            std::lock_guard<std::mutex> lock(cr.mu);
            cr.live.record(ns);
        }
        cr.calls.fetch_add(1, std::memory_order_relaxed);
    }
    if (opt.v4) end_session(s, c, sess, cr.op_calls[unsigned(nfs_op::write)] > 0, cr);
    c.close();
}

// Writes not yet stable are committed after the run (not timed).
void commit_after(shared_run& s, nfs_report& r) {
    if (s.opt.v4 || s.opt.stable == nfs3::stable_how::file_sync ||
        r.op_calls[unsigned(nfs_op::write)] == 0)
        return;
    client::blocking_client c = open_conn(s.opt, s.ctx, s.opt.port, rpc::nfs_prog, nfs3::nfs_vers);
    core::slice_chain res;
    std::string why;
    if (!c.ok()) {
        why = conn_error(c, "COMMIT connection");
    } else if (nfs3::exchange(c, nfs3::build_commit(1, s.cred, s.fh), s.opt.timeout_ms, &res,
                              &why)) {
        uint32_t st = nfs3::decode_commit(res);
        if (st == nfs3::nfs3_ok) return;
        why = fmt::format("COMMIT: status {}", st);
    }
    ++r.nfs_errors;
    if (r.first_error.empty()) r.first_error = why;
}

}  // namespace

nfs_report run_nfs(const nfs_options& opt, std::string* err, const std::atomic<bool>* stop) {
    nfs_report r;
    err->clear();
    r.target = fmt::format("{}:{}", opt.host, opt.port);
    r.v4 = opt.v4;
    r.mix = format_nfs_mix(opt.mix);
    r.connections = opt.connections;
    r.depth = opt.depth;
    r.size = opt.size;
    r.random = opt.random;
    r.verify = opt.verify;
    r.tls = opt.tls;
    if (opt.connections == 0 || opt.depth == 0 || opt.size == 0) {
        *err = "connections, depth and size must be at least 1";
        return r;
    }
    if (opt.duration_s <= 0 && opt.calls == 0) {
        *err = "a run needs --duration or --calls";
        return r;
    }
    shared_run s(opt);
    std::unique_ptr<tls::context> tls_ctx;
    if (opt.tls != client::tls_mode::off || opt.mount_tls.value_or(opt.tls) != opt.tls) {
        tls_ctx = make_tls_client_context(opt.tls_options, opt.ciphersuites, err);
        if (!tls_ctx) return r;
        s.ctx = tls_ctx.get();
    }
    s.cred = nfs3::make_cred(opt.uid, opt.gid, "rpcgate-bench");
    s.stop = stop;
    for (unsigned w : opt.mix) s.mix_total += w;
    s.owner = fmt::format("rpcgate-bench-{}-{}", ::getpid(), now_ns());
    if (!(opt.v4 ? set_up4(s, err) : set_up(s, err))) return r;
    r.file_size = s.file_size;
    if (opt.mix[unsigned(nfs_op::write)] && !opt.verify) {
        s.write_block.resize(opt.size);
        nfs3::fill_pattern(0, s.write_block);
    }

    std::vector<std::unique_ptr<conn_result>> results;
    for (unsigned i = 0; i < opt.connections; ++i)
        results.push_back(std::make_unique<conn_result>());
    using clock = std::chrono::steady_clock;
    const auto started = clock::now();
    if (opt.duration_s > 0) s.end_ns = now_ns() + uint64_t(opt.duration_s * 1e9);
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < opt.connections; ++i)
        threads.emplace_back([&s, i, &cr = *results[i]] {
            run_conn(s, i, cr);
            cr.done.store(true, std::memory_order_release);
        });

    // Progress lines, as `run` prints them, on runs long enough to want them.
    const bool progress = opt.progress_interval_s > 0 &&
                          (opt.duration_s <= 0 || opt.duration_s > opt.progress_min_run_s);
    auto next_progress = started + std::chrono::duration<double>(opt.progress_interval_s);
    auto last_progress = started;
    uint64_t last_calls = 0;
    latency_histogram so_far;
    for (;;) {
        bool all_done = true;
        for (auto& cr : results) all_done &= cr->done.load(std::memory_order_acquire);
        if (all_done) break;
        const auto now = clock::now();
        const double elapsed = std::chrono::duration<double>(now - started).count();
        if (progress && now >= next_progress) {
            next_progress += std::chrono::duration<double>(opt.progress_interval_s);
            if (opt.duration_s > 0 || elapsed >= opt.progress_min_run_s) {
                uint64_t calls = 0, errors = 0;
                so_far.clear();
                for (auto& cr : results) {
                    calls += cr->calls.load(std::memory_order_relaxed);
                    errors += cr->errors.load(std::memory_order_relaxed);
                    std::lock_guard<std::mutex> lock(cr->mu);
                    so_far.merge(cr->live);
                }
                const double dt = std::chrono::duration<double>(now - last_progress).count();
                std::string line = format_progress(
                    elapsed, dt > 0 ? double(calls - last_calls) / dt : 0.0, so_far, errors);
                line += '\n';
                ssize_t wr = ::write(2, line.data(), line.size());
                (void)wr;
                last_calls = calls;
                last_progress = now;
            }
        }
        std::this_thread::sleep_for(milliseconds(10));
    }
    for (auto& t : threads) t.join();

    uint64_t first = UINT64_MAX, last = 0;
    for (auto& cr : results) {
        r.connect_errors += cr->connect_errors;
        r.lost_calls += cr->lost_calls;
        r.rpc_errors += cr->rpc_errors;
        r.nfs_errors += cr->nfs_errors;
        r.bad_replies += cr->bad_replies;
        r.mismatched_reads += cr->mismatched_reads;
        r.mismatched_bytes += cr->mismatched_bytes;
        r.bytes_read += cr->bytes_read;
        r.bytes_written += cr->bytes_written;
        for (unsigned k = 0; k < nfs_op_count; ++k) {
            r.op_calls[k] += cr->op_calls[k];
            r.calls += cr->op_calls[k];
            r.op_latency[k].merge(cr->op_latency[k]);
            r.latency.merge(cr->op_latency[k]);
        }
        if (r.tls_version.empty()) {
            r.tls_version = cr->tls_version;
            r.tls_cipher = cr->tls_cipher;
        }
        if (r.first_error.empty()) r.first_error = cr->first_error;
        first = std::min(first, cr->first_send_ns);
        last = std::max(last, cr->last_reply_ns);
    }
    if (r.calls > 0 && last > first) r.elapsed_s = double(last - first) / 1e9;
    commit_after(s, r);
    r.errors = r.connect_errors + r.lost_calls + r.rpc_errors + r.nfs_errors + r.bad_replies +
               r.mismatched_reads;
    return r;
}

}  // namespace rpcgate::bench
