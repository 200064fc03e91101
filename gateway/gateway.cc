#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <netinet/in.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "core/conn_id.h"
#include "core/log.h"
#include "dpdk/backend.h"
#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "rpc/portmap.h"
#include "rpc/record.h"
#include "rpc/xdr_codec.h"
#include "gateway/admin.h"
#include "tls/ktls.h"
#include "gateway/handshake_service.h"
#include "gateway/ktls_handshaker.h"
#include "gateway/source_limits.h"

namespace rpcgate::gw {

using core::bump;
using core::conn_id;
using core::slice;
using core::slice_chain;
using core::stream;

namespace {

std::string peer_text(const sockaddr_storage& ss) {
    char host[INET6_ADDRSTRLEN] = "?";
    uint16_t port = 0;
    if (ss.ss_family == AF_INET) {
        auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        return fmt::format("{}:{}", host, port);
    }
    if (ss.ss_family == AF_INET6) {
        auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
    }
    return fmt::format("[{}]:{}", host, port);
}

// "a.b.c.d:port" or "[v6]:port" (peer_text's output) back to an address;
// AF_UNSPEC when it is neither.
sockaddr_storage address_of(const std::string& text) {
    sockaddr_storage ss{};
    size_t colon = text.rfind(':');
    if (colon == std::string::npos) return ss;
    uint16_t port = uint16_t(std::strtoul(text.c_str() + colon + 1, nullptr, 10));
    if (text.front() == '[' && colon > 1 && text[colon - 1] == ']') {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        if (inet_pton(AF_INET6, text.substr(1, colon - 2).c_str(), &a->sin6_addr) == 1) {
            a->sin6_family = AF_INET6;
            a->sin6_port = htons(port);
        }
        return ss;
    }
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &a->sin_addr) == 1) {
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
    }
    return ss;
}

uint16_t local_port(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
    endpoint ep;
    ep.addr = ss;
    return ep.port();
}

// Record marks for forwarded records, carved four bytes at a time out of a
// shared block so that forwarding a record does not allocate.
class mark_arena {
public:
    slice mark(uint32_t payload_len) {
        if (used_ + 4 > k_block) {
            block_ = slice::allocate(k_block);
            used_ = 0;
        }
        rpc::store_be32(block_.mutable_data() + used_, rpc::record_last_fragment | payload_len);
        slice s = block_.share(used_, 4);
        used_ += 4;
        return s;
    }

private:
    static constexpr size_t k_block = 4096;
    slice block_;
    size_t used_ = k_block;
};

}  // namespace

class session;

// A backend link waiting for the control thread to take it through the
// RFC 9289 probe and client handshake.
class upstream_waiter {
public:
    virtual void on_upstream(upstream_result&& r) = 0;

protected:
    ~upstream_waiter() = default;
};

class shard_context final : public core::listener_handler {
public:
    shard_context(const gateway_config& cfg, core::shard& sh, std::atomic<uint32_t>& open)
        : cfg_(cfg), sh_(sh), open_(open) {
        drain_timer_.set_callback(&shard_context::on_drain_deadline, this);
        implicit_.ctx = this;
        source_limits_config lc;
        lc.max_connections_per_source = cfg.max_connections_per_source;
        lc.handshakes_per_second = cfg.handshake_rate_per_source;
        lc.handshake_burst = cfg.handshake_burst_per_source;
        if (lc.enabled()) limits_ = std::make_unique<source_limits>(lc.for_shard(cfg.shards));
    }

    void on_accept(core::shard& s, int fd, const sockaddr_storage& peer) override;
    void on_stop();
    // A connection whose TLS handshake completed on the control thread.
    void deliver(handshake_result&& r);
    // A backend connection back from the control thread (client role).
    void deliver_upstream(upstream_result&& r);
    // Links waiting for deliver_upstream, by token.
    uint64_t wait_upstream(upstream_waiter* w) {
        uint64_t t = ++next_token_;
        waiting_.emplace(t, w);
        return t;
    }
    void forget_upstream(uint64_t token) { waiting_.erase(token); }
    // Takes a slot of --max-connections and of the source's share; false (and
    // counted) when either is full. The source's slot is given back with
    // release_source() (the session does it when it ends).
    bool admit(const sockaddr_storage& peer);
    // Per-source limits: the source's connection slot, again (a connection
    // back from the control thread); a token for a TLS handshake.
    bool admit_source(const sockaddr_storage& peer);
    bool allow_handshake(const sockaddr_storage& peer);
    void release_source(const sockaddr_storage& peer) {
        if (limits_) limits_->on_close(peer);
    }
    std::unique_ptr<source_limits> limits_;  // null: no per-source limits

    // Accepts on --implicit-tls listeners: straight to the control thread.
    struct implicit_acceptor final : core::listener_handler {
        shard_context* ctx = nullptr;
        void on_accept(core::shard& s, int fd, const sockaddr_storage& peer) override;
    };
    implicit_acceptor implicit_;
    handshake_service* hs_ = nullptr;
    ktls_handshaker* khs_ = nullptr;  // set: server-role handshakes go there
    // Hands a connection to whichever thread runs server handshakes.
    bool submit_handshake(int fd, conn_id id, std::string peer, slice_chain&& early) {
        if (khs_) return khs_->submit(sh_.index(), fd, id, std::move(peer), std::move(early));
        return hs_->submit(sh_.index(), fd, id, std::move(peer), std::move(early));
    }
    // Where each TLS connection's crypto runs, asked of the kernel (shard thread).
    tls::ktls::diag_socket diag_;

    const gateway_config& cfg_;
    core::shard& sh_;
    std::atomic<uint32_t>& open_;
    gateway_counters counters_;
    mark_arena marks_;
    // Per route (index in cfg.backends): connects, failures, losses.
    struct backend_health {
        std::atomic<uint64_t> connects{0}, failures{0}, lost{0}, open{0};
    };
    std::unique_ptr<backend_health[]> health_{new backend_health[cfg_.backends.size()]};
    std::string start_error_;
    session* sessions_ = nullptr;  // intrusive list of live sessions
    core::timer drain_timer_;
    // Per route: the client TLS context for upstream TLS (null: plaintext).
    // Swapped by reload(); the gateway keeps every one alive.
    const std::atomic<const tls::context*>* upstream_ctx_ = nullptr;

private:
    std::unordered_map<uint64_t, upstream_waiter*> waiting_;
    uint64_t next_token_ = 0;
    static void on_drain_deadline(core::timer*, void* arg);
};

// One client connection and the backend connections it opened.
class session final : public core::stream_handler {
    friend class shard_context;

public:
    // `peer` holds a slot of its source's limit (shard_context::admit), given
    // back when the session ends.
    session(shard_context& ctx, stream* client, const sockaddr_storage& peer)
        : session(ctx, client, core::next_conn_id(), peer_text(peer), nullptr) {
        peer_addr_ = peer;
    }

    // After a handshake on the control thread: same connection ID as before.
    session(shard_context& ctx, stream* client, handshake_result&& r)
        : session(ctx, client, r.id, std::move(r.peer), std::move(r.session)) {
        certuser_ = std::move(r.certuser);
    }

    session(shard_context& ctx, stream* client, conn_id id, std::string peer,
            std::unique_ptr<tls::session> tls)
        : ctx_(ctx),
          client_(client),
          id_(id),
          peer_(std::move(peer)),
          // A DPDK connection's fd is one end of a socketpair: no port there.
          own_port_(local_port(client->fd()) ? local_port(client->fd())
                                             : ctx.sh_.listen_port()),
          rr_(rpc::record_limits{ctx.cfg_.max_record, rpc::default_max_fragments}),
          links_(ctx.cfg_.backends.size()),
          tls_(std::move(tls)) {
        bump(ctx_.counters_.sessions_open);
        if (tls_) {
            bump(ctx_.counters_.tls_sessions);
            bump(ctx_.counters_.tls_open);
            prot_ = ctx_.diag_.query(client->fd());
            bump(ctx_.counters_.tls_protection_open[0][size_t(prot_.tx)]);
            bump(ctx_.counters_.tls_protection_open[1][size_t(prot_.rx)]);
        }
        next_ = ctx_.sessions_;
        if (next_) next_->prev_ = this;
        ctx_.sessions_ = this;
        last_activity_ = ctx_.sh_.now_ms();
        created_ms_ = last_activity_;
        idle_timer_.set_callback(&session::on_idle_timer, this);
        ktls_close_timer_.set_callback(
            [](core::timer*, void* arg) { static_cast<session*>(arg)->kernel_close_notify(); },
            this);
        tls_quiet_timer_.set_callback(
            [](core::timer*, void* arg) {
                auto* s = static_cast<session*>(arg);
                if (s->tls_ && s->client_ && s->client_->queued_bytes() == 0)
                    s->tls_->release_buffers();
            },
            this);
        if (ctx_.cfg_.idle_timeout_s)
            ctx_.sh_.timers().arm(idle_timer_, uint64_t(ctx_.cfg_.idle_timeout_s) * 1000);
        RPCGATE_LOG(gw, debug, "conn {} {} from {} on shard {}", id_,
                    tls_ ? "continues in TLS" : "accepted", peer_, ctx_.sh_.index());
    }

    ~session() override {
        if (prev_) prev_->next_ = next_;
        else ctx_.sessions_ = next_;
        if (next_) next_->prev_ = prev_;
        // A connection handed to the control thread lives on there.
        if (!handed_off_) ctx_.open_.fetch_sub(1, std::memory_order_relaxed);
        ctx_.release_source(peer_addr_);
        bump(ctx_.counters_.sessions_open, uint64_t(-1));
        if (tls_) {
            bump(ctx_.counters_.tls_open, uint64_t(-1));
            bump(ctx_.counters_.tls_protection_open[0][size_t(prot_.tx)], uint64_t(-1));
            bump(ctx_.counters_.tls_protection_open[1][size_t(prot_.rx)], uint64_t(-1));
        }
    }

    // ---- client side
    void on_data(stream& s, slice data) override {
        last_activity_ = ctx_.sh_.now_ms();
        bump(ctx_.counters_.bytes_from_clients, data.size());
        if (tls_ && tls_->kernel_rx()) {
            // The kernel decrypted it: plaintext, application data only.
            feed_plain(data);
            flush_tls();
            flush_links();
            return;
        }
        if (tls_) {
            tls_->feed(std::move(data));
            pump_tls();
            flush_tls();
            flush_links();
            return;
        }
        if (first_bytes_) {
            first_bytes_ = false;
            if (ctx_.cfg_.tls_auto && ctx_.hs_ && data.size() > 0 && data[0] == 0x16) {
                if (!ctx_.allow_handshake(peer_addr_)) {
                    terminate("TLS handshake rate of this source exceeded: closing", -EAGAIN);
                    return;
                }
                bump(ctx_.counters_.implicit_tls);
                starttls_ = true;
                early_.push_back(slice::copy_of(data.data(), data.size()));
                hand_off();
                return;
            }
        }
        feed_plain(data);
        flush_links();
    }

    // Calls for TLS backends are encrypted once per client receive batch.
    void flush_links() {
        if (!links_tls_dirty_) return;
        links_tls_dirty_ = false;
        for (auto& l : links_)
            if (l) l->flush();
    }

    // Decrypts what the TLS session holds and forwards the records in it.
    void pump_tls() {
        if (tls_->kernel_rx()) return;  // the socket yields plaintext itself
        // A TLS connection that goes quiet gives its buffers back (~50 KB ->
        // ~15 KB); re-arming an armed timer is two pointer swaps.
        ctx_.sh_.timers().arm(tls_quiet_timer_, k_tls_quiet_ms);
        slice_chain plain, out;
        tls::status st = tls_->read(plain, out);
        if (!out.empty() && client_) client_->send(std::move(out));
        for (const slice& p : plain) {
            if (terminating_ || !client_) return;
            feed_plain(p);
        }
        if (st == tls::status::closed) {
            // close_notify from the client: answer it and close.
            peer_done_ = true;
            finish_client();
        } else if (st == tls::status::error && tls_->key_update_refused()) {
            // Half kTLS (TX in the kernel): the client asked us to update
            // keys the kernel holds. close_notify under the old key, close.
            bump(ctx_.counters_.tls_key_update_closes);
            RPCGATE_LOG(gw, info, "conn {} ({}): {}: closing", id_, peer_, tls_->error_text());
            close_all(0);
        } else if (st == tls::status::error) {
            bump(ctx_.counters_.tls_errors);
            // A fatal error (a bad record, or a fatal alert from the client):
            // OpenSSL has put its own alert in `out` (half kTLS: sent through
            // the kernel's TX itself); RFC 8446 §6.2: no close_notify after it.
            tls_shut_ = true;
            terminate(fmt::format("TLS error: {}", tls_->error_text()), -EPROTO);
        }
    }

    void feed_plain(const slice& data) {
        auto r = rr_.feed(data, [this](slice_chain&& rec) { return on_client_record(std::move(rec)); });
        if (!r.ok()) {
            bump(ctx_.counters_.oversize);
            terminate(fmt::format("client sent a record over the limit ({}): closing",
                                  rpc::make_error_code(r.error()).message()),
                      -EMSGSIZE);
            return;
        }
        // After a probe, the rest of this buffer already belongs to TLS.
        if (starttls_ && *r < data.size())
            early_.push_back(slice::copy_of(data.data() + *r, data.size() - *r));
    }

    void on_eof(stream& s, int err) override {
        if (err == -EIO && tls_ && tls_->kernel_rx() && client_ && !terminating_) {
            // A kTLS RX socket stops plain receives with EIO at a record that
            // is not application data; it waits at the head of the socket.
            on_control_record();
            return;
        }
        if (rr_.partial()) {
            bump(ctx_.counters_.cut_records);
            RPCGATE_LOG(gw, info, "conn {}: client closed inside a record ({} bytes held)", id_,
                        rr_.buffered());
        }
        // Replies still owed to a client that has gone cannot be delivered.
        close_all(err);
    }

    void on_writable(stream&) override {
        if (!client_full_) return;
        client_full_ = false;
        for (auto& l : links_)
            if (l && l->s_) l->s_->resume_receive();
    }

    void on_closed(stream&, int err) override {
        client_ = nullptr;
        idle_timer_.cancel();
        ktls_close_timer_.cancel();
        tls_quiet_timer_.cancel();
        for (auto& l : links_)
            if (l) l->close(err);
        maybe_free();
    }

    // After a CRL reload (shard thread): true if this TLS client's certificate
    // is now revoked; the connection is then closed with an audit line.
    bool close_if_revoked(const std::vector<X509_CRL*>& crls) {
        if (!tls_ || !client_) return false;
        X509* cert = SSL_get0_peer_certificate(tls_->native());
        if (!cert) return false;
        for (X509_CRL* crl : crls) {
            X509_REVOKED* entry = nullptr;
            if (X509_CRL_get0_by_cert(crl, &entry, cert) == 1) {
                tls_->add_flags(tls::flag_disabled);
                RPCGATE_LOG(audit, info,
                            "conn {} peer {} tls revoked: flags={} subject=\"{}\" reason=certificate "
                            "revoked by the reloaded CRL: closing",
                            id_, peer_, tls::flags_text(tls_->flags()), tls_->peer_subject());
                bump(ctx_.counters_.tls_revoked);
                terminate("client certificate revoked by the reloaded CRL", -EKEYREVOKED);
                return true;
            }
        }
        return false;
    }

    // One JSON object for /connections (shard thread).
    std::string describe_json() const {
        size_t links = 0;
        std::string upstream;  // the backend links in TLS: where their crypto runs
        for (const auto& l : links_) {
            if (l && l->alive()) ++links;
            if (!l || !l->tls_ || !l->s_) continue;
            if (!upstream.empty()) upstream += ',';
            upstream += fmt::format(R"({{"backend":"{}","version":"{}","protection":{{"tx":"{}","rx":"{}"}}}})",
                                    json_escape(l->target()), l->tls_->version(),
                                    tls::ktls::mode_name(l->prot_.tx),
                                    tls::ktls::mode_name(l->prot_.rx));
        }
        std::string tls = "null";
        if (tls_)
            tls = fmt::format(R"({{"flags":"{}","version":"{}","cipher":"{}","alpn":"{}","subject":"{}","protection":{{"tx":"{}","rx":"{}"}}}})",
                              tls::flags_text(tls_->flags()), tls_->version(), tls_->cipher(),
                              tls_->alpn(), json_escape(tls_->peer_subject()),
                              tls::ktls::mode_name(prot_.tx), tls::ktls::mode_name(prot_.rx));
        return fmt::format(
            R"({{"id":"{}","peer":"{}","shard":{},"state":"{}","tls":{},"bytes_in":{},"bytes_out":{},"calls_in_flight":{},"backend_links":{},"backend_tls":[{}],"age_s":{:.3f}}})",
            id_, peer_, ctx_.sh_.index(),
            terminating_ ? "closing" : draining_ ? "draining" : client_ ? "open" : "closed", tls,
            client_ ? client_->bytes_in() : 0, client_ ? client_->bytes_out() : 0,
            calls_outstanding_, links, upstream, double(ctx_.sh_.now_ms() - created_ms_) / 1000.0);
    }

    static std::string json_escape(const std::string& in) {
        std::string out;
        for (char c : in) {
            if (c == '"' || c == '\\') out += '\\';
            if (static_cast<unsigned char>(c) < 0x20) continue;
            out += c;
        }
        return out;
    }

    void begin_drain() {
        if (draining_ || !client_ || starttls_) return;
        draining_ = true;
        client_->pause_receive();
        if (calls_outstanding_ == 0) finish_client();
    }

    // Orderly end: close_notify first when in TLS, then close once sent.
    // `linger`: the client may still be sending (a drain): read and drop its
    // bytes after ours until it closes (see stream::close_after_send).
    void finish_client(bool linger = true) {
        if (!client_ || !client_->open()) return;
        close_linger_ = linger;
        if (tls_ && !tls_shut_) {
            flush_tls();
            tls_shut_ = true;
            if (tls_->kernel_tx()) {
                kernel_close_notify();
                return;
            }
            slice_chain out;
            tls_->shutdown(out);
            client_->send(std::move(out));
        }
        client_->close_after_send(ctx_.cfg_.drain_timeout_ms, close_linger_ && !peer_done_);
    }

    void terminate(const std::string& why, int err) {
        if (!terminating_) RPCGATE_LOG(gw, info, "conn {} ({}): {}", id_, peer_, why);
        close_all(err);
    }

    session* next_ = nullptr;
    session* prev_ = nullptr;

private:
    // A backend connection of this session. With upstream TLS it goes
    // connecting -> (control thread: probe, handshake) -> ready; calls wait
    // in `pending_` until then.
    struct link final : core::stream_handler, upstream_waiter {
        link(session& owner, size_t route, uint32_t vers)
            : owner_(owner),
              route_(route),
              vers_(vers),
              id_(core::next_conn_id()),
              rr_(rpc::record_limits{owner.ctx_.cfg_.max_record, rpc::default_max_fragments}) {
            connect_timer_.set_callback(
                [](core::timer*, void* arg) {
                    auto* l = static_cast<link*>(arg);
                    bump(l->owner_.ctx_.counters_.backend_connect_failures);
                    l->owner_.terminate(fmt::format("backend {} (conn {}): connect timed out",
                                                    l->target(), l->id_),
                                        -ETIMEDOUT);
                },
                this);
            const tls::context* up = owner.ctx_.upstream_ctx_
                                         ? owner.ctx_.upstream_ctx_[route].load()
                                         : nullptr;
            ready_ = up == nullptr;  // plaintext: calls go straight to the stream
        }
        ~link() override {
            if (!token_) return;
            // Still with the control thread: its answer will find no one.
            owner_.ctx_.forget_upstream(token_);
            if (connected_) bump(owner_.ctx_.health_[route_].open, uint64_t(-1));
        }
        const std::string& target() const { return owner_.ctx_.cfg_.backends[route_].spec; }
        const backend_route& route() const { return owner_.ctx_.cfg_.backends[route_]; }

        void on_connected(stream& s, int err) override {
            connect_timer_.cancel();
            if (err < 0) {
                bump(owner_.ctx_.counters_.backend_connect_failures);
                bump(owner_.ctx_.health_[route_].failures);
                owner_.terminate(fmt::format("backend {} (conn {}): connect failed: {}",
                                             target(), id_, std::strerror(-err)),
                                 err);
                return;
            }
            connected_ = true;
            bump(owner_.ctx_.counters_.backend_connects);
            bump(owner_.ctx_.health_[route_].connects);
            bump(owner_.ctx_.health_[route_].open);
            RPCGATE_LOG(gw, debug, "conn {}: backend {} connected as conn {}", owner_.id_,
                        target(), id_);
            if (!ready_) start_upstream_tls();
        }

        // RFC 9289 client role: the control thread sends the probe, reads the
        // reply and runs the handshake; on_upstream() gets the socket back.
        void start_upstream_tls() {
            handing_ = true;
            s_->detach([this](int fd, slice_chain&& unread) {
                upstream_request r;
                r.fd = fd;
                r.id = id_;
                r.target = target();
                r.ctx = owner_.ctx_.upstream_ctx_[route_].load();
                r.prog = route().prog;
                r.vers = vers_;
                r.opportunistic = route().tls.mode == tls_mode::opportunistic;
                token_ = owner_.ctx_.wait_upstream(this);
                r.token = token_;
                // Nothing can have arrived: we have sent nothing yet.
                (void)unread;
                unsigned sh = owner_.ctx_.sh_.index();
                bool ok = owner_.ctx_.khs_ ? owner_.ctx_.khs_->submit_upstream(sh, std::move(r))
                                           : owner_.ctx_.hs_->submit_upstream(sh, std::move(r));
                if (!ok) {
                    owner_.ctx_.forget_upstream(token_);
                    token_ = 0;
                    ::close(fd);
                    fail_upstream("the TLS control thread is busy");
                }
            });
        }

        void on_upstream(upstream_result&& r) override {
            token_ = 0;
            handing_ = false;
            if (r.outcome == upstream_result::kind::failed) {
                fail_upstream(r.reason);
                return;
            }
            if (owner_.terminating_ || !owner_.client_) {
                ::close(r.fd);
                if (connected_) {
                    connected_ = false;
                    bump(owner_.ctx_.health_[route_].open, uint64_t(-1));
                }
                owner_.maybe_free();  // may delete the session and this link
                return;
            }
            s_ = owner_.ctx_.sh_.adopt(r.fd, this);
            if (r.outcome == upstream_result::kind::tls) {
                tls_ = std::move(r.session);
                bump(owner_.ctx_.counters_.upstream_tls);
                prot_ = owner_.ctx_.diag_.query(r.fd);
                if (tls_->kernel_tx()) bump(owner_.ctx_.counters_.upstream_ktls_tx);
                if (tls_->kernel_rx()) bump(owner_.ctx_.counters_.upstream_ktls_rx);
                RPCGATE_LOG(gw, debug, "conn {}: backend {} in TLS ({} {})", owner_.id_, target(),
                            tls_->version(), tls_->cipher());
            } else {
                bump(owner_.ctx_.counters_.upstream_plaintext);
                RPCGATE_LOG(gw, info,
                            "conn {}: backend {} does not offer RPC-with-TLS ({}): continuing in "
                            "plaintext (upstream tls opportunistic)",
                            owner_.id_, target(), r.reason);
            }
            ready_ = true;
            // Calls that waited for the handshake go first, in order.
            send_record(std::move(pending_));
            flush();
            if (tls_) {
                receive_tls();
            } else if (!r.early.empty()) {
                for (const slice& p : r.early) receive_plain(p);
            }
            owner_.flush_tls();
            if (blocking_client_ && s_ && !s_->full()) {
                blocking_client_ = false;
                owner_.maybe_resume_client();
            }
        }

        void fail_upstream(const std::string& why) {
            bump(owner_.ctx_.counters_.upstream_tls_failures);
            bump(owner_.ctx_.counters_.backend_connect_failures);
            bump(owner_.ctx_.health_[route_].failures);
            if (connected_) {
                connected_ = false;
                bump(owner_.ctx_.health_[route_].open, uint64_t(-1));
            }
            owner_.terminate(fmt::format("backend {} (conn {}): upstream TLS {} failed: {}",
                                         target(), id_, tls_mode_name(route().tls.mode), why),
                             -ECONNREFUSED);
            owner_.maybe_free();  // may delete the session and this link
        }

        // A framed record for the backend: queued until ready, encrypted per batch.
        void send_record(slice_chain&& framed) {
            if (framed.empty()) return;
            if (!ready_) {
                pending_.append(std::move(framed));
                return;
            }
            if (!s_) return;
            if (!tls_ || tls_->kernel_tx()) {  // kTLS TX: the kernel encrypts
                s_->send(std::move(framed));
                return;
            }
            tls_out_.append(std::move(framed));
            owner_.links_tls_dirty_ = true;
            if (tls_out_.size() >= k_tls_batch) flush();
        }

        void flush() {
            if (!tls_ || tls_out_.empty() || !s_) return;
            slice_chain out;
            tls::status st = tls_->write(tls_out_, out);
            tls_out_.clear();
            if (st == tls::status::error) {
                bump(owner_.ctx_.counters_.tls_errors);
                owner_.terminate(fmt::format("backend {}: TLS write failed: {}", target(),
                                             tls_->error_text()),
                                 -EPROTO);
                return;
            }
            s_->send(std::move(out));
        }

        // Above its limit the client stops being read.
        bool full() const {
            if (!ready_) return pending_.size() >= owner_.ctx_.cfg_.max_inflight;
            return s_ && s_->full();
        }
        bool alive() const { return s_ != nullptr || handing_; }

        void on_data(stream& s, slice data) override {
            owner_.last_activity_ = owner_.ctx_.sh_.now_ms();
            if (tls_ && !tls_->kernel_rx()) {
                tls_->feed(std::move(data));
                receive_tls();
            } else {
                receive_plain(data);
            }
            owner_.flush_tls();
        }

        void receive_plain(const slice& data) {
            auto r = rr_.feed(data, [this](slice_chain&& rec) {
                return owner_.on_backend_record(*this, std::move(rec));
            });
            if (!r.ok()) {
                bump(owner_.ctx_.counters_.oversize);
                owner_.terminate(fmt::format("backend {} sent a record over the limit: closing",
                                             target()),
                                 -EMSGSIZE);
            }
        }

        void receive_tls() {
            slice_chain plain, out;
            // Post-handshake messages (NewSessionTicket, KeyUpdate) are
            // consumed here; only application data comes out.
            tls::status st = tls_->read(plain, out);
            if (!out.empty() && s_) s_->send(std::move(out));
            for (const slice& p : plain) {
                if (owner_.terminating_ || !owner_.client_) return;
                receive_plain(p);
            }
            if (st == tls::status::closed) {
                if (owner_.terminating_) return;
                bump(owner_.ctx_.counters_.backend_lost);
                bump(owner_.ctx_.health_[route_].lost);
                owner_.terminate(fmt::format("backend {} (conn {}) ended TLS (close_notify)",
                                             target(), id_),
                                 -ECONNRESET);
            } else if (st == tls::status::error) {
                bump(owner_.ctx_.counters_.tls_errors);
                owner_.terminate(fmt::format("backend {}: TLS error: {}", target(),
                                             tls_->error_text()),
                                 -EPROTO);
            }
        }

        // Ends this backend connection: close_notify first when in TLS and
        // the end is orderly.
        void close(int err) {
            if (!s_) return;
            if (tls_ && tls_->kernel_tx() && err == 0 && s_->open() && !tls_shut_) {
                // close_notify is an alert record (sendmsg with its type): only
                // when nothing queued would follow it.
                tls_shut_ = true;
                if (s_->queued_bytes() == 0) {
                    const uint8_t alert[2] = {1, 0};
                    tls::ktls::send_record(s_->fd(), tls::ktls::rt_alert, alert, 2, MSG_DONTWAIT);
                }
                s_->close_after_send(200);
                return;
            }
            if (tls_ && err == 0 && s_->open() && !tls_shut_) {
                tls_shut_ = true;
                flush();
                slice_chain out;
                tls_->shutdown(out);
                s_->send(std::move(out));
                s_->close_after_send(200);
                return;
            }
            s_->close(err);
        }

        void on_eof(stream& s, int err) override {
            if (owner_.terminating_) {
                s.close(err);
                return;
            }
            if (err == -EIO && tls_ && tls_->kernel_rx()) {
                on_control_record(s);
                return;
            }
            bump(owner_.ctx_.counters_.backend_lost);
            bump(owner_.ctx_.health_[route_].lost);
            owner_.terminate(fmt::format("backend {} (conn {}) closed the connection{}{}",
                                         target(), id_, err ? ": " : "",
                                         err ? std::strerror(-err) : ""),
                             err ? err : -ECONNRESET);
        }
        void on_writable(stream&) override {
            if (!blocking_client_) return;
            blocking_client_ = false;
            owner_.maybe_resume_client();
        }
        void on_closed(stream& s, int err) override {
            if (&s == readopted_from_) {  // the stream before a re-adoption
                readopted_from_ = nullptr;
                return;
            }
            s_ = nullptr;
            if (handing_ && token_) return;  // the socket went to the control thread
            handing_ = false;
            connect_timer_.cancel();
            if (connected_) bump(owner_.ctx_.health_[route_].open, uint64_t(-1));
            if (!owner_.terminating_) {
                bump(owner_.ctx_.counters_.backend_lost);
                owner_.terminate(fmt::format("backend {} connection lost", target()), err);
            }
            owner_.maybe_free();  // may delete the session and this link: nothing after
        }

        // The record a kTLS RX receive from the backend stopped at. Servers
        // send NewSessionTickets after the handshake (RFC 8446 §4.6.1): one is
        // consumed and the socket adopted again (a receive that ended in EIO
        // is not re-armed). Anything else ends the connection.
        void on_control_record(stream& s) {
            uint8_t buf[16384 + 256];
            uint8_t type = tls::ktls::rt_none;
            ssize_t n = tls::ktls::recv_record(s.fd(), buf, sizeof buf, &type, MSG_DONTWAIT);
            tls::ktls::control_record c;
            if (n > 0) c = tls::ktls::classify(type, buf, size_t(n));
            OPENSSL_cleanse(buf, sizeof buf);
            if (n > 0 && c.kind == tls::ktls::control::new_session_ticket) {
                bump(owner_.ctx_.counters_.upstream_tickets);
                readopted_from_ = &s;
                s.detach([this](int fd, slice_chain&& unread) {
                    s_ = owner_.ctx_.sh_.adopt(fd, this);
                    for (const slice& p : unread) receive_plain(p);
                });
                return;
            }
            bump(owner_.ctx_.counters_.backend_lost);
            bump(owner_.ctx_.health_[route_].lost);
            std::string what = n < 0    ? fmt::format("kTLS receive failed: {}", std::strerror(int(-n)))
                               : n == 0 ? std::string("closed the connection")
                                        : fmt::format("sent {}", c.name());
            if (n > 0 && c.kind == tls::ktls::control::key_update)
                bump(owner_.ctx_.counters_.tls_key_update_closes);
            if (n <= 0 || c.kind == tls::ktls::control::alert ||
                c.kind == tls::ktls::control::unexpected)
                tls_shut_ = true;  // no close_notify after a failure
            if (n > 0 && c.kind == tls::ktls::control::unexpected && tls_->kernel_tx()) {
                const uint8_t alert[2] = {2, 10};  // fatal unexpected_message
                tls::ktls::send_record(s.fd(), tls::ktls::rt_alert, alert, 2, MSG_DONTWAIT);
            }
            owner_.terminate(fmt::format("backend {} (conn {}) {}", target(), id_, what),
                             -ECONNRESET);
        }

        static constexpr size_t k_tls_batch = 256 * 1024;
        session& owner_;
        size_t route_;
        uint32_t vers_;
        conn_id id_;
        stream* s_ = nullptr;
        rpc::record_reassembler rr_;
        core::timer connect_timer_;
        std::unique_ptr<tls::session> tls_;  // upstream TLS, once established
        slice_chain pending_;  // framed calls waiting for the upstream handshake
        slice_chain tls_out_;  // framed records to encrypt at the next flush
        uint64_t token_ = 0;   // registered with the shard while handing_
        bool connected_ = false;
        bool blocking_client_ = false;
        bool ready_ = true;
        bool handing_ = false;  // the control thread has the socket
        bool tls_shut_ = false;
        stream* readopted_from_ = nullptr;  // its on_closed is not ours to act on
        tls::ktls::protection prot_;  // upstream TLS: where its crypto runs
    };

    // Returns false to stop reading further records from this client now.
    bool on_client_record(slice_chain&& rec) {
        if (terminating_) return false;
        auto peek = rpc::peek_message(rec);
        if (!peek.ok()) {
            bump(ctx_.counters_.malformed);
            terminate("client sent bytes that are not an RPC message: closing", -EPROTO);
            return false;
        }
        if (peek->type == rpc::msg_type::reply) return forward_backchannel_reply(std::move(rec), peek->xid);

        auto call = rpc::decode_call(rec);
        if (!call.ok()) {
            if (call.error() == rpc::errc::rpc_version_mismatch) {
                reply_local(rpc::build_reply(rpc::reply_header::rpc_mismatch(peek->xid)));
            } else if (call.error() == rpc::errc::too_long) {
                // A credential or verifier over 400 bytes (RFC 5531 §8.2).
                reply_local(rpc::build_reply(
                    rpc::reply_header::auth_error(peek->xid, rpc::auth_stat::badcred)));
            } else {
                bump(ctx_.counters_.garbage_args);
                reply_local(rpc::build_reply(
                    rpc::reply_header::accepted(peek->xid, rpc::accept_stat::garbage_args)));
            }
            return true;
        }
        const rpc::call_header& h = call->header;
        switch (rpc::classify_auth_tls(h, tls_ != nullptr)) {
            case rpc::auth_tls_use::probe:
                if (!ctx_.hs_ || ctx_.cfg_.tls == tls_mode::off) {
                    // TLS is off: answer like a server that does not offer RPC-with-TLS.
                    bump(ctx_.counters_.tls_probes);
                    RPCGATE_LOG(gw, info, "conn {} ({}): AUTH_TLS probe refused (--tls off)",
                                id_, peer_);
                    reply_local(rpc::build_reply(
                        rpc::reply_header::auth_error(h.xid, rpc::auth_stat::rejectedcred)));
                    return true;
                }
                start_tls(h.xid);
                return false;  // what follows the probe is TLS, not RPC
            case rpc::auth_tls_use::misuse:
                bump(ctx_.counters_.auth_tls_misuse);
                reply_local(rpc::build_auth_tls_badcred_reply(h.xid));
                return true;
            case rpc::auth_tls_use::none:
                break;
        }
        if (!tls_ && ctx_.cfg_.tls >= tls_mode::required) {
            // RFC 9289 §4.2 policy: this listener serves RPC only inside TLS.
            bump(ctx_.counters_.too_weak);
            reply_local(rpc::build_reply(rpc::reply_header::auth_error(h.xid, rpc::auth_stat::tooweak)));
            return true;
        }
        size_t route = route_of(h.prog);
        if (route == k_no_route) {
            if (h.prog == rpc::pmap_prog && ctx_.cfg_.answer_portmap) {
                answer_portmap(*call);
                return true;
            }
            bump(ctx_.counters_.prog_unavail);
            reply_local(rpc::build_reply(
                rpc::reply_header::accepted(h.xid, rpc::accept_stat::prog_unavail)));
            return true;
        }
        link* l = link_for(route, h.vers);
        if (!l) return false;
        ++calls_outstanding_;
        bump(ctx_.counters_.calls_forwarded);
        if (certuser_) {
            // tlscertuser: the certificate's identity replaces the credential;
            // the arguments are spliced behind the new header, not copied.
            l->send_record(frame(with_certuser_cred(h, std::move(call->args))));
        } else {
            l->send_record(frame(std::move(rec)));
        }
        if (l->full() && client_ && !client_->receive_paused()) {
            l->blocking_client_ = true;
            bump(ctx_.counters_.flow_pauses);
            client_->pause_receive();
        }
        return !terminating_;
    }

    bool forward_backchannel_reply(slice_chain&& rec, uint32_t xid) {
        // The reply goes to the backend whose CALL carried this xid.
        link* target = nullptr;
        for (size_t i = 0; i < bc_calls_.size(); ++i) {
            if (bc_calls_[i].xid == xid) {
                auto* l = links_[bc_calls_[i].route].get();
                bc_calls_[i] = bc_calls_.back();
                bc_calls_.pop_back();
                if (l && l->alive()) target = l;
                break;
            }
        }
        if (!target) {
            bump(ctx_.counters_.orphan_replies);
            RPCGATE_LOG(gw, debug, "conn {}: REPLY xid {:#x} answers no backend call; dropped",
                        id_, xid);
            return true;
        }
        bump(ctx_.counters_.backchannel_replies);
        target->send_record(frame(std::move(rec)));
        return true;
    }

    bool on_backend_record(link& l, slice_chain&& rec) {
        if (terminating_ || !client_) return false;
        auto peek = rpc::peek_message(rec);
        if (!peek.ok()) {
            bump(ctx_.counters_.malformed);
            terminate(fmt::format("backend {} sent bytes that are not an RPC message", l.target()),
                      -EPROTO);
            return false;
        }
        if (peek->type == rpc::msg_type::call) {
            // Backchannel (NFSv4.1 CB_*): remember who called, bounded.
            if (bc_calls_.size() >= k_max_bc_calls) bc_calls_.erase(bc_calls_.begin());
            bc_calls_.push_back({peek->xid, l.route_});
            bump(ctx_.counters_.backchannel_calls);
        } else {
            if (calls_outstanding_ > 0) --calls_outstanding_;
            bump(ctx_.counters_.replies_forwarded);
        }
        bump(ctx_.counters_.bytes_to_clients, rec.size());
        send_to_client(frame(std::move(rec)));
        if (!client_) return false;
        if (client_->full() && !client_full_) {
            client_full_ = true;
            bump(ctx_.counters_.flow_pauses);
            for (auto& other : links_)
                if (other && other->s_) other->s_->pause_receive();
        }
        if (draining_ && calls_outstanding_ == 0) finish_client();
        // Keep going even when the client is full: pausing stops the next
        // receive, but the rest of this buffer must still be delivered.
        return true;
    }

    void maybe_resume_client() {
        for (auto& l : links_)
            if (l && l->blocking_client_) return;
        if (client_ && !draining_) client_->resume_receive();
    }

    slice_chain with_certuser_cred(const rpc::call_header& h, slice_chain&& args) {
        rpc::auth_sys_params p;
        if (auto orig = rpc::decode_auth_sys(h.cred); orig.ok()) {
            p.stamp = orig->stamp;
            p.set_machine(orig->machine());
        } else {
            p.set_machine("rpcgate");
        }
        p.uid = certuser_->uid;
        p.gid = certuser_->gid;
        p.set_groups(certuser_->gids);
        rpc::call_header h2 = h;
        h2.cred = rpc::encode_auth_sys(p);
        bump(ctx_.counters_.certuser_rewrites);
        rpc::xdr_writer w;
        rpc::encode_call_header(w, h2);
        w.append(std::move(args));
        return w.finish();
    }

    slice_chain frame(slice_chain&& rec) {
        slice_chain out;
        out.push_back(ctx_.marks_.mark(uint32_t(rec.size())));
        out.append(std::move(rec));
        return out;
    }

    // Everything for the client goes through here: encrypted when in TLS.
    void send_to_client(slice_chain&& bytes) {
        if (!client_) return;
        if (!tls_ || tls_->kernel_tx()) {  // kTLS TX: the kernel encrypts
            client_->send(std::move(bytes));
            return;
        }
        // Encrypted once per batch (flush_tls at the end of every receive
        // handler): many small replies share one TLS record.
        tls_pending_.append(std::move(bytes));
        if (tls_pending_.size() >= k_tls_batch) flush_tls();
    }

    void flush_tls() {
        if (!tls_ || tls_pending_.empty() || !client_ || tls_->kernel_tx()) return;
        slice_chain out;
        tls::status st = tls_->write(tls_pending_, out);
        tls_pending_.clear();
        if (st == tls::status::error) {
            bump(ctx_.counters_.tls_errors);
            terminate(fmt::format("TLS write failed: {}", tls_->error_text()), -EPROTO);
            return;
        }
        client_->send(std::move(out));
    }

    void reply_local(slice reply) {
        bump(ctx_.counters_.local_replies);
        send_to_client(slice_chain(std::move(reply)));
    }

    // The probe was answered: hand the socket to the control thread once the
    // STARTTLS reply is out (RFC 9289 §4.1). The session ends here; the
    // connection comes back as a new session with the same ID.
    void start_tls(uint32_t xid) {
        if (!ctx_.allow_handshake(peer_addr_)) {
            terminate("TLS handshake rate of this source exceeded: closing", -EAGAIN);
            return;
        }
        starttls_ = true;
        bump(ctx_.counters_.starttls);
        client_->send(rpc::build_starttls_reply(xid));
        hand_off();
    }

    void hand_off() {
        for (auto& l : links_)
            if (l) l->close(0);
        client_->detach([this](int fd, slice_chain&& unread) {
            slice_chain early = std::move(early_);
            for (const slice& p : unread) early.push_back(slice::copy_of(p.data(), p.size()));
            if (ctx_.submit_handshake(fd, id_, peer_, std::move(early))) {
                handed_off_ = true;
            } else {
                RPCGATE_LOG(gw, warn, "conn {} ({}): TLS control thread busy: closing", id_,
                            peer_);
                ::close(fd);
            }
        });
    }

    void answer_portmap(const rpc::call_message& call) {
        const rpc::call_header& h = call.header;
        bump(ctx_.counters_.portmap_calls);
        if (h.vers != rpc::pmap_vers) {
            // rpcbind v3/v4 are not offered; clients fall back to v2.
            reply_local(rpc::build_reply(rpc::reply_header::prog_mismatch(h.xid, 2, 2)));
            return;
        }
        switch (static_cast<rpc::pmap_proc>(h.proc)) {
            case rpc::pmap_proc::null:
                reply_local(rpc::build_null_reply(h.xid));
                return;
            case rpc::pmap_proc::getport: {
                auto m = rpc::decode_getport_args(call.args);
                if (!m.ok()) {
                    bump(ctx_.counters_.garbage_args);
                    reply_local(rpc::build_reply(
                        rpc::reply_header::accepted(h.xid, rpc::accept_stat::garbage_args)));
                    return;
                }
                uint32_t port = (m->prot == rpc::pmap_ipproto_tcp && route_of(m->prog) != k_no_route)
                                    ? own_port_
                                    : 0;
                RPCGATE_LOG(gw, debug, "conn {}: portmap GETPORT prog {} vers {} -> {}", id_,
                            m->prog, m->vers, port);
                reply_local(rpc::build_getport_reply(h.xid, port));
                return;
            }
            default:
                reply_local(rpc::build_reply(
                    rpc::reply_header::accepted(h.xid, rpc::accept_stat::proc_unavail)));
                return;
        }
    }

    static constexpr size_t k_no_route = size_t(-1);
    size_t route_of(uint32_t prog) const {
        const auto& b = ctx_.cfg_.backends;
        for (size_t i = 0; i < b.size(); ++i)
            if (b[i].prog == prog) return i;
        return k_no_route;
    }

    link* link_for(size_t route, uint32_t vers) {
        if (links_[route]) return links_[route]->alive() ? links_[route].get() : nullptr;
        auto l = std::make_unique<link>(*this, route, vers);
        const endpoint& ep = ctx_.cfg_.backends[route].target;
        core::connect_options opt;
        opt.reserved_port = ctx_.cfg_.reserved_port && ::geteuid() == 0;
        int err = 0;
        l->s_ = ctx_.sh_.connect(reinterpret_cast<const sockaddr*>(&ep.addr), ep.len, l.get(), opt,
                                 &err);
        if (!l->s_) {
            bump(ctx_.counters_.backend_connect_failures);
            terminate(fmt::format("backend {}: cannot create socket: {}", ep.text,
                                  std::strerror(-err)),
                      err);
            return nullptr;
        }
        ctx_.sh_.timers().arm(l->connect_timer_, ctx_.cfg_.connect_timeout_ms);
        links_[route] = std::move(l);
        return links_[route].get();
    }

    void close_all(int err) {
        terminating_ = true;
        if (client_ && tls_ && client_->open() && !tls_shut_) {
            finish_client(err == 0);  // close_notify first, then the socket
        } else if (client_) {
            client_->close(err);
        }
        for (auto& l : links_)
            if (l) l->close(err);
    }

    // kTLS TX: close_notify is a record of type alert, which only a sendmsg
    // with TLS_SET_RECORD_TYPE makes, outside the stream's queue; so it waits
    // until everything queued before it has been sent, then the socket closes.
    void kernel_close_notify() {
        if (!client_ || !client_->open()) return;
        uint64_t now = ctx_.sh_.now_ms();
        if (ktls_close_deadline_ == 0) ktls_close_deadline_ = now + ctx_.cfg_.drain_timeout_ms;
        if (client_->queued_bytes() > 0 && now < ktls_close_deadline_) {
            ctx_.sh_.timers().arm(ktls_close_timer_, 1);
            return;
        }
        if (client_->queued_bytes() == 0) send_kernel_alert(1, 0);  // warning, close_notify
        client_->close_after_send(ctx_.cfg_.drain_timeout_ms, close_linger_ && !peer_done_);
    }

    // An alert record through kTLS TX (RFC 8446 §6); never blocks the shard.
    void send_kernel_alert(uint8_t level, uint8_t description) {
        const uint8_t alert[2] = {level, description};
        ssize_t n = tls::ktls::send_record(client_->fd(), tls::ktls::rt_alert, alert, sizeof alert,
                                           MSG_DONTWAIT);
        if (n < 0)
            RPCGATE_LOG(gw, debug, "conn {}: alert {} not sent: {}", id_, description,
                        std::strerror(int(-n)));
    }

    // The record a kTLS RX receive stopped at (on_eof(-EIO)): read it here,
    // non-blocking (it is already in the socket), and do what it calls for.
    // The receive side is over either way: the server role has nothing to
    // go on with (a client sends no tickets), and a KeyUpdate cannot be
    // followed (the kernel takes no new RX key before Linux 6.14, and
    // OpenSSL 3.0 keeps no traffic secret to derive one from).
    void on_control_record() {
        uint8_t buf[16384 + 256];  // RFC 8446 §5.1: one record's plaintext fits
        uint8_t type = tls::ktls::rt_none;
        ssize_t n = tls::ktls::recv_record(client_->fd(), buf, sizeof buf, &type, MSG_DONTWAIT);
        if (n == 0) {
            close_all(0);
            return;
        }
        if (n < 0) {
            bump(ctx_.counters_.tls_errors);
            tls_shut_ = true;  // EBADMSG (a record that did not decrypt) and the like
            if (n != -EAGAIN) send_kernel_alert(2, n == -EBADMSG ? 20 : 80);  // bad_record_mac / internal_error
            terminate(fmt::format("kTLS receive failed: {}", std::strerror(int(-n))), int(n));
            return;
        }
        tls::ktls::control_record c = tls::ktls::classify(type, buf, size_t(n));
        OPENSSL_cleanse(buf, size_t(n));
        switch (c.kind) {
            case tls::ktls::control::close_notify:
                bump(ctx_.counters_.tls_close_notify);
                RPCGATE_LOG(gw, debug, "conn {} ({}): close_notify from the client", id_, peer_);
                peer_done_ = true;
                close_all(0);  // our close_notify, then the socket
                return;
            case tls::ktls::control::alert:
                bump(ctx_.counters_.tls_alerts_received);
                tls_shut_ = true;  // RFC 8446 §6.2: the connection is dead, no reply
                terminate(fmt::format("TLS alert from the client: {} ({})",
                                      SSL_alert_desc_string_long(c.alert_description),
                                      int(c.alert_description)),
                          -ECONNRESET);
                return;
            case tls::ktls::control::key_update:
                bump(ctx_.counters_.tls_key_update_closes);
                RPCGATE_LOG(gw, info,
                            "conn {} ({}): KeyUpdate from the client{}: kernel TLS cannot take "
                            "new RX keys here; closing with close_notify",
                            id_, peer_, c.update_requested ? " (update requested)" : "");
                close_all(0);  // close_notify under our unchanged TX key
                return;
            case tls::ktls::control::new_session_ticket:  // a client sends none
            case tls::ktls::control::unexpected:
                bump(ctx_.counters_.tls_errors);
                tls_shut_ = true;
                if (tls_->kernel_tx()) send_kernel_alert(2, 10);  // fatal unexpected_message
                terminate(fmt::format("unexpected TLS record (type {}) from the client: closing",
                                      int(type)),
                          -EPROTO);
                return;
        }
    }

    void maybe_free() {
        if (client_) return;
        for (auto& l : links_)
            if (l && l->s_) return;
        RPCGATE_LOG(gw, debug, "conn {} ({}) closed", id_, peer_);
        delete this;
    }

    static void on_idle_timer(core::timer* t, void* arg) {
        auto* s = static_cast<session*>(arg);
        uint64_t idle_ms = uint64_t(s->ctx_.cfg_.idle_timeout_s) * 1000;
        uint64_t quiet = s->ctx_.sh_.now_ms() - s->last_activity_;
        if (quiet >= idle_ms) {
            bump(s->ctx_.counters_.idle_timeouts);
            s->terminate(fmt::format("idle for {} s: closing", quiet / 1000), -ETIMEDOUT);
            return;
        }
        s->ctx_.sh_.timers().arm(*t, idle_ms - quiet);
    }

    struct bc_call {
        uint32_t xid;
        size_t route;
    };
    static constexpr size_t k_max_bc_calls = 1024;

    shard_context& ctx_;
    stream* client_;
    conn_id id_;
    std::string peer_;
    uint16_t own_port_;
    rpc::record_reassembler rr_;
    std::vector<std::unique_ptr<link>> links_;  // by route index, opened on first use
    std::vector<bc_call> bc_calls_;
    core::timer idle_timer_;
    core::timer tls_quiet_timer_;
    static constexpr uint64_t k_tls_quiet_ms = 2000;
    uint64_t last_activity_ = 0;
    uint64_t created_ms_ = 0;
    uint64_t calls_outstanding_ = 0;
    std::unique_ptr<tls::session> tls_;
    tls::ktls::protection prot_;  // where tls_'s crypto runs, per direction
    core::timer ktls_close_timer_;  // close_notify waits for the send queue
    uint64_t ktls_close_deadline_ = 0;
    std::optional<tls::identity> certuser_;
    sockaddr_storage peer_addr_{};  // AF_UNSPEC until known: never counted
    slice_chain tls_pending_;  // plaintext for the client, encrypted per batch
    static constexpr size_t k_tls_batch = 256 * 1024;
    slice_chain early_;  // bytes after a probe, for the control thread
    bool terminating_ = false;
    bool draining_ = false;
    bool client_full_ = false;
    bool starttls_ = false;
    bool first_bytes_ = true;
    bool handed_off_ = false;
    bool tls_shut_ = false;
    bool links_tls_dirty_ = false;  // a TLS backend link holds calls to encrypt
    bool peer_done_ = false;  // the client said it sends no more (close_notify)
    bool close_linger_ = true;  // finish_client's choice, for kernel_close_notify
};

bool shard_context::admit(const sockaddr_storage& peer) {
    if (open_.fetch_add(1, std::memory_order_relaxed) >= cfg_.max_connections) {
        open_.fetch_sub(1, std::memory_order_relaxed);
        bump(counters_.sessions_refused);
        RPCGATE_LOG(gw, warn, "refusing {}: --max-connections {} reached", peer_text(peer),
                    cfg_.max_connections);
        return false;
    }
    if (!admit_source(peer)) {
        open_.fetch_sub(1, std::memory_order_relaxed);
        return false;
    }
    bump(counters_.sessions_accepted);
    return true;
}

bool shard_context::admit_source(const sockaddr_storage& peer) {
    if (!limits_) return true;
    source_verdict v = limits_->on_accept(peer, sh_.now_ms());
    if (v == source_verdict::admit) return true;
    bump(counters_.sessions_refused);
    // Debug only: a flood must not become a flood of log lines; the
    // rpcgate_source_* counters tell.
    RPCGATE_LOG(gw, debug, "refusing {}: {}", peer_text(peer), source_verdict_name(v));
    return false;
}

bool shard_context::allow_handshake(const sockaddr_storage& peer) {
    if (!limits_) return true;
    source_verdict v = limits_->on_handshake(peer, sh_.now_ms());
    if (v == source_verdict::admit) return true;
    RPCGATE_LOG(gw, debug, "closing {}: {}", peer_text(peer), source_verdict_name(v));
    return false;
}

void shard_context::on_accept(core::shard& s, int fd, const sockaddr_storage& peer) {
    if (!admit(peer)) {
        ::close(fd);
        return;
    }
    stream* st = s.adopt(fd, nullptr);
    st->set_handler(new session(*this, st, peer));
}

void shard_context::implicit_acceptor::on_accept(core::shard& s, int fd,
                                                 const sockaddr_storage& peer) {
    if (!ctx->admit(peer)) {
        ::close(fd);
        return;
    }
    // During the handshake the connection is the control thread's: the
    // source's slot is taken again when it comes back (deliver).
    ctx->release_source(peer);
    if (!ctx->allow_handshake(peer)) {
        ::close(fd);
        ctx->open_.fetch_sub(1, std::memory_order_relaxed);
        return;
    }
    bump(ctx->counters_.implicit_tls);
    conn_id id = core::next_conn_id();
    if (!ctx->submit_handshake(fd, id, peer_text(peer), {})) {
        RPCGATE_LOG(gw, warn, "conn {}: TLS control thread busy: closing", id);
        ::close(fd);
        ctx->open_.fetch_sub(1, std::memory_order_relaxed);
    }
}

void shard_context::deliver(handshake_result&& r) {
    if (sh_.stopping()) {
        ::close(r.fd);
        open_.fetch_sub(1, std::memory_order_relaxed);
        return;
    }
    // Back from the control thread: the source's connection slot again.
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    if (::getpeername(r.fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0 ||
        (peer.ss_family != AF_INET && peer.ss_family != AF_INET6))
        peer = address_of(r.peer);  // DPDK: the fd is a socketpair; the text is the client's
    if (!admit_source(peer)) {
        ::close(r.fd);
        open_.fetch_sub(1, std::memory_order_relaxed);
        return;
    }
    stream* st = sh_.adopt(r.fd, nullptr);
    auto* s = new session(*this, st, std::move(r));
    s->peer_addr_ = peer;
    st->set_handler(s);
    s->pump_tls();  // records that arrived with the handshake's last flight
    s->flush_tls();
}

void shard_context::deliver_upstream(upstream_result&& r) {
    auto it = waiting_.find(r.token);
    if (it == waiting_.end()) {
        // The session ended while the control thread had its backend socket.
        if (r.fd >= 0) ::close(r.fd);
        return;
    }
    upstream_waiter* w = it->second;
    waiting_.erase(it);
    w->on_upstream(std::move(r));
}

void shard_context::on_stop() {
    for (session* s = sessions_; s;) {
        session* next = s->next_;
        s->begin_drain();
        s = next;
    }
    if (sessions_) sh_.timers().arm(drain_timer_, cfg_.drain_timeout_ms);
}

void shard_context::on_drain_deadline(core::timer*, void* arg) {
    auto* ctx = static_cast<shard_context*>(arg);
    for (session* s = ctx->sessions_; s;) {
        session* next = s->next_;
        s->terminate("drain deadline reached: closing", -ETIMEDOUT);
        s = next;
    }
    // Closing takes one pass; anything left a second later is a bug worth a
    // line each, and must not keep the process from exiting.
    ctx->drain_timer_.set_callback(
        [](core::timer*, void* arg) {
            auto* c = static_cast<shard_context*>(arg);
            for (core::stream* st : c->sh_.streams())
                RPCGATE_LOG(gw, error, "shard {}: stream still open after the drain: {}",
                            c->sh_.index(), st->describe());
            c->sh_.force_exit();
        },
        ctx);
    ctx->sh_.timers().arm(ctx->drain_timer_, 1000);
}

// ---------------------------------------------------------------- gateway

gateway::gateway(gateway_config cfg) : cfg_(std::move(cfg)) {}

gateway::~gateway() {
    stop();
    wait();
}

std::string gateway::start() {
    if (cfg_.io_backend == "dpdk") {
        // One TCP stack per process (lwIP): one shard, which polls the port.
        std::string err;
        io_backend_ = dpdk::make_backend(dpdk::backend_options{cfg_.dpdk_args}, &err);
        if (!io_backend_) return "--io-backend dpdk: " + err;
        cfg_.ktls = "off";  // a DPDK connection has no kernel socket to put kTLS on
        if (cfg_.shards != 1)
            RPCGATE_LOG(gw, info, "--io-backend dpdk: 1 shard instead of {}", cfg_.shards);
        cfg_.shards = 1;
    }
    bool tls_used = cfg_.tls != tls_mode::off || !cfg_.implicit_tls.empty();
    if (tls_used) {
        tls::server_options o;
        o.cert_file = cfg_.cert;
        o.key_file = cfg_.key;
        o.ca_file = cfg_.ca;
        o.crl_file = cfg_.crl;
        o.require_client_cert = cfg_.tls == tls_mode::mtls;
        o.alpn_strict = cfg_.alpn_strict;
        if (cfg_.tls_min_version == "1.2") {
            o.min_version = TLS1_2_VERSION;
            RPCGATE_LOG(tls, warn,
                        "--tls-min-version 1.2: clients may use TLS 1.2. This is OUTSIDE RFC 9289 "
                        "(§5.1: TLS 1.3 or later), for evaluating NIC TLS offload only; do not "
                        "use it in production");
        }
        std::string err;
        tls_ctx_ = tls::context::make_server(o, &err);
        if (!tls_ctx_) return "TLS: " + err;
        hs_ = std::make_unique<handshake_service>(tls_ctx_.get(), cfg_.handshake_timeout_ms,
                                                  &open_connections_);
        if (!cfg_.cert_user_map.empty()) {
            identities_ = std::make_unique<tls::identity_map>();
            if (!identities_->load(cfg_.cert_user_map, &err)) return "--cert-user-map: " + err;
            hs_->set_identity_map(identities_.get());
        }
    }
    // RFC 9289 client role: one client context per route that wants TLS.
    std::string up_err = make_upstream_contexts(&upstream_ctx_);
    if (!up_err.empty()) return up_err;
    upstream_live_.reset(new std::atomic<const tls::context*>[cfg_.backends.size()]);
    bool upstream_used = false;
    for (size_t r = 0; r < cfg_.backends.size(); ++r) {
        upstream_live_[r].store(upstream_ctx_[r].get());
        upstream_used |= upstream_ctx_[r] != nullptr;
    }
    if (upstream_used && !hs_)
        hs_ = std::make_unique<handshake_service>(nullptr, cfg_.handshake_timeout_ms,
                                                  &open_connections_);
    if (hs_) {
        bool kernel = cfg_.ktls != "off" && tls::ktls::kernel_has_ktls();
        if (cfg_.ktls == "on" || kernel) {
            // Before any handshake runs: TLS 1.3 RX needs the keylog hook.
            if (tls_ctx_) tls::ktls::prepare_context(tls_ctx_->native());
            for (const auto& c : upstream_ctx_)
                if (c) tls::ktls::prepare_context(c->native());
            khs_ = std::make_unique<ktls_handshaker>(*hs_, cfg_.ktls_rx);
        }
        if (kernel) {
            RPCGATE_LOG(tls, info, "kernel TLS: on (--ktls {}): handshakes on the socket, then "
                        "the kernel encrypts and decrypts where it can", cfg_.ktls);
        } else if (khs_) {
            RPCGATE_LOG(tls, info, "kernel TLS: this kernel has none; --ktls on: handshakes on "
                        "the socket, the record layer stays in userspace");
        } else {
            RPCGATE_LOG(tls, info, "kernel TLS: off ({}): TLS runs in userspace (OpenSSL on the "
                        "shards)",
                        cfg_.ktls == "off" ? "--ktls off" : "this kernel has no kTLS");
        }
    }
    // Every shard exists (and is wired to the control thread) before any starts.
    for (unsigned i = 0; i < cfg_.shards; ++i) {
        core::shard_config sc;
        sc.index = i;
        sc.buffer_count = cfg_.buffers;
        sc.buffer_size = cfg_.buffer_size;
        sc.send_high_water = cfg_.max_inflight;
        sc.send_low_water = cfg_.max_inflight / 4;
        auto sh = std::make_unique<core::shard>(sc);
        if (io_backend_) sh->set_io_backend(io_backend_.get());
        auto ctx = std::make_unique<shard_context>(cfg_, *sh, open_connections_);
        shard_context* c = ctx.get();
        sh->set_on_stop([c] { c->on_stop(); });
        c->upstream_ctx_ = upstream_live_.get();
        if (hs_) {
            c->hs_ = hs_.get();
            hs_->attach(
                *sh, [c](handshake_result&& r) { c->deliver(std::move(r)); },
                [c](upstream_result&& r) { c->deliver_upstream(std::move(r)); });
        }
        if (khs_) {
            c->khs_ = khs_.get();
            khs_->attach(
                *sh, [c](handshake_result&& r) { c->deliver(std::move(r)); },
                [c](upstream_result&& r) { c->deliver_upstream(std::move(r)); });
        }
        main_inboxes_.push_back(&sh->make_inbox(64));
        shards_.push_back(std::move(sh));
        contexts_.push_back(std::move(ctx));
    }
    if (hs_) main_to_control_ = &hs_->make_inbox();
    if (hs_) {
        std::string err = hs_->start();
        if (!err.empty()) return "TLS control thread: " + err;
    }
    if (khs_) {
        std::string err = khs_->start();
        if (!err.empty()) return "kTLS handshake thread: " + err;
    }
    for (unsigned i = 0; i < cfg_.shards; ++i) {
        core::shard* raw = shards_[i].get();
        shard_context* c = contexts_[i].get();
        auto open_all = [this, raw, c](std::vector<endpoint>& eps, core::listener_handler* h) {
            for (endpoint& ep : eps) {
                int rc = raw->listen(reinterpret_cast<const sockaddr*>(&ep.addr), ep.len, h);
                if (rc < 0) {
                    c->start_error_ = fmt::format("cannot listen on {}: {}", ep.text,
                                                  std::strerror(-rc));
                    return;
                }
                // Port 0: the first shard picks it, the others share it (SO_REUSEPORT).
                if (ep.port() == 0) ep.set_port(uint16_t(rc));
            }
        };
        std::string err = raw->start([&] {
            open_all(cfg_.listen, c);
            if (c->start_error_.empty()) open_all(cfg_.implicit_tls, &c->implicit_);
        });
        if (err.empty() && !c->start_error_.empty()) err = c->start_error_;
        if (!err.empty()) {
            stop();
            wait();
            return err;
        }
        if (i == 0) {
            if (!cfg_.listen.empty()) port_ = cfg_.listen.front().port();
            if (!cfg_.implicit_tls.empty()) implicit_port_ = cfg_.implicit_tls.front().port();
            if (!cfg_.implicit_tls.empty()) implicit_port_ = cfg_.implicit_tls.front().port();
            RPCGATE_LOG(core, info, "io_uring features: {}", raw->features().describe());
        }
    }
    if (!cfg_.admin.empty()) {
        endpoint ep;
        std::string err;
        if (!parse_endpoint(cfg_.admin, &ep, &err)) return "--admin " + err;
        admin_ = std::make_unique<admin_server>();
        err = admin_->start(ep, {[this] { return metrics_text(); },
                                 [this] { return !stopping_.load() && ping_all(1000); },
                                 [this] { return connections_json(); },
                                 [this] { return reload(); }});
        if (!err.empty()) return err;
        RPCGATE_LOG(admin, info, "admin endpoint on port {} (/metrics, /healthz)", admin_->port());
    }
    return {};
}

uint16_t gateway::admin_port() const noexcept { return admin_ ? admin_->port() : 0; }

namespace {

// Every CRL in a PEM file; the shared pointer frees them with the last user.
std::shared_ptr<std::vector<X509_CRL*>> load_crls(const std::string& path, std::string* err) {
    auto crls = std::shared_ptr<std::vector<X509_CRL*>>(new std::vector<X509_CRL*>,
                                                        [](std::vector<X509_CRL*>* v) {
                                                            for (X509_CRL* c : *v) X509_CRL_free(c);
                                                            delete v;
                                                        });
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f) {
        *err = fmt::format("{}: {}", path, std::strerror(errno));
        return nullptr;
    }
    while (X509_CRL* c = PEM_read_X509_CRL(f, nullptr, nullptr, nullptr)) crls->push_back(c);
    std::fclose(f);
    ERR_clear_error();  // the read that ends the loop leaves "no start line"
    if (crls->empty()) {
        *err = fmt::format("{}: no CRL in it", path);
        return nullptr;
    }
    return crls;
}

}  // namespace

std::string gateway::make_upstream_contexts(
    std::vector<std::unique_ptr<tls::context>>* out) const {
    out->clear();
    for (const backend_route& r : cfg_.backends) {
        if (r.tls.mode == tls_mode::off) {
            out->emplace_back();
            continue;
        }
        tls::client_options o;
        o.ca_file = r.tls.ca;
        o.cert_file = r.tls.cert;
        o.key_file = r.tls.key;
        o.server_name = r.tls.server_name;
        o.require_alpn = r.tls.alpn_strict;
        std::string err;
        auto c = tls::context::make_client(o, &err);
        if (!c) return fmt::format("backend '{}': upstream TLS: {}", r.spec, err);
        RPCGATE_LOG(tls, info, "backend {}: upstream TLS {} (server name {}, CA {}{})", r.spec,
                    tls_mode_name(r.tls.mode), o.server_name, o.ca_file,
                    o.cert_file.empty() ? "" : ", client certificate " + o.cert_file);
        out->push_back(std::move(c));
    }
    return {};
}

std::string gateway::reload_locked() {
    // A config file that no longer parses or validates stops the reload: the
    // daemon keeps serving with what it has. (Listeners and routes need a
    // restart; the TLS files are re-read at the paths in effect.)
    if (!cfg_.config_file.empty()) {
        gateway_config probe;
        std::string err;
        if (!load_config_file(cfg_.config_file, &probe, &err) || !validate(&probe, &err))
            return "reload failed, keeping the old configuration: " + err;
    }
    bool upstream_used = false;
    for (const auto& c : upstream_ctx_) upstream_used |= c != nullptr;
    if (!tls_ctx_ && !upstream_used) return "nothing to reload: TLS is not configured";
    // Upstream client contexts (CA, client certificate) are re-read too.
    std::vector<std::unique_ptr<tls::context>> fresh_up;
    if (upstream_used) {
        std::string why = make_upstream_contexts(&fresh_up);
        if (!why.empty()) return "reload failed, keeping the old TLS material: " + why;
    }
    // Shards read the live pointers; the contexts they replace stay alive.
    if (khs_)
        for (const auto& c : fresh_up)
            if (c) tls::ktls::prepare_context(c->native());
    auto commit_upstream = [&] {
        for (size_t r = 0; r < fresh_up.size(); ++r) {
            upstream_live_[r].store(fresh_up[r].get());
            if (upstream_ctx_[r]) old_contexts_.push_back(std::move(upstream_ctx_[r]));
            upstream_ctx_[r] = std::move(fresh_up[r]);
        }
    };
    if (!tls_ctx_) {
        commit_upstream();
        RPCGATE_LOG(gw, info, "reloaded upstream TLS material");
        return {};
    }
    tls::server_options o = tls_ctx_->server();
    std::string err;
    auto fresh = tls::context::make_server(o, &err);
    if (!fresh) return "reload failed, keeping the old TLS material: " + err;
    if (khs_) tls::ktls::prepare_context(fresh->native());
    std::unique_ptr<tls::identity_map> ids;
    if (!cfg_.cert_user_map.empty()) {
        ids = std::make_unique<tls::identity_map>();
        if (!ids->load(cfg_.cert_user_map, &err))
            return "reload failed, keeping the old TLS material: --cert-user-map: " + err;
    }
    std::shared_ptr<std::vector<X509_CRL*>> crls;
    if (!cfg_.crl.empty()) {
        crls = load_crls(cfg_.crl, &err);
        if (!crls) return "reload failed, keeping the old TLS material: " + err;
    }
    // Commit: new handshakes use the new contexts from now on.
    commit_upstream();
    hs_->set_context(fresh.get());
    old_contexts_.push_back(std::move(tls_ctx_));
    tls_ctx_ = std::move(fresh);
    if (ids) {
        hs_->set_identity_map(ids.get());
        if (identities_) old_identities_.push_back(std::move(identities_));
        identities_ = std::move(ids);
    }
    // FreeBSD's rpc.tlsservd -r: a client the new CRL revokes is closed.
    if (crls) {
        for (size_t i = 0; i < main_inboxes_.size(); ++i) {
            shard_context* c = contexts_[i].get();
            main_inboxes_[i]->try_post([c, crls] {
                for (session* s = c->sessions_; s;) {
                    session* next = s->next_;
                    s->close_if_revoked(*crls);
                    s = next;
                }
            });
        }
    }
    RPCGATE_LOG(gw, info, "reloaded TLS material: cert {}, CA {}, CRL {} ({} list(s))", o.cert_file,
                o.ca_file.empty() ? "-" : o.ca_file, o.crl_file.empty() ? "-" : o.crl_file,
                crls ? crls->size() : 0);
    return {};
}

std::string gateway::reload() {
    // SIGHUP (main thread) and POST /reload (admin thread) take turns; that
    // also keeps each shard's main inbox single-producer.
    std::lock_guard serial(producer_mu_);
    std::string why = reload_locked();
    bump(why.empty() ? reloads_ : reload_failures_);
    return why;
}


namespace {

// A reply from another thread, waited for with a deadline. Shared, so that a
// reply arriving after the waiter gave up has somewhere to go.
template <typename T>
struct rendezvous {
    std::mutex m;
    std::condition_variable cv;
    std::vector<T> got;
    size_t expected = 0;

    void put(T v) {
        std::lock_guard g(m);
        got.push_back(std::move(v));
        cv.notify_one();
    }
    bool wait(int ms) {
        std::unique_lock g(m);
        return cv.wait_for(g, std::chrono::milliseconds(ms), [&] { return got.size() >= expected; });
    }
};

}  // namespace

bool gateway::ping_all(int ms) {
    auto r = std::make_shared<rendezvous<int>>();
    {
        std::lock_guard serial(producer_mu_);
        r->expected = main_inboxes_.size() + (main_to_control_ ? 1 : 0);
        for (core::mailbox* box : main_inboxes_)
            if (!box->try_post([r] { r->put(1); })) return false;
        if (main_to_control_ && !main_to_control_->try_post([r] { r->put(1); })) return false;
    }
    return r->wait(ms);
}

std::string gateway::connections_json() {
    auto r = std::make_shared<rendezvous<std::string>>();
    std::unique_lock serial(producer_mu_);
    r->expected = main_inboxes_.size();
    for (size_t i = 0; i < main_inboxes_.size(); ++i) {
        shard_context* c = contexts_[i].get();
        main_inboxes_[i]->try_post([r, c] {
            std::string part;
            for (session* s = c->sessions_; s; s = s->next_) {
                if (!part.empty()) part += ",\n";
                part += s->describe_json();
            }
            r->put(std::move(part));
        });
    }
    serial.unlock();
    bool complete = r->wait(1000);
    std::lock_guard g(r->m);
    std::string out = "[";
    for (const std::string& part : r->got) {
        if (part.empty()) continue;
        if (out.size() > 1) out += ",\n";
        out += part;
    }
    out += "]\n";
    if (!complete) RPCGATE_LOG(admin, warn, "/connections: a shard did not answer within 1 s");
    return out;
}

namespace {

// One metric family: HELP, TYPE, then a sample per shard.
template <typename F>
void family(std::string& out, const char* name, const char* type, const char* help, size_t n,
            F value) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name,
                   type);
    for (size_t i = 0; i < n; ++i)
        fmt::format_to(std::back_inserter(out), "{}{{shard=\"{}\"}} {}\n", name, i, value(i));
}

}  // namespace

std::string gateway::metrics_text() const {
    std::string out;
    size_t n = contexts_.size();
    auto rd = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
#define RPCGATE_GW_COUNTER(name, field, help) \
    family(out, "rpcgate_" name, "counter", help, n, [&](size_t i) { return rd(contexts_[i]->counters_.field); })
#define RPCGATE_CORE_COUNTER(name, field, help) \
    family(out, "rpcgate_" name, "counter", help, n, [&](size_t i) { return rd(shards_[i]->stats().field); })
    RPCGATE_GW_COUNTER("connections_accepted_total", sessions_accepted, "Client connections accepted.");
    family(out, "rpcgate_connections_open", "gauge", "Client connections open.", n,
           [&](size_t i) { return rd(contexts_[i]->counters_.sessions_open); });
    RPCGATE_GW_COUNTER("connections_refused_total", sessions_refused, "Connections refused over --max-connections.");
    RPCGATE_GW_COUNTER("calls_forwarded_total", calls_forwarded, "CALL records forwarded to backends.");
    RPCGATE_GW_COUNTER("replies_forwarded_total", replies_forwarded, "REPLY records forwarded to clients.");
    RPCGATE_GW_COUNTER("backchannel_calls_total", backchannel_calls, "CALL records from backends to clients.");
    RPCGATE_GW_COUNTER("backchannel_replies_total", backchannel_replies, "REPLY records from clients to backends.");
    RPCGATE_GW_COUNTER("client_bytes_received_total", bytes_from_clients, "Bytes received from clients (as on the wire).");
    RPCGATE_GW_COUNTER("client_bytes_sent_total", bytes_to_clients, "Record bytes forwarded to clients.");
    RPCGATE_GW_COUNTER("local_replies_total", local_replies, "Replies the gateway made itself.");
    RPCGATE_GW_COUNTER("portmap_calls_total", portmap_calls, "Portmap calls answered locally.");
    RPCGATE_GW_COUNTER("prog_unavail_total", prog_unavail, "Calls for programs with no route.");
    RPCGATE_GW_COUNTER("malformed_total", malformed, "Connections closed for bytes that are no RPC.");
    RPCGATE_GW_COUNTER("garbage_args_total", garbage_args, "Calls answered GARBAGE_ARGS.");
    RPCGATE_GW_COUNTER("oversize_total", oversize, "Connections closed for a record over --max-record.");
    RPCGATE_GW_COUNTER("cut_records_total", cut_records, "Connections closed inside a record.");
    RPCGATE_GW_COUNTER("idle_timeouts_total", idle_timeouts, "Clients closed for idleness.");
    RPCGATE_GW_COUNTER("flow_pauses_total", flow_pauses, "Times a side stopped being read because its peer was full.");
    RPCGATE_GW_COUNTER("tls_starttls_total", starttls, "AUTH_TLS probes answered with STARTTLS.");
    RPCGATE_GW_COUNTER("tls_probes_refused_total", tls_probes, "AUTH_TLS probes refused (TLS off).");
    RPCGATE_GW_COUNTER("tls_implicit_total", implicit_tls, "Connections that started with TLS.");
    RPCGATE_GW_COUNTER("tls_sessions_total", tls_sessions, "Connections back from a successful handshake.");
    RPCGATE_GW_COUNTER("tls_errors_total", tls_errors, "TLS failures after the handshake.");
    RPCGATE_GW_COUNTER("tls_too_weak_total", too_weak, "Plaintext calls refused with AUTH_TOOWEAK.");
    RPCGATE_GW_COUNTER("auth_tls_misuse_total", auth_tls_misuse, "AUTH_TLS misuse answered AUTH_BADCRED.");
    RPCGATE_GW_COUNTER("certuser_rewrites_total", certuser_rewrites, "Calls given a client certificate's identity.");
    RPCGATE_GW_COUNTER("tls_revoked_total", tls_revoked, "TLS clients closed after a CRL reload revoked them.");
    RPCGATE_GW_COUNTER("upstream_tls_total", upstream_tls, "Backend connections that went into RPC-with-TLS.");
    RPCGATE_GW_COUNTER("upstream_plaintext_total", upstream_plaintext, "Backends that refused the AUTH_TLS probe, used in plaintext (opportunistic).");
    RPCGATE_GW_COUNTER("upstream_tls_failures_total", upstream_tls_failures, "Backend connections refused for upstream TLS (probe refused when required, handshake failed, timed out).");
    if (!contexts_.empty() && contexts_[0]->limits_) {
#define RPCGATE_SOURCE_FAMILY(name, type, field, help)                        \
    family(out, "rpcgate_source_" name, type, help, n,                         \
           [&](size_t i) { return rd(contexts_[i]->limits_->counters().field); })
        RPCGATE_SOURCE_FAMILY("refused_connections_total", "counter", refused_connections,
                              "Connections refused: their source was at its connection cap.");
        RPCGATE_SOURCE_FAMILY("refused_handshakes_total", "counter", refused_handshakes,
                              "Connections closed: their source was over its handshake rate.");
        RPCGATE_SOURCE_FAMILY("table_full_total", "counter", table_full,
                              "Connections refused: no room to track a new source.");
        RPCGATE_SOURCE_FAMILY("evictions_total", "counter", evictions,
                              "Idle sources forgotten to make room.");
        RPCGATE_SOURCE_FAMILY("tracked", "gauge", tracked, "Sources tracked now.");
#undef RPCGATE_SOURCE_FAMILY
    }
    RPCGATE_CORE_COUNTER("engine_receives_total", recv_completions, "Receive completions.");
    RPCGATE_CORE_COUNTER("engine_received_bytes_total", recv_bytes, "Bytes received by the engine.");
    RPCGATE_CORE_COUNTER("engine_sends_total", send_calls, "sendmsg operations.");
    RPCGATE_CORE_COUNTER("engine_sent_bytes_total", send_bytes, "Bytes sent by the engine.");
    RPCGATE_CORE_COUNTER("engine_enobufs_total", enobufs, "Receives that found the buffer ring empty.");
    RPCGATE_CORE_COUNTER("engine_pressure_copies_total", pressure_copies, "Receives copied out of a ring running low.");
    RPCGATE_CORE_COUNTER("engine_loop_passes_total", loop_passes, "Event loop passes.");
    family(out, "rpcgate_engine_buffers_free", "gauge", "Receive buffers the kernel can use now.", n,
           [&](size_t i) { return rd(shards_[i]->stats().buffers_free); });
    // Backend health, per route (summed over shards).
    auto per_backend = [&](const char* name, const char* type, const char* help,
                           std::atomic<uint64_t> shard_context::backend_health::*field) {
        fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name,
                       type);
        for (size_t r = 0; r < cfg_.backends.size(); ++r) {
            uint64_t v = 0;
            for (const auto& c : contexts_) v += rd(c->health_[r].*field);
            fmt::format_to(std::back_inserter(out), "{}{{backend=\"{}\"}} {}\n", name,
                           cfg_.backends[r].spec, v);
        }
    };
    per_backend("rpcgate_backend_connects_total", "counter", "Connections opened to a backend.",
                &shard_context::backend_health::connects);
    per_backend("rpcgate_backend_connect_failures_total", "counter",
                "Connects to a backend that failed or timed out.",
                &shard_context::backend_health::failures);
    per_backend("rpcgate_backend_lost_total", "counter",
                "Backend connections that closed under a client.",
                &shard_context::backend_health::lost);
    per_backend("rpcgate_backend_connections_open", "gauge", "Backend connections open now.",
                &shard_context::backend_health::open);
    // The kernel's own kTLS counters (TlsCurrTxSw, TlsTxDevice, TlsDecryptError
    // ...), when the kernel has kTLS; absent here, so nothing is emitted.
    if (FILE* f = std::fopen("/proc/net/tls_stat", "r")) {
        char key[64];
        unsigned long long v;
        while (std::fscanf(f, "%63s %llu", key, &v) == 2)
            fmt::format_to(std::back_inserter(out),
                           "# HELP rpcgate_kernel_{0} /proc/net/tls_stat {1}.\n# TYPE "
                           "rpcgate_kernel_{0} gauge\nrpcgate_kernel_{0} {2}\n",
                           key, key, v);
        std::fclose(f);
    }
    // Where the TLS crypto runs, per direction, as the kernel reported it
    // for each connection (tls::ktls::query).
    out += "# HELP rpcgate_tls_connections_open TLS client connections by direction and where "
           "the crypto runs.\n# TYPE rpcgate_tls_connections_open gauge\n";
    for (size_t dir = 0; dir < 2; ++dir) {
        for (tls::ktls::mode m : {tls::ktls::mode::userspace, tls::ktls::mode::ktls_sw,
                                  tls::ktls::mode::ktls_hw, tls::ktls::mode::ktls}) {
            uint64_t v = 0;
            for (const auto& c : contexts_) v += rd(c->counters_.tls_protection_open[dir][size_t(m)]);
            fmt::format_to(std::back_inserter(out),
                           "rpcgate_tls_connections_open{{direction=\"{}\",protection=\"{}\"}} {}\n",
                           dir == 0 ? "tx" : "rx", tls::ktls::mode_name(m), v);
        }
    }
    RPCGATE_GW_COUNTER("tls_close_notify_total", tls_close_notify, "close_notify records from clients read on kTLS sockets.");
    RPCGATE_GW_COUNTER("tls_alerts_received_total", tls_alerts_received, "Alerts (other than close_notify) from clients read on kTLS sockets.");
    RPCGATE_GW_COUNTER("upstream_ktls_tx_total", upstream_ktls_tx, "Backend TLS connections whose TX went to the kernel.");
    RPCGATE_GW_COUNTER("upstream_ktls_rx_total", upstream_ktls_rx, "Backend TLS connections whose RX went to the kernel.");
    RPCGATE_GW_COUNTER("upstream_tickets_total", upstream_tickets, "NewSessionTickets from backends consumed on kTLS RX.");
    RPCGATE_GW_COUNTER("tls_key_update_closes_total", tls_key_update_closes, "Connections closed cleanly after a KeyUpdate that kernel TLS cannot follow.");
#undef RPCGATE_GW_COUNTER
#undef RPCGATE_CORE_COUNTER
    auto one = [&](const char* name, const char* type, const char* help, auto v) {
        fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n{} {}\n", name,
                       help, name, type, name, v);
    };
    one("rpcgate_reloads_total", "counter", "Reloads (SIGHUP, POST /reload) that took effect.",
        rd(reloads_));
    one("rpcgate_reload_failures_total", "counter",
        "Reloads refused for a bad file; the old material stays.", rd(reload_failures_));
    if (hs_) {
        const handshake_counters& h = hs_->counters();
        {
            // Handshake latency histogram (cumulative buckets, as Prometheus wants).
            out += "# HELP rpcgate_tls_handshake_seconds Time from hand-off to a completed "
                   "handshake.\n# TYPE rpcgate_tls_handshake_seconds histogram\n";
            uint64_t cum = 0;
            for (size_t i = 0; i < handshake_counters::k_buckets; ++i) {
                cum += rd(h.latency_buckets[i]);
                fmt::format_to(std::back_inserter(out),
                               "rpcgate_tls_handshake_seconds_bucket{{le=\"{}\"}} {}\n",
                               double(handshake_counters::k_bucket_ms[i]) / 1000.0, cum);
            }
            fmt::format_to(std::back_inserter(out),
                           "rpcgate_tls_handshake_seconds_bucket{{le=\"+Inf\"}} {}\n"
                           "rpcgate_tls_handshake_seconds_sum {:.6f}\n"
                           "rpcgate_tls_handshake_seconds_count {}\n",
                           rd(h.succeeded), double(rd(h.latency_us_sum)) / 1e6, rd(h.succeeded));
        }
        auto one = [&](const char* name, const char* type, const char* help, auto v) {
            fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n{} {}\n", name,
                           help, name, type, name, v);
        };
        one("rpcgate_tls_handshakes_ok_total", "counter", "Handshakes that completed.", rd(h.succeeded));
        one("rpcgate_tls_handshakes_failed_total", "counter", "Handshakes refused by TLS or policy.", rd(h.failed));
        one("rpcgate_tls_handshakes_timed_out_total", "counter", "Handshakes cut at the deadline.", rd(h.timed_out));
        one("rpcgate_tls_handshakes_not_tls_total", "counter", "Probes followed by bytes that were no TLS.", rd(h.not_tls));
        one("rpcgate_tls_handshakes_in_progress", "gauge", "Handshakes running now.", rd(h.in_progress));
        const handshake_counters& u = hs_->upstream_counters();
        one("rpcgate_upstream_handshakes_ok_total", "counter", "Client-role handshakes towards backends that completed.", rd(u.succeeded));
        one("rpcgate_upstream_handshakes_failed_total", "counter", "Client-role probes or handshakes that failed.", rd(u.failed));
        one("rpcgate_upstream_handshakes_timed_out_total", "counter", "Client-role probes or handshakes cut at the deadline.", rd(u.timed_out));
        one("rpcgate_upstream_probes_refused_total", "counter", "AUTH_TLS probes a backend refused (opportunistic: plaintext).", hs_->upstream_refused());
    }
    return out;
}

void gateway::stop() {
    stopping_.store(true);
    for (auto& s : shards_) s->request_stop();
}

void gateway::wait() {
    for (auto& s : shards_) s->join();
    if (admin_) admin_->stop();
    if (hs_) {
        hs_->stop();
        hs_->wait();
    }
    if (khs_) {
        khs_->stop();
        khs_->wait();
    }
}

gateway_totals gateway::totals() const {
    gateway_totals t;
    for (const auto& c : contexts_) {
        const gateway_counters& k = c->counters_;
        auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
        t.sessions_accepted += get(k.sessions_accepted);
        t.sessions_open += get(k.sessions_open);
        t.sessions_refused += get(k.sessions_refused);
        t.calls_forwarded += get(k.calls_forwarded);
        t.replies_forwarded += get(k.replies_forwarded);
        t.backchannel_calls += get(k.backchannel_calls);
        t.backchannel_replies += get(k.backchannel_replies);
        t.bytes_from_clients += get(k.bytes_from_clients);
        t.bytes_to_clients += get(k.bytes_to_clients);
        t.local_replies += get(k.local_replies);
        t.portmap_calls += get(k.portmap_calls);
        t.prog_unavail += get(k.prog_unavail);
        t.malformed += get(k.malformed);
        t.garbage_args += get(k.garbage_args);
        t.oversize += get(k.oversize);
        t.cut_records += get(k.cut_records);
        t.tls_probes += get(k.tls_probes);
        t.auth_tls_misuse += get(k.auth_tls_misuse);
        t.backend_connects += get(k.backend_connects);
        t.backend_connect_failures += get(k.backend_connect_failures);
        t.backend_lost += get(k.backend_lost);
        t.idle_timeouts += get(k.idle_timeouts);
        t.orphan_replies += get(k.orphan_replies);
        t.flow_pauses += get(k.flow_pauses);
        t.starttls += get(k.starttls);
        t.implicit_tls += get(k.implicit_tls);
        t.tls_sessions += get(k.tls_sessions);
        t.tls_errors += get(k.tls_errors);
        t.too_weak += get(k.too_weak);
        t.certuser_rewrites += get(k.certuser_rewrites);
        t.tls_revoked += get(k.tls_revoked);
        t.upstream_tls += get(k.upstream_tls);
        t.upstream_plaintext += get(k.upstream_plaintext);
        t.upstream_tls_failures += get(k.upstream_tls_failures);
        t.tls_close_notify += get(k.tls_close_notify);
        t.tls_alerts_received += get(k.tls_alerts_received);
        t.tls_key_update_closes += get(k.tls_key_update_closes);
        t.upstream_ktls_tx += get(k.upstream_ktls_tx);
        t.upstream_ktls_rx += get(k.upstream_ktls_rx);
        t.upstream_tickets += get(k.upstream_tickets);
        for (size_t m = 1; m < 4; ++m) {  // every mode but userspace is the kernel's
            t.ktls_tx_open += get(k.tls_protection_open[0][m]);
            t.ktls_rx_open += get(k.tls_protection_open[1][m]);
        }
    }
    if (hs_) {
        const handshake_counters& h = hs_->counters();
        t.handshakes_ok = h.succeeded.load(std::memory_order_relaxed);
        t.handshakes_failed = h.failed.load(std::memory_order_relaxed);
        t.handshakes_timed_out = h.timed_out.load(std::memory_order_relaxed);
        t.handshakes_not_tls = h.not_tls.load(std::memory_order_relaxed);
        t.handshakes_busy = h.rejected_busy.load(std::memory_order_relaxed);
        t.handshakes_in_progress = h.in_progress.load(std::memory_order_relaxed);
    }
    return t;
}

std::string gateway_totals::describe() const {
    return fmt::format(
        "sessions accepted={} open={} refused={}; calls={} replies={} backchannel calls={} "
        "replies={}; bytes in={} out={}; local replies={} (portmap={} prog_unavail={} "
        "garbage={} tls_probes={} auth_tls_misuse={}); closed for malformed={} oversize={} "
        "cut={}; backend connects={} failures={} lost={}; idle timeouts={} orphan replies={} "
        "flow pauses={}; tls starttls={} implicit={} sessions={} errors={} too_weak={} "
        "handshakes ok={} failed={} timed_out={} not_tls={} busy={}; upstream tls={} "
        "plaintext={} failures={}; ktls open tx={} rx={} close_notify={} alerts={} "
        "key_update_closes={}",
        sessions_accepted, sessions_open, sessions_refused, calls_forwarded, replies_forwarded,
        backchannel_calls, backchannel_replies, bytes_from_clients, bytes_to_clients,
        local_replies, portmap_calls, prog_unavail, garbage_args, tls_probes, auth_tls_misuse,
        malformed, oversize, cut_records, backend_connects, backend_connect_failures,
        backend_lost, idle_timeouts, orphan_replies, flow_pauses, starttls, implicit_tls,
        tls_sessions, tls_errors, too_weak, handshakes_ok, handshakes_failed,
        handshakes_timed_out, handshakes_not_tls, handshakes_busy, upstream_tls,
        upstream_plaintext, upstream_tls_failures, ktls_tx_open, ktls_rx_open, tls_close_notify,
        tls_alerts_received, tls_key_update_closes);
}

}  // namespace rpcgate::gw
