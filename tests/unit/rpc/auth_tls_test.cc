#include "rpc/auth_tls.h"

#include <gtest/gtest.h>

#include "tests/unit/rpc/test_util.h"

using namespace rpcgate;
using rpc::test::chain_of;
using rpc::test::hex;
using rpc::test::unhex;

namespace {

rpc::call_header probe_header() {
    rpc::call_header h;
    h.xid = 1;
    h.prog = 100003;
    h.vers = 4;
    h.proc = 0;
    h.cred.flavor = static_cast<uint32_t>(rpc::auth_flavor::tls);
    return h;
}

// RFC 9289 §4.1 layout: record mark, xid, REPLY, MSG_ACCEPTED, verifier
// AUTH_NONE with the 8 bytes "STARTTLS", SUCCESS.
TEST(auth_tls, starttls_reply_exact_bytes) {
    auto s = rpc::build_starttls_reply(0x12345678);
    EXPECT_EQ(hex(s.view()), hex(unhex("80000020"
                                       "12345678 00000001 00000000"
                                       "00000000 00000008 53544152 54544c53"
                                       "00000000")));
    auto rec = chain_of(std::string(s.view().substr(4)));
    auto m = rpc::decode_reply(rec);
    ASSERT_TRUE(m);
    EXPECT_TRUE(rpc::is_starttls_reply(m->header));
}

TEST(auth_tls, badcred_reply_exact_bytes) {
    auto s = rpc::build_auth_tls_badcred_reply(0xa1b2c3d4);
    EXPECT_EQ(hex(s.view()), hex(unhex("80000014"
                                       "a1b2c3d4 00000001 00000001"  // xid REPLY MSG_DENIED
                                       "00000001 00000001")));       // AUTH_ERROR AUTH_BADCRED
    auto rec = chain_of(std::string(s.view().substr(4)));
    auto m = rpc::decode_reply(rec);
    ASSERT_TRUE(m);
    EXPECT_FALSE(rpc::is_starttls_reply(m->header));
}

TEST(auth_tls, probe_call_exact_bytes_and_classification) {
    auto s = rpc::build_tls_probe_call(7, 100003, 4);
    EXPECT_EQ(hex(s.view()), hex(unhex("80000028"
                                       "00000007 00000000 00000002 000186a3 00000004 00000000"
                                       "00000007 00000000 00000000 00000000")));
    auto rec = chain_of(std::string(s.view().substr(4)));
    auto m = rpc::decode_call(rec);
    ASSERT_TRUE(m);
    EXPECT_EQ(rpc::classify_auth_tls(m->header), rpc::auth_tls_use::probe);
    EXPECT_EQ(rpc::classify_auth_tls(m->header, /*over_tls=*/true), rpc::auth_tls_use::misuse);
}

TEST(auth_tls, misuse_is_classified) {
    auto h = probe_header();
    EXPECT_EQ(rpc::classify_auth_tls(h), rpc::auth_tls_use::probe);

    auto proc1 = probe_header();
    proc1.proc = 1;
    EXPECT_EQ(rpc::classify_auth_tls(proc1), rpc::auth_tls_use::misuse);

    auto cred_body = probe_header();
    cred_body.cred.len = 4;
    EXPECT_EQ(rpc::classify_auth_tls(cred_body), rpc::auth_tls_use::misuse);

    auto verf_body = probe_header();
    verf_body.verf.len = 8;
    EXPECT_EQ(rpc::classify_auth_tls(verf_body), rpc::auth_tls_use::misuse);

    auto verf_flavor = probe_header();
    verf_flavor.verf.flavor = static_cast<uint32_t>(rpc::auth_flavor::sys);
    EXPECT_EQ(rpc::classify_auth_tls(verf_flavor), rpc::auth_tls_use::misuse);

    auto plain = probe_header();
    plain.cred = rpc::opaque_auth::none();
    EXPECT_EQ(rpc::classify_auth_tls(plain), rpc::auth_tls_use::none);
    EXPECT_EQ(rpc::classify_auth_tls(plain, true), rpc::auth_tls_use::none);
}

TEST(auth_tls, non_starttls_replies) {
    auto h = rpc::reply_header::accepted(1, rpc::accept_stat::success);
    EXPECT_FALSE(rpc::is_starttls_reply(h));  // empty verifier
    h.verf = rpc::opaque_auth::make(0, {reinterpret_cast<const uint8_t*>("STARTTLX"), 8});
    EXPECT_FALSE(rpc::is_starttls_reply(h));
    h.verf = rpc::opaque_auth::make(1, {reinterpret_cast<const uint8_t*>("STARTTLS"), 8});
    EXPECT_FALSE(rpc::is_starttls_reply(h));  // wrong flavor
    EXPECT_FALSE(rpc::is_starttls_reply(
        rpc::reply_header::auth_error(1, rpc::auth_stat::rejectedcred)));  // ganesha's answer
}

}  // namespace
