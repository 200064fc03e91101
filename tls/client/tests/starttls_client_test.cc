// The probe state machine against canned replies of every kind seen in the
// wild, fed whole, byte by byte and with trailing bytes; and client_session's
// plain and refused paths (no TLS needed).
#include <gtest/gtest.h>

#include <string>

#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "rpc/portmap.h"
#include "tls/client/client_session.h"
#include "tls/client/starttls_client.h"

using namespace rpcgate;
using namespace rpcgate::client;

namespace {

constexpr uint32_t k_xid = 0x5150cafe;

core::slice bytes_of(const core::slice_chain& c) {
    return c.linearize();
}

rpc::reply_header success_with_verifier(uint32_t flavor, std::string_view body) {
    rpc::reply_header h = rpc::reply_header::accepted(k_xid, rpc::accept_stat::success);
    h.verf = rpc::opaque_auth::make(flavor,
                                    {reinterpret_cast<const uint8_t*>(body.data()), body.size()});
    return h;
}

// Feeds `reply` in one piece and then one byte at a time; both must agree.
probe_result feed_both_ways(const core::slice& reply, probe_outcome expect) {
    starttls_client whole(k_xid);
    whole.start(100003, 3);
    EXPECT_EQ(whole.on_bytes(reply), expect);
    starttls_client bytewise(k_xid);
    bytewise.start(100003, 3);
    probe_outcome o = probe_outcome::pending;
    for (size_t i = 0; i < reply.size(); ++i) {
        EXPECT_EQ(o, probe_outcome::pending) << "decided before byte " << i;
        o = bytewise.on_bytes(reply.share(i, 1));
    }
    EXPECT_EQ(o, expect);
    EXPECT_EQ(whole.result().reason, bytewise.result().reason);
    return whole.result();
}

}  // namespace

TEST(starttls_client, probe_is_the_rfc_9289_call) {
    starttls_client c(k_xid);
    core::slice probe = c.start(536870913, 1);
    ASSERT_EQ(probe.size(), 44u);
    rpc::record_reassembler rr;
    bool seen = false;
    ASSERT_TRUE(rr.feed(probe, [&](core::slice_chain&& rec) {
        auto call = rpc::decode_call(rec);
        ASSERT_TRUE(call);
        EXPECT_EQ(call->header.xid, k_xid);
        EXPECT_EQ(call->header.prog, 536870913u);
        EXPECT_EQ(call->header.vers, 1u);
        EXPECT_EQ(rpc::classify_auth_tls(call->header), rpc::auth_tls_use::probe);
        seen = true;
    }));
    EXPECT_TRUE(seen);
}

TEST(starttls_client, random_xids_differ) {
    starttls_client a, b;
    EXPECT_NE(a.xid(), 0u);
    EXPECT_NE(a.xid(), b.xid());
}

TEST(starttls_client, starttls_accepted_and_trailing_bytes_kept) {
    probe_result r = feed_both_ways(rpc::build_starttls_reply(k_xid), probe_outcome::accepted);
    EXPECT_TRUE(r.got_reply);
    EXPECT_NE(r.reason.find("\"STARTTLS\""), std::string::npos) << r.reason;

    // The reply and the first bytes of something else in one receive.
    core::slice_chain both(rpc::build_starttls_reply(k_xid));
    both.push_back(core::slice::copy_of("\x16\x03\x03 tls"));
    starttls_client c(k_xid);
    c.start(100003, 3);
    EXPECT_EQ(c.on_bytes(bytes_of(both)), probe_outcome::accepted);
    c.on_bytes(core::slice::copy_of("more"));
    EXPECT_EQ(c.take_leftover().to_string(), std::string("\x16\x03\x03 tlsmore"));
}

TEST(starttls_client, auth_rejectedcred_like_ganesha) {
    probe_result r = feed_both_ways(
        rpc::build_reply(rpc::reply_header::auth_error(k_xid, rpc::auth_stat::rejectedcred)),
        probe_outcome::refused);
    EXPECT_EQ(r.reason, "MSG_DENIED AUTH_ERROR AUTH_REJECTEDCRED");
}

TEST(starttls_client, auth_badcred) {
    probe_result r = feed_both_ways(
        rpc::build_reply(rpc::reply_header::auth_error(k_xid, rpc::auth_stat::badcred)),
        probe_outcome::refused);
    EXPECT_EQ(r.reason, "MSG_DENIED AUTH_ERROR AUTH_BADCRED");
}

TEST(starttls_client, success_with_empty_verifier) {
    probe_result r = feed_both_ways(rpc::build_null_reply(k_xid), probe_outcome::refused);
    EXPECT_NE(r.reason.find("verifier AUTH_NONE empty"), std::string::npos) << r.reason;
    EXPECT_NE(r.reason.find("no STARTTLS token"), std::string::npos) << r.reason;
}

TEST(starttls_client, success_without_the_token) {
    probe_result r = feed_both_ways(rpc::build_reply(success_with_verifier(0, "STARTTLX")),
                                    probe_outcome::refused);
    EXPECT_NE(r.reason.find("\"STARTTLX\""), std::string::npos) << r.reason;
    // The token under another flavor is not the token either.
    r = feed_both_ways(rpc::build_reply(success_with_verifier(1, "STARTTLS")),
                       probe_outcome::refused);
    EXPECT_NE(r.reason.find("AUTH_SYS"), std::string::npos) << r.reason;
}

TEST(starttls_client, program_errors) {
    probe_result r = feed_both_ways(
        rpc::build_reply(rpc::reply_header::accepted(k_xid, rpc::accept_stat::prog_unavail)),
        probe_outcome::refused);
    EXPECT_NE(r.reason.find("PROG_UNAVAIL"), std::string::npos);
    r = feed_both_ways(rpc::build_reply(rpc::reply_header::prog_mismatch(k_xid, 2, 4)),
                       probe_outcome::refused);
    EXPECT_NE(r.reason.find("PROG_MISMATCH (2-4)"), std::string::npos) << r.reason;
    r = feed_both_ways(
        rpc::build_reply(rpc::reply_header::accepted(k_xid, rpc::accept_stat::proc_unavail)),
        probe_outcome::refused);
    EXPECT_NE(r.reason.find("PROC_UNAVAIL"), std::string::npos);
    r = feed_both_ways(rpc::build_reply(rpc::reply_header::rpc_mismatch(k_xid)),
                       probe_outcome::refused);
    EXPECT_NE(r.reason.find("RPC_MISMATCH (2-2)"), std::string::npos) << r.reason;
}

TEST(starttls_client, wrong_xid_is_an_error) {
    probe_result r = feed_both_ways(rpc::build_starttls_reply(k_xid + 1), probe_outcome::error);
    EXPECT_NE(r.reason.find("does not match"), std::string::npos) << r.reason;
}

TEST(starttls_client, a_call_is_not_a_reply) {
    probe_result r =
        feed_both_ways(rpc::build_tls_probe_call(k_xid, 100003, 3), probe_outcome::error);
    EXPECT_NE(r.reason.find("CALL"), std::string::npos) << r.reason;
}

TEST(starttls_client, garbage_and_truncated_replies) {
    starttls_client c(k_xid);
    c.start(100003, 3);
    // An HTTP server: the first word read as a record mark is far too large.
    EXPECT_EQ(c.on_bytes(core::slice::copy_of("HTTP/1.1 400 Bad Request\r\n\r\n")),
              probe_outcome::error);

    // A complete record that is too short to be a reply header.
    static const uint8_t short_rec[] = {0x80, 0, 0, 8, 0x51, 0x50, 0xca, 0xfe, 0, 0, 0, 1};
    starttls_client d(k_xid);
    d.start(100003, 3);
    EXPECT_EQ(d.on_bytes(core::slice::copy_of(short_rec, sizeof short_rec)), probe_outcome::error);
    EXPECT_NE(d.result().reason.find("malformed"), std::string::npos) << d.result().reason;

    // Half a reply, then the server goes away.
    core::slice reply = rpc::build_starttls_reply(k_xid);
    starttls_client e(k_xid);
    e.start(100003, 3);
    EXPECT_EQ(e.on_bytes(reply.share(0, 10)), probe_outcome::pending);
    EXPECT_EQ(e.on_eof(0), probe_outcome::error);
    EXPECT_NE(e.result().reason.find("closed"), std::string::npos);
}

TEST(client_session, plain_mode_passes_bytes_through) {
    client_session s(session_params{});
    core::slice_chain out, plain;
    EXPECT_EQ(s.start(out), session_state::ready);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(s.on_bytes(core::slice::copy_of("abc"), out, plain), session_state::ready);
    EXPECT_EQ(plain.to_string(), "abc");
    core::slice_chain req(core::slice::copy_of("xyz"));
    EXPECT_TRUE(s.write(std::move(req), out));
    EXPECT_EQ(out.to_string(), "xyz");
    EXPECT_EQ(s.tls(), nullptr);
}

TEST(client_session, starttls_refused_stops_before_tls) {
    session_params p;
    p.mode = tls_mode::starttls;
    p.prog = 100003;
    p.vers = 3;
    p.xid = k_xid;
    // A context pointer is required for TLS modes but the refusal never uses it.
    p.ctx = reinterpret_cast<const tls::context*>(&p);
    client_session s(p);
    core::slice_chain out, plain;
    EXPECT_EQ(s.start(out), session_state::probing);
    EXPECT_EQ(out.size(), 44u);
    out.clear();
    auto st = s.on_bytes(
        rpc::build_reply(rpc::reply_header::auth_error(k_xid, rpc::auth_stat::rejectedcred)), out,
        plain);
    EXPECT_EQ(st, session_state::refused);
    EXPECT_EQ(s.probe().outcome, probe_outcome::refused);
    EXPECT_NE(s.error().find("AUTH_REJECTEDCRED"), std::string::npos) << s.error();
    EXPECT_TRUE(out.empty());
    EXPECT_FALSE(s.write(core::slice_chain(core::slice::copy_of("x")), out));
}

TEST(client_session, starttls_without_context_fails) {
    session_params p;
    p.mode = tls_mode::implicit;
    client_session s(p);
    core::slice_chain out;
    EXPECT_EQ(s.start(out), session_state::failed);
}

TEST(client_session, tls_mode_names) {
    tls_mode m;
    EXPECT_TRUE(parse_tls_mode("starttls", &m));
    EXPECT_EQ(m, tls_mode::starttls);
    EXPECT_TRUE(parse_tls_mode("implicit", &m));
    EXPECT_STREQ(to_string(m), "implicit");
    EXPECT_FALSE(parse_tls_mode("tls", &m));
}
