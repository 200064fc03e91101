#include "tools/gateway/handshake_service.h"

#include <unistd.h>

#include "core/log.h"

namespace rpcgate::gw {

using core::bump;

// One handshake in progress on the control thread.
class handshake_service::conn final : public core::stream_handler {
public:
    conn(handshake_service& svc, unsigned from, core::conn_id id, std::string peer,
         std::unique_ptr<tls::session> s)
        : svc_(svc), from_(from), id_(id), peer_(std::move(peer)), tls_(std::move(s)) {
        started_ms_ = core::monotonic_ms();
        deadline_.set_callback(
            [](core::timer*, void* arg) {
                auto* c = static_cast<conn*>(arg);
                bump(c->svc_.counters_.timed_out);
                c->fail(fmt::format("no handshake within {} ms", c->svc_.deadline_ms_));
            },
            this);
        svc_.control_->timers().arm(deadline_, svc_.deadline_ms_);
    }

    void attach(core::stream* st) { stream_ = st; }

    // Bytes from the client; they are copied so that nothing of the control
    // thread's receive ring travels to the shard inside the session.
    void on_data(core::stream& s, core::slice data) override {
        if (done_) return;
        if (!tls_checked_) {
            // RFC 9289 §5.1.1: after STARTTLS the next bytes must be a TLS
            // handshake record (content type 22); anything else is dropped.
            tls_checked_ = true;
            if (data.size() > 0 && data[0] != 0x16) {
                bump(svc_.counters_.not_tls);
                fail("bytes after the probe are not a TLS handshake: dropped");
                return;
            }
        }
        tls_->feed(core::slice::copy_of(data.data(), data.size()));
        step();
    }

    void on_eof(core::stream& s, int err) override {
        if (!done_) fail(err ? std::string("connection error: ") + std::strerror(-err)
                             : std::string("client closed during the handshake"));
    }

    void on_closed(core::stream&, int) override {
        bump(svc_.counters_.in_progress, uint64_t(-1));
        if (!handed_) svc_.open_->fetch_sub(1, std::memory_order_relaxed);
        delete this;
    }

    void step() {
        core::slice_chain out;
        tls::status st = tls_->handshake(out);
        if (!out.empty()) stream_->send(std::move(out));
        if (st == tls::status::ok) return;
        if (st != tls::status::done) {
            tls_->add_flags(tls::flag_handshfail);
            fail(tls_->error_text().empty() ? "handshake failed" : tls_->error_text());
            return;
        }
        done_ = true;
        deadline_.cancel();
        uint64_t ms = core::monotonic_ms() - started_ms_;
        bump(svc_.counters_.succeeded);
        bump(svc_.counters_.latency_us_sum, ms * 1000);
        for (size_t i = 0; i < handshake_counters::k_buckets; ++i) {
            if (ms <= handshake_counters::k_bucket_ms[i]) {
                bump(svc_.counters_.latency_buckets[i]);
                break;
            }
        }
        const tls::identity_map* map = svc_.map_.load();
        if (map && (tls_->flags() & tls::flag_verified)) {
            certuser_ = map->lookup(tls_->native());
            if (certuser_) tls_->add_flags(tls::flag_certuser);
        }
        audit("accepted");
        // The Finished flight must leave before the socket changes hands.
        stream_->detach([this](int fd, core::slice_chain&& unread) {
            if (!unread.empty()) tls_->feed(core::slice::copy_of(unread.to_string()));
            handed_ = hand_back(fd);
        });
    }

private:
    bool hand_back(int fd) {
        auto* sess = tls_.release();
        handshake_service& svc = svc_;
        unsigned from = from_;
        core::conn_id id = id_;
        std::string peer = peer_;
        std::optional<tls::identity> user = certuser_;
        bool posted = svc.links_[from].to_shard->try_post([&svc, from, fd, id, peer, sess, user] {
            handshake_result r;
            r.fd = fd;
            r.id = id;
            r.peer = peer;
            r.session.reset(sess);
            r.certuser = user;
            svc.links_[from].deliver(std::move(r));
        });
        if (!posted) {
            // The shard's mailbox is full: it is overloaded; drop this one.
            RPCGATE_LOG(tls, warn, "conn {} ({}): shard {} mailbox full: closing", id, peer, from);
            delete sess;
            ::close(fd);
        }
        return posted;
    }

    void fail(const std::string& why) {
        if (done_) return;
        done_ = true;
        deadline_.cancel();
        bump(svc_.counters_.failed);
        error_ = why;
        tls_->add_flags(tls::flag_handshfail);
        audit("refused");
        stream_->close_after_send(200);  // let an alert go out
    }

    void audit(const char* verdict) {
        RPCGATE_LOG(audit, info,
                    "conn {} peer {} tls {}: flags={} version={} cipher={} alpn={} subject=\"{}\"{}{}{}",
                    id_, peer_, verdict, tls::flags_text(tls_->flags()), tls_->version(),
                    tls_->cipher(), tls_->alpn().empty() ? "-" : tls_->alpn(),
                    tls_->peer_subject(),
                    certuser_ ? fmt::format(" certuser={}:{}", certuser_->uid, certuser_->gid) : "",
                    error_.empty() ? "" : " reason=", error_);
    }

    handshake_service& svc_;
    unsigned from_;
    core::conn_id id_;
    std::string peer_;
    std::unique_ptr<tls::session> tls_;
    core::stream* stream_ = nullptr;
    core::timer deadline_;
    uint64_t started_ms_ = 0;
    bool done_ = false;
    bool tls_checked_ = false;
    bool handed_ = false;
    std::optional<tls::identity> certuser_;
    std::string error_;
};

handshake_service::handshake_service(const tls::context& ctx, uint32_t deadline_ms,
                                     std::atomic<uint32_t>* open_connections)
    : ctx_(&ctx), deadline_ms_(deadline_ms), open_(open_connections) {
    core::shard_config cfg;
    cfg.index = 1000;  // not a data shard; only for logs
    cfg.buffer_count = 256;
    cfg.buffer_size = 16 * 1024;
    control_ = std::make_unique<core::shard>(cfg);
}

handshake_service::~handshake_service() {
    stop();
    wait();
}

void handshake_service::attach(core::shard& sh, deliver_fn deliver) {
    link l;
    l.sh = &sh;
    l.to_control = &control_->make_inbox(4096);
    l.to_shard = &sh.make_inbox(4096);
    l.deliver = std::move(deliver);
    links_.push_back(std::move(l));
}

std::string handshake_service::start() { return control_->start({}); }

void handshake_service::stop() {
    if (control_) control_->force_exit();
}

void handshake_service::wait() {
    if (control_) control_->join();
}

bool handshake_service::submit(unsigned shard_index, int fd, core::conn_id id, std::string peer,
                               core::slice_chain&& early) {
    bump(counters_.started);
    auto* chain = new core::slice_chain(std::move(early));
    bool ok = links_[shard_index].to_control->try_post(
        [this, shard_index, fd, id, peer = std::move(peer), chain]() mutable {
            std::unique_ptr<core::slice_chain> owned(chain);
            begin(shard_index, fd, id, std::move(peer), std::move(*owned));
        });
    if (!ok) {
        delete chain;
        bump(counters_.rejected_busy);
    }
    return ok;
}

void handshake_service::begin(unsigned from, int fd, core::conn_id id, std::string peer,
                              core::slice_chain&& early) {
    std::string err;
    auto s = tls::session::make(*ctx_.load(), &err);
    if (!s) {
        RPCGATE_LOG(tls, error, "conn {}: cannot create a TLS session: {}", id, err);
        bump(counters_.failed);
        ::close(fd);
        open_->fetch_sub(1, std::memory_order_relaxed);
        return;
    }
    bump(counters_.in_progress);
    auto* c = new conn(*this, from, id, std::move(peer), std::move(s));
    core::stream* st = control_->adopt(fd, c);
    c->attach(st);
    for (const core::slice& part : early) {
        c->on_data(*st, part.share());
        if (!st->open()) break;
    }
}

}  // namespace rpcgate::gw
