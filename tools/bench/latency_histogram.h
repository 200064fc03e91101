// latency_histogram: log-linear buckets for latencies in nanoseconds.
//
// HdrHistogram's layout, simplified: values below 256 ns have a bucket each;
// above, every power of two is split into 128 equal buckets, so a bucket is at
// most 1/128 (< 0.8 %) of its value wide. The counts live in one fixed array
// (7424 x 8 bytes), allocated once: recording is an index computation and an
// increment, never an allocation. Exact min, max and sum are kept alongside.
//
// One histogram per shard thread (not thread-safe); `merge` combines them
// after the threads have stopped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace rpcgate::bench {

class latency_histogram {
  public:
    static constexpr unsigned sub_bits = 7;                  // 128 buckets per power of two
    static constexpr size_t linear = size_t{2} << sub_bits;  // 256 exact buckets
    static constexpr size_t bucket_count = linear + (63 - sub_bits - 1 + 1) * (1u << sub_bits);

    latency_histogram();
    latency_histogram(latency_histogram&&) noexcept = default;
    latency_histogram& operator=(latency_histogram&&) noexcept = default;

    void record(uint64_t ns) noexcept {
        ++counts_[index_of(ns)];
        ++count_;
        sum_ += ns;
        if (ns > max_) max_ = ns;
        if (ns < min_) min_ = ns;
    }
    void merge(const latency_histogram& o) noexcept;
    void clear() noexcept;

    uint64_t count() const noexcept { return count_; }
    uint64_t max() const noexcept { return max_; }
    uint64_t min() const noexcept { return count_ ? min_ : 0; }
    double mean() const noexcept { return count_ ? double(sum_) / double(count_) : 0.0; }
    // The value at quantile q in [0, 1]: the midpoint of the bucket holding the
    // ceil(q * count)-th smallest value, clamped to [min, max]; the exact max
    // for the last rank. 0 when empty.
    uint64_t percentile(double q) const noexcept;

    // Bucket arithmetic (exposed for tests).
    static size_t index_of(uint64_t v) noexcept {
        if (v < linear) return size_t(v);
        unsigned shift = unsigned(63 - __builtin_clzll(v)) - sub_bits;  // >= 1
        uint64_t mantissa = v >> shift;                                 // in [128, 256)
        return linear + (shift - 1) * (size_t{1} << sub_bits) +
               size_t(mantissa - (uint64_t{1} << sub_bits));
    }
    static uint64_t lowest_of(size_t idx) noexcept;
    static uint64_t highest_of(size_t idx) noexcept;

    // Calls f(lowest, highest, count) for every non-empty bucket, lowest first.
    template <typename F>
    void for_each_bucket(F&& f) const {
        for (size_t i = 0; i < bucket_count; ++i)
            if (counts_[i]) f(lowest_of(i), highest_of(i), counts_[i]);
    }

  private:
    std::unique_ptr<uint64_t[]> counts_;
    uint64_t count_ = 0;
    uint64_t sum_ = 0;
    uint64_t max_ = 0;
    uint64_t min_ = UINT64_MAX;
};

}  // namespace rpcgate::bench
