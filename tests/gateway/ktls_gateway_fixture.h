// The set-up the gateway's kTLS tests share (ktls_gateway_test.cc,
// ktls_rekey_test.cc): the bench echo server on loopback, and in front of it
// the gateway under test with --tls required, one shard, on a STARTTLS and an
// implicit-TLS listener. A fixture derives from it and from
// ::testing::WithParamInterface<its mode>, and starts the gateway in that
// mode. Self-contained, so that tests/vm runs the test binaries in the guest.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <memory>
#include <string>

#include "gateway/gateway.h"
#include "tests/gateway/ktls_client.h"
#include "tests/unit/tls/ktls_test_util.h"
#include "tools/bench/echo_server.h"

namespace rpcgate::test_gw {

class ktls_gateway_fixture : public ::testing::Test {
  protected:
    // Certificates, kTLS where RPCGATE_REQUIRE_KTLS=1 asks for it, the echo server.
    void SetUp() override {
        ASSERT_FALSE(certs().dir.empty());
        if (require_ktls()) {
            ASSERT_TRUE(have_ktls()) << "RPCGATE_REQUIRE_KTLS=1 but the kernel has no kTLS";
        }
        bench::serve_options so;
        std::string err;
        ASSERT_TRUE(bench::parse_address("127.0.0.1:0", false, &so.listen, &err)) << err;
        so.shards = 1;
        so.shard.buffer_count = 64;
        echo_ = std::make_unique<bench::echo_server>(so);
        ASSERT_EQ(echo_->start(), "");
    }
    void TearDown() override {
        stop_gateway();
        if (echo_) echo_->stop();
    }

    // (Re)starts the gateway under test with --ktls `ktls` and --ktls-rx `rx`;
    // `tweak` changes the configuration before it is validated.
    void start_gateway_in(const char* ktls, bool rx,
                          const std::function<void(gw::gateway_config&)>& tweak = {}) {
        stop_gateway();
        gw::gateway_config cfg;
        std::string err;
        gw::endpoint ep;
        ASSERT_TRUE(gw::parse_endpoint("127.0.0.1:0", &ep, &err));
        cfg.listen.push_back(ep);
        cfg.implicit_tls.push_back(ep);
        gw::backend_route r;
        ASSERT_TRUE(gw::parse_backend(fmt::format("{}=127.0.0.1:{}", k_echo_prog, echo_->port()),
                                      &r, &err));
        cfg.backends.push_back(r);
        cfg.shards = 1;
        cfg.buffers = 64;
        cfg.reserved_port = false;
        cfg.tls = gw::tls_policy::required;
        cfg.cert = certs().cert;
        cfg.key = certs().key;
        cfg.ktls = ktls;
        cfg.ktls_rx = rx;
        if (tweak) tweak(cfg);
        ASSERT_TRUE(gw::validate(&cfg, &err)) << err;
        gw_ = std::make_unique<gw::gateway>(cfg);
        ASSERT_EQ(gw_->start(), "");
    }
    void stop_gateway() {
        if (!gw_) return;
        gw_->stop();
        gw_->wait();
        gw_.reset();
    }

    // A client through STARTTLS (or implicit TLS) and the handshake.
    std::unique_ptr<client> open(bool implicit = false) {
        return open_client(implicit ? gw_->implicit_port() : gw_->port(), implicit);
    }
    // The same to any gateway's `port`, offering only TLS `version`.
    static std::unique_ptr<client> open_client(uint16_t port, bool implicit,
                                               int version = TLS1_3_VERSION) {
        auto c = std::make_unique<client>(version);
        EXPECT_TRUE(c->connect(port));
        if (!implicit) {
            std::string e = c->starttls();
            EXPECT_EQ(e, "");
            if (!e.empty()) return nullptr;
        }
        std::string e = c->handshake();
        EXPECT_EQ(e, "");
        return e.empty() ? std::move(c) : nullptr;
    }

    std::unique_ptr<bench::echo_server> echo_;
    std::unique_ptr<gw::gateway> gw_;
};

// Issue 15's bulk cases, in either role: RPCGATE_REKEY_BULK_MIB (default 4;
// 64 in the 7.x guest) each way in calls of 16,000 bytes, one record each
// way per call; a KeyUpdate every 1,000 records from each side at the
// issue's 64 MiB, every 50 below it (263 calls at 4 MiB), so that the host's
// runs rekey too.
struct bulk_plan {
    uint64_t mib = 0;
    uint32_t calls = 0, every = 0;
};
inline bulk_plan bulk_key_update_plan() {
    const char* env = std::getenv("RPCGATE_REKEY_BULK_MIB");
    bulk_plan p;
    p.mib = env && *env ? std::strtoull(env, nullptr, 10) : 4;
    p.calls = uint32_t((p.mib << 20) / 16000 + 1);
    p.every = p.mib >= 64 ? 1000 : 50;
    return p;
}

// The gateway's counters (`t`)
// against the KeyUpdates its peer sent (`requested` of them asking for the
// gateway's) and received, over `calls` calls of one record each way with
// both sides at `every` records. `kernel`: the gateway's kTLS followed the
// peer's updates (in userspace OpenSSL follows them itself, uncounted).
struct bulk_key_updates {
    uint64_t sent = 0, requested = 0, received = 0;
    uint32_t calls = 0, every = 0;
};
inline void expect_bulk_key_updates(const gw::gateway_totals& t, bool kernel,
                                    const bulk_key_updates& k) {
    EXPECT_GE(k.sent, 4u);
    EXPECT_EQ(t.tls_key_update_closes, 0u);
    if (kernel) {
        EXPECT_EQ(t.tls_rekeys_rx_peer, k.sent);
        EXPECT_EQ(t.tls_rekeys_tx_peer, k.requested);
    }
    // The gateway's own: at least one between two of the peer's requests
    // (2 x every records apart; an answer is a new key, so the own count
    // starts again there), at most one per `every` calls (kTLS may pack two
    // messages into one record: fewer, never more).
    EXPECT_GE(t.tls_rekeys_tx_own, k.requested - 1);
    EXPECT_GE(t.tls_rekeys_tx_own, 1u);
    EXPECT_LE(t.tls_rekeys_tx_own, k.calls / k.every + 1);
    // One answer per update_requested, plus the gateway's own.
    EXPECT_EQ(k.received, k.requested + t.tls_rekeys_tx_own)
        << "the peer saw a different number of KeyUpdates than the gateway counted";
}

}  // namespace rpcgate::test_gw
