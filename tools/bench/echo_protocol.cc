#include "tools/bench/echo_protocol.h"

#include <cstring>

namespace rpcgate::bench {
namespace {

// XDR padding never exceeds 3 bytes; one static run of zeros serves them all.
const uint8_t k_zeros[4] = {0, 0, 0, 0};

}  // namespace

header_slab::header_slab(size_t count) : blocks_(new block[count ? count : 1]), count_(count) {
    for (size_t i = 0; i < count_; ++i) {
        blocks_[i].refs = 0;
        // Nothing to free: the block simply becomes available again.
        blocks_[i].release = [](core::buffer_owner*) noexcept {};
    }
}

core::slice header_slab::take(size_t len) {
    // Blocks free up roughly in the order they were taken (sends complete in
    // order), so a round-robin cursor finds a free one at the first probe.
    for (size_t probe = 0; probe < 2 && count_ > 0; ++probe) {
        block& b = blocks_[next_];
        next_ = next_ + 1 == count_ ? 0 : next_ + 1;
        if (b.refs == 0) return core::slice(b.bytes, len, &b);
    }
    ++fallbacks_;
    return core::slice::allocate(len);
}

std::optional<uint32_t> opaque_length(const core::slice_chain& args) noexcept {
    if (args.size() < 4) return std::nullopt;
    uint8_t w[4];
    args.copy_out(0, w, 4);
    uint32_t len = rpc::load_be32(w);
    if (args.size() - 4 != rpc::xdr_align(len)) return std::nullopt;
    return len;
}

void append_opaque_body(core::slice_chain& out, const core::slice& payload) {
    out.push_back(payload.share());
    size_t pad = rpc::xdr_pad(payload.size());
    if (pad) out.push_back(core::slice::unowned(k_zeros, pad));
}

core::slice_chain success_reply(header_slab& slab, uint32_t xid, core::slice_chain&& results) {
    core::slice h = slab.take(reply_header_bytes);
    uint8_t* p = h.mutable_data();
    rpc::store_be32(p, rpc::record_last_fragment |
                           static_cast<uint32_t>(reply_header_bytes - 4 + results.size()));
    rpc::store_be32(p + 4, xid);
    rpc::store_be32(p + 8, static_cast<uint32_t>(rpc::msg_type::reply));
    rpc::store_be32(p + 12, static_cast<uint32_t>(rpc::reply_stat::accepted));
    rpc::store_be32(p + 16, static_cast<uint32_t>(rpc::auth_flavor::none));
    rpc::store_be32(p + 20, 0);  // verifier body length
    rpc::store_be32(p + 24, static_cast<uint32_t>(rpc::accept_stat::success));
    core::slice_chain out(std::move(h));
    out.append(std::move(results));
    return out;
}

core::slice_chain opaque_call(header_slab& slab, uint32_t xid, uint32_t prog, uint32_t vers,
                              uint32_t proc, const core::slice& payload, bool with_opaque) {
    const size_t hdr = call_header_bytes + (with_opaque ? 4 : 0);
    const size_t body = with_opaque ? rpc::xdr_align(payload.size()) : 0;
    core::slice h = slab.take(hdr);
    uint8_t* p = h.mutable_data();
    rpc::store_be32(p, rpc::record_last_fragment | static_cast<uint32_t>(hdr - 4 + body));
    rpc::store_be32(p + 4, xid);
    rpc::store_be32(p + 8, static_cast<uint32_t>(rpc::msg_type::call));
    rpc::store_be32(p + 12, rpc::rpc_version);
    rpc::store_be32(p + 16, prog);
    rpc::store_be32(p + 20, vers);
    rpc::store_be32(p + 24, proc);
    std::memset(p + 28, 0, 16);  // cred and verf: AUTH_NONE, empty bodies
    if (with_opaque) rpc::store_be32(p + 44, static_cast<uint32_t>(payload.size()));
    core::slice_chain out(std::move(h));
    if (with_opaque) append_opaque_body(out, payload);
    return out;
}

std::optional<rpc::reply_header> refusal(const rpc::call_header& h, uint32_t prog, uint32_t vers,
                                         uint32_t max_proc) noexcept {
    if (h.prog != prog) return rpc::reply_header::accepted(h.xid, rpc::accept_stat::prog_unavail);
    if (h.vers != vers) return rpc::reply_header::prog_mismatch(h.xid, vers, vers);
    if (h.proc > max_proc)
        return rpc::reply_header::accepted(h.xid, rpc::accept_stat::proc_unavail);
    return std::nullopt;
}

core::slice_chain answer_callback(header_slab& slab, rpc::call_message&& call) {
    const rpc::call_header& h = call.header;
    if (auto no = refusal(h, callback_program, callback_version, callback_proc_echo))
        return core::slice_chain(rpc::build_reply(*no));
    if (h.proc == 0) return success_reply(slab, h.xid, {});  // NULL, like every program
    if (!opaque_length(call.args))
        return core::slice_chain(
            rpc::build_reply(rpc::reply_header::accepted(h.xid, rpc::accept_stat::garbage_args)));
    return success_reply(slab, h.xid, std::move(call.args));
}

bool chain_equals(const core::slice_chain& a, const uint8_t* p, size_t len) noexcept {
    if (a.size() != len) return false;
    for (const core::slice& s : a) {
        if (std::memcmp(s.data(), p, s.size()) != 0) return false;
        p += s.size();
    }
    return true;
}

}  // namespace rpcgate::bench
