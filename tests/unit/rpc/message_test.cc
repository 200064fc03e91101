#include "rpc/message.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/unit/rpc/test_util.h"

using namespace rpcgate;
using rpc::errc;
using rpc::test::bytewise_chain;
using rpc::test::chain_of;
using rpc::test::hex;
using rpc::test::unhex;

namespace {

// NFS v3 GETATTR-shaped call with AUTH_SYS, args "ABCD".
const std::string call_bytes = unhex(
    "0000cafe 00000000 00000002 000186a3 00000003 00000001"  // xid CALL v2 nfs v3 proc1
    "00000001 00000018"                                      // AUTH_SYS, 24 bytes
    "00000000 00000001 68000000 000003e8 000003e8 00000000"  // stamp "h" uid gid 0 gids
    "00000000 00000000"                                      // verf AUTH_NONE
    "41424344");

// Strips the record mark of a single-fragment framed record.
std::string payload_of(const core::slice& framed) {
    EXPECT_GE(framed.size(), 4u);
    EXPECT_EQ(rpc::load_be32(framed.data()), 0x80000000u | (framed.size() - 4));
    return std::string(framed.view().substr(4));
}

TEST(message, decode_call_header_and_zero_copy_args) {
    for (bool bytewise : {false, true}) {
        auto rec = bytewise ? bytewise_chain(call_bytes) : chain_of(call_bytes);
        auto m = rpc::decode_call(rec);
        ASSERT_TRUE(m) << rpc::to_string(m.error());
        const auto& h = m->header;
        EXPECT_EQ(h.xid, 0xcafeu);
        EXPECT_EQ(h.prog, 100003u);
        EXPECT_EQ(h.vers, 3u);
        EXPECT_EQ(h.proc, 1u);
        EXPECT_TRUE(h.cred.is(rpc::auth_flavor::sys));
        EXPECT_EQ(h.cred.len, 24u);
        EXPECT_TRUE(h.verf.is(rpc::auth_flavor::none));
        EXPECT_EQ(h.verf.len, 0u);
        EXPECT_TRUE(m->args == "ABCD");
        EXPECT_EQ(m->args.part(0).owner(), rec.part(rec.count() - (bytewise ? 4 : 1)).owner());
        auto sys = rpc::decode_auth_sys(h.cred);
        ASSERT_TRUE(sys);
        EXPECT_EQ(sys->machine(), "h");
        EXPECT_EQ(sys->uid, 1000u);
        EXPECT_EQ(sys->gid, 1000u);
        EXPECT_EQ(sys->gid_count, 0u);
    }
}

TEST(message, peek) {
    auto rec = chain_of(call_bytes);
    auto p = rpc::peek_message(rec);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->xid, 0xcafeu);
    EXPECT_EQ(p->type, rpc::msg_type::call);
    auto bad = chain_of(unhex("00000001 00000002"));
    EXPECT_EQ(rpc::peek_message(bad).error(), errc::bad_value);
    auto shrt = chain_of(unhex("00000001 000000"));
    EXPECT_EQ(rpc::peek_message(shrt).error(), errc::short_input);
}

TEST(message, every_truncation_of_a_call_is_short_input) {
    const size_t header = call_bytes.size() - 4;
    for (size_t n = 0; n < header; ++n) {
        auto rec = chain_of(call_bytes.substr(0, n));
        auto m = rpc::decode_call(rec);
        ASSERT_FALSE(m) << n;
        EXPECT_EQ(m.error(), errc::short_input) << n;
    }
    auto rec = chain_of(call_bytes.substr(0, header));
    auto m = rpc::decode_call(rec);
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->args.empty());
}

TEST(message, malformed_calls) {
    std::string wrong_version = call_bytes;
    wrong_version[11] = 3;
    auto r1 = chain_of(wrong_version);
    EXPECT_EQ(rpc::decode_call(r1).error(), errc::rpc_version_mismatch);
    EXPECT_EQ(rpc::peek_message(r1)->xid, 0xcafeu);  // enough to answer RPC_MISMATCH

    std::string reply_type = call_bytes;
    reply_type[7] = 1;
    auto r2 = chain_of(reply_type);
    EXPECT_EQ(rpc::decode_call(r2).error(), errc::bad_value);

    // Credential body of 401 bytes.
    std::string big = unhex(
                          "00000001 00000000 00000002 00000001 00000001 00000000"
                          "00000001 00000191") +
                      std::string(404, 'x') + unhex("0000000000000000");
    auto r3 = chain_of(big);
    EXPECT_EQ(rpc::decode_call(r3).error(), errc::too_long);
    // 400 is fine.
    std::string max = unhex(
                          "00000001 00000000 00000002 00000001 00000001 00000000"
                          "00000006 00000190") +
                      std::string(400, 'x') + unhex("0000000000000000");
    auto r4 = chain_of(max);
    auto m = rpc::decode_call(r4);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->header.cred.len, 400u);
}

TEST(message, call_round_trip_with_fragmentation) {
    rpc::call_header h;
    h.xid = 42;
    h.prog = 0x20000001;
    h.vers = 1;
    h.proc = 1;
    rpc::auth_sys_params sys;
    sys.stamp = 7;
    ASSERT_TRUE(sys.set_machine("client.example"));
    sys.uid = 0;
    sys.gid = 0;
    std::vector<uint32_t> groups = {1, 2, 3};
    ASSERT_TRUE(sys.set_groups(groups));
    h.cred = rpc::encode_auth_sys(sys);
    std::string args(1000, 'q');
    auto framed = rpc::build_call(h, chain_of(args), 300);
    rpc::record_reassembler ra;
    int n = 0;
    for (const auto& s : framed)
        ASSERT_TRUE(ra.feed(s, [&](core::slice_chain&& rec) {
            ++n;
            auto m = rpc::decode_call(rec);
            ASSERT_TRUE(m);
            EXPECT_EQ(m->header.xid, 42u);
            EXPECT_EQ(m->header.prog, 0x20000001u);
            EXPECT_EQ(m->header.cred, h.cred);
            EXPECT_EQ(m->header.verf, rpc::opaque_auth::none());
            EXPECT_EQ(m->args.to_string(), args);
            auto back = rpc::decode_auth_sys(m->header.cred);
            ASSERT_TRUE(back);
            EXPECT_EQ(back->machine(), "client.example");
            EXPECT_EQ(std::vector<uint32_t>(back->group_ids().begin(), back->group_ids().end()),
                      groups);
        }));
    EXPECT_EQ(n, 1);
}

// Every reply kind: exact bytes, then decode gives back the same header.
TEST(message, every_reply_kind_round_trips) {
    struct sample {
        rpc::reply_header h;
        std::string body_hex;  // after xid 00000009 and REPLY 00000001
    };
    std::vector<sample> samples = {
        {rpc::reply_header::accepted(9, rpc::accept_stat::success),
         "00000000 00000000 00000000 00000000"},
        {rpc::reply_header::accepted(9, rpc::accept_stat::prog_unavail),
         "00000000 00000000 00000000 00000001"},
        {rpc::reply_header::prog_mismatch(9, 2, 4),
         "00000000 00000000 00000000 00000002 00000002 00000004"},
        {rpc::reply_header::accepted(9, rpc::accept_stat::proc_unavail),
         "00000000 00000000 00000000 00000003"},
        {rpc::reply_header::accepted(9, rpc::accept_stat::garbage_args),
         "00000000 00000000 00000000 00000004"},
        {rpc::reply_header::accepted(9, rpc::accept_stat::system_err),
         "00000000 00000000 00000000 00000005"},
        {rpc::reply_header::rpc_mismatch(9), "00000001 00000000 00000002 00000002"},
    };
    for (uint32_t a = 0; a <= rpc::auth_stat_max; ++a) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "00000001 00000001 %08x", a);
        samples.push_back({rpc::reply_header::auth_error(9, static_cast<rpc::auth_stat>(a)), buf});
    }
    for (const auto& s : samples) {
        std::string expect = unhex("00000009 00000001 " + s.body_hex);
        auto framed = rpc::build_reply(s.h);
        EXPECT_EQ(hex(payload_of(framed)), hex(expect));
        auto rec = bytewise_chain(expect);
        auto m = rpc::decode_reply(rec);
        ASSERT_TRUE(m) << s.body_hex;
        const auto& d = m->header;
        EXPECT_EQ(d.xid, 9u);
        EXPECT_EQ(d.stat, s.h.stat);
        if (d.stat == rpc::reply_stat::accepted) {
            EXPECT_EQ(d.accept, s.h.accept);
            EXPECT_EQ(d.verf, s.h.verf);
        } else {
            EXPECT_EQ(d.reject, s.h.reject);
            if (d.reject == rpc::reject_stat::auth_error) {
                EXPECT_EQ(d.auth, s.h.auth);
            }
        }
        EXPECT_EQ(d.mismatch_low, s.h.mismatch_low);
        EXPECT_EQ(d.mismatch_high, s.h.mismatch_high);
        EXPECT_TRUE(m->results.empty());
        // Every truncation fails cleanly.
        for (size_t n = 0; n < expect.size(); ++n) {
            auto cut = chain_of(expect.substr(0, n));
            EXPECT_FALSE(rpc::decode_reply(cut)) << n;
        }
    }
}

TEST(message, auth_stat_values_match_rfc) {
    EXPECT_EQ(static_cast<uint32_t>(rpc::auth_stat::tooweak), 5u);
    EXPECT_EQ(static_cast<uint32_t>(rpc::auth_stat::invalidresp), 6u);
    EXPECT_EQ(static_cast<uint32_t>(rpc::auth_stat::failed), 7u);
    EXPECT_EQ(static_cast<uint32_t>(rpc::auth_stat::rpcsec_gss_credproblem), 13u);
    EXPECT_EQ(static_cast<uint32_t>(rpc::auth_stat::rpcsec_gss_ctxproblem), 14u);
}

TEST(message, malformed_replies) {
    for (const char* h : {"00000001 00000001 00000002",                             // reply_stat 2
                          "00000001 00000001 00000000 00000000 00000000 00000006",  // accept 6
                          "00000001 00000001 00000001 00000002",                    // reject 2
                          "00000001 00000001 00000001 00000001 0000000f",           // auth_stat 15
                          "00000001 00000000 00000000"}) {                          // a CALL
        auto rec = chain_of(unhex(h));
        EXPECT_FALSE(rpc::decode_reply(rec)) << h;
    }
}

TEST(message, success_reply_with_results_zero_copy) {
    core::slice results = core::slice::copy_of("RESULTS!");
    const uint8_t* p = results.data();
    auto framed = rpc::build_reply(rpc::reply_header::accepted(5, rpc::accept_stat::success),
                                   core::slice_chain(std::move(results)));
    EXPECT_EQ(framed.to_string(),
              unhex("80000020 00000005 00000001 00000000 00000000 00000000 00000000") + "RESULTS!");
    bool shared = false;
    for (const auto& s : framed) shared |= s.data() == p;
    EXPECT_TRUE(shared);
    auto payload = chain_of(framed.to_string().substr(4));
    auto m = rpc::decode_reply(payload);
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->results == "RESULTS!");
}

TEST(auth_sys, limits) {
    rpc::auth_sys_params p;
    EXPECT_TRUE(p.set_machine(std::string(255, 'm')));
    EXPECT_FALSE(p.set_machine(std::string(256, 'm')));
    std::vector<uint32_t> g16(16, 5), g17(17, 5);
    EXPECT_TRUE(p.set_groups(g16));
    EXPECT_FALSE(p.set_groups(g17));
    auto cred = rpc::encode_auth_sys(p);
    EXPECT_EQ(cred.len, 4u + 4 + 256 + 4 + 4 + 4 + 64);
    auto back = rpc::decode_auth_sys(cred);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->machine(), std::string(255, 'm'));
    EXPECT_EQ(back->gid_count, 16u);

    // 256-byte machine name and 17 gids are refused on decode.
    std::string name256 =
        unhex("00000000 00000100") + std::string(256, 'm') + unhex("00000000 00000000 00000000");
    EXPECT_EQ(
        rpc::decode_auth_sys({reinterpret_cast<const uint8_t*>(name256.data()), name256.size()})
            .error(),
        errc::too_long);
    std::string gids17 =
        unhex("00000000 00000000 00000000 00000000 00000011") + std::string(17 * 4, '\0');
    EXPECT_EQ(rpc::decode_auth_sys({reinterpret_cast<const uint8_t*>(gids17.data()), gids17.size()})
                  .error(),
              errc::too_long);
    std::string trailing = unhex("00000000 00000000 00000000 00000000 00000000 00000000");
    EXPECT_EQ(
        rpc::decode_auth_sys({reinterpret_cast<const uint8_t*>(trailing.data()), trailing.size()})
            .error(),
        errc::trailing_bytes);
    std::string shrt = unhex("00000000 00000000 00000000 00000000");
    EXPECT_EQ(
        rpc::decode_auth_sys({reinterpret_cast<const uint8_t*>(shrt.data()), shrt.size()}).error(),
        errc::short_input);
    EXPECT_EQ(rpc::decode_auth_sys(rpc::opaque_auth::none()).error(), errc::bad_value);
}

}  // namespace
