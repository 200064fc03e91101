// Loopback addresses for the bench tests (tests only; a failed parse is a
// test failure, not an exception).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "tools/bench/address.h"

namespace rpcgate::bench::test_util {

inline socket_address loopback(uint16_t port) {
    socket_address a;
    std::string err;
    EXPECT_TRUE(parse_address("127.0.0.1:" + std::to_string(port), false, &a, &err)) << err;
    return a;
}

}  // namespace rpcgate::bench::test_util
