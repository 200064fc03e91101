// block_writer: output of the TLS data path (ciphertext records, decrypted
// plaintext) written into heap blocks front to back and handed out as shares
// of the block: one slice per block per call, not one per record, and no
// allocation while the previous output has been released (the block is then
// reused from the start). Internal to tls/ (session.cc, record_layer.cc).
//
// Threads: as core::slice, one thread at a time.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/buffer.h"

namespace rpcgate::tls {

class block_writer {
  public:
    explicit block_writer(size_t block_size) : block_size_(block_size) {}

    size_t room() const noexcept { return blk_.size() - used_; }
    uint8_t* tail() noexcept { return blk_.mutable_data() + used_; }
    void commit(size_t n) noexcept { used_ += n; }

    // Makes room for at least n contiguous bytes.
    void ensure(size_t n) {
        if (room() >= n) return;
        flush();
        if (!blk_.empty() && blk_.owner()->refs == 1 && blk_.size() >= n) {
            used_ = start_ = 0;
            return;
        }
        blk_ = core::slice::allocate(std::max(block_size_, n));
        used_ = start_ = 0;
    }
    // Moves everything written so far to `out`.
    void drain(core::slice_chain& out) {
        flush();
        if (!ready_.empty()) out.append(std::move(ready_));
    }
    bool idle() const noexcept { return used_ == start_ && ready_.empty(); }
    // Forgets the block; slices already handed out keep it alive until they go.
    void release() noexcept {
        if (!idle()) return;
        blk_ = core::slice();
        used_ = start_ = 0;
    }

  private:
    void flush() {
        if (used_ > start_) ready_.push_back(blk_.share(start_, used_ - start_));
        start_ = used_;
    }

    size_t block_size_;
    core::slice blk_;   // the whole block; size() is its capacity
    size_t used_ = 0;   // bytes written into blk_
    size_t start_ = 0;  // first written byte not yet in ready_
    core::slice_chain ready_;
};

}  // namespace rpcgate::tls
