#include "core/timer_wheel.h"

#include <time.h>

namespace rpcgate::core {

uint64_t monotonic_ms() noexcept {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

uint64_t monotonic_ns() noexcept {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}

timer::~timer() {
    cancel();
}

void timer::cancel() noexcept {
    if (wheel_) wheel_->unlink(*this);
}

timer_wheel::timer_wheel(uint32_t tick_ms, uint32_t slots)
    : tick_ms_(tick_ms ? tick_ms : 1), mask_(slots - 1), slots_(new timer*[slots]()) {
    now_tick_ = monotonic_ms() / tick_ms_;
}

timer_wheel::~timer_wheel() {
    for (uint32_t i = 0; i <= mask_; ++i) {
        while (slots_[i]) unlink(*slots_[i]);
    }
    delete[] slots_;
}

void timer_wheel::unlink(timer& t) noexcept {
    if (t.prev_) {
        t.prev_->next_ = t.next_;
    } else {
        head(t.slot_) = t.next_;
    }
    if (t.next_) t.next_->prev_ = t.prev_;
    t.prev_ = t.next_ = nullptr;
    t.wheel_ = nullptr;
    --armed_;
}

void timer_wheel::link(timer& t, uint32_t slot) noexcept {
    timer*& h = head(slot);
    t.slot_ = slot;
    t.prev_ = nullptr;
    t.next_ = h;
    if (h) h->prev_ = &t;
    h = &t;
    t.wheel_ = this;
    ++armed_;
}

void timer_wheel::arm(timer& t, uint64_t delay_ms) noexcept {
    if (t.wheel_) t.wheel_->unlink(t);
    uint64_t ticks = (delay_ms + tick_ms_ - 1) / tick_ms_;
    if (ticks == 0) ticks = 1;
    t.rounds_ = (ticks - 1) / (uint64_t(mask_) + 1);
    link(t, uint32_t((now_tick_ + ticks) & mask_));
}

void timer_wheel::advance(uint64_t now_ms) {
    uint64_t target = now_ms / tick_ms_;
    while (now_tick_ < target) {
        if (armed_ == 0) {
            now_tick_ = target;
            break;
        }
        ++now_tick_;
        uint32_t slot = uint32_t(now_tick_ & mask_);
        // Move the slot's timers to the firing list; a timer whose callback cancels
        // another one still in that list unlinks it there, safely.
        while (timer* t = slots_[slot]) {
            unlink(*t);
            link(*t, mask_ + 1);
        }
        while (timer* t = firing_) {
            unlink(*t);
            if (t->rounds_ > 0) {
                --t->rounds_;
                link(*t, slot);
            } else if (t->fn_) {
                t->fn_(t, t->arg_);
            }
        }
    }
}

int64_t timer_wheel::ms_until_next(uint64_t now_ms) const noexcept {
    if (armed_ == 0) return -1;
    uint64_t next_tick_ms = (now_ms / tick_ms_ + 1) * tick_ms_;
    return int64_t(next_tick_ms - now_ms);
}

}  // namespace rpcgate::core
