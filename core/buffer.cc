#include "core/buffer.h"
#include "core/memory.h"

#include <malloc.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace rpcgate::core {
namespace {

struct heap_block {
    buffer_owner owner;
    // bytes follow
};

void free_heap_block(buffer_owner* o) noexcept {
    std::free(o);
}

}  // namespace

slice slice::allocate(size_t len) {
    void* mem = std::malloc(sizeof(heap_block) + (len ? len : 1));
    if (!mem) throw std::bad_alloc();
    auto* b = new (mem) heap_block;
    b->owner.release = free_heap_block;
    auto* bytes = reinterpret_cast<uint8_t*>(b + 1);
    return slice(bytes, len, &b->owner);
}

slice slice::copy_of(const void* data, size_t len) {
    slice s = allocate(len);
    if (len) std::memcpy(s.mutable_data(), data, len);
    return s;
}

void slice_chain::append(slice_chain&& other) {
    for (auto& s : other.parts_) push_back(std::move(s));
    other.clear();
}

slice_chain slice_chain::split_front(size_t n) {
    slice_chain head;
    size_t i = 0;
    while (n > 0 && i < parts_.size()) {
        slice& s = parts_[i];
        if (s.size() <= n) {
            n -= s.size();
            head.push_back(std::move(s));
            ++i;
        } else {
            head.push_back(s.share(0, n));
            s.trim_front(n);
            n = 0;
        }
    }
    parts_.erase_front(i);
    bytes_ -= head.size();
    return head;
}

void slice_chain::trim_front(size_t n) {
    size_t i = 0;
    bytes_ -= n;
    while (n > 0) {
        slice& s = parts_[i];
        if (s.size() <= n) {
            n -= s.size();
            ++i;
        } else {
            s.trim_front(n);
            n = 0;
        }
    }
    parts_.erase_front(i);
}

void slice_chain::trim(size_t n) {
    size_t keep = 0, acc = 0;
    while (keep < parts_.size() && acc + parts_[keep].size() <= n) acc += parts_[keep++].size();
    if (acc < n) parts_[keep++].trim(n - acc);
    while (parts_.size() > keep) parts_.pop_back();
    bytes_ = n;
}

uint8_t slice_chain::at(size_t i) const noexcept {
    for (const auto& s : parts_) {
        if (i < s.size()) return s[i];
        i -= s.size();
    }
    return 0;
}

bool slice_chain::copy_out(size_t off, void* dst, size_t len) const noexcept {
    if (off > bytes_ || len > bytes_ - off) return false;
    auto* out = static_cast<uint8_t*>(dst);
    for (const auto& s : parts_) {
        if (len == 0) break;
        if (off >= s.size()) {
            off -= s.size();
            continue;
        }
        size_t n = std::min(len, s.size() - off);
        std::memcpy(out, s.data() + off, n);
        out += n;
        len -= n;
        off = 0;
    }
    return true;
}

std::string slice_chain::to_string() const {
    std::string out(bytes_, '\0');
    copy_out(0, out.data(), bytes_);
    return out;
}

slice_chain slice_chain::share() const {
    slice_chain c;
    for (const auto& s : parts_) c.push_back(s.share());
    return c;
}

slice slice_chain::linearize() const {
    if (parts_.size() == 1) return parts_[0].share();
    slice s = slice::allocate(bytes_);
    copy_out(0, s.mutable_data(), bytes_);
    return s;
}

size_t slice_chain::to_iovec(iovec* out, size_t max, size_t first) const noexcept {
    size_t n = 0;
    for (size_t i = first; i < parts_.size() && n < max; ++i, ++n) {
        out[n].iov_base = const_cast<uint8_t*>(parts_[i].data());
        out[n].iov_len = parts_[i].size();
    }
    return n;
}

bool operator==(const slice_chain& a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    size_t off = 0;
    for (const auto& s : a) {
        if (std::memcmp(s.data(), b.data() + off, s.size()) != 0) return false;
        off += s.size();
    }
    return true;
}

bool keep_record_memory() noexcept {
    const char* tunables = std::getenv("GLIBC_TUNABLES");
    if (tunables && std::strstr(tunables, "glibc.malloc.")) return false;
    // Both explicit values also turn off glibc's own adjustment of them.
    return mallopt(M_MMAP_THRESHOLD, int(k_heap_block_max)) == 1 &&
           mallopt(M_TRIM_THRESHOLD, int(k_arena_keep)) == 1;
}

}  // namespace rpcgate::core
