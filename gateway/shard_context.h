// The gateway's part of one shard: its listeners' accept policy, its live
// client sessions, its counters, and the narrow API through which a session
// and its backend links reach the shard, the configuration and the
// handshake threads.
//
// Threading: everything here runs on the shard's own thread, except the
// counters (atomics, read by anyone) and what the gateway sets up before
// the shard starts (use_handshakers, set_upstream_contexts).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "core/shard.h"
#include "gateway/admission.h"
#include "gateway/call_stats.h"
#include "gateway/config.h"
#include "gateway/metrics.h"
#include "gateway/router.h"
#include "gateway/upgrade.h"
#include "tls/handshake_service.h"
#include "tls/ktls.h"

namespace rpcgate::gw {

using tls::handshake_counters;
using tls::handshake_result;
using tls::handshake_service;
using tls::upstream_request;
using tls::upstream_result;

class client_session;

// A backend link waiting for a handshake thread to take it through the
// RFC 9289 probe and client handshake.
class upstream_waiter {
  public:
    virtual void on_upstream(upstream_result&& r) = 0;

  protected:
    ~upstream_waiter() = default;
};

// Record marks for forwarded records, carved four bytes at a time out of a
// shared block so that forwarding a record does not allocate.
class mark_arena {
  public:
    core::slice mark(uint32_t payload_len);

  private:
    static constexpr size_t k_block = 4096;
    core::slice block_;
    size_t used_ = k_block;
};

// The live sessions of a shard: an intrusive list (a session is its node).
class session_list {
  public:
    struct node {
        node* next_in_shard = nullptr;
        node* prev_in_shard = nullptr;
    };
    void add(node* n) noexcept;
    void remove(node* n) noexcept;
    bool empty() const noexcept { return head_ == nullptr; }
    // Calls f(client_session&) for each; f may end the session it is given.
    template <typename F>
    void for_each(F&& f);

  private:
    node* head_ = nullptr;
};

class shard_context final : public core::listener_handler {
  public:
    shard_context(const gateway_config& cfg, core::shard& sh, std::atomic<uint32_t>& open);
    ~shard_context() override;

    // ---- set up by the gateway before the shard starts
    // The handshake service (null without TLS): every handshake, both roles.
    void use_handshakers(handshake_service* hs) noexcept { hs_ = hs; }
    // Per route: the client TLS context for upstream TLS (null: plaintext),
    // swapped by gateway::reload(); the gateway keeps every one alive.
    void set_upstream_contexts(const std::atomic<const tls::context*>* ctx) noexcept {
        upstream_ctx_ = ctx;
    }
    // The handler of --implicit-tls listeners.
    core::listener_handler& implicit_listener() noexcept { return implicit_; }
    // A listener that failed to open while the shard started ("" if none).
    std::string& start_error() noexcept { return start_error_; }

    // ---- listeners, handshake threads, stop (shard thread)
    void on_accept(core::shard& s, int fd, const sockaddr_storage& peer) override;
    // A connection whose TLS handshake completed on a handshake thread.
    void deliver(handshake_result&& r);
    // A backend connection back from a handshake thread (client role).
    void deliver_upstream(upstream_result&& r);
    // The shard is stopping: drain every session, up to the drain timeout.
    void on_stop();

    // ---- upgrade (upgrade.h), shard thread
    // The old process, once the new one accepts: stop accepting; move every
    // plaintext session at its next record boundary (into `sink`); close
    // the others (TLS) at their next idle point. After `drain_ms` a session
    // that has not moved is closed between records.
    void begin_move(std::shared_ptr<move_sink> sink, uint32_t drain_ms);
    bool moving() const noexcept { return sink_ != nullptr; }
    // A session detached itself: on to the new process.
    void moved(std::unique_ptr<moved_conn> c);
    // A session that wanted to move no longer does (it moved, or ended).
    void move_settled() noexcept {
        if (move_pending_ > 0) --move_pending_;
    }
    void move_wanted() noexcept { ++move_pending_; }
    // The new process: a connection from the old one (false: closed).
    bool adopt_moved(std::unique_ptr<moved_conn> c, upgrade_counters& st);
    // Sessions that ended here after the move, by fate (read after join).
    std::atomic<uint64_t> upgrade_drained{0}, upgrade_closed{0};

    // ---- for sessions and backend links (shard thread)
    const gateway_config& config() const noexcept { return cfg_; }
    core::shard& shard() noexcept { return sh_; }
    const router& routes() const noexcept { return router_; }
    gateway_counters& counters() noexcept { return counters_; }
    // Per-call accounting (call_stats.h); null with --no-call-stats.
    call_stats* calls() noexcept { return calls_.get(); }
    backend_health& health(size_t route) noexcept { return health_[route]; }
    admission& admit() noexcept { return admission_; }
    session_list& sessions() noexcept { return sessions_; }
    // A record mark for a record of `payload_len` bytes (no allocation).
    core::slice record_mark(uint32_t payload_len) { return marks_.mark(payload_len); }
    // Where a TLS socket's crypto runs, asked of the kernel.
    tls::ktls::protection protection_of(int fd) { return diag_.query(fd); }
    // A TLS connection just handed to the shard (either role): the kTLS record
    // options of the configuration (--ktls-rx-no-pad, --ktls-tx-record-size)
    // on the directions the kernel holds. A refusal is counted and warned about
    // once per shard; the connection goes on with the kernel's defaults.
    void tune_ktls(int fd, const tls::session& tls);
    // True when the gateway runs handshakes (TLS or upstream TLS configured).
    bool runs_handshakes() const noexcept { return hs_ != nullptr; }
    // A backend connection got an ephemeral source port instead of a reserved
    // one: one warning a minute per shard at most (the counter has them all).
    void warn_reserved_fallback(const std::string& backend, bool exhausted);
    // The route's upstream client context now (null: plaintext).
    const tls::context* upstream_context(size_t route) const noexcept {
        return upstream_ctx_ ? upstream_ctx_[route].load() : nullptr;
    }
    // Hands a connection to whichever thread runs server handshakes.
    bool submit_handshake(int fd, core::conn_id id, std::string peer, core::slice_chain&& early);
    // Hands a backend connection to the handshake thread (client role);
    // `w` gets the answer unless it forgets the token first.
    bool submit_upstream(upstream_request&& r, upstream_waiter* w, uint64_t* token);
    void forget_upstream(uint64_t token) { waiting_.erase(token); }

    // ---- read by the gateway (metrics)
    const gateway_counters& counters() const noexcept { return counters_; }
    const call_stats* calls() const noexcept { return calls_.get(); }
    const backend_health* health() const noexcept { return health_.get(); }
    const admission& admit() const noexcept { return admission_; }

  private:
    // Accepts on --implicit-tls listeners: straight to a handshake thread.
    struct implicit_acceptor final : core::listener_handler {
        shard_context* ctx = nullptr;
        void on_accept(core::shard& s, int fd, const sockaddr_storage& peer) override;
    };
    static void on_drain_deadline(core::timer*, void* arg);
    static void on_move_tick(core::timer*, void* arg);

    const gateway_config& cfg_;
    core::shard& sh_;
    router router_;
    gateway_counters counters_;
    std::unique_ptr<call_stats> calls_;
    admission admission_;
    std::unique_ptr<backend_health[]> health_;
    mark_arena marks_;
    tls::ktls::diag_socket diag_;
    implicit_acceptor implicit_;
    handshake_service* hs_ = nullptr;
    const std::atomic<const tls::context*>* upstream_ctx_ = nullptr;
    std::unordered_map<uint64_t, upstream_waiter*> waiting_;  // by token
    uint64_t next_token_ = 0;
    session_list sessions_;
    core::timer drain_timer_;
    // Upgrade: where moved sessions go (null when none is under way), how
    // many sessions still want to move, when moving gives up.
    std::shared_ptr<move_sink> sink_;
    size_t move_pending_ = 0;
    uint64_t move_deadline_ms_ = 0;
    uint32_t upgrade_drain_ms_ = 0;
    bool sink_done_ = false;
    core::timer move_timer_;
    std::string start_error_;
    uint64_t reserved_warned_ms_ = 0;
    uint64_t reserved_unwarned_ = 0;
    bool ktls_option_warned_ = false;
};

}  // namespace rpcgate::gw
