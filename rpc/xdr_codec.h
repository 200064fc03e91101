// XDR (RFC 4506) reader and writer over byte-slice chains.
//
// `xdr_reader` decodes from a `core::slice_chain` (a received record) without
// copying: it walks the chain's slices, takes a fast path when the current
// slice holds the bytes it needs and falls back to a byte-wise gather when a
// value straddles two slices. Large opaques come back as zero-copy sub-chains
// that share the record's buffers; small ones can be copied into caller memory.
// Every read is bounds-checked and returns `result<T>`; after a failed read the
// reader's position is unspecified and the caller should drop the message.
//
// `xdr_writer` encodes into a private, growable heap block and can splice
// zero-copy chains (an RPC body being forwarded) between encoded runs. Its
// output is a `core::slice_chain` ready for sendmsg().
//
// (The file is not called xdr.h: libtirpc's <rpc/xdr.h> would be shadowed by
// it wherever the repository root is on the include path.)
//
// Both are single-thread objects that live for one message; the reader borrows
// the chain (it must outlive the reader), the writer owns what it produces
// until `finish()` hands it over.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "core/buffer.h"
#include "rpc/result.h"

namespace rpcgate::rpc {

// Bytes of padding that follow an n-byte opaque or string (0..3).
constexpr size_t xdr_pad(size_t n) noexcept {
    return (4 - (n & 3)) & 3;
}
// n rounded up to a multiple of 4.
constexpr size_t xdr_align(size_t n) noexcept {
    return n + xdr_pad(n);
}

// Big-endian loads and stores on raw memory (no alignment requirement).
inline uint32_t load_be32(const uint8_t* p) noexcept {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}
inline void store_be32(uint8_t* p, uint32_t v) noexcept {
    v = __builtin_bswap32(v);
    std::memcpy(p, &v, 4);
}

class xdr_reader {
  public:
    // Reads `chain`, which must outlive the reader and not change meanwhile.
    explicit xdr_reader(const core::slice_chain& chain) noexcept;
    // Reads contiguous bytes (an auth body, a test vector). Opaques returned as
    // chains are unowned views: they are valid only while `bytes` is.
    explicit xdr_reader(std::span<const uint8_t> bytes) noexcept;
    xdr_reader(const xdr_reader&) = delete;
    xdr_reader& operator=(const xdr_reader&) = delete;

    // Bytes consumed so far / still unread.
    size_t position() const noexcept { return pos_; }
    size_t remaining() const noexcept { return total_ - pos_; }

    result<uint32_t> u32() noexcept {
        if (end_ - cur_ >= 4) [[likely]] {
            uint32_t v = load_be32(cur_);
            advance_in_slice(4);
            return v;
        }
        return u32_slow();
    }
    result<int32_t> i32() noexcept;
    result<uint64_t> u64() noexcept;  // hyper: high word first
    result<int64_t> i64() noexcept;
    result<bool> boolean() noexcept;  // 0 or 1; anything else is bad_value

    // Skips n bytes (no padding added).
    result<void> skip(size_t n) noexcept;

    // opaque[n]: n bytes plus padding, as a chain sharing the input's buffers.
    result<core::slice_chain> opaque_fixed(size_t n);
    // opaque<max>: length, bytes, padding. Length > max is too_long.
    result<core::slice_chain> opaque(size_t max);
    // opaque[dst.size()] copied into dst.
    result<void> opaque_fixed_into(std::span<uint8_t> dst) noexcept;
    // opaque<dst.size()> copied into dst; returns the length.
    result<size_t> opaque_into(std::span<uint8_t> dst) noexcept;
    // string<max> copied into a std::string (rare paths, tests).
    result<std::string> string(size_t max);

    // Everything not yet read, shared (zero-copy); the reader moves to the end.
    core::slice_chain rest();

  private:
    result<uint32_t> u32_slow() noexcept;
    bool copy(uint8_t* dst, size_t n) noexcept;
    bool skip_bytes(size_t n) noexcept;
    // Shares the next n bytes (n <= remaining()) as a chain.
    core::slice_chain share_bytes(size_t n);
    void advance_in_slice(size_t n) noexcept {
        cur_ += n;
        pos_ += n;
        if (cur_ == end_) next_slice();
    }
    void next_slice() noexcept;
    void enter(size_t idx) noexcept;

    core::slice span_slice_;  // the one part when reading a span
    const core::slice* parts_ = nullptr;
    size_t nparts_ = 0;
    size_t idx_ = 0;  // index of the slice cur_ points into
    const uint8_t* cur_ = nullptr;
    const uint8_t* end_ = nullptr;
    size_t pos_ = 0;
    size_t total_ = 0;
};

class xdr_writer {
  public:
    // `reserve` is the size of the first heap block, allocated on first write.
    explicit xdr_writer(size_t reserve = 256) noexcept : reserve_(reserve ? reserve : 64) {}
    // Writes into `block` first — private memory the caller supplies, e.g. from
    // a per-shard pool, so that a small header costs no malloc — and grows on
    // the heap beyond it. `block` must not be shared with anyone else.
    explicit xdr_writer(core::slice block) noexcept
        : reserve_(block.size() ? block.size() : 64), block_(std::move(block)) {}
    xdr_writer(const xdr_writer&) = delete;
    xdr_writer& operator=(const xdr_writer&) = delete;

    void u32(uint32_t v) { store_be32(space(4), v); }
    void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
    void u64(uint64_t v) {
        u32(static_cast<uint32_t>(v >> 32));
        u32(static_cast<uint32_t>(v));
    }
    void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
    void boolean(bool v) { u32(v ? 1 : 0); }
    // opaque[n] (bytes + zero padding), opaque<> and string<> (length first).
    void opaque_fixed(std::span<const uint8_t> bytes);
    void opaque(std::span<const uint8_t> bytes) {
        u32(static_cast<uint32_t>(bytes.size()));
        opaque_fixed(bytes);
    }
    void string(std::string_view s) {
        opaque({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
    }
    // Raw bytes, no length and no padding.
    void raw(const void* data, size_t n) { std::memcpy(space(n), data, n); }

    // Splices `chain` as raw bytes without copying (caller keeps XDR alignment).
    void append(core::slice_chain&& chain);
    // opaque<> whose bytes are a chain: length, the chain (zero-copy), padding.
    void opaque(core::slice_chain&& chain);

    // Reserves a 4-byte word to be filled in later (e.g. a length or record
    // mark); returns its handle for `patch_u32`. Valid until `finish()`.
    size_t reserve_u32() {
        size_t at = size();
        space(4);
        return at;
    }
    void patch_u32(size_t handle, uint32_t v) noexcept;

    // Total bytes written or spliced so far.
    size_t size() const noexcept { return done_.size() + (block_used_ - block_flushed_); }

    // Hands over everything written, as a chain; the writer is then empty.
    core::slice_chain finish();
    // As finish(), as one slice; requires that nothing was spliced with append().
    core::slice finish_slice();

  private:
    uint8_t* space(size_t n) {
        if (block_.size() - block_used_ < n) grow(n);
        uint8_t* p = block_.mutable_data() + block_used_;
        block_used_ += n;
        return p;
    }
    // Moves the written-but-unflushed bytes into done_ and starts a new block of
    // at least n bytes. Growing never copies: the output is a chain of blocks.
    void grow(size_t n);
    void flush();

    size_t reserve_;
    core::slice block_;         // private heap block being written
    size_t block_used_ = 0;     // bytes of block_ written
    size_t block_flushed_ = 0;  // bytes of block_ already moved into done_
    core::slice_chain done_;    // finished runs and spliced chains, in order
};

}  // namespace rpcgate::rpc
