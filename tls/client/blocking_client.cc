#include "tls/client/blocking_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace rpcgate::client {
namespace {

using clock = std::chrono::steady_clock;

double ms_since(clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
}

// Waits for `events` on fd until the deadline: 1 ready, 0 timed out, -errno.
int wait_fd(int fd, short events, clock::time_point deadline) {
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
        if (left.count() <= 0) return 0;
        pollfd p{fd, events, 0};
        int rc = ::poll(&p, 1, int(std::min<int64_t>(left.count(), 60000)));
        if (rc > 0) return 1;
        if (rc < 0 && errno != EINTR) return -errno;
    }
}

// Non-blocking connect to the first address of `host` that answers.
int connect_to(const std::string& host, uint16_t port, clock::time_point deadline,
               std::string* err) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0 || !res) {
        *err = "cannot resolve '" + host + "': " + ::gai_strerror(rc);
        return -1;
    }
    int fd = -1;
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            *err = std::string("socket: ") + std::strerror(errno);
            continue;
        }
        int e = 0;
        if (::connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            e = errno;
            if (e == EINPROGRESS) {
                int w = wait_fd(fd, POLLOUT, deadline);
                socklen_t len = sizeof e;
                if (w == 1)
                    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len);
                else
                    e = w == 0 ? ETIMEDOUT : -w;
            }
        }
        if (e == 0) break;
        *err = "connect to " + host + ":" + std::to_string(port) + ": " + std::strerror(e);
        ::close(fd);
        fd = -1;
    }
    ::freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

}  // namespace

const char* to_string(connect_stage s) noexcept {
    switch (s) {
        case connect_stage::none:
            return "none";
        case connect_stage::options:
            return "options";
        case connect_stage::connect:
            return "connect";
        case connect_stage::probe:
            return "probe";
        case connect_stage::refused:
            return "refused";
        case connect_stage::handshake:
            return "handshake";
    }
    return "?";
}

blocking_client::~blocking_client() {
    if (fd_ >= 0) ::close(fd_);
}

blocking_client& blocking_client::operator=(blocking_client&& o) noexcept {
    if (this == &o) return *this;
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
    stage_ = o.stage_;
    error_ = std::move(o.error_);
    connect_ms = o.connect_ms;
    probe_ms = o.probe_ms;
    handshake_ms = o.handshake_ms;
    sess_.reset();  // before the context it was made from
    own_ctx_ = std::move(o.own_ctx_);
    sess_ = std::move(o.sess_);
    rr_ = std::move(o.rr_);
    records_ = std::move(o.records_);
    return *this;
}

blocking_client& blocking_client::failed(connect_stage st, std::string why) {
    if (stage_ == connect_stage::none) {
        stage_ = st;
        error_ = std::move(why);
    }
    return *this;
}

blocking_client blocking_client::open(const std::string& host, uint16_t port, tls_mode mode,
                                      uint32_t prog, uint32_t vers, const tls::client_options& opt,
                                      std::chrono::milliseconds timeout) {
    std::unique_ptr<tls::context> ctx;
    if (mode != tls_mode::off) {
        std::string err;
        ctx = tls::context::make_client(opt, &err);
        if (!ctx) {
            blocking_client c;
            return std::move(c.failed(connect_stage::options, err));
        }
    }
    blocking_client c = open(host, port, mode, prog, vers, ctx.get(), timeout);
    c.own_ctx_ = std::move(ctx);
    return c;
}

blocking_client blocking_client::open(const std::string& host, uint16_t port, tls_mode mode,
                                      uint32_t prog, uint32_t vers, const tls::context* ctx,
                                      std::chrono::milliseconds timeout) {
    blocking_client c;
    const auto deadline = clock::now() + timeout;
    c.rr_ = std::make_unique<rpc::record_reassembler>();
    c.sess_ = std::make_unique<client_session>(session_params{mode, ctx, prog, vers});
    auto t0 = clock::now();
    std::string err;
    c.fd_ = connect_to(host, port, deadline, &err);
    if (c.fd_ < 0) return std::move(c.failed(connect_stage::connect, err));
    c.connect_ms = ms_since(t0);

    t0 = clock::now();
    core::slice_chain out;
    session_state st = c.sess_->start(out);
    if (!c.flush(out, deadline)) return std::move(c.failed(connect_stage::probe, c.error_));
    while (st == session_state::probing || st == session_state::handshaking) {
        const bool probing = st == session_state::probing;
        if (!c.pump(deadline)) {
            if (c.sess_->state() == st && c.error_.empty())
                c.error_ = probing ? "no reply to the probe in time" : "TLS handshake timed out";
            break;
        }
        st = c.sess_->state();
        if (probing && st != session_state::probing) {
            c.probe_ms = ms_since(t0);
            t0 = clock::now();
        }
    }
    st = c.sess_->state();
    if (st == session_state::ready) {
        if (mode != tls_mode::off) c.handshake_ms = ms_since(t0);
        return c;
    }
    std::string why = !c.sess_->error().empty() ? c.sess_->error() : c.error_;
    c.error_.clear();
    if (st == session_state::refused) return std::move(c.failed(connect_stage::refused, why));
    if (st == session_state::probing || !c.sess_->tls())
        return std::move(c.failed(connect_stage::probe, why));
    return std::move(c.failed(connect_stage::handshake, why));
}

bool blocking_client::flush(core::slice_chain& out, clock::time_point deadline) {
    while (!out.empty()) {
        iovec iov[64];
        size_t n = out.to_iovec(iov, 64);
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = n;
        ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
        if (w > 0) {
            out.trim_front(size_t(w));
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) {
            int rc = wait_fd(fd_, POLLOUT, deadline);
            if (rc == 1) continue;
            error_ = rc == 0 ? "send timed out" : std::string("send: ") + std::strerror(-rc);
            return false;
        }
        error_ = std::string("send: ") + std::strerror(errno);
        return false;
    }
    return true;
}

bool blocking_client::take_plain(core::slice_chain&& plain) {
    for (const core::slice& s : plain) {
        auto fed =
            rr_->feed(s, [this](core::slice_chain&& rec) { records_.push_back(std::move(rec)); });
        if (!fed) {
            error_ = std::string("server sent bytes that are not RPC records: ") +
                     rpc::to_string(fed.error());
            return false;
        }
    }
    return true;
}

bool blocking_client::pump(clock::time_point deadline) {
    int rc = wait_fd(fd_, POLLIN, deadline);
    if (rc <= 0) {
        if (rc < 0) error_ = std::string("poll: ") + std::strerror(-rc);
        return false;
    }
    core::slice buf = core::slice::allocate(64 * 1024);
    ssize_t n = ::recv(fd_, buf.mutable_data(), buf.size(), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    core::slice_chain out, plain;
    if (n <= 0) {
        sess_->on_eof(n == 0 ? 0 : -errno);
        if (error_.empty()) error_ = sess_->error();
        return false;
    }
    buf.trim(size_t(n));
    session_state st = sess_->on_bytes(std::move(buf), out, plain);
    if (!flush(out, deadline)) return false;
    if (!take_plain(std::move(plain))) return false;
    if (st == session_state::failed || st == session_state::refused ||
        st == session_state::closed) {
        if (error_.empty())
            error_ = st == session_state::closed ? "the server sent close_notify" : sess_->error();
        return st != session_state::closed && st != session_state::failed;
    }
    return true;
}

bool blocking_client::send(core::slice_chain&& plain, std::chrono::milliseconds timeout) {
    if (!sess_ || !sess_->ready()) {
        if (error_.empty()) error_ = "not connected";
        return false;
    }
    core::slice_chain out;
    if (!sess_->write(std::move(plain), out)) {
        error_ = sess_->error();
        return false;
    }
    return flush(out, clock::now() + timeout);
}

core::slice_chain blocking_client::call(core::slice_chain&& record,
                                        std::chrono::milliseconds timeout) {
    if (!send(std::move(record), timeout)) return {};
    return receive(timeout);
}

core::slice_chain blocking_client::receive(std::chrono::milliseconds timeout) {
    const auto deadline = clock::now() + timeout;
    if (!sess_) {
        if (error_.empty()) error_ = "not connected";
        return {};
    }
    while (records_.empty()) {
        if (!sess_->ready()) {
            if (error_.empty()) error_ = sess_->error();
            return {};
        }
        if (!pump(deadline)) {
            if (error_.empty()) error_ = "no reply in time";
            return {};
        }
    }
    core::slice_chain rec = std::move(records_.front());
    records_.pop_front();
    return rec;
}

void blocking_client::close() {
    if (fd_ < 0) return;
    if (sess_ && sess_->ready()) {
        core::slice_chain out;
        sess_->shutdown(out);
        flush(out, clock::now() + std::chrono::milliseconds(500));
    }
    ::close(fd_);
    fd_ = -1;
}

}  // namespace rpcgate::client
