// Interop with an independent TLS stack: the `openssl s_server` and
// `s_client` programs, over loopback TCP, with our session on the other end.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "test_util.h"

extern char** environ;

namespace rpcgate::tls {
namespace {

using clock_type = std::chrono::steady_clock;
using test::cert;

constexpr auto deadline_after = std::chrono::seconds(10);

int ms_left(clock_type::time_point deadline) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    return ms.count() > 0 ? static_cast<int>(ms.count()) : 0;
}

// A child process with its stdin and (stdout + stderr) on pipes; killed and
// reaped when the object goes.
class child {
  public:
    explicit child(const std::vector<std::string>& args) {
        int in[2], out[2];
        if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        posix_spawn_file_actions_adddup2(&fa, out[1], 1);
        posix_spawn_file_actions_adddup2(&fa, out[1], 2);
        std::vector<char*> argv;
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        if (posix_spawnp(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
        posix_spawn_file_actions_destroy(&fa);
        close(in[0]);
        close(out[1]);
        in_ = in[1];
        out_ = out[0];
    }
    ~child() {
        if (in_ >= 0) close(in_);
        if (pid_ > 0) {
            kill(pid_, SIGTERM);
            waitpid(pid_, nullptr, 0);
        }
        if (out_ >= 0) close(out_);
    }
    bool started() const { return pid_ > 0; }
    void send(const std::string& s) {
        ASSERT_EQ(::write(in_, s.data(), s.size()), ssize_t(s.size()));
    }

    // Reads output until it contains `what`; false at the deadline or EOF.
    bool wait_for(const std::string& what, clock_type::time_point deadline) {
        while (output_.find(what) == std::string::npos) {
            pollfd p{out_, POLLIN, 0};
            if (poll(&p, 1, ms_left(deadline)) <= 0) return false;
            char buf[4096];
            ssize_t n = ::read(out_, buf, sizeof(buf));
            if (n <= 0) return false;
            output_.append(buf, static_cast<size_t>(n));
        }
        return true;
    }
    const std::string& output() const { return output_; }

  private:
    pid_t pid_ = -1;
    int in_ = -1, out_ = -1;
    std::string output_;
};

bool have_openssl() {
    return std::system("openssl version >/dev/null 2>&1") == 0;
}

void send_all(int fd, const core::slice_chain& c) {
    for (const core::slice& s : c) {
        size_t off = 0;
        while (off < s.size()) {
            ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
            ASSERT_GT(n, 0);
            off += static_cast<size_t>(n);
        }
    }
}

// Reads what the socket has (waiting up to the deadline) into the session;
// false on EOF or timeout.
bool recv_into(int fd, session& s, clock_type::time_point deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, ms_left(deadline)) <= 0) return false;
    char buf[16384];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return false;
    s.feed(core::slice::copy_of(buf, static_cast<size_t>(n)));
    return true;
}

status drive_handshake(int fd, session& s, clock_type::time_point deadline) {
    for (;;) {
        core::slice_chain out;
        status st = s.handshake(out);
        send_all(fd, out);
        if (st != status::ok) return st;
        if (!recv_into(fd, s, deadline)) return status::error;
    }
}

// Reads plaintext until it holds `n` bytes or the connection ends.
std::string read_plain(int fd, session& s, size_t n, clock_type::time_point deadline) {
    std::string got;
    for (;;) {
        core::slice_chain plain, out;
        status st = s.read(plain, out);
        send_all(fd, out);
        got += plain.to_string();
        if (got.size() >= n || st != status::ok) return got;
        if (!recv_into(fd, s, deadline)) return got;
    }
}

int connect_to(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

TEST(TlsInterop, OurClientAgainstOpensslServer) {
    if (!have_openssl()) GTEST_SKIP() << "no openssl program";
    auto deadline = clock_type::now() + deadline_after;
    child server({"openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-tls1_3",
                  "-alpn", "sunrpc", "-cert", cert("server.pem"), "-key", cert("server.key"),
                  "-CAfile", cert("ca.pem"), "-Verify", "1", "-verify_return_error", "-rev"});
    ASSERT_TRUE(server.started());
    ASSERT_TRUE(server.wait_for("ACCEPT 127.0.0.1:", deadline)) << server.output();
    ASSERT_TRUE(server.wait_for("\n", deadline));
    size_t at = server.output().find("ACCEPT 127.0.0.1:") + 17;
    auto port = static_cast<uint16_t>(std::stoi(server.output().substr(at)));

    std::string err;
    auto ctx = context::make_client(test::client_opts("client"), &err);
    ASSERT_TRUE(ctx) << err;
    auto s = session::make(*ctx, &err);
    int fd = connect_to(port);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(drive_handshake(fd, *s, deadline), status::done) << s->error_text();
    EXPECT_EQ(s->alpn(), "sunrpc");
    EXPECT_EQ(s->version(), "TLSv1.3");
    EXPECT_EQ(s->flags(), flag_handshake | flag_gotcert | flag_verified) << flags_text(s->flags());

    // -rev answers each line reversed.
    core::slice_chain out;
    ASSERT_EQ(s->write(core::slice_chain(core::slice::copy_of("hello rpcgate\n")), out),
              status::ok);
    send_all(fd, out);
    std::string got = read_plain(fd, *s, 14, deadline);
    EXPECT_EQ(got, "etagcpr olleh\n");
    out.clear();
    s->shutdown(out);
    send_all(fd, out);
    close(fd);
    EXPECT_TRUE(server.wait_for("CONNECTION CLOSED", deadline)) << server.output();
}

class listener {
  public:
    listener() {
        fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof(a);
        if (bind(fd_, reinterpret_cast<sockaddr*>(&a), len) == 0 && listen(fd_, 4) == 0 &&
            getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
            port_ = ntohs(a.sin_port);
        }
    }
    ~listener() { close(fd_); }
    uint16_t port() const { return port_; }
    int accept_one(clock_type::time_point deadline) {
        pollfd p{fd_, POLLIN, 0};
        if (poll(&p, 1, ms_left(deadline)) <= 0) return -1;
        return accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    }

  private:
    int fd_ = -1;
    uint16_t port_ = 0;
};

std::vector<std::string> s_client_args(uint16_t port, const char* alpn) {
    return {"openssl",
            "s_client",
            "-connect",
            "127.0.0.1:" + std::to_string(port),
            "-alpn",
            alpn,
            "-CAfile",
            cert("ca.pem"),
            "-cert",
            cert("client.pem"),
            "-key",
            cert("client.key"),
            "-servername",
            "localhost",
            "-verify_return_error",
            "-quiet"};
}

TEST(TlsInterop, OpensslClientAgainstOurServer) {
    if (!have_openssl()) GTEST_SKIP() << "no openssl program";
    auto deadline = clock_type::now() + deadline_after;
    auto so = test::server_opts();
    so.require_client_cert = true;
    so.crl_file = cert("crl.pem");
    std::string err;
    auto ctx = context::make_server(so, &err);
    ASSERT_TRUE(ctx) << err;
    listener l;
    ASSERT_NE(l.port(), 0);
    child client(s_client_args(l.port(), "sunrpc"));
    ASSERT_TRUE(client.started());
    int fd = l.accept_one(deadline);
    ASSERT_GE(fd, 0);
    auto s = session::make(*ctx, &err);
    ASSERT_EQ(drive_handshake(fd, *s, deadline), status::done) << s->error_text();
    EXPECT_EQ(s->alpn(), "sunrpc");
    EXPECT_EQ(s->flags(), flag_handshake | flag_gotcert | flag_verified) << flags_text(s->flags());
    EXPECT_EQ(s->peer_subject(), "CN=client1,O=rpcgate test");

    client.send("ping from s_client\n");
    EXPECT_EQ(read_plain(fd, *s, 19, deadline), "ping from s_client\n");
    core::slice_chain out;
    ASSERT_EQ(s->write(core::slice_chain(core::slice::copy_of("pong from rpcgate\n")), out),
              status::ok);
    s->shutdown(out);
    send_all(fd, out);
    EXPECT_TRUE(client.wait_for("pong from rpcgate\n", deadline)) << client.output();
    close(fd);
}

TEST(TlsInterop, OpensslClientOfferingH2IsRefused) {
    if (!have_openssl()) GTEST_SKIP() << "no openssl program";
    auto deadline = clock_type::now() + deadline_after;
    std::string err;
    auto ctx = context::make_server(test::server_opts(), &err);
    ASSERT_TRUE(ctx) << err;
    listener l;
    child client(s_client_args(l.port(), "h2"));
    int fd = l.accept_one(deadline);
    ASSERT_GE(fd, 0);
    auto s = session::make(*ctx, &err);
    EXPECT_EQ(drive_handshake(fd, *s, deadline), status::error);
    EXPECT_NE(s->error_text().find("no application protocol"), std::string::npos)
        << s->error_text();
    close(fd);
    EXPECT_TRUE(client.wait_for("no application protocol", deadline)) << client.output();
}

}  // namespace
}  // namespace rpcgate::tls
