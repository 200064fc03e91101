// The io_backend seam of core::shard with a fake backend: virtual streams
// behave like kernel streams towards their handlers (delivery in order, send
// queue and back-pressure, pause/resume, FIN and reset, close, detach), and
// the shard loop runs the backend's hooks without blocking. Needs no DPDK.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "core/shard.h"

using namespace rpcgate::core;

namespace {

struct fake_transport : stream_transport {
    std::string sent;
    size_t room = SIZE_MAX;
    size_t consumed_bytes = 0;
    int closed_with = INT_MIN;
    bool was_detached = false;
    size_t transmit(const slice* parts, size_t n) override {
        size_t took = 0;
        for (size_t i = 0; i < n; ++i) {
            size_t k = std::min(room, parts[i].size());
            sent.append(reinterpret_cast<const char*>(parts[i].data()), k);
            room -= k;
            took += k;
            if (k < parts[i].size()) break;
        }
        return took;
    }
    void consumed(size_t n) override { consumed_bytes += n; }
    void close(int err) override { closed_with = err; }
    void detached() override { was_detached = true; }
};

struct fake_backend : io_backend {
    std::atomic<int> polls{0}, flushes{0};
    bool attached = false, detached = false;
    listener_handler* lh = nullptr;
    std::map<int, fake_transport*> by_fd;
    const char* name() const noexcept override { return "fake"; }
    std::string attach(shard&) override {
        attached = true;
        return {};
    }
    void detach(shard&) override { detached = true; }
    bool poll(shard&) override {
        ++polls;
        return false;
    }
    void flush(shard&) override { ++flushes; }
    int listen(shard&, const sockaddr*, socklen_t, listener_handler* h) override {
        lh = h;
        return 4242;
    }
    void close_listeners(shard&) override {}
    stream* adopt(shard& s, int fd, stream_handler* h) override {
        auto it = by_fd.find(fd);
        return it == by_fd.end() ? nullptr : s.adopt_virtual(fd, it->second, h);
    }
    // A new connection: the handler is given the placeholder. Returns our end.
    int connect(shard& s, fake_transport* t) {
        int sv[2];
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        by_fd[sv[1]] = t;
        lh->on_accept(s, sv[1], sockaddr_storage{});
        return sv[0];
    }
};

struct recorder : listener_handler, stream_handler {
    stream* st = nullptr;
    std::string got;
    int eofs = 0, eof_err = 1, writables = 0, closes = 0, close_err = 1;
    bool close_on_eof = false;
    void on_accept(shard& s, int fd, const sockaddr_storage&) override { st = s.adopt(fd, this); }
    void on_data(stream&, slice d) override {
        got.append(reinterpret_cast<const char*>(d.data()), d.size());
    }
    void on_eof(stream& s, int err) override {
        ++eofs;
        eof_err = err;
        if (close_on_eof) s.close(err);
    }
    void on_writable(stream&) override { ++writables; }
    void on_closed(stream&, int err) override {
        ++closes;
        close_err = err;
        st = nullptr;
    }
};

struct rig {
    fake_backend be;
    recorder rec;
    fake_transport tr;
    std::unique_ptr<shard> sh;
    mailbox* box = nullptr;
    int ours = -1;

    explicit rig(shard_config cfg = {}) {
        cfg.buffer_count = 64;
        sh = std::make_unique<shard>(cfg);
        box = &sh->make_inbox();
        sh->set_io_backend(&be);
        std::string err = sh->start([this] {
            sockaddr_in a{};
            a.sin_family = AF_INET;
            EXPECT_EQ(sh->listen(reinterpret_cast<sockaddr*>(&a), sizeof a, &rec), 4242);
        });
        EXPECT_EQ(err, "");
        run([this] { ours = be.connect(*sh, &tr); });
    }
    ~rig() {
        sh->request_stop();
        sh->force_exit();
        sh->join();
        if (ours >= 0) ::close(ours);
    }
    // Runs f on the shard thread and waits for it (and for one more loop pass).
    template <typename F>
    void run(F f) {
        std::mutex m;
        std::condition_variable cv;
        int done = 0;
        auto post = [&](task t) { ASSERT_TRUE(box->try_post(std::move(t))); };
        post([&, f] {
            f();
            std::lock_guard g(m);
            ++done;
        });
        post([&] {  // the next task runs after the sends of the first were flushed
            std::lock_guard g(m);
            ++done;
            cv.notify_one();
        });
        std::unique_lock g(m);
        ASSERT_TRUE(cv.wait_for(g, std::chrono::seconds(10), [&] { return done == 2; }));
    }
    // Waits until pred() (read on the shard thread) holds, at most 5 s.
    template <typename P>
    bool eventually(P pred) {
        for (int i = 0; i < 500; ++i) {
            bool ok = false;
            run([&] { ok = pred(); });
            if (ok) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return false;
    }
};

TEST(virtual_stream, accept_adopts_the_placeholder_and_delivers_in_order) {
    rig r;
    ASSERT_TRUE(r.be.attached);
    bool is_virtual = false;
    r.run([&] {
        ASSERT_NE(r.rec.st, nullptr);
        is_virtual = r.rec.st->is_virtual();
        r.rec.st->transport_received(slice::copy_of("hello, "));
        r.rec.st->transport_received(slice::copy_of("world"));
        r.rec.st->send(slice::copy_of("reply-1 "));
        r.rec.st->send(slice::copy_of("reply-2"));
    });
    EXPECT_TRUE(is_virtual);
    EXPECT_TRUE(r.eventually([&] { return r.tr.sent == "reply-1 reply-2"; })) << r.tr.sent;
    r.run([&] {
        EXPECT_EQ(r.rec.got, "hello, world");
        EXPECT_EQ(r.tr.consumed_bytes, 12u);
        EXPECT_EQ(r.rec.st->bytes_in(), 12u);
        EXPECT_EQ(r.rec.st->bytes_out(), 15u);
    });
    EXPECT_GT(r.be.polls.load(), 0);
    EXPECT_GT(r.be.flushes.load(), 0);
}

TEST(virtual_stream, a_full_transport_maps_to_full_and_on_writable) {
    shard_config cfg;
    cfg.send_high_water = 64;
    cfg.send_low_water = 16;
    rig r(cfg);
    r.run([&] {
        r.tr.room = 10;
        r.rec.st->send(slice::copy_of(std::string(100, 'x')));
        EXPECT_TRUE(r.rec.st->full());
    });
    EXPECT_TRUE(r.eventually([&] { return r.tr.sent.size() == 10; }));
    r.run([&] {
        EXPECT_EQ(r.rec.st->queued_bytes(), 90u);
        EXPECT_TRUE(r.rec.st->full());
        EXPECT_EQ(r.rec.writables, 0);
        r.tr.room = SIZE_MAX;
        r.rec.st->transport_writable();
    });
    EXPECT_TRUE(r.eventually([&] { return r.tr.sent.size() == 100 && r.rec.writables == 1; }));
    r.run([&] { EXPECT_FALSE(r.rec.st->full()); });
}

TEST(virtual_stream, pause_holds_bytes_unconsumed_and_a_fin_waits_behind_them) {
    rig r;
    r.run([&] {
        r.rec.st->pause_receive();
        r.rec.st->transport_received(slice::copy_of("held"));
        r.rec.st->transport_eof(0);
        EXPECT_EQ(r.rec.got, "");
        EXPECT_EQ(r.rec.eofs, 0);
        EXPECT_EQ(r.tr.consumed_bytes, 0u);  // the peer's window stays closed
        r.rec.st->resume_receive();
        EXPECT_EQ(r.rec.got, "held");
        EXPECT_EQ(r.tr.consumed_bytes, 4u);
        EXPECT_EQ(r.rec.eofs, 1);
        EXPECT_EQ(r.rec.eof_err, 0);
    });
}

TEST(virtual_stream, a_reset_is_reported_at_once_even_while_paused) {
    rig r;
    r.rec.close_on_eof = true;
    r.run([&] {
        r.rec.st->pause_receive();
        r.rec.st->transport_eof(-ECONNRESET);
        EXPECT_EQ(r.rec.eofs, 1);
        EXPECT_EQ(r.rec.eof_err, -ECONNRESET);
        EXPECT_EQ(r.tr.closed_with, -ECONNRESET);
    });
    EXPECT_TRUE(r.eventually([&] { return r.rec.closes == 1; }));
}

TEST(virtual_stream, close_after_send_drains_then_closes_transport_and_placeholder) {
    rig r;
    r.run([&] {
        r.tr.room = 3;
        r.rec.st->send(slice::copy_of("goodbye"));
        r.rec.st->close_after_send();
    });
    EXPECT_TRUE(r.eventually([&] { return r.tr.sent == "goo"; }));
    r.run([&] {
        EXPECT_EQ(r.tr.closed_with, INT_MIN);  // not before the queue drained
        r.tr.room = SIZE_MAX;
        r.rec.st->transport_writable();
    });
    EXPECT_TRUE(r.eventually([&] { return r.rec.closes == 1; }));
    r.run([&] {
        EXPECT_EQ(r.tr.sent, "goodbye");
        EXPECT_EQ(r.tr.closed_with, 0);
    });
    // The shard closed the placeholder: our end of the pair reads EOF.
    char c;
    EXPECT_EQ(::recv(r.ours, &c, 1, MSG_DONTWAIT), 0);
}

TEST(virtual_stream, detach_hands_the_placeholder_and_unread_bytes_over) {
    rig r;
    int handed = -1;
    std::string unread;
    r.run([&] {
        r.rec.st->send(slice::copy_of("STARTTLS"));
        r.rec.st->detach([&](int fd, slice_chain&& rest) {
            handed = fd;
            unread = rest.to_string();
        });
        // Bytes that arrive during the hand-off go along with it.
        r.rec.st->transport_received(slice::copy_of("client-hello"));
    });
    EXPECT_TRUE(r.eventually([&] { return handed >= 0; }));
    r.run([&] {
        EXPECT_EQ(r.tr.sent, "STARTTLS");  // the reply left before the hand-off
        EXPECT_TRUE(r.tr.was_detached);
        EXPECT_EQ(r.tr.closed_with, INT_MIN);
        EXPECT_EQ(unread, "client-hello");
        EXPECT_EQ(r.rec.closes, 1);
        EXPECT_EQ(r.rec.close_err, 0);
    });
    // The placeholder is still open (it now belongs to whoever took it).
    EXPECT_EQ(::fcntl(handed, F_GETFD), FD_CLOEXEC);
    // It comes back through adopt() as a virtual stream again.
    recorder again;
    r.run([&] {
        stream* s = r.sh->adopt(handed, &again);
        ASSERT_NE(s, nullptr);
        EXPECT_TRUE(s->is_virtual());
        EXPECT_EQ(s->fd(), handed);
        s->close(0);
    });
    EXPECT_TRUE(r.eventually([&] { return again.closes == 1; }));
}

TEST(virtual_stream, an_idle_loop_sleeps_instead_of_spinning) {
    shard_config cfg;
    cfg.poll_spin_us = 100;
    cfg.poll_sleep_us = 2000;
    rig r(cfg);
    uint64_t before = r.sh->stats().loop_passes.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    uint64_t passes = r.sh->stats().loop_passes.load() - before;
    // ~100 sleeps of 2 ms, not the hundreds of thousands of a busy loop.
    EXPECT_LT(passes, 2000u);
    EXPECT_GT(r.sh->stats().idle_sleeps.load(), 10u);
    EXPECT_GT(r.be.polls.load(), 10);
}

}  // namespace
