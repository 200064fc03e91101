#include "gateway/source_limits.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/un.h>

#include <cstring>
#include <string>

using namespace rpcgate::gw;

namespace {

sockaddr_storage v4(const char* text, uint16_t port = 1000) {
    sockaddr_storage ss{};
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    EXPECT_EQ(inet_pton(AF_INET, text, &in->sin_addr), 1) << text;
    return ss;
}

sockaddr_storage v6(const char* text, uint16_t port = 1000) {
    sockaddr_storage ss{};
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    EXPECT_EQ(inet_pton(AF_INET6, text, &in6->sin6_addr), 1) << text;
    return ss;
}

source_limits_config conn_cap(uint32_t n) {
    source_limits_config c;
    c.max_connections_per_source = n;
    return c;
}

source_limits_config rate(uint32_t per_second, uint32_t burst = 0) {
    source_limits_config c;
    c.handshakes_per_second = per_second;
    c.handshake_burst = burst;
    return c;
}

}  // namespace

TEST(SourceLimits, DisabledAdmitsEverythingAndAllocatesNothing) {
    source_limits l(source_limits_config{}, 1);
    for (int i = 0; i < 1000; ++i) {
        EXPECT_EQ(l.on_accept(v4("10.0.0.1"), i), source_verdict::admit);
        EXPECT_EQ(l.on_handshake(v4("10.0.0.1"), i), source_verdict::admit);
    }
    EXPECT_EQ(l.connections_of(v4("10.0.0.1")), 0u);
    EXPECT_EQ(l.counters().tracked.load(), 0u);
}

TEST(SourceLimits, ConnectionCapPerSourceAndReleaseOnClose) {
    source_limits l(conn_cap(3), 1);
    auto a = v4("192.0.2.1", 1), a2 = v4("192.0.2.1", 2), b = v4("192.0.2.2");
    for (int i = 0; i < 3; ++i) EXPECT_EQ(l.on_accept(a, 0), source_verdict::admit);
    // The port does not matter: it is the same source.
    EXPECT_EQ(l.on_accept(a2, 0), source_verdict::too_many_connections);
    EXPECT_EQ(l.on_accept(b, 0), source_verdict::admit);
    EXPECT_EQ(l.connections_of(a), 3u);
    EXPECT_EQ(l.counters().refused_connections.load(), 1u);
    l.on_close(a2);
    EXPECT_EQ(l.connections_of(a), 2u);
    EXPECT_EQ(l.on_accept(a, 0), source_verdict::admit);
    EXPECT_EQ(l.on_accept(a, 0), source_verdict::too_many_connections);
    // A close that was never admitted (or twice) does not go below zero.
    for (int i = 0; i < 10; ++i) l.on_close(b);
    EXPECT_EQ(l.connections_of(b), 0u);
}

TEST(SourceLimits, TokenBucketBurstThenRate) {
    source_limits l(rate(10, 5), 1);  // 10/s, 5 back to back
    auto a = v4("198.51.100.7");
    uint64_t t = 1000;
    for (int i = 0; i < 5; ++i) EXPECT_EQ(l.on_handshake(a, t), source_verdict::admit) << i;
    EXPECT_EQ(l.on_handshake(a, t), source_verdict::handshake_rate);
    // 10/s: one token every 100 ms, never more than the burst.
    EXPECT_EQ(l.on_handshake(a, t + 99), source_verdict::handshake_rate);
    EXPECT_EQ(l.on_handshake(a, t + 100), source_verdict::admit);
    EXPECT_EQ(l.on_handshake(a, t + 150), source_verdict::handshake_rate);
    t += 100000;  // a long pause refills to the burst, not beyond
    for (int i = 0; i < 5; ++i) EXPECT_EQ(l.on_handshake(a, t), source_verdict::admit) << i;
    EXPECT_EQ(l.on_handshake(a, t), source_verdict::handshake_rate);
    // Another source has its own bucket.
    EXPECT_EQ(l.on_handshake(v4("198.51.100.8"), t), source_verdict::admit);
    EXPECT_EQ(l.counters().refused_handshakes.load(), 4u);
}

TEST(SourceLimits, SustainedRateMatchesConfig) {
    source_limits l(rate(50), 1);  // burst defaults to one second's worth
    auto a = v4("203.0.113.9");
    int admitted = 0;
    // 10 s of one attempt a millisecond: 50 (the burst) + 50 a second.
    for (uint64_t ms = 0; ms < 10000; ++ms)
        admitted += l.on_handshake(a, ms) == source_verdict::admit;
    EXPECT_GE(admitted, 50 + 499);
    EXPECT_LE(admitted, 50 + 501);
}

TEST(SourceLimits, ClockGoingBackwardsIsHarmless) {
    source_limits l(rate(1, 1), 1);
    auto a = v4("203.0.113.10");
    EXPECT_EQ(l.on_handshake(a, 5000), source_verdict::admit);
    EXPECT_EQ(l.on_handshake(a, 1000), source_verdict::handshake_rate);
    EXPECT_EQ(l.on_handshake(a, 5999), source_verdict::handshake_rate);
    EXPECT_EQ(l.on_handshake(a, 6000), source_verdict::admit);
}

TEST(SourceLimits, Ipv6GroupedByPrefixAndMappedIpv4IsIpv4) {
    source_limits l(conn_cap(2), 1);
    EXPECT_EQ(l.on_accept(v6("2001:db8:1:2::1"), 0), source_verdict::admit);
    EXPECT_EQ(l.on_accept(v6("2001:db8:1:2:ffff::9"), 0), source_verdict::admit);
    // Same /64: the same source.
    EXPECT_EQ(l.on_accept(v6("2001:db8:1:2:abcd::1"), 0), source_verdict::too_many_connections);
    // Another /64 is another source.
    EXPECT_EQ(l.on_accept(v6("2001:db8:1:3::1"), 0), source_verdict::admit);
    EXPECT_EQ(l.on_accept(v4("192.0.2.50"), 0), source_verdict::admit);
    EXPECT_EQ(l.on_accept(v6("::ffff:192.0.2.50"), 0), source_verdict::admit);
    EXPECT_EQ(l.on_accept(v4("192.0.2.50"), 0), source_verdict::too_many_connections);

    source_limits_config c = conn_cap(1);
    c.ipv6_prefix = 128;
    source_limits exact(c, 1);
    EXPECT_EQ(exact.on_accept(v6("2001:db8::1"), 0), source_verdict::admit);
    EXPECT_EQ(exact.on_accept(v6("2001:db8::2"), 0), source_verdict::admit);
    EXPECT_EQ(exact.on_accept(v6("2001:db8::1"), 0), source_verdict::too_many_connections);

    c.ipv6_prefix = 48;
    source_limits wide(c, 1);
    EXPECT_EQ(wide.on_accept(v6("2001:db8:5:1::1"), 0), source_verdict::admit);
    EXPECT_EQ(wide.on_accept(v6("2001:db8:5:ffff::1"), 0), source_verdict::too_many_connections);
    EXPECT_EQ(wide.on_accept(v6("2001:db8:6::1"), 0), source_verdict::admit);
}

TEST(SourceLimits, UnixSocketsAreNotLimited) {
    source_limits l(conn_cap(1), 1);
    sockaddr_storage un{};
    un.ss_family = AF_UNIX;
    for (int i = 0; i < 5; ++i) EXPECT_EQ(l.on_accept(un, 0), source_verdict::admit);
    l.on_close(un);
}

// Memory stays bounded however many sources come by: idle ones are evicted,
// oldest first, and a full set of busy sources refuses newcomers (counted).
TEST(SourceLimits, BoundedTableEvictsIdleSourcesOnly) {
    source_limits_config c = conn_cap(100);
    c.table_size = 8;  // one set of 8 ways: every source competes for it
    source_limits l(c, 42);
    EXPECT_EQ(l.table_entries(), 8u);
    auto addr = [](int i) { return v4(("10.1.0." + std::to_string(i)).c_str()); };
    for (int i = 0; i < 8; ++i) EXPECT_EQ(l.on_accept(addr(i), i), source_verdict::admit);
    EXPECT_EQ(l.counters().tracked.load(), 8u);
    // All eight hold a connection: a ninth source cannot be tracked.
    EXPECT_EQ(l.on_accept(addr(8), 100), source_verdict::table_full);
    EXPECT_EQ(l.counters().table_full.load(), 1u);
    // Sources 3 and 5 go idle; 5 was seen later. The newcomer evicts 3.
    l.on_close(addr(5));
    l.on_close(addr(3));
    EXPECT_EQ(l.on_accept(addr(8), 200), source_verdict::admit);
    EXPECT_EQ(l.counters().evictions.load(), 1u);
    EXPECT_EQ(l.connections_of(addr(8)), 1u);
    EXPECT_EQ(l.connections_of(addr(5)), 0u);
    // Busy sources kept their counts through the eviction.
    for (int i : {0, 1, 2, 4, 6, 7}) EXPECT_EQ(l.connections_of(addr(i)), 1u) << i;
    EXPECT_EQ(l.counters().tracked.load(), 8u);

    // Many sources passing through a larger table never grow it.
    c.table_size = 1000;  // rounded up to 1024
    source_limits big(c, 7);
    EXPECT_EQ(big.table_entries(), 1024u);
    for (uint32_t i = 0; i < 100000; ++i) {
        sockaddr_storage ss{};
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(0x0a000000 + i);
        ASSERT_EQ(big.on_accept(ss, i), source_verdict::admit);
        big.on_close(ss);
    }
    EXPECT_LE(big.counters().tracked.load(), 1024u);
    EXPECT_GE(big.counters().evictions.load(), 100000u - 1024u);
}

TEST(SourceLimits, ShareForShards) {
    source_limits_config c;
    c.max_connections_per_source = 10;
    c.handshakes_per_second = 100;
    c.handshake_burst = 3;
    auto s = c.for_shard(4);
    EXPECT_EQ(s.max_connections_per_source, 3u);
    EXPECT_EQ(s.handshakes_per_second, 25u);
    EXPECT_EQ(s.handshake_burst, 1u);
    EXPECT_EQ(c.for_shard(1).max_connections_per_source, 10u);
    EXPECT_EQ(source_limits_config{}.for_shard(4).max_connections_per_source, 0u);
    EXPECT_FALSE(source_limits_config{}.enabled());
    EXPECT_TRUE(c.enabled());
}

TEST(SourceLimits, RateAndCapTogether) {
    source_limits_config c = conn_cap(2);
    c.handshakes_per_second = 1;
    source_limits l(c, 9);
    auto a = v4("192.0.2.77");
    EXPECT_EQ(l.on_accept(a, 0), source_verdict::admit);
    EXPECT_EQ(l.on_handshake(a, 0), source_verdict::admit);
    EXPECT_EQ(l.on_accept(a, 10), source_verdict::admit);
    EXPECT_EQ(l.on_handshake(a, 10), source_verdict::handshake_rate);
    EXPECT_EQ(l.on_accept(a, 20), source_verdict::too_many_connections);
    l.on_close(a);
    l.on_close(a);
    EXPECT_EQ(l.connections_of(a), 0u);
    // The bucket state outlives the connections while the entry is kept.
    EXPECT_EQ(l.on_handshake(a, 500), source_verdict::handshake_rate);
    EXPECT_EQ(l.on_handshake(a, 1000), source_verdict::admit);
    EXPECT_STREQ(source_verdict_name(source_verdict::handshake_rate),
                 "handshake rate of this source exceeded");
}
