#include "rpc/message.h"

#include <algorithm>
#include <cstring>

namespace rpcgate::rpc {
namespace {

// Size of the fixed reply header before the variant part, with the verifier.
size_t reply_header_size(const reply_header& h) noexcept {
    size_t n = 12;  // xid, REPLY, reply_stat
    if (h.stat == reply_stat::accepted) {
        n += 8 + xdr_align(h.verf.len) + 4;
        if (h.accept == accept_stat::prog_mismatch) n += 8;
    } else {
        n += 4;
        n += h.reject == reject_stat::rpc_mismatch ? 8 : 4;
    }
    return n;
}

#define RPCGATE_TRY_U32(var, reader)      \
    auto var##_r = (reader).u32();        \
    if (!var##_r) return var##_r.error(); \
    const uint32_t var = *var##_r

// The (low, high) pair of PROG_MISMATCH and RPC_MISMATCH.
result<void> read_mismatch(xdr_reader& r, reply_header& h) noexcept {
    RPCGATE_TRY_U32(low, r);
    RPCGATE_TRY_U32(high, r);
    h.mismatch_low = low;
    h.mismatch_high = high;
    return {};
}

}  // namespace

opaque_auth opaque_auth::make(uint32_t flavor, std::span<const uint8_t> bytes) noexcept {
    opaque_auth a;
    a.flavor = flavor;
    a.len = static_cast<uint32_t>(std::min(bytes.size(), max_body));
    if (a.len) std::memcpy(a.body, bytes.data(), a.len);
    return a;
}

bool operator==(const opaque_auth& a, const opaque_auth& b) noexcept {
    return a.flavor == b.flavor && a.len == b.len && std::memcmp(a.body, b.body, a.len) == 0;
}

reply_header reply_header::accepted(uint32_t xid, accept_stat s) noexcept {
    reply_header h;
    h.xid = xid;
    h.accept = s;
    return h;
}

reply_header reply_header::prog_mismatch(uint32_t xid, uint32_t low, uint32_t high) noexcept {
    reply_header h = accepted(xid, accept_stat::prog_mismatch);
    h.mismatch_low = low;
    h.mismatch_high = high;
    return h;
}

reply_header reply_header::rpc_mismatch(uint32_t xid, uint32_t low, uint32_t high) noexcept {
    reply_header h;
    h.xid = xid;
    h.stat = reply_stat::denied;
    h.reject = reject_stat::rpc_mismatch;
    h.mismatch_low = low;
    h.mismatch_high = high;
    return h;
}

reply_header reply_header::auth_error(uint32_t xid, auth_stat why) noexcept {
    reply_header h;
    h.xid = xid;
    h.stat = reply_stat::denied;
    h.reject = reject_stat::auth_error;
    h.auth = why;
    return h;
}

result<void> decode_opaque_auth(xdr_reader& r, opaque_auth& out) noexcept {
    RPCGATE_TRY_U32(flavor, r);
    out.flavor = flavor;
    auto len = r.opaque_into({out.body, opaque_auth::max_body});
    if (!len) return len.error();
    out.len = static_cast<uint32_t>(*len);
    return {};
}

void encode_opaque_auth(xdr_writer& w, const opaque_auth& a) {
    w.u32(a.flavor);
    w.opaque(a.bytes());
}

result<message_peek> peek_message(const core::slice_chain& record) noexcept {
    xdr_reader r(record);
    RPCGATE_TRY_U32(xid, r);
    RPCGATE_TRY_U32(type, r);
    if (type > 1) return errc::bad_value;
    return message_peek{xid, static_cast<msg_type>(type)};
}

result<call_message> decode_call(const core::slice_chain& record) {
    xdr_reader r(record);
    call_message m;
    call_header& h = m.header;
    RPCGATE_TRY_U32(xid, r);
    RPCGATE_TRY_U32(type, r);
    if (type != static_cast<uint32_t>(msg_type::call)) return errc::bad_value;
    RPCGATE_TRY_U32(rpcvers, r);
    if (rpcvers != rpc_version) return errc::rpc_version_mismatch;
    RPCGATE_TRY_U32(prog, r);
    RPCGATE_TRY_U32(vers, r);
    RPCGATE_TRY_U32(proc, r);
    h.xid = xid;
    h.rpcvers = rpcvers;
    h.prog = prog;
    h.vers = vers;
    h.proc = proc;
    if (auto e = decode_opaque_auth(r, h.cred); !e) return e.error();
    if (auto e = decode_opaque_auth(r, h.verf); !e) return e.error();
    m.args = r.rest();
    return m;
}

result<reply_message> decode_reply(const core::slice_chain& record) {
    xdr_reader r(record);
    reply_message m;
    reply_header& h = m.header;
    RPCGATE_TRY_U32(xid, r);
    RPCGATE_TRY_U32(type, r);
    if (type != static_cast<uint32_t>(msg_type::reply)) return errc::bad_value;
    h.xid = xid;
    RPCGATE_TRY_U32(stat, r);
    if (stat == static_cast<uint32_t>(reply_stat::accepted)) {
        h.stat = reply_stat::accepted;
        if (auto e = decode_opaque_auth(r, h.verf); !e) return e.error();
        RPCGATE_TRY_U32(accept, r);
        if (accept > static_cast<uint32_t>(accept_stat::system_err)) return errc::bad_value;
        h.accept = static_cast<accept_stat>(accept);
        if (h.accept == accept_stat::prog_mismatch)
            if (auto e = read_mismatch(r, h); !e) return e.error();
    } else if (stat == static_cast<uint32_t>(reply_stat::denied)) {
        h.stat = reply_stat::denied;
        RPCGATE_TRY_U32(reject, r);
        if (reject == static_cast<uint32_t>(reject_stat::rpc_mismatch)) {
            h.reject = reject_stat::rpc_mismatch;
            if (auto e = read_mismatch(r, h); !e) return e.error();
        } else if (reject == static_cast<uint32_t>(reject_stat::auth_error)) {
            h.reject = reject_stat::auth_error;
            RPCGATE_TRY_U32(why, r);
            if (why > auth_stat_max) return errc::bad_value;
            h.auth = static_cast<auth_stat>(why);
        } else {
            return errc::bad_value;
        }
    } else {
        return errc::bad_value;
    }
    m.results = r.rest();
    return m;
}

void encode_call_header(xdr_writer& w, const call_header& h) {
    w.u32(h.xid);
    w.u32(static_cast<uint32_t>(msg_type::call));
    w.u32(h.rpcvers);
    w.u32(h.prog);
    w.u32(h.vers);
    w.u32(h.proc);
    encode_opaque_auth(w, h.cred);
    encode_opaque_auth(w, h.verf);
}

void encode_reply_header(xdr_writer& w, const reply_header& h) {
    w.u32(h.xid);
    w.u32(static_cast<uint32_t>(msg_type::reply));
    w.u32(static_cast<uint32_t>(h.stat));
    if (h.stat == reply_stat::accepted) {
        encode_opaque_auth(w, h.verf);
        w.u32(static_cast<uint32_t>(h.accept));
        if (h.accept == accept_stat::prog_mismatch) {
            w.u32(h.mismatch_low);
            w.u32(h.mismatch_high);
        }
    } else {
        w.u32(static_cast<uint32_t>(h.reject));
        if (h.reject == reject_stat::rpc_mismatch) {
            w.u32(h.mismatch_low);
            w.u32(h.mismatch_high);
        } else {
            w.u32(static_cast<uint32_t>(h.auth));
        }
    }
}

core::slice build_reply(const reply_header& h) {
    // One exact-size block: record mark + header.
    xdr_writer w(4 + reply_header_size(h));
    w.u32(record_last_fragment | static_cast<uint32_t>(reply_header_size(h)));
    encode_reply_header(w, h);
    return w.finish_slice();
}

core::slice_chain build_reply(const reply_header& h, core::slice_chain&& results,
                              size_t max_fragment) {
    xdr_writer w(reply_header_size(h));
    encode_reply_header(w, h);
    w.append(std::move(results));
    return frame_record(w.finish(), max_fragment);
}

core::slice_chain build_call(const call_header& h, core::slice_chain&& args, size_t max_fragment) {
    xdr_writer w(40 + xdr_align(h.cred.len) + xdr_align(h.verf.len));
    encode_call_header(w, h);
    w.append(std::move(args));
    return frame_record(w.finish(), max_fragment);
}

bool auth_sys_params::set_machine(std::string_view name) noexcept {
    if (name.size() > max_machinename) return false;
    std::memcpy(machinename, name.data(), name.size());
    machinename_len = static_cast<uint32_t>(name.size());
    return true;
}

bool auth_sys_params::set_groups(std::span<const uint32_t> g) noexcept {
    if (g.size() > max_gids) return false;
    std::copy(g.begin(), g.end(), gids);
    gid_count = static_cast<uint32_t>(g.size());
    return true;
}

result<auth_sys_params> decode_auth_sys(std::span<const uint8_t> body) noexcept {
    xdr_reader r(body);
    auth_sys_params p;
    RPCGATE_TRY_U32(stamp, r);
    p.stamp = stamp;
    auto name = r.opaque_into(
        {reinterpret_cast<uint8_t*>(p.machinename), auth_sys_params::max_machinename});
    if (!name) return name.error();
    p.machinename_len = static_cast<uint32_t>(*name);
    RPCGATE_TRY_U32(uid, r);
    RPCGATE_TRY_U32(gid, r);
    RPCGATE_TRY_U32(count, r);
    if (count > auth_sys_params::max_gids) return errc::too_long;
    p.uid = uid;
    p.gid = gid;
    p.gid_count = count;
    for (uint32_t i = 0; i < count; ++i) {
        RPCGATE_TRY_U32(g, r);
        p.gids[i] = g;
    }
    if (r.remaining() != 0) return errc::trailing_bytes;
    return p;
}

result<auth_sys_params> decode_auth_sys(const opaque_auth& cred) noexcept {
    if (!cred.is(auth_flavor::sys)) return errc::bad_value;
    return decode_auth_sys(cred.bytes());
}

opaque_auth encode_auth_sys(const auth_sys_params& p) noexcept {
    opaque_auth a;
    a.flavor = static_cast<uint32_t>(auth_flavor::sys);
    uint8_t* out = a.body;
    auto put = [&out](uint32_t v) {
        store_be32(out, v);
        out += 4;
    };
    const uint32_t name_len =
        std::min<uint32_t>(p.machinename_len, auth_sys_params::max_machinename);
    const uint32_t ngids = std::min<uint32_t>(p.gid_count, auth_sys_params::max_gids);
    put(p.stamp);
    put(name_len);
    std::memcpy(out, p.machinename, name_len);
    std::memset(out + name_len, 0, xdr_pad(name_len));
    out += xdr_align(name_len);
    put(p.uid);
    put(p.gid);
    put(ngids);
    for (uint32_t i = 0; i < ngids; ++i) put(p.gids[i]);
    a.len = static_cast<uint32_t>(out - a.body);
    return a;
}

}  // namespace rpcgate::rpc
