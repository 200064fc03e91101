#include "tools/bench/nfs4_protocol.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>

#include "rpc/portmap.h"
#include "rpc/xdr_codec.h"

namespace rpcgate::bench::nfs4 {
namespace {

enum op : uint32_t {
    op_close = 4,
    op_commit = 5,
    op_getattr = 9,
    op_getfh = 10,
    op_lookup = 15,
    op_open = 18,
    op_putfh = 22,
    op_putrootfh = 24,
    op_read = 25,
    op_write = 38,
    op_exchange_id = 42,
    op_create_session = 43,
    op_destroy_session = 44,
    op_sequence = 53,
    op_destroy_clientid = 57,
    op_reclaim_complete = 58,
};
constexpr uint32_t k_compound = 1;
constexpr uint32_t k_fattr4_size = 4;  // attribute number of the file's size
constexpr size_t k_sequence_res = 16 + 5 * 4;
constexpr size_t k_verifier = 8;
// OPEN4_SHARE_ACCESS_BOTH | OPEN4_SHARE_ACCESS_WANT_NO_DELEG (RFC 8881 §18.16).
constexpr uint32_t k_share_both_no_deleg = 3 | 0x0400;
constexpr uint32_t k_claim_fh = 4;

// The open's stateid with seqid 0, "the current one" (RFC 8881 §8.2.2), or
// the anonymous stateid before an OPEN.
stateid current(const session& s) {
    stateid sid = s.open;
    sid.seqid = 0;
    return sid;
}

void put_stateid(rpc::xdr_writer& w, const stateid& sid) {
    w.u32(sid.seqid);
    w.opaque_fixed({sid.other, sizeof sid.other});
}

// One COMPOUND being built: ops are appended, the count is patched in.
class compound {
  public:
    compound() {
        w_.string("");  // tag
        w_.u32(minor_version);
        count_ = w_.reserve_u32();
    }
    rpc::xdr_writer& op(uint32_t number) {
        ++ops_;
        w_.u32(number);
        return w_;
    }
    compound& sequence(session& s, uint32_t slot) {
        rpc::xdr_writer& w = op(op_sequence);
        w.opaque_fixed({s.id, sizeof s.id});
        w.u32(s.seqid[slot]++);
        w.u32(slot);
        w.u32(uint32_t(s.seqid.size() - 1));  // highest slot in use
        w.boolean(false);                     // cachethis
        return *this;
    }
    compound& putfh(const file_handle& fh) {
        op(op_putfh).opaque({fh.data, fh.len});
        return *this;
    }
    core::slice_chain finish(uint32_t xid, const rpc::opaque_auth& cred) {
        w_.patch_u32(count_, ops_);
        rpc::call_header h;
        h.xid = xid;
        h.prog = rpc::nfs_prog;
        h.vers = nfs_vers;
        h.proc = k_compound;
        h.cred = cred;
        return rpc::build_call(h, w_.finish());
    }

  private:
    rpc::xdr_writer w_;
    size_t count_ = 0;
    uint32_t ops_ = 0;
};

// A COMPOUND reply, op by op.
class reply_reader {
  public:
    explicit reply_reader(const core::slice_chain& results) : r_(results) {
        auto st = r_.u32();
        auto tag = r_.opaque(1024);
        auto n = r_.u32();
        ok_ = st && tag && n;
        status_ = ok_ ? *st : nfs3::malformed;
    }
    // The result of the next op, which must be `number`: its status.
    uint32_t next(uint32_t number) {
        if (!ok_) return nfs3::malformed;
        auto n = r_.u32();
        auto st = r_.u32();
        if (!n || !st || *n != number) {
            ok_ = false;
            return nfs3::malformed;
        }
        return *st;
    }
    // SEQUENCE, PUTFH, then `number`: nfs4_ok (the reader at `number`'s
    // results) or the first failure.
    uint32_t after_putfh(uint32_t number) {
        uint32_t st = next(op_sequence);
        if (st != nfs4_ok) return st;
        if (!r_.skip(k_sequence_res)) return nfs3::malformed;
        st = next(op_putfh);
        return st == nfs4_ok ? next(number) : st;
    }
    rpc::xdr_reader& in() { return r_; }
    uint32_t status() const { return status_; }

  private:
    rpc::xdr_reader r_;
    bool ok_ = false;
    uint32_t status_ = nfs3::malformed;
};

bool get_fh(rpc::xdr_reader& r, file_handle* fh) {
    auto n = r.opaque_into({fh->data, file_handle::max_size});
    if (!n) return false;
    fh->len = uint32_t(*n);
    return true;
}

// fattr4 holding at most the size.
bool get_size(rpc::xdr_reader& r, uint64_t* size) {
    auto words = r.u32();
    if (!words || *words > 8) return false;
    uint32_t first = 0;
    for (uint32_t i = 0; i < *words; ++i) {
        auto w = r.u32();
        if (!w) return false;
        if (i == 0) first = *w;
    }
    auto len = r.u32();
    if (!len) return false;
    if (!(first & (1u << k_fattr4_size))) return bool(r.skip(rpc::xdr_align(*len)));
    auto sz = r.u64();
    if (!sz || *len != 8) return false;
    *size = *sz;
    return true;
}

void getattr_size(rpc::xdr_writer& w) {
    w.u32(1);
    w.u32(1u << k_fattr4_size);
}

void channel_attrs(rpc::xdr_writer& w, uint32_t max_message, uint32_t requests) {
    w.u32(0);            // header pad
    w.u32(max_message);  // max request
    w.u32(max_message);  // max response
    w.u32(4096);         // max response cached
    w.u32(8);            // max operations
    w.u32(requests);
    w.u32(0);  // no RDMA
}

}  // namespace

bool open_session(client::blocking_client& c, const rpc::opaque_auth& cred,
                  const std::string& owner, unsigned slots, uint32_t max_message,
                  uint32_t timeout_ms, session* s, std::string* err) {
    core::slice_chain res;
    std::string why;
    compound x;
    rpc::xdr_writer& w = x.op(op_exchange_id);
    uint8_t verifier[k_verifier] = {'r', 'p', 'c', 'g', 'b', 'n', 'c', 'h'};
    w.opaque_fixed(verifier);
    w.string(owner);
    w.u32(0);  // flags
    w.u32(0);  // SP4_NONE
    w.u32(0);  // no implementation ID
    if (!nfs3::exchange(c, x.finish(1, cred), timeout_ms, &res, &why)) {
        *err = "EXCHANGE_ID: " + why;
        return false;
    }
    uint32_t sequence = 0;
    {
        reply_reader rr(res);
        uint32_t st = rr.next(op_exchange_id);
        auto id = rr.in().u64();
        auto seq = rr.in().u32();
        if (st != nfs4_ok || !id || !seq) {
            *err = fmt::format("EXCHANGE_ID: status {}", st);
            return false;
        }
        s->clientid = *id;
        sequence = *seq;
    }
    compound cs;
    rpc::xdr_writer& v = cs.op(op_create_session);
    v.u64(s->clientid);
    v.u32(sequence);
    v.u32(0);  // flags: no persistence, no back channel
    channel_attrs(v, max_message, slots);
    channel_attrs(v, 4096, 1);
    v.u32(0x40000000);  // callback program (unused: no back channel)
    v.u32(1);           // one security flavor for callbacks: AUTH_NONE
    v.u32(0);
    if (!nfs3::exchange(c, cs.finish(2, cred), timeout_ms, &res, &why)) {
        *err = "CREATE_SESSION: " + why;
        return false;
    }
    reply_reader rr(res);
    uint32_t st = rr.next(op_create_session);
    if (st != nfs4_ok || !rr.in().opaque_fixed_into({s->id, sizeof s->id}) ||
        !rr.in().skip(8 + 5 * 4)) {
        *err = fmt::format("CREATE_SESSION: status {}", st);
        return false;
    }
    auto granted = rr.in().u32();
    if (!granted || *granted < slots) {
        *err = fmt::format("CREATE_SESSION: the server grants {} slots; use --depth {} or less",
                           granted ? *granted : 0, granted ? *granted : 0);
        return false;
    }
    s->seqid.assign(slots, 1);
    compound rc;
    rc.sequence(*s, 0);
    rc.op(op_reclaim_complete).boolean(false);  // not for one file system only
    if (!nfs3::exchange(c, rc.finish(3, cred), timeout_ms, &res, &why)) {
        *err = "RECLAIM_COMPLETE: " + why;
        return false;
    }
    reply_reader done(res);
    st = done.next(op_sequence);
    if (st == nfs4_ok && done.in().skip(k_sequence_res)) st = done.next(op_reclaim_complete);
    // NFS4ERR_COMPLETE_ALREADY (10054) is fine.
    if (st != nfs4_ok && st != 10054) {
        *err = fmt::format("RECLAIM_COMPLETE: status {}", st);
        return false;
    }
    return true;
}

void close_session(client::blocking_client& c, const rpc::opaque_auth& cred, session& s,
                   uint32_t timeout_ms) {
    core::slice_chain res;
    std::string why;
    compound ds;
    ds.op(op_destroy_session).opaque_fixed({s.id, sizeof s.id});
    (void)nfs3::exchange(c, ds.finish(4, cred), timeout_ms, &res, &why);
    compound dc;
    dc.op(op_destroy_clientid).u64(s.clientid);
    (void)nfs3::exchange(c, dc.finish(5, cred), timeout_ms, &res, &why);
}

uint32_t look_up(client::blocking_client& c, const rpc::opaque_auth& cred, session& s,
                 std::string_view export_path, std::string_view file, file_handle* dir,
                 file_handle* fh, uint64_t* size, uint32_t timeout_ms, std::string* err) {
    compound x;
    x.sequence(s, 0);
    x.op(op_putrootfh);
    unsigned lookups = 0;
    for (size_t pos = 0; pos < export_path.size();) {
        size_t slash = export_path.find('/', pos);
        if (slash == std::string_view::npos) slash = export_path.size();
        if (slash > pos) {
            x.op(op_lookup).string(export_path.substr(pos, slash - pos));
            ++lookups;
        }
        pos = slash + 1;
    }
    x.op(op_getfh);
    x.op(op_lookup).string(file);
    x.op(op_getfh);
    getattr_size(x.op(op_getattr));
    core::slice_chain res;
    std::string why;
    if (!nfs3::exchange(c, x.finish(6, cred), timeout_ms, &res, &why)) {
        *err = "LOOKUP: " + why;
        return nfs3::malformed;
    }
    reply_reader rr(res);
    uint32_t st = rr.next(op_sequence);
    if (st == nfs4_ok && !rr.in().skip(k_sequence_res)) st = nfs3::malformed;
    if (st == nfs4_ok) st = rr.next(op_putrootfh);
    for (unsigned i = 0; i < lookups && st == nfs4_ok; ++i) st = rr.next(op_lookup);
    if (st == nfs4_ok) st = rr.next(op_getfh);
    if (st == nfs4_ok && !get_fh(rr.in(), dir)) st = nfs3::malformed;
    if (st != nfs4_ok) {
        *err = fmt::format("the export {}: status {}", export_path, st);
        return st;
    }
    st = rr.next(op_lookup);
    if (st == nfs4_ok) st = rr.next(op_getfh);
    if (st == nfs4_ok && !get_fh(rr.in(), fh)) st = nfs3::malformed;
    if (st == nfs4_ok) st = rr.next(op_getattr);
    if (st == nfs4_ok && !get_size(rr.in(), size)) st = nfs3::malformed;
    if (st == nfs4err_noent)
        *err = fmt::format(
            "{} does not exist (NFSv4.1 makes no file: make it with "
            "--nfs-version 3)",
            file);
    else if (st != nfs4_ok)
        *err = fmt::format("LOOKUP {}: status {}", file, st);
    return st;
}

uint32_t open_file(client::blocking_client& c, const rpc::opaque_auth& cred, session& s,
                   const file_handle& fh, const std::string& owner, uint32_t timeout_ms,
                   std::string* err) {
    compound x;
    x.sequence(s, 0).putfh(fh);
    rpc::xdr_writer& w = x.op(op_open);
    w.u32(0);  // seqid: ignored in 4.1
    w.u32(k_share_both_no_deleg);
    w.u32(0);  // deny none
    w.u64(s.clientid);
    w.string(owner);
    w.u32(0);  // OPEN4_NOCREATE
    w.u32(k_claim_fh);
    core::slice_chain res;
    std::string why;
    if (!nfs3::exchange(c, x.finish(7, cred), timeout_ms, &res, &why)) {
        *err = "OPEN: " + why;
        return nfs3::malformed;
    }
    reply_reader rr(res);
    uint32_t st = rr.after_putfh(op_open);
    if (st != nfs4_ok) {
        *err = fmt::format("OPEN: status {}", st);
        return st;
    }
    auto seq = rr.in().u32();
    if (!seq || !rr.in().opaque_fixed_into({s.open.other, sizeof s.open.other})) {
        *err = "OPEN: a malformed reply";
        return nfs3::malformed;
    }
    s.open.seqid = *seq;
    s.opened = true;
    return nfs4_ok;
}

uint32_t close_file(client::blocking_client& c, const rpc::opaque_auth& cred, session& s,
                    const file_handle& fh, uint32_t timeout_ms) {
    if (!s.opened) return nfs4_ok;
    compound x;
    x.sequence(s, 0).putfh(fh);
    rpc::xdr_writer& w = x.op(op_close);
    w.u32(0);  // seqid: ignored in 4.1
    put_stateid(w, s.open);
    core::slice_chain res;
    std::string why;
    if (!nfs3::exchange(c, x.finish(8, cred), timeout_ms, &res, &why)) return nfs3::malformed;
    s.opened = false;
    s.open = {};
    reply_reader rr(res);
    return rr.after_putfh(op_close);
}

core::slice_chain build_null(uint32_t xid, const rpc::opaque_auth& cred) {
    rpc::call_header h;
    h.xid = xid;
    h.prog = rpc::nfs_prog;
    h.vers = nfs_vers;
    h.proc = 0;
    h.cred = cred;
    return rpc::build_call(h, {});
}

core::slice_chain build_read(uint32_t xid, const rpc::opaque_auth& cred, session& s, uint32_t slot,
                             const file_handle& fh, uint64_t offset, uint32_t count) {
    compound x;
    x.sequence(s, slot).putfh(fh);
    rpc::xdr_writer& w = x.op(op_read);
    put_stateid(w, current(s));
    w.u64(offset);
    w.u32(count);
    return x.finish(xid, cred);
}

core::slice_chain build_write(uint32_t xid, const rpc::opaque_auth& cred, session& s, uint32_t slot,
                              const file_handle& fh, uint64_t offset, nfs3::stable_how stable,
                              core::slice_chain&& data) {
    compound x;
    x.sequence(s, slot).putfh(fh);
    rpc::xdr_writer& w = x.op(op_write);
    put_stateid(w, current(s));
    w.u64(offset);
    w.u32(uint32_t(stable));
    w.opaque(std::move(data));
    return x.finish(xid, cred);
}

core::slice_chain build_getattr(uint32_t xid, const rpc::opaque_auth& cred, session& s,
                                uint32_t slot, const file_handle& fh) {
    compound x;
    x.sequence(s, slot).putfh(fh);
    getattr_size(x.op(op_getattr));
    return x.finish(xid, cred);
}

core::slice_chain build_lookup(uint32_t xid, const rpc::opaque_auth& cred, session& s,
                               uint32_t slot, const file_handle& dir, std::string_view name) {
    compound x;
    x.sequence(s, slot).putfh(dir);
    x.op(op_lookup).string(name);
    return x.finish(xid, cred);
}

core::slice_chain build_commit(uint32_t xid, const rpc::opaque_auth& cred, session& s,
                               uint32_t slot, const file_handle& fh) {
    compound x;
    x.sequence(s, slot).putfh(fh);
    rpc::xdr_writer& w = x.op(op_commit);
    w.u64(0);
    w.u32(0);
    return x.finish(xid, cred);
}

uint32_t decode_read(const core::slice_chain& results, uint32_t* count, bool* eof,
                     core::slice_chain* data) {
    reply_reader rr(results);
    uint32_t st = rr.after_putfh(op_read);
    if (st != nfs4_ok) return st;
    auto e = rr.in().boolean();
    auto d = rr.in().opaque(UINT32_MAX);
    if (!e || !d) return nfs3::malformed;
    *eof = *e;
    *count = uint32_t(d->size());
    *data = std::move(*d);
    return nfs4_ok;
}

uint32_t decode_write(const core::slice_chain& results, uint32_t* count) {
    reply_reader rr(results);
    uint32_t st = rr.after_putfh(op_write);
    if (st != nfs4_ok) return st;
    auto n = rr.in().u32();
    auto committed = rr.in().u32();
    if (!n || !committed || rr.in().remaining() < k_verifier) return nfs3::malformed;
    *count = *n;
    return nfs4_ok;
}

uint32_t decode_getattr(const core::slice_chain& results, uint64_t* size) {
    reply_reader rr(results);
    uint32_t st = rr.after_putfh(op_getattr);
    if (st != nfs4_ok) return st;
    return get_size(rr.in(), size) ? nfs4_ok : nfs3::malformed;
}

uint32_t decode_lookup(const core::slice_chain& results) {
    reply_reader rr(results);
    return rr.after_putfh(op_lookup);
}

uint32_t decode_commit(const core::slice_chain& results) {
    reply_reader rr(results);
    uint32_t st = rr.after_putfh(op_commit);
    if (st != nfs4_ok) return st;
    return rr.in().remaining() >= k_verifier ? nfs4_ok : nfs3::malformed;
}

}  // namespace rpcgate::bench::nfs4
