// The TLS control thread: runs every server-side handshake of the gateway.
//
// Shards never run a handshake (FreeBSD's kernel RPC-over-TLS design: the
// data path hands the socket to a daemon and gets it back ready for bulk
// data). A shard that answered an AUTH_TLS probe with STARTTLS, or accepted a
// connection on an implicit-TLS listener, submits {fd, conn ID, bytes already
// received}; the control thread adopts the fd on its own io_uring (it is a
// core::shard too), runs the TLS 1.3 handshake non-blocking with a deadline,
// many at once, writes one audit line per decision (RFC 9289 §6), and posts
// the outcome back to the shard that asked: the fd and a ready tls::session,
// or nothing (the fd is closed here and the failure counted).
//
// The client role (RFC 9289 towards a backend) runs here too: a shard that
// connected to a backend whose route wants TLS submits the fd; the control
// thread sends the AUTH_TLS probe, reads the reply, runs the TLS 1.3 client
// handshake (all through client::client_session, the one client library) and
// posts an `upstream_result` back: TLS, plaintext (opportunistic, the server
// refused the probe) or a failure with its reason (the fd is then closed).
//
// Threads: `submit` is called on shard `i` only (each shard has its own SPSC
// mailbox into the control thread, and the control thread one into each
// shard); `start`/`stop`/`wait`/`counters` on the main thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/conn_id.h"
#include "core/shard.h"
#include "tls/context.h"
#include "tls/identity_map.h"
#include "tls/session.h"
#include "tls/client/client_session.h"

namespace rpcgate::gw {

struct handshake_counters {
    std::atomic<uint64_t> started{0};
    std::atomic<uint64_t> succeeded{0};
    std::atomic<uint64_t> failed{0};      // refused by TLS or policy
    std::atomic<uint64_t> timed_out{0};   // the deadline passed
    std::atomic<uint64_t> not_tls{0};     // bytes after the probe were no TLS handshake
    std::atomic<uint64_t> rejected_busy{0};  // mailbox full: dropped at once
    std::atomic<uint64_t> in_progress{0};
    std::atomic<uint64_t> latency_us_sum{0};
    // Completed handshakes by latency: bucket i counts those <= k_bucket_ms[i]
    // (and above the previous bound); slower ones only in `succeeded`.
    static constexpr size_t k_buckets = 8;
    static constexpr uint32_t k_bucket_ms[k_buckets] = {1, 2, 5, 10, 25, 100, 1000, 10000};
    std::atomic<uint64_t> latency_buckets[k_buckets] = {};
};

// A completed handshake that took `ms`: counted and put in its latency bucket.
void record_success(handshake_counters& c, uint64_t ms);
// The one audit line of a server-role handshake decision (RFC 9289 §6):
// verdict "accepted" or "refused", `error` the reason of a refusal.
void audit_handshake(core::conn_id id, const std::string& peer, const char* verdict,
                     const tls::session& t, const std::optional<tls::identity>& certuser,
                     const std::string& error);

// The audit line of a client-role decision towards a backend: verdict
// "established", "plaintext" or "refused"; `t` null before the handshake.
void audit_upstream(core::conn_id id, const std::string& target, const char* verdict,
                    const tls::session* t, const std::string& why);

// What comes back to the shard after a successful handshake.
struct handshake_result {
    int fd = -1;
    core::conn_id id;
    std::string peer;
    std::unique_ptr<tls::session> session;
    std::optional<tls::identity> certuser;  // from --cert-user-map
};

// A backend connection to take into RPC-with-TLS (client role).
struct upstream_request {
    int fd = -1;
    core::conn_id id;           // the backend connection's ID (for logs)
    std::string target;         // the backend as configured, for logs
    const tls::context* ctx = nullptr;  // client context of the route (outlives the request)
    uint32_t prog = 0, vers = 0;        // the probe's program and version
    bool opportunistic = false;         // a refused probe continues in plaintext
    uint64_t token = 0;                 // the shard's handle for the waiting link
};

// What comes back to the shard for an upstream_request.
struct upstream_result {
    enum class kind { tls, plaintext, failed };
    kind outcome = kind::failed;
    uint64_t token = 0;
    int fd = -1;                             // -1 when failed (already closed)
    std::unique_ptr<tls::session> session;   // when tls
    core::slice_chain early;                 // plaintext that came with it (rare)
    std::string reason;                      // why failed / why plaintext
};

class handshake_service {
public:
    using deliver_fn = std::function<void(handshake_result&&)>;
    using upstream_fn = std::function<void(upstream_result&&)>;

    // `deliver[i]` runs on shard i with each completed handshake.
    // `open_connections` is the gateway's connection count: a connection whose
    // handshake fails ends here, and is taken off it here.
    // `ctx` is the server context; null when only the client role is used.
    handshake_service(const tls::context* ctx, uint32_t deadline_ms,
                      std::atomic<uint32_t>* open_connections);
    ~handshake_service();

    // Before start(): verified client certificates found in `map` get its identity.
    void set_identity_map(const tls::identity_map* map) noexcept { map_.store(map); }
    // Any thread: handshakes that start from now on use `ctx` (a reload). The
    // caller keeps every context it ever set alive.
    void set_context(const tls::context* ctx) noexcept { ctx_.store(ctx); }
    // Before start(): wires the mailboxes with shard i (both directions).
    void attach(core::shard& sh, deliver_fn deliver, upstream_fn upstream = {});
    std::string start();
    void stop();
    void wait();
    // Before start(): a mailbox into the control thread for one other thread
    // (the admin endpoint pings through it).
    core::mailbox& make_inbox() { return control_->make_inbox(64); }

    // On shard `shard_index`: hand a connection over. `early` must be private
    // heap memory (it crosses threads). Returns false if the control thread's
    // mailbox is full: the caller closes the fd and counts it.
    bool submit(unsigned shard_index, int fd, core::conn_id id, std::string peer,
                core::slice_chain&& early);

    // On shard `shard_index`: take a connected backend socket through the probe
    // and the client handshake. False if the mailbox is full (the caller
    // closes the fd).
    bool submit_upstream(unsigned shard_index, upstream_request&& r);

    const handshake_counters& counters() const noexcept { return counters_; }
    const handshake_counters& upstream_counters() const noexcept { return upstream_counters_; }
    // Probes a backend refused (opportunistic: went on in plaintext).
    uint64_t upstream_refused() const noexcept { return upstream_refused_.load(); }

private:
    // The kTLS handshake thread shares the context, identity map, deadline,
    // connection count and counters (one set for /metrics).
    friend class ktls_handshaker;
    class conn;
    class upstream_conn;
    struct link {
        core::shard* sh = nullptr;
        core::mailbox* to_control = nullptr;  // written by the shard
        core::mailbox* to_shard = nullptr;    // written by the control thread
        deliver_fn deliver;
        upstream_fn upstream;
    };
    void begin(unsigned from, int fd, core::conn_id id, std::string peer,
               core::slice_chain&& early);

    std::atomic<const tls::context*> ctx_;
    uint32_t deadline_ms_;
    std::atomic<uint32_t>* open_;
    std::atomic<const tls::identity_map*> map_{nullptr};
    std::unique_ptr<core::shard> control_;
    std::vector<link> links_;
    handshake_counters counters_;
    handshake_counters upstream_counters_;
    std::atomic<uint64_t> upstream_refused_{0};
};

}  // namespace rpcgate::gw
