#include "rpc/portmap.h"

#include <gtest/gtest.h>

#include "tests/unit/rpc/test_util.h"

using namespace rpcgate;
using rpc::errc;
using rpc::test::chain_of;
using rpc::test::hex;
using rpc::test::unhex;

namespace {

TEST(portmap, getport_args_and_reply) {
    auto args = chain_of(unhex("000186a3 00000003 00000006 00000000"));
    auto m = rpc::decode_getport_args(args);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->prog, 100003u);
    EXPECT_EQ(m->vers, 3u);
    EXPECT_EQ(m->prot, rpc::pmap_ipproto_tcp);

    auto shrt = chain_of(unhex("000186a3 00000003 00000006"));
    EXPECT_EQ(rpc::decode_getport_args(shrt).error(), errc::short_input);
    auto longer = chain_of(unhex("000186a3 00000003 00000006 00000000 00000000"));
    EXPECT_EQ(rpc::decode_getport_args(longer).error(), errc::trailing_bytes);

    auto reply = rpc::build_getport_reply(0x11, 2049);
    EXPECT_EQ(
        hex(reply.view()),
        hex(unhex("8000001c 00000011 00000001 00000000 00000000 00000000 00000000 00000801")));
    auto rec = chain_of(std::string(reply.view().substr(4)));
    auto d = rpc::decode_reply(rec);
    ASSERT_TRUE(d);
    EXPECT_EQ(*rpc::decode_getport_result(d->results), 2049u);
}

TEST(portmap, null_reply_and_getport_call) {
    EXPECT_EQ(hex(rpc::build_null_reply(3).view()),
              hex(unhex("80000018 00000003 00000001 00000000 00000000 00000000 00000000")));
    auto call = rpc::build_getport_call(4, {100005, 3, rpc::pmap_ipproto_tcp, 0});
    auto payload = chain_of(call.to_string().substr(4));
    auto m = rpc::decode_call(payload);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->header.prog, rpc::pmap_prog);
    EXPECT_EQ(m->header.vers, rpc::pmap_vers);
    EXPECT_EQ(m->header.proc, static_cast<uint32_t>(rpc::pmap_proc::getport));
    auto a = rpc::decode_getport_args(m->args);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->prog, 100005u);
}

TEST(portmap, program_names) {
    EXPECT_EQ(rpc::parse_program("nfs"), 100003u);
    EXPECT_EQ(rpc::parse_program("100003"), 100003u);
    EXPECT_EQ(rpc::parse_program("0x186a3"), 100003u);
    EXPECT_EQ(rpc::parse_program("mount"), 100005u);
    EXPECT_EQ(rpc::parse_program("nlm"), 100021u);
    EXPECT_EQ(rpc::parse_program("nsm"), 100024u);
    EXPECT_EQ(rpc::parse_program("status"), 100024u);
    EXPECT_EQ(rpc::parse_program("portmap"), 100000u);
    EXPECT_EQ(rpc::parse_program("rpcbind"), 100000u);
    EXPECT_EQ(rpc::parse_program("nfs_acl"), 100227u);
    EXPECT_EQ(rpc::parse_program("536870913"), 0x20000001u);
    EXPECT_FALSE(rpc::parse_program(""));
    EXPECT_FALSE(rpc::parse_program("nfsx"));
    EXPECT_FALSE(rpc::parse_program("12a"));
    EXPECT_FALSE(rpc::parse_program("0x"));
    EXPECT_FALSE(rpc::parse_program("99999999999"));
    EXPECT_FALSE(rpc::parse_program("-1"));
    EXPECT_EQ(rpc::program_name_of(100003), "nfs");
    EXPECT_EQ(rpc::program_name_of(100000), "portmap");
    EXPECT_EQ(rpc::program_name_of(42), "");
    for (const auto& p : rpc::well_known_programs())
        EXPECT_EQ(rpc::parse_program(p.name), p.number);
}

}  // namespace
