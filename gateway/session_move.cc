// client_session's part in a live upgrade (gateway/upgrade.h,
// docs/upgrade.md): in the old process, a session that can move (plaintext,
// or TLS whose record state rpcgate or the kernel holds) waits for a record
// boundary both ways, detaches its sockets and hands them on with its state;
// any other closes at its first idle point. In the new process, a moved
// session is built from that state and reads on.
#include <fmt/format.h>

#include <cstring>

#include "core/log.h"
#include "gateway/client_session.h"

namespace rpcgate::gw {

using core::bump;
using core::slice;
using core::slice_chain;
using core::stream;

// ---- upgrade (the new process)

client_session::client_session(shard_context& ctx, stream* client, const moved_conn& c,
                               std::unique_ptr<tls::session> tls, const sockaddr_storage& peer,
                               connection_slot slot)
    : client_session(ctx, client, c.meta.id, c.meta.peer, std::move(tls), peer, std::move(slot),
                     true) {
    const upgrade_wire::conn_msg& m = c.meta;
    calls_outstanding_ = m.calls_outstanding;
    calls_forwarded_ = m.calls_forwarded;
    first_bytes_ = m.first_bytes;
    uint64_t now = ctx_.shard().now_ms();
    created_ms_ = now > m.created_ms ? now - m.created_ms : 0;
    if (m.has_certuser) certuser_ = tls::identity{m.uid, m.gid, m.gids};
    for (const auto& b : m.backchannel) bc_calls_.push_back({b.xid, b.route});
    for (const auto& f : m.calls) in_flight_.add(f.xid, f.kind, f.received_ns);
    for (size_t i = 0; i < m.links.size(); ++i) {
        const upgrade_wire::link_state& l = m.links[i];
        links_[l.route] =
            std::make_unique<backend_link>(*this, ctx_, l.route, l.vers, l.id, c.fds[i + 1]);
    }
    if (tls_ && tls_->kernel_tx()) keys_.resume(client->fd());
    if (certuser_ && tls_) tls_->add_flags(tls::flag_certuser);
    RPCGATE_LOG(gw, debug, "conn {} ({}) moved in with {} link(s), {} call(s) in flight{}", id_,
                peer_, m.links.size(), calls_outstanding_,
                !tls_               ? ""
                : tls_->kernel_rx() ? ", kTLS"
                                    : ", TLS (own records)");
}

// ---- upgrade (the old process)

void client_session::upgrade_begin() {
    if (want_move_ || upgrade_drain_ || moving_ || terminating_ || !client_) return;
    bool movable = !starttls_ && !draining_ && !client_->is_virtual();
    std::string tls_blocker = tls_ ? tls_->move_blocker() : std::string();
    if (!tls_blocker.empty()) {
        movable = false;
        RPCGATE_LOG(gw, debug, "conn {} ({}): its TLS cannot move ({}): it drains", id_, peer_,
                    tls_blocker);
    }
    for (const auto& l : links_)
        if (l && ctx_.upstream_context(l->route_index()) != nullptr) movable = false;
    if (movable) {
        want_move_ = true;
        ctx_.move_wanted();
        try_move();
        return;
    }
    // Its state lives in this process (userspace TLS in OpenSSL, a
    // handshake, upstream TLS): it ends here, at its first idle point.
    upgrade_drain_ = true;
    leftover_ = true;
    maybe_close_idle();
}

void client_session::try_move() {
    if (!want_move_ || moving_ || terminating_ || draining_ || !client_ || !client_->open()) return;
    if (!paused_for_move_) {
        // A call half-read from the client: its rest is on the way.
        if (rr_.partial() || !early_.empty()) return;
        // At a boundary on the client side: take no new call until the
        // move (the kernel keeps what arrives; the new process reads it).
        client_->pause_receive();
        paused_for_move_ = true;
    }
    // Replies still half-read or leaving, a link still connecting: later
    // (its data, its connect, or the shard's tick calls again).
    for (const auto& l : links_)
        if (l && l->has_stream() && !l->can_move()) return;
    if (client_->queued_bytes() > 0 || !tls_pending_.empty()) return;
    // kTLS: a socket re-adoption (a key change) is under way, or a KeyUpdate
    // is owed to the peer: after it.
    if (readopting_ || keys_.owed()) return;
    if (tls_ && !tls_->move_blocker().empty()) return;  // a post-handshake message half-read
    start_move();
}

// What a session that wants to move still waits for (one phrase, for the log).
std::string client_session::move_wait() const {
    if (!client_ || !client_->open()) return "the client is gone";
    if (rr_.partial()) return fmt::format("a call half-read, {} bytes held", rr_.buffered());
    if (!early_.empty()) return "bytes after a probe";
    for (const auto& l : links_)
        if (l && l->has_stream() && !l->can_move())
            return fmt::format("backend link {} not at a reply boundary or not idle", l->target());
    if (client_->queued_bytes() > 0)
        return fmt::format("{} bytes queued for the client", client_->queued_bytes());
    if (!tls_pending_.empty()) return "TLS bytes to encrypt";
    if (readopting_ || keys_.owed()) return "a kTLS key change";
    if (tls_) return tls_->move_blocker();
    return "nothing";
}

namespace {

// The pieces of one move, filled as each stream's detach completes.
struct move_state {
    std::unique_ptr<moved_conn> conn;
    std::vector<std::string> unread;  // per stream: client, then each link
    size_t left = 0;
};

std::string flatten(const slice_chain& c) {
    std::string out;
    out.reserve(c.size());
    for (const slice& p : c) out.append(reinterpret_cast<const char*>(p.data()), p.size());
    return out;
}

}  // namespace

void client_session::start_move() {
    moving_ = true;
    auto st = std::make_shared<move_state>();
    st->conn = std::make_unique<moved_conn>();
    upgrade_wire::conn_msg& m = st->conn->meta;
    m.id = id_;
    m.shard = ctx_.shard().index();
    m.peer = peer_;
    m.peer_addr.assign(reinterpret_cast<const char*>(&peer_addr_), sizeof peer_addr_);
    m.detach_ns = monotonic_ns();
    m.created_ms = ctx_.shard().now_ms() - created_ms_;
    m.calls_outstanding = calls_outstanding_;
    m.calls_forwarded = calls_forwarded_;
    m.first_bytes = first_bytes_;
    if (certuser_) {
        m.has_certuser = true;
        m.uid = certuser_->uid;
        m.gid = certuser_->gid;
        m.gids = certuser_->gids;
    }
    // Own records: ciphertext fed and not yet opened (a TLS record cut by
    // a receive) goes first among the client's unread bytes.
    std::string tls_input;
    if (tls_) {
        std::string why;
        m.has_tls = tls_->save(&m.tls, &why);  // try_move checked move_blocker
        m.tls_flags = tls_->flags();
        m.tls_subject = tls_->peer_subject();
        if (!tls_->kernel_rx()) tls_input = flatten(tls_->take_input());
    }
    in_flight_.for_each([&](uint32_t xid, rpc::call_kind kind, uint64_t ns) {
        m.calls.push_back({xid, kind, ns});
    });
    for (const bc_call& b : bc_calls_) m.backchannel.push_back({b.xid, uint32_t(b.route)});
    std::vector<backend_link*> moving_links;
    for (auto& l : links_) {
        if (!l || !l->has_stream()) continue;
        m.links.push_back({uint32_t(l->route_index()), l->vers(), l->id(), 0});
        moving_links.push_back(l.get());
    }
    size_t n = 1 + moving_links.size();
    st->conn->fds.assign(n, -1);
    st->unread.resize(n);
    st->left = n;
    shard_context* ctx = &ctx_;
    st->unread[0] = std::move(tls_input);
    auto done = [st, ctx](size_t slot, int fd, slice_chain&& unread) {
        st->conn->fds[slot] = fd;
        st->unread[slot] += flatten(unread);
        if (--st->left > 0) return;
        upgrade_wire::conn_msg& meta = st->conn->meta;
        meta.client_unread = uint32_t(st->unread[0].size());
        for (size_t i = 0; i < meta.links.size(); ++i)
            meta.links[i].unread = uint32_t(st->unread[i + 1].size());
        for (const std::string& u : st->unread) st->conn->unread += u;
        ctx->moved(std::move(st->conn));
    };
    RPCGATE_LOG(gw, debug, "conn {} ({}): moving with {} link(s), {} call(s) in flight", id_, peer_,
                moving_links.size(), calls_outstanding_);
    client_->detach([done](int fd, slice_chain&& unread) { done(0, fd, std::move(unread)); });
    for (size_t i = 0; i < moving_links.size(); ++i)
        moving_links[i]->detach_for_move(
            [done, i](int fd, slice_chain&& unread) { done(i + 1, fd, std::move(unread)); });
}

void client_session::give_up_move() {
    if (!want_move_ || moving_) return;
    want_move_ = false;
    ctx_.move_settled();
    leftover_ = true;
    cut_ = true;  // closed by the upgrade, not by its client
    paused_for_move_ = false;
    RPCGATE_LOG(gw, info,
                "conn {} ({}): reached no record boundary before the upgrade's "
                "deadline ({}): closing between records",
                id_, peer_, move_wait());
    draining_ = false;
    begin_drain();
}

void client_session::upgrade_leftover() {
    if (moving_) return;
    if (want_move_) {
        give_up_move();
        return;
    }
    if (upgrade_drain_) return;  // closing at its idle point already
    leftover_ = true;
    begin_drain();
}

void client_session::maybe_close_idle() {
    if (!upgrade_drain_ || terminating_ || !client_ || !client_->open()) return;
    if (calls_outstanding_ > 0 || rr_.partial()) return;
    RPCGATE_LOG(gw, debug, "conn {} ({}): idle at the upgrade: closing", id_, peer_);
    upgrade_drain_ = false;
    finish_client();
}

void client_session::resume_moved(const moved_conn& c) {
    const upgrade_wire::conn_msg& m = c.meta;
    std::string_view all(c.unread);
    size_t off = m.client_unread;
    for (const auto& l : m.links) {
        if (l.unread && links_[l.route])
            links_[l.route]->feed_unread(slice::copy_of(all.data() + off, l.unread));
        off += l.unread;
        if (terminating_) return;
    }
    if (m.client_unread && client_) {
        slice bytes = slice::copy_of(all.data(), m.client_unread);
        if (tls_ && !tls_->kernel_rx())
            tls_->feed(std::move(bytes));  // ciphertext under the moved keys
        else
            feed_plain(bytes);  // plaintext, or what the kernel decrypted
    }
    if (terminating_ || !client_) return;
    if (tls_) pump_tls();
    // Replies carried from the links went to tls_pending_: out they go.
    flush_tls();
    flush_links();
}

}  // namespace rpcgate::gw
