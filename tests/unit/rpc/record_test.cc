#include "rpc/record.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "rpc/xdr_codec.h"
#include "tests/unit/rpc/test_util.h"

using namespace rpcgate;
using rpc::errc;
using rpc::test::unhex;

namespace {

struct collected {
    std::vector<std::string> records;
    std::vector<core::slice_chain> chains;
};

// Feeds `stream` split after each offset in `cuts`; returns what came out.
rpc::result<collected> feed_split(rpc::record_reassembler& ra, const std::string& stream,
                                  const std::vector<size_t>& cuts, bool keep_chains = false) {
    collected out;
    size_t at = 0;
    auto feed_one = [&](size_t end) -> rpc::result<void> {
        core::slice s = core::slice::copy_of(stream.data() + at, end - at);
        auto r = ra.feed(s, [&](core::slice_chain&& rec) {
            out.records.push_back(rec.to_string());
            if (keep_chains) out.chains.push_back(std::move(rec));
        });
        if (!r) return r.error();
        EXPECT_EQ(*r, end - at);
        at = end;
        return {};
    };
    for (size_t cut : cuts) {
        if (cut <= at || cut > stream.size()) continue;
        if (auto e = feed_one(cut); !e) return e.error();
    }
    if (at < stream.size())
        if (auto e = feed_one(stream.size()); !e) return e.error();
    return out;
}

std::string fragment(std::string_view payload, bool last) {
    std::string h(4, '\0');
    rpc::store_be32(reinterpret_cast<uint8_t*>(h.data()),
                    static_cast<uint32_t>(payload.size()) | (last ? 0x80000000u : 0));
    return h + std::string(payload);
}

TEST(record_reassembler, single_records) {
    std::string stream = fragment("abcd", true) + fragment("", true) + fragment("xyz", true);
    rpc::record_reassembler ra;
    auto out = feed_split(ra, stream, {});
    ASSERT_TRUE(out);
    ASSERT_EQ(out->records.size(), 3u);
    EXPECT_EQ(out->records[0], "abcd");
    EXPECT_EQ(out->records[1], "");
    EXPECT_EQ(out->records[2], "xyz");
    EXPECT_FALSE(ra.partial());
    EXPECT_EQ(ra.buffered(), 0u);
}

TEST(record_reassembler, multi_fragment_and_empty_fragments) {
    std::string stream = fragment("ab", false) + fragment("", false) + fragment("cde", false) +
                         fragment("", true) + fragment("", false) + fragment("z", true);
    rpc::record_reassembler ra;
    auto out = feed_split(ra, stream, {});
    ASSERT_TRUE(out);
    ASSERT_EQ(out->records.size(), 2u);
    EXPECT_EQ(out->records[0], "abcde");
    EXPECT_EQ(out->records[1], "z");
}

TEST(record_reassembler, one_byte_at_a_time) {
    std::string stream = fragment("hello ", false) + fragment("world", true) + fragment("!", true);
    std::vector<size_t> cuts;
    for (size_t i = 1; i < stream.size(); ++i) cuts.push_back(i);
    rpc::record_reassembler ra;
    auto out = feed_split(ra, stream, cuts);
    ASSERT_TRUE(out);
    ASSERT_EQ(out->records.size(), 2u);
    EXPECT_EQ(out->records[0], "hello world");
    EXPECT_EQ(out->records[1], "!");
}

TEST(record_reassembler, partial_and_buffered_track_progress) {
    std::string stream = fragment("abcdef", false) + fragment("gh", true);
    rpc::record_reassembler ra;
    auto noop = [](core::slice_chain&&) {};
    EXPECT_FALSE(ra.partial());
    core::slice a = core::slice::copy_of(stream.data(), 2);  // half a header
    ASSERT_TRUE(ra.feed(a, noop));
    EXPECT_TRUE(ra.partial());
    EXPECT_EQ(ra.buffered(), 2u);
    core::slice b = core::slice::copy_of(stream.data() + 2, 5);  // rest of header + 3 bytes
    ASSERT_TRUE(ra.feed(b, noop));
    EXPECT_TRUE(ra.partial());
    EXPECT_EQ(ra.buffered(), 3u);
    core::slice c = core::slice::copy_of(stream.data() + 7, stream.size() - 7);
    int n = 0;
    ASSERT_TRUE(ra.feed(c, [&](core::slice_chain&& r) {
        ++n;
        EXPECT_TRUE(r == "abcdefgh");
    }));
    EXPECT_EQ(n, 1);
    EXPECT_FALSE(ra.partial());
    EXPECT_EQ(ra.buffered(), 0u);
}

TEST(record_reassembler, payload_is_not_copied) {
    std::string stream = fragment(std::string(100, 'a'), false) +
                         fragment(std::string(50, 'b'), true) +
                         fragment(std::string(20, 'c'), true);
    core::slice one = core::slice::copy_of(stream);
    core::slice first = one.share(0, 60);
    core::slice second = one.share(60, one.size() - 60);
    std::vector<core::slice_chain> recs;
    rpc::record_reassembler ra;
    auto keep = [&](core::slice_chain&& r) { recs.push_back(std::move(r)); };
    ASSERT_TRUE(ra.feed(first, keep));
    ASSERT_TRUE(ra.feed(second, keep));
    ASSERT_EQ(recs.size(), 2u);
    const uint8_t* lo = one.data();
    const uint8_t* hi = one.data() + one.size();
    for (const auto& rec : recs)
        for (const auto& s : rec) {
            EXPECT_GE(s.data(), lo);
            EXPECT_LE(s.data() + s.size(), hi);
            EXPECT_EQ(s.owner(), one.owner());
        }
    EXPECT_EQ(recs[0].count(), 3u);  // split by the slice boundary and the fragment header
    EXPECT_EQ(recs[0].part(0).data(), one.data() + 4);
    EXPECT_EQ(recs[1].part(0).data(), one.data() + 162);
}

TEST(record_reassembler, oversize_record_is_an_error) {
    rpc::record_reassembler ra(rpc::record_limits{.max_record = 100});
    std::string stream =
        fragment(std::string(60, 'x'), false) + fragment(std::string(41, 'y'), true);
    auto out = feed_split(ra, stream, {});
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error(), errc::record_too_large);
    // Sticky: further input is refused.
    core::slice more = core::slice::copy_of(fragment("a", true));
    EXPECT_EQ(ra.feed(more, [](core::slice_chain&&) {}).error(), errc::record_too_large);
    ra.reset();
    EXPECT_TRUE(ra.feed(more, [](core::slice_chain&&) {}));
}

TEST(record_reassembler, hostile_header_refused_before_buffering) {
    rpc::record_reassembler ra;  // default cap 4 MiB + 64 KiB
    std::string h = unhex("ffffffff");
    auto out = feed_split(ra, h, {});
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error(), errc::record_too_large);
    rpc::record_reassembler ok;
    std::string at_cap(4, '\0');
    rpc::store_be32(reinterpret_cast<uint8_t*>(at_cap.data()),
                    0x80000000u | static_cast<uint32_t>(rpc::default_max_record));
    EXPECT_TRUE(feed_split(ok, at_cap, {}));
    EXPECT_EQ(ok.buffered(), 0u);
    EXPECT_TRUE(ok.partial());
}

TEST(record_reassembler, too_many_fragments) {
    rpc::record_reassembler ra(rpc::record_limits{.max_fragments = 3});
    std::string stream =
        fragment("a", false) + fragment("b", false) + fragment("c", false) + fragment("d", true);
    auto out = feed_split(ra, stream, {});
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error(), errc::too_many_fragments);
}

TEST(record_reassembler, callback_can_stop_feeding) {
    std::string stream = fragment("probe", true) + "TLS-bytes";
    core::slice s = core::slice::copy_of(stream);
    rpc::record_reassembler ra;
    int n = 0;
    auto r = ra.feed(s, [&](core::slice_chain&& rec) {
        ++n;
        return false;
    });
    ASSERT_TRUE(r);
    EXPECT_EQ(n, 1);
    EXPECT_EQ(*r, 9u);
    EXPECT_EQ(stream.substr(*r), "TLS-bytes");
    EXPECT_FALSE(ra.partial());
}

// The heart of it: one stream, split thousands of ways, always the same records.
TEST(record_reassembler, random_splits_yield_the_same_records) {
    const uint32_t seed = std::random_device{}();
    std::printf("record_reassembler random split seed: %u\n", seed);
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    std::mt19937 rng(seed);

    std::string stream;
    std::vector<std::string> expected;
    for (int i = 0; i < 200; ++i) {
        size_t size = rng() % 4 == 0 ? rng() % 5000 : rng() % 200;
        std::string payload(size, '\0');
        for (auto& c : payload) c = static_cast<char>(rng());
        expected.push_back(payload);
        // Random fragmentation, with occasional empty fragments anywhere.
        size_t at = 0;
        for (;;) {
            if (rng() % 8 == 0) stream += fragment("", false);
            size_t left = size - at;
            size_t take = left == 0 ? 0 : 1 + rng() % left;
            if (rng() % 3 == 0) take = left;
            bool last = at + take == size;
            if (last && rng() % 6 == 0 && take > 0) {
                stream += fragment(payload.substr(at, take), false);
                stream += fragment("", true);
            } else {
                stream += fragment(payload.substr(at, take), last);
            }
            at += take;
            if (last) break;
        }
    }

    auto check = [&](const std::vector<size_t>& cuts) {
        rpc::record_reassembler ra;
        auto out = feed_split(ra, stream, cuts);
        ASSERT_TRUE(out);
        ASSERT_EQ(out->records.size(), expected.size());
        for (size_t i = 0; i < expected.size(); ++i) ASSERT_EQ(out->records[i], expected[i]) << i;
        EXPECT_FALSE(ra.partial());
    };

    check({});
    for (int round = 0; round < 3000; ++round) {
        std::vector<size_t> cuts;
        size_t max_piece = round % 3 == 0 ? 16 : round % 3 == 1 ? 512 : 65536;
        for (size_t at = 0; at < stream.size();) {
            at += 1 + rng() % max_piece;
            cuts.push_back(at);
        }
        check(cuts);
        if (HasFatalFailure()) return;
    }
    std::vector<size_t> bytewise;
    for (size_t i = 1; i < stream.size(); ++i) bytewise.push_back(i);
    check(bytewise);
}

TEST(frame_record, splits_into_fragments_sharing_payload) {
    std::string payload(10, 'p');
    core::slice body = core::slice::copy_of(payload);
    const uint8_t* body_ptr = body.data();
    auto framed = rpc::frame_record(core::slice_chain(std::move(body)), 4);
    EXPECT_EQ(framed.to_string(),
              unhex("00000004") + "pppp" + unhex("00000004") + "pppp" + unhex("80000002") + "pp");
    EXPECT_EQ(framed.part(1).data(), body_ptr);
    EXPECT_EQ(framed.part(3).data(), body_ptr + 4);

    auto empty = rpc::frame_record(core::slice_chain{});
    EXPECT_EQ(empty.to_string(), unhex("80000000"));
    auto whole = rpc::frame_record(core::slice_chain(core::slice::copy_of("abcd")));
    EXPECT_EQ(whole.to_string(), unhex("80000004") + "abcd");
    auto exact = rpc::frame_record(core::slice_chain(core::slice::copy_of("abcd")), 4);
    EXPECT_EQ(exact.to_string(), unhex("80000004") + "abcd");
}

TEST(frame_record, round_trips_through_reassembler) {
    std::mt19937 rng(7);
    for (size_t frag : {1u, 3u, 100u, 4096u}) {
        std::string payload(rng() % 20000, '\0');
        for (auto& c : payload) c = static_cast<char>(rng());
        auto framed = rpc::frame_record(rpc::test::chain_of(payload, {5, 77, 1000}), frag);
        rpc::record_reassembler ra;
        std::vector<std::string> got;
        for (const auto& s : framed)
            ASSERT_TRUE(ra.feed(s, [&](core::slice_chain&& r) { got.push_back(r.to_string()); }));
        ASSERT_EQ(got.size(), 1u);
        EXPECT_EQ(got[0], payload);
    }
}

}  // namespace
