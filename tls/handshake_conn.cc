#include "tls/handshake_conn.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <type_traits>

#include "core/log.h"
#include "core/timer_wheel.h"
#include "tls/ktls.h"

namespace rpcgate::tls {

using core::bump;

namespace {

// After a refusal: how long the alert may take to leave and the peer to close.
constexpr uint64_t k_linger_ms = 200;

// A completed handshake that took `ms`: counted and put in its latency bucket.
void record_success(handshake_counters& c, uint64_t ms) {
    bump(c.succeeded);
    bump(c.latency_us_sum, ms * 1000);
    for (size_t i = 0; i < handshake_counters::k_buckets; ++i) {
        if (ms <= handshake_counters::k_bucket_ms[i]) {
            bump(c.latency_buckets[i]);
            break;
        }
    }
}

// The one audit line of a server-role handshake decision (RFC 9289 §6):
// verdict "accepted" or "refused", `error` the reason of a refusal.
void audit_handshake(core::conn_id id, const std::string& peer, const char* verdict,
                     const session& t, const std::optional<identity>& certuser,
                     const std::string& error) {
    RPCGATE_LOG(
        audit, info,
        "conn {} peer {} tls {}: flags={} version={} cipher={} alpn={} subject=\"{}\"{}{}{}", id,
        peer, verdict, flags_text(t.flags()), t.version(), t.cipher(),
        t.alpn().empty() ? "-" : t.alpn(), t.peer_subject(),
        certuser ? fmt::format(" certuser={}:{}", certuser->uid, certuser->gid) : "",
        error.empty() ? "" : " reason=", error);
}

// The audit line of a client-role decision towards a backend: verdict
// "established", "plaintext" or "refused"; `t` null before the handshake.
void audit_upstream(core::conn_id id, const std::string& target, const char* verdict,
                    const session* t, const std::string& why) {
    RPCGATE_LOG(audit, info,
                "backend conn {} server {} tls {}: flags={} version={} cipher={} alpn={} "
                "subject=\"{}\"{}{}",
                id, target, verdict, t ? flags_text(t->flags()) : "-", t ? t->version() : "-",
                t ? t->cipher() : "-", t && !t->alpn().empty() ? t->alpn() : "-",
                t ? t->peer_subject() : "", why.empty() ? "" : " reason=", why);
}

}  // namespace

void handshake_service::conn::start(core::slice_chain&& early) {
    started_ms_ = core::monotonic_ms();
    deadline_ms_ = started_ms_ + svc_.deadline_ms_;
    fd_flags_ = ::fcntl(fd_, F_GETFL);
    ::fcntl(fd_, F_SETFL, fd_flags_ | O_NONBLOCK);  // restored on hand-back
    bump(counters().in_progress);
    if (server()) {
        start_server(std::move(early));
    } else {
        start_client();
    }
}

void handshake_service::conn::on_ready() {
    switch (phase_) {
        case phase::handshake:
            server() ? server_step() : client_step();
            return;
        case phase::flushing:
            flush_then_hand_back();
            return;
        case phase::lingering:
            linger_step();
            return;
        case phase::over:
            return;
    }
}

void handshake_service::conn::on_deadline() {
    if (phase_ == phase::lingering) return close_fd();
    if (phase_ == phase::flushing) {
        // Decided and counted; the last flight would not leave.
        RPCGATE_LOG(tls, warn,
                    "{}conn {} ({}): the last handshake flight did not leave "
                    "within {} ms: closing",
                    server() ? "" : "backend ", id_, peer_, svc_.deadline_ms_);
        if (server()) return close_fd();
        post_upstream(upstream_result::kind::failed, nullptr, {}, "handshake flight stuck");
        return close_fd();
    }
    bump(counters().timed_out);
    if (server()) {
        server_fail(fmt::format("no handshake within {} ms", svc_.deadline_ms_));
    } else {
        client_fail(fmt::format("no STARTTLS reply and handshake within {} ms", svc_.deadline_ms_));
    }
}

void handshake_service::conn::cut() {
    if (phase_ == phase::handshake) bump(counters().in_progress, uint64_t(-1));
    if (phase_ != phase::over) close_fd();
}

handshake_counters& handshake_service::conn::counters() const noexcept {
    return server() ? svc_.counters_ : svc_.upstream_counters_;
}

void handshake_service::conn::start_server(core::slice_chain&& early) {
    std::string err = "no server TLS context";
    const context* ctx = svc_.ctx_.load();
    std::string first = io_ == handshake_io::socket ? early.to_string() : std::string();
    if (ctx)
        tls_ = io_ == handshake_io::socket ? session::make_on_socket(*ctx, fd_, first, &err)
                                           : session::make(*ctx, &err);
    if (!tls_) {
        RPCGATE_LOG(tls, error, "conn {}: cannot create a TLS session: {}", id_, err);
        bump(svc_.counters_.failed);
        bump(svc_.counters_.in_progress, uint64_t(-1));
        return close_fd();
    }
    if (!early.empty()) {
        checked_ = true;
        if (early.at(0) != 0x16) return not_tls();
        if (io_ == handshake_io::memory) tls_->feed(std::move(early));
    }
    server_step();
}

bool handshake_service::conn::check_first_byte() {
    uint8_t first = 0;
    ssize_t r = ::recv(fd_, &first, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        events_ = POLLIN;
        return false;
    }
    if (r == 0) {
        server_fail("client closed during the handshake");
        return false;
    }
    if (r < 0) {
        server_fail(std::string("connection error: ") + std::strerror(errno));
        return false;
    }
    checked_ = true;
    if (first != 0x16) {
        not_tls();
        return false;
    }
    return true;
}

void handshake_service::conn::not_tls() {
    bump(svc_.counters_.not_tls);
    server_fail("bytes after the probe are not a TLS handshake: dropped");
}

void handshake_service::conn::server_step() {
    if (!checked_ && !check_first_byte()) return;
    if (io_ == handshake_io::socket) {
        switch (tls_->socket_handshake()) {
            case ktls::step::want_read:
                events_ = POLLIN;
                return;
            case ktls::step::want_write:
                events_ = POLLOUT;
                return;
            case ktls::step::done:
                return server_succeed();
            case ktls::step::error:
                break;
        }
        return server_fail(tls_->error_text().empty() ? "handshake failed (client closed?)"
                                                      : tls_->error_text());
    }
    for (;;) {
        status st = tls_->handshake(out_);
        if (st == status::done) return server_succeed();
        if (st != status::ok) {
            tls_->add_flags(flag_handshfail);
            return server_fail(tls_->error_text().empty() ? "handshake failed"
                                                          : tls_->error_text());
        }
        std::string why;
        if (!flush(&why)) return server_fail(why);
        core::slice got;
        switch (read_some(&got, &why)) {
            case rd::again:
                events_ = wait_events();
                return;
            case rd::eof:
                return server_fail(why);
            case rd::data:
                tls_->feed(std::move(got));
                break;
        }
    }
}

void handshake_service::conn::server_succeed() {
    bump(svc_.counters_.in_progress, uint64_t(-1));
    record_success(svc_.counters_, core::monotonic_ms() - started_ms_);
    const identity_map* map = svc_.map_.load();
    if (map && (tls_->flags() & flag_verified)) {
        certuser_ = map->lookup(tls_->native());
        if (certuser_) tls_->add_flags(flag_certuser);
    }
    finish_record_layer();
    audit_handshake(id_, peer_, "accepted", *tls_, certuser_, "");
    if (io_ == handshake_io::socket) {
        RPCGATE_LOG(tls, debug, "conn {}: record layer: tx {}, rx {}", id_,
                    tls_->kernel_tx() ? "kernel" : "userspace",
                    tls_->kernel_rx() ? "kernel" : "userspace");
    }
    flush_then_hand_back();
}

void handshake_service::conn::server_fail(const std::string& why) {
    bump(svc_.counters_.failed);
    bump(svc_.counters_.in_progress, uint64_t(-1));
    tls_->add_flags(flag_handshfail);
    audit_handshake(id_, peer_, "refused", *tls_, certuser_, why);
    linger();  // an alert OpenSSL made goes out first
}

void handshake_service::conn::hand_back_server() {
    auto* r = new handshake_result;
    r->fd = fd_;
    r->id = id_;
    r->peer = peer_;
    r->session = std::move(tls_);
    r->certuser = certuser_;
    if (post_to_shard(r)) {
        phase_ = phase::over;
        return;
    }
    // The shard's mailbox is full: it is overloaded; drop this one.
    RPCGATE_LOG(tls, warn, "conn {} ({}): shard {} mailbox full: closing", id_, peer_, from_);
    close_fd();
}

void handshake_service::conn::start_client() {
    client::session_params p;
    p.mode = client::tls_mode::starttls;
    p.ctx = req_->ctx;
    p.prog = req_->prog;
    p.vers = req_->vers;
    p.socket_fd = io_ == handshake_io::socket ? fd_ : -1;
    cs_ = std::make_unique<client::client_session>(p);
    client_advance(cs_->start(out_));
}

void handshake_service::conn::client_step() {
    std::string why;
    if (!flush(&why)) return client_fail(why, true);
    if (!out_.empty()) {
        events_ = wait_events();
        return;
    }
    client::session_state st = cs_->state();
    if (st == client::session_state::handshaking && io_ == handshake_io::socket)
        return client_advance(st);
    for (;;) {
        core::slice got;
        switch (read_some(&got, &why)) {
            case rd::again:
                events_ = wait_events();
                return;
            case rd::eof:
                return client_advance(cs_->on_eof(eof_err_));
            case rd::data:
                break;
        }
        core::slice_chain plain;
        st = cs_->on_bytes(std::move(got), out_, plain);
        early_.append(std::move(plain));
        if (st != client::session_state::probing &&
            (st != client::session_state::handshaking || io_ == handshake_io::socket))
            return client_advance(st);
        if (!flush(&why)) return client_fail(why, true);
    }
}

void handshake_service::conn::client_advance(client::session_state st) {
    std::string why;
    switch (st) {
        case client::session_state::probing:
            if (!flush(&why)) return client_fail(why, true);
            events_ = wait_events();
            return;
        case client::session_state::handshaking:
            if (io_ == handshake_io::memory) {
                if (!flush(&why)) return client_fail(why, true);
                events_ = wait_events();
                return;
            }
            {
                bool want_write = false;
                st = cs_->step_socket(&want_write);
                if (st != client::session_state::handshaking) return client_advance(st);
                events_ = want_write ? POLLOUT : POLLIN;
            }
            return;
        case client::session_state::ready:
            bump(svc_.upstream_counters_.in_progress, uint64_t(-1));
            record_success(svc_.upstream_counters_, core::monotonic_ms() - started_ms_);
            tls_ = cs_->release_tls();
            finish_record_layer();
            audit_upstream(req_->id, req_->target, "established", tls_.get(), "");
            if (io_ == handshake_io::socket) {
                RPCGATE_LOG(tls, debug, "backend conn {}: record layer: tx {}, rx {}", req_->id,
                            tls_->kernel_tx() ? "kernel" : "userspace",
                            tls_->kernel_rx() ? "kernel" : "userspace");
            }
            outcome_ = upstream_result::kind::tls;
            return flush_then_hand_back();
        case client::session_state::refused:
            if (req_->opportunistic) {
                bump(svc_.upstream_refused_);
                bump(svc_.upstream_counters_.in_progress, uint64_t(-1));
                reason_ = cs_->error();
                audit_upstream(req_->id, req_->target, "plaintext", nullptr, reason_);
                early_.append(cs_->take_leftover());
                outcome_ = upstream_result::kind::plaintext;
                return flush_then_hand_back();
            }
            return client_fail(cs_->error() + " (upstream TLS is required)", true);
        case client::session_state::failed:
        case client::session_state::closed:
            return client_fail(
                cs_->error().empty() ? "the server closed the connection" : cs_->error(), true);
    }
}

void handshake_service::conn::client_fail(const std::string& why, bool count) {
    if (count) bump(svc_.upstream_counters_.failed);
    bump(svc_.upstream_counters_.in_progress, uint64_t(-1));
    if (cs_ && cs_->tls()) cs_->tls()->add_flags(flag_handshfail);
    audit_upstream(req_->id, req_->target, "refused", cs_ ? cs_->tls() : nullptr, why);
    post_upstream(upstream_result::kind::failed, nullptr, {}, why);
    linger();
}

void handshake_service::conn::hand_back_client() {
    if (post_upstream(outcome_, std::move(tls_), std::move(early_), reason_, fd_)) {
        phase_ = phase::over;
        return;
    }
    close_fd();
}

bool handshake_service::conn::post_upstream(upstream_result::kind k, std::unique_ptr<session> tls,
                                            core::slice_chain&& early, const std::string& reason,
                                            int fd) {
    auto* r = new upstream_result;
    r->outcome = k;
    r->token = req_->token;
    r->fd = fd;
    r->session = std::move(tls);
    r->early = std::move(early);
    r->reason = reason;
    bool posted = post_to_shard(r);
    if (!posted) {
        // The shard's mailbox is full: it is overloaded. The link waits
        // for its connect timer, which fails it.
        RPCGATE_LOG(tls, warn, "backend conn {} ({}): shard {} mailbox full: closing", req_->id,
                    req_->target, from_);
    }
    return posted;
}

template <typename Result>
bool handshake_service::conn::post_to_shard(Result* r) {
    link& l = svc_.links_[from_];
    bool posted = l.to_shard->try_post([&l, r] {
        std::unique_ptr<Result> owned(r);
        if constexpr (std::is_same_v<Result, handshake_result>) {
            l.deliver(std::move(*owned));
        } else {
            l.upstream(std::move(*owned));
        }
    });
    if (!posted) delete r;
    return posted;
}

void handshake_service::conn::finish_record_layer() {
    if (io_ != handshake_io::socket) return;
    ktls::directions d = tls_->finish_on_socket(fd_, svc_.allow_rx_);
    if (d.tx) svc_.kernel_tx_.fetch_add(1, std::memory_order_relaxed);
    if (d.rx) svc_.kernel_rx_.fetch_add(1, std::memory_order_relaxed);
}

void handshake_service::conn::flush_then_hand_back() {
    phase_ = phase::flushing;
    std::string why;
    if (!flush(&why)) {
        // Decided and audited already; the connection is dead anyway.
        RPCGATE_LOG(tls, info, "{}conn {} ({}): {}", server() ? "" : "backend ", id_, peer_, why);
        if (!server()) post_upstream(upstream_result::kind::failed, nullptr, {}, why);
        return close_fd();
    }
    if (!out_.empty()) {
        events_ = POLLOUT;
        return;
    }
    ::fcntl(fd_, F_SETFL, fd_flags_);
    if (server()) {
        hand_back_server();
    } else {
        hand_back_client();
    }
}

bool handshake_service::conn::flush(std::string* why) {
    while (!out_.empty()) {
        iovec iov[16];
        size_t n = out_.to_iovec(iov, 16);
        msghdr m{};
        m.msg_iov = iov;
        m.msg_iovlen = n;
        ssize_t sent = ::sendmsg(fd_, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
            *why = std::string("connection error: ") + std::strerror(errno);
            return false;
        }
        out_.trim_front(size_t(sent));
    }
    return true;
}

handshake_service::conn::rd handshake_service::conn::read_some(core::slice* got, std::string* why) {
    uint8_t buf[16 * 1024];
    ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
        *got = core::slice::copy_of(buf, size_t(n));
        return rd::data;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return rd::again;
    eof_err_ = n == 0 ? 0 : -errno;
    *why = n == 0 ? std::string("client closed during the handshake")
                  : std::string("connection error: ") + std::strerror(errno);
    return rd::eof;
}

void handshake_service::conn::linger() {
    phase_ = phase::lingering;
    deadline_ms_ = core::monotonic_ms() + k_linger_ms;
    shut_ = false;
    linger_step();
}

void handshake_service::conn::linger_step() {
    std::string why;
    if (!flush(&why)) return close_fd();
    if (!out_.empty()) {
        events_ = POLLOUT;
        return;
    }
    if (!shut_) {
        shut_ = true;
        ::shutdown(fd_, SHUT_WR);
    }
    for (;;) {
        core::slice got;
        switch (read_some(&got, &why)) {
            case rd::again:
                events_ = POLLIN;
                return;
            case rd::eof:
                return close_fd();
            case rd::data:
                break;
        }
    }
}

void handshake_service::conn::close_fd() {
    if (phase_ == phase::over) return;
    phase_ = phase::over;
    ::close(fd_);
    if (server()) svc_.open_->fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace rpcgate::tls
