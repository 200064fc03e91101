// shard: one thread, one io_uring, one provided-buffer ring, its connections.
//
// A shard is the unit of parallelism (Seastar's reactor, one per core). It
// owns everything it touches: the ring, the receive buffers, the timer wheel,
// the listeners and every `stream` accepted or connected on it. Nothing here
// is locked; other threads talk to a shard only through its mailboxes.
//
// The loop, in order (one pass = one io_uring_enter):
//   1. prepare one sendmsg per stream that was given bytes since the last
//      pass (corking: every record forwarded in a pass leaves in one sendmsg);
//   2. submit every SQE queued since the last pass and wait for at least one
//      completion, or until the next timer tick;
//   3. reap all available CQEs in one batch, dispatch each to its owner
//      (stream, listener, wake-up eventfd) and advance the CQ once;
//   4. hand receive buffers that were released during the pass back to the
//      kernel (one buffer-ring tail update), re-arm receives that ran out of
//      buffers (ENOBUFS) if buffers are free again;
//   5. free streams whose last operation completed;
//   6. fire expired timers.
// Mailbox tasks run in step 3, when the eventfd read completes.
//
// Lifetime: every slice of a receive buffer must be dropped before its shard
// is destroyed (the buffer returns itself to the shard's ring).
//
// A second packet I/O engine (DPDK + a user-space TCP stack) plugs in through
// `io_backend` (see below): with one installed, step 2 never blocks while the
// backend has work (a zero-timeout wait; after `poll_spin_us` without work it
// sleeps at most `poll_sleep_us`), the backend's `flush` runs right before
// step 2 and its `poll` right after step 3. Its connections are ordinary
// `stream`s whose I/O is virtual (a `stream_transport`): the same handlers,
// send queue, flow control and close/detach rules as a kernel socket.
//
// Ring set-up: SINGLE_ISSUER | DEFER_TASKRUN when the kernel has them (task
// work runs only when this thread enters the kernel, so completions never
// interrupt the loop and no IPIs are sent); else COOP_TASKRUN | TASKRUN_FLAG
// (5.19+); else a plain ring. Receives use a provided-buffer ring registered
// by hand (liburing 2.3 lacks io_uring_setup_buf_ring): the kernel picks a
// buffer per completion, so idle connections hold no receive memory.
#pragma once

#include <liburing.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/buffer.h"
#include "core/mailbox.h"
#include "core/timer_wheel.h"

namespace rpcgate::core {

class shard;
class stream;
class listener_handler;

struct shard_config {
    unsigned index = 0;
    unsigned sq_entries = 1024;
    // Receive buffers: count (a power of two, <= 32768) and size of each.
    unsigned buffer_count = 1024;
    unsigned buffer_size = 32 * 1024;
    // Below this many free receive buffers, received bytes are copied to the
    // heap and their ring buffer is handed back at once. Without it, records
    // half-assembled in ring buffers could hold the whole ring while the bytes
    // that would complete them wait in a socket the kernel cannot read into:
    // a deadlock. -1: a quarter of buffer_count; 0: never copy.
    int pressure_copy_below = -1;
    // Size of the registered-file table (streams beyond it use plain fds).
    unsigned registered_files = 16384;
    // Queued bytes above which a stream reports itself as full, and the level
    // it must drain below before `on_writable` is called.
    size_t send_high_water = 4 * 1024 * 1024;
    size_t send_low_water = 1024 * 1024;
    // Pin the shard's thread to this CPU (-1: no pinning).
    int cpu = -1;
    // With an io_backend installed: spin (zero-timeout waits) for this long
    // after the last packet or completion, then wait at most poll_sleep_us at
    // a time, so that an idle DPDK shard does not hold a core at 100 %.
    unsigned poll_spin_us = 200;
    unsigned poll_sleep_us = 50;
    // Test seam, empty in production. io_uring_enter(2) may answer -EBUSY (with
    // IORING_FEAT_NODROP: a CQ overflow backlog it could not flush) or -EAGAIN
    // (no memory for requests) and consume no SQE, or consume only some of them
    // (a short submit); the SQEs it left stay in the SQ ring and go with the next
    // io_uring_enter. Current kernels queue a CQ overflow instead of refusing
    // and a test cannot make them run out of memory, so a test stands in for the
    // kernel here: when set, the shard thread calls it before every submission,
    // and a negative errno it returns is taken as io_uring_enter's answer
    // without entering the kernel (every queued SQE stays in the SQ ring).
    // 0: submit as usual. It may act on the shard's streams, like a handler.
    std::function<int()> refuse_submit;
};

// What the kernel gave us; logged once at start.
struct ring_features {
    bool single_issuer = false;
    bool defer_taskrun = false;
    bool coop_taskrun = false;
    bool buf_ring = false;
    bool recv_multishot = false;
    bool accept_multishot = false;
    bool registered_files = false;
    bool send_zc = false;
    std::string describe() const;
};

// Counters written by the shard's thread only, readable from any thread.
struct shard_stats {
    std::atomic<uint64_t> accepts{0};
    std::atomic<uint64_t> accept_errors{0};
    std::atomic<uint64_t> connects{0};
    std::atomic<uint64_t> connect_errors{0};
    std::atomic<uint64_t> streams_open{0};
    std::atomic<uint64_t> recv_bytes{0};
    std::atomic<uint64_t> recv_completions{0};
    std::atomic<uint64_t> send_bytes{0};
    std::atomic<uint64_t> send_calls{0};
    std::atomic<uint64_t> enobufs{0};          // receives that found the buffer ring empty
    std::atomic<uint64_t> pressure_copies{0};  // receives copied out of a ring running low
    std::atomic<uint64_t> buffers_free{0};     // receive buffers the kernel can use now
    std::atomic<uint64_t> loop_passes{0};
    std::atomic<uint64_t> cqes{0};
    std::atomic<uint64_t> idle_sleeps{0};  // waits that slept (io_backend installed)
    // Submissions after which SQEs stayed in the SQ ring (the kernel refused
    // with -EBUSY/-EAGAIN or took only some); they go with the next one.
    std::atomic<uint64_t> submits_incomplete{0};
};

// Single-writer counter bump: a plain load+store, no locked RMW on the hot path.
// Always inlined: g++ otherwise keeps an out-of-line clone that the data
// path calls once per counter.
[[gnu::always_inline]] inline void bump(std::atomic<uint64_t>& c, uint64_t n = 1) noexcept {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// Callbacks of a stream. All run on the stream's shard thread.
class stream_handler {
  public:
    virtual ~stream_handler() = default;
    // An outgoing connect finished; err is 0 or -errno. On error the stream is
    // closed right after (on_closed follows).
    virtual void on_connected(stream& s, int err) {}
    // Bytes received, in order. The slice points into a receive buffer that
    // returns itself to the ring when the last share of it dies.
    virtual void on_data(stream& s, slice data) = 0;
    // The receive side ended: 0 for an orderly EOF, -errno for an error. The
    // stream is still usable for sending; the default closes it.
    virtual void on_eof(stream& s, int err);
    // Queued send bytes fell below the low-water mark after exceeding the high one.
    virtual void on_writable(stream& s) {}
    // Last call: every operation has completed and the fd is closed. The stream
    // is freed when this returns.
    virtual void on_closed(stream& s, int err) = 0;
};

// The I/O under a virtual stream: a connection of a user-space TCP stack
// (dpdk/). The stream keeps its usual send queue, flow control and state
// machine and calls these instead of io_uring; the transport injects what it
// receives with stream::transport_*. All on the shard thread.
//
// fd: a virtual stream still owns one kernel fd (the transport's placeholder,
// an AF_UNIX socket), so that code written for sockets keeps working: the
// shard closes it with the stream, and detach() hands it over (the transport
// then relays the connection's bytes through it; see dpdk/backend.h).
class stream_transport {
  public:
    virtual ~stream_transport() = default;
    // Takes bytes from the front of parts[0..n) (in order, all or part of
    // them) and returns how many it took. Taking fewer than offered means the
    // transport is full: it calls stream::transport_writable() when it has
    // room again.
    virtual size_t transmit(const slice* parts, size_t n) = 0;
    // The handler was given `n` more received bytes (opens the receive window).
    virtual void consumed(size_t n) = 0;
    // The stream is closing: send what was taken, then end the connection
    // (err 0: orderly). The stream makes no further call.
    virtual void close(int err) = 0;
    // The stream was detached (its fd handed over with `unread` bytes); the
    // transport now serves the fd instead. The stream makes no further call.
    virtual void detached() = 0;
};

// A connected TCP socket driven by a shard. Created by shard::adopt or
// shard::connect, freed by the shard after on_closed. Not thread-safe.
class stream {
  public:
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;

    shard& owner() const noexcept { return *shard_; }
    int fd() const noexcept { return fd_; }
    bool open() const noexcept { return state_ == state::open || state_ == state::connecting; }
    stream_handler* handler() const noexcept { return handler_; }
    void set_handler(stream_handler* h) noexcept { handler_ = h; }

    // Queues bytes for sending, in order. Silently drops them if the stream is
    // closing (the caller learns through on_closed).
    void send(slice_chain&& data);
    void send(slice&& data);
    size_t queued_bytes() const noexcept { return queued_; }
    // True above the high-water mark: the producer should stop feeding it.
    bool full() const noexcept;

    // Stops/restarts delivery of on_data. Bytes already received while paused
    // are kept and delivered on resume; the kernel keeps the rest.
    void pause_receive();
    void resume_receive();
    bool receive_paused() const noexcept { return paused_; }

    // Closes now: pending sends are dropped, on_closed(err) follows once the
    // kernel has finished with every operation.
    void close(int err = 0);
    // Closes once the send queue has drained (or after `deadline_ms`). With
    // `linger` (a peer that may still be sending), the close is lingering:
    // FIN first, then the peer's bytes are read and dropped until its EOF or
    // the deadline, so that its unread calls do not make the kernel answer
    // with a reset that destroys replies it has not read yet. Without (the
    // peer has said it is done, e.g. TLS close_notify), it closes at once.
    void close_after_send(uint64_t deadline_ms = 5000, bool linger = true);

    // Hands the socket over (e.g. to the TLS control thread): stops receiving
    // at once, lets queued sends finish, then calls `done(fd, unread)` with the
    // raw fd (ownership passes to the callee) and any bytes received but not
    // yet delivered. The stream then ends with on_closed(0), fd left open.
    using detach_fn = std::function<void(int fd, slice_chain&& unread)>;
    void detach(detach_fn done);

    // One line of internal state, for diagnostics of a stream that will not close.
    std::string describe() const;

    uint64_t bytes_in() const noexcept { return bytes_in_; }
    uint64_t bytes_out() const noexcept { return bytes_out_; }
    int close_error() const noexcept { return close_err_; }
    // True for a stream whose I/O is a stream_transport.
    bool is_virtual() const noexcept { return transport_ != nullptr; }

    // --- for a stream_transport (virtual streams only), on the shard thread.
    // Received bytes, in order: delivered like a receive completion.
    void transport_received(slice data);
    // The peer ended its side (0: FIN) or the connection failed (-errno; a
    // reset is reported at once, even while receiving is paused).
    void transport_eof(int err);
    // The transport has room again after taking less than it was offered.
    void transport_writable();

  private:
    friend class shard;
    enum class state : uint8_t { connecting, open, closing, closed };

    stream(shard* s, int fd, stream_handler* h) noexcept;
    ~stream();

    void arm_receive();
    void on_receive_cqe(const io_uring_cqe* cqe);
    void on_send_cqe(const io_uring_cqe* cqe);
    void on_connect_cqe(const io_uring_cqe* cqe);
    void on_poll_cqe(const io_uring_cqe* cqe);
    // While paused, a poll for reset/hang-up keeps a dead peer from going unnoticed.
    void arm_liveness_poll();
    void cancel_liveness_poll();
    void submit_send();
    // n bytes left the send queue (a send completion, or taken by the transport).
    void dequeue_sent(size_t n);
    // After a send: requeue, finish a detach or a close-after-send, on_writable.
    void after_send();
    void maybe_finish();
    void begin_linger();
    static void on_close_deadline(timer*, void* arg);

    shard* shard_;
    int fd_;
    int file_index_ = -1;  // registered-file slot, or -1
    stream_handler* handler_;
    stream_transport* transport_ = nullptr;  // virtual streams only
    state state_ = state::open;
    bool recv_armed_ = false;
    bool recv_cancel_sent_ = false;
    bool poll_armed_ = false;
    bool paused_ = false;
    bool starved_ = false;  // receive ended with ENOBUFS; waiting for buffers
    bool eof_seen_ = false;
    bool send_inflight_ = false;
    bool over_high_ = false;
    bool close_when_drained_ = false;
    // After close_after_send drained: FIN sent, reading and dropping until the
    // peer's EOF (or the deadline), so that unread calls of the peer do not
    // turn our close into a reset that destroys replies it has not read yet.
    bool lingering_ = false;
    bool linger_ = true;  // close_after_send's choice
    bool finish_queued_ = false;
    bool flush_queued_ = false;  // on the shard's list of streams to send at the end of the pass
    bool detaching_ = false;
    bool transport_full_ = false;  // the transport took less than offered
    bool eof_pending_ = false;     // EOF/error seen while paused, delivered on resume
    int eof_err_ = 0;
    int close_err_ = 0;
    size_t slot_ = 0;  // index in shard::streams_
    detach_fn detach_cb_;
    uint32_t ops_inflight_ = 0;
    uint64_t bytes_in_ = 0;
    uint64_t bytes_out_ = 0;
    size_t queued_ = 0;
    slice_chain held_;  // received while paused
    // Send queue: slices waiting to go, in order. The msghdr/iovecs of a send
    // belong to its SQE's slot in the shard (see shard::send_desc).
    small_vector<slice, 8> sendq_;
    size_t sendq_head_ = 0;
    timer close_timer_;
    sockaddr_storage connect_addr_{};
    socklen_t connect_len_ = 0;
};

// Accept callbacks of a listener; run on the shard thread.
class listener_handler {
  public:
    virtual ~listener_handler() = default;
    // A new connection; the callee adopts `fd` (shard::adopt) or closes it.
    virtual void on_accept(shard& s, int fd, const sockaddr_storage& peer) = 0;
};

// A second packet I/O engine for the client-facing side (dpdk/): it serves
// listeners and their connections as virtual streams; backends stay kernel
// sockets on the shard's io_uring. At most one per shard, installed before
// start(); it lives at least as long as the shard's thread. All calls below
// run on the shard thread.
class io_backend {
  public:
    virtual ~io_backend() = default;
    virtual const char* name() const noexcept = 0;
    // After the ring is set up and before the init task: take over the thread
    // (a DPDK port, a TCP stack). Returns "" or a one-line reason.
    virtual std::string attach(shard& s) = 0;
    // The loop is ending: close every connection and listener, let go.
    virtual void detach(shard& s) = 0;
    // Once a pass, right after completions: receive, run the stack's timers.
    // Returns true if anything happened (keeps the loop spinning).
    virtual bool poll(shard& s) = 0;
    // Once a pass, right before waiting: send what the pass produced.
    virtual void flush(shard& s) = 0;
    // shard::listen and close_listeners go here instead of to the kernel.
    virtual int listen(shard& s, const sockaddr* addr, socklen_t len, listener_handler* h) = 0;
    virtual void close_listeners(shard& s) = 0;
    // shard::adopt(fd) asks first: a virtual stream if `fd` is one of the
    // backend's placeholders (an accepted connection, or one coming back from
    // a hand-off), else null (a kernel socket).
    virtual stream* adopt(shard& s, int fd, stream_handler* h) = 0;
};

struct connect_options {
    // Bind a source port below 1024 (needs CAP_NET_BIND_SERVICE; knfsd's
    // `secure` export option checks it), trying reserved_high down to
    // reserved_low as bindresvport(3) does. When none is free (or binding is
    // not allowed) the kernel picks an ephemeral port; connect() says which
    // happened through its `reserved` out-parameter.
    bool reserved_port = false;
    uint16_t reserved_low = 512;
    uint16_t reserved_high = 1023;
};

// What became of a connect_options::reserved_port request.
enum class reserved_port_outcome {
    not_asked,  // reserved_port was false
    bound,      // a port in the range
    exhausted,  // every port in the range was in use: ephemeral
    denied,     // bind refused otherwise (EACCES: no privilege): ephemeral
};

class shard {
  public:
    explicit shard(const shard_config& cfg);
    ~shard();
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;

    // --- any thread, before start() ---
    // A mailbox that exactly one producer thread may post to.
    mailbox& make_inbox(size_t capacity_pow2 = 1024);

    // --- the creating thread ---
    // Starts the thread, sets up the ring and runs `init` on it. Returns an
    // empty string on success or a one-line reason (the thread has then exited).
    std::string start(task init);
    // Thread-safe: asks the loop to run `on_stop` (if set) and then exit once
    // every stream is closed. Idempotent.
    void request_stop() noexcept;
    void join();
    // Runs on the shard thread when a stop is requested (e.g. stop listeners,
    // start draining connections).
    void set_on_stop(task t) { on_stop_ = std::move(t); }
    // Exit the loop even if streams remain (after a drain deadline). Thread-safe.
    void force_exit() noexcept {
        exit_now_.store(true, std::memory_order_release);
        request_stop();
    }

    // --- the shard thread ---
    unsigned index() const noexcept { return cfg_.index; }
    const shard_config& config() const noexcept { return cfg_; }
    const ring_features& features() const noexcept { return feat_; }
    shard_stats& stats() noexcept { return stats_; }
    timer_wheel& timers() noexcept { return timers_; }
    uint64_t now_ms() const noexcept { return now_ms_; }
    // The same instant in nanoseconds (CLOCK_MONOTONIC): taken once per loop
    // pass, when the kernel hands back completions, so timing a call costs
    // no clock read; what the pass itself spends is not in it.
    uint64_t now_ns() const noexcept { return now_ns_; }
    bool stopping() const noexcept { return stop_seen_; }
    size_t stream_count() const noexcept { return streams_.size(); }

    // Opens an SO_REUSEPORT listener and keeps a multishot accept on it.
    // Returns the local port it is bound to (> 0), or -errno.
    int listen(const sockaddr* addr, socklen_t len, listener_handler* h, int backlog = 4096);
    void close_listeners();
    // A socket that already listens (inherited from the process this one
    // took over from, upgrade.h) accepts from now on, like listen()'s.
    // Returns its local port (> 0) or -errno.
    int listen_fd(int fd, listener_handler* h);
    // The fds of the open listeners, in the order they were opened.
    std::vector<int> listener_fds() const;
    // Stops accepting (another process holds the same sockets now):
    // cancels the accepts; a connection the kernel accepted before the
    // cancel still reaches its handler, and so does one left in the accept
    // queue once the cancel is done (see sweep_released); then closes our
    // fds.
    void release_listeners();
    // True when no accept is armed any more (after release_listeners: every
    // accepted connection has been handed to its handler).
    bool listeners_quiet() const noexcept;
    // Local port of the first listener (useful with port 0).
    uint16_t listen_port() const noexcept { return listen_port_; }

    // Wraps an accepted/connected fd; receiving starts at once. With an
    // io_backend installed, a placeholder fd of its own becomes its virtual stream.
    stream* adopt(int fd, stream_handler* h);
    // For an io_backend: a stream over `t`, owning placeholder fd `fd`.
    stream* adopt_virtual(int fd, stream_transport* t, stream_handler* h);

    // Before start(): the second packet I/O engine (see io_backend).
    void set_io_backend(io_backend* b) noexcept { backend_ = b; }
    io_backend* backend() const noexcept { return backend_; }
    // Starts a TCP connect; h->on_connected reports the outcome. Returns null
    // (and sets *err) only if the socket could not even be created.
    stream* connect(const sockaddr* addr, socklen_t len, stream_handler* h,
                    const connect_options& opt, int* err,
                    reserved_port_outcome* reserved = nullptr);

    // Every stream on this shard (for listing and shutdown).
    const std::vector<stream*>& streams() const noexcept { return streams_; }

  private:
    friend class stream;
    struct listener;
    struct ring_buffer;
    // msghdr + iovecs of one sendmsg, one per SQE slot: the descriptor of an
    // SQE is the one at the SQE's index in the SQE array. The kernel reads it
    // when it consumes the SQE and, with IORING_FEAT_SUBMIT_STABLE, never
    // after; but it may consume the SQE only on a later io_uring_enter: one
    // that answers -EBUSY or -EAGAIN takes none, a short submit only some, and
    // the rest stay in the SQ ring for the next one (io_uring_enter(2)).
    // liburing hands an SQE slot out again only once the kernel's SQ head has
    // passed it, so a descriptor is rewritten only after the kernel has
    // consumed the SQE that points at it, however many enters that took.
    // (Recycling them all after every enter, as once done here, let the next
    // pass write another stream's iovecs under an SQE still in the ring.) A
    // kilobyte of iovecs per SQE slot, rather than in every stream.
    static constexpr size_t k_max_iov = 64;
    struct send_desc {
        msghdr msg;
        iovec iov[k_max_iov];
    };
    send_desc* send_desc_of(const io_uring_sqe* sqe) noexcept {
        return &send_descs_[size_t(sqe - ring_.sq.sqes)];
    }

    void run(task init, std::string* err, std::atomic<int>* ready);
    std::string setup_ring();
    void loop();
    void dispatch(io_uring_cqe* cqe);
    io_uring_sqe* get_sqe();
    // The io_uring boundary: submits every queued SQE and, with `wait`, waits
    // for one completion or until `ts` (null: no timeout). Returns what
    // io_uring_enter answered (see shard_config::refuse_submit).
    int enter(bool wait, __kernel_timespec* ts);
    void arm_wake();
    void arm_accept(listener* l);
    int add_listener(int fd, listener_handler* h);
    // Cancels a listener's accept and closes its fd.
    void stop_listener(listener* l);
    void cancel_accept(listener* l);
    // A released listener whose accept ended: takes what its accept queue
    // still holds (to the handler), then closes its fd.
    void sweep_released(listener* l);
    void recycle(uint16_t bid) noexcept;
    void flush_buffers() noexcept;
    void rearm_starved();
    void reap_streams();
    void queue_finish(stream* s);
    void queue_flush(stream* s);
    void flush_sends();
    int register_file(int fd);
    void unregister_file(int idx);
    slice take_buffer(uint16_t bid, uint32_t len);

    shard_config cfg_;
    ring_features feat_;
    shard_stats stats_;
    io_uring ring_{};
    bool ring_ok_ = false;
    std::thread thread_;
    int wake_fd_ = -1;
    uint64_t wake_buf_ = 0;
    std::vector<std::unique_ptr<mailbox>> inboxes_;
    std::atomic<bool> stop_requested_{false};
    bool stop_seen_ = false;
    std::atomic<bool> exit_now_{false};
    task on_stop_;
    timer_wheel timers_;
    uint64_t now_ms_ = 0;
    uint64_t now_ns_ = 0;

    // Provided-buffer ring (group 0).
    io_uring_buf_ring* br_ = nullptr;
    size_t br_bytes_ = 0;
    uint8_t* buf_mem_ = nullptr;
    size_t buf_mem_bytes_ = 0;
    std::unique_ptr<ring_buffer[]> buf_owners_;
    unsigned br_pending_ = 0;  // buffers added since the last tail update
    unsigned buffers_free_ = 0;
    unsigned pressure_below_ = 0;

    std::vector<int> free_files_;
    std::vector<std::unique_ptr<listener>> listeners_;
    uint16_t listen_port_ = 0;
    std::vector<stream*> streams_;
    std::vector<stream*> starved_;
    std::vector<stream*> finished_;
    std::vector<stream*> flush_;  // streams with bytes to send, submitted once per pass
    std::unique_ptr<send_desc[]> send_descs_;  // one per SQE slot (see send_desc)
    io_backend* backend_ = nullptr;
    bool backend_attached_ = false;
    uint64_t last_work_us_ = 0;  // when the backend or the ring last had work
};

}  // namespace rpcgate::core
