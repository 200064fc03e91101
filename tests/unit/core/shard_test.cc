// Engine tests over loopback: a shard echoes bytes, survives an exhausted
// buffer ring, pauses and resumes, connects out and hands a socket over.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "core/shard.h"
#include "tests/unit/core/running_shard.h"

using namespace rpcgate::core;
using rpcgate::core::test::loopback;
using rpcgate::core::test::running_shard;

namespace {

int connect_to(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = loopback(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    timeval tv{10, 0};  // a broken engine fails the test instead of hanging it
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

bool read_exact(int fd, std::string& out, size_t n) {
    out.resize(n);
    size_t got = 0;
    while (got < n) {
        ssize_t r = ::read(fd, out.data() + got, n - got);
        if (r <= 0) return false;
        got += size_t(r);
    }
    return true;
}

// Echo handler that can hold on to received slices (to starve the ring) and
// counts closes.
struct echo_server : listener_handler, stream_handler {
    bool hold = false;
    slice_chain held;
    stream* last = nullptr;
    std::atomic<int> closed{0};
    std::atomic<int> accepted{0};

    void on_accept(shard& s, int fd, const sockaddr_storage&) override {
        last = s.adopt(fd, this);
        ++accepted;
    }
    void on_data(stream& s, slice data) override {
        if (hold) {
            held.push_back(std::move(data));
            return;
        }
        s.send(std::move(data));
    }
    void on_closed(stream&, int) override { ++closed; }
};

template <typename P>
bool wait_for(P pred, int ms = 10000) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return pred();
}

TEST(shard, echoes_bytes_in_order) {
    echo_server srv;
    running_shard rs(shard_config{});
    ASSERT_EQ(rs.start(&srv), "");
    RecordProperty("features", rs.sh->features().describe());
    EXPECT_TRUE(rs.sh->features().buf_ring);
    int fd = connect_to(rs.sh->listen_port());
    ASSERT_GE(fd, 0);
    std::mt19937 rng(7);
    std::string payload(3 * 1024 * 1024 + 17, '\0');
    for (auto& c : payload) c = char(rng());
    std::thread writer([&] {
        size_t off = 0;
        while (off < payload.size()) {
            ssize_t w =
                ::write(fd, payload.data() + off, std::min<size_t>(payload.size() - off, 100000));
            if (w <= 0) return;
            off += size_t(w);
        }
    });
    std::string back;
    ASSERT_TRUE(read_exact(fd, back, payload.size()));
    writer.join();
    EXPECT_TRUE(back == payload);
    ::close(fd);
    EXPECT_TRUE(wait_for([&] { return srv.closed.load() == 1; }));
    EXPECT_EQ(rs.sh->stats().accepts.load(), 1u);
}

// With 4 receive buffers of 1 KiB held by the handler, the ring runs dry; once
// the handler lets go, receiving resumes and no byte is lost.
TEST(shard, buffer_ring_exhaustion_rearms_without_loss) {
    shard_config cfg;
    cfg.buffer_count = 4;
    cfg.buffer_size = 1024;
    cfg.pressure_copy_below = 0;  // let the ring run dry
    echo_server srv;
    srv.hold = true;
    running_shard rs(cfg);
    ASSERT_EQ(rs.start(&srv), "");
    int fd = connect_to(rs.sh->listen_port());
    ASSERT_GE(fd, 0);
    std::string payload(64 * 1024, '\0');
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = char('a' + i % 26);
    ASSERT_EQ(::write(fd, payload.data(), payload.size()), ssize_t(payload.size()));
    ASSERT_TRUE(wait_for([&] { return rs.sh->stats().enobufs.load() > 0; }));
    std::string collected;
    // Drain on the shard: copy out what is held, release it, repeat until done.
    ASSERT_TRUE(wait_for([&] {
        rs.run([&] {
            collected += srv.held.to_string();
            srv.held.clear();
        });
        return collected.size() >= payload.size();
    }));
    EXPECT_TRUE(collected == payload);
    ::close(fd);
}

// The handler never lets go of anything, yet every byte arrives: once the
// ring runs low, received bytes are copied out and the buffers go back.
TEST(shard, pressure_copies_keep_a_hoarding_handler_from_starving_the_ring) {
    shard_config cfg;
    cfg.buffer_count = 8;
    cfg.buffer_size = 1024;
    cfg.pressure_copy_below = 4;
    echo_server srv;
    srv.hold = true;
    running_shard rs(cfg);
    ASSERT_EQ(rs.start(&srv), "");
    int fd = connect_to(rs.sh->listen_port());
    ASSERT_GE(fd, 0);
    std::string payload(256 * 1024, '\0');
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = char(i * 7);
    std::thread writer([&] {
        size_t off = 0;
        while (off < payload.size()) {
            ssize_t w = ::write(fd, payload.data() + off, payload.size() - off);
            if (w <= 0) return;
            off += size_t(w);
        }
    });
    size_t have = 0;
    ASSERT_TRUE(wait_for([&] {
        rs.run([&] { have = srv.held.size(); });
        return have == payload.size();
    })) << "received "
        << have << " of " << payload.size();
    writer.join();
    std::string got;
    rs.run([&] {
        got = srv.held.to_string();
        srv.held.clear();
    });
    EXPECT_TRUE(got == payload);
    EXPECT_GT(rs.sh->stats().pressure_copies.load(), 0u);
    ::close(fd);
}

// A shard that sat with no timer armed (its wait had no timeout) must not arm
// the next timer against its stale clock: a 300 ms timer armed after 500 ms of
// idleness fired at once before the fix.
TEST(shard, timer_armed_after_an_idle_spell_waits_its_full_delay) {
    echo_server unused;
    running_shard rs(shard_config{});
    ASSERT_EQ(rs.start(&unused), "");
    rs.run([] {});
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the idle spell under test
    std::atomic<int64_t> fired_after{-1};
    timer t;
    auto armed_at = std::chrono::steady_clock::now();
    struct ctx_t {
        std::atomic<int64_t>* out;
        std::chrono::steady_clock::time_point at;
    } ctx{&fired_after, armed_at};
    t.set_callback(
        [](timer*, void* arg) {
            auto* c = static_cast<ctx_t*>(arg);
            c->out->store(std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::steady_clock::now() - c->at)
                              .count());
        },
        &ctx);
    rs.run([&] {
        ctx.at = std::chrono::steady_clock::now();
        rs.sh->timers().arm(t, 300);
    });
    ASSERT_TRUE(wait_for([&] { return fired_after.load() >= 0; }));
    EXPECT_GE(fired_after.load(), 290);
    rs.run([&] { t.cancel(); });
}

struct pausing_server : echo_server {
    void on_data(stream& s, slice data) override {
        held.push_back(std::move(data));
        s.pause_receive();
    }
};

TEST(shard, pause_holds_bytes_and_resume_delivers_them) {
    pausing_server srv;
    running_shard rs(shard_config{});
    ASSERT_EQ(rs.start(&srv), "");
    int fd = connect_to(rs.sh->listen_port());
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "first", 5), 5);
    ASSERT_TRUE(wait_for([&] {
        size_t n = 0;
        rs.run([&] { n = srv.held.size(); });
        return n == 5;
    }));
    ASSERT_EQ(::write(fd, "second", 6), 6);
    // Paused: the second write must not be delivered.
    size_t seen = 0;
    for (int i = 0; i < 20; ++i) rs.run([&] { seen = srv.held.size(); });
    EXPECT_EQ(seen, 5u);
    std::string all;
    ASSERT_TRUE(wait_for([&] {
        rs.run([&] {
            if (srv.last) srv.last->resume_receive();
            all = srv.held.to_string();
        });
        return all.size() == 11;
    }));
    EXPECT_EQ(all, "firstsecond");
    rs.run([&] { srv.held.clear(); });  // ring slices must die before their shard
    ::close(fd);
}

// Connect out to a plain listening socket, send, and detach the fd with the
// bytes received but not delivered.
struct client_side : stream_handler {
    std::atomic<int> connected{1};
    std::atomic<int> closed{0};
    void on_connected(stream& s, int err) override { connected = err; }
    void on_data(stream& s, slice data) override {}
    void on_closed(stream&, int) override { ++closed; }
};

TEST(shard, connect_send_and_detach) {
    int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(lfd, 8), 0);
    socklen_t al = sizeof a;
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &al);

    echo_server unused;
    running_shard rs(shard_config{});
    ASSERT_EQ(rs.start(&unused), "");
    client_side cs;
    stream* st = nullptr;
    rs.run([&] {
        int err = 0;
        st = rs.sh->connect(reinterpret_cast<sockaddr*>(&a), sizeof a, &cs, {}, &err);
        ASSERT_NE(st, nullptr);
        st->send(slice::copy_of("hello"));  // queued until connected
    });
    int peer = ::accept(lfd, nullptr, nullptr);
    ASSERT_GE(peer, 0);
    std::string got;
    ASSERT_TRUE(read_exact(peer, got, 5));
    EXPECT_EQ(got, "hello");
    EXPECT_TRUE(wait_for([&] { return cs.connected.load() == 0; }));

    std::atomic<int> handed_fd{-1};
    rs.run([&] {
        st->send(slice::copy_of("bye"));
        st->detach([&](int fd, slice_chain&&) { handed_fd = fd; });
    });
    ASSERT_TRUE(read_exact(peer, got, 3));  // the queued reply left before the hand-off
    EXPECT_EQ(got, "bye");
    ASSERT_TRUE(wait_for([&] { return handed_fd.load() >= 0 && cs.closed.load() == 1; }));
    // The fd is ours now and still connected.
    ASSERT_EQ(::write(handed_fd, "raw", 3), 3);
    ASSERT_TRUE(read_exact(peer, got, 3));
    EXPECT_EQ(got, "raw");
    ::close(handed_fd);
    ::close(peer);
    ::close(lfd);
}

TEST(shard, connect_refused_reports_error_and_closes) {
    int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t al = sizeof a;
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &al);
    ::close(lfd);  // nothing listens there now

    echo_server unused;
    running_shard rs(shard_config{});
    ASSERT_EQ(rs.start(&unused), "");
    client_side cs;
    rs.run([&] {
        int err = 0;
        ASSERT_NE(rs.sh->connect(reinterpret_cast<sockaddr*>(&a), sizeof a, &cs, {}, &err),
                  nullptr);
    });
    EXPECT_TRUE(wait_for([&] { return cs.closed.load() == 1; }));
    EXPECT_EQ(cs.connected.load(), -ECONNREFUSED);
}

TEST(shard, stop_closes_listeners_and_exits_when_streams_end) {
    echo_server srv;
    auto sh = std::make_unique<shard>(shard_config{});
    ASSERT_EQ(sh->start([&] {
        sockaddr_in a = loopback(0);
        ASSERT_GT(sh->listen(reinterpret_cast<sockaddr*>(&a), sizeof a, &srv), 0);
    }),
              "");
    int fd = connect_to(sh->listen_port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(wait_for([&] { return srv.accepted.load() == 1; }));
    sh->set_on_stop([] {});
    sh->request_stop();
    // The loop waits for the open stream; closing the client ends it.
    ::close(fd);
    sh->join();
    EXPECT_EQ(srv.closed.load(), 1);
}

// An upgrade's hand-over of a listening socket (gateway/upgrade.h): the old
// shard's accept was armed first, so the kernel wakes it, not the new one,
// for each connection (io_uring waits as an exclusive waiter). Connections
// that arrive while the old shard is busy, and that it then stops accepting
// on, must still be accepted: by the old shard once its accept is cancelled
// (release_listeners sweeps the queue), since nothing wakes the new one.
TEST(shard, released_listener_leaves_no_connection_in_its_accept_queue) {
    echo_server old_srv, new_srv;
    running_shard old_rs(shard_config{});
    ASSERT_EQ(old_rs.start(&old_srv), "");
    int shared = -1;
    old_rs.run([&] { shared = ::dup(old_rs.sh->listener_fds().at(0)); });
    ASSERT_GE(shared, 0);
    running_shard new_rs(shard_config{});
    ASSERT_EQ(new_rs.sh->start([&] { EXPECT_GT(new_rs.sh->listen_fd(shared, &new_srv), 0); }), "");
    uint16_t port = old_rs.sh->listen_port();
    // The old shard is busy (not waiting on its ring) while clients
    // connect, then stops accepting.
    std::atomic<bool> busy{false};
    ASSERT_TRUE(old_rs.box->try_post([&] {
        busy = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        old_rs.sh->release_listeners();
    }));
    ASSERT_TRUE(wait_for([&] { return busy.load(); }));
    constexpr int n = 4;
    int fds[n];
    for (int& fd : fds) {
        fd = connect_to(port);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::write(fd, "x", 1), 1);
    }
    EXPECT_TRUE(
        wait_for([&] { return old_srv.accepted.load() + new_srv.accepted.load() == n; }, 5000))
        << "accepted by the old shard " << old_srv.accepted.load() << ", by the new one "
        << new_srv.accepted.load() << ", of " << n;
    for (int fd : fds) {
        std::string back;
        EXPECT_TRUE(read_exact(fd, back, 1) && back == "x");
        ::close(fd);
    }
    // And the socket is the new shard's alone from now on.
    int fd = connect_to(port);
    ASSERT_GE(fd, 0);
    EXPECT_TRUE(wait_for([&] { return new_srv.accepted.load() >= 1; }));
    ::close(fd);
    RecordProperty("accepted_by_old", old_srv.accepted.load());
}

}  // namespace
