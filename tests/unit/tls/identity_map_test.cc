#include "tls/identity_map.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include <cstdio>
#include <fstream>

#include "test_util.h"

namespace rpcgate::tls {
namespace {

using test::cert;

X509* read_cert(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f) return nullptr;
    X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    return x;
}

TEST(TlsIdentityMap, ParsesRules) {
    identity_map m;
    std::string err;
    ASSERT_TRUE(
        m.parse("# users\n"
                "subject:CN=client1,O=rpcgate test   1000 1000,20,24  # with groups\n"
                "\n"
                "san:host1.example.org 0 0\r\n"
                "  san:revoked@example.org\t7 8\n",
                "map", &err))
        << err;
    EXPECT_EQ(m.size(), 3u);

    X509* client = read_cert(cert("client.pem"));
    ASSERT_TRUE(client);
    auto id = m.lookup(client);
    ASSERT_TRUE(id);
    EXPECT_EQ(*id, (identity{1000, 1000, {20, 24}}));
    X509_free(client);

    X509* revoked = read_cert(cert("revoked.pem"));
    id = m.lookup(revoked);
    ASSERT_TRUE(id);
    EXPECT_EQ(*id, (identity{7, 8, {}}));
    X509_free(revoked);

    X509* expired = read_cert(cert("expired.pem"));
    EXPECT_FALSE(m.lookup(expired));
    X509_free(expired);
}

TEST(TlsIdentityMap, SanWhenSubjectDoesNotMatch) {
    identity_map m;
    std::string err;
    ASSERT_TRUE(
        m.parse("subject:CN=someone else 1 1\nsan:client1@example.org 1001 1001\n", "m", &err))
        << err;
    X509* client = read_cert(cert("client.pem"));
    auto id = m.lookup(client);
    ASSERT_TRUE(id);
    EXPECT_EQ(id->uid, 1001u);
    X509_free(client);
}

TEST(TlsIdentityMap, ErrorsNameTheLine) {
    struct bad {
        const char* text;
        const char* want;
    };
    for (const bad& b :
         {bad{"subject:CN=x 1 1\nfoo:bar 1 1\n", "m:2: match must start"},
          bad{"san:x abc 1\n", "m:1: bad uid 'abc'"}, bad{"san:x 1 1,,2\n", "m:1: bad gid ''"},
          bad{"san:x 1\n", "m:1: expected"}, bad{"1 2\n", "m:1: expected"},
          bad{"san: 1 2\n", "m:1: empty match"}, bad{"san:x 1 2\nsan:x 3 4\n", "m:2: duplicate"},
          bad{"san:x 1 -2\n", "m:1: bad gid"},
          bad{"san:x 1 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17\n", "m:1: more than 16"}}) {
        identity_map m;
        ASSERT_TRUE(m.parse("san:keep 1 1\n", "m", nullptr));
        std::string err;
        EXPECT_FALSE(m.parse(b.text, "m", &err)) << b.text;
        EXPECT_EQ(err.rfind(b.want, 0), 0u) << err;
        EXPECT_EQ(m.size(), 1u) << "a failed load leaves the map as it was";
    }
}

TEST(TlsIdentityMap, LoadFromFile) {
    std::string path = test::cert_dir() + "/identity_test.map";
    std::ofstream(path) << "san:client1@example.org 5 6,7\n";
    identity_map m;
    std::string err;
    ASSERT_TRUE(m.load(path, &err)) << err;
    EXPECT_EQ(m.size(), 1u);
    EXPECT_FALSE(m.load(path + ".missing", &err));
    EXPECT_NE(err.find(".missing"), std::string::npos);
    std::ofstream(path) << "# ok\n\nsan:x y 1\n";
    EXPECT_FALSE(m.load(path, &err));
    EXPECT_EQ(err, path + ":3: bad uid 'y'");
}

TEST(TlsIdentityMap, OnlyVerifiedConnectionsMap) {
    identity_map m;
    ASSERT_TRUE(m.parse("san:client1@example.org 5 6\nsubject:CN=selfsigned 9 9\n", "m", nullptr));
    std::string err;
    auto so = test::server_opts();
    auto s = context::make_server(so, &err);
    ASSERT_TRUE(s) << err;

    auto good = context::make_client(test::client_opts("client"), &err);
    test::pair p(*good, *s);
    p.handshake();
    ASSERT_EQ(p.sst, status::done) << p.server->error_text();
    auto id = m.lookup(p.server->native());
    ASSERT_TRUE(id);
    EXPECT_EQ(id->uid, 5u);

    // Opportunistic: the self-signed certificate is accepted, but not mapped.
    auto self = context::make_client(test::client_opts("selfsigned"), &err);
    test::pair q(*self, *s);
    q.handshake();
    ASSERT_EQ(q.sst, status::done) << q.server->error_text();
    EXPECT_FALSE(m.lookup(q.server->native()));

    // No certificate at all.
    auto none = context::make_client(test::client_opts(), &err);
    test::pair r(*none, *s);
    r.handshake();
    ASSERT_EQ(r.sst, status::done);
    EXPECT_FALSE(m.lookup(r.server->native()));
}

}  // namespace
}  // namespace rpcgate::tls
