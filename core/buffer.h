// Byte buffers for the data path: reference-counted slices and chains of them.
//
// A `slice` is a view (pointer + length) into memory that belongs to a
// `buffer_owner`. The owner is told when the last slice over it dies, and takes
// its memory back: a provided-buffer ring re-posts the buffer to the kernel, a
// heap block frees itself, a DPDK mbuf goes back to its pool. This is folly's
// IOBuf / Seastar's temporary_buffer idea: ownership is explicit and the buffer
// returns itself.
//
// Threading: the reference count is NOT atomic. A slice, every slice shared
// from it and its owner live on one thread (a shard, or the control thread).
// To hand bytes to another thread, copy them (`slice::copy_of`) — this only
// happens on rare paths such as a TLS handshake hand-off.
//
// A `slice_chain` is an ordered list of slices that together hold one logical
// byte string (a record that arrived in three receive buffers is a chain of
// three slices). It can be exported as an iovec array for sendmsg() without
// copying, and keeps up to four slices inline so that building one per record
// does not allocate.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "core/small_vector.h"

namespace rpcgate::core {

// The control block shared by every slice over one piece of memory.
// `release` is called exactly once, when `refs` drops from 1 to 0.
struct buffer_owner {
    uint32_t refs = 0;
    void (*release)(buffer_owner*) noexcept = nullptr;
};

class slice {
  public:
    slice() noexcept = default;

    // Wraps [data, data+len) owned by `owner`, taking a new reference on it.
    // `owner` may be null for memory that outlives every slice (static data).
    slice(const uint8_t* data, size_t len, buffer_owner* owner) noexcept
        : data_(const_cast<uint8_t*>(data)), len_(len), owner_(owner) {
        if (owner_) ++owner_->refs;
    }

    slice(const slice&) = delete;
    slice& operator=(const slice&) = delete;
    slice(slice&& o) noexcept : data_(o.data_), len_(o.len_), owner_(o.owner_) {
        o.data_ = nullptr;
        o.len_ = 0;
        o.owner_ = nullptr;
    }
    slice& operator=(slice&& o) noexcept {
        if (this != &o) {
            drop();
            data_ = std::exchange(o.data_, nullptr);
            len_ = std::exchange(o.len_, 0);
            owner_ = std::exchange(o.owner_, nullptr);
        }
        return *this;
    }
    ~slice() { drop(); }

    // A fresh heap block of `len` bytes (uninitialised), freed with its last slice.
    static slice allocate(size_t len);
    // A heap copy of the given bytes.
    static slice copy_of(const void* data, size_t len);
    static slice copy_of(std::string_view s) { return copy_of(s.data(), s.size()); }
    // Unowned view of memory that outlives every slice made from it.
    static slice unowned(const void* data, size_t len) noexcept {
        return slice(static_cast<const uint8_t*>(data), len, nullptr);
    }

    const uint8_t* data() const noexcept { return data_; }
    // Writable access; only meaningful for memory the caller knows is private
    // (a block it just allocated and has not shared).
    uint8_t* mutable_data() noexcept { return data_; }
    size_t size() const noexcept { return len_; }
    bool empty() const noexcept { return len_ == 0; }
    uint8_t operator[](size_t i) const noexcept { return data_[i]; }
    std::span<const uint8_t> bytes() const noexcept { return {data_, len_}; }
    std::string_view view() const noexcept { return {reinterpret_cast<const char*>(data_), len_}; }
    buffer_owner* owner() const noexcept { return owner_; }

    // Another reference to the same bytes (or to [off, off+len) of them).
    // Precondition: off + len <= size().
    slice share() const noexcept { return slice(data_, len_, owner_); }
    slice share(size_t off, size_t len) const noexcept { return slice(data_ + off, len, owner_); }

    // Drops bytes from the front / keeps only the first n bytes. n <= size().
    void trim_front(size_t n) noexcept {
        data_ += n;
        len_ -= n;
    }
    void trim(size_t n) noexcept { len_ = n; }

  private:
    void drop() noexcept {
        if (owner_ && --owner_->refs == 0) owner_->release(owner_);
        owner_ = nullptr;
    }

    uint8_t* data_ = nullptr;
    size_t len_ = 0;
    buffer_owner* owner_ = nullptr;
};

// Ordered slices forming one byte string. Move-only.
class slice_chain {
  public:
    slice_chain() noexcept = default;
    explicit slice_chain(slice s) { push_back(std::move(s)); }
    slice_chain(slice_chain&&) noexcept = default;
    slice_chain& operator=(slice_chain&&) noexcept = default;

    // Appends a slice; empty slices are dropped so every element has bytes.
    void push_back(slice s) {
        if (s.empty()) return;
        bytes_ += s.size();
        parts_.push_back(std::move(s));
    }
    void append(slice_chain&& other);

    size_t size() const noexcept { return bytes_; }  // total bytes
    bool empty() const noexcept { return bytes_ == 0; }
    size_t count() const noexcept { return parts_.size(); }  // number of slices
    const slice& part(size_t i) const noexcept { return parts_[i]; }
    const slice* begin() const noexcept { return parts_.begin(); }
    const slice* end() const noexcept { return parts_.end(); }
    void clear() noexcept {
        parts_.clear();
        bytes_ = 0;
    }

    // Removes and returns the first n bytes (n <= size()) as a chain of their own,
    // sharing (not copying) a slice that straddles the cut.
    slice_chain split_front(size_t n);
    // Drops the first n bytes (n <= size()).
    void trim_front(size_t n);
    // Keeps only the first n bytes (n <= size()).
    void trim(size_t n);

    // Byte at offset i (i < size()); linear in the number of slices.
    uint8_t at(size_t i) const noexcept;
    // Copies bytes [off, off+len) into dst; returns false if out of range.
    bool copy_out(size_t off, void* dst, size_t len) const noexcept;
    // All bytes in one string (tests, logs, rare paths).
    std::string to_string() const;
    // A chain holding the same bytes by reference.
    slice_chain share() const;
    // One contiguous slice: shares when the chain has a single slice, copies otherwise.
    slice linearize() const;

    // Fills up to `max` iovecs, starting at slice `first`; returns how many.
    size_t to_iovec(iovec* out, size_t max, size_t first = 0) const noexcept;

  private:
    small_vector<slice, 4> parts_;
    size_t bytes_ = 0;
};

bool operator==(const slice_chain& a, std::string_view b) noexcept;

}  // namespace rpcgate::core
