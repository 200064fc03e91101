// rpcgate-probe in-process against the in-test RPC-with-TLS server: one exit
// status per failing stage, and the report's fields.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tls/client/tests/test_support.h"
#include "tools/probe/probe.h"

using namespace rpcgate;
using namespace rpcgate::probe;
using namespace rpcgate::client::testing;

namespace {

struct probe_fixture : ::testing::Test {
    static test_pki pki;
    static void SetUpTestSuite() { pki = make_test_pki(); }
    static void TearDownTestSuite() { remove_test_pki(pki); }
    void SetUp() override { ASSERT_FALSE(pki.dir.empty()); }

    probe_options options(uint16_t port) const {
        probe_options o;
        o.host = "127.0.0.1";
        o.port = port;
        o.prog = 536870913;
        o.vers = 1;
        o.timeout_s = 2;
        o.tls.ca_file = pki.ca_cert;
        o.tls.server_name = "localhost";
        return o;
    }
};
test_pki probe_fixture::pki;

int run_cli(std::vector<std::string> args) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    return probe_main(int(argv.size()), argv.data());
}

}  // namespace

TEST_F(probe_fixture, rfc_9289_works) {
    tls_test_server srv(pki, server_behavior::starttls);
    probe_report r = run_probe(options(srv.port()));
    EXPECT_EQ(r.exit_status, exit_ok) << format_human(r);
    EXPECT_EQ(r.probe_outcome, "accepted");
    EXPECT_NE(r.probe_reply.find("STARTTLS"), std::string::npos);
    EXPECT_EQ(r.version, "TLSv1.3");
    EXPECT_EQ(r.alpn, "sunrpc");
    EXPECT_EQ(r.verify, "ok");
    EXPECT_NE(r.peer_subject.find("CN=localhost"), std::string::npos) << r.peer_subject;
    EXPECT_NE(r.peer_issuer.find("rpcgate test CA"), std::string::npos) << r.peer_issuer;
    EXPECT_FALSE(r.not_after.empty());
    EXPECT_TRUE(r.null_ok);
    EXPECT_EQ(srv.null_calls(), 1u);
    std::string text = format_human(r);
    EXPECT_NE(text.find("result    RFC 9289 RPC-with-TLS works"), std::string::npos) << text;
    std::string json = format_json(r);
    EXPECT_NE(json.find("\"exit_status\":0"), std::string::npos) << json;
    EXPECT_NE(json.find("\"version\":\"TLSv1.3\""), std::string::npos) << json;
}

TEST_F(probe_fixture, implicit_tls_without_ca) {
    tls_test_server srv(pki, server_behavior::implicit);
    probe_options o = options(srv.port());
    o.implicit = true;
    o.tls.ca_file.clear();
    probe_report r = run_probe(o);
    EXPECT_EQ(r.exit_status, exit_ok) << format_human(r);
    EXPECT_EQ(r.probe_outcome, "skipped");
    EXPECT_EQ(r.verify, "not checked (no --ca)");
}

TEST_F(probe_fixture, refused_probe_is_4) {
    tls_test_server srv(pki, server_behavior::rejectedcred);
    probe_report r = run_probe(options(srv.port()));
    EXPECT_EQ(r.exit_status, exit_probe);
    EXPECT_EQ(r.probe_outcome, "refused");
    EXPECT_NE(r.probe_reply.find("AUTH_REJECTEDCRED"), std::string::npos);
    tls_test_server quiet(pki, server_behavior::close_on_probe);
    EXPECT_EQ(run_probe(options(quiet.port())).exit_status, exit_probe);
}

TEST_F(probe_fixture, failed_handshake_is_5) {
    tls_test_server srv(pki, server_behavior::starttls);
    probe_options o = options(srv.port());
    o.tls.server_name = "nfs.example.org";
    probe_report r = run_probe(o);
    EXPECT_EQ(r.exit_status, exit_handshake) << format_human(r);
    EXPECT_FALSE(r.handshake_error.empty());
}

TEST_F(probe_fixture, no_reply_over_tls_is_6) {
    tls_test_server srv(pki, server_behavior::silent_over_tls);
    probe_options o = options(srv.port());
    o.timeout_s = 0.5;
    probe_report r = run_probe(o);
    EXPECT_EQ(r.exit_status, exit_no_reply) << format_human(r);
    EXPECT_TRUE(r.handshake_ok);
}

TEST_F(probe_fixture, connect_failure_is_3) {
    uint16_t port;
    {
        tls_test_server srv(pki, server_behavior::starttls);
        port = srv.port();
    }
    EXPECT_EQ(run_probe(options(port)).exit_status, exit_connect);
}

TEST_F(probe_fixture, cli_bad_options_are_2) {
    EXPECT_EQ(run_cli({"rpcgate-probe", "no-port"}), exit_usage);
    EXPECT_EQ(run_cli({"rpcgate-probe", "127.0.0.1:2049", "--prog", "nosuchprog"}), exit_usage);
    EXPECT_EQ(run_cli({"rpcgate-probe", "127.0.0.1:2049", "--cert", "x.pem"}), exit_usage);
    EXPECT_EQ(run_cli({"rpcgate-probe", "127.0.0.1:2049", "--ca", "/nonexistent/ca.pem"}),
              exit_usage);
}

TEST_F(probe_fixture, cli_end_to_end) {
    tls_test_server srv(pki, server_behavior::starttls);
    EXPECT_EQ(
        run_cli({"rpcgate-probe", "127.0.0.1:" + std::to_string(srv.port()), "--prog", "536870913",
                 "--vers", "1", "--ca", pki.ca_cert, "--server-name", "localhost", "--json"}),
        exit_ok);
}

// Through a gateway, a NULL call that fails after a good handshake points
// behind the gateway; the verdict says where.
TEST_F(probe_fixture, connection_closed_at_the_call_is_an_unreachable_backend) {
    tls_test_server srv(pki, server_behavior::close_at_call);
    probe_report r = run_probe(options(srv.port()));
    EXPECT_EQ(r.exit_status, exit_no_reply) << format_human(r);
    EXPECT_TRUE(r.handshake_ok);
    EXPECT_EQ(r.null_failure, "closed") << r.null_result;
    EXPECT_NE(r.verdict.find("backend of this program is unreachable"), std::string::npos)
        << r.verdict;
    EXPECT_NE(format_json(r).find("\"null_failure\":\"closed\""), std::string::npos);
}

TEST_F(probe_fixture, prog_unavail_over_tls_is_a_missing_route) {
    tls_test_server srv(pki, server_behavior::not_routed);
    probe_report r = run_probe(options(srv.port()));
    EXPECT_EQ(r.exit_status, exit_no_reply) << format_human(r);
    EXPECT_EQ(r.null_failure, "not served") << r.null_result;
    EXPECT_NE(r.verdict.find("is not routed"), std::string::npos) << r.verdict;
}

TEST_F(probe_fixture, silence_over_tls_is_not_called_unreachable) {
    tls_test_server srv(pki, server_behavior::silent_over_tls);
    probe_options o = options(srv.port());
    o.timeout_s = 0.5;
    probe_report r = run_probe(o);
    EXPECT_EQ(r.null_failure, "no reply") << r.null_result;
    EXPECT_EQ(r.verdict, "TLS is up but the NULL call over it failed");
}
