// The plaintext RPC gateway: sessions, routing, portmap, flow control.
//
// One `gateway` owns N shards (core::shard). Each shard accepts clients on
// its own SO_REUSEPORT listener; a client connection becomes a `session` on
// that shard, and the session opens one backend connection per backend it
// uses, on first use, on the same shard. Records are reassembled on both
// sides and forwarded whole and in order (xid untouched), by direction: CALLs
// from the client go to the backend of their program, REPLYs come back; CALLs
// from a backend (the NFSv4.1 backchannel) go to the client and the client's
// REPLYs go back to the backend that called. Nothing is copied: a record is
// forwarded as the receive buffers it arrived in, plus a new record mark.
//
// The gateway answers some calls itself: portmap v2 NULL/GETPORT (GETPORT
// of a routed program returns the gateway's own port, so an NFSv3 client can
// mount through one port with no rpcbind behind it), PROG_UNAVAIL for
// unrouted programs, RPC_MISMATCH, GARBAGE_ARGS, and AUTH_ERROR for AUTH_TLS
// probes (TLS is off in this build).
//
// Threading: `start`, `stop`, `wait` and `totals` are for the main thread;
// everything else runs on the shards.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/shard.h"
#include "tls/context.h"
#include "tls/identity_map.h"
#include "gateway/config.h"

namespace rpcgate::gw {

// Per-shard counters; written by the shard, read by anyone.
struct gateway_counters {
    std::atomic<uint64_t> sessions_accepted{0};
    std::atomic<uint64_t> sessions_open{0};
    std::atomic<uint64_t> sessions_refused{0};  // over --max-connections
    std::atomic<uint64_t> calls_forwarded{0};
    std::atomic<uint64_t> replies_forwarded{0};
    std::atomic<uint64_t> backchannel_calls{0};
    std::atomic<uint64_t> backchannel_replies{0};
    std::atomic<uint64_t> bytes_from_clients{0};
    std::atomic<uint64_t> bytes_to_clients{0};
    std::atomic<uint64_t> local_replies{0};   // answered by the gateway itself
    std::atomic<uint64_t> portmap_calls{0};
    std::atomic<uint64_t> prog_unavail{0};
    std::atomic<uint64_t> malformed{0};       // undecodable records (connection closed)
    std::atomic<uint64_t> garbage_args{0};    // calls with a bad header, answered
    std::atomic<uint64_t> oversize{0};        // records over --max-record (closed)
    std::atomic<uint64_t> cut_records{0};     // connection closed inside a record
    std::atomic<uint64_t> tls_probes{0};      // AUTH_TLS probes refused (TLS off)
    std::atomic<uint64_t> auth_tls_misuse{0};
    std::atomic<uint64_t> backend_connects{0};
    std::atomic<uint64_t> backend_connect_failures{0};
    std::atomic<uint64_t> backend_lost{0};    // a backend closed under a client
    std::atomic<uint64_t> idle_timeouts{0};
    std::atomic<uint64_t> orphan_replies{0};  // a client REPLY no backend asked for
    std::atomic<uint64_t> flow_pauses{0};     // a side paused because its peer was full
    std::atomic<uint64_t> starttls{0};        // probes answered with STARTTLS
    std::atomic<uint64_t> implicit_tls{0};    // accepts on --implicit-tls listeners
    std::atomic<uint64_t> tls_sessions{0};    // connections back from a handshake
    std::atomic<uint64_t> tls_errors{0};      // TLS failures after the handshake
    std::atomic<uint64_t> too_weak{0};        // plaintext calls refused (AUTH_TOOWEAK)
    std::atomic<uint64_t> certuser_rewrites{0};  // calls given a certificate's identity
    std::atomic<uint64_t> tls_revoked{0};     // closed after a CRL reload revoked them
    std::atomic<uint64_t> tls_open{0};        // TLS client connections open now
    // Kernel TLS (tls/ktls.h): non-data records the kernel stopped at.
    std::atomic<uint64_t> tls_close_notify{0};       // close_notify from the client
    std::atomic<uint64_t> tls_alerts_received{0};    // other alerts from the client
    std::atomic<uint64_t> tls_key_update_closes{0};  // KeyUpdate we cannot follow: closed
    // TLS client connections open now, by direction (0 tx, 1 rx) and where
    // the crypto runs (tls::ktls::mode: userspace, ktls-sw, ktls-hw, ktls).
    std::atomic<uint64_t> tls_protection_open[2][4] = {};
    // RFC 9289 client role, towards backends.
    std::atomic<uint64_t> upstream_tls{0};           // backend connections that went TLS
    std::atomic<uint64_t> upstream_plaintext{0};     // probe refused: plaintext (opportunistic)
    std::atomic<uint64_t> upstream_tls_failures{0};  // refused, failed or timed out
    std::atomic<uint64_t> upstream_ktls_tx{0};  // ... of upstream_tls: TX in the kernel
    std::atomic<uint64_t> upstream_ktls_rx{0};  // ... RX in the kernel
    std::atomic<uint64_t> upstream_tickets{0};  // NewSessionTickets consumed on kTLS RX
};

// Sum of the counters of all shards (plain values).
struct gateway_totals {
    uint64_t sessions_accepted = 0, sessions_open = 0, sessions_refused = 0, calls_forwarded = 0,
             replies_forwarded = 0, backchannel_calls = 0, backchannel_replies = 0,
             bytes_from_clients = 0, bytes_to_clients = 0, local_replies = 0, portmap_calls = 0,
             prog_unavail = 0, malformed = 0, garbage_args = 0, oversize = 0, cut_records = 0,
             tls_probes = 0, auth_tls_misuse = 0, backend_connects = 0,
             backend_connect_failures = 0, backend_lost = 0, idle_timeouts = 0,
             orphan_replies = 0, flow_pauses = 0, starttls = 0, implicit_tls = 0,
             tls_sessions = 0, tls_errors = 0, too_weak = 0, certuser_rewrites = 0,
             tls_revoked = 0, upstream_tls = 0, upstream_plaintext = 0,
             upstream_tls_failures = 0, tls_close_notify = 0, tls_alerts_received = 0,
             tls_key_update_closes = 0, upstream_ktls_tx = 0, upstream_ktls_rx = 0,
             upstream_tickets = 0;
    // TLS connections open now whose TX / RX runs in the kernel (sw or hw).
    uint64_t ktls_tx_open = 0, ktls_rx_open = 0;
    // From the control thread.
    uint64_t handshakes_ok = 0, handshakes_failed = 0, handshakes_timed_out = 0,
             handshakes_not_tls = 0, handshakes_busy = 0, handshakes_in_progress = 0;
    std::string describe() const;
};

class shard_context;
class handshake_service;
class ktls_handshaker;
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
    // True when every shard and the control thread answer within `ms`.
    bool ping_all(int ms);
    // The port of the --admin endpoint, or 0.
    uint16_t admin_port() const noexcept;
    const gateway_config& config() const noexcept { return cfg_; }

private:
    gateway_config cfg_;
    std::atomic<uint32_t> open_connections_{0};
    std::unique_ptr<tls::context> tls_ctx_;
    // Per route: the client context for upstream TLS (null: plaintext), and
    // the pointer the shards read (swapped by reload()).
    std::vector<std::unique_ptr<tls::context>> upstream_ctx_;
    std::unique_ptr<std::atomic<const tls::context*>[]> upstream_live_;
    std::unique_ptr<tls::identity_map> identities_;
    std::unique_ptr<handshake_service> hs_;
    // --ktls auto (kernel has it) / on: server-role handshakes on socket BIOs.
    std::unique_ptr<ktls_handshaker> khs_;
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
    uint16_t port_ = 0;
    uint16_t implicit_port_ = 0;
    std::string reload_locked();
    // One client context per route with upstream TLS (null for the others).
    std::string make_upstream_contexts(std::vector<std::unique_ptr<tls::context>>* out) const;
};

}  // namespace rpcgate::gw
