// The kTLS handshake thread: server-role RPC-with-TLS handshakes on the
// connection's own socket, so that OpenSSL can give the record layer to the
// kernel (tls/ktls.h).
//
// Why a thread of its own and not the TLS control thread (handshake_service):
// OpenSSL engages kTLS only on socket BIOs, so the handshake must read and
// write the fd itself, and wait for readiness between steps. The control
// thread is a core::shard, whose io_uring owns the fds it adopts and offers
// no "tell me when this fd is readable" call; this thread is a plain poll(2)
// loop instead, which is all a handshake needs (a few round trips each).
// The memory-BIO path (handshake_service) stays for --ktls off.
//
// The client role (RFC 9289 towards a backend) runs here too when kTLS is on:
// a shard submits a connected backend socket; this thread sends the AUTH_TLS
// probe, reads the reply (client::starttls_client), runs the client
// handshake on the socket and posts an upstream_result back, exactly as the
// control thread does, with the same audit line and counters.
//
// Flow: a shard that answered a probe with STARTTLS (or accepted on an
// implicit-TLS listener, or saw a 0x16 first byte with --tls-auto) detaches
// the socket and calls submit(); the request goes through a mutex-protected
// queue and an eventfd (any shard may submit; hand-offs are per connection,
// not per record, so one lock is cheap). The thread runs the handshake with
// a deadline (--handshake-timeout), writes the same audit line as the control
// thread, counts it in the control thread's counters (one set for /metrics),
// lets tls::session::finish_on_socket hand the directions the kernel can take
// to it, and posts a handshake_result back to the shard that asked, through
// that shard's own mailbox (this thread is its only producer).
//
// Threads: attach/start/stop/wait on the main thread (attach before start);
// submit on any shard; everything else on the handshake thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/conn_id.h"
#include "core/shard.h"
#include "gateway/handshake_service.h"

namespace rpcgate::gw {

class ktls_handshaker {
public:
    using deliver_fn = std::function<void(handshake_result&&)>;
    using upstream_fn = std::function<void(upstream_result&&)>;

    // Uses `svc`'s server context (reloads included), identity map, deadline,
    // connection count and counters; `svc` must outlive this.
    // `allow_rx` false: TX only (tests of half kTLS).
    explicit ktls_handshaker(handshake_service& svc, bool allow_rx = true);
    ~ktls_handshaker();
    ktls_handshaker(const ktls_handshaker&) = delete;
    ktls_handshaker& operator=(const ktls_handshaker&) = delete;

    // Before start(): a mailbox into shard `sh` (index = order of attach).
    void attach(core::shard& sh, deliver_fn deliver, upstream_fn upstream);
    std::string start();
    // Ends the thread; handshakes in progress are cut (fds closed).
    void stop();
    void wait();

    // Any shard: hand a connection over. `early` holds bytes already read from
    // it (the start of the ClientHello). False when the queue is full: the
    // caller closes the fd.
    bool submit(unsigned shard_index, int fd, core::conn_id id, std::string peer,
                core::slice_chain&& early);

    // Any shard: a connected backend socket through the probe and the client
    // handshake; the outcome goes to shard `shard_index`'s upstream callback.
    // False when the queue is full (the caller closes the fd).
    bool submit_upstream(unsigned shard_index, upstream_request&& r);

    // Handshakes after which the kernel took TX / RX (for logs and tests).
    uint64_t kernel_tx() const noexcept { return kernel_tx_.load(std::memory_order_relaxed); }
    uint64_t kernel_rx() const noexcept { return kernel_rx_.load(std::memory_order_relaxed); }

private:
    struct request {
        unsigned from = 0;
        int fd = -1;
        core::conn_id id;
        std::string peer;
        std::string early;
        std::unique_ptr<upstream_request> up;  // set: client role
    };
    struct conn;
    struct link {
        core::mailbox* to_shard = nullptr;
        deliver_fn deliver;
        upstream_fn upstream;
    };

    void run();
    std::unique_ptr<conn> begin(request&& r);
    // Advances one handshake; false when it is over (handed back or failed).
    bool step(conn& c);
    void fail(conn& c, const std::string& why);
    void succeed(conn& c);
    // The client role's steps: probe out, reply in, then the handshake.
    bool step_upstream(conn& c);
    void fail_upstream(conn& c, const std::string& why);
    void post_upstream(conn& c, upstream_result::kind k, std::unique_ptr<tls::session> tls,
                       core::slice_chain&& early, const std::string& reason);

    static constexpr size_t k_max_queue = 4096;
    handshake_service& svc_;
    bool allow_rx_;
    std::vector<link> links_;
    std::mutex mu_;
    std::vector<request> queue_;  // guarded by mu_
    int wake_fd_ = -1;            // eventfd: the queue has work, or stop
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::atomic<uint64_t> kernel_tx_{0};
    std::atomic<uint64_t> kernel_rx_{0};
};

}  // namespace rpcgate::gw
