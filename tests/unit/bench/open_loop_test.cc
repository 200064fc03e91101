// open_loop_schedule: the intended send times of an open-loop run.
#include "tools/bench/open_loop.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

using rpcgate::bench::open_loop_schedule;

namespace {

constexpr uint64_t k_ready = 5'000'000'000;  // any monotonic time

TEST(open_loop_schedule, connections_ready_together_interleave_evenly) {
    // 10,000 calls/s over 4 connections: each connection every 400 us, the
    // run as a whole every 100 us, connection i offset by i * 100 us.
    const unsigned conns = 4;
    std::vector<open_loop_schedule> s;
    for (unsigned i = 0; i < conns; ++i) s.emplace_back(10000.0, conns, i, k_ready);
    std::vector<uint64_t> all;
    for (unsigned i = 0; i < conns; ++i) {
        EXPECT_EQ(s[i].anchor_ns(), k_ready + i * 100'000u) << i;
        EXPECT_DOUBLE_EQ(s[i].period_ns(), 400'000.0);
        for (uint64_t k = 0; k < 1000; ++k) all.push_back(s[i].intended(k));
    }
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all.front(), k_ready);
    for (size_t j = 1; j < all.size(); ++j) ASSERT_EQ(all[j] - all[j - 1], 100'000u) << j;
}

TEST(open_loop_schedule, fractional_periods_do_not_drift) {
    // 3 calls/s on one connection: 333,333,333.3 ns apart. Accumulating the
    // rounded period would lose a third of a nanosecond a call; an hour's worth
    // of calls must still land on k / 3 seconds (to the nearest nanosecond).
    open_loop_schedule s(3.0, 1, 0, k_ready);
    const uint64_t hour = 3 * 3600;
    EXPECT_EQ(s.intended(hour), k_ready + 3600ull * 1'000'000'000ull);
    EXPECT_EQ(s.intended(1), k_ready + 333'333'333u);
    EXPECT_EQ(s.intended(2), k_ready + 666'666'667u);
}

TEST(open_loop_schedule, due_by_counts_calls_whose_time_has_come) {
    open_loop_schedule s(1000.0, 2, 1, k_ready);  // every 2 ms from ready + 1 ms
    const uint64_t a = k_ready + 1'000'000;
    EXPECT_EQ(s.anchor_ns(), a);
    EXPECT_EQ(s.due_by(0), 0u);
    EXPECT_EQ(s.due_by(a - 1), 0u);
    EXPECT_EQ(s.due_by(a), 1u);  // the first call is due at the anchor itself
    for (uint64_t k : {1ull, 2ull, 7ull, 1000ull, 123457ull}) {
        EXPECT_EQ(s.due_by(s.intended(k) - 1), k) << k;
        EXPECT_EQ(s.due_by(s.intended(k)), k + 1) << k;
    }
    // One second after the anchor: calls at 0, 2, ..., 1000 ms.
    EXPECT_EQ(s.due_by(a + 1'000'000'000), 501u);
}

TEST(open_loop_schedule, slow_rates_spread_connections_over_one_period) {
    // Fewer calls per second than connections: each connection waits seconds.
    open_loop_schedule first(2.0, 8, 0, k_ready), last(2.0, 8, 7, k_ready);
    EXPECT_DOUBLE_EQ(first.period_ns(), 4e9);
    EXPECT_EQ(last.anchor_ns(), k_ready + 3'500'000'000u);
    EXPECT_LT(last.anchor_ns(), first.intended(1));
}

}  // namespace
