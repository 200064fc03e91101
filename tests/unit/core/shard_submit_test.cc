// Sends against a kernel that leaves SQEs in the SQ ring.
//
// io_uring_enter(2) may refuse a submission (-EBUSY, -EAGAIN) or take only
// some of the SQEs; the rest stay in the SQ ring and go with the next enter.
// The msghdr and iovecs of a sendmsg left there must stay as they were until
// then: a shard that recycled its send descriptors after every enter let the
// next pass write another stream's iovecs over them, and the kernel sent that
// stream's bytes on the first one's socket.
//
// A kernel with IORING_FEAT_NODROP queues a CQ overflow instead of refusing
// (on 6.18 a CQ of 2 entries flooded with NOPs gets no -EBUSY), and a test
// cannot make it run out of memory for requests, so shard_config::refuse_submit
// answers in the kernel's place. Every wait is bounded by a deadline.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/shard.h"
#include "tests/unit/core/running_shard.h"

using namespace rpcgate::core;
using rpcgate::core::test::running_shard;

namespace {

using steady = std::chrono::steady_clock;

// What "the kernel" answers to each submission. Plan fields: shard thread only.
struct kernel_stand_in {
    int refuse_next = 0;               // refuse this many submissions, then take them
    std::function<void()> on_refusal;  // runs once, at the next refusal
    unsigned period = 0;               // or: refuse two of every `period` submissions
    uint64_t budget = 0;               // while this many refusals are left
    uint64_t calls = 0;
    // Read by the test thread.
    std::atomic<uint64_t> busy{0};
    std::atomic<uint64_t> again{0};

    int answer() {
        uint64_t call = calls++;
        bool refuse = false;
        if (refuse_next > 0) {
            --refuse_next;
            refuse = true;
        } else if (period > 0 && budget > 0 && call % period < 2) {
            --budget;
            refuse = true;
        }
        if (!refuse) return 0;
        if (on_refusal) {
            std::function<void()> f = std::move(on_refusal);
            on_refusal = nullptr;
            f();
        }
        // Both answers leave every SQE in the ring; alternate them.
        if ((busy.load() + again.load()) % 2 == 0) {
            busy.fetch_add(1);
            return -EBUSY;
        }
        again.fetch_add(1);
        return -EAGAIN;
    }
    uint64_t refused() const { return busy.load() + again.load(); }
};

// Shard side of the socket pairs: nothing comes back from the peers.
struct sink : stream_handler {
    std::atomic<int> closed{0};
    void on_data(stream&, slice) override {}
    void on_closed(stream&, int) override { ++closed; }
};

// A connected AF_UNIX stream pair: `ours` goes to the shard, `peer` is read here.
struct socket_pair {
    int ours = -1;
    int peer = -1;
    socket_pair() {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
            ours = sv[0];
            peer = sv[1];
        }
    }
    ~socket_pair() {
        if (peer >= 0) ::close(peer);  // `ours` belongs to the shard once adopted
    }
};

std::string pattern(unsigned seed, size_t n) {
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = char(rng());
    return s;
}

// Reads exactly n bytes from fd, or fails at the deadline.
bool read_exact_by(int fd, std::string& out, size_t n, steady::time_point deadline) {
    out.resize(n);
    size_t got = 0;
    while (got < n) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
        if (left.count() <= 0) break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, int(left.count())) <= 0) continue;
        ssize_t r = ::read(fd, out.data() + got, n - got);
        if (r <= 0) break;
        got += size_t(r);
    }
    out.resize(got);
    return got == n;
}

// "" if got == want, else where they part and whose bytes are there instead.
std::string difference(const std::string& got, const std::string& want,
                       const std::vector<const std::string*>& others = {}) {
    if (got == want) return {};
    size_t at = 0;
    while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
    std::string out = "first wrong byte at offset " + std::to_string(at) + " of " +
                      std::to_string(want.size()) + " (got " + std::to_string(got.size()) +
                      " bytes)";
    std::string probe = got.substr(at, 32);
    for (size_t i = 0; i < others.size() && probe.size() == 32; ++i) {
        size_t pos = others[i]->find(probe);
        if (pos != std::string::npos)
            out += "; the bytes there are stream " + std::to_string(i) + "'s, from its offset " +
                   std::to_string(pos);
    }
    return out;
}

}  // namespace

// The one-pass story, made deterministic: A's sendmsg is prepared and its
// submission refused; B is given bytes during the refusal, so B's sendmsg is
// prepared in the next pass while A's SQE still waits in the SQ ring.
TEST(shard_submit, refused_submission_keeps_a_prepared_send_intact) {
    kernel_stand_in kernel;
    sink h;
    shard_config cfg;
    cfg.refuse_submit = [&kernel] { return kernel.answer(); };
    running_shard rs(cfg);
    ASSERT_EQ(rs.start(), "");
    socket_pair pa, pb;
    ASSERT_GE(pa.ours, 0);
    ASSERT_GE(pb.ours, 0);
    stream* a = nullptr;
    stream* b = nullptr;
    rs.run([&] {
        a = rs.sh->adopt(pa.ours, &h);
        b = rs.sh->adopt(pb.ours, &h);
    });
    ASSERT_TRUE(a && b);
    // A's bytes outnumber B's, so that on a reused descriptor A's completion
    // stays within A's queue and the damage shows as wrong bytes, not a crash.
    const std::string to_a = pattern(1, 8192);
    const std::string to_b = pattern(2, 4096);
    rs.run([&] {
        a->send(slice::copy_of(to_a));
        kernel.refuse_next = 1;
        kernel.on_refusal = [&] { b->send(slice::copy_of(to_b)); };
    });
    auto deadline = steady::now() + std::chrono::seconds(10);
    std::string got_a, got_b;
    EXPECT_TRUE(read_exact_by(pa.peer, got_a, to_a.size(), deadline));
    EXPECT_TRUE(read_exact_by(pb.peer, got_b, to_b.size(), deadline));
    EXPECT_EQ(kernel.refused(), 1u);
    EXPECT_GE(rs.sh->stats().submits_incomplete.load(), 1u);
    EXPECT_EQ(difference(got_a, to_a, {&to_a, &to_b}), "") << "stream A (0)";
    EXPECT_EQ(difference(got_b, to_b, {&to_a, &to_b}), "") << "stream B (1)";
}

// Volume: eight streams sending a few KiB per sendmsg, a tiny SQ (so passes
// also submit from get_sqe when it fills), and two of every three submissions
// refused for a while. Every peer gets its own bytes, all of them, in order.
TEST(shard_submit, streams_keep_their_bytes_through_refused_submissions) {
    constexpr unsigned k_streams = 8;
    constexpr size_t k_bytes = 96 * 1024;  // per stream
    constexpr unsigned k_rounds = 128;     // tasks that each give every stream a chunk
    kernel_stand_in kernel;
    sink h;
    shard_config cfg;
    cfg.sq_entries = 8;
    cfg.refuse_submit = [&kernel] { return kernel.answer(); };
    running_shard rs(cfg);
    ASSERT_EQ(rs.start(), "");
    std::vector<socket_pair> pairs(k_streams);
    std::vector<stream*> streams(k_streams, nullptr);
    std::vector<std::string> want(k_streams);
    std::vector<const std::string*> all;
    for (unsigned i = 0; i < k_streams; ++i) {
        ASSERT_GE(pairs[i].ours, 0);
        // A small socket buffer: sendmsgs go out a few KiB at a time, so each
        // stream needs a dozen or more of them, spread over many passes.
        int sndbuf = 4096;
        ::setsockopt(pairs[i].ours, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        want[i] = pattern(100 + i, k_bytes);
        all.push_back(&want[i]);
    }
    rs.run([&] {
        kernel.period = 3;
        kernel.budget = 5000;
        for (unsigned i = 0; i < k_streams; ++i) streams[i] = rs.sh->adopt(pairs[i].ours, &h);
    });
    // Rounds of chunks of uneven sizes, posted without waiting: each lands in
    // whichever pass drains the mailbox, between sends that are in flight.
    auto deadline = steady::now() + std::chrono::seconds(30);
    std::vector<size_t> cut(k_streams, 0);
    std::mt19937 rng(5);
    for (unsigned r = 0; r < k_rounds; ++r) {
        std::vector<std::pair<size_t, size_t>> chunk(k_streams);
        for (unsigned i = 0; i < k_streams; ++i) {
            size_t left = k_bytes - cut[i];
            size_t n = r + 1 == k_rounds ? left : std::min(left, size_t(64 + rng() % 1400));
            chunk[i] = {cut[i], n};
            cut[i] += n;
        }
        task t = [&, chunk] {
            for (unsigned i = 0; i < k_streams; ++i)
                if (chunk[i].second)
                    streams[i]->send(
                        slice::copy_of(want[i].data() + chunk[i].first, chunk[i].second));
        };
        while (!rs.box->try_post(std::move(t))) {
            ASSERT_LT(steady::now(), deadline) << "the shard stopped taking tasks";
            std::this_thread::yield();
        }
    }
    // Read all peers as bytes arrive; stop at the first wrong byte.
    std::vector<std::string> got(k_streams);
    std::vector<pollfd> fds(k_streams);
    for (unsigned i = 0; i < k_streams; ++i) fds[i] = {pairs[i].peer, POLLIN, 0};
    size_t total = 0;
    bool wrong = false;
    std::vector<char> buf(64 * 1024);
    while (total < k_streams * k_bytes && !wrong && steady::now() < deadline) {
        if (::poll(fds.data(), fds.size(), 100) <= 0) continue;
        for (unsigned i = 0; i < k_streams; ++i) {
            if (!(fds[i].revents & POLLIN)) continue;
            ssize_t n = ::read(fds[i].fd, buf.data(), buf.size());
            if (n <= 0) continue;
            got[i].append(buf.data(), size_t(n));
            total += size_t(n);
            if (got[i].size() > k_bytes || want[i].compare(0, got[i].size(), got[i]) != 0)
                wrong = true;
        }
    }
    for (unsigned i = 0; i < k_streams; ++i) {
        bool short_prefix = got[i].size() < k_bytes && want[i].starts_with(got[i]);
        if (got[i] == want[i] || (wrong && short_prefix)) continue;  // stopped by another
        ADD_FAILURE() << "stream " << i << ": " << difference(got[i], want[i], all);
    }
    if (wrong || total < k_streams * k_bytes) return;
    // How many submissions there were depends on how the threads were
    // scheduled; that both answers were given and left SQEs behind does not.
    EXPECT_GT(kernel.busy.load(), 0u);
    EXPECT_GT(kernel.again.load(), 0u);
    EXPECT_GT(rs.sh->stats().submits_incomplete.load(), 0u);
    RecordProperty("refused", int(kernel.refused()));
    RecordProperty("send_calls", int(rs.sh->stats().send_calls.load()));
}
