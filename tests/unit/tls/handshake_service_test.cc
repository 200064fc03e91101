// The handshake service on its own, in both I/O modes: the test plays the
// shard (it answers the probe and submits the sockets) and the service runs
// both ends of one loopback connection, the client role on one fd and the
// server role on the other, on its one thread.
#include "tls/handshake_service.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "rpc/auth_tls.h"
#include "test_util.h"
#include "tls/ktls.h"

namespace rpcgate::tls {
namespace {

using namespace std::chrono_literals;

// A connected loopback TCP pair: {client end, server end}.
std::pair<int, int> tcp_pair() {
    int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l, 4) != 0 ||
        ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        ::close(l);
        return {-1, -1};
    }
    int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(c);
        ::close(l);
        return {-1, -1};
    }
    int s = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(l);
    return {c, s};
}

bool read_exactly(int fd, uint8_t* p, size_t n) {
    while (n > 0) {
        ssize_t r = ::recv(fd, p, n, 0);
        if (r <= 0) return false;
        p += r;
        n -= size_t(r);
    }
    return true;
}

class handshake_service_test : public testing::TestWithParam<handshake_io> {
  protected:
    void SetUp() override {
        std::string err;
        server_ctx_ = context::make_server(test::server_opts(), &err);
        ASSERT_TRUE(server_ctx_) << err;
        client_ctx_ = context::make_client(test::client_opts(), &err);
        ASSERT_TRUE(client_ctx_) << err;
        svc_ = std::make_unique<handshake_service>(server_ctx_.get(), 2000, &open_);
        if (GetParam() == handshake_io::socket) {
            ktls::prepare_context(server_ctx_->native());
            ktls::prepare_context(client_ctx_->native());
            svc_->use_socket_io();
        }
        core::shard_config cfg;
        cfg.buffer_count = 64;
        cfg.buffer_size = 4096;
        shard_ = std::make_unique<core::shard>(cfg);
        svc_->attach(
            *shard_,
            [this](handshake_result&& r) {
                std::lock_guard g(mu_);
                server_.push_back(std::move(r));
                cv_.notify_all();
            },
            [this](upstream_result&& r) {
                std::lock_guard g(mu_);
                client_.push_back(std::move(r));
                cv_.notify_all();
            });
        to_shard_ = &shard_->make_inbox(64);
        ping_ = &svc_->make_inbox();
        ASSERT_EQ(shard_->start({}), "");
        ASSERT_EQ(svc_->start(), "");
    }

    void TearDown() override {
        if (svc_) {
            svc_->stop();
            svc_->wait();
        }
        if (shard_) {
            shard_->force_exit();
            shard_->join();
        }
        for (auto& r : server_) ::close(r.fd);
        for (auto& r : client_)
            if (r.fd >= 0) ::close(r.fd);
    }

    // Runs `f` on the shard thread (submit is called there only).
    void on_shard(std::function<void()> f) {
        auto* task = new std::function<void()>(std::move(f));
        ASSERT_TRUE(to_shard_->try_post([task] {
            (*task)();
            delete task;
        }));
    }

    // Waits for `done` (results are signalled; counters are re-read every 10 ms).
    bool wait_for(const std::function<bool()>& done) {
        auto end = std::chrono::steady_clock::now() + 10s;
        std::unique_lock g(mu_);
        while (!done()) {
            if (std::chrono::steady_clock::now() >= end) return false;
            cv_.wait_for(g, 10ms);
        }
        return true;
    }

    void submit_server(int fd) {
        open_.fetch_add(1);
        on_shard([this, fd] {
            core::conn_id id{1, 0, 1};
            EXPECT_TRUE(svc_->submit(0, fd, id, "test-client", {}));
        });
    }

    std::atomic<uint32_t> open_{0};
    std::unique_ptr<context> server_ctx_, client_ctx_;
    std::unique_ptr<handshake_service> svc_;
    std::unique_ptr<core::shard> shard_;
    core::mailbox* to_shard_ = nullptr;
    core::mailbox* ping_ = nullptr;
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<handshake_result> server_;
    std::vector<upstream_result> client_;
};

// The client role probes, the "shard" answers STARTTLS, and both handshakes
// run on the service's thread; each side comes back to the shard ready.
TEST_P(handshake_service_test, both_roles_meet_over_one_connection) {
    auto [c, s] = tcp_pair();
    ASSERT_GE(c, 0);
    on_shard([this, c] {
        upstream_request r;
        r.fd = c;
        r.id = core::conn_id{1, 0, 2};
        r.target = "test-server";
        r.ctx = client_ctx_.get();
        r.prog = 100003;
        r.vers = 3;
        r.token = 7;
        EXPECT_TRUE(svc_->submit_upstream(0, std::move(r)));
    });
    uint8_t probe[44];
    ASSERT_TRUE(read_exactly(s, probe, sizeof probe));
    core::slice reply = rpc::build_starttls_reply(uint32_t(probe[4]) << 24 | probe[5] << 16 |
                                                  probe[6] << 8 | probe[7]);
    ASSERT_EQ(::send(s, reply.data(), reply.size(), MSG_NOSIGNAL), ssize_t(reply.size()));
    submit_server(s);

    ASSERT_TRUE(wait_for([&] { return server_.size() == 1 && client_.size() == 1; }));
    std::lock_guard g(mu_);
    EXPECT_EQ(client_[0].outcome, upstream_result::kind::tls) << client_[0].reason;
    EXPECT_EQ(client_[0].token, 7u);
    ASSERT_TRUE(client_[0].session);
    EXPECT_TRUE(client_[0].session->handshake_done());
    ASSERT_TRUE(server_[0].session);
    EXPECT_TRUE(server_[0].session->handshake_done());
    EXPECT_EQ(server_[0].session->version(), "TLSv1.3");
    EXPECT_EQ(server_[0].session->alpn(), "sunrpc");
    EXPECT_EQ(svc_->counters().succeeded.load(), 1u);
    EXPECT_EQ(svc_->upstream_counters().succeeded.load(), 1u);
    EXPECT_EQ(svc_->counters().in_progress.load(), 0u);
    EXPECT_EQ(svc_->upstream_counters().in_progress.load(), 0u);
    EXPECT_EQ(open_.load(), 1u);  // handed back, still open
}

// A refused probe with opportunistic upstream TLS goes on in plaintext.
TEST_P(handshake_service_test, refused_probe_goes_on_in_plaintext) {
    auto [c, s] = tcp_pair();
    ASSERT_GE(c, 0);
    on_shard([this, c] {
        upstream_request r;
        r.fd = c;
        r.target = "plain-server";
        r.ctx = client_ctx_.get();
        r.prog = 100003;
        r.vers = 3;
        r.opportunistic = true;
        EXPECT_TRUE(svc_->submit_upstream(0, std::move(r)));
    });
    uint8_t probe[44];
    ASSERT_TRUE(read_exactly(s, probe, sizeof probe));
    core::slice reply = rpc::build_auth_tls_badcred_reply(
        uint32_t(probe[4]) << 24 | probe[5] << 16 | probe[6] << 8 | probe[7]);
    ASSERT_EQ(::send(s, reply.data(), reply.size(), MSG_NOSIGNAL), ssize_t(reply.size()));
    ASSERT_TRUE(wait_for([&] { return client_.size() == 1; }));
    ::close(s);
    std::lock_guard g(mu_);
    EXPECT_EQ(client_[0].outcome, upstream_result::kind::plaintext);
    EXPECT_NE(client_[0].reason.find("probe refused: MSG_DENIED AUTH_ERROR AUTH_BADCRED"),
              std::string::npos)
        << client_[0].reason;
    EXPECT_GE(client_[0].fd, 0);
    EXPECT_EQ(svc_->upstream_refused(), 1u);
}

// RFC 9289 §5.1.1: bytes after STARTTLS that are no TLS handshake are dropped.
TEST_P(handshake_service_test, bytes_that_are_not_tls_are_refused) {
    auto [c, s] = tcp_pair();
    ASSERT_GE(c, 0);
    ASSERT_EQ(::send(c, "GET / HTTP/1.0\r\n\r\n", 18, MSG_NOSIGNAL), 18);
    submit_server(s);
    char buf[16];
    EXPECT_LE(::recv(c, buf, sizeof buf, 0), 0);  // closed by the service
    ::close(c);
    EXPECT_TRUE(wait_for([&] { return open_.load() == 0; }));
    EXPECT_EQ(svc_->counters().not_tls.load(), 1u);
    EXPECT_EQ(svc_->counters().failed.load(), 1u);
}

// A silent client is cut at the deadline and taken off the open count.
TEST_P(handshake_service_test, silent_client_is_cut_at_the_deadline) {
    auto [c, s] = tcp_pair();
    ASSERT_GE(c, 0);
    submit_server(s);
    char buf[16];
    EXPECT_LE(::recv(c, buf, sizeof buf, 0), 0);  // closed after 2 s
    ::close(c);
    EXPECT_TRUE(wait_for([&] { return open_.load() == 0; }));
    EXPECT_EQ(svc_->counters().timed_out.load(), 1u);
    EXPECT_EQ(svc_->counters().in_progress.load(), 0u);
}

// /healthz's ping reaches the thread that runs the handshakes, whatever the mode.
TEST_P(handshake_service_test, a_ping_reaches_the_handshake_thread) {
    std::atomic<bool> pinged{false};
    std::thread::id where;
    ASSERT_TRUE(ping_->try_post([&] {
        where = std::this_thread::get_id();
        std::lock_guard g(mu_);
        pinged = true;
        cv_.notify_all();
    }));
    ASSERT_TRUE(wait_for([&] { return pinged.load(); }));
    EXPECT_NE(where, std::this_thread::get_id());
}

INSTANTIATE_TEST_SUITE_P(io, handshake_service_test,
                         testing::Values(handshake_io::memory, handshake_io::socket),
                         [](const testing::TestParamInfo<handshake_io>& p) {
                             return std::string(p.param == handshake_io::memory ? "memory"
                                                                                : "socket");
                         });

}  // namespace
}  // namespace rpcgate::tls
