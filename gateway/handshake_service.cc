#include "gateway/handshake_service.h"

#include <unistd.h>

#include "core/log.h"

namespace rpcgate::gw {

using core::bump;

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

void audit_upstream(core::conn_id id, const std::string& target, const char* verdict,
                    const tls::session* t, const std::string& why) {
    RPCGATE_LOG(audit, info,
                "backend conn {} server {} tls {}: flags={} version={} cipher={} alpn={} "
                "subject=\"{}\"{}{}",
                id, target, verdict, t ? tls::flags_text(t->flags()) : "-", t ? t->version() : "-",
                t ? t->cipher() : "-", t && !t->alpn().empty() ? t->alpn() : "-",
                t ? t->peer_subject() : "", why.empty() ? "" : " reason=", why);
}

void audit_handshake(core::conn_id id, const std::string& peer, const char* verdict,
                     const tls::session& t, const std::optional<tls::identity>& certuser,
                     const std::string& error) {
    RPCGATE_LOG(audit, info,
                "conn {} peer {} tls {}: flags={} version={} cipher={} alpn={} subject=\"{}\"{}{}{}",
                id, peer, verdict, tls::flags_text(t.flags()), t.version(), t.cipher(),
                t.alpn().empty() ? "-" : t.alpn(), t.peer_subject(),
                certuser ? fmt::format(" certuser={}:{}", certuser->uid, certuser->gid) : "",
                error.empty() ? "" : " reason=", error);
}

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
        record_success(svc_.counters_, core::monotonic_ms() - started_ms_);
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

    void audit(const char* verdict) { audit_handshake(id_, peer_, verdict, *tls_, certuser_, error_); }

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

// One backend connection going through the probe and the client handshake
// on the control thread.
class handshake_service::upstream_conn final : public core::stream_handler {
public:
    upstream_conn(handshake_service& svc, unsigned from, upstream_request&& r)
        : svc_(svc),
          from_(from),
          req_(std::move(r)),
          cs_(client::session_params{client::tls_mode::starttls, req_.ctx, req_.prog, req_.vers}) {
        started_ms_ = core::monotonic_ms();
        deadline_.set_callback(
            [](core::timer*, void* arg) {
                auto* c = static_cast<upstream_conn*>(arg);
                bump(c->svc_.upstream_counters_.timed_out);
                c->fail(fmt::format("no STARTTLS reply and handshake within {} ms",
                                    c->svc_.deadline_ms_));
            },
            this);
        svc_.control_->timers().arm(deadline_, svc_.deadline_ms_);
    }

    void begin(core::stream* st) {
        stream_ = st;
        core::slice_chain out;
        client::session_state state = cs_.start(out);
        if (!out.empty()) stream_->send(std::move(out));
        advance(state, {});
    }

    void on_data(core::stream&, core::slice data) override {
        if (done_) return;
        core::slice_chain out, plain;
        // Copied: nothing of the control thread's receive ring may travel to
        // the shard inside the session.
        client::session_state state =
            cs_.on_bytes(core::slice::copy_of(data.data(), data.size()), out, plain);
        if (!out.empty()) stream_->send(std::move(out));
        advance(state, std::move(plain));
    }

    void on_eof(core::stream&, int err) override {
        if (done_) return;
        advance(cs_.on_eof(err), {});
    }

    void on_closed(core::stream&, int) override {
        bump(svc_.upstream_counters_.in_progress, uint64_t(-1));
        delete this;
    }

private:
    void advance(client::session_state state, core::slice_chain&& plain) {
        early_.append(std::move(plain));
        switch (state) {
            case client::session_state::probing:
            case client::session_state::handshaking:
                return;
            case client::session_state::ready:
                finish(upstream_result::kind::tls, "");
                return;
            case client::session_state::refused:
                if (req_.opportunistic) {
                    bump(svc_.upstream_refused_);
                    finish(upstream_result::kind::plaintext, cs_.error());
                    return;
                }
                bump(svc_.upstream_counters_.failed);
                fail(cs_.error() + " (upstream TLS is required)");
                return;
            case client::session_state::failed:
            case client::session_state::closed:
                bump(svc_.upstream_counters_.failed);
                fail(cs_.error().empty() ? "the server closed the connection" : cs_.error());
                return;
        }
    }

    void finish(upstream_result::kind k, std::string reason) {
        done_ = true;
        deadline_.cancel();
        if (k == upstream_result::kind::tls)
            record_success(svc_.upstream_counters_, core::monotonic_ms() - started_ms_);
        audit(k == upstream_result::kind::tls ? "established" : "plaintext", reason);
        // The last flight (client Finished) must leave before the socket moves.
        stream_->detach([this, k, reason = std::move(reason)](int fd, core::slice_chain&& unread) {
            std::unique_ptr<tls::session> tls = cs_.release_tls();
            core::slice_chain early;
            for (const core::slice& p : early_) early.push_back(core::slice::copy_of(p.data(), p.size()));
            if (!unread.empty()) {
                if (tls) {
                    // Raw TLS bytes the session has not seen: it reads them on the shard.
                    tls->feed(core::slice::copy_of(unread.to_string()));
                } else {
                    for (const core::slice& p : unread)
                        early.push_back(core::slice::copy_of(p.data(), p.size()));
                }
            }
            post(k, fd, std::move(tls), std::move(early), reason);
        });
    }

    void fail(const std::string& why) {
        if (done_) return;
        done_ = true;
        deadline_.cancel();
        if (cs_.tls()) cs_.tls()->add_flags(tls::flag_handshfail);
        audit("refused", why);
        post(upstream_result::kind::failed, -1, nullptr, {}, why);
        stream_->close_after_send(200);  // let an alert go out
    }

    void post(upstream_result::kind k, int fd, std::unique_ptr<tls::session> tls,
              core::slice_chain&& early, const std::string& reason) {
        handshake_service& svc = svc_;
        unsigned from = from_;
        uint64_t token = req_.token;
        auto* sess = tls.release();
        auto* chain = new core::slice_chain(std::move(early));
        bool posted = svc.links_[from].to_shard->try_post([&svc, from, k, token, fd, sess, chain,
                                                           reason] {
            upstream_result r;
            r.outcome = k;
            r.token = token;
            r.fd = fd;
            r.session.reset(sess);
            r.early = std::move(*chain);
            delete chain;
            r.reason = reason;
            svc.links_[from].upstream(std::move(r));
        });
        if (!posted) {
            // The shard's mailbox is full: it is overloaded. The link waits
            // for its connect timer, which fails it.
            RPCGATE_LOG(tls, warn, "backend conn {} ({}): shard {} mailbox full: closing",
                        req_.id, req_.target, from);
            delete sess;
            delete chain;
            if (fd >= 0) ::close(fd);
        }
    }

    void audit(const char* verdict, const std::string& why) {
        audit_upstream(req_.id, req_.target, verdict, cs_.tls(), why);
    }

    handshake_service& svc_;
    unsigned from_;
    upstream_request req_;
    client::client_session cs_;
    core::stream* stream_ = nullptr;
    core::timer deadline_;
    uint64_t started_ms_ = 0;
    bool done_ = false;
    core::slice_chain early_;
};

handshake_service::handshake_service(const tls::context* ctx, uint32_t deadline_ms,
                                     std::atomic<uint32_t>* open_connections)
    : ctx_(ctx), deadline_ms_(deadline_ms), open_(open_connections) {
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

void handshake_service::attach(core::shard& sh, deliver_fn deliver, upstream_fn upstream) {
    link l;
    l.upstream = std::move(upstream);
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

bool handshake_service::submit_upstream(unsigned shard_index, upstream_request&& r) {
    bump(upstream_counters_.started);
    auto* req = new upstream_request(std::move(r));
    bool ok = links_[shard_index].to_control->try_post([this, shard_index, req] {
        std::unique_ptr<upstream_request> owned(req);
        bump(upstream_counters_.in_progress);
        int fd = owned->fd;
        auto* c = new upstream_conn(*this, shard_index, std::move(*owned));
        c->begin(control_->adopt(fd, c));
    });
    if (!ok) {
        delete req;
        bump(upstream_counters_.rejected_busy);
    }
    return ok;
}

void handshake_service::begin(unsigned from, int fd, core::conn_id id, std::string peer,
                              core::slice_chain&& early) {
    std::string err = "no server TLS context";
    const tls::context* ctx = ctx_.load();
    auto s = ctx ? tls::session::make(*ctx, &err) : nullptr;
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
