// The handshake service: one thread that runs every RPC-with-TLS handshake of
// the gateway, in both roles, so that shards never run one.
//
// Shards never run a handshake (FreeBSD's kernel RPC-over-TLS design: the
// data path hands the socket to a daemon and gets it back ready for bulk
// data).
//
// Server role: a shard that answered an AUTH_TLS probe with STARTTLS,
// accepted a connection on an implicit-TLS listener, or saw a 0x16 first byte
// with --tls-auto, detaches the socket and submits {fd, conn ID, bytes already
// received}. This thread checks that the next bytes are a TLS handshake record
// (RFC 9289 §5.1.1), runs the TLS 1.3 handshake non-blocking with a deadline,
// many at once, maps a verified client certificate to an identity, writes one
// audit line per decision (RFC 9289 §6), and posts the outcome back to the
// shard that asked: the fd and a ready tls::session, or nothing (the fd is
// closed here and the failure counted).
//
// Client role (RFC 9289 towards a backend): a shard that connected to a
// backend whose route wants TLS submits the socket; this thread sends the
// AUTH_TLS probe, reads the reply and runs the TLS 1.3 client handshake, all
// through client::client_session (tls/client/), and posts an
// `upstream_result` back: TLS, plaintext (opportunistic: the server refused
// the probe) or a failure with its reason (the fd is then closed here).
//
// The I/O mode is a property of each connection (`handshake_io`), not a
// second implementation: the state machines, deadlines, policy, counters and
// audit lines are the same.
//   memory  OpenSSL over memory BIOs; this thread reads and writes the socket
//           and feeds the session. The record layer stays in userspace.
//   socket  OpenSSL reads and writes the socket itself (socket BIOs), so that
//           after the handshake it can give the record layer to the kernel
//           (kTLS, tls/ktls.h); tls::session::finish_on_socket hands over the
//           directions the kernel can take.
// Either way the thread is a poll(2) loop: a handshake is a few round trips,
// and OpenSSL's socket BIOs need "tell me when this fd is readable", which a
// core::shard does not offer.
//
// Mailboxes: each shard posts into its own SPSC mailbox into this thread, and
// this thread into one per shard; `make_inbox` gives another thread (the
// admin endpoint's /healthz) its own, so a ping reaches the very thread that
// runs the handshakes, whatever their I/O mode.
//
// Threads: `submit`/`submit_upstream` on shard `i` only; construction,
// `attach`, `use_socket_io`, `make_inbox`, `start`, `stop`, `wait` on the
// main thread; counters from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/conn_id.h"
#include "core/mailbox.h"
#include "core/shard.h"
#include "tls/context.h"
#include "tls/identity_map.h"
#include "tls/session.h"

namespace rpcgate::tls {

struct handshake_counters {
    std::atomic<uint64_t> started{0};
    std::atomic<uint64_t> succeeded{0};
    std::atomic<uint64_t> failed{0};         // refused by TLS or policy
    std::atomic<uint64_t> timed_out{0};      // the deadline passed
    std::atomic<uint64_t> not_tls{0};        // bytes after the probe were no TLS handshake
    std::atomic<uint64_t> rejected_busy{0};  // mailbox full: dropped at once
    std::atomic<uint64_t> in_progress{0};
    std::atomic<uint64_t> latency_us_sum{0};
    // Completed handshakes by latency: bucket i counts those <= k_bucket_ms[i]
    // (and above the previous bound); slower ones only in `succeeded`.
    static constexpr size_t k_buckets = 8;
    static constexpr uint32_t k_bucket_ms[k_buckets] = {1, 2, 5, 10, 25, 100, 1000, 10000};
    std::atomic<uint64_t> latency_buckets[k_buckets] = {};
};

// What comes back to the shard after a successful server-role handshake.
struct handshake_result {
    int fd = -1;
    core::conn_id id;
    std::string peer;
    std::unique_ptr<tls::session> session;
    std::optional<identity> certuser;  // from --cert-user-map
};

// A backend connection to take into RPC-with-TLS (client role).
struct upstream_request {
    int fd = -1;
    core::conn_id id;              // the backend connection's ID (for logs)
    std::string target;            // the backend as configured, for logs
    const context* ctx = nullptr;  // client context of the route (outlives the request)
    uint32_t prog = 0, vers = 0;   // the probe's program and version
    bool opportunistic = false;    // a refused probe continues in plaintext
    uint64_t token = 0;            // the shard's handle for the waiting link
};

// What comes back to the shard for an upstream_request.
struct upstream_result {
    enum class kind { tls, plaintext, failed };
    kind outcome = kind::failed;
    uint64_t token = 0;
    int fd = -1;                            // -1 when failed (already closed)
    std::unique_ptr<tls::session> session;  // when tls
    core::slice_chain early;                // plaintext that came with it (rare)
    std::string reason;                     // why failed / why plaintext
};

// How a connection's handshake reaches its bytes (see the top of this file).
enum class handshake_io { memory, socket };

class handshake_service {
  public:
    using deliver_fn = std::function<void(handshake_result&&)>;
    using upstream_fn = std::function<void(upstream_result&&)>;

    // `ctx` is the server context; null when only the client role is used.
    // `deadline_ms` bounds each handshake (client role: probe included).
    // `open_connections` is the gateway's connection count: a client
    // connection whose handshake fails ends here, and is taken off it here.
    handshake_service(const context* ctx, uint32_t deadline_ms,
                      std::atomic<uint32_t>* open_connections);
    ~handshake_service();
    handshake_service(const handshake_service&) = delete;
    handshake_service& operator=(const handshake_service&) = delete;

    // Before start(): verified client certificates found in `map` get its identity.
    void set_identity_map(const identity_map* map) noexcept { map_.store(map); }
    // Any thread: handshakes that start from now on use `ctx` (a reload). The
    // caller keeps every context it ever set alive.
    void set_context(const context* ctx) noexcept { ctx_.store(ctx); }
    // Before start(): connections submitted from now on handshake on the
    // socket (kTLS; every context used must have had ktls::prepare_context).
    // `allow_rx` false keeps RX in userspace (half kTLS: TX only).
    void use_socket_io(bool allow_rx = true) noexcept {
        io_ = handshake_io::socket;
        allow_rx_ = allow_rx;
    }
    handshake_io io() const noexcept { return io_; }
    bool socket_io() const noexcept { return io_ == handshake_io::socket; }

    // Before start(): wires the mailboxes with shard `sh` (both directions);
    // its index among the attached shards is the order of attach.
    void attach(core::shard& sh, deliver_fn deliver, upstream_fn upstream = {});
    // Before start(): a mailbox into this thread for one other thread (the
    // admin endpoint pings through it).
    core::mailbox& make_inbox();
    // Starts the thread; "" or a one-line reason.
    std::string start();
    // Ends the thread (thread-safe); handshakes in progress and submitted
    // ones are cut (fds closed).
    void stop();
    void wait();

    // On shard `shard_index`: hand a connection over. `early` (bytes already
    // read from it) must be private heap memory: it crosses threads. False if
    // the mailbox is full: the caller closes the fd and counts it.
    bool submit(unsigned shard_index, int fd, core::conn_id id, std::string peer,
                core::slice_chain&& early);
    // On shard `shard_index`: take a connected backend socket through the
    // probe and the client handshake. False if the mailbox is full (the
    // caller closes the fd).
    bool submit_upstream(unsigned shard_index, upstream_request&& r);

    const handshake_counters& counters() const noexcept { return counters_; }
    const handshake_counters& upstream_counters() const noexcept { return upstream_counters_; }
    // Probes a backend refused (opportunistic: went on in plaintext).
    uint64_t upstream_refused() const noexcept { return upstream_refused_.load(); }
    // Socket-mode handshakes after which the kernel took TX / RX (logs, tests).
    uint64_t kernel_tx() const noexcept { return kernel_tx_.load(std::memory_order_relaxed); }
    uint64_t kernel_rx() const noexcept { return kernel_rx_.load(std::memory_order_relaxed); }

  private:
    class conn;  // one handshake in progress, either role, either I/O mode
    struct link {
        core::mailbox* to_control = nullptr;  // written by the shard
        core::mailbox* to_shard = nullptr;    // written by this thread
        deliver_fn deliver;
        upstream_fn upstream;
    };

    void run();
    size_t drain_inboxes();
    // On this thread: a submitted connection becomes a conn (or is closed).
    void begin(std::unique_ptr<conn> c, core::slice_chain&& early);

    std::atomic<const context*> ctx_;
    uint32_t deadline_ms_;
    std::atomic<uint32_t>* open_;
    std::atomic<const identity_map*> map_{nullptr};
    handshake_io io_ = handshake_io::memory;
    bool allow_rx_ = true;
    int wake_fd_ = -1;  // eventfd shared by every inbox: work, or stop
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::vector<std::unique_ptr<core::mailbox>> inboxes_;
    std::vector<link> links_;
    std::vector<std::unique_ptr<conn>> live_;  // this thread only
    handshake_counters counters_;
    handshake_counters upstream_counters_;
    std::atomic<uint64_t> upstream_refused_{0};
    std::atomic<uint64_t> kernel_tx_{0};
    std::atomic<uint64_t> kernel_rx_{0};
};

}  // namespace rpcgate::tls
