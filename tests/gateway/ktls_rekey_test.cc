// TLS 1.3 key updates through the gateway's server role (issue 15), end to
// end in one process: an independent OpenSSL client -> the gateway (--tls
// required) -> the bench echo server. Self-contained, so that tests/vm runs
// the same binary in guests: on Linux 7.x, whose kTLS takes new keys, the
// connection follows every KeyUpdate (no byte lost, no reconnect, counted);
// on 6.1 a peer's KeyUpdate still ends it cleanly with close_notify, and
// so does our own TX key at --tls-rekey-after.
//
// Two modes: off (OpenSSL over memory BIOs: OpenSSL follows the updates
// itself) and kernel (--ktls on: kTLS both ways where the kernel has it).
// RPCGATE_REKEY_CALLS and RPCGATE_REKEY_EVERY scale the echo (calls of
// 16000 bytes; a KeyUpdate from the client every EVERY calls);
// RPCGATE_REKEY_BULK_MIB the bulk case with KeyUpdates from both sides.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "gateway/gateway.h"
#include "tests/gateway/ktls_client.h"
#include "tests/gateway/ktls_gateway_fixture.h"
#include "tests/unit/tls/ktls_test_util.h"
#include "tls/ktls.h"
#include "tools/bench/echo_server.h"

using namespace rpcgate;
namespace k = rpcgate::tls::ktls;
using namespace rpcgate::tls::ktls::test;
using namespace rpcgate::test_gw;

namespace {

uint32_t env_or(const char* name, uint32_t dflt) {
    const char* v = std::getenv(name);
    return v && *v ? uint32_t(std::strtoul(v, nullptr, 10)) : dflt;
}

class gateway_rekey : public ktls_gateway_fixture,
                      public ::testing::WithParamInterface<const char*> {
  protected:
    void start_gateway(uint64_t rekey_after) {
        start_gateway_in(GetParam(), true,
                         [&](gw::gateway_config& c) { c.tls_rekey_after = rekey_after; });
    }
    bool kernel() const { return std::string(GetParam()) != "off" && have_ktls(); }
};

// The client asks for a KeyUpdate (update_requested) every EVERY calls: the
// gateway rekeys RX from it and answers with its own KeyUpdate and TX rekey.
// Every echo must come back intact on the one connection.
TEST_P(gateway_rekey, key_updates_from_the_client_both_directions) {
    start_gateway(0);
    const uint32_t calls = env_or("RPCGATE_REKEY_CALLS", 300);
    const uint32_t every = env_or("RPCGATE_REKEY_EVERY", 20);
    auto c = open();
    ASSERT_TRUE(c);
    const std::string payload = random_bytes(16000);
    bool follows = !kernel() || k::kernel_can_rekey();
    uint64_t updates = 0;
    auto t0 = clock_type::now();
    for (uint32_t xid = 1; xid <= calls; ++xid) {
        if (xid % every == 0) {
            ASSERT_EQ(SSL_key_update(c->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
            ++updates;
            if (!follows) {
                // Linux < 6.14: the kernel cannot take the next key; close_notify.
                ASSERT_TRUE(c->write(call_record(xid, 1, 0, "after")));
                EXPECT_EQ(c->wait_close(), "close_notify");
                EXPECT_TRUE(eventually([&] { return gw_->totals().tls_key_update_closes == 1; }));
                std::printf("[gw-rekey] %s: this kernel cannot rekey: closed cleanly\n",
                            GetParam());
                return;
            }
        }
        ASSERT_EQ(c->echo(xid, payload), "") << "call " << xid << " after " << updates;
    }
    auto t = gw_->totals();
    std::printf(
        "[gw-rekey] %s: %u calls of 16000 B, %llu KeyUpdates from the client in %lld ms; "
        "rekeys rx_peer %llu tx_peer %llu\n",
        GetParam(), calls, (unsigned long long)updates,
        (long long)std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0)
            .count(),
        (unsigned long long)t.tls_rekeys_rx_peer, (unsigned long long)t.tls_rekeys_tx_peer);
    EXPECT_EQ(t.tls_sessions, 1u);  // no reconnect
    EXPECT_EQ(t.tls_key_update_closes, 0u);
    if (kernel()) {
        EXPECT_EQ(t.tls_rekeys_rx_peer, updates);
        EXPECT_EQ(t.tls_rekeys_tx_peer, updates);
    }
    // Whichever layer holds the keys: the kernel, rpcgate's records, OpenSSL.
    std::string want = fmt::format(R"("key_generation":{{"tx":{},"rx":{}}})", updates, updates);
    EXPECT_NE(gw_->connections_json().find(want), std::string::npos)
        << want << " not in " << gw_->connections_json();
    SSL_shutdown(c->ssl());
    EXPECT_EQ(c->wait_close(), "close_notify");
}

// --tls-rekey-after 50: the gateway sends a KeyUpdate of its own every 50
// records to the client (kTLS: from the kernel's record count). The client's
// OpenSSL follows them; a wrong key would fail its reads. Where the kernel
// cannot take a new TX key (6.1), the gateway stops at the limit instead:
// close_notify after a whole reply, counted, no KeyUpdate.
TEST_P(gateway_rekey, gateway_initiates_key_updates) {
    constexpr uint64_t k_after = 50;
    start_gateway(k_after);
    const uint32_t calls = env_or("RPCGATE_REKEY_CALLS", 300);
    auto c = open();
    ASSERT_TRUE(c);
    const std::string payload = random_bytes(32768);
    if (kernel() && !k::kernel_can_rekey()) {
        uint32_t replies = 0;
        std::string e;
        while (replies < calls && (e = c->echo(replies + 1, payload)).empty()) ++replies;
        EXPECT_EQ(e, "no reply (close_notify)") << "after " << replies << " replies";
        EXPECT_TRUE(eventually([&] { return gw_->totals().tls_key_exhausted_closes == 1; }));
        auto t = gw_->totals();
        std::printf(
            "[gw-rekey] %s: this kernel cannot rekey: closed with close_notify after %u "
            "replies of 32 KiB (--tls-rekey-after %llu), key_exhausted_closes %llu\n",
            GetParam(), replies, (unsigned long long)k_after,
            (unsigned long long)t.tls_key_exhausted_closes);
        // 2 or 3 records a reply: not before the limit, nor long after it.
        EXPECT_GE(replies, k_after / 3 - 1);
        EXPECT_LE(replies, k_after / 2 + 1);
        EXPECT_EQ(t.tls_rekeys_tx_own, 0u);
        EXPECT_EQ(t.tls_errors, 0u);
        return;
    }
    for (uint32_t xid = 1; xid <= calls; ++xid)
        ASSERT_EQ(c->echo(xid, payload), "") << "call " << xid;
    auto t = gw_->totals();
    // Each reply is 32 KiB and a few bytes: 3 records, or fewer where the
    // kernel packs replies together (at least 2 per reply).
    uint64_t low = 2 * uint64_t(calls) / k_after - 1, high = 3 * uint64_t(calls) / k_after + 1;
    std::printf(
        "[gw-rekey] %s: %u replies of 32 KiB: %llu KeyUpdates from the gateway "
        "(expected %llu..%llu)\n",
        GetParam(), calls, (unsigned long long)t.tls_rekeys_tx_own, (unsigned long long)low,
        (unsigned long long)high);
    EXPECT_EQ(t.tls_sessions, 1u);
    EXPECT_EQ(t.tls_key_exhausted_closes, 0u);
    EXPECT_GE(t.tls_rekeys_tx_own, low);
    EXPECT_LE(t.tls_rekeys_tx_own, high);
    SSL_shutdown(c->ssl());
    EXPECT_EQ(c->wait_close(), "close_notify");
}

// Issue 15's bulk case (size and cadence: bulk_key_update_plan): a
// KeyUpdate from the client every 1,000 records and the gateway's own after
// 1,000 records under one key (--tls-rekey-after). Every other update of the client's asks
// for the gateway's (update_requested), which rekeys the gateway's TX and so
// starts its own count again; the others leave it alone, so the gateway's
// own updates happen whatever the phase of the two. Every byte back intact
// on the one connection; the gateway's counters equal to what the client
// sent, and the client saw exactly the gateway's answers and own updates.
TEST_P(gateway_rekey, bulk_with_key_updates_from_both_sides) {
    const auto [mib, calls, k_every] = bulk_key_update_plan();
    start_gateway(k_every);
    auto c = open();
    ASSERT_TRUE(c);
    uint64_t received = 0;
    SSL_set_msg_callback(c->ssl(), count_key_updates);
    SSL_set_msg_callback_arg(c->ssl(), &received);
    const std::string payload = random_bytes(16000);
    bool follows = !kernel() || k::kernel_can_rekey();
    if (!follows)
        GTEST_SKIP() << "this kernel cannot rekey kTLS (Linux < 6.14): see the test above";
    uint64_t sent = 0, requested = 0;
    auto t0 = clock_type::now();
    for (uint32_t xid = 1; xid <= calls; ++xid) {
        if (xid % k_every == 0) {
            bool ask = sent % 2 == 0;
            ASSERT_EQ(SSL_key_update(c->ssl(),
                                     ask ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED),
                      1);
            ++sent;
            requested += ask;
        }
        ASSERT_EQ(c->echo(xid, payload), "") << "call " << xid << " after " << sent;
    }
    auto t = gw_->totals();
    long long ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count();
    std::printf(
        "[gw-rekey] %s: %llu MiB each way in %u calls, %lld ms: KeyUpdates from the client %llu "
        "(%llu asking for one), received by it %llu; rekeys rx_peer %llu tx_peer %llu tx_own "
        "%llu\n",
        GetParam(), (unsigned long long)mib, calls, ms, (unsigned long long)sent,
        (unsigned long long)requested, (unsigned long long)received,
        (unsigned long long)t.tls_rekeys_rx_peer, (unsigned long long)t.tls_rekeys_tx_peer,
        (unsigned long long)t.tls_rekeys_tx_own);
    EXPECT_EQ(t.tls_sessions, 1u);  // no reconnect
    expect_bulk_key_updates(t, kernel(), {sent, requested, received, calls, k_every});
    SSL_shutdown(c->ssl());
    EXPECT_EQ(c->wait_close(), "close_notify");
}

INSTANTIATE_TEST_SUITE_P(modes, gateway_rekey, ::testing::Values("off", "on"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                             return std::string(i.param) == "off" ? "userspace" : "kernel";
                         });

}  // namespace
