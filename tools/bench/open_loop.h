// open_loop_schedule: when each call of an open-loop run is meant to leave.
//
// A closed-loop client sends the next call when a reply frees a slot, so a
// server that stalls also stalls the client, and the calls that were not sent
// during the stall are never measured (coordinated omission: the stall shows
// up as one slow call instead of many). An open-loop client sends at a fixed
// rate whatever the server does, and measures each call's latency from the
// time it was *meant* to leave: when the client falls behind (no free slot,
// a late wake-up), that lateness is part of the call's latency.
//
// `--rate R` over C connections: connection i sends its k-th call at
//
//     intended(i, k) = anchor_i + k * C / R,   anchor_i = ready_i + i / R
//
// where ready_i is when connection i became able to send (after the connect
// and any TLS handshake, which are not part of any call). Connections that
// are ready together interleave evenly: the run's calls leave 1/R apart.
//
// A plain value (no clock, no I/O); each load connection keeps one.
#pragma once

#include <cstdint>

namespace rpcgate::bench {

class open_loop_schedule {
  public:
    open_loop_schedule() = default;
    // `rate`: calls per second over all `connections` (> 0); `index` in
    // [0, connections); `ready_ns`: when this connection could first send.
    open_loop_schedule(double rate, unsigned connections, unsigned index,
                       uint64_t ready_ns) noexcept
        : anchor_ns_(ready_ns + uint64_t(double(index) * 1e9 / rate + 0.5)),
          period_ns_(double(connections) * 1e9 / rate) {}

    // When the k-th call (from 0) is meant to leave, to the nearest
    // nanosecond. Computed from the anchor each time, not accumulated, so
    // rounding never drifts over a long run.
    uint64_t intended(uint64_t k) const noexcept {
        return anchor_ns_ + uint64_t(double(k) * period_ns_ + 0.5);
    }
    // How many calls are due by `now_ns` (those with intended(k) <= now_ns).
    uint64_t due_by(uint64_t now_ns) const noexcept {
        if (now_ns < anchor_ns_) return 0;
        uint64_t n = uint64_t(double(now_ns - anchor_ns_) / period_ns_) + 1;
        // Floating point may put the boundary one call off either way.
        while (n > 0 && intended(n - 1) > now_ns) --n;
        while (intended(n) <= now_ns) ++n;
        return n;
    }
    uint64_t anchor_ns() const noexcept { return anchor_ns_; }
    double period_ns() const noexcept { return period_ns_; }

  private:
    uint64_t anchor_ns_ = 0;
    double period_ns_ = 0;
};

}  // namespace rpcgate::bench
