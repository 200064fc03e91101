// Small pieces every load generator of rpcgate-bench uses: the monotonic
// clock in nanoseconds and a seeded pseudo-random generator.
//
// Plain functions and values; each thread keeps its own `rng`.
#pragma once

#include <time.h>

#include <cstdint>

namespace rpcgate::bench {

inline uint64_t now_ns() noexcept {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

// splitmix64: tiny, fast, and good enough for sizes, payload bytes, mixes and
// offsets (not for anything secret).
struct rng {
    uint64_t s;
    uint64_t next() noexcept {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Uniform enough in [0, n) for n far below 2^64.
    uint64_t below(uint64_t n) noexcept { return n ? next() % n : 0; }
};

}  // namespace rpcgate::bench
