// A real peer agrees: libtirpc's echo client (rpcgen, tests/peers) sends calls
// of 0 B .. 2 MiB over loopback to a tiny server built only from rpc/ — the
// record reassembler, the call decoder and the reply encoder — and checks every
// reply byte for byte. Plain blocking sockets driven by poll() with deadlines;
// nothing here sleeps for luck.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "rpc/message.h"
#include "rpc/record.h"
#include "rpc/xdr_codec.h"

extern char** environ;

using namespace rpcgate;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr uint32_t echo_prog = 0x20000001;
constexpr uint32_t echo_vers = 1;
constexpr size_t recv_size = 64 * 1024;

struct fd_guard {
    int fd = -1;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

struct run_options {
    unsigned calls = 0;
    size_t min = 0;
    size_t max = 0;
    unsigned seed = 1;
    size_t sendsz = 0;  // client's record buffer (0: libtirpc default)
    unsigned connections = 1;
    size_t reply_fragment = rpc::record_max_fragment;  // our replies' fragment size
};

struct connection {
    std::unique_ptr<fd_guard> sock;
    rpc::record_reassembler reassembler;
    bool open = true;
};

struct totals {
    unsigned null_calls = 0;
    unsigned echo_calls = 0;
    uint64_t echo_bytes = 0;
    uint64_t fragments = 0;
    uint64_t records = 0;
    size_t largest = 0;
};

bool send_all(int fd, const core::slice_chain& chain) {
    std::vector<iovec> iov(chain.count());
    size_t n = chain.to_iovec(iov.data(), iov.size());
    size_t first = 0;
    while (first < n) {
        msghdr msg{};
        msg.msg_iov = iov.data() + first;
        msg.msg_iovlen = std::min<size_t>(n - first, IOV_MAX);
        ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        size_t left = static_cast<size_t>(w);
        while (first < n && left >= iov[first].iov_len) left -= iov[first++].iov_len;
        if (left) {
            iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
            iov[first].iov_len -= left;
        }
    }
    return true;
}

// Answers one call record with rpcgate's encoder; false on a protocol error.
bool serve_record(int fd, core::slice_chain&& record, const run_options& opt, totals& t) {
    auto call = rpc::decode_call(record);
    EXPECT_TRUE(call) << rpc::to_string(call.error());
    if (!call) return false;
    const auto& h = call->header;
    EXPECT_EQ(h.prog, echo_prog);
    EXPECT_EQ(h.vers, echo_vers);
    EXPECT_EQ(h.rpcvers, rpc::rpc_version);
    EXPECT_TRUE(h.cred.is(rpc::auth_flavor::none) || h.cred.is(rpc::auth_flavor::sys));
    if (h.cred.is(rpc::auth_flavor::none)) {
        EXPECT_EQ(h.cred.len, 0u);
    } else if (h.cred.is(rpc::auth_flavor::sys)) {
        EXPECT_TRUE(rpc::decode_auth_sys(h.cred));
    }
    EXPECT_TRUE(h.verf.is(rpc::auth_flavor::none));

    auto ok = rpc::reply_header::accepted(h.xid, rpc::accept_stat::success);
    if (h.proc == 0) {
        EXPECT_TRUE(call->args.empty());
        ++t.null_calls;
        return send_all(fd, core::slice_chain(rpc::build_reply(ok)));
    }
    EXPECT_EQ(h.proc, 1u);
    if (h.proc != 1) return false;
    rpc::xdr_reader args(call->args);
    auto data = args.opaque(opt.max);
    EXPECT_TRUE(data) << rpc::to_string(data.error());
    if (!data) return false;
    EXPECT_EQ(args.remaining(), 0u);
    ++t.echo_calls;
    t.echo_bytes += data->size();
    t.largest = std::max(t.largest, data->size());
    // The echoed bytes travel back zero-copy: the reply splices the very
    // slices we received into.
    rpc::xdr_writer results(8);
    results.opaque(std::move(*data));
    return send_all(fd, rpc::build_reply(ok, results.finish(), opt.reply_fragment));
}

// Runs the client against our server; returns the client's exit status.
int run(const run_options& opt, totals& t) {
    fd_guard listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_GE(listener.fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    EXPECT_EQ(::bind(listener.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(listener.fd, 16), 0);
    EXPECT_EQ(::getsockname(listener.fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);

    std::vector<std::string> args = {RPCGATE_TIRPC_ECHO_CLIENT,
                                     "--host",
                                     "127.0.0.1",
                                     "--port",
                                     std::to_string(ntohs(addr.sin_port)),
                                     "--calls",
                                     std::to_string(opt.calls),
                                     "--min",
                                     std::to_string(opt.min),
                                     "--max",
                                     std::to_string(opt.max),
                                     "--seed",
                                     std::to_string(opt.seed),
                                     "--connections",
                                     std::to_string(opt.connections),
                                     "--timeout",
                                     "60"};
    if (opt.sendsz) {
        args.push_back("--sendsz");
        args.push_back(std::to_string(opt.sendsz));
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
    EXPECT_EQ(rc, 0) << "cannot start " << argv[0] << ": " << std::strerror(rc);
    if (rc != 0) return -1;

    const auto deadline = clock_type::now() + std::chrono::seconds(240);
    std::vector<std::unique_ptr<connection>> conns;
    int status = -1;
    bool exited = false;
    bool failed = false;
    // Until the client has exited and every connection it opened is closed.
    while (!exited || std::any_of(conns.begin(), conns.end(), [](auto& c) { return c->open; })) {
        if (clock_type::now() > deadline) {
            ADD_FAILURE() << "deadline passed; killing the client";
            failed = true;
            break;
        }
        if (!exited) {
            pid_t w = ::waitpid(pid, &status, WNOHANG);
            if (w == pid) exited = true;
        }
        std::vector<pollfd> fds;
        std::vector<connection*> polled;  // fds[i + 1] belongs to polled[i]
        fds.push_back({listener.fd, POLLIN, 0});
        for (auto& c : conns) {
            if (!c->open) continue;
            fds.push_back({c->sock->fd, POLLIN, 0});
            polled.push_back(c.get());
        }
        // Short poll timeout only so the client's exit is noticed promptly.
        int n = ::poll(fds.data(), fds.size(), 50);
        if (n < 0 && errno != EINTR) {
            ADD_FAILURE() << "poll: " << std::strerror(errno);
            failed = true;
            break;
        }
        if (n <= 0) continue;
        if (fds[0].revents & POLLIN) {
            int c = ::accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC);
            if (c >= 0) {
                auto conn = std::make_unique<connection>();
                conn->sock = std::make_unique<fd_guard>(c);
                conns.push_back(std::move(conn));
            }
        }
        for (size_t k = 0; k < polled.size(); ++k) {
            connection* c = polled[k];
            const pollfd& p = fds[k + 1];
            if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
            // A fresh buffer per read, as a shard's provided-buffer ring would give.
            core::slice buf = core::slice::allocate(recv_size);
            ssize_t r = ::recv(c->sock->fd, buf.mutable_data(), recv_size, 0);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                EXPECT_FALSE(c->reassembler.partial()) << "a record was cut off by close";
                t.fragments += c->reassembler.fragments_seen();
                t.records += c->reassembler.records_completed();
                c->open = false;
                continue;
            }
            buf.trim(static_cast<size_t>(r));
            bool ok = true;
            auto fed = c->reassembler.feed(buf, [&](core::slice_chain&& rec) {
                ok = ok && serve_record(c->sock->fd, std::move(rec), opt, t);
            });
            EXPECT_TRUE(fed) << rpc::to_string(fed.error());
            if (!fed || !ok) {
                failed = true;
                c->open = false;
            }
        }
        if (failed) break;
    }
    if (!exited) {
        if (failed) ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
    }
    if (failed) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(tirpc_wire, small_calls) {
    run_options opt{.calls = 2000, .min = 0, .max = 512, .seed = 11};
    totals t;
    EXPECT_EQ(run(opt, t), 0);
    EXPECT_EQ(t.null_calls, 1u);
    EXPECT_EQ(t.echo_calls, opt.calls);
}

TEST(tirpc_wire, empty_payloads) {
    run_options opt{.calls = 5, .min = 0, .max = 0, .seed = 10};
    totals t;
    EXPECT_EQ(run(opt, t), 0);
    EXPECT_EQ(t.echo_calls, opt.calls);
    EXPECT_EQ(t.echo_bytes, 0u);
}

TEST(tirpc_wire, up_to_two_mebibytes) {
    run_options opt{.calls = 40, .min = 0, .max = 2 * 1024 * 1024, .seed = 12};
    totals t;
    EXPECT_EQ(run(opt, t), 0);
    EXPECT_EQ(t.echo_calls, opt.calls);
    EXPECT_GT(t.largest, 1024u * 1024);
    // libtirpc's default record buffer is below 2 MiB: big calls arrive in pieces.
    EXPECT_GT(t.fragments, t.records);
}

TEST(tirpc_wire, many_fragments_both_ways) {
    // 4 KiB client buffers: every call above 4 KiB is several fragments; our
    // replies are cut into 1000-byte fragments, which libtirpc must reassemble.
    run_options opt{.calls = 30,
                    .min = 0,
                    .max = 2 * 1024 * 1024,
                    .seed = 13,
                    .sendsz = 4096,
                    .reply_fragment = 1000};
    totals t;
    EXPECT_EQ(run(opt, t), 0);
    EXPECT_EQ(t.echo_calls, opt.calls);
    EXPECT_GT(t.fragments, 10 * t.records);
}

TEST(tirpc_wire, two_connections) {
    run_options opt{
        .calls = 200, .min = 0, .max = 300000, .seed = 14, .sendsz = 8192, .connections = 2};
    totals t;
    EXPECT_EQ(run(opt, t), 0);
    EXPECT_EQ(t.null_calls, 2u);
    EXPECT_EQ(t.echo_calls, opt.calls);
}

}  // namespace
