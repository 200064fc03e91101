// Helpers shared by the rpc unit tests: hex literals and chain construction.
#pragma once

#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/buffer.h"

namespace rpcgate::rpc::test {

// "80 00 00 20 | 12345678" -> bytes; every non-hex character is ignored.
inline std::string unhex(std::string_view text) {
    std::string out;
    int hi = -1;
    for (char c : text) {
        if (!std::isxdigit(static_cast<unsigned char>(c))) continue;
        int v = std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : std::tolower(c) - 'a' + 10;
        if (hi < 0) {
            hi = v;
        } else {
            out.push_back(static_cast<char>(hi << 4 | v));
            hi = -1;
        }
    }
    return out;
}

inline std::string hex(std::string_view bytes) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        if (!out.empty()) out.push_back(' ');
        out.push_back(digits[c >> 4]);
        out.push_back(digits[c & 15]);
    }
    return out;
}

inline std::string to_string(const core::slice& s) {
    return std::string(s.view());
}

// A chain holding `bytes` split after each offset in `cuts` (heap copies).
inline core::slice_chain chain_of(std::string_view bytes, std::vector<size_t> cuts = {}) {
    core::slice_chain c;
    size_t at = 0;
    for (size_t cut : cuts) {
        if (cut <= at || cut >= bytes.size()) continue;
        c.push_back(core::slice::copy_of(bytes.substr(at, cut - at)));
        at = cut;
    }
    c.push_back(core::slice::copy_of(bytes.substr(at)));
    return c;
}

// Every byte in its own slice: the worst case for straddling reads.
inline core::slice_chain bytewise_chain(std::string_view bytes) {
    core::slice_chain c;
    for (char ch : bytes) c.push_back(core::slice::copy_of(&ch, 1));
    return c;
}

}  // namespace rpcgate::rpc::test
