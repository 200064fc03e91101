// RFC 5531 §11 record marking: stream reassembly and framing.
//
// On a stream transport each RPC message is a *record* sent as one or more
// *fragments*; each fragment starts with a 4-byte big-endian header whose top
// bit says "last fragment of the record" and whose low 31 bits are the
// fragment's payload length.
//
// `record_reassembler` turns received slices (any size, split anywhere — one
// byte at a time works) into complete records, each delivered as a
// `core::slice_chain` whose slices share the fed buffers: payload bytes are
// never copied. Only a fragment header that straddles two slices is gathered,
// into 4 bytes of internal state. One reassembler per connection direction;
// single thread (the shard owning the connection).
//
// `frame_record` does the reverse for sending: it prefixes a record with
// fragment headers, splitting at a configurable fragment size, again sharing
// the payload slices.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/buffer.h"
#include "rpc/result.h"

namespace rpcgate::rpc {

inline constexpr uint32_t record_last_fragment = 0x80000000u;
inline constexpr uint32_t record_max_fragment = 0x7fffffffu;
// 4 MiB of payload (NFS rsize/wsize maximum) plus room for headers.
inline constexpr size_t default_max_record = 4 * 1024 * 1024 + 64 * 1024;
// Caps the slices one record may pin: a hostile peer sending 1-byte fragments
// must not make us hold millions of slice descriptors. libtirpc's smallest
// fragment is ~100 bytes, so a legitimate 4 MiB record has < 45000 fragments.
inline constexpr size_t default_max_fragments = 65536;

struct record_limits {
    size_t max_record = default_max_record;        // payload bytes per record
    size_t max_fragments = default_max_fragments;  // fragments per record
};

class record_reassembler {
  public:
    explicit record_reassembler(record_limits limits = {}) noexcept : limits_(limits) {}
    record_reassembler(const record_reassembler&) = delete;
    record_reassembler& operator=(const record_reassembler&) = delete;

    // Consumes `data` (the caller keeps its slice; the reassembler shares what
    // it keeps) and calls `on_record(core::slice_chain&& record)` for every
    // record completed, in order. The callback may return void, or bool:
    // `false` stops right after that record, leaving the rest of `data`
    // unconsumed (e.g. after an AUTH_TLS probe the following bytes belong to
    // TLS, not to RPC).
    //
    // Returns the number of bytes of `data` consumed, or an error
    // (record_too_large, too_many_fragments) after which the stream cannot be
    // resynchronised: the caller closes the connection. The error is sticky.
    template <typename F>
    result<size_t> feed(const core::slice& data, F&& on_record);

    // Payload bytes of the record being assembled plus a partial header:
    // what the connection currently holds (for flow control).
    size_t buffered() const noexcept { return record_size_ - frag_left_ + hdr_have_; }
    // True when bytes of an unfinished record are held or expected — a close
    // now cuts a record off.
    bool partial() const noexcept { return in_record_ || hdr_have_ != 0; }
    // Totals since construction (metrics; tests check fragmentation happened).
    uint64_t records_completed() const noexcept { return records_total_; }
    uint64_t fragments_seen() const noexcept { return fragments_total_; }
    // The sticky error, or errc::ok.
    errc error() const noexcept { return error_; }
    const record_limits& limits() const noexcept { return limits_; }
    // Forgets any partial record and a previous error.
    void reset() noexcept;

  private:
    // Parses a fragment header; returns false (and sets error_) if it breaks a limit.
    bool begin_fragment(uint32_t header) noexcept;
    // Gathers header bytes from data[off..]; returns the bytes taken.
    size_t gather_header(const core::slice& data, size_t off) noexcept;
    core::slice_chain take_record() noexcept;

    template <typename F>
    static bool deliver(F& f, core::slice_chain&& rec) {
        if constexpr (std::is_same_v<decltype(f(std::move(rec))), void>) {
            f(std::move(rec));
            return true;
        } else {
            return static_cast<bool>(f(std::move(rec)));
        }
    }

    record_limits limits_;
    core::slice_chain record_;  // payload slices of the record being assembled
    size_t record_size_ = 0;    // payload bytes announced so far (incl. frag_left_)
    size_t fragments_ = 0;      // fragments begun in this record
    size_t frag_left_ = 0;      // payload bytes still expected in this fragment
    bool in_fragment_ = false;
    bool last_ = false;       // this fragment ends the record
    bool in_record_ = false;  // at least one header of the record was seen
    uint8_t hdr_have_ = 0;    // bytes of a straddling header gathered
    uint8_t hdr_[4] = {};
    errc error_ = errc::ok;
    uint64_t records_total_ = 0;
    uint64_t fragments_total_ = 0;
};

// Frames `payload` as one record: fragments of at most `max_fragment` payload
// bytes, each preceded by its header. Headers live in one small heap block;
// payload slices are shared, never copied. An empty payload becomes a single
// empty last fragment. `max_fragment` is clamped to [1, 2^31-1].
core::slice_chain frame_record(core::slice_chain&& payload,
                               size_t max_fragment = record_max_fragment);

template <typename F>
result<size_t> record_reassembler::feed(const core::slice& data, F&& on_record) {
    if (error_ != errc::ok) return error_;
    const uint8_t* base = data.data();
    const size_t n = data.size();
    size_t off = 0;
    while (off < n) {
        if (!in_fragment_) {
            uint32_t h;
            if (hdr_have_ == 0 && n - off >= 4) [[likely]] {
                h = (uint32_t{base[off]} << 24) | (uint32_t{base[off + 1]} << 16) |
                    (uint32_t{base[off + 2]} << 8) | base[off + 3];
                off += 4;
            } else {
                off += gather_header(data, off);
                if (hdr_have_ < 4) break;
                h = (uint32_t{hdr_[0]} << 24) | (uint32_t{hdr_[1]} << 16) |
                    (uint32_t{hdr_[2]} << 8) | hdr_[3];
                hdr_have_ = 0;
            }
            const size_t len = h & record_max_fragment;
            // Fast path: a whole single-fragment record inside this slice — the
            // common case for small calls — becomes a one-slice chain directly.
            if ((h & record_last_fragment) && !in_record_ && len <= n - off &&
                len <= limits_.max_record) [[likely]] {
                core::slice_chain rec(data.share(off, len));
                off += len;
                ++records_total_;
                ++fragments_total_;
                if (!deliver(on_record, std::move(rec))) return off;
                continue;
            }
            if (!begin_fragment(h)) return error_;
            if (!in_fragment_) {  // empty fragment
                if (last_ && !deliver(on_record, take_record())) return off;
                continue;
            }
        }
        size_t k = frag_left_ < n - off ? frag_left_ : n - off;
        record_.push_back(data.share(off, k));
        off += k;
        frag_left_ -= k;
        if (frag_left_ == 0) {
            in_fragment_ = false;
            if (last_ && !deliver(on_record, take_record())) return off;
        }
    }
    return off;
}

}  // namespace rpcgate::rpc
