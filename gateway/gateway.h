// The RPC gateway: the process-wide object that starts the shards, the
// handshake threads and the admin endpoint, reloads the TLS material, and
// gathers what the shards count.
//
// One `gateway` owns N shards (core::shard), each with its shard_context.
// Each shard accepts clients on its own SO_REUSEPORT listener; a client
// connection becomes a `client_session` on that shard, and the session opens
// one `backend_link` per route it uses, on first use, on the same shard.
// Records are reassembled on both sides and forwarded whole and in order
// (xid untouched), by direction: CALLs from the client go to the backend of
// their program, REPLYs come back; CALLs from a backend (the NFSv4.1
// backchannel) go to the client and the client's REPLYs go back to the
// backend that called. Nothing is copied: a record is
// forwarded as the receive buffers it arrived in, plus a new record mark.
//
// The gateway answers some calls itself: portmap v2 NULL/GETPORT (GETPORT
// of a routed program returns the gateway's own port, so an NFSv3 client can
// mount through one port with no rpcbind behind it), PROG_UNAVAIL for
// unrouted programs, RPC_MISMATCH, GARBAGE_ARGS, and, with --tls off,
// AUTH_ERROR for AUTH_TLS probes; otherwise a probe is answered STARTTLS
// (RFC 9289) and the connection goes to a handshake thread.
//
// Files: client_session (one client connection), backend_link (one backend
// connection), router (program and version -> route, call policy),
// admission (limits), control_records (kTLS non-data records), metrics (the
// counter table), shard_context (one shard's part), admin (HTTP), config.
// docs/architecture.md follows a record through them.
//
// Threading: `start`, `stop`, `wait` and `totals` are for the main thread;
// everything else runs on the shards.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/shard.h"
#include "gateway/config.h"
#include "gateway/metrics.h"
#include "gateway/readiness.h"
#include "gateway/upgrade.h"
#include "tls/context.h"
#include "tls/identity_map.h"

namespace rpcgate::tls {
class handshake_service;
}  // namespace rpcgate::tls

namespace rpcgate::gw {

class shard_context;
class admin_server;

class gateway {
  public:
    explicit gateway(gateway_config cfg);
    ~gateway();
    gateway(const gateway&) = delete;
    gateway& operator=(const gateway&) = delete;

    // Starts every shard and opens the listeners. Returns "" or a one-line error.
    std::string start();
    // Stop accepting, finish replies in flight (up to the drain timeout), close.
    // Thread-safe; idempotent.
    void stop();
    // Waits until every shard has exited.
    void wait();
    // The port of the first --listen address (resolved when it was 0).
    uint16_t port() const noexcept { return port_; }
    // The port of the first --implicit-tls address, or 0.
    uint16_t implicit_port() const noexcept { return implicit_port_; }
    gateway_totals totals() const;
    // Every counter in Prometheus text format (what /metrics serves).
    std::string metrics_text() const;
    // Main thread (SIGHUP): re-reads the certificate, key, CA, CRL and the
    // --cert-user-map. New handshakes use them; established connections go on,
    // except those whose client certificate the new CRL revokes, which are
    // closed. On any error nothing changes and the reason is returned.
    std::string reload();
    // Every client connection as a JSON array (asks each shard; main/admin thread).
    std::string connections_json();
    // GET /clients[?top=N&by=calls|bytes] and GET /connections?top=N...:
    // the bounded per-client views of client_views.h.
    std::string views_json(const std::string& target);
    // True when every shard and the control thread answer within `ms`.
    bool ping_all(int ms);
    // /readyz: listeners up (shards answer) and each route's backend reachable;
    // blocks up to about a second (admin thread).
    readiness check_ready();
    // The port of the --admin endpoint, or 0.
    uint16_t admin_port() const noexcept;
    const gateway_config& config() const noexcept { return cfg_; }

    // ---- upgrade (upgrade.h)
    // Before start(): listening sockets to adopt instead of binding.
    void inherit(inherited_listeners l) { inherited_ = std::move(l); }
    // Before start(): what POST /upgrade does ("" = started, or why not).
    void set_upgrade_trigger(std::function<std::string()> f) { upgrade_trigger_ = std::move(f); }
    upgrade_counters& upgrade_stats() noexcept { return upgrade_; }
    size_t shard_count() const noexcept { return shards_.size(); }
    // Main thread: every listening socket, grouped as the offer lists them.
    bool handoff_listeners(std::vector<upgrade_wire::listener_group>* groups,
                           std::vector<int>* fds);
    // Main thread, once the new process accepts: the shards stop accepting
    // and move their sessions into `sink`; the admin endpoint stops.
    void begin_move(std::shared_ptr<move_sink> sink, uint32_t drain_ms);
    // The new process's upgrade thread: a connection for one of our shards.
    bool adopt_moved(std::unique_ptr<moved_conn> c);
    // After wait(): the sessions that ended here after a move, by fate.
    void upgrade_leftovers(uint64_t* drained, uint64_t* closed) const;

  private:
    gateway_config cfg_;
    std::atomic<uint32_t> open_connections_{0};
    std::unique_ptr<tls::context> tls_ctx_;
    // Per route: the client context for upstream TLS (null: plaintext), and
    // the pointer the shards read (swapped by reload()).
    std::vector<std::unique_ptr<tls::context>> upstream_ctx_;
    std::unique_ptr<std::atomic<const tls::context*>[]> upstream_live_;
    std::unique_ptr<tls::identity_map> identities_;
    // Every handshake, both roles; on the socket with --ktls auto (kernel has it) / on.
    std::unique_ptr<tls::handshake_service> hs_;
    std::unique_ptr<admin_server> admin_;
    std::atomic<bool> stopping_{false};
    // --io-backend dpdk: serves shard 0's listeners; outlives the shards.
    std::unique_ptr<core::io_backend> io_backend_;
    std::vector<std::unique_ptr<core::shard>> shards_;
    std::vector<std::unique_ptr<shard_context>> contexts_;
    // Other threads (main, admin) -> shard i, and -> the control thread. They
    // are single-producer rings: every use holds producer_mu_.
    std::vector<core::mailbox*> main_inboxes_;
    core::mailbox* main_to_control_ = nullptr;
    // Every TLS context and identity map ever loaded: sessions made from an
    // old one may still run, and reloads are rare.
    std::vector<std::unique_ptr<tls::context>> old_contexts_;
    std::vector<std::unique_ptr<tls::identity_map>> old_identities_;
    std::mutex producer_mu_;
    std::atomic<uint64_t> reloads_{0};
    std::atomic<uint64_t> reload_failures_{0};
    // The certificates loaded (start, each reload), for /metrics.
    mutable std::mutex certs_mu_;
    std::vector<loaded_cert> certs_;
    uint16_t port_ = 0;
    uint16_t implicit_port_ = 0;
    inherited_listeners inherited_;
    std::function<std::string()> upgrade_trigger_;
    upgrade_counters upgrade_;
    // The new process's upgrade thread -> shard i (its only producer).
    std::vector<core::mailbox*> upgrade_inboxes_;
    std::string reload_locked();
    // One client context per route with upstream TLS (null for the others).
    std::string make_upstream_contexts(std::vector<std::unique_ptr<tls::context>>* out) const;
};

}  // namespace rpcgate::gw
