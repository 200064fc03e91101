#include "rpc/xdr_codec.h"

#include <algorithm>

namespace rpcgate::rpc {

xdr_reader::xdr_reader(const core::slice_chain& chain) noexcept
    : parts_(chain.begin()), nparts_(chain.count()), total_(chain.size()) {
    enter(0);
}

xdr_reader::xdr_reader(std::span<const uint8_t> bytes) noexcept
    : span_slice_(core::slice::unowned(bytes.data(), bytes.size())),
      parts_(&span_slice_),
      nparts_(bytes.empty() ? 0 : 1),
      total_(bytes.size()) {
    enter(0);
}

void xdr_reader::enter(size_t idx) noexcept {
    idx_ = idx;
    if (idx < nparts_) {
        cur_ = parts_[idx].data();
        end_ = cur_ + parts_[idx].size();
    } else {
        cur_ = end_ = nullptr;
    }
}

void xdr_reader::next_slice() noexcept {
    enter(idx_ + 1);
}

bool xdr_reader::copy(uint8_t* dst, size_t n) noexcept {
    if (n > remaining()) return false;
    while (n > 0) {
        size_t k = std::min(n, static_cast<size_t>(end_ - cur_));
        std::memcpy(dst, cur_, k);
        dst += k;
        n -= k;
        advance_in_slice(k);
    }
    return true;
}

bool xdr_reader::skip_bytes(size_t n) noexcept {
    if (n > remaining()) return false;
    while (n > 0) {
        size_t k = std::min(n, static_cast<size_t>(end_ - cur_));
        n -= k;
        advance_in_slice(k);
    }
    return true;
}

result<uint32_t> xdr_reader::u32_slow() noexcept {
    uint8_t b[4];
    if (!copy(b, 4)) return errc::short_input;
    return load_be32(b);
}

result<int32_t> xdr_reader::i32() noexcept {
    auto v = u32();
    if (!v) return v.error();
    return static_cast<int32_t>(*v);
}

result<uint64_t> xdr_reader::u64() noexcept {
    auto hi = u32();
    if (!hi) return hi.error();
    auto lo = u32();
    if (!lo) return lo.error();
    return (static_cast<uint64_t>(*hi) << 32) | *lo;
}

result<int64_t> xdr_reader::i64() noexcept {
    auto v = u64();
    if (!v) return v.error();
    return static_cast<int64_t>(*v);
}

result<bool> xdr_reader::boolean() noexcept {
    auto v = u32();
    if (!v) return v.error();
    if (*v > 1) return errc::bad_value;
    return *v == 1;
}

result<void> xdr_reader::skip(size_t n) noexcept {
    if (!skip_bytes(n)) return errc::short_input;
    return {};
}

core::slice_chain xdr_reader::share_bytes(size_t n) {
    core::slice_chain out;
    while (n > 0) {
        size_t k = std::min(n, static_cast<size_t>(end_ - cur_));
        size_t off = static_cast<size_t>(cur_ - parts_[idx_].data());
        out.push_back(parts_[idx_].share(off, k));
        n -= k;
        advance_in_slice(k);
    }
    return out;
}

result<core::slice_chain> xdr_reader::opaque_fixed(size_t n) {
    // RFC 4506 §4.9: padding bytes "should" be zero; we count them but do not
    // check them, like every widespread implementation.
    if (n > remaining() || xdr_pad(n) > remaining() - n) return errc::short_input;
    core::slice_chain out = share_bytes(n);
    skip_bytes(xdr_pad(n));
    return out;
}

result<core::slice_chain> xdr_reader::opaque(size_t max) {
    auto len = u32();
    if (!len) return len.error();
    if (*len > max) return errc::too_long;
    return opaque_fixed(*len);
}

result<void> xdr_reader::opaque_fixed_into(std::span<uint8_t> dst) noexcept {
    size_t n = dst.size();
    if (n > remaining() || xdr_pad(n) > remaining() - n) return errc::short_input;
    copy(dst.data(), n);
    skip_bytes(xdr_pad(n));
    return {};
}

result<size_t> xdr_reader::opaque_into(std::span<uint8_t> dst) noexcept {
    auto len = u32();
    if (!len) return len.error();
    if (*len > dst.size()) return errc::too_long;
    auto r = opaque_fixed_into(dst.first(*len));
    if (!r) return r.error();
    return static_cast<size_t>(*len);
}

result<std::string> xdr_reader::string(size_t max) {
    auto len = u32();
    if (!len) return len.error();
    if (*len > max) return errc::too_long;
    if (*len > remaining()) return errc::short_input;
    std::string s(*len, '\0');
    auto r = opaque_fixed_into({reinterpret_cast<uint8_t*>(s.data()), s.size()});
    if (!r) return r.error();
    return s;
}

core::slice_chain xdr_reader::rest() {
    return share_bytes(remaining());
}

void xdr_writer::opaque_fixed(std::span<const uint8_t> bytes) {
    size_t pad = xdr_pad(bytes.size());
    uint8_t* p = space(bytes.size() + pad);
    if (!bytes.empty()) std::memcpy(p, bytes.data(), bytes.size());
    std::memset(p + bytes.size(), 0, pad);
}

void xdr_writer::flush() {
    if (block_used_ > block_flushed_) {
        done_.push_back(block_.share(block_flushed_, block_used_ - block_flushed_));
        block_flushed_ = block_used_;
    }
}

void xdr_writer::grow(size_t n) {
    flush();
    size_t cap = std::max({n, reserve_, block_.size() * 2});
    block_ = core::slice::allocate(cap);
    block_used_ = block_flushed_ = 0;
}

void xdr_writer::append(core::slice_chain&& chain) {
    flush();
    done_.append(std::move(chain));
}

void xdr_writer::opaque(core::slice_chain&& chain) {
    size_t n = chain.size();
    u32(static_cast<uint32_t>(n));
    append(std::move(chain));
    static constexpr uint8_t zeros[4] = {};
    if (xdr_pad(n)) raw(zeros, xdr_pad(n));
}

void xdr_writer::patch_u32(size_t handle, uint32_t v) noexcept {
    uint8_t b[4];
    store_be32(b, v);
    // The word may lie in a flushed run (a share of one of our own blocks, so
    // writing through it is safe) or in the current block.
    size_t off = handle;
    for (size_t i = 0; i < 4; ++i, ++off) {
        size_t o = off;
        bool done = false;
        for (const auto& s : done_) {
            if (o < s.size()) {
                const_cast<uint8_t*>(s.data())[o] = b[i];
                done = true;
                break;
            }
            o -= s.size();
        }
        if (!done) block_.mutable_data()[block_flushed_ + o] = b[i];
    }
}

core::slice_chain xdr_writer::finish() {
    flush();
    core::slice_chain out = std::move(done_);
    done_.clear();
    block_ = core::slice{};
    block_used_ = block_flushed_ = 0;
    return out;
}

core::slice xdr_writer::finish_slice() {
    if (done_.empty() && block_flushed_ == 0) {
        // The common case: one block, nothing spliced — hand it over trimmed.
        core::slice s = std::move(block_);
        s.trim(block_used_);
        block_used_ = 0;
        return s;
    }
    core::slice_chain c = finish();
    return c.linearize();
}

}  // namespace rpcgate::rpc
