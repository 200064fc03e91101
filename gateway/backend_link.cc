#include "gateway/backend_link.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstring>

#include "core/log.h"
#include "gateway/admin.h"
#include "gateway/client_session.h"
#include "gateway/control_records.h"

namespace rpcgate::gw {

using core::bump;
using core::slice;
using core::slice_chain;
using core::stream;

backend_link::backend_link(client_session& owner, shard_context& ctx, size_t route, uint32_t vers)
    : owner_(owner),
      ctx_(ctx),
      route_(route),
      vers_(vers),
      id_(core::next_conn_id()),
      rr_(rpc::record_limits{ctx.config().max_record, rpc::default_max_fragments}) {
    connect_timer_.set_callback(
        [](core::timer*, void* arg) {
            auto* l = static_cast<backend_link*>(arg);
            bump(l->ctx_.counters().backend_connect_failures);
            l->owner_.terminate(
                fmt::format("backend {} (conn {}): connect timed out", l->target(), l->id_),
                -ETIMEDOUT);
        },
        this);
    ready_ = ctx.upstream_context(route) == nullptr;  // plaintext: calls go straight out
}

backend_link::backend_link(client_session& owner, shard_context& ctx, size_t route, uint32_t vers,
                           core::conn_id id, int fd)
    : backend_link(owner, ctx, route, vers) {
    id_ = id;
    ready_ = true;
    s_ = ctx_.shard().adopt(fd, this);
    ready_ns_ = ctx_.shard().now_ns();
    open_.take(ctx_.health(route_).open);
}

bool backend_link::can_move() const {
    return s_ && s_->open() && ready_ && ready_ns_ != 0 && !handing_ && !tls_ && !readopting_ &&
           pending_.empty() && !rr_.partial() && s_->queued_bytes() == 0 && !closed_by_us_;
}

void backend_link::detach_for_move(core::stream::detach_fn done) {
    closed_by_us_ = true;  // its on_closed is no loss
    connect_timer_.cancel();
    s_->detach(std::move(done));
}

backend_link::~backend_link() {
    // Still with a handshake thread: its answer will find no one.
    if (token_) ctx_.forget_upstream(token_);
}

const std::string& backend_link::target() const {
    return route().spec;
}

bool backend_link::open() {
    const endpoint& ep = route().target;
    core::connect_options opt;
    // config().reserved_port is on only when the process may bind them
    // (gateway::start asks privileges.h).
    opt.reserved_port = ctx_.config().reserved_port;
    opt.reserved_low = ctx_.config().reserved_low;
    opt.reserved_high = ctx_.config().reserved_high;
    int err = 0;
    core::reserved_port_outcome reserved = core::reserved_port_outcome::not_asked;
    s_ = ctx_.shard().connect(reinterpret_cast<const sockaddr*>(&ep.addr), ep.len, this, opt, &err,
                              &reserved);
    if (reserved == core::reserved_port_outcome::bound) {
        bump(ctx_.counters().reserved_port_binds);
    } else if (reserved != core::reserved_port_outcome::not_asked) {
        bump(ctx_.counters().reserved_port_fallbacks);
        ctx_.warn_reserved_fallback(ep.text, reserved == core::reserved_port_outcome::exhausted);
    }
    if (!s_) {
        bump(ctx_.counters().backend_connect_failures);
        owner_.terminate(
            fmt::format("backend {}: cannot create socket: {}", ep.text, std::strerror(-err)), err);
        return false;
    }
    ctx_.shard().timers().arm(connect_timer_, ctx_.config().connect_timeout_ms);
    return true;
}

void backend_link::on_connected(stream& s, int err) {
    connect_timer_.cancel();
    if (err < 0) {
        bump(ctx_.counters().backend_connect_failures);
        bump(ctx_.health(route_).failures);
        owner_.terminate(fmt::format("backend {} (conn {}): connect failed: {}", target(), id_,
                                     std::strerror(-err)),
                         err);
        return;
    }
    open_.take(ctx_.health(route_).open);
    bump(ctx_.counters().backend_connects);
    bump(ctx_.health(route_).connects);
    RPCGATE_LOG(gw, debug, "conn {}: backend {} connected as conn {}", owner_.id(), target(), id_);
    if (ready_) ready_ns_ = ctx_.shard().now_ns();
    if (!ready_) start_upstream_tls();
    if (ready_) owner_.try_move();  // an upgrade waiting for this connect
}

// RFC 9289 client role: the handshake thread sends the probe, reads the
// reply and runs the handshake; on_upstream() gets the socket back.
void backend_link::start_upstream_tls() {
    handing_ = true;
    s_->detach([this](int fd, slice_chain&& unread) {
        upstream_request r;
        r.fd = fd;
        r.id = id_;
        r.target = target();
        r.ctx = ctx_.upstream_context(route_);
        r.prog = route().prog;
        r.vers = vers_;
        r.opportunistic = route().tls.mode == tls_policy::opportunistic;
        // Nothing can have arrived: we have sent nothing yet.
        (void)unread;
        if (!ctx_.submit_upstream(std::move(r), this, &token_)) {
            ::close(fd);
            fail_upstream("the TLS control thread is busy");
        }
    });
}

void backend_link::on_upstream(upstream_result&& r) {
    token_ = 0;
    handing_ = false;
    if (r.outcome == upstream_result::kind::failed) {
        fail_upstream(r.reason);
        return;
    }
    if (owner_.terminating() || owner_.client_gone()) {
        ::close(r.fd);
        open_.release();
        owner_.maybe_free();  // may delete the session and this link
        return;
    }
    s_ = ctx_.shard().adopt(r.fd, this);
    if (r.outcome == upstream_result::kind::tls) {
        tls_ = std::move(r.session);
        bump(ctx_.counters().upstream_tls);
        prot_ = ctx_.protection_of(r.fd);
        keys_.start(*tls_, ctx_.config().tls_rekey_after, ctx_.config().ktls_tx_record_size);
        ctx_.tune_ktls(r.fd, *tls_);
        if (tls_->kernel_tx()) bump(ctx_.counters().upstream_ktls_tx);
        if (tls_->kernel_rx()) bump(ctx_.counters().upstream_ktls_rx);
        RPCGATE_LOG(gw, debug, "conn {}: backend {} in TLS ({} {})", owner_.id(), target(),
                    tls_->version(), tls_->cipher());
    } else {
        bump(ctx_.counters().upstream_plaintext);
        RPCGATE_LOG(gw, info,
                    "conn {}: backend {} does not offer RPC-with-TLS ({}): continuing in "
                    "plaintext (upstream tls opportunistic)",
                    owner_.id(), target(), r.reason);
    }
    ready_ = true;
    ready_ns_ = ctx_.shard().now_ns();
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

void backend_link::fail_upstream(const std::string& why) {
    bump(ctx_.counters().upstream_tls_failures);
    bump(ctx_.counters().backend_connect_failures);
    bump(ctx_.health(route_).failures);
    open_.release();
    owner_.terminate(fmt::format("backend {} (conn {}): upstream TLS {} failed: {}", target(), id_,
                                 tls_policy_name(route().tls.mode), why),
                     -ECONNREFUSED);
    owner_.maybe_free();  // may delete the session and this link
}

void backend_link::send_record(slice_chain&& framed) {
    if (framed.empty()) return;
    if (!ready_) {
        pending_.append(std::move(framed));
        return;
    }
    if (!s_) return;
    if (!tls_ || tls_->kernel_tx()) {  // kTLS TX: the kernel encrypts
        size_t n = framed.size();
        s_->send(std::move(framed));
        if (!tls_) return;
        switch (keys_.due(s_->fd(), n)) {
            case key_updates::tx_step::go_on:
                break;
            case key_updates::tx_step::rekey:
                readopt(*s_);
                break;
            case key_updates::tx_step::close:
                // The whole session ends cleanly: its calls on this link
                // could not be answered on a new one.
                bump(ctx_.counters().tls_key_exhausted_closes);
                owner_.terminate(
                    fmt::format("backend {} (conn {}): {}", target(), id_, keys_.close_reason()),
                    0);
                break;
        }
        return;
    }
    tls_out_.append(std::move(framed));
    owner_.links_need_flush();
    if (tls_out_.size() >= k_tls_batch) flush();
}

void backend_link::flush() {
    if (!tls_ || tls_out_.empty() || !s_) return;
    slice_chain out;
    tls::status st = tls_->write(tls_out_, out);
    tls_out_.clear();
    if (st == tls::status::error) {
        bump(ctx_.counters().tls_errors);
        owner_.terminate(
            fmt::format("backend {}: TLS write failed: {}", target(), tls_->error_text()), -EPROTO);
        return;
    }
    keys_.count_userspace(ctx_.counters());
    s_->send(std::move(out));
}

bool backend_link::full() const {
    if (!ready_) return pending_.size() >= ctx_.config().max_inflight;
    return s_ && s_->full();
}

void backend_link::on_data(stream& s, slice data) {
    owner_.touch();
    if (tls_ && !tls_->kernel_rx()) {
        tls_->feed(std::move(data));
        receive_tls();
    } else {
        receive_plain(data);
    }
    owner_.flush_tls();
    owner_.try_move();  // an upgrade waiting for this reply to end
}

void backend_link::receive_plain(const slice& data) {
    auto r = rr_.feed(data, [this](slice_chain&& rec) {
        return owner_.on_backend_record(*this, std::move(rec));
    });
    if (!r.ok()) {
        bump(ctx_.counters().oversize);
        owner_.terminate(fmt::format("backend {} sent a record over the limit: closing", target()),
                         -EMSGSIZE);
    }
}

void backend_link::receive_tls() {
    slice_chain plain, out;
    // Post-handshake messages (NewSessionTicket, KeyUpdate) are consumed
    // here; only application data comes out.
    tls::status st = tls_->read(plain, out);
    if (!out.empty() && s_) s_->send(std::move(out));
    for (const slice& p : plain) {
        if (owner_.terminating() || owner_.client_gone()) return;
        receive_plain(p);
    }
    if (st == tls::status::closed) {
        if (owner_.terminating()) return;
        count_lost();
        owner_.terminate(
            fmt::format("backend {} (conn {}) ended TLS (close_notify)", target(), id_),
            -ECONNRESET);
    } else if (st == tls::status::error) {
        bump(ctx_.counters().tls_errors);
        owner_.terminate(fmt::format("backend {}: TLS error: {}", target(), tls_->error_text()),
                         -EPROTO);
    }
}

void backend_link::count_lost() {
    bump(ctx_.counters().backend_lost);
    bump(ctx_.health(route_).lost);
}

void backend_link::close(int err) {
    if (!s_) return;
    closed_by_us_ = true;
    if (tls_ && tls_->kernel_tx() && err == 0 && s_->open() && !tls_shut_) {
        // close_notify is an alert record (sendmsg with its type): only
        // when nothing queued would follow it.
        tls_shut_ = true;
        if (s_->queued_bytes() == 0) send_alert(s_->fd(), 1, 0, nullptr);
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

void backend_link::on_eof(stream& s, int err) {
    if (owner_.terminating()) {
        s.close(err);
        return;
    }
    if (err == -EIO && tls_ && tls_->kernel_rx()) {
        on_control_record(s);
        return;
    }
    count_lost();
    owner_.terminate(fmt::format("backend {} (conn {}) closed the connection{}{}", target(), id_,
                                 err ? ": " : "", err ? std::strerror(-err) : ""),
                     err ? err : -ECONNRESET);
}

void backend_link::on_writable(stream&) {
    if (!blocking_client_) return;
    blocking_client_ = false;
    owner_.maybe_resume_client();
}

void backend_link::on_closed(stream& s, int err) {
    if (s_ && &s != s_) return;  // the stream before a re-adoption
    s_ = nullptr;
    if (handing_ && token_) return;  // the socket went to a handshake thread
    handing_ = false;
    connect_timer_.cancel();
    open_.release();
    // A link the session closed itself (its client ended, or it went to the
    // TLS hand-off) was not lost: no count, no "lost" line.
    if (!owner_.terminating() && !closed_by_us_) {
        bump(ctx_.counters().backend_lost);
        owner_.terminate(fmt::format("backend {} connection lost", target()), err);
    }
    owner_.maybe_free();  // may delete the session and this link: nothing after
}

void backend_link::on_control_record(stream& s) {
    control_read r = read_control_record(s.fd());
    control_reaction a =
        r.n > 0 && r.record.kind == tls::ktls::control::key_update
            ? follow_key_update(tls_role::client, s.fd(), tls_->secrets(), r, tls_->kernel_tx())
            : react(tls_role::client, r, tls_->kernel_tx());
    if (a.counter) bump(ctx_.counters().*a.counter);
    if (a.go_on) {
        // A ticket was consumed or a KeyUpdate followed; a receive that
        // ended in EIO is not re-armed: adopt the socket again.
        if (a.rekey_tx) keys_.owe();
        readopt(s);
        return;
    }
    count_lost();
    if (a.no_close_notify) tls_shut_ = true;
    if (a.fatal_alert) send_alert(s.fd(), 2, a.fatal_alert, nullptr);
    owner_.terminate(fmt::format("backend {} (conn {}) {}", target(), id_, a.what), a.err);
}

void backend_link::readopt(stream& s) {
    if (readopting_ || !s.open()) return;
    readopting_ = true;
    RPCGATE_LOG(gw, debug, "conn {}: backend {}: re-adopting the kTLS socket{}", owner_.id(),
                target(), keys_.owed() ? " for a TX rekey" : "");
    s.detach([this](int fd, slice_chain&& unread) {
        // s_ is still the old stream (alive until its on_closed, which
        // comes after this): its pause is the session's latest word.
        bool paused = s_ && s_->receive_paused();
        readopting_ = false;
        std::string why;
        bool ok = keys_.on_drained(fd, ctx_.counters(), &why);
        s_ = ctx_.shard().adopt(fd, this);
        if (!ok) {
            bump(ctx_.counters().tls_errors);
            tls_shut_ = true;
            owner_.terminate(fmt::format("backend {} (conn {}): {}", target(), id_, why), -EPROTO);
            return;
        }
        RPCGATE_LOG(gw, debug, "conn {}: backend {}: adopted again, keys {} ({} unread, {})",
                    owner_.id(), target(), keys_.generations_json(), unread.size(),
                    paused ? "paused" : "receiving");
        if (paused) s_->pause_receive();
        for (const slice& p : unread) receive_plain(p);
        // The old stream drained without telling (a detaching stream makes
        // no on_writable): a client paused for this link resumes now.
        if (blocking_client_ && s_ && !s_->full()) {
            blocking_client_ = false;
            owner_.maybe_resume_client();
        }
    });
}

std::string backend_link::tls_json() const {
    if (!tls_ || !s_) return {};
    return fmt::format(
        R"({{"backend":"{}","version":"{}","protection":{{"tx":"{}","rx":"{}"}},"key_generation":{}}})",
        json_escape(target()), tls_->version(), tls::ktls::mode_name(prot_.tx),
        tls::ktls::mode_name(prot_.rx), keys_.generations_json());
}

}  // namespace rpcgate::gw
