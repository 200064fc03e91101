// connect_starttls / connect_implicit against a tiny in-test RPC-with-TLS
// server (tls::session server role), one behaviour per test.
#include <gtest/gtest.h>

#include <chrono>

#include "rpc/message.h"
#include "tls/client/blocking_client.h"
#include "tls/client/tests/test_support.h"
#include "tls/session.h"

using namespace rpcgate;
using namespace rpcgate::client;
using namespace rpcgate::client::testing;
using namespace std::chrono_literals;

namespace {

constexpr uint32_t k_prog = 536870913;

struct blocking_fixture : ::testing::Test {
    static test_pki pki;
    static void SetUpTestSuite() { pki = make_test_pki(); }
    static void TearDownTestSuite() { remove_test_pki(pki); }
    void SetUp() override { ASSERT_FALSE(pki.dir.empty()) << "could not create the test PKI"; }

    tls::client_options verified() const {
        tls::client_options o;
        o.ca_file = pki.ca_cert;
        o.server_name = "localhost";
        return o;
    }
    // One NULL call over the connection; true when answered with SUCCESS.
    static bool null_call(blocking_client& c, uint32_t xid) {
        rpc::call_header h;
        h.xid = xid;
        h.prog = k_prog;
        h.vers = 1;
        core::slice_chain rec = c.call(rpc::build_call(h, {}), 5s);
        EXPECT_FALSE(rec.empty()) << c.error();
        if (rec.empty()) return false;
        auto rep = rpc::decode_reply(rec);
        return rep && rep->header.xid == xid && rep->header.stat == rpc::reply_stat::accepted &&
               rep->header.accept == rpc::accept_stat::success;
    }
};
test_pki blocking_fixture::pki;

}  // namespace

TEST_F(blocking_fixture, starttls_then_null_over_tls) {
    tls_test_server srv(pki, server_behavior::starttls);
    blocking_client c = connect_starttls("127.0.0.1", srv.port(), k_prog, 1, verified(), 5s);
    ASSERT_TRUE(c.ok()) << to_string(c.failed_at()) << ": " << c.error();
    EXPECT_EQ(c.probe().outcome, probe_outcome::accepted);
    ASSERT_NE(c.tls(), nullptr);
    EXPECT_EQ(c.tls()->version(), "TLSv1.3");
    EXPECT_EQ(c.tls()->alpn(), "sunrpc");
    EXPECT_TRUE(c.tls()->flags() & tls::flag_handshake);
    EXPECT_TRUE(null_call(c, 7));
    EXPECT_TRUE(null_call(c, 8));
    c.close();
    EXPECT_EQ(srv.null_calls(), 2u);
}

TEST_F(blocking_fixture, implicit_tls) {
    tls_test_server srv(pki, server_behavior::implicit);
    blocking_client c = connect_implicit("127.0.0.1", srv.port(), verified(), 5s);
    ASSERT_TRUE(c.ok()) << to_string(c.failed_at()) << ": " << c.error();
    EXPECT_EQ(c.tls()->version(), "TLSv1.3");
    EXPECT_TRUE(null_call(c, 1));
}

TEST_F(blocking_fixture, client_certificate) {
    tls_test_server srv(pki, server_behavior::starttls);
    tls::client_options o = verified();
    o.cert_file = pki.client_cert;
    o.key_file = pki.client_key;
    blocking_client c = connect_starttls("127.0.0.1", srv.port(), k_prog, 1, o, 5s);
    ASSERT_TRUE(c.ok()) << c.error();
    EXPECT_TRUE(null_call(c, 3));
}

TEST_F(blocking_fixture, rejectedcred_is_refused) {
    tls_test_server srv(pki, server_behavior::rejectedcred);
    blocking_client c = connect_starttls("127.0.0.1", srv.port(), k_prog, 1, verified(), 5s);
    EXPECT_EQ(c.failed_at(), connect_stage::refused);
    EXPECT_NE(c.error().find("AUTH_REJECTEDCRED"), std::string::npos) << c.error();
    EXPECT_EQ(c.tls(), nullptr);
}

TEST_F(blocking_fixture, success_without_token_is_refused) {
    tls_test_server srv(pki, server_behavior::no_token);
    blocking_client c = connect_starttls("127.0.0.1", srv.port(), k_prog, 1, verified(), 5s);
    EXPECT_EQ(c.failed_at(), connect_stage::refused);
    EXPECT_EQ(c.probe().outcome, probe_outcome::refused);
}

TEST_F(blocking_fixture, close_without_answer) {
    tls_test_server srv(pki, server_behavior::close_on_probe);
    blocking_client c = connect_starttls("127.0.0.1", srv.port(), k_prog, 1, verified(), 5s);
    EXPECT_EQ(c.failed_at(), connect_stage::probe);
    EXPECT_NE(c.error().find("closed"), std::string::npos) << c.error();
}

TEST_F(blocking_fixture, wrong_server_name_fails_the_handshake) {
    tls_test_server srv(pki, server_behavior::starttls);
    tls::client_options o = verified();
    o.server_name = "nfs.example.org";
    blocking_client c = connect_starttls("127.0.0.1", srv.port(), k_prog, 1, o, 5s);
    EXPECT_EQ(c.failed_at(), connect_stage::handshake) << c.error();
    EXPECT_EQ(c.probe().outcome, probe_outcome::accepted);
}

TEST_F(blocking_fixture, untrusted_server_fails_the_handshake) {
    test_pki other = make_test_pki();
    tls_test_server srv(pki, server_behavior::implicit);
    tls::client_options o = verified();
    o.ca_file = other.ca_cert;
    blocking_client c = connect_implicit("127.0.0.1", srv.port(), o, 5s);
    EXPECT_EQ(c.failed_at(), connect_stage::handshake) << c.error();
    remove_test_pki(other);
}

TEST_F(blocking_fixture, bad_ca_file_is_an_options_error) {
    tls::client_options o = verified();
    o.ca_file = pki.dir + "/missing.pem";
    blocking_client c = connect_implicit("127.0.0.1", 1, o, 1s);
    EXPECT_EQ(c.failed_at(), connect_stage::options);
}

TEST_F(blocking_fixture, connection_refused) {
    uint16_t port;
    {
        tls_test_server srv(pki, server_behavior::starttls);
        port = srv.port();
    }  // closed: nothing listens there now
    blocking_client c = connect_starttls("127.0.0.1", port, k_prog, 1, verified(), 2s);
    EXPECT_EQ(c.failed_at(), connect_stage::connect);
}

TEST_F(blocking_fixture, no_reply_over_tls_times_out) {
    tls_test_server srv(pki, server_behavior::silent_over_tls);
    blocking_client c = connect_starttls("127.0.0.1", srv.port(), k_prog, 1, verified(), 5s);
    ASSERT_TRUE(c.ok()) << c.error();
    rpc::call_header h;
    h.xid = 9;
    h.prog = k_prog;
    h.vers = 1;
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(c.call(rpc::build_call(h, {}), 300ms).empty());
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
    EXPECT_FALSE(c.error().empty());
}
