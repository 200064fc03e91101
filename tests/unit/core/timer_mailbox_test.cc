#include <gtest/gtest.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/conn_id.h"
#include "core/mailbox.h"
#include "core/timer_wheel.h"

using namespace rpcgate::core;

namespace {

struct fire_log {
    std::vector<int> fired;
};

struct tagged_timer {
    timer t;
    int id;
    fire_log* log;
};

void on_fire(timer*, void* arg) {
    auto* tt = static_cast<tagged_timer*>(arg);
    tt->log->fired.push_back(tt->id);
}

TEST(timer_wheel, fires_in_deadline_order_and_not_early) {
    timer_wheel w(10, 16);  // 160 ms per turn: forces multi-round timers below
    uint64_t t0 = 1'000'000;
    w.set_now(t0);
    fire_log log;
    tagged_timer a{{}, 1, &log}, b{{}, 2, &log}, c{{}, 3, &log};
    for (auto* x : {&a, &b, &c}) x->t.set_callback(on_fire, x);
    w.arm(a.t, 500);  // three turns and a bit
    w.arm(b.t, 30);
    w.arm(c.t, 160);
    EXPECT_EQ(w.armed_count(), 3u);
    w.advance(t0 + 20);
    EXPECT_TRUE(log.fired.empty());
    w.advance(t0 + 30);
    EXPECT_EQ(log.fired, std::vector<int>({2}));
    w.advance(t0 + 159);
    EXPECT_EQ(log.fired.size(), 1u);
    w.advance(t0 + 160);
    EXPECT_EQ(log.fired, std::vector<int>({2, 3}));
    w.advance(t0 + 499);
    EXPECT_EQ(log.fired.size(), 2u);
    w.advance(t0 + 500);
    EXPECT_EQ(log.fired, std::vector<int>({2, 3, 1}));
    EXPECT_EQ(w.armed_count(), 0u);
}

TEST(timer_wheel, cancel_and_rearm) {
    timer_wheel w(10, 64);
    w.set_now(0);
    fire_log log;
    tagged_timer a{{}, 1, &log};
    a.t.set_callback(on_fire, &a);
    w.arm(a.t, 50);
    a.t.cancel();
    EXPECT_FALSE(a.t.armed());
    w.advance(100);
    EXPECT_TRUE(log.fired.empty());
    w.arm(a.t, 50);
    w.arm(a.t, 200);  // re-arm moves it
    w.advance(160);
    EXPECT_TRUE(log.fired.empty());
    w.advance(400);
    EXPECT_EQ(log.fired, std::vector<int>({1}));
}

// Two timers due in the same tick each cancel the other when they fire:
// whichever runs first, the other must not run.
TEST(timer_wheel, callback_may_cancel_a_peer_of_the_same_tick) {
    timer_wheel w(10, 64);
    w.set_now(0);
    struct mutual {
        timer t;
        mutual* other;
        int* fired;
    };
    int fired = 0;
    mutual a{{}, nullptr, &fired}, b{{}, &a, &fired};
    a.other = &b;
    auto cb = [](timer*, void* arg) {
        auto* m = static_cast<mutual*>(arg);
        ++*m->fired;
        m->other->t.cancel();
    };
    a.t.set_callback(cb, &a);
    b.t.set_callback(cb, &b);
    w.arm(a.t, 20);
    w.arm(b.t, 20);
    w.advance(100);
    EXPECT_EQ(fired, 1);
    EXPECT_EQ(w.armed_count(), 0u);
}

TEST(mailbox, a_refused_post_hands_the_payload_back) {
    int efd = ::eventfd(0, EFD_NONBLOCK);
    mailbox box(efd, 2);
    std::vector<std::string> got;
    auto deliver = [&got](std::string&& s) { got.push_back(std::move(s)); };
    EXPECT_EQ(box.post(std::make_unique<std::string>("a"), deliver), nullptr);
    EXPECT_EQ(box.post(std::make_unique<std::string>("b"), deliver), nullptr);
    std::unique_ptr<std::string> back = box.post(std::make_unique<std::string>("c"), deliver);
    ASSERT_NE(back, nullptr);  // full: "c" comes back, untouched
    EXPECT_EQ(*back, "c");
    EXPECT_EQ(box.drain(), 2u);
    EXPECT_EQ(got, std::vector<std::string>({"a", "b"}));
    ::close(efd);
}

TEST(mailbox, delivers_in_order_across_threads_and_refuses_when_full) {
    int efd = ::eventfd(0, EFD_NONBLOCK);
    mailbox box(efd, 8);
    std::vector<int> got;
    int accepted = 0;
    for (int i = 0; i < 20; ++i)
        if (box.try_post([&got, i] { got.push_back(i); })) ++accepted;
    EXPECT_EQ(accepted, 8);
    EXPECT_EQ(box.drain(), 8u);
    EXPECT_EQ(got, std::vector<int>({0, 1, 2, 3, 4, 5, 6, 7}));

    got.clear();
    constexpr int k_n = 100000;
    std::thread producer([&] {
        for (int i = 0; i < k_n; ++i)
            while (!box.try_post([&got, i] { got.push_back(i); })) std::this_thread::yield();
    });
    size_t n = 0;
    while (n < size_t(k_n)) n += box.drain();
    producer.join();
    ASSERT_EQ(got.size(), size_t(k_n));
    for (int i = 0; i < k_n; ++i) ASSERT_EQ(got[i], i);
    uint64_t v;
    EXPECT_EQ(::read(efd, &v, sizeof v), 8);  // producers woke the consumer
    ::close(efd);
}

TEST(conn_id, unique_nonzero_across_threads) {
    std::vector<std::vector<conn_id>> per(4);
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&, t] {
            for (int i = 0; i < 10000; ++i) per[t].push_back(next_conn_id());
        });
    for (auto& t : ts) t.join();
    std::set<uint64_t> seqs;
    for (auto& v : per)
        for (auto& id : v) {
            EXPECT_TRUE(id.valid());
            EXPECT_GT(id.sec, 0);
            seqs.insert(id.seq);
        }
    EXPECT_EQ(seqs.size(), 40000u);
    conn_id id{1764109395, 42, 7};
    EXPECT_EQ(id.str(), "1764109395.000042-7");
}

}  // namespace
