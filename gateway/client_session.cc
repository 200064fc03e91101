#include "gateway/client_session.h"

#include <fmt/format.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cstring>

#include "core/log.h"
#include "gateway/admin.h"
#include "gateway/control_records.h"
#include "gateway/peer_address.h"
#include "rpc/auth_tls.h"
#include "rpc/portmap.h"
#include "rpc/xdr_codec.h"

namespace rpcgate::gw {

using core::bump;
using core::conn_id;
using core::slice;
using core::slice_chain;
using core::stream;

client_session::client_session(shard_context& ctx, stream* client, const sockaddr_storage& peer,
                               connection_slot slot)
    : client_session(ctx, client, core::next_conn_id(), peer_text(peer), nullptr, peer,
                     std::move(slot)) {}

client_session::client_session(shard_context& ctx, stream* client, handshake_result&& r,
                               const sockaddr_storage& peer, connection_slot slot)
    : client_session(ctx, client, r.id, std::move(r.peer), std::move(r.session), peer,
                     std::move(slot)) {
    certuser_ = std::move(r.certuser);
}

client_session::client_session(shard_context& ctx, stream* client, conn_id id, std::string peer,
                               std::unique_ptr<tls::session> tls, const sockaddr_storage& peer_addr,
                               connection_slot slot, bool moved)
    : ctx_(ctx),
      client_(client),
      id_(id),
      peer_(std::move(peer)),
      peer_addr_(peer_addr),
      slot_(std::move(slot)),
      // A DPDK connection's fd is one end of a socketpair: no port there.
      own_port_(local_port(client->fd()) ? local_port(client->fd()) : ctx.shard().listen_port()),
      rr_(rpc::record_limits{ctx.config().max_record, rpc::default_max_fragments}),
      links_(ctx.config().backends.size()),
      tls_(std::move(tls)) {
    gateway_counters& c = ctx_.counters();
    open_.take(c.sessions_open);
    if (tls_) {
        if (!moved) bump(c.tls_sessions);  // a moved one was counted where it began
        tls_open_.take(c.tls_open);
        // Own records: OpenSSL's part ended with the handshake; its SSL
        // object (several KiB) goes, what the gateway reads of it stays.
        tls_->drop_openssl();
        prot_ = ctx_.protection_of(client->fd());
        keys_.start(*tls_, ctx_.config().tls_rekey_after, ctx_.config().ktls_tx_record_size);
        ctx_.tune_ktls(client->fd(), *tls_);
        prot_open_[0].take(c.tls_protection_open[0][size_t(prot_.tx)]);
        prot_open_[1].take(c.tls_protection_open[1][size_t(prot_.rx)]);
    }
    ctx_.sessions().add(this);
    last_activity_ = ctx_.shard().now_ms();
    created_ms_ = last_activity_;
    idle_timer_.set_callback(&client_session::on_idle_timer, this);
    ktls_close_timer_.set_callback(
        [](core::timer*, void* arg) { static_cast<client_session*>(arg)->kernel_close_notify(); },
        this);
    tls_quiet_timer_.set_callback(
        [](core::timer*, void* arg) {
            auto* s = static_cast<client_session*>(arg);
            if (s->tls_ && s->client_ && s->client_->queued_bytes() == 0)
                s->tls_->release_buffers();
        },
        this);
    if (ctx_.config().idle_timeout_s)
        ctx_.shard().timers().arm(idle_timer_, uint64_t(ctx_.config().idle_timeout_s) * 1000);
    RPCGATE_LOG(gw, debug, "conn {} {} from {} on shard {}", id_,
                tls_ ? "continues in TLS" : "accepted", peer_, ctx_.shard().index());
}

client_session::~client_session() {
    if (want_move_) ctx_.move_settled();
    if (leftover_) core::bump(cut_ ? ctx_.upgrade_closed : ctx_.upgrade_drained);
    ctx_.sessions().remove(this);
    ctx_.admit().release_source(peer_addr_);
    // slot_ (unless handed to a handshake thread) and the gauges give
    // themselves back.
}

void client_session::touch() noexcept {
    last_activity_ = ctx_.shard().now_ms();
}

// ---- client side

void client_session::on_data(stream& s, slice data) {
    touch();
    bump(ctx_.counters().bytes_from_clients, data.size());
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
        if (upgrade_drain_) maybe_close_idle();
        return;
    }
    if (first_bytes_) {
        first_bytes_ = false;
        if (ctx_.config().tls_auto && ctx_.runs_handshakes() && data.size() > 0 &&
            data[0] == 0x16) {
            if (!ctx_.admit().allow_handshake(peer_addr_, ctx_.shard().now_ms())) {
                terminate("TLS handshake rate of this source exceeded: closing", -EAGAIN);
                return;
            }
            bump(ctx_.counters().implicit_tls);
            starttls_ = true;
            early_.push_back(slice::copy_of(data.data(), data.size()));
            hand_off();
            return;
        }
    }
    feed_plain(data);
    flush_links();
    if (want_move_) try_move();
    if (upgrade_drain_) maybe_close_idle();
}

// Calls for TLS backends are encrypted once per client receive batch.
void client_session::flush_links() {
    if (!links_tls_dirty_) return;
    links_tls_dirty_ = false;
    for (auto& l : links_)
        if (l) l->flush();
}

void client_session::pump_tls() {
    if (tls_->kernel_rx()) return;  // the socket yields plaintext itself
    // A TLS connection that goes quiet gives its buffers back (~50 KB ->
    // ~15 KB); re-arming an armed timer is two pointer swaps.
    ctx_.shard().timers().arm(tls_quiet_timer_, k_tls_quiet_ms);
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
        // Half kTLS (TX in the kernel): the client asked us to update keys
        // the kernel holds. close_notify under the old key, close.
        bump(ctx_.counters().tls_key_update_closes);
        RPCGATE_LOG(gw, info, "conn {} ({}): {}: closing", id_, peer_, tls_->error_text());
        close_all(0);
    } else if (st == tls::status::error) {
        bump(ctx_.counters().tls_errors);
        // A fatal error (a bad record, or a fatal alert from the client):
        // OpenSSL has put its own alert in `out` (half kTLS: sent through
        // the kernel's TX itself); RFC 8446 §6.2: no close_notify after it.
        tls_shut_ = true;
        terminate(fmt::format("TLS error: {}", tls_->error_text()), -EPROTO);
    }
}

void client_session::feed_plain(const slice& data) {
    auto r = rr_.feed(data, [this](slice_chain&& rec) { return on_client_record(std::move(rec)); });
    if (!r.ok()) {
        bump(ctx_.counters().oversize);
        terminate(fmt::format("client sent a record over the limit ({}): closing",
                              rpc::make_error_code(r.error()).message()),
                  -EMSGSIZE);
        return;
    }
    // After a probe, the rest of this buffer already belongs to TLS.
    if (starttls_ && *r < data.size())
        early_.push_back(slice::copy_of(data.data() + *r, data.size() - *r));
}

void client_session::on_eof(stream& s, int err) {
    if (err == -EIO && tls_ && tls_->kernel_rx() && client_ && !terminating_) {
        // A kTLS RX socket stops plain receives with EIO at a record that
        // is not application data; it waits at the head of the socket.
        on_control_record();
        return;
    }
    if (rr_.partial()) {
        bump(ctx_.counters().cut_records);
        RPCGATE_LOG(gw, info, "conn {}: client closed inside a record ({} bytes held)", id_,
                    rr_.buffered());
    }
    // Replies still owed to a client that has gone cannot be delivered.
    close_all(err);
}

void client_session::on_writable(stream&) {
    if (!client_full_) return;
    client_full_ = false;
    for (auto& l : links_)
        if (l) l->resume_receive();
}

void client_session::on_closed(stream& s, int err) {
    if (client_ && &s != client_) return;  // the stream before a re-adoption
    client_ = nullptr;
    idle_timer_.cancel();
    ktls_close_timer_.cancel();
    tls_quiet_timer_.cancel();
    if (!moving_)  // moving: the links are detaching themselves
        for (auto& l : links_)
            if (l) l->close(err);
    maybe_free();
}

// ---- records from the client

// Returns false to stop reading further records from this client now.
bool client_session::on_client_record(slice_chain&& rec) {
    if (terminating_) return false;
    auto peek = rpc::peek_message(rec);
    if (!peek.ok()) {
        bump(ctx_.counters().malformed);
        terminate("client sent bytes that are not an RPC message: closing", -EPROTO);
        return false;
    }
    if (peek->type == rpc::msg_type::reply)
        return forward_backchannel_reply(std::move(rec), peek->xid);

    auto call = rpc::decode_call(rec);
    if (!call.ok()) {
        if (call.error() == rpc::errc::rpc_version_mismatch) {
            reply_local(rpc::build_reply(rpc::reply_header::rpc_mismatch(peek->xid)));
        } else if (call.error() == rpc::errc::too_long) {
            // A credential or verifier over 400 bytes (RFC 5531 §8.2).
            reply_local(rpc::build_reply(
                rpc::reply_header::auth_error(peek->xid, rpc::auth_stat::badcred)));
        } else {
            bump(ctx_.counters().garbage_args);
            reply_local(rpc::build_reply(
                rpc::reply_header::accepted(peek->xid, rpc::accept_stat::garbage_args)));
        }
        return true;
    }
    const rpc::call_header& h = call->header;
    const gateway_config& cfg = ctx_.config();
    call_decision d =
        decide_call(h, tls_ != nullptr, ctx_.runs_handshakes() && cfg.tls != tls_policy::off,
                    listener_policy{cfg.tls, &cfg.tls_programs}, cfg.answer_portmap, ctx_.routes());
    if (d.plaintext_allowed) bump(ctx_.counters().plaintext_allowed);
    switch (d.verdict) {
        case call_verdict::starttls:
            start_tls(h.xid);
            return false;  // what follows the probe is TLS, not RPC
        case call_verdict::refuse_probe:
            // TLS is off: answer like a server that does not offer RPC-with-TLS.
            bump(ctx_.counters().tls_probes);
            RPCGATE_LOG(gw, info, "conn {} ({}): AUTH_TLS probe refused (--tls off)", id_, peer_);
            reply_local(rpc::build_reply(
                rpc::reply_header::auth_error(h.xid, rpc::auth_stat::rejectedcred)));
            return true;
        case call_verdict::auth_tls_misuse:
            bump(ctx_.counters().auth_tls_misuse);
            reply_local(rpc::build_auth_tls_badcred_reply(h.xid));
            return true;
        case call_verdict::too_weak:
            bump(ctx_.counters().too_weak);
            reply_local(
                rpc::build_reply(rpc::reply_header::auth_error(h.xid, rpc::auth_stat::tooweak)));
            return true;
        case call_verdict::portmap:
            answer_portmap(*call);
            return true;
        case call_verdict::prog_mismatch:
            bump(ctx_.counters().prog_unavail);
            reply_local(rpc::build_reply(rpc::reply_header::prog_mismatch(h.xid, d.low, d.high)));
            return true;
        case call_verdict::prog_unavail:
            bump(ctx_.counters().prog_unavail);
            reply_local(rpc::build_reply(
                rpc::reply_header::accepted(h.xid, rpc::accept_stat::prog_unavail)));
            return true;
        case call_verdict::forward:
            break;
    }
    backend_link* l = link_for(d.route, h.vers);
    if (!l) return false;
    ++calls_outstanding_;
    ++calls_forwarded_;
    bump(ctx_.counters().calls_forwarded);
    if (call_stats* cs = ctx_.calls())
        note_call(*cs, in_flight_, ctx_.counters(), h.xid,
                  rpc::classify_call(h.prog, h.vers, h.proc, call->args), rec.size(),
                  ctx_.shard().now_ns());
    if (certuser_) {
        // tlscertuser: the certificate's identity replaces the credential;
        // the arguments are spliced behind the new header, not copied.
        l->send_record(frame(with_certuser_cred(h, std::move(call->args))));
    } else {
        l->send_record(frame(std::move(rec)));
    }
    if (l->full() && client_ && !client_->receive_paused()) {
        l->set_blocks_client();
        bump(ctx_.counters().flow_pauses);
        client_->pause_receive();
    }
    return !terminating_;
}

bool client_session::forward_backchannel_reply(slice_chain&& rec, uint32_t xid) {
    // The reply goes to the backend whose CALL carried this xid.
    backend_link* target = nullptr;
    for (size_t i = 0; i < bc_calls_.size(); ++i) {
        if (bc_calls_[i].xid == xid) {
            backend_link* l = links_[bc_calls_[i].route].get();
            bc_calls_[i] = bc_calls_.back();
            bc_calls_.pop_back();
            if (l && l->alive()) target = l;
            break;
        }
    }
    if (!target) {
        bump(ctx_.counters().orphan_replies);
        RPCGATE_LOG(gw, debug, "conn {}: REPLY xid {:#x} answers no backend call; dropped", id_,
                    xid);
        return true;
    }
    bump(ctx_.counters().backchannel_replies);
    target->send_record(frame(std::move(rec)));
    return true;
}

// ---- records from a backend

bool client_session::on_backend_record(backend_link& l, slice_chain&& rec) {
    if (terminating_ || !client_) return false;
    auto peek = rpc::peek_message(rec);
    if (!peek.ok()) {
        bump(ctx_.counters().malformed);
        terminate(fmt::format("backend {} sent bytes that are not an RPC message", l.target()),
                  -EPROTO);
        return false;
    }
    if (peek->type == rpc::msg_type::call) {
        // Backchannel (NFSv4.1 CB_*): remember who called, bounded.
        if (bc_calls_.size() >= k_max_bc_calls) bc_calls_.erase(bc_calls_.begin());
        bc_calls_.push_back({peek->xid, l.route_index()});
        bump(ctx_.counters().backchannel_calls);
    } else {
        if (calls_outstanding_ > 0) --calls_outstanding_;
        bump(ctx_.counters().replies_forwarded);
        if (call_stats* cs = ctx_.calls())
            note_reply(*cs, in_flight_, rec, peek->xid, l.ready_ns(), ctx_.shard().now_ns());
    }
    bump(ctx_.counters().bytes_to_clients, rec.size());
    send_to_client(frame(std::move(rec)));
    if (!client_ || terminating_) return false;
    if (client_->full() && !client_full_) {
        client_full_ = true;
        bump(ctx_.counters().flow_pauses);
        for (auto& other : links_)
            if (other) other->pause_receive();
    }
    if (draining_ && calls_outstanding_ == 0) finish_client();
    if (upgrade_drain_) maybe_close_idle();
    if (!client_ || terminating_) return false;
    // Keep going even when the client is full: pausing stops the next
    // receive, but the rest of this buffer must still be delivered.
    return true;
}

void client_session::maybe_resume_client() {
    if (paused_for_move_) return;
    for (auto& l : links_)
        if (l && l->blocks_client()) return;
    if (client_ && !draining_) client_->resume_receive();
}

slice_chain client_session::with_certuser_cred(const rpc::call_header& h, slice_chain&& args) {
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
    bump(ctx_.counters().certuser_rewrites);
    rpc::xdr_writer w;
    rpc::encode_call_header(w, h2);
    w.append(std::move(args));
    return w.finish();
}

slice_chain client_session::frame(slice_chain&& rec) {
    slice_chain out;
    out.push_back(ctx_.record_mark(uint32_t(rec.size())));
    out.append(std::move(rec));
    return out;
}

// ---- to the client

// Everything for the client goes through here: encrypted when in TLS.
void client_session::send_to_client(slice_chain&& bytes) {
    if (!client_) return;
    if (!tls_ || tls_->kernel_tx()) {  // kTLS TX: the kernel encrypts
        size_t n = bytes.size();
        client_->send(std::move(bytes));
        if (!tls_) return;
        switch (keys_.due(client_->fd(), n)) {
            case key_updates::tx_step::go_on:
                break;
            case key_updates::tx_step::rekey:
                readopt();
                break;
            case key_updates::tx_step::close:
                // Between RPC records: `bytes` ended with a whole one.
                bump(ctx_.counters().tls_key_exhausted_closes);
                RPCGATE_LOG(gw, info, "conn {} ({}): {}", id_, peer_, keys_.close_reason());
                close_all(0);  // close_notify once the queue has left
                break;
        }
        return;
    }
    // Encrypted once per batch (flush_tls at the end of every receive
    // handler): many small replies share one TLS record.
    tls_pending_.append(std::move(bytes));
    if (tls_pending_.size() >= k_tls_batch) flush_tls();
}

void client_session::flush_tls() {
    if (!tls_ || tls_pending_.empty() || !client_ || tls_->kernel_tx()) return;
    slice_chain out;
    tls::status st = tls_->write(tls_pending_, out);
    tls_pending_.clear();
    if (st == tls::status::error) {
        bump(ctx_.counters().tls_errors);
        terminate(fmt::format("TLS write failed: {}", tls_->error_text()), -EPROTO);
        return;
    }
    keys_.count_userspace(ctx_.counters());
    client_->send(std::move(out));
}

void client_session::reply_local(slice reply) {
    bump(ctx_.counters().local_replies);
    send_to_client(slice_chain(std::move(reply)));
}

void client_session::answer_portmap(const rpc::call_message& call) {
    const rpc::call_header& h = call.header;
    bump(ctx_.counters().portmap_calls);
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
                bump(ctx_.counters().garbage_args);
                reply_local(rpc::build_reply(
                    rpc::reply_header::accepted(h.xid, rpc::accept_stat::garbage_args)));
                return;
            }
            uint32_t port = (m->prot == rpc::pmap_ipproto_tcp &&
                             ctx_.routes().route(m->prog, m->vers) != router::no_route)
                                ? own_port_
                                : 0;
            RPCGATE_LOG(gw, debug, "conn {}: portmap GETPORT prog {} vers {} -> {}", id_, m->prog,
                        m->vers, port);
            reply_local(rpc::build_getport_reply(h.xid, port));
            return;
        }
        default:
            reply_local(rpc::build_reply(
                rpc::reply_header::accepted(h.xid, rpc::accept_stat::proc_unavail)));
            return;
    }
}

backend_link* client_session::link_for(size_t route, uint32_t vers) {
    if (links_[route]) return links_[route]->alive() ? links_[route].get() : nullptr;
    auto l = std::make_unique<backend_link>(*this, ctx_, route, vers);
    if (!l->open()) return nullptr;
    links_[route] = std::move(l);
    return links_[route].get();
}

// ---- TLS hand-off

// The probe was answered: hand the socket to a handshake thread once the
// STARTTLS reply is out (RFC 9289 §4.1). The session ends here; the
// connection comes back as a new session with the same ID.
void client_session::start_tls(uint32_t xid) {
    if (!ctx_.admit().allow_handshake(peer_addr_, ctx_.shard().now_ms())) {
        terminate("TLS handshake rate of this source exceeded: closing", -EAGAIN);
        return;
    }
    starttls_ = true;
    bump(ctx_.counters().starttls);
    client_->send(rpc::build_starttls_reply(xid));
    hand_off();
}

void client_session::hand_off() {
    for (auto& l : links_)
        if (l) l->close(0);
    client_->detach([this](int fd, slice_chain&& unread) {
        slice_chain early = std::move(early_);
        for (const slice& p : unread) early.push_back(slice::copy_of(p.data(), p.size()));
        if (ctx_.submit_handshake(fd, id_, peer_, std::move(early))) {
            slot_.hand_over();  // the connection lives on with the handshake thread
        } else {
            RPCGATE_LOG(gw, warn, "conn {} ({}): TLS control thread busy: closing", id_, peer_);
            ::close(fd);
        }
    });
}

// ---- ends

void client_session::begin_drain() {
    if (draining_ || !client_ || starttls_) return;
    draining_ = true;
    client_->pause_receive();
    if (calls_outstanding_ == 0) finish_client();
}

// Orderly end: close_notify first when in TLS, then close once sent.
// `linger`: the client may still be sending (a drain): read and drop its
// bytes after ours until it closes (see stream::close_after_send).
void client_session::finish_client(bool linger) {
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
    client_->close_after_send(ctx_.config().drain_timeout_ms, close_linger_ && !peer_done_);
}

void client_session::terminate(const std::string& why, int err) {
    if (err != 0) cut_ = true;
    if (!terminating_) RPCGATE_LOG(gw, info, "conn {} ({}): {}", id_, peer_, why);
    close_all(err);
}

void client_session::close_all(int err) {
    terminating_ = true;
    if (client_ && tls_ && client_->open() && !tls_shut_) {
        finish_client(err == 0);  // close_notify first, then the socket
    } else if (client_) {
        client_->close(err);
    }
    for (auto& l : links_)
        if (l) l->close(err);
}

// kTLS TX: close_notify is a record of type alert, which only a sendmsg with
// TLS_SET_RECORD_TYPE makes, outside the stream's queue; so it waits until
// everything queued before it has been sent, then the socket closes.
void client_session::kernel_close_notify() {
    if (!client_ || !client_->open()) return;
    uint64_t now = ctx_.shard().now_ms();
    if (ktls_close_deadline_ == 0) ktls_close_deadline_ = now + ctx_.config().drain_timeout_ms;
    if (client_->queued_bytes() > 0 && now < ktls_close_deadline_) {
        ctx_.shard().timers().arm(ktls_close_timer_, 1);
        return;
    }
    if (client_->queued_bytes() == 0) send_kernel_alert(1, 0);  // warning, close_notify
    client_->close_after_send(ctx_.config().drain_timeout_ms, close_linger_ && !peer_done_);
}

void client_session::send_kernel_alert(uint8_t level, uint8_t description) {
    std::string why;
    if (!send_alert(client_->fd(), level, description, &why))
        RPCGATE_LOG(gw, debug, "conn {}: alert {} not sent: {}", id_, description, why);
}

// The record a kTLS RX receive stopped at (on_eof(-EIO)); see
// control_records.h for what each kind means here.
void client_session::on_control_record() {
    control_read r = read_control_record(client_->fd());
    control_reaction a = r.n > 0 && r.record.kind == tls::ktls::control::key_update
                             ? follow_key_update(tls_role::server, client_->fd(), tls_->secrets(),
                                                 r, tls_->kernel_tx())
                             : react(tls_role::server, r, tls_->kernel_tx());
    if (a.counter) bump(ctx_.counters().*a.counter);
    if (a.go_on) {
        if (a.rekey_tx) keys_.owe();
        readopt();
        return;
    }
    if (a.peer_done) peer_done_ = true;
    if (a.orderly) {
        if (a.peer_done)
            RPCGATE_LOG(gw, debug, "conn {} ({}): {}", id_, peer_, a.what);
        else if (!a.what.empty())
            RPCGATE_LOG(gw, info, "conn {} ({}): {}", id_, peer_, a.what);
        close_all(0);  // our close_notify, then the socket
        return;
    }
    if (a.no_close_notify) tls_shut_ = true;
    if (a.fatal_alert) send_kernel_alert(2, a.fatal_alert);
    terminate(a.what, a.err);
}

void client_session::readopt() {
    if (!client_ || readopting_ || !client_->open()) return;
    readopting_ = true;
    RPCGATE_LOG(gw, debug, "conn {}: re-adopting the kTLS socket{}", id_,
                keys_.owed() ? " for a TX rekey" : "");
    client_->detach([this](int fd, slice_chain&& unread) {
        // client_ is still the old stream (alive until its on_closed, which
        // comes after this): its pause is the session's latest word.
        bool paused = client_->receive_paused();
        readopting_ = false;
        std::string why;
        bool ok = keys_.on_drained(fd, ctx_.counters(), &why);
        client_ = ctx_.shard().adopt(fd, this);
        if (!ok) {
            bump(ctx_.counters().tls_errors);
            tls_shut_ = true;  // a KeyUpdate may be out under a key we could not install
            terminate(why, -EPROTO);
            return;
        }
        RPCGATE_LOG(gw, debug, "conn {}: adopted again, keys {} ({} unread, {})", id_,
                    keys_.generations_json(), unread.size(), paused ? "paused" : "receiving");
        if (paused) client_->pause_receive();
        for (const slice& p : unread) on_data(*client_, p.share());
        if (client_full_) on_writable(*client_);
    });
}

void client_session::maybe_free() {
    if (client_) return;
    for (auto& l : links_)
        if (l && l->has_stream()) return;
    RPCGATE_LOG(gw, debug, "conn {} ({}) closed", id_, peer_);
    delete this;
}

void client_session::on_idle_timer(core::timer* t, void* arg) {
    auto* s = static_cast<client_session*>(arg);
    uint64_t idle_ms = uint64_t(s->ctx_.config().idle_timeout_s) * 1000;
    uint64_t quiet = s->ctx_.shard().now_ms() - s->last_activity_;
    if (quiet >= idle_ms) {
        bump(s->ctx_.counters().idle_timeouts);
        s->terminate(fmt::format("idle for {} s: closing", quiet / 1000), -ETIMEDOUT);
        return;
    }
    s->ctx_.shard().timers().arm(*t, idle_ms - quiet);
}

// ---- views

bool client_session::close_if_revoked(const std::vector<X509_CRL*>& crls) {
    if (!tls_ || !client_) return false;
    X509* cert = tls_->peer_certificate();
    if (!cert) return false;
    for (X509_CRL* crl : crls) {
        X509_REVOKED* entry = nullptr;
        if (X509_CRL_get0_by_cert(crl, &entry, cert) == 1) {
            tls_->add_flags(tls::flag_disabled);
            RPCGATE_LOG(audit, info,
                        "conn {} peer {} tls revoked: flags={} subject=\"{}\" reason=certificate "
                        "revoked by the reloaded CRL: closing",
                        id_, peer_, tls::flags_text(tls_->flags()), tls_->peer_subject());
            bump(ctx_.counters().tls_revoked);
            terminate("client certificate revoked by the reloaded CRL", -EKEYREVOKED);
            return true;
        }
    }
    return false;
}

client_view client_session::view() const {
    client_view v;
    v.source = source_of(peer_);
    if (tls_) v.identity = tls_->peer_subject();
    v.calls = calls_forwarded_;
    v.bytes_in = client_ ? client_->bytes_in() : 0;
    v.bytes_out = client_ ? client_->bytes_out() : 0;
    v.json = describe_json();
    return v;
}

std::string client_session::describe_json() const {
    size_t links = 0;
    std::string upstream;  // the backend links in TLS: where their crypto runs
    for (const auto& l : links_) {
        if (l && l->alive()) ++links;
        std::string one = l ? l->tls_json() : std::string();
        if (one.empty()) continue;
        if (!upstream.empty()) upstream += ',';
        upstream += one;
    }
    std::string tls = "null";
    if (tls_)
        tls = fmt::format(
            R"({{"flags":"{}","version":"{}","cipher":"{}","alpn":"{}","subject":"{}","protection":{{"tx":"{}","rx":"{}"}},"key_generation":{}}})",
            tls::flags_text(tls_->flags()), tls_->version(), tls_->cipher(), tls_->alpn(),
            json_escape(tls_->peer_subject()), tls::ktls::mode_name(prot_.tx),
            tls::ktls::mode_name(prot_.rx), keys_.generations_json());
    return fmt::format(
        R"({{"id":"{}","peer":"{}","shard":{},"state":"{}","tls":{},"calls":{},"bytes_in":{},"bytes_out":{},"calls_in_flight":{},"backend_links":{},"backend_tls":[{}],"age_s":{:.3f}}})",
        id_, peer_, ctx_.shard().index(),
        terminating_ ? "closing"
        : draining_  ? "draining"
        : client_    ? "open"
                     : "closed",
        tls, calls_forwarded_, client_ ? client_->bytes_in() : 0,
        client_ ? client_->bytes_out() : 0, calls_outstanding_, links, upstream,
        double(ctx_.shard().now_ms() - created_ms_) / 1000.0);
}

}  // namespace rpcgate::gw
