// timer_wheel: a hashed timing wheel for connection deadlines.
//
// Idle timeouts, handshake deadlines and drain deadlines are coarse (tens of
// milliseconds are fine) and mostly cancelled before they fire, so arming and
// cancelling must be O(1) and allocation-free: timers are intrusive (the
// owner embeds a `timer`) and sit in a doubly-linked list per slot. A timer
// further away than one turn of the wheel stays in its slot and counts the
// turns down. One wheel per shard; not thread-safe.
#pragma once

#include <cstdint>

namespace rpcgate::core {

class timer_wheel;

class timer {
  public:
    using callback = void (*)(timer*, void* arg);
    timer() noexcept = default;
    timer(callback fn, void* arg) noexcept : fn_(fn), arg_(arg) {}
    timer(const timer&) = delete;
    timer& operator=(const timer&) = delete;
    ~timer();

    void set_callback(callback fn, void* arg) noexcept {
        fn_ = fn;
        arg_ = arg;
    }
    bool armed() const noexcept { return wheel_ != nullptr; }
    void cancel() noexcept;

  private:
    friend class timer_wheel;
    callback fn_ = nullptr;
    void* arg_ = nullptr;
    timer_wheel* wheel_ = nullptr;
    timer* prev_ = nullptr;
    timer* next_ = nullptr;
    uint64_t rounds_ = 0;
    uint32_t slot_ = 0;  // index into the wheel, or the wheel's firing list
};

class timer_wheel {
  public:
    // `tick_ms`: resolution; `slots` must be a power of two.
    explicit timer_wheel(uint32_t tick_ms = 10, uint32_t slots = 1024);
    ~timer_wheel();
    timer_wheel(const timer_wheel&) = delete;
    timer_wheel& operator=(const timer_wheel&) = delete;

    // (Re)arms `t` to fire `delay_ms` from the wheel's current time (rounded up to a tick).
    void arm(timer& t, uint64_t delay_ms) noexcept;
    // Fires every timer whose deadline is <= now_ms. Callbacks may arm/cancel timers.
    void advance(uint64_t now_ms);
    // Milliseconds until the next tick that has work, or -1 if no timer is armed.
    int64_t ms_until_next(uint64_t now_ms) const noexcept;
    uint32_t armed_count() const noexcept { return armed_; }
    // Moves the wheel's clock without firing anything: only for an empty wheel
    // (or at start), since armed timers would be skipped.
    void set_now(uint64_t now_ms) noexcept { now_tick_ = now_ms / tick_ms_; }

  private:
    friend class timer;
    void unlink(timer& t) noexcept;
    void link(timer& t, uint32_t slot) noexcept;
    timer*& head(uint32_t slot) noexcept { return slot > mask_ ? firing_ : slots_[slot]; }

    uint32_t tick_ms_;
    uint32_t mask_;
    timer** slots_;
    timer* firing_ = nullptr;  // timers of the tick being processed
    uint64_t now_tick_ = 0;    // last tick processed
    uint32_t armed_ = 0;
};

// Monotonic milliseconds.
uint64_t monotonic_ms() noexcept;
// CLOCK_MONOTONIC in nanoseconds.
uint64_t monotonic_ns() noexcept;

}  // namespace rpcgate::core
