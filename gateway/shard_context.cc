#include "gateway/shard_context.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/log.h"
#include "gateway/client_session.h"
#include "gateway/peer_address.h"
#include "rpc/record.h"
#include "rpc/xdr_codec.h"

namespace rpcgate::gw {

using core::bump;
using core::slice;

slice mark_arena::mark(uint32_t payload_len) {
    if (used_ + 4 > k_block) {
        block_ = slice::allocate(k_block);
        used_ = 0;
    }
    rpc::store_be32(block_.mutable_data() + used_, rpc::record_last_fragment | payload_len);
    slice s = block_.share(used_, 4);
    used_ += 4;
    return s;
}

void session_list::add(node* n) noexcept {
    n->next_in_shard = head_;
    n->prev_in_shard = nullptr;
    if (head_) head_->prev_in_shard = n;
    head_ = n;
}

void session_list::remove(node* n) noexcept {
    if (n->prev_in_shard)
        n->prev_in_shard->next_in_shard = n->next_in_shard;
    else
        head_ = n->next_in_shard;
    if (n->next_in_shard) n->next_in_shard->prev_in_shard = n->prev_in_shard;
    n->next_in_shard = n->prev_in_shard = nullptr;
}

shard_context::shard_context(const gateway_config& cfg, core::shard& sh,
                             std::atomic<uint32_t>& open)
    : cfg_(cfg),
      sh_(sh),
      router_(cfg.backends),
      admission_(cfg, open, counters_),
      health_(new backend_health[cfg.backends.size()]) {
    if (cfg.call_stats) calls_ = std::make_unique<call_stats>();
    drain_timer_.set_callback(&shard_context::on_drain_deadline, this);
    move_timer_.set_callback(&shard_context::on_move_tick, this);
    implicit_.ctx = this;
}

shard_context::~shard_context() = default;

bool shard_context::submit_handshake(int fd, core::conn_id id, std::string peer,
                                     core::slice_chain&& early) {
    return hs_->submit(sh_.index(), fd, id, std::move(peer), std::move(early));
}

bool shard_context::submit_upstream(upstream_request&& r, upstream_waiter* w, uint64_t* token) {
    uint64_t t = ++next_token_;
    waiting_.emplace(t, w);
    *token = t;
    r.token = t;
    unsigned sh = sh_.index();
    bool ok = hs_->submit_upstream(sh, std::move(r));
    if (!ok) {
        waiting_.erase(t);
        *token = 0;
    }
    return ok;
}

void shard_context::on_accept(core::shard& s, int fd, const sockaddr_storage& peer) {
    connection_slot slot = admission_.admit(peer, sh_.now_ms());
    if (!slot) {
        ::close(fd);
        return;
    }
    core::stream* st = s.adopt(fd, nullptr);
    auto* session = new client_session(*this, st, peer, std::move(slot));
    st->set_handler(session);
    // Accepted just before an upgrade's hand-off of the listeners: it
    // moves too.
    if (sink_) session->upgrade_begin();
}

void shard_context::implicit_acceptor::on_accept(core::shard& s, int fd,
                                                 const sockaddr_storage& peer) {
    admission& a = ctx->admission_;
    connection_slot slot = a.admit(peer, s.now_ms());
    if (!slot) {
        ::close(fd);
        return;
    }
    // During the handshake the connection is the handshake thread's: the
    // source's slot is taken again when it comes back (deliver).
    a.release_source(peer);
    if (!a.allow_handshake(peer, s.now_ms())) {
        ::close(fd);
        return;
    }
    bump(ctx->counters_.implicit_tls);
    core::conn_id id = core::next_conn_id();
    if (!ctx->submit_handshake(fd, id, peer_text(peer), {})) {
        RPCGATE_LOG(gw, warn, "conn {}: TLS control thread busy: closing", id);
        ::close(fd);
        return;
    }
    slot.hand_over();
}

void shard_context::deliver(handshake_result&& r) {
    connection_slot slot = admission_.adopt();  // counted by the handshake thread
    if (sh_.stopping()) {
        ::close(r.fd);
        return;
    }
    // Back from the handshake thread: the source's connection slot again.
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    if (::getpeername(r.fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0 ||
        (peer.ss_family != AF_INET && peer.ss_family != AF_INET6))
        peer = address_of(r.peer);  // DPDK: the fd is a socketpair; the text is the client's
    if (!admission_.admit_source(peer, sh_.now_ms())) {
        ::close(r.fd);
        return;
    }
    core::stream* st = sh_.adopt(r.fd, nullptr);
    auto* s = new client_session(*this, st, std::move(r), peer, std::move(slot));
    st->set_handler(s);
    s->pump_tls();  // records that arrived with the handshake's last flight
    s->flush_tls();
    if (sink_) s->upgrade_begin();  // TLS: closes at its first idle point
}

void shard_context::deliver_upstream(upstream_result&& r) {
    auto it = waiting_.find(r.token);
    if (it == waiting_.end()) {
        // The session ended while the handshake thread had its backend socket.
        if (r.fd >= 0) ::close(r.fd);
        return;
    }
    upstream_waiter* w = it->second;
    waiting_.erase(it);
    w->on_upstream(std::move(r));
}

void shard_context::on_stop() {
    if (sink_) {
        // After an upgrade: TLS sessions go on closing at their idle point;
        // a plaintext one that did not move finishes its calls and closes.
        sessions_.for_each([](client_session& s) { s.upgrade_leftover(); });
        if (!sessions_.empty()) sh_.timers().arm(drain_timer_, upgrade_drain_ms_);
        return;
    }
    sessions_.for_each([](client_session& s) { s.begin_drain(); });
    if (!sessions_.empty()) sh_.timers().arm(drain_timer_, cfg_.drain_timeout_ms);
}

void shard_context::begin_move(std::shared_ptr<move_sink> sink, uint32_t drain_ms) {
    // Test seam (tests/gateway/upgrade_test.py `accept`): this shard is busy
    // for so long before it stops accepting, as a loaded one can be; the
    // connections that arrive meanwhile are the old process's to take.
    if (const char* v = std::getenv("RPCGATE_UPGRADE_BUSY_MS"); v && *v)
        ::usleep(useconds_t(std::min<unsigned long>(std::strtoul(v, nullptr, 10), 60000)) * 1000);
    sink_ = std::move(sink);
    upgrade_drain_ms_ = drain_ms;
    move_deadline_ms_ = sh_.now_ms() + drain_ms;
    sh_.release_listeners();
    sessions_.for_each([](client_session& s) { s.upgrade_begin(); });
    on_move_tick(&move_timer_, this);
}

void shard_context::moved(std::unique_ptr<moved_conn> c) {
    if (sink_) sink_->put(std::move(c));
}

// Every few milliseconds while moving: sessions that sit idle (no data to
// trigger them) move on the tick; at the deadline the rest give up.
void shard_context::on_move_tick(core::timer*, void* arg) {
    auto* ctx = static_cast<shard_context*>(arg);
    if (!ctx->sink_ || ctx->sink_done_) return;
    bool late = ctx->sh_.now_ms() >= ctx->move_deadline_ms_;
    ctx->sessions_.for_each([late](client_session& s) {
        if (late)
            s.give_up_move();
        else
            s.try_move();
    });
    if (ctx->move_pending_ == 0 && ctx->sh_.listeners_quiet()) {
        ctx->sink_done_ = true;
        ctx->sink_->shard_done();
        return;
    }
    ctx->sh_.timers().arm(ctx->move_timer_, 2);
}

bool shard_context::adopt_moved(std::unique_ptr<moved_conn> c, upgrade_counters& st) {
    upgrade_wire::conn_msg& m = c->meta;
    for (const auto& l : m.links) {
        if (l.route >= cfg_.backends.size()) {
            RPCGATE_LOG(gw, error,
                        "upgrade: conn {} uses route {}, which this configuration does not have: "
                        "closed",
                        m.id, l.route);
            return false;
        }
    }
    std::unique_ptr<tls::session> tls;
    if (m.has_tls) {
        std::string why;
        tls = tls::session::restore(m.tls, true, &why);
        m.tls.wipe();  // the secrets live in the session now
        if (!tls) {
            RPCGATE_LOG(gw, error,
                        "upgrade: conn {}: its TLS session does not restore ({}): closed", m.id,
                        why);
            return false;
        }
    }
    sockaddr_storage peer{};
    std::memcpy(&peer, m.peer_addr.data(), std::min(m.peer_addr.size(), sizeof peer));
    connection_slot slot = admission_.take_moved();
    admission_.admit_source(peer, sh_.now_ms());
    core::stream* st_client = sh_.adopt(c->fds[0], nullptr);
    auto* s = new client_session(*this, st_client, *c, std::move(tls), peer, std::move(slot));
    st_client->set_handler(s);
    c->release();  // the streams own the fds now
    st.moved.fetch_add(1);
    uint64_t now = monotonic_ns();
    st.note_pause(now > m.detach_ns ? now - m.detach_ns : 0);
    s->resume_moved(*c);
    return true;
}

void shard_context::on_drain_deadline(core::timer*, void* arg) {
    auto* ctx = static_cast<shard_context*>(arg);
    ctx->sessions_.for_each(
        [](client_session& s) { s.terminate("drain deadline reached: closing", -ETIMEDOUT); });
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

void shard_context::warn_reserved_fallback(const std::string& backend, bool exhausted) {
    uint64_t now = sh_.now_ms();
    if (reserved_warned_ms_ != 0 && now - reserved_warned_ms_ < 60000) {
        ++reserved_unwarned_;
        return;
    }
    RPCGATE_LOG(gw, warn,
                "shard {}: backend {}: {} reserved source port ({}-{}): an ephemeral port instead, "
                "which a 'secure' export refuses{}",
                sh_.index(), backend, exhausted ? "no free" : "cannot bind a", cfg_.reserved_low,
                cfg_.reserved_high,
                reserved_unwarned_
                    ? fmt::format(" ({} more since the last warning)", reserved_unwarned_)
                    : "");
    reserved_warned_ms_ = now ? now : 1;
    reserved_unwarned_ = 0;
}

void shard_context::tune_ktls(int fd, const tls::session& tls) {
    const char* refused = nullptr;
    if (cfg_.ktls_rx_no_pad && tls.kernel_rx() && !tls::ktls::set_rx_expect_no_pad(fd))
        refused = "TLS_RX_EXPECT_NO_PAD";
    if (cfg_.ktls_tx_record_size && tls.kernel_tx() &&
        !tls::ktls::set_tx_max_payload(fd, uint16_t(cfg_.ktls_tx_record_size)))
        refused = "TLS_TX_MAX_PAYLOAD_LEN";
    if (!refused) return;
    int e = errno;
    core::bump(counters_.ktls_option_failures);
    if (ktls_option_warned_) return;
    ktls_option_warned_ = true;
    RPCGATE_LOG(gw, warn,
                "shard {}: the kernel refused {} on a kTLS connection ({}): the kernel's "
                "default applies (counted in ktls_option_failures; this is the shard's only "
                "warning)",
                sh_.index(), refused, std::strerror(e));
}

}  // namespace rpcgate::gw
