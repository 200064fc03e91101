// latency_histogram: bucket arithmetic and percentiles within 1 %.
#include "tools/bench/latency_histogram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

using rpcgate::bench::latency_histogram;

TEST(latency_histogram, buckets_cover_values_within_one_percent) {
    for (uint64_t v :
         {0ull, 1ull, 255ull, 256ull, 257ull, 1000ull, 123456789ull, 1ull << 40, ~0ull}) {
        size_t i = latency_histogram::index_of(v);
        ASSERT_LT(i, latency_histogram::bucket_count) << v;
        EXPECT_LE(latency_histogram::lowest_of(i), v);
        EXPECT_GE(latency_histogram::highest_of(i), v);
        uint64_t width = latency_histogram::highest_of(i) - latency_histogram::lowest_of(i);
        EXPECT_LE(double(width), double(v) / 100.0 + 1.0) << v;
    }
    // Buckets are contiguous and increasing.
    for (size_t i = 1; i < latency_histogram::bucket_count; ++i)
        ASSERT_EQ(latency_histogram::lowest_of(i), latency_histogram::highest_of(i - 1) + 1) << i;
}

TEST(latency_histogram, percentiles_match_sorted_values) {
    std::mt19937_64 rng(3);
    std::lognormal_distribution<double> d(11.0, 1.5);  // ~60 us median, long tail
    latency_histogram a, b;
    std::vector<uint64_t> all;
    for (int i = 0; i < 200000; ++i) {
        uint64_t v = uint64_t(d(rng));
        all.push_back(v);
        (i % 2 ? a : b).record(v);
    }
    a.merge(b);
    std::sort(all.begin(), all.end());
    EXPECT_EQ(a.count(), all.size());
    EXPECT_EQ(a.max(), all.back());
    EXPECT_EQ(a.min(), all.front());
    for (double q : {0.5, 0.9, 0.99, 0.999}) {
        uint64_t exact = all[size_t(std::ceil(q * double(all.size()))) - 1];
        EXPECT_NEAR(double(a.percentile(q)), double(exact), double(exact) * 0.01 + 1) << q;
    }
    EXPECT_EQ(a.percentile(1.0), all.back());
    a.clear();
    EXPECT_EQ(a.count(), 0u);
    EXPECT_EQ(a.percentile(0.5), 0u);
}
