#include "tools/bench/latency_histogram.h"

#include <algorithm>
#include <cmath>

namespace rpcgate::bench {

latency_histogram::latency_histogram() : counts_(new uint64_t[bucket_count]()) {}

void latency_histogram::merge(const latency_histogram& o) noexcept {
    for (size_t i = 0; i < bucket_count; ++i) counts_[i] += o.counts_[i];
    count_ += o.count_;
    sum_ += o.sum_;
    max_ = std::max(max_, o.max_);
    min_ = std::min(min_, o.min_);
}

void latency_histogram::clear() noexcept {
    std::fill(counts_.get(), counts_.get() + bucket_count, 0);
    count_ = sum_ = max_ = 0;
    min_ = UINT64_MAX;
}

uint64_t latency_histogram::lowest_of(size_t idx) noexcept {
    if (idx < linear) return idx;
    size_t k = idx - linear;
    unsigned shift = unsigned(k >> sub_bits) + 1;
    uint64_t mantissa = (uint64_t{1} << sub_bits) + (k & ((size_t{1} << sub_bits) - 1));
    return mantissa << shift;
}

uint64_t latency_histogram::highest_of(size_t idx) noexcept {
    if (idx < linear) return idx;
    unsigned shift = unsigned((idx - linear) >> sub_bits) + 1;
    return lowest_of(idx) + ((uint64_t{1} << shift) - 1);
}

uint64_t latency_histogram::percentile(double q) const noexcept {
    if (count_ == 0) return 0;
    q = std::clamp(q, 0.0, 1.0);
    uint64_t rank = std::max<uint64_t>(1, uint64_t(std::ceil(q * double(count_))));
    if (rank >= count_) return max_;  // the largest value is known exactly
    uint64_t seen = 0;
    for (size_t i = 0; i < bucket_count; ++i) {
        seen += counts_[i];
        if (seen >= rank) {
            uint64_t mid = lowest_of(i) + (highest_of(i) - lowest_of(i)) / 2;
            return std::clamp(mid, min(), max_);
        }
    }
    return max_;
}

}  // namespace rpcgate::bench
