// Cross-thread messages: bounded single-producer/single-consumer queues.
//
// Shards share nothing; when another thread (the control thread, the main
// thread, another shard) needs a shard to do something, it posts a task into
// a mailbox that it alone writes to, and the shard runs the task on its own
// thread. Each mailbox is an SPSC ring (no lock, one cache line per index);
// the consumer is woken through an eventfd that its io_uring keeps a read
// posted on. A full mailbox refuses the post (`try_post` returns false):
// backpressure is the caller's decision, memory stays bounded. A task that
// carries something the producer must get back when refused (a connection,
// its TLS session) goes through `post`, which hands the payload back
// instead of leaving the caller to pass raw pointers across threads.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <utility>

namespace rpcgate::core {

// A move-only type-erased `void()` callable (std::move_only_function is C++23).
class task {
  public:
    task() noexcept = default;
    template <typename F>
    task(F&& f) : impl_(new model<std::decay_t<F>>(std::forward<F>(f))) {}
    task(task&&) noexcept = default;
    task& operator=(task&&) noexcept = default;
    explicit operator bool() const noexcept { return bool(impl_); }
    void operator()() { impl_->call(); }
    // The callable inside, when it is an F (else null).
    template <typename F>
    F* target() noexcept {
        auto* m = dynamic_cast<model<F>*>(impl_.get());
        return m ? &m->f_ : nullptr;
    }

  private:
    struct concept_ {
        virtual ~concept_() = default;
        virtual void call() = 0;
    };
    template <typename F>
    struct model final : concept_ {
        explicit model(F&& f) : f_(std::move(f)) {}
        explicit model(const F& f) : f_(f) {}
        void call() override { f_(); }
        F f_;
    };
    std::unique_ptr<concept_> impl_;
};

template <typename T>
class spsc_ring {
  public:
    explicit spsc_ring(size_t capacity_pow2)
        : mask_(capacity_pow2 - 1), items_(new T[capacity_pow2]) {}

    // Producer thread only.
    bool try_push(T&& v) {
        size_t tail = tail_.load(std::memory_order_relaxed);
        if (tail - head_cache_ > mask_) {
            head_cache_ = head_.load(std::memory_order_acquire);
            if (tail - head_cache_ > mask_) return false;
        }
        items_[tail & mask_] = std::move(v);
        tail_.store(tail + 1, std::memory_order_release);
        return true;
    }
    // Consumer thread only.
    bool try_pop(T& out) {
        size_t head = head_.load(std::memory_order_relaxed);
        if (head == tail_cache_) {
            tail_cache_ = tail_.load(std::memory_order_acquire);
            if (head == tail_cache_) return false;
        }
        out = std::move(items_[head & mask_]);
        head_.store(head + 1, std::memory_order_release);
        return true;
    }
    size_t size_approx() const noexcept {
        return tail_.load(std::memory_order_relaxed) - head_.load(std::memory_order_relaxed);
    }

  private:
    const size_t mask_;
    std::unique_ptr<T[]> items_;
    alignas(64) std::atomic<size_t> head_{0};
    size_t tail_cache_ = 0;  // consumer's view of tail_
    alignas(64) std::atomic<size_t> tail_{0};
    size_t head_cache_ = 0;  // producer's view of head_
};

// A mailbox of tasks for one consumer, written by exactly one producer thread.
// `wake_fd` is the consumer's eventfd (shared by all its mailboxes).
class mailbox {
  public:
    mailbox(int wake_fd, size_t capacity_pow2 = 1024) : ring_(capacity_pow2), wake_fd_(wake_fd) {}

    // Producer side. Returns false when full (the task is not consumed: `t`
    // still holds it).
    bool try_post(task&& t) {
        if (!ring_.try_push(std::move(t))) return false;
        uint64_t one = 1;
        ssize_t r = ::write(wake_fd_, &one, sizeof one);
        (void)r;  // EAGAIN means the counter is already non-zero: the consumer will wake
        return true;
    }
    // Producer side: posts `fn(std::move(*payload))` to run on the consumer.
    // Returns null when posted; when the mailbox is full, the payload comes
    // back untouched, and the caller decides what to do with it.
    template <typename T, typename F>
    std::unique_ptr<T> post(std::unique_ptr<T> payload, F fn) {
        task t(carrier<T, F>{std::move(payload), std::move(fn)});
        if (try_post(std::move(t))) return nullptr;
        return std::move(t.target<carrier<T, F>>()->payload);
    }

    // Consumer side: runs every queued task; returns how many ran.
    size_t drain() {
        size_t n = 0;
        task t;
        while (ring_.try_pop(t)) {
            t();
            t = task();
            ++n;
        }
        return n;
    }

  private:
    template <typename T, typename F>
    struct carrier {
        std::unique_ptr<T> payload;
        F fn;
        void operator()() { fn(std::move(*payload)); }
    };
    spsc_ring<task> ring_;
    int wake_fd_;
};

}  // namespace rpcgate::core
