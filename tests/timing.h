// Time bounds in tests.
//
// A bound on how long something took is a claim about the machine as much as
// about the code: the suite runs on a shared 2-core box, under ASan and TSan
// (2-15x slower) and inside a TCG guest (10-50x slower for the kernel). So a
// test states the figure it expects on a quiet machine (`strict_ms`), and
// checks it only when RPCGATE_STRICT_TIMING=1; otherwise it allows
// k_timing_slack times as much. The slack is chosen so that the bound still
// separates "promptly" from the failure it guards against (a close that waits
// for a timeout of several seconds, a request that never finishes): every use
// says which failure that is.
#pragma once

#include <cstdlib>
#include <cstring>

namespace rpcgate::testing {

inline constexpr int k_timing_slack = 5;

inline bool strict_timing() noexcept {
    const char* v = std::getenv("RPCGATE_STRICT_TIMING");
    return v != nullptr && std::strcmp(v, "1") == 0;
}

// The bound to assert for something that takes about `strict_ms` on a quiet machine.
inline long timing_bound_ms(long strict_ms) noexcept {
    return strict_timing() ? strict_ms : strict_ms * k_timing_slack;
}

}  // namespace rpcgate::testing
