#include "tls/handshake_service.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/log.h"
#include "core/timer_wheel.h"
#include "tls/handshake_conn.h"

namespace rpcgate::tls {

using core::bump;

handshake_service::handshake_service(const context* ctx, uint32_t deadline_ms,
                                     std::atomic<uint32_t>* open_connections)
    : ctx_(ctx), deadline_ms_(deadline_ms), open_(open_connections) {
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

handshake_service::~handshake_service() {
    stop();
    wait();
    if (wake_fd_ >= 0) ::close(wake_fd_);
}

core::mailbox& handshake_service::make_inbox() {
    inboxes_.push_back(std::make_unique<core::mailbox>(wake_fd_, 64));
    return *inboxes_.back();
}

void handshake_service::attach(core::shard& sh, deliver_fn deliver, upstream_fn upstream) {
    inboxes_.push_back(std::make_unique<core::mailbox>(wake_fd_, 4096));
    links_.push_back(
        link{inboxes_.back().get(), &sh.make_inbox(4096), std::move(deliver), std::move(upstream)});
}

std::string handshake_service::start() {
    if (wake_fd_ < 0) return std::string("eventfd: ") + std::strerror(errno);
    thread_ = std::thread([this] { run(); });
    return {};
}

void handshake_service::stop() {
    stop_.store(true);
    uint64_t one = 1;
    if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
}

void handshake_service::wait() {
    if (thread_.joinable()) thread_.join();
}

bool handshake_service::submit(unsigned shard_index, int fd, core::conn_id id, std::string peer,
                               core::slice_chain&& early) {
    bump(counters_.started);
    if (stop_.load()) {
        bump(counters_.rejected_busy);
        return false;
    }
    auto* c = new conn(*this, shard_index, fd, id, std::move(peer));
    auto* chain = new core::slice_chain(std::move(early));
    bool ok = links_[shard_index].to_control->try_post([this, c, chain] {
        std::unique_ptr<core::slice_chain> owned(chain);
        begin(std::unique_ptr<conn>(c), std::move(*owned));
    });
    if (!ok) {
        delete c;
        delete chain;
        bump(counters_.rejected_busy);
    }
    return ok;
}

bool handshake_service::submit_upstream(unsigned shard_index, upstream_request&& r) {
    bump(upstream_counters_.started);
    if (stop_.load()) {
        bump(upstream_counters_.rejected_busy);
        return false;
    }
    auto* c = new conn(*this, shard_index, std::make_unique<upstream_request>(std::move(r)));
    bool ok = links_[shard_index].to_control->try_post(
        [this, c] { begin(std::unique_ptr<conn>(c), {}); });
    if (!ok) {
        delete c;
        bump(upstream_counters_.rejected_busy);
    }
    return ok;
}

void handshake_service::begin(std::unique_ptr<conn> c, core::slice_chain&& early) {
    if (stop_.load()) {
        // Stopping: what was still queued is cut (a backend socket's link
        // learns nothing more: its shard is stopping too).
        ::close(c->fd());
        if (c->server()) open_->fetch_sub(1, std::memory_order_relaxed);
        return;
    }
    c->start(std::move(early));
    if (!c->over()) live_.push_back(std::move(c));
}

size_t handshake_service::drain_inboxes() {
    size_t n = 0;
    for (auto& box : inboxes_) n += box->drain();
    return n;
}

void handshake_service::run() {
    std::vector<pollfd> pfds;
    while (!stop_.load()) {
        uint64_t now = core::monotonic_ms();
        int timeout = -1;
        pfds.clear();
        pfds.push_back({wake_fd_, POLLIN, 0});
        for (const auto& c : live_) {
            pfds.push_back({c->fd(), c->events(), 0});
            int left = c->deadline_ms() > now ? int(c->deadline_ms() - now) : 0;
            timeout = timeout < 0 ? left : std::min(timeout, left);
        }
        int n = ::poll(pfds.data(), pfds.size(), timeout);
        if (n < 0 && errno != EINTR) {
            RPCGATE_LOG(tls, error, "handshake thread: poll: {}", std::strerror(errno));
            break;
        }
        now = core::monotonic_ms();
        // The fds polled are live_[0, polled); new ones start at once in begin().
        size_t polled = live_.size();
        for (size_t i = 0; i < polled; ++i) {
            conn& c = *live_[i];
            if (n > 0 && pfds[i + 1].revents) {
                c.on_ready();
            } else if (now >= c.deadline_ms()) {
                c.on_deadline();
            }
        }
        if (n > 0 && pfds[0].revents) {
            uint64_t v;
            (void)!::read(wake_fd_, &v, sizeof v);
            drain_inboxes();
        }
        live_.erase(std::remove_if(live_.begin(), live_.end(),
                                   [](const std::unique_ptr<conn>& c) { return c->over(); }),
                    live_.end());
    }
    // Stopping: what is still handshaking is cut, and so is what was queued.
    drain_inboxes();
    for (auto& c : live_) c->cut();
    live_.clear();
}

}  // namespace rpcgate::tls
