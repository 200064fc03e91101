#include "gateway/ktls_handshaker.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/log.h"
#include "core/timer_wheel.h"
#include "tls/ktls.h"
#include "tls/client/starttls_client.h"

namespace rpcgate::gw {

using core::bump;

// One handshake in progress on this thread.
struct ktls_handshaker::conn {
    unsigned from = 0;
    int fd = -1;
    int fd_flags = 0;  // as the shard had them; restored on hand-back
    core::conn_id id;
    std::string peer;
    std::unique_ptr<tls::session> tls;
    std::optional<tls::identity> certuser;
    uint64_t started_ms = 0;
    uint64_t deadline_ms = 0;
    short events = POLLIN;
    bool checked = false;  // the first byte was seen to be a TLS handshake record
    // Client role only: the request, the probe exchange, what is left to send.
    std::unique_ptr<upstream_request> up;
    std::unique_ptr<client::starttls_client> probe;
    core::slice probe_out;
    size_t probe_sent = 0;
    bool probe_answered = false;
    handshake_counters& counters(handshake_service& svc) const {
        return up ? svc.upstream_counters_ : svc.counters_;
    }
};

namespace {

// One step of a socket handshake: 0 waiting (c.events says for what), 1 done,
// -1 failed (the session's error_text says why).
template <typename Conn>
int handshake_progress(Conn& c) {
    switch (c.tls->socket_handshake()) {
        case tls::ktls::step::want_read: c.events = POLLIN; return 0;
        case tls::ktls::step::want_write: c.events = POLLOUT; return 0;
        case tls::ktls::step::done: return 1;
        case tls::ktls::step::error: break;
    }
    return -1;
}

}  // namespace

ktls_handshaker::ktls_handshaker(handshake_service& svc, bool allow_rx)
    : svc_(svc), allow_rx_(allow_rx) {
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

ktls_handshaker::~ktls_handshaker() {
    stop();
    wait();
    if (wake_fd_ >= 0) ::close(wake_fd_);
}

void ktls_handshaker::attach(core::shard& sh, deliver_fn deliver, upstream_fn upstream) {
    links_.push_back(link{&sh.make_inbox(4096), std::move(deliver), std::move(upstream)});
}

std::string ktls_handshaker::start() {
    if (wake_fd_ < 0) return std::string("eventfd: ") + std::strerror(errno);
    thread_ = std::thread([this] { run(); });
    return {};
}

void ktls_handshaker::stop() {
    stop_.store(true);
    uint64_t one = 1;
    if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
}

void ktls_handshaker::wait() {
    if (thread_.joinable()) thread_.join();
}

bool ktls_handshaker::submit(unsigned shard_index, int fd, core::conn_id id, std::string peer,
                             core::slice_chain&& early) {
    bump(svc_.counters_.started);
    {
        std::lock_guard g(mu_);
        if (queue_.size() >= k_max_queue || stop_.load()) {
            bump(svc_.counters_.rejected_busy);
            return false;
        }
        queue_.push_back(request{shard_index, fd, id, std::move(peer), early.to_string(), nullptr});
    }
    uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);  // EAGAIN: already signalled
    return true;
}

bool ktls_handshaker::submit_upstream(unsigned shard_index, upstream_request&& r) {
    bump(svc_.upstream_counters_.started);
    {
        std::lock_guard g(mu_);
        if (queue_.size() >= k_max_queue || stop_.load()) {
            bump(svc_.upstream_counters_.rejected_busy);
            return false;
        }
        request q;
        q.from = shard_index;
        q.fd = r.fd;
        q.id = r.id;
        q.up = std::make_unique<upstream_request>(std::move(r));
        queue_.push_back(std::move(q));
    }
    uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
    return true;
}

void ktls_handshaker::run() {
    std::vector<std::unique_ptr<conn>> live;
    std::vector<pollfd> pfds;
    std::vector<request> taken;
    while (!stop_.load()) {
        uint64_t now = core::monotonic_ms();
        int timeout = -1;
        pfds.clear();
        pfds.push_back({wake_fd_, POLLIN, 0});
        for (const auto& c : live) {
            pfds.push_back({c->fd, c->events, 0});
            int left = c->deadline_ms > now ? int(c->deadline_ms - now) : 0;
            timeout = timeout < 0 ? left : std::min(timeout, left);
        }
        int n = ::poll(pfds.data(), pfds.size(), timeout);
        if (n < 0 && errno != EINTR) {
            RPCGATE_LOG(tls, error, "kTLS handshake thread: poll: {}", std::strerror(errno));
            break;
        }
        now = core::monotonic_ms();
        // The fds polled are live[0, polled); new ones are stepped at once.
        size_t polled = live.size();
        for (size_t i = 0; i < polled; ++i) {
            conn& c = *live[i];
            short re = n > 0 ? pfds[i + 1].revents : 0;
            bool go_on = true;
            if (re) {
                go_on = c.up ? step_upstream(c) : step(c);
            } else if (now >= c.deadline_ms) {
                bump(c.counters(svc_).timed_out);
                if (c.up) {
                    fail_upstream(c, fmt::format("no STARTTLS reply and handshake within {} ms",
                                                 svc_.deadline_ms_));
                } else {
                    fail(c, fmt::format("no handshake within {} ms", svc_.deadline_ms_));
                }
                go_on = false;
            }
            if (!go_on) live[i].reset();
        }
        if (n > 0 && pfds[0].revents) {
            uint64_t v;
            (void)!::read(wake_fd_, &v, sizeof v);
            {
                std::lock_guard g(mu_);
                taken.swap(queue_);
            }
            for (request& r : taken) {
                std::unique_ptr<conn> c = begin(std::move(r));
                if (c && (c->up ? step_upstream(*c) : step(*c))) live.push_back(std::move(c));
            }
            taken.clear();
        }
        live.erase(std::remove(live.begin(), live.end(), nullptr), live.end());
    }
    // Stopping: what is still handshaking is cut, and so is what was queued.
    {
        std::lock_guard g(mu_);
        taken.swap(queue_);
    }
    // (A backend socket's link learns nothing more: its shard is stopping.)
    for (request& r : taken) {
        ::close(r.fd);
        if (!r.up) svc_.open_->fetch_sub(1, std::memory_order_relaxed);
    }
    for (auto& c : live) {
        ::close(c->fd);
        if (!c->up) svc_.open_->fetch_sub(1, std::memory_order_relaxed);
        bump(c->counters(svc_).in_progress, uint64_t(-1));
    }
}

std::unique_ptr<ktls_handshaker::conn> ktls_handshaker::begin(request&& r) {
    auto c = std::make_unique<conn>();
    c->from = r.from;
    c->fd = r.fd;
    c->id = r.id;
    c->peer = std::move(r.peer);
    c->started_ms = core::monotonic_ms();
    c->deadline_ms = c->started_ms + svc_.deadline_ms_;
    c->fd_flags = ::fcntl(c->fd, F_GETFL);
    // handshake_step needs a non-blocking socket: this thread waits in poll.
    ::fcntl(c->fd, F_SETFL, c->fd_flags | O_NONBLOCK);
    if (r.up) {
        c->up = std::move(r.up);
        c->peer = c->up->target;
        c->probe = std::make_unique<client::starttls_client>();
        c->probe_out = c->probe->start(c->up->prog, c->up->vers);
        c->events = POLLOUT;
        bump(svc_.upstream_counters_.in_progress);
        return c;
    }
    std::string err = "no server TLS context";
    const tls::context* ctx = svc_.ctx_.load();
    c->tls = ctx ? tls::session::make_on_socket(*ctx, c->fd, r.early, &err) : nullptr;
    if (!c->tls) {
        RPCGATE_LOG(tls, error, "conn {}: cannot create a TLS session: {}", c->id, err);
        bump(svc_.counters_.failed);
        ::close(c->fd);
        svc_.open_->fetch_sub(1, std::memory_order_relaxed);
        return nullptr;
    }
    bump(svc_.counters_.in_progress);
    if (!r.early.empty()) {
        c->checked = true;
        if (static_cast<uint8_t>(r.early[0]) != 0x16) {
            bump(svc_.counters_.not_tls);
            fail(*c, "bytes after the probe are not a TLS handshake: dropped");
            return nullptr;
        }
    }
    return c;
}

bool ktls_handshaker::step(conn& c) {
    if (!c.checked) {
        // RFC 9289 §5.1.1: after STARTTLS the next bytes must be a TLS
        // handshake record (content type 22). Peeked: OpenSSL reads it next.
        uint8_t first = 0;
        ssize_t r = ::recv(c.fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            c.events = POLLIN;
            return true;
        }
        if (r == 0) {
            fail(c, "client closed during the handshake");
            return false;
        }
        if (r < 0) {
            fail(c, std::string("connection error: ") + std::strerror(errno));
            return false;
        }
        c.checked = true;
        if (first != 0x16) {
            bump(svc_.counters_.not_tls);
            fail(c, "bytes after the probe are not a TLS handshake: dropped");
            return false;
        }
    }
    int h = handshake_progress(c);
    if (h == 0) return true;
    if (h < 0) {
        fail(c, c.tls->error_text().empty() ? "handshake failed (client closed?)"
                                            : c.tls->error_text());
        return false;
    }
    succeed(c);
    return false;
}

void ktls_handshaker::fail(conn& c, const std::string& why) {
    bump(svc_.counters_.failed);
    c.tls->add_flags(tls::flag_handshfail);
    audit_handshake(c.id, c.peer, "refused", *c.tls, c.certuser, why);
    // An alert OpenSSL made went straight to the socket; FIN after it.
    ::shutdown(c.fd, SHUT_WR);
    ::close(c.fd);
    svc_.open_->fetch_sub(1, std::memory_order_relaxed);
    bump(svc_.counters_.in_progress, uint64_t(-1));
}

void ktls_handshaker::succeed(conn& c) {
    record_success(svc_.counters_, core::monotonic_ms() - c.started_ms);
    const tls::identity_map* map = svc_.map_.load();
    if (map && (c.tls->flags() & tls::flag_verified)) {
        c.certuser = map->lookup(c.tls->native());
        if (c.certuser) c.tls->add_flags(tls::flag_certuser);
    }
    tls::ktls::directions d = c.tls->finish_on_socket(c.fd, allow_rx_);
    if (d.tx) kernel_tx_.fetch_add(1, std::memory_order_relaxed);
    if (d.rx) kernel_rx_.fetch_add(1, std::memory_order_relaxed);
    audit_handshake(c.id, c.peer, "accepted", *c.tls, c.certuser, "");
    RPCGATE_LOG(tls, debug, "conn {}: record layer: tx {}, rx {}", c.id,
                d.tx ? "kernel" : "userspace", d.rx ? "kernel" : "userspace");
    ::fcntl(c.fd, F_SETFL, c.fd_flags);
    bump(svc_.counters_.in_progress, uint64_t(-1));
    // Raw pointers through the mailbox: a refused post must not have
    // consumed what it carried.
    auto* r = new handshake_result;
    r->fd = c.fd;
    r->id = c.id;
    r->peer = c.peer;
    r->session = std::move(c.tls);
    r->certuser = c.certuser;
    link& l = links_[c.from];
    bool posted = l.to_shard->try_post([&l, r] {
        std::unique_ptr<handshake_result> owned(r);
        l.deliver(std::move(*owned));
    });
    if (!posted) {
        RPCGATE_LOG(tls, warn, "conn {} ({}): shard {} mailbox full: closing", c.id, c.peer,
                    c.from);
        ::close(r->fd);
        delete r;
        svc_.open_->fetch_sub(1, std::memory_order_relaxed);
    }
}

bool ktls_handshaker::step_upstream(conn& c) {
    if (c.probe_sent < c.probe_out.size()) {
        ssize_t n = ::send(c.fd, c.probe_out.data() + c.probe_sent,
                           c.probe_out.size() - c.probe_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            c.events = POLLOUT;
            return true;
        }
        if (n < 0) {
            bump(svc_.upstream_counters_.failed);
            fail_upstream(c, std::string("sending the probe: ") + std::strerror(errno));
            return false;
        }
        c.probe_sent += size_t(n);
        c.events = POLLIN;
        return true;  // the reply comes later
    }
    if (!c.probe_answered) {
        uint8_t buf[2048];
        ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
        client::probe_outcome o = n > 0 ? c.probe->on_bytes(core::slice::copy_of(buf, size_t(n)))
                                        : c.probe->on_eof(n == 0 ? 0 : -errno);
        if (o == client::probe_outcome::pending) return true;
        c.probe_answered = true;
        const std::string& reason = c.probe->result().reason;
        if (o == client::probe_outcome::refused && c.up->opportunistic) {
            bump(svc_.upstream_refused_);
            audit_upstream(c.up->id, c.up->target, "plaintext", nullptr, reason);
            post_upstream(c, upstream_result::kind::plaintext, nullptr, c.probe->take_leftover(),
                          reason);
            return false;
        }
        if (o != client::probe_outcome::accepted) {
            bump(svc_.upstream_counters_.failed);
            fail_upstream(c, o == client::probe_outcome::refused
                                 ? reason + " (upstream TLS is required)"
                                 : reason);
            return false;
        }
        std::string early = c.probe->take_leftover().to_string();  // none, normally
        std::string err = "no client TLS context";
        c.tls = c.up->ctx ? tls::session::make_on_socket(*c.up->ctx, c.fd, early, &err) : nullptr;
        if (!c.tls) {
            bump(svc_.upstream_counters_.failed);
            fail_upstream(c, "cannot create a TLS session: " + err);
            return false;
        }
    }
    int h = handshake_progress(c);
    if (h == 0) return true;
    if (h < 0) {
        bump(svc_.upstream_counters_.failed);
        fail_upstream(c, c.tls->error_text().empty() ? "the server closed the connection"
                                                     : c.tls->error_text());
        return false;
    }
    record_success(svc_.upstream_counters_, core::monotonic_ms() - c.started_ms);
    tls::ktls::directions d = c.tls->finish_on_socket(c.fd, allow_rx_);
    if (d.tx) kernel_tx_.fetch_add(1, std::memory_order_relaxed);
    if (d.rx) kernel_rx_.fetch_add(1, std::memory_order_relaxed);
    audit_upstream(c.up->id, c.up->target, "established", c.tls.get(), "");
    RPCGATE_LOG(tls, debug, "backend conn {}: record layer: tx {}, rx {}", c.up->id,
                d.tx ? "kernel" : "userspace", d.rx ? "kernel" : "userspace");
    ::fcntl(c.fd, F_SETFL, c.fd_flags);
    post_upstream(c, upstream_result::kind::tls, std::move(c.tls), {}, "");
    return false;
}

void ktls_handshaker::fail_upstream(conn& c, const std::string& why) {
    if (c.tls) c.tls->add_flags(tls::flag_handshfail);
    audit_upstream(c.up->id, c.up->target, "refused", c.tls.get(), why);
    ::shutdown(c.fd, SHUT_WR);
    ::close(c.fd);
    c.fd = -1;
    post_upstream(c, upstream_result::kind::failed, nullptr, {}, why);
}

void ktls_handshaker::post_upstream(conn& c, upstream_result::kind k,
                                    std::unique_ptr<tls::session> tls, core::slice_chain&& early,
                                    const std::string& reason) {
    bump(svc_.upstream_counters_.in_progress, uint64_t(-1));
    auto* r = new upstream_result;
    r->outcome = k;
    r->token = c.up->token;
    r->fd = c.fd;
    r->session = std::move(tls);
    for (const core::slice& p : early) r->early.push_back(core::slice::copy_of(p.data(), p.size()));
    r->reason = reason;
    link& l = links_[c.from];
    bool posted = l.to_shard->try_post([&l, r] {
        std::unique_ptr<upstream_result> owned(r);
        l.upstream(std::move(*owned));
    });
    if (!posted) {
        // The shard's mailbox is full: the link waits for its connect timer.
        RPCGATE_LOG(tls, warn, "backend conn {} ({}): shard {} mailbox full: closing", c.up->id,
                    c.up->target, c.from);
        if (r->fd >= 0) ::close(r->fd);
        delete r;
    }
}

}  // namespace rpcgate::gw
