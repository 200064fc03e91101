// Per-call accounting (gateway/call_stats.h): the in-flight table, the
// latency buckets, and the Prometheus families made from them.
#include "gateway/call_stats.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "rpc/message.h"

namespace rpcgate::gw {
namespace {

core::slice_chain reply_record(rpc::accept_stat st) {
    core::slice framed = rpc::build_reply(rpc::reply_header::accepted(7, st));
    core::slice_chain c(std::move(framed));
    c.trim_front(4);  // the record mark
    return c;
}

TEST(call_stats, latency_buckets_are_powers_of_two_of_16_us) {
    EXPECT_EQ(latency_histogram::bucket_of(0), 0u);
    EXPECT_EQ(latency_histogram::bucket_of(15'999), 0u);
    EXPECT_EQ(latency_histogram::bucket_of(16'000), 1u);
    EXPECT_EQ(latency_histogram::bucket_of(31'999), 1u);
    EXPECT_EQ(latency_histogram::bucket_of(32'000), 2u);
    EXPECT_EQ(latency_histogram::bucket_of(1'000'000), 6u);  // 1 ms < 1.024 ms
    EXPECT_EQ(latency_histogram::bucket_of(8'000'000'000), 19u);
    EXPECT_EQ(latency_histogram::bucket_of(9'000'000'000), k_latency_buckets);
    EXPECT_EQ(latency_histogram::bucket_of(~uint64_t(0)), k_latency_buckets);
    // Every value is at most its bucket's bound.
    for (uint64_t ns : {1ull, 15'999ull, 16'000ull, 100'000ull, 5'000'000'000ull}) {
        size_t b = latency_histogram::bucket_of(ns);
        EXPECT_LE(double(ns) * 1e-9, latency_histogram::bound_seconds(b)) << ns;
        if (b > 0) {
            EXPECT_GT(double(ns) * 1e-9, latency_histogram::bound_seconds(b - 1) - 1e-6);
        }
    }
}

TEST(call_stats, in_flight_table_matches_replies_to_calls) {
    calls_in_flight f;
    std::mt19937 rng(5);
    std::map<uint32_t, int> model;  // xid -> how many in flight
    for (int round = 0; round < 20000; ++round) {
        uint32_t xid = rng() % 3000;  // collisions and retransmits on purpose
        if (rng() % 2) {
            ASSERT_TRUE(f.add(xid, rpc::call_kind(xid % 7), xid * 10ull));
            ++model[xid];
        } else {
            rpc::call_kind k = 0;
            uint64_t t = 0;
            bool there = model[xid] > 0;
            ASSERT_EQ(f.take(xid, &k, &t), there) << xid;
            if (there) {
                EXPECT_EQ(k, xid % 7);
                EXPECT_EQ(t, xid * 10ull);
                --model[xid];
            }
        }
        size_t n = 0;
        if (round % 1000 == 0) {
            for (auto& [x, c] : model) n += size_t(c);
            ASSERT_EQ(f.size(), n);
        }
    }
}

TEST(call_stats, sequential_xids_sit_in_their_direct_slots) {
    // A client's window of sequential xids, replies in and out of order:
    // nothing spills, so a reply finds its call in one slot.
    calls_in_flight f;
    uint32_t next = 0xfffffff0u;  // wraps past 2^32 on the way
    std::vector<uint32_t> open;
    std::mt19937 rng(9);
    for (int i = 0; i < 100000; ++i) {
        while (open.size() < 16) {
            ASSERT_TRUE(f.add(next, 3, next));
            open.push_back(next++);
        }
        size_t pick = rng() % 4 == 0 ? rng() % open.size() : 0;  // mostly in order
        rpc::call_kind k = 0;
        uint64_t t = 0;
        ASSERT_TRUE(f.take(open[pick], &k, &t));
        EXPECT_EQ(t, open[pick]);
        open.erase(open.begin() + long(pick));
    }
    EXPECT_EQ(f.spilled(), 0u);
    EXPECT_EQ(f.size(), open.size());
    // A retransmission is one more entry: it spills, and each reply takes one.
    ASSERT_TRUE(f.add(open[0], 5, 1));
    EXPECT_EQ(f.spilled(), 1u);
    size_t seen = 0;
    f.for_each([&](uint32_t xid, rpc::call_kind, uint64_t) { seen += xid == open[0]; });
    EXPECT_EQ(seen, 2u);
    rpc::call_kind k = 0;
    uint64_t t = 0;
    EXPECT_TRUE(f.take(open[0], &k, &t));
    EXPECT_TRUE(f.take(open[0], &k, &t));
    EXPECT_FALSE(f.take(open[0], &k, &t));
    EXPECT_EQ(f.spilled(), 0u);
}

TEST(call_stats, random_xids_are_matched_through_the_spill_table) {
    calls_in_flight f;
    std::mt19937 rng(11);
    std::map<uint32_t, uint64_t> model;
    for (int i = 0; i < 6000; ++i) {
        uint32_t xid = uint32_t(rng());
        if (model.count(xid)) continue;
        ASSERT_TRUE(f.add(xid, 2, i));
        model[xid] = uint64_t(i);
    }
    EXPECT_GT(f.spilled(), 0u);  // 6000 random xids collide in 4096 direct slots
    for (auto& [xid, t0] : model) {
        rpc::call_kind k = 0;
        uint64_t t = 0;
        ASSERT_TRUE(f.take(xid, &k, &t)) << xid;
        EXPECT_EQ(t, t0);
    }
    EXPECT_EQ(f.size(), 0u);
    EXPECT_EQ(f.spilled(), 0u);
}

TEST(call_stats, in_flight_table_is_bounded) {
    calls_in_flight f;
    for (uint32_t x = 0; x < calls_in_flight::k_max_entries; ++x) ASSERT_TRUE(f.add(x, 1, 0));
    EXPECT_FALSE(f.add(1u << 30, 1, 0));
    rpc::call_kind k;
    uint64_t t;
    EXPECT_TRUE(f.take(12345, &k, &t));
    EXPECT_TRUE(f.add(1u << 30, 1, 0));
}

TEST(call_stats, a_call_and_its_reply_are_counted_and_timed) {
    call_stats cs;
    calls_in_flight f;
    gateway_counters c;
    rpc::call_kind read = rpc::find_call_kind("nfs", "3", "read");
    note_call(cs, f, c, 1, read, 120, 1'000'000);
    note_call(cs, f, c, 2, read, 120, 1'000'000);
    // The link became ready 40 µs after the call arrived: the backend time
    // starts there; the gateway time at the call.
    note_reply(cs, f, reply_record(rpc::accept_stat::success), 1, 1'040'000, 1'100'000);
    note_reply(cs, f, reply_record(rpc::accept_stat::system_err), 2, 0, 1'020'000);
    note_reply(cs, f, reply_record(rpc::accept_stat::success), 3, 0, 1'020'000);  // unknown xid
    const call_kind_stats& s = cs.at(read);
    EXPECT_EQ(s.calls.load(), 2u);
    EXPECT_EQ(s.replies.load(), 2u);
    EXPECT_EQ(s.errors.load(), 1u);
    EXPECT_EQ(s.call_bytes.load(), 240u);
    EXPECT_EQ(s.sum_ns[gateway_latency].load(), 100'000u + 20'000u);
    EXPECT_EQ(s.sum_ns[backend_latency].load(), 60'000u + 20'000u);
    EXPECT_EQ(s.buckets[latency_histogram::bucket_of(100'000)][gateway_latency].load(), 1u);
    EXPECT_EQ(c.calls_untimed.load(), 0u);
    EXPECT_EQ(f.size(), 0u);
}

TEST(call_stats, families_are_summed_over_shards_with_bounded_labels) {
    call_stats a, b;
    calls_in_flight f;
    gateway_counters c;
    rpc::call_kind write = rpc::find_call_kind("nfs", "3", "write");
    rpc::call_kind v4read = rpc::find_call_kind("nfs", "4", "read");
    note_call(a, f, c, 1, write, 10, 0);
    note_call(b, f, c, 2, write, 10, 0);
    note_call(b, f, c, 3, v4read, 10, 0);
    note_reply(a, f, reply_record(rpc::accept_stat::success), 1, 0, 20'000);  // 20 µs
    note_reply(b, f, reply_record(rpc::accept_stat::success), 2, 0, 5'000);   // 5 µs
    std::string out;
    render_call_stats(out, {&a, &b});
    auto has = [&](const std::string& s) { return out.find(s) != std::string::npos; };
    const std::string w = R"(program="nfs",version="3",procedure="write")";
    EXPECT_TRUE(has("# TYPE rpcgate_rpc_calls_total counter\n")) << out;
    EXPECT_TRUE(has("rpcgate_rpc_calls_total{" + w + "} 2\n")) << out;
    EXPECT_TRUE(has(R"(rpcgate_rpc_calls_total{program="nfs",version="4",procedure="read"} 1)"));
    EXPECT_TRUE(has("# TYPE rpcgate_rpc_duration_seconds histogram\n"));
    EXPECT_TRUE(has("rpcgate_rpc_duration_seconds_bucket{" + w + ",le=\"1.6e-05\"} 1\n")) << out;
    EXPECT_TRUE(has("rpcgate_rpc_duration_seconds_bucket{" + w + ",le=\"3.2e-05\"} 2\n")) << out;
    EXPECT_TRUE(has("rpcgate_rpc_duration_seconds_bucket{" + w + ",le=\"+Inf\"} 2\n"));
    EXPECT_TRUE(has("rpcgate_rpc_duration_seconds_count{" + w + "} 2\n"));
    EXPECT_TRUE(has("rpcgate_rpc_backend_duration_seconds_count{" + w + "} 2\n"));
    // Kinds never called have no series.
    EXPECT_FALSE(has("procedure=\"getattr\"")) << out;
}

}  // namespace
}  // namespace rpcgate::gw
