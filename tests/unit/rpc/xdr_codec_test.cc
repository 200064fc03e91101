#include "rpc/xdr_codec.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/unit/rpc/test_util.h"

using namespace rpcgate;
using rpc::errc;
using rpc::test::bytewise_chain;
using rpc::test::chain_of;
using rpc::test::unhex;

namespace {

TEST(xdr_reader, integers_big_endian) {
    auto c =
        chain_of(unhex("00000001 ffffffff 00000001 00000002 ffffffff fffffffe 00000000 00000001"));
    rpc::xdr_reader r(c);
    EXPECT_EQ(*r.u32(), 1u);
    EXPECT_EQ(*r.i32(), -1);
    EXPECT_EQ(*r.u64(), 0x100000002ull);
    EXPECT_EQ(*r.i64(), -2);
    EXPECT_EQ(*r.boolean(), false);
    EXPECT_EQ(*r.boolean(), true);
    EXPECT_EQ(r.remaining(), 0u);
    EXPECT_EQ(r.u32().error(), errc::short_input);
}

TEST(xdr_reader, values_straddling_slices) {
    std::string bytes = unhex("01020304 05060708 090a0b0c 0000000d");
    auto c = bytewise_chain(bytes);
    rpc::xdr_reader r(c);
    EXPECT_EQ(*r.u32(), 0x01020304u);
    EXPECT_EQ(*r.u64(), 0x05060708090a0b0cull);
    EXPECT_EQ(*r.u32(), 13u);
    for (size_t cut = 1; cut < bytes.size(); ++cut) {
        auto c2 = chain_of(bytes, {cut});
        rpc::xdr_reader r2(c2);
        EXPECT_EQ(*r2.u32(), 0x01020304u) << cut;
        EXPECT_EQ(*r2.u64(), 0x05060708090a0b0cull) << cut;
        EXPECT_EQ(*r2.u32(), 13u) << cut;
    }
}

TEST(xdr_reader, bool_rejects_other_values) {
    auto c = chain_of(unhex("00000002"));
    rpc::xdr_reader r(c);
    EXPECT_EQ(r.boolean().error(), errc::bad_value);
}

TEST(xdr_reader, short_input_everywhere) {
    auto c = chain_of(unhex("000000"));
    rpc::xdr_reader r(c);
    EXPECT_EQ(r.u32().error(), errc::short_input);
    rpc::xdr_reader r2(c);
    EXPECT_EQ(r2.u64().error(), errc::short_input);
    EXPECT_EQ(rpc::xdr_reader(c).skip(4).error(), errc::short_input);
    rpc::xdr_reader r3(c);
    EXPECT_EQ(r3.opaque_fixed(3).error(), errc::short_input);  // 3 + 1 pad > 3
}

TEST(xdr_reader, variable_opaque_zero_copy_with_padding) {
    // length 5, "hello", 3 padding bytes (non-zero: tolerated), then 7.
    std::string bytes = unhex("00000005 68656c6c 6f 010203 00000007");
    for (size_t cut = 0; cut < bytes.size(); ++cut) {
        auto c = chain_of(bytes, {cut});
        rpc::xdr_reader r(c);
        auto o = r.opaque(16);
        ASSERT_TRUE(o) << cut;
        EXPECT_TRUE(*o == "hello");
        EXPECT_EQ(r.position(), 12u);
        EXPECT_EQ(*r.u32(), 7u);
        // The opaque shares the chain's memory.
        const uint8_t* first = o->part(0).data();
        bool inside = false;
        for (const auto& s : c) inside |= first >= s.data() && first < s.data() + s.size();
        EXPECT_TRUE(inside);
    }
}

TEST(xdr_reader, opaque_limits) {
    auto c = chain_of(unhex("00000005 68656c6c 6f000000"));
    EXPECT_EQ(rpc::xdr_reader(c).opaque(4).error(), errc::too_long);
    uint8_t small[4];
    EXPECT_EQ(rpc::xdr_reader(c).opaque_into(small).error(), errc::too_long);
    uint8_t big[8];
    rpc::xdr_reader r(c);
    auto n = r.opaque_into(big);
    ASSERT_TRUE(n);
    EXPECT_EQ(*n, 5u);
    EXPECT_EQ(std::string(reinterpret_cast<char*>(big), 5), "hello");
    EXPECT_EQ(r.remaining(), 0u);
    // A length that points past the end.
    auto huge = chain_of(unhex("7fffffff 0000"));
    EXPECT_EQ(rpc::xdr_reader(huge).opaque(0xffffffff).error(), errc::short_input);
    // Padding missing at the very end.
    auto nopad = chain_of(unhex("00000001 41"));
    EXPECT_EQ(rpc::xdr_reader(nopad).opaque(8).error(), errc::short_input);
}

TEST(xdr_reader, strings_and_spans) {
    std::string bytes = unhex("00000003 616263 00 00000000");
    rpc::xdr_reader r(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    auto s = r.string(3);
    ASSERT_TRUE(s);
    EXPECT_EQ(*s, "abc");
    auto e = r.string(0);
    ASSERT_TRUE(e);
    EXPECT_EQ(*e, "");
    rpc::xdr_reader r2(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
    EXPECT_EQ(r2.string(2).error(), errc::too_long);
}

TEST(xdr_reader, rest_is_shared_remainder) {
    auto c = chain_of(unhex("00000001 41424344 45"), {6});
    rpc::xdr_reader r(c);
    ASSERT_TRUE(r.u32());
    auto rest = r.rest();
    EXPECT_TRUE(rest == "ABCDE");
    EXPECT_EQ(rest.count(), 2u);
    EXPECT_EQ(r.remaining(), 0u);
}

TEST(xdr_writer, encodes_every_type) {
    rpc::xdr_writer w(8);  // small first block: forces growth
    w.u32(1);
    w.i32(-1);
    w.u64(0x0102030405060708ull);
    w.i64(-2);
    w.boolean(true);
    w.opaque_fixed(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("ab"), 2));
    w.string("hello");
    w.opaque(std::span<const uint8_t>{});
    EXPECT_EQ(w.size(), 48u);
    auto c = w.finish();
    EXPECT_EQ(c.to_string(), unhex("00000001 ffffffff 01020304 05060708 ffffffff fffffffe "
                                   "00000001 61620000 00000005 68656c6c 6f000000 00000000"));
    EXPECT_EQ(w.size(), 0u);
}

TEST(xdr_writer, splices_chains_without_copy_and_patches) {
    rpc::xdr_writer w;
    size_t mark = w.reserve_u32();
    core::slice body = core::slice::copy_of("xyz");
    const uint8_t* body_ptr = body.data();
    w.opaque(core::slice_chain(std::move(body)));
    w.u32(9);
    w.patch_u32(mark, static_cast<uint32_t>(w.size() - 4));
    auto c = w.finish();
    EXPECT_EQ(c.to_string(), unhex("0000000c 00000003 78797a00 00000009"));
    bool found = false;
    for (const auto& s : c) found |= s.data() == body_ptr;
    EXPECT_TRUE(found);
}

TEST(xdr_writer, patch_after_growth) {
    rpc::xdr_writer w(4);
    size_t mark = w.reserve_u32();
    for (uint32_t i = 0; i < 100; ++i) w.u32(i);
    w.patch_u32(mark, 0xdeadbeef);
    auto s = w.finish_slice();
    ASSERT_EQ(s.size(), 404u);
    EXPECT_EQ(rpc::load_be32(s.data()), 0xdeadbeefu);
    EXPECT_EQ(rpc::load_be32(s.data() + 400), 99u);
}

TEST(xdr_writer, writes_into_caller_block_first) {
    core::slice block = core::slice::allocate(8);
    const uint8_t* mem = block.data();
    rpc::xdr_writer w(std::move(block));
    w.u32(1);
    w.u32(2);
    auto s = w.finish_slice();
    EXPECT_EQ(s.data(), mem);  // no new allocation
    EXPECT_EQ(rpc::test::hex(s.view()), "00 00 00 01 00 00 00 02");

    rpc::xdr_writer over(core::slice::allocate(4));
    over.u32(1);
    over.u32(2);  // spills into a heap block
    EXPECT_EQ(over.finish().to_string(), unhex("00000001 00000002"));
}

TEST(xdr, round_trip_through_reader) {
    rpc::xdr_writer w;
    w.u64(~0ull);
    w.string("rpcgate");
    w.boolean(false);
    auto c = w.finish();
    rpc::xdr_reader r(c);
    EXPECT_EQ(*r.u64(), ~0ull);
    EXPECT_EQ(*r.string(255), "rpcgate");
    EXPECT_EQ(*r.boolean(), false);
    EXPECT_EQ(r.remaining(), 0u);
}

TEST(xdr, error_codes_convert) {
    std::error_code ec = errc::too_long;
    EXPECT_EQ(ec.category().name(), std::string("rpc"));
    EXPECT_EQ(ec.message(), "too_long");
}

}  // namespace
