// rpcgate-bench nfs: the verify pattern, the --mix parser and the NFSv3
// reply decoders on hand-built replies (the end-to-end test against
// nfs-ganesha is tests/gateway/nfs_bench_verify.sh).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "rpc/message.h"
#include "rpc/xdr_codec.h"
#include "tools/bench/nfs4_protocol.h"
#include "tools/bench/nfs_load.h"
#include "tools/bench/nfs_protocol.h"

namespace rpcgate::bench {
namespace {

TEST(nfs_pattern, words_follow_the_offset_wherever_they_start) {
    std::vector<uint8_t> whole(64), part(13);
    nfs3::fill_pattern(0, whole);
    nfs3::fill_pattern(21, part);
    EXPECT_EQ(0, std::memcmp(whole.data() + 21, part.data(), part.size()));
    // Word 0 is 1 * 0x9E3779B97F4A7C15, little-endian.
    EXPECT_EQ(whole[0], 0x15);
    EXPECT_EQ(whole[7], 0x9E);
    // Neighbouring words differ: data from the wrong offset fails.
    EXPECT_NE(0, std::memcmp(whole.data(), whole.data() + 8, 8));
}

TEST(nfs_pattern, counts_every_differing_byte_across_slices) {
    std::vector<uint8_t> a(5000), b(3000);
    nfs3::fill_pattern(100, a);
    nfs3::fill_pattern(5100, b);
    core::slice_chain data;
    data.push_back(core::slice::copy_of(a.data(), a.size()));
    data.push_back(core::slice::copy_of(b.data(), b.size()));
    EXPECT_EQ(0u, nfs3::count_mismatches(100, data));
    b[2999] ^= 1;
    a[0] ^= 0x80;
    core::slice_chain bad;
    bad.push_back(core::slice::copy_of(a.data(), a.size()));
    bad.push_back(core::slice::copy_of(b.data(), b.size()));
    EXPECT_EQ(2u, nfs3::count_mismatches(100, bad));
    // The same bytes at another offset are all but wrong.
    EXPECT_GT(nfs3::count_mismatches(108, data), 7000u);
}

TEST(nfs_mix, parses_weights_and_refuses_the_rest) {
    unsigned mix[nfs_op_count] = {};
    std::string err;
    ASSERT_TRUE(parse_nfs_mix("read=70,write=30", mix, &err)) << err;
    EXPECT_EQ(mix[unsigned(nfs_op::read)], 70u);
    EXPECT_EQ(mix[unsigned(nfs_op::write)], 30u);
    EXPECT_EQ(format_nfs_mix(mix), "read=70,write=30");
    ASSERT_TRUE(parse_nfs_mix("getattr=1,lookup=2,null=3", mix, &err)) << err;
    EXPECT_EQ(mix[unsigned(nfs_op::read)], 0u);
    EXPECT_EQ(format_nfs_mix(mix), "getattr=1,lookup=2,null=3");
    for (const char* bad : {"", "read", "read=", "read=x", "rename=5", "read=0", "read=1,,"})
        EXPECT_FALSE(parse_nfs_mix(bad, mix, &err)) << bad;
    EXPECT_EQ(format_nfs_mix(mix), "getattr=1,lookup=2,null=3");  // unchanged on failure
}

// A SUCCESS reply to `xid` whose results are what `fill` writes.
template <typename F>
core::slice_chain reply(uint32_t xid, F&& fill) {
    rpc::xdr_writer w;
    fill(w);
    return rpc::build_reply(rpc::reply_header::accepted(xid, rpc::accept_stat::success),
                            w.finish());
}

// The record without its 4-byte record mark (what the reassembler hands over).
core::slice_chain unframe(core::slice_chain rec) {
    rec.trim_front(4);
    return rec;
}

TEST(nfs_decode, read_reply_with_attributes_gives_the_data) {
    std::vector<uint8_t> data(10);
    nfs3::fill_pattern(4096, data);
    auto rec = unframe(reply(7, [&](rpc::xdr_writer& w) {
        w.u32(0);         // NFS3_OK
        w.boolean(true);  // post_op_attr follows
        for (int i = 0; i < 21; ++i) w.u32(0);
        w.u32(10);
        w.boolean(true);  // eof
        w.opaque(data);
    }));
    nfs3::rpc_reply r = nfs3::open_reply(rec);
    ASSERT_TRUE(r.ok) << r.why;
    EXPECT_EQ(r.xid, 7u);
    uint32_t count = 0;
    bool eof = false;
    core::slice_chain got;
    ASSERT_EQ(nfs3::decode_read(r.results, &count, &eof, &got), nfs3::nfs3_ok);
    EXPECT_EQ(count, 10u);
    EXPECT_TRUE(eof);
    EXPECT_EQ(nfs3::count_mismatches(4096, got), 0u);
    EXPECT_EQ(nfs3::count_mismatches(4097, got), 10u);
}

TEST(nfs_decode, error_status_and_truncated_replies) {
    auto err_rec = unframe(reply(1, [](rpc::xdr_writer& w) {
        w.u32(13);  // NFS3ERR_ACCES
        w.boolean(false);
    }));
    nfs3::rpc_reply r = nfs3::open_reply(err_rec);
    ASSERT_TRUE(r.ok);
    uint32_t count = 0;
    EXPECT_EQ(nfs3::decode_write(r.results, &count), 13u);
    auto short_rec = unframe(reply(2, [](rpc::xdr_writer& w) {
        w.u32(0);
        w.boolean(false);  // no pre-op attributes
        w.boolean(false);  // no post-op attributes
        w.u32(4096);       // count, then nothing: committed and verifier missing
    }));
    r = nfs3::open_reply(short_rec);
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(nfs3::decode_write(r.results, &count), nfs3::malformed);
    core::slice_chain denied;
    denied.push_back(rpc::build_reply(rpc::reply_header::auth_error(3, rpc::auth_stat::tooweak)));
    r = nfs3::open_reply(unframe(std::move(denied)));
    EXPECT_FALSE(r.ok);
    EXPECT_STREQ(r.why, "call denied (auth error)");
}

TEST(nfs_decode, mount_gives_the_root_handle) {
    const uint8_t fh[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    auto rec = unframe(reply(9, [&](rpc::xdr_writer& w) {
        w.u32(0);  // MNT3_OK
        w.opaque(fh);
        w.u32(1);  // one auth flavor
        w.u32(1);  // AUTH_SYS
    }));
    nfs3::rpc_reply r = nfs3::open_reply(rec);
    ASSERT_TRUE(r.ok);
    nfs3::file_handle got;
    ASSERT_EQ(nfs3::decode_mnt(r.results, &got), nfs3::nfs3_ok);
    ASSERT_EQ(got.len, sizeof fh);
    EXPECT_EQ(0, std::memcmp(got.data, fh, sizeof fh));
}

// COMPOUND results: status, empty tag, SEQUENCE and PUTFH succeeded, then
// what `last` writes (the op number and status included).
template <typename F>
core::slice_chain compound_results(uint32_t ops, F&& last) {
    return unframe(reply(5, [&](rpc::xdr_writer& w) {
        w.u32(0);
        w.string("");
        w.u32(ops);
        w.u32(53);  // SEQUENCE
        w.u32(0);
        for (int i = 0; i < 9; ++i) w.u32(0);  // session ID and five words
        w.u32(22);                             // PUTFH
        w.u32(0);
        last(w);
    }));
}

TEST(nfs4_decode, read_after_sequence_and_putfh) {
    std::vector<uint8_t> data(100);
    nfs3::fill_pattern(8192, data);
    auto rec = compound_results(3, [&](rpc::xdr_writer& w) {
        w.u32(25);  // READ
        w.u32(0);
        w.boolean(false);
        w.opaque(data);
    });
    nfs3::rpc_reply r = nfs3::open_reply(rec);
    ASSERT_TRUE(r.ok);
    uint32_t count = 0;
    bool eof = true;
    core::slice_chain got;
    ASSERT_EQ(nfs4::decode_read(r.results, &count, &eof, &got), nfs4::nfs4_ok);
    EXPECT_EQ(count, 100u);
    EXPECT_FALSE(eof);
    EXPECT_EQ(nfs3::count_mismatches(8192, got), 0u);
}

TEST(nfs4_decode, failing_op_and_wrong_op_number) {
    auto stale = compound_results(3, [](rpc::xdr_writer& w) {
        w.u32(38);  // WRITE
        w.u32(70);  // NFS4ERR_STALE
    });
    nfs3::rpc_reply r = nfs3::open_reply(stale);
    ASSERT_TRUE(r.ok);
    uint32_t count = 0;
    EXPECT_EQ(nfs4::decode_write(r.results, &count), 70u);
    // A GETATTR reply where a WRITE was expected is malformed, not success.
    auto other = compound_results(3, [](rpc::xdr_writer& w) {
        w.u32(9);
        w.u32(0);
    });
    r = nfs3::open_reply(other);
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(nfs4::decode_write(r.results, &count), nfs3::malformed);
    // GETATTR of the size: bitmap {1 << 4}, 8 bytes of attributes.
    auto attr = compound_results(3, [](rpc::xdr_writer& w) {
        w.u32(9);
        w.u32(0);
        w.u32(1);
        w.u32(1u << 4);
        w.u32(8);
        w.u64(123456789);
    });
    r = nfs3::open_reply(attr);
    ASSERT_TRUE(r.ok);
    uint64_t size = 0;
    ASSERT_EQ(nfs4::decode_getattr(r.results, &size), nfs4::nfs4_ok);
    EXPECT_EQ(size, 123456789u);
}

// READ and WRITE carry the session's open stateid with seqid 0 ("the current
// one", RFC 8881 §8.2.2) once the file is open, the anonymous stateid before.
TEST(nfs4_build, read_and_write_carry_the_open_stateid) {
    nfs4::session s;
    s.seqid.assign(1, 1);
    nfs4::file_handle fh;
    fh.len = 8;
    rpc::opaque_auth none;
    // The READ's stateid is the 16 bytes before its offset and count (12).
    auto stateid_of_read = [&](const core::slice_chain& rec) {
        std::string b = rec.to_string();
        return b.substr(b.size() - 12 - 16, 16);
    };
    std::string anonymous(16, '\0');
    EXPECT_EQ(stateid_of_read(nfs4::build_read(1, none, s, 0, fh, 0, 4096)), anonymous);
    s.open.seqid = 7;
    for (int i = 0; i < 12; ++i) s.open.other[i] = uint8_t(0xa0 + i);
    s.opened = true;
    std::string want(4, '\0');
    want.append(reinterpret_cast<const char*>(s.open.other), 12);
    EXPECT_EQ(stateid_of_read(nfs4::build_read(2, none, s, 0, fh, 0, 4096)), want);
    // WRITE: stateid, offset (8), stable (4), then the data (4 + 4 bytes).
    core::slice_chain data;
    data.push_back(core::slice::copy_of("abcd", 4));
    std::string w =
        nfs4::build_write(3, none, s, 0, fh, 0, nfs3::stable_how::unstable, std::move(data))
            .to_string();
    EXPECT_EQ(w.substr(w.size() - 8 - 12 - 16, 16), want);
}

}  // namespace
}  // namespace rpcgate::bench
