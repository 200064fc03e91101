// small_vector: a move-only vector that keeps its first N elements inline.
//
// Used where a container is built per record on the data path (a record's
// slices, an iovec list) so that the common case — a record in one to four
// receive buffers — allocates nothing. Falls back to the heap beyond N.
// Not thread-safe; elements must be nothrow-movable.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

namespace rpcgate::core {

template <typename T, size_t N>
class small_vector {
    static_assert(std::is_nothrow_move_constructible_v<T>);

  public:
    small_vector() noexcept = default;
    small_vector(const small_vector&) = delete;
    small_vector& operator=(const small_vector&) = delete;
    small_vector(small_vector&& o) noexcept { take(std::move(o)); }
    small_vector& operator=(small_vector&& o) noexcept {
        if (this != &o) {
            destroy();
            take(std::move(o));
        }
        return *this;
    }
    ~small_vector() { destroy(); }

    size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    size_t capacity() const noexcept { return cap_; }
    T* data() noexcept { return ptr(); }
    const T* data() const noexcept { return ptr(); }
    T& operator[](size_t i) noexcept { return ptr()[i]; }
    const T& operator[](size_t i) const noexcept { return ptr()[i]; }
    T& front() noexcept { return ptr()[0]; }
    T& back() noexcept { return ptr()[size_ - 1]; }
    const T& back() const noexcept { return ptr()[size_ - 1]; }
    T* begin() noexcept { return ptr(); }
    T* end() noexcept { return ptr() + size_; }
    const T* begin() const noexcept { return ptr(); }
    const T* end() const noexcept { return ptr() + size_; }

    template <typename... A>
    T& emplace_back(A&&... a) {
        if (size_ == cap_) grow(cap_ * 2);
        T* p = new (ptr() + size_) T(std::forward<A>(a)...);
        ++size_;
        return *p;
    }
    void push_back(T&& v) { emplace_back(std::move(v)); }
    void pop_back() noexcept { ptr()[--size_].~T(); }

    // Removes the first n elements, shifting the rest down.
    void erase_front(size_t n) noexcept {
        // n == 0 must be a no-op: the loop below would move-construct each
        // element onto itself, which empties a slice and leaks its reference.
        if (n == 0) return;
        T* p = ptr();
        for (size_t i = 0; i < n; ++i) p[i].~T();
        for (size_t i = n; i < size_; ++i) {
            new (p + i - n) T(std::move(p[i]));
            p[i].~T();
        }
        size_ -= n;
    }
    void clear() noexcept {
        T* p = ptr();
        for (size_t i = 0; i < size_; ++i) p[i].~T();
        size_ = 0;
    }
    void reserve(size_t n) {
        if (n > cap_) grow(n);
    }

  private:
    T* ptr() noexcept { return heap_ ? heap_ : reinterpret_cast<T*>(inline_); }
    const T* ptr() const noexcept { return heap_ ? heap_ : reinterpret_cast<const T*>(inline_); }

    void grow(size_t n) {
        T* fresh = static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(alignof(T))));
        T* old = ptr();
        for (size_t i = 0; i < size_; ++i) {
            new (fresh + i) T(std::move(old[i]));
            old[i].~T();
        }
        if (heap_) ::operator delete(heap_, std::align_val_t(alignof(T)));
        heap_ = fresh;
        cap_ = n;
    }
    void destroy() noexcept {
        clear();
        if (heap_) ::operator delete(heap_, std::align_val_t(alignof(T)));
        heap_ = nullptr;
        cap_ = N;
    }
    void take(small_vector&& o) noexcept {
        if (o.heap_) {
            heap_ = o.heap_;
            cap_ = o.cap_;
            size_ = o.size_;
            o.heap_ = nullptr;
            o.cap_ = N;
            o.size_ = 0;
            return;
        }
        T* src = o.ptr();
        T* dst = ptr();
        for (size_t i = 0; i < o.size_; ++i) {
            new (dst + i) T(std::move(src[i]));
            src[i].~T();
        }
        size_ = o.size_;
        o.size_ = 0;
    }

    T* heap_ = nullptr;
    size_t size_ = 0;
    size_t cap_ = N;
    alignas(T) unsigned char inline_[N * sizeof(T)];
};

}  // namespace rpcgate::core
