#include "tools/bench/echo_server.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "core/log.h"
#include "rpc/message.h"
#include "rpc/record.h"
#include "tls/session.h"
#include "tools/bench/echo_protocol.h"

namespace rpcgate::bench {

struct echo_server::per_shard final : core::listener_handler {
    per_shard(const core::shard_config& cfg, const serve_options& o)
        : sh(cfg),
          tls_ctx(o.tls),
          close_after_calls(o.close_after_calls),
          drop_after_calls(o.drop_after_calls) {}
    void on_accept(core::shard& s, int fd, const sockaddr_storage& peer) override;

    core::shard sh;
    const tls::context* tls_ctx;                         // implicit TLS when set
    const uint64_t close_after_calls, drop_after_calls;  // test seams (serve_options)
    core::timer exit_timer;
    // Single-writer counters (this shard's thread), read by totals().
    std::atomic<uint64_t> calls{0}, null_calls{0}, echo_calls{0}, callback_calls{0};
    std::atomic<uint64_t> refused{0}, garbage_closes{0}, connections{0}, payload_bytes{0};
    std::atomic<uint64_t> test_closes{0};
};

namespace {

// One accepted connection. Owned by itself: deleted in on_closed.
class server_conn final : public core::stream_handler {
  public:
    server_conn(echo_server::per_shard& ps, const tls::context* tls_ctx) : ps_(ps), slab_(32) {
        if (tls_ctx) {
            std::string err;
            tls_ = tls::session::make(*tls_ctx, &err);
            if (!tls_) RPCGATE_LOG(bench, warn, "serve: TLS session: {}", err);
        }
    }

    void on_data(core::stream& s, core::slice data) override {
        if (tls_) {
            on_ciphertext(s, std::move(data));
        } else {
            feed_plain(s, data);
        }
        if (closing_) {
            end_between_calls(s);
            return;
        }
        if (s.open() && s.full()) s.pause_receive();
    }
    void on_writable(core::stream& s) override { s.resume_receive(); }
    void on_closed(core::stream&, int) override { delete this; }

  private:
    // Plaintext (from the socket, or decrypted) through the reassembler.
    bool feed_plain(core::stream& s, const core::slice& data) {
        auto fed =
            rr_.feed(data, [&](core::slice_chain&& rec) { return handle(s, std::move(rec)); });
        if (!fed) {
            RPCGATE_LOG(bench, debug, "serve: closing connection: record {}",
                        rpc::to_string(fed.error()));
            garbage(s);
            return false;
        }
        return s.open();
    }

    // Implicit TLS: the handshake from the first byte, then records. Replies
    // produced while one receive is processed are encrypted together, so a
    // pipelined burst of small calls becomes few TLS records.
    void on_ciphertext(core::stream& s, core::slice data) {
        tls_->feed(std::move(data));
        core::slice_chain out, plain;
        if (!tls_->handshake_done()) {
            tls::status st = tls_->handshake(out);
            if (st == tls::status::error || st == tls::status::closed) {
                RPCGATE_LOG(bench, debug, "serve: TLS handshake: {}", tls_->error_text());
                s.send(std::move(out));
                s.close_after_send(1000);
                return;
            }
            if (st != tls::status::done) {
                s.send(std::move(out));
                return;
            }
        }
        tls::status st = tls_->read(plain, out);
        s.send(std::move(out));
        for (const core::slice& p : plain)
            if (!feed_plain(s, p)) break;
        if (!pending_out_.empty() && s.open()) {
            core::slice_chain enc;
            if (tls_->write(pending_out_, enc) == tls::status::error) st = tls::status::error;
            pending_out_.clear();
            s.send(std::move(enc));
        }
        if (st == tls::status::closed) {
            tls_->shutdown(out);
            s.send(std::move(out));
            s.close_after_send(1000);
        } else if (st == tls::status::error) {
            garbage(s);
        }
    }
    // Every byte this connection sends goes through here.
    void emit(core::stream& s, core::slice_chain&& c) {
        if (tls_)
            pending_out_.append(std::move(c));
        else
            s.send(std::move(c));
    }

    // close_after_calls reached: the replies queued so far leave, then the
    // connection ends cleanly (close_notify first under TLS).
    void end_between_calls(core::stream& s) {
        if (!s.open() || closed_by_seam_) return;
        closed_by_seam_ = true;
        core::bump(ps_.test_closes);
        if (tls_ && tls_->handshake_done()) {
            core::slice_chain out;
            tls_->shutdown(out);
            s.send(std::move(out));
        }
        s.close_after_send(1000);
    }

    void garbage(core::stream& s) {
        core::bump(ps_.garbage_closes);
        s.close(-EPROTO);
    }
    void answer(core::stream& s, core::slice_chain&& reply) {
        core::bump(ps_.calls);
        emit(s, std::move(reply));
        if (ps_.close_after_calls && ++answered_ >= ps_.close_after_calls) closing_ = true;
    }
    void refuse(core::stream& s, const rpc::reply_header& h) {
        core::bump(ps_.refused);
        answer(s, core::slice_chain(rpc::build_reply(h)));
    }

    // Returns false to stop feeding (the connection is closing).
    bool handle(core::stream& s, core::slice_chain&& rec) {
        if (!s.open() || closing_) return false;
        auto peek = rpc::peek_message(rec);
        if (!peek) {
            garbage(s);
            return false;
        }
        if (peek->type == rpc::msg_type::reply) return backchannel_reply(s, std::move(rec));
        if (ps_.drop_after_calls && calls_taken_++ >= ps_.drop_after_calls) {
            core::bump(ps_.test_closes);
            s.close(-ECONNABORTED);
            return false;
        }
        auto call = rpc::decode_call(rec);
        if (!call) {
            if (call.error() != rpc::errc::rpc_version_mismatch) {
                garbage(s);
                return false;
            }
            refuse(s, rpc::reply_header::rpc_mismatch(peek->xid));
            return true;
        }
        const rpc::call_header& h = call->header;
        if (auto no = refusal(h, echo_program, echo_version, proc_callback)) {
            refuse(s, *no);
            return true;
        }
        if (h.proc == proc_null) {
            core::bump(ps_.null_calls);
            answer(s, success_reply(slab_, h.xid, {}));
            return true;
        }
        auto len = opaque_length(call->args);
        if (!len) {
            refuse(s, rpc::reply_header::accepted(h.xid, rpc::accept_stat::garbage_args));
            return true;
        }
        core::bump(ps_.payload_bytes, *len);
        if (h.proc == proc_echo) {
            core::bump(ps_.echo_calls);
            // The results' XDR is the arguments' XDR: the reply shares them.
            answer(s, success_reply(slab_, h.xid, std::move(call->args)));
            return true;
        }
        // CALLBACK: ask the client first, on this same connection. A client
        // that never answers must not make the table grow without bound.
        if (pending_.size() >= k_max_pending) {
            refuse(s, rpc::reply_header::accepted(h.xid, rpc::accept_stat::system_err));
            return true;
        }
        rpc::call_header cb;
        cb.xid = next_cb_xid_++;
        cb.prog = callback_program;
        cb.vers = callback_version;
        cb.proc = callback_proc_echo;
        cb.cred = rpc::opaque_auth::none();
        cb.verf = rpc::opaque_auth::none();
        pending_.push_back({cb.xid, h.xid});
        emit(s, rpc::build_call(cb, std::move(call->args)));
        return true;
    }

    bool backchannel_reply(core::stream& s, core::slice_chain&& rec) {
        auto rep = rpc::decode_reply(rec);
        if (!rep) {
            garbage(s);
            return false;
        }
        size_t i = 0;
        while (i < pending_.size() && pending_[i].first != rep->header.xid) ++i;
        if (i == pending_.size()) {
            // A reply to nothing we asked: drop it, but say so.
            RPCGATE_LOG(bench, debug, "serve: stray reply xid {:#x}", rep->header.xid);
            return true;
        }
        uint32_t orig = pending_[i].second;
        pending_[i] = pending_.back();
        pending_.pop_back();
        const rpc::reply_header& rh = rep->header;
        if (rh.stat != rpc::reply_stat::accepted || rh.accept != rpc::accept_stat::success ||
            !opaque_length(rep->results)) {
            refuse(s, rpc::reply_header::accepted(orig, rpc::accept_stat::system_err));
            return true;
        }
        core::bump(ps_.callback_calls);
        answer(s, success_reply(slab_, orig, std::move(rep->results)));
        return true;
    }

    static constexpr size_t k_max_pending = 4096;

    echo_server::per_shard& ps_;
    rpc::record_reassembler rr_;
    header_slab slab_;
    std::unique_ptr<tls::session> tls_;  // implicit TLS; null in plaintext
    core::slice_chain pending_out_;      // replies to encrypt at the end of on_data
    // Backchannel calls awaiting the client's answer: (our xid, the proc-2 xid).
    std::vector<std::pair<uint32_t, uint32_t>> pending_;
    uint32_t next_cb_xid_ = 0x40000000;
    uint64_t answered_ = 0, calls_taken_ = 0;  // for the test seams
    bool closing_ = false;                     // close_after_calls reached
    bool closed_by_seam_ = false;
};

}  // namespace

void echo_server::per_shard::on_accept(core::shard& s, int fd, const sockaddr_storage&) {
    core::bump(connections);
    s.adopt(fd, new server_conn(*this, tls_ctx));
}

echo_server::echo_server(serve_options opt) : opt_(std::move(opt)) {}

echo_server::~echo_server() {
    stop();
}

std::string echo_server::start() {
    if (running_) return "already running";
    unsigned n = opt_.shards ? opt_.shards : 1;
    socket_address addr = opt_.listen;
    for (unsigned i = 0; i < n; ++i) {
        core::shard_config cfg = opt_.shard;
        cfg.index = i;
        auto ps = std::make_unique<per_shard>(cfg, opt_);
        per_shard* p = ps.get();
        int rc = 0;
        std::string err = p->sh.start([p, &addr, &rc] {
            rc = p->sh.listen(addr.get(), addr.len, p);
            if (rc >= 0) rc = 0;
        });
        if (!err.empty()) {
            stop();
            return err;
        }
        shards_.push_back(std::move(ps));
        running_ = true;
        if (rc < 0) {
            stop();
            return "listen on " + addr.str() + ": " + std::strerror(-rc);
        }
        // Port 0: the other shards join the port the first one got.
        if (i == 0) {
            port_ = p->sh.listen_port();
            addr.set_port(port_);
        }
    }
    return {};
}

void echo_server::stop() {
    if (!running_) return;
    running_ = false;
    uint64_t drain = opt_.drain_ms;
    for (auto& ps : shards_) {
        per_shard* p = ps.get();
        p->sh.set_on_stop([p, drain] {
            // Replies already queued may still leave; after the deadline the
            // loop exits and the shard closes whatever remains.
            std::vector<core::stream*> open = p->sh.streams();
            for (core::stream* s : open) s->close_after_send(drain);
            p->exit_timer.set_callback(
                [](core::timer*, void* arg) { static_cast<core::shard*>(arg)->force_exit(); },
                &p->sh);
            p->sh.timers().arm(p->exit_timer, drain + 500);
        });
        p->sh.request_stop();
    }
    for (auto& ps : shards_) ps->sh.join();
    // Counters stay readable: totals() after stop() reports the whole run.
}

serve_totals echo_server::totals() const noexcept {
    serve_totals t;
    auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    for (const auto& ps : shards_) {
        t.calls += get(ps->calls);
        t.null_calls += get(ps->null_calls);
        t.echo_calls += get(ps->echo_calls);
        t.callback_calls += get(ps->callback_calls);
        t.refused += get(ps->refused);
        t.garbage_closes += get(ps->garbage_closes);
        t.connections += get(ps->connections);
        t.payload_bytes += get(ps->payload_bytes);
        t.test_closes += get(ps->test_closes);
    }
    return t;
}

}  // namespace rpcgate::bench
