#include "tls/context.h"

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "test_util.h"

namespace rpcgate::tls {
namespace {

using test::cert;

TEST(TlsContext, ServerSettings) {
    std::string err;
    auto opt = test::server_opts();
    opt.crl_file = cert("crl.pem");
    auto c = context::make_server(opt, &err);
    ASSERT_TRUE(c) << err;
    SSL_CTX* ctx = c->native();
    EXPECT_TRUE(c->is_server());
    EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
    EXPECT_TRUE(SSL_CTX_get_options(ctx) & SSL_OP_ENABLE_KTLS);
    EXPECT_TRUE(SSL_CTX_get_options(ctx) & SSL_OP_NO_TICKET);
    EXPECT_EQ(SSL_CTX_get_num_tickets(ctx), 0u);
    EXPECT_EQ(SSL_CTX_get_max_early_data(ctx), 0u);
    EXPECT_TRUE(SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER);
    EXPECT_FALSE(SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    unsigned long flags =
        X509_VERIFY_PARAM_get_flags(X509_STORE_get0_param(SSL_CTX_get_cert_store(ctx)));
    EXPECT_TRUE(flags & X509_V_FLAG_CRL_CHECK);
    EXPECT_TRUE(flags & X509_V_FLAG_CRL_CHECK_ALL);
}

TEST(TlsContext, MtlsAndTickets) {
    std::string err;
    auto opt = test::server_opts();
    opt.require_client_cert = true;
    opt.session_tickets = true;
    auto c = context::make_server(opt, &err);
    ASSERT_TRUE(c) << err;
    EXPECT_TRUE(SSL_CTX_get_verify_mode(c->native()) & SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    EXPECT_FALSE(SSL_CTX_get_options(c->native()) & SSL_OP_NO_TICKET);
}

TEST(TlsContext, ErrorsNameTheFile) {
    std::string err;
    auto opt = test::server_opts();
    opt.cert_file = cert("missing.pem");
    EXPECT_FALSE(context::make_server(opt, &err));
    EXPECT_NE(err.find("missing.pem"), std::string::npos) << err;
    EXPECT_EQ(err.find('\n'), std::string::npos) << err;

    opt = test::server_opts();
    opt.key_file = cert("client.key");  // not the server's key
    EXPECT_FALSE(context::make_server(opt, &err));
    EXPECT_NE(err.find("client.key"), std::string::npos) << err;

    opt = test::server_opts();
    opt.crl_file = cert("ca.key");  // not a CRL
    EXPECT_FALSE(context::make_server(opt, &err));
    EXPECT_NE(err.find("crl_file"), std::string::npos) << err;

    opt = test::server_opts();
    opt.ca_file = cert("nope.pem");
    EXPECT_FALSE(context::make_server(opt, &err));
    EXPECT_NE(err.find("nope.pem"), std::string::npos) << err;

    client_options co = test::client_opts();
    co.ca_file = cert("nothing.pem");
    EXPECT_FALSE(context::make_client(co, &err));
    EXPECT_NE(err.find("nothing.pem"), std::string::npos) << err;
}

TEST(TlsContext, ClientSettings) {
    std::string err;
    auto c = context::make_client(test::client_opts("client"), &err);
    ASSERT_TRUE(c) << err;
    EXPECT_FALSE(c->is_server());
    EXPECT_EQ(SSL_CTX_get_min_proto_version(c->native()), TLS1_3_VERSION);
    EXPECT_EQ(SSL_CTX_get_verify_mode(c->native()), SSL_VERIFY_PEER);
    auto ip = test::client_opts();
    ip.server_name = "127.0.0.1";
    EXPECT_TRUE(context::make_client(ip, &err)) << err;
}

// OpenSSL drops an unknown TLS 1.3 suite name silently when another is known;
// a context refuses the list instead, naming the unknown suite.
TEST(TlsContext, UnknownCipherSuiteIsRefusedByName) {
    std::vector<std::string> known = known_ciphersuites();
    EXPECT_NE(std::find(known.begin(), known.end(), "TLS_AES_128_GCM_SHA256"), known.end());
    EXPECT_NE(std::find(known.begin(), known.end(), "TLS_CHACHA20_POLY1305_SHA256"), known.end());
    EXPECT_EQ(std::find(known.begin(), known.end(), "ECDHE-ECDSA-AES128-GCM-SHA256"), known.end());

    std::string err;
    EXPECT_TRUE(check_ciphersuites("TLS_AES_256_GCM_SHA384: TLS_AES_128_GCM_SHA256:", &err)) << err;
    for (const char* bad : {"TLS_AES_128_GCM_SHA256:TLS_AES_128_GCM_SHA384",
                            "TLS_AES_128_GCM_SHA384:TLS_AES_128_GCM_SHA256"}) {
        SCOPED_TRACE(bad);
        auto opt = test::server_opts();
        opt.ciphers.ciphersuites = bad;
        EXPECT_FALSE(context::make_server(opt, &err));
        EXPECT_NE(err.find("unknown TLS 1.3 cipher suite 'TLS_AES_128_GCM_SHA384'"),
                  std::string::npos)
            << err;
        auto co = test::client_opts();
        co.ciphers.ciphersuites = bad;
        err.clear();
        EXPECT_FALSE(context::make_client(co, &err));
        EXPECT_NE(err.find("'TLS_AES_128_GCM_SHA384'"), std::string::npos) << err;
    }
    // A TLS 1.2 cipher is not a TLS 1.3 suite, whatever OpenSSL makes of it.
    EXPECT_FALSE(check_ciphersuites("TLS_AES_128_GCM_SHA256:ECDHE-RSA-AES128-GCM-SHA256", &err));
    EXPECT_NE(err.find("'ECDHE-RSA-AES128-GCM-SHA256'"), std::string::npos) << err;
}

TEST(TlsContext, LastErrorIsOneLine) {
    ERR_raise(ERR_LIB_SSL, SSL_R_NO_APPLICATION_PROTOCOL);
    ERR_raise(ERR_LIB_SSL, SSL_R_UNSUPPORTED_PROTOCOL);
    std::string e = last_error();
    EXPECT_NE(e.find("no application protocol"), std::string::npos) << e;
    EXPECT_NE(e.find("unsupported protocol"), std::string::npos) << e;
    EXPECT_EQ(ERR_peek_error(), 0u);
}

}  // namespace
}  // namespace rpcgate::tls
