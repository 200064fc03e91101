// Shared helpers for the libFuzzer targets. Findings abort via fuzz_check so
// that libFuzzer records the input; sanitizers catch memory errors.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "core/buffer.h"
#include "rpc/record.h"

namespace rpcgate::fuzz {

#define RPCGATE_FUZZ_CHECK(cond)                                                          \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                                 \
        }                                                                                 \
    } while (0)

// Bytes [data, data+size) as a chain cut into slices of sizes chosen by
// `shape` (a cheap generator over the given seed): exercises every straddle.
inline core::slice_chain split_chain(const uint8_t* data, size_t size, uint32_t shape) {
    core::slice_chain c;
    size_t at = 0;
    while (at < size) {
        shape = shape * 1103515245u + 12345u;
        size_t piece = 1 + (shape >> 16) % 16;
        if (piece > size - at) piece = size - at;
        c.push_back(core::slice::copy_of(data + at, piece));
        at += piece;
    }
    return c;
}

// The body of a framed record that must hold exactly one record (what the
// builders return), through the real reassembler.
inline core::slice_chain unframe(const core::slice_chain& framed) {
    core::slice_chain out;
    rpc::record_reassembler ra;
    int n = 0;
    for (const auto& s : framed) {
        auto r = ra.feed(s, [&](core::slice_chain&& rec) {
            ++n;
            out = std::move(rec);
        });
        RPCGATE_FUZZ_CHECK(r.ok());
    }
    RPCGATE_FUZZ_CHECK(n == 1);
    return out;
}

}  // namespace rpcgate::fuzz
