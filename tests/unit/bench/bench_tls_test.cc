// rpcgate-bench with TLS: run --tls implicit --verify against serve --tls
// implicit, run --tls starttls against the client library's RFC 9289 test
// server, refusals counted as TLS errors, and the handshake modes.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "tests/unit/bench/test_address.h"
#include "tls/client/tests/test_support.h"
#include "tls/context.h"
#include "tools/bench/echo_server.h"
#include "tools/bench/handshake_load.h"
#include "tools/bench/load_client.h"

using namespace rpcgate;
using namespace rpcgate::bench;
using rpcgate::bench::test_util::loopback;
using namespace rpcgate::client::testing;

namespace {

struct tls_fixture : ::testing::Test {
    static test_pki pki;
    static void SetUpTestSuite() { pki = make_test_pki(); }
    static void TearDownTestSuite() { remove_test_pki(pki); }

    std::unique_ptr<tls::context> server_ctx;
    std::unique_ptr<echo_server> srv;

    void SetUp() override {
        ASSERT_FALSE(pki.dir.empty());
        tls::server_options so;
        so.cert_file = pki.server_cert;
        so.key_file = pki.server_key;
        std::string err;
        server_ctx = tls::context::make_server(so, &err);
        ASSERT_TRUE(server_ctx) << err;
        serve_options o;
        o.listen = loopback(0);
        o.shards = 2;
        o.tls = server_ctx.get();
        srv = std::make_unique<echo_server>(o);
        ASSERT_EQ(srv->start(), "");
    }
    void TearDown() override { srv->stop(); }

    run_options options(uint16_t port, client::tls_mode mode, uint64_t calls) const {
        run_options o;
        o.target = loopback(port);
        o.calls = calls;
        o.progress_interval_s = 0;
        o.tls = mode;
        o.tls_options.ca_file = pki.ca_cert;
        o.tls_options.server_name = "localhost";
        return o;
    }
};
test_pki tls_fixture::pki;

}  // namespace

TEST_F(tls_fixture, implicit_echo_verifies_small_and_large) {
    run_options o = options(srv->port(), client::tls_mode::implicit, 4000);
    o.connections = 4;
    o.depth = 8;
    o.size = 0;
    o.size_max = 300 * 1024;  // records span many TLS records
    o.verify = true;
    o.ciphersuites = "TLS_AES_128_GCM_SHA256";
    std::string err;
    run_report r = run_load(o, &err);
    ASSERT_EQ(err, "");
    EXPECT_EQ(r.errors, 0u) << format_human(r);
    EXPECT_EQ(r.calls, 4000u);
    EXPECT_EQ(r.tls_version, "TLSv1.3");
    EXPECT_EQ(r.tls_cipher, "TLS_AES_128_GCM_SHA256");
    EXPECT_EQ(r.handshake_latency.count(), 4u);
    EXPECT_EQ(srv->totals().echo_calls, 4000u);
    EXPECT_NE(format_json(r).find("\"tls\":\"implicit\""), std::string::npos);
}

TEST_F(tls_fixture, plaintext_client_to_a_tls_server_fails_cleanly) {
    run_options o = options(srv->port(), client::tls_mode::off, 10);
    o.timeout_ms = 2000;
    std::string err;
    run_report r = run_load(o, &err);
    EXPECT_EQ(r.calls, 0u);
    EXPECT_GT(r.errors, 0u);
}

TEST_F(tls_fixture, untrusted_server_is_a_tls_error) {
    test_pki other = make_test_pki();
    run_options o = options(srv->port(), client::tls_mode::implicit, 10);
    o.connections = 2;
    o.tls_options.ca_file = other.ca_cert;
    std::string err;
    run_report r = run_load(o, &err);
    EXPECT_EQ(r.calls, 0u);
    EXPECT_EQ(r.tls_errors, 2u) << format_human(r);
    remove_test_pki(other);
}

TEST_F(tls_fixture, starttls_against_an_rfc_9289_server) {
    tls_test_server rfc(pki, server_behavior::starttls);
    run_options o = options(rfc.port(), client::tls_mode::starttls, 200);
    o.proc = bench_proc::null;
    o.depth = 4;
    std::string err;
    run_report r = run_load(o, &err);
    ASSERT_EQ(err, "");
    EXPECT_EQ(r.errors, 0u) << format_human(r);
    EXPECT_EQ(r.calls, 200u);
    EXPECT_EQ(rfc.null_calls(), 200u);
}

TEST_F(tls_fixture, starttls_refused_is_a_tls_error) {
    tls_test_server rfc(pki, server_behavior::rejectedcred);
    run_options o = options(rfc.port(), client::tls_mode::starttls, 10);
    std::string err;
    run_report r = run_load(o, &err);
    EXPECT_EQ(r.calls, 0u);
    EXPECT_EQ(r.tls_errors, 1u) << format_human(r);
}

TEST_F(tls_fixture, handshake_rate_and_baseline) {
    handshake_options h;
    h.host = "127.0.0.1";
    h.port = srv->port();
    h.mode = client::tls_mode::implicit;
    h.connections = 2;
    h.duration_s = 1.0;
    h.tls.ca_file = pki.ca_cert;
    h.tls.server_name = "localhost";
    std::string err;
    handshake_report r = run_handshakes(h, &err);
    ASSERT_EQ(err, "");
    // The loop goes round: more cycles than connections (a cycle takes a few
    // ms here, 50 ms under TSan; a count is no speed claim: bench/ measures).
    EXPECT_GT(r.handshakes, uint64_t(h.connections)) << format_human(r);
    EXPECT_EQ(r.errors, 0u) << format_human(r);
    EXPECT_EQ(r.version, "TLSv1.3");

    h.server_cert = pki.server_cert;
    h.server_key = pki.server_key;
    handshake_report b = run_baseline(h, &err);
    ASSERT_EQ(err, "");
    EXPECT_GT(b.handshakes, 1u) << format_human(b);
    EXPECT_EQ(b.errors, 0u) << format_human(b);
    EXPECT_GT(b.server_rate(), b.rate());
    EXPECT_NE(format_json(b).find("server_handshakes_per_sec"), std::string::npos);
}

// --ciphersuites: a TLS 1.3 suite OpenSSL does not know is refused by name,
// not dropped from the list.
TEST(bench_tls, an_unknown_tls13_suite_is_refused_by_name) {
    tls::client_options co;
    std::string err;
    EXPECT_TRUE(make_tls_client_context(co, "TLS_AES_128_GCM_SHA256", &err)) << err;
    EXPECT_FALSE(make_tls_client_context(co, "TLS_AES_128_GCM_SHA256:TLS_AES_GCM", &err));
    EXPECT_NE(err.find("unknown TLS 1.3 cipher suite 'TLS_AES_GCM'"), std::string::npos) << err;
}
