// The gateway's counters, declared once, and every way they are shown.
//
// RPCGATE_GATEWAY_COUNTERS is the one table of per-shard counters. Each row
// becomes a field of `gateway_counters` (written by its shard), a field of
// `gateway_totals` (the sum over shards), a `label=value` of the exit log
// (`gateway_totals::describe`) and, when it has a metric name, a Prometheus
// family with one sample per shard in /metrics. A new counter is a new row.
//
// Rows: X(field, label, metric, type, help)
//   field   the member name (gateway_counters, gateway_totals)
//   label   its name in the exit log ("calls=..." is read by tests/faults)
//   metric  "rpcgate_" + metric in /metrics; "" = not exported per shard
//           (the per-backend families below carry the backend ones)
//   type    counter or gauge (Prometheus TYPE)
//
// RPCGATE_BACKEND_COUNTERS is the same for the per-route backend health
// (summed over shards, one sample per backend). RPCGATE_CALL_COUNTERS and
// RPCGATE_CALL_HISTOGRAMS are the per-call accounting (call_stats.h): rows
// X(field, metric, help), labelled by program, version and procedure. The kernel's own kTLS
// counters (/proc/net/tls_stat) are read when /metrics is asked for.
//
// Threads: a shard writes its own counters (relaxed atomics); anyone reads.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/shard.h"

namespace rpcgate::gw {

// clang-format off
#define RPCGATE_GATEWAY_COUNTERS(X)                                                              \
    X(sessions_accepted, "sessions_accepted", "connections_accepted_total", counter,              \
      "Client connections accepted.")                                                            \
    X(sessions_open, "open", "connections_open", gauge, "Client connections open.")              \
    X(sessions_refused, "refused", "connections_refused_total", counter,                         \
      "Connections refused over --max-connections.")                                             \
    X(calls_forwarded, "calls", "calls_forwarded_total", counter,                                \
      "CALL records forwarded to backends.")                                                     \
    X(replies_forwarded, "replies", "replies_forwarded_total", counter,                          \
      "REPLY records forwarded to clients.")                                                     \
    X(backchannel_calls, "backchannel_calls", "backchannel_calls_total", counter,                \
      "CALL records from backends to clients.")                                                  \
    X(backchannel_replies, "backchannel_replies", "backchannel_replies_total", counter,          \
      "REPLY records from clients to backends.")                                                 \
    X(bytes_from_clients, "bytes_in", "client_bytes_received_total", counter,                    \
      "Bytes received from clients (as on the wire).")                                           \
    X(bytes_to_clients, "bytes_out", "client_bytes_sent_total", counter,                         \
      "Record bytes forwarded to clients.")                                                      \
    X(local_replies, "local_replies", "local_replies_total", counter,                            \
      "Replies the gateway made itself.")                                                        \
    X(portmap_calls, "portmap", "portmap_calls_total", counter, "Portmap calls answered locally.") \
    X(prog_unavail, "prog_unavail", "prog_unavail_total", counter,                               \
      "Calls for programs with no route.")                                                       \
    X(malformed, "malformed", "malformed_total", counter,                                        \
      "Connections closed for bytes that are no RPC.")                                           \
    X(garbage_args, "garbage", "garbage_args_total", counter, "Calls answered GARBAGE_ARGS.")     \
    X(oversize, "oversize", "oversize_total", counter,                                           \
      "Connections closed for a record over --max-record.")                                      \
    X(cut_records, "cut", "cut_records_total", counter, "Connections closed inside a record.")   \
    X(tls_probes, "tls_probes", "tls_probes_refused_total", counter,                             \
      "AUTH_TLS probes refused (TLS off).")                                                      \
    X(auth_tls_misuse, "auth_tls_misuse", "auth_tls_misuse_total", counter,                      \
      "AUTH_TLS misuse answered AUTH_BADCRED.")                                                  \
    X(backend_connects, "backend_connects", "", counter, "Connections opened to backends.")      \
    X(backend_connect_failures, "backend_failures", "", counter,                                 \
      "Connects to backends that failed or timed out.")                                          \
    X(backend_lost, "backend_lost", "", counter, "Backend connections lost under a client.")     \
    X(reserved_port_binds, "reserved_ports", "backend_reserved_port_binds_total", counter,       \
      "Backend connections from a reserved source port (--reserved-ports).")                     \
    X(reserved_port_fallbacks, "reserved_fallbacks", "backend_reserved_port_fallbacks_total",    \
      counter, "Backend connections that wanted a reserved source port and got an ephemeral one.") \
    X(idle_timeouts, "idle_timeouts", "idle_timeouts_total", counter,                            \
      "Clients closed for idleness.")                                                            \
    X(orphan_replies, "orphan_replies", "", counter, "Client REPLYs no backend asked for.")      \
    X(calls_untimed, "calls_untimed", "calls_untimed_total", counter,                            \
      "Calls not timed: too many in flight on their connection.")                                \
    X(flow_pauses, "flow_pauses", "flow_pauses_total", counter,                                  \
      "Times a side stopped being read because its peer was full.")                              \
    X(starttls, "starttls", "tls_starttls_total", counter,                                       \
      "AUTH_TLS probes answered with STARTTLS.")                                                 \
    X(implicit_tls, "implicit", "tls_implicit_total", counter,                                   \
      "Connections that started with TLS.")                                                      \
    X(tls_sessions, "tls_sessions", "tls_sessions_total", counter,                               \
      "Connections back from a successful handshake.")                                           \
    X(tls_errors, "tls_errors", "tls_errors_total", counter, "TLS failures after the handshake.") \
    X(too_weak, "too_weak", "tls_too_weak_total", counter,                                       \
      "Plaintext calls refused with AUTH_TOOWEAK.")                                              \
    X(plaintext_allowed, "plaintext_allowed", "tls_plaintext_allowed_total", counter,            \
      "Plaintext calls served under --tls required/mtls: programs not in --require-tls-for.")    \
    X(certuser_rewrites, "certuser_rewrites", "certuser_rewrites_total", counter,                \
      "Calls given a client certificate's identity.")                                            \
    X(tls_revoked, "tls_revoked", "tls_revoked_total", counter,                                  \
      "TLS clients closed after a CRL reload revoked them.")                                     \
    X(tls_open, "tls_open", "", gauge, "TLS client connections open.")                           \
    X(tls_close_notify, "close_notify", "tls_close_notify_total", counter,                       \
      "close_notify records from clients read on kTLS sockets.")                                 \
    X(tls_alerts_received, "alerts", "tls_alerts_received_total", counter,                       \
      "Alerts (other than close_notify) from clients read on kTLS sockets.")                     \
    X(tls_key_update_closes, "key_update_closes", "tls_key_update_closes_total", counter,        \
      "Connections closed cleanly after a KeyUpdate that kernel TLS cannot follow.")             \
    X(ktls_option_failures, "ktls_option_failures", "ktls_option_failures_total", counter,       \
      "kTLS connections on which the kernel refused --ktls-rx-no-pad or --ktls-tx-record-size.") \
    X(tls_key_exhausted_closes, "key_exhausted_closes", "tls_key_exhausted_closes_total", counter, \
      "Connections closed cleanly (close_notify) when their kTLS TX key had protected "          \
      "--tls-rekey-after records (default: the AEAD's limit) and could not be changed "          \
      "(Linux before 6.14, or half kTLS).")                                                      \
    X(tls_rekeys_rx_peer, "rekeys_rx_peer", "tls_rekeys_rx_peer_total", counter,                \
      "RX keys changed in the kernel after a peer's KeyUpdate (client or backend).")             \
    X(tls_rekeys_tx_peer, "rekeys_tx_peer", "tls_rekeys_tx_peer_total", counter,                \
      "TX keys changed because a peer's KeyUpdate asked for it (update_requested).")             \
    X(tls_rekeys_tx_own, "rekeys_tx_own", "tls_rekeys_tx_own_total", counter,                   \
      "KeyUpdates the gateway initiated at --tls-rekey-after (kTLS or userspace).")              \
    X(upstream_tls, "upstream_tls", "upstream_tls_total", counter,                               \
      "Backend connections that went into RPC-with-TLS.")                                        \
    X(upstream_plaintext, "upstream_plaintext", "upstream_plaintext_total", counter,             \
      "Backends that refused the AUTH_TLS probe, used in plaintext (opportunistic).")            \
    X(upstream_tls_failures, "upstream_failures", "upstream_tls_failures_total", counter,        \
      "Backend connections refused for upstream TLS (probe refused when required, handshake "    \
      "failed, timed out).")                                                                     \
    X(upstream_ktls_tx, "upstream_ktls_tx", "upstream_ktls_tx_total", counter,                   \
      "Backend TLS connections whose TX went to the kernel.")                                    \
    X(upstream_ktls_rx, "upstream_ktls_rx", "upstream_ktls_rx_total", counter,                   \
      "Backend TLS connections whose RX went to the kernel.")                                    \
    X(upstream_tickets, "upstream_tickets", "upstream_tickets_total", counter,                   \
      "NewSessionTickets from backends consumed on kTLS RX.")

#define RPCGATE_BACKEND_COUNTERS(X)                                                              \
    X(connects, "backend_connects_total", counter, "Connections opened to a backend.")           \
    X(failures, "backend_connect_failures_total", counter,                                       \
      "Connects to a backend that failed or timed out.")                                         \
    X(lost, "backend_lost_total", counter, "Backend connections that closed under a client.")    \
    X(open, "backend_connections_open", gauge, "Backend connections open now.")

#define RPCGATE_CALL_COUNTERS(X)                                                                 \
    X(calls, "rpc_calls_total", "Calls forwarded to a backend.")                                 \
    X(replies, "rpc_replies_total", "Replies from a backend to calls forwarded.")                \
    X(errors, "rpc_errors_total",                                                                \
      "Replies from a backend that are not MSG_ACCEPTED with SUCCESS.")                          \
    X(call_bytes, "rpc_call_bytes_total", "Bytes of calls forwarded (records, no marks).")       \
    X(reply_bytes, "rpc_reply_bytes_total", "Bytes of their replies (records, no marks).")

#define RPCGATE_CALL_HISTOGRAMS(X)                                                               \
    X(backend_latency, "rpc_backend_duration_seconds",                                           \
      "From a call forwarded to the backend to its reply received from it.")                     \
    X(gateway_latency, "rpc_duration_seconds",                                                   \
      "From a call received from the client to its reply sent to it.")
// clang-format on

// Per-shard counters; written by the shard, read by anyone.
struct gateway_counters {
#define RPCGATE_X(field, label, metric, type, help) std::atomic<uint64_t> field{0};
    RPCGATE_GATEWAY_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
    // TLS client connections open now, by direction (0 tx, 1 rx) and where
    // the crypto runs (tls::ktls::mode: userspace, ktls-sw, ktls-hw, ktls).
    std::atomic<uint64_t> tls_protection_open[2][4] = {};
};

// Per-shard health of one route (index in the configured backends).
struct backend_health {
#define RPCGATE_X(field, metric, type, help) std::atomic<uint64_t> field{0};
    RPCGATE_BACKEND_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
};

// Sum of the counters of all shards (plain values).
struct gateway_totals {
#define RPCGATE_X(field, label, metric, type, help) uint64_t field = 0;
    RPCGATE_GATEWAY_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
    // TLS connections open now whose TX / RX runs in the kernel (sw or hw).
    uint64_t ktls_tx_open = 0, ktls_rx_open = 0;
    // From the handshake thread.
    uint64_t handshakes_ok = 0, handshakes_failed = 0, handshakes_timed_out = 0,
             handshakes_not_tls = 0, handshakes_busy = 0, handshakes_in_progress = 0;

    // Adds one shard's counters.
    void add(const gateway_counters& c);
    // One line, `label=value` per row of the table (the exit log).
    std::string describe() const;
};

// One unit of a gauge, held by its owner and given back exactly once (by
// release() or the destructor): an open connection counts itself. Not
// thread-safe; the gauge itself is atomic.
class gauge_slot {
  public:
    gauge_slot() noexcept = default;
    ~gauge_slot() { release(); }
    gauge_slot(const gauge_slot&) = delete;
    gauge_slot& operator=(const gauge_slot&) = delete;

    void take(std::atomic<uint64_t>& gauge) noexcept {
        release();
        core::bump(gauge);
        gauge_ = &gauge;
    }
    void release() noexcept {
        if (gauge_) core::bump(*gauge_, uint64_t(-1));
        gauge_ = nullptr;
    }
    bool held() const noexcept { return gauge_ != nullptr; }

  private:
    std::atomic<uint64_t>* gauge_ = nullptr;
};

// ---- Prometheus text (what /metrics serves)

// One family: HELP, TYPE, then one sample per value, labelled shard="i".
void render_per_shard(std::string& out, const char* name, const char* type, const char* help,
                      const std::vector<uint64_t>& per_shard);
// One family with a single unlabelled sample.
void render_one(std::string& out, const char* name, const char* type, const char* help,
                uint64_t value);
// Every row of RPCGATE_GATEWAY_COUNTERS that has a metric name.
void render_gateway_counters(std::string& out, const std::vector<const gateway_counters*>& shards);
// rpcgate_tls_connections_open{direction,protection}, summed over shards.
void render_tls_protection(std::string& out, const std::vector<const gateway_counters*>& shards);
// Every row of RPCGATE_BACKEND_COUNTERS, per backend, summed over shards:
// health[shard][route]; labels[route] is backend_labels(...) of the route.
void render_backend_health(std::string& out, const std::vector<std::string>& labels,
                           const std::vector<const backend_health*>& per_shard);
// A label value escaped as the text format wants (backslash, quote, newline).
std::string label_value(std::string_view v);
// The labels of one route: its name ("nfs", "nfs/v4", or the program number)
// and address ("host:port") — never its TLS options or file paths.
std::string backend_labels(std::string_view name, std::string_view address);
// "TlsDecryptError" -> "tls_decrypt_error".
std::string snake_case(std::string_view camel);
// The kernel's kTLS counters (read_tls_stat(), parsed once per scrape):
// rpcgate_kernel_tls_tx_sw_total ... as counters, the TlsCurr* fields
// (connections now: rpcgate_kernel_tls_curr_tx_sw ...) as gauges.
void render_kernel_tls_stat(std::string& out,
                            const std::vector<std::pair<std::string, uint64_t>>& stat);
// rpcgate_build_info{version,openssl,compiler,io_backend} 1.
void render_build_info(std::string& out, std::string_view version, std::string_view io_backend);

// A certificate the gateway loaded, for rpcgate_certificate_not_after_seconds.
struct loaded_cert {
    std::string role;  // server, ca, upstream_client, upstream_ca
    std::string subject, serial;
    int64_t not_after = 0;  // seconds since the epoch
};
void render_cert_expiry(std::string& out, const std::vector<loaded_cert>& certs);

}  // namespace rpcgate::gw
