#include "tools/bench/nfs_protocol.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "rpc/portmap.h"
#include "rpc/xdr_codec.h"

namespace rpcgate::bench::nfs3 {
namespace {

constexpr size_t k_fattr3_size = 84;    // RFC 1813 fattr3, fixed size
constexpr size_t k_wcc_attr_size = 24;  // size, mtime, ctime
constexpr size_t k_writeverf_size = 8;
constexpr uint64_t k_pattern_mul = 0x9E3779B97F4A7C15ull;

core::slice_chain frame(uint32_t xid, uint32_t prog, uint32_t vers, uint32_t p,
                        const rpc::opaque_auth& cred, rpc::xdr_writer& args) {
    rpc::call_header h;
    h.xid = xid;
    h.prog = prog;
    h.vers = vers;
    h.proc = p;
    h.cred = cred;
    return rpc::build_call(h, args.finish());
}

core::slice_chain nfs_call(uint32_t xid, proc p, const rpc::opaque_auth& cred,
                           rpc::xdr_writer& args) {
    return frame(xid, rpc::nfs_prog, nfs_vers, uint32_t(p), cred, args);
}

void put_fh(rpc::xdr_writer& w, const file_handle& fh) {
    w.opaque(fh.bytes());
}

bool get_fh(rpc::xdr_reader& r, file_handle* fh) {
    auto n = r.opaque_into({fh->data, file_handle::max_size});
    if (!n) return false;
    fh->len = uint32_t(*n);
    return true;
}

// post_op_attr; `size` set when attributes follow.
bool skip_post_op_attr(rpc::xdr_reader& r, uint64_t* size = nullptr) {
    auto follows = r.boolean();
    if (!follows) return false;
    if (!*follows) return true;
    // type, mode, nlink, uid, gid, then size.
    if (!r.skip(20)) return false;
    auto sz = r.u64();
    if (!sz) return false;
    if (size) *size = *sz;
    return bool(r.skip(k_fattr3_size - 28));
}

bool skip_wcc_data(rpc::xdr_reader& r) {
    auto pre = r.boolean();
    if (!pre) return false;
    if (*pre && !r.skip(k_wcc_attr_size)) return false;
    return skip_post_op_attr(r);
}

// Reads the status word; on an error status the rest is not looked at.
uint32_t status_of(rpc::xdr_reader& r) {
    auto st = r.u32();
    return st ? *st : malformed;
}

uint64_t pattern_word(uint64_t word_index) noexcept {
    return (word_index + 1) * k_pattern_mul;
}

}  // namespace

rpc::opaque_auth make_cred(uint32_t uid, uint32_t gid, std::string_view machine) {
    rpc::auth_sys_params p;
    p.uid = uid;
    p.gid = gid;
    p.set_machine(machine.substr(0, rpc::auth_sys_params::max_machinename));
    uint32_t groups[1] = {gid};
    p.set_groups(groups);
    return rpc::encode_auth_sys(p);
}

core::slice_chain build_mnt(uint32_t xid, const rpc::opaque_auth& cred, std::string_view path) {
    rpc::xdr_writer w;
    w.string(path);
    return frame(xid, mount_prog, mount_vers, mountproc_mnt, cred, w);
}

core::slice_chain build_null(uint32_t xid, const rpc::opaque_auth& cred) {
    rpc::xdr_writer w;
    return nfs_call(xid, proc::null, cred, w);
}

core::slice_chain build_getattr(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& fh) {
    rpc::xdr_writer w;
    put_fh(w, fh);
    return nfs_call(xid, proc::getattr, cred, w);
}

core::slice_chain build_lookup(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& dir,
                               std::string_view name) {
    rpc::xdr_writer w;
    put_fh(w, dir);
    w.string(name);
    return nfs_call(xid, proc::lookup, cred, w);
}

core::slice_chain build_create(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& dir,
                               std::string_view name, uint32_t mode) {
    rpc::xdr_writer w;
    put_fh(w, dir);
    w.string(name);
    w.u32(0);  // createmode3 UNCHECKED
    // sattr3: mode set; uid, gid, size not set; atime, mtime DONT_CHANGE.
    w.boolean(true);
    w.u32(mode);
    for (int i = 0; i < 5; ++i) w.u32(0);
    return nfs_call(xid, proc::create, cred, w);
}

core::slice_chain build_read(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& fh,
                             uint64_t offset, uint32_t count) {
    rpc::xdr_writer w;
    put_fh(w, fh);
    w.u64(offset);
    w.u32(count);
    return nfs_call(xid, proc::read, cred, w);
}

core::slice_chain build_write(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& fh,
                              uint64_t offset, stable_how stable, core::slice_chain&& data) {
    rpc::xdr_writer w;
    put_fh(w, fh);
    w.u64(offset);
    w.u32(uint32_t(data.size()));
    w.u32(uint32_t(stable));
    w.opaque(std::move(data));
    return nfs_call(xid, proc::write, cred, w);
}

core::slice_chain build_commit(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& fh) {
    rpc::xdr_writer w;
    put_fh(w, fh);
    w.u64(0);
    w.u32(0);  // count 0: to the end of the file
    return nfs_call(xid, proc::commit, cred, w);
}

rpc_reply open_reply(const core::slice_chain& record) {
    rpc_reply out;
    auto m = rpc::decode_reply(record);
    if (!m) {
        out.why = "malformed reply";
        return out;
    }
    out.xid = m->header.xid;
    if (m->header.stat != rpc::reply_stat::accepted) {
        out.why = m->header.reject == rpc::reject_stat::auth_error ? "call denied (auth error)"
                                                                   : "call denied (rpc mismatch)";
        return out;
    }
    switch (m->header.accept) {
        case rpc::accept_stat::success:
            out.ok = true;
            out.results = std::move(m->results);
            return out;
        case rpc::accept_stat::prog_unavail:
            out.why = "PROG_UNAVAIL";
            break;
        case rpc::accept_stat::prog_mismatch:
            out.why = "PROG_MISMATCH";
            break;
        case rpc::accept_stat::proc_unavail:
            out.why = "PROC_UNAVAIL";
            break;
        case rpc::accept_stat::garbage_args:
            out.why = "GARBAGE_ARGS";
            break;
        default:
            out.why = "SYSTEM_ERR";
            break;
    }
    return out;
}

bool exchange(client::blocking_client& c, core::slice_chain&& call, uint32_t timeout_ms,
              core::slice_chain* results, std::string* why) {
    core::slice_chain rec = c.call(std::move(call), std::chrono::milliseconds(timeout_ms));
    if (rec.empty()) {
        *why = c.error().empty() ? "no reply" : c.error();
        return false;
    }
    rpc_reply r = open_reply(rec);
    if (!r.ok) {
        *why = r.why;
        return false;
    }
    *results = std::move(r.results);
    return true;
}

uint32_t decode_mnt(const core::slice_chain& results, file_handle* fh) {
    rpc::xdr_reader r(results);
    uint32_t st = status_of(r);
    if (st != nfs3_ok) return st;
    return get_fh(r, fh) ? nfs3_ok : malformed;  // auth flavors follow; not needed
}

uint32_t decode_lookup(const core::slice_chain& results, file_handle* fh, uint64_t* size) {
    rpc::xdr_reader r(results);
    uint32_t st = status_of(r);
    if (st != nfs3_ok) return st;
    if (!get_fh(r, fh) || !skip_post_op_attr(r, size)) return malformed;
    return nfs3_ok;
}

uint32_t decode_getattr(const core::slice_chain& results, uint64_t* size) {
    rpc::xdr_reader r(results);
    uint32_t st = status_of(r);
    if (st != nfs3_ok) return st;
    if (!r.skip(20)) return malformed;
    auto sz = r.u64();
    if (!sz || r.remaining() < k_fattr3_size - 28) return malformed;
    *size = *sz;
    return nfs3_ok;
}

uint32_t decode_create(const core::slice_chain& results, file_handle* fh, bool* has_fh) {
    rpc::xdr_reader r(results);
    uint32_t st = status_of(r);
    if (st != nfs3_ok) return st;
    auto follows = r.boolean();
    if (!follows) return malformed;
    *has_fh = *follows;
    if (*follows && !get_fh(r, fh)) return malformed;
    return nfs3_ok;
}

uint32_t decode_read(const core::slice_chain& results, uint32_t* count, bool* eof,
                     core::slice_chain* data) {
    rpc::xdr_reader r(results);
    uint32_t st = status_of(r);
    if (st != nfs3_ok) return st;
    if (!skip_post_op_attr(r)) return malformed;
    auto n = r.u32();
    auto e = r.boolean();
    if (!n || !e) return malformed;
    auto d = r.opaque(*n);
    if (!d || d->size() != *n) return malformed;
    *count = *n;
    *eof = *e;
    *data = std::move(*d);
    return nfs3_ok;
}

uint32_t decode_write(const core::slice_chain& results, uint32_t* count) {
    rpc::xdr_reader r(results);
    uint32_t st = status_of(r);
    if (st != nfs3_ok) return st;
    if (!skip_wcc_data(r)) return malformed;
    auto n = r.u32();
    auto committed = r.u32();
    if (!n || !committed || r.remaining() < k_writeverf_size) return malformed;
    *count = *n;
    return nfs3_ok;
}

uint32_t decode_commit(const core::slice_chain& results) {
    rpc::xdr_reader r(results);
    uint32_t st = status_of(r);
    if (st != nfs3_ok) return st;
    if (!skip_wcc_data(r) || r.remaining() < k_writeverf_size) return malformed;
    return nfs3_ok;
}

void fill_pattern(uint64_t offset, std::span<uint8_t> dst) noexcept {
    size_t i = 0;
    while (i < dst.size()) {
        const uint64_t o = offset + i;
        const uint64_t w = pattern_word(o >> 3);
        uint8_t bytes[8];
        std::memcpy(bytes, &w, 8);  // little-endian host (x86-64, aarch64)
        const size_t from = size_t(o & 7);
        const size_t n = std::min<size_t>(8 - from, dst.size() - i);
        std::memcpy(dst.data() + i, bytes + from, n);
        i += n;
    }
}

uint64_t count_mismatches(uint64_t offset, const core::slice_chain& data) noexcept {
    uint64_t bad = 0;
    uint8_t expect[4096];
    for (const core::slice& s : data) {
        for (size_t done = 0; done < s.size();) {
            const size_t n = std::min(sizeof expect, s.size() - done);
            fill_pattern(offset, {expect, n});
            const uint8_t* got = s.data() + done;
            if (std::memcmp(got, expect, n) != 0)
                for (size_t i = 0; i < n; ++i) bad += got[i] != expect[i];
            offset += n;
            done += n;
        }
    }
    return bad;
}

}  // namespace rpcgate::bench::nfs3
