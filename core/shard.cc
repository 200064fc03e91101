#include "core/shard.h"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/log.h"

namespace rpcgate::core {
namespace {

// user_data = pointer | tag. Streams, listeners and the shard are at least
// 8-byte aligned, so the low three bits are free.
enum op_tag : uintptr_t {
    tag_ignore = 0,
    tag_recv = 1,
    tag_send = 2,
    tag_connect = 3,
    tag_accept = 4,
    tag_wake = 5,
    tag_poll = 6,
};
constexpr uintptr_t k_tag_mask = 7;

uint64_t encode(const void* p, op_tag t) {
    return reinterpret_cast<uintptr_t>(p) | t;
}

uint64_t monotonic_us() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000 + uint64_t(ts.tv_nsec) / 1000;
}

void set_nodelay(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

std::string ring_features::describe() const {
    std::string out;
    auto add = [&](const char* name, bool on) {
        if (!out.empty()) out += ' ';
        out += on ? "+" : "-";
        out += name;
    };
    add("single_issuer", single_issuer);
    add("defer_taskrun", defer_taskrun);
    add("coop_taskrun", coop_taskrun);
    add("buf_ring", buf_ring);
    add("recv_multishot", recv_multishot);
    add("accept_multishot", accept_multishot);
    add("registered_files", registered_files);
    add("send_zc", send_zc);
    return out;
}

void stream_handler::on_eof(stream& s, int err) {
    s.close(err);
}

struct shard::ring_buffer : buffer_owner {
    shard* owner_shard = nullptr;
    uint16_t bid = 0;
};

struct shard::listener {
    shard* s = nullptr;
    int fd = -1;
    listener_handler* h = nullptr;
    bool armed = false;
    bool closed = false;
    // Closed by release_listeners: a connection the kernel had already
    // accepted for us still goes to the handler (it is not dropped).
    bool released = false;
    timer retry;
};

// ---------------------------------------------------------------- stream

stream::stream(shard* s, int fd, stream_handler* h) noexcept : shard_(s), fd_(fd), handler_(h) {
    close_timer_.set_callback(&stream::on_close_deadline, this);
}

stream::~stream() = default;

bool stream::full() const noexcept {
    return queued_ >= shard_->cfg_.send_high_water;
}

void stream::send(slice&& data) {
    if (data.empty()) return;
    slice_chain c;
    c.push_back(std::move(data));
    send(std::move(c));
}

void stream::send(slice_chain&& data) {
    if (state_ == state::closed || (state_ == state::closing && !detaching_)) return;
    if (data.empty()) return;
    queued_ += data.size();
    for (const slice& part : data) sendq_.push_back(part.share());
    data.clear();
    if (queued_ >= shard_->cfg_.send_high_water) over_high_ = true;
    if (!send_inflight_ && state_ != state::connecting) shard_->queue_flush(this);
}

void stream::submit_send() {
    if (send_inflight_ || state_ == state::connecting || state_ == state::closed) return;
    if (state_ == state::closing && !detaching_) return;
    if (sendq_head_ == sendq_.size()) return;
    if (transport_) {
        // Synchronous: the transport copies what it takes into its own buffers.
        size_t offered = queued_;
        size_t took = transport_->transmit(&sendq_[sendq_head_], sendq_.size() - sendq_head_);
        if (took > offered) took = offered;
        bump(shard_->stats_.send_calls);
        transport_full_ = took < offered;
        dequeue_sent(took);
        after_send();
        return;
    }
    io_uring_sqe* sqe = shard_->get_sqe();
    shard::send_desc* d = shard_->send_desc_of(sqe);
    size_t n = 0;
    for (size_t i = sendq_head_; i < sendq_.size() && n < shard::k_max_iov; ++i, ++n) {
        d->iov[n].iov_base = const_cast<uint8_t*>(sendq_[i].data());
        d->iov[n].iov_len = sendq_[i].size();
    }
    d->msg = msghdr{};
    d->msg.msg_iov = d->iov;
    d->msg.msg_iovlen = n;
    if (file_index_ >= 0) {
        io_uring_prep_sendmsg(sqe, file_index_, &d->msg, MSG_NOSIGNAL);
        sqe->flags |= IOSQE_FIXED_FILE;
    } else {
        io_uring_prep_sendmsg(sqe, fd_, &d->msg, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(sqe, encode(this, tag_send));
    send_inflight_ = true;
    ++ops_inflight_;
    bump(shard_->stats_.send_calls);
}

void stream::dequeue_sent(size_t n) {
    if (n == 0) return;
    size_t left = n;
    bytes_out_ += left;
    queued_ -= left;
    bump(shard_->stats_.send_bytes, left);
    while (left > 0) {
        slice& s = sendq_[sendq_head_];
        if (s.size() <= left) {
            left -= s.size();
            s = slice();
            ++sendq_head_;
        } else {
            s.trim_front(left);
            left = 0;
        }
    }
    if (sendq_head_ == sendq_.size()) {
        sendq_.clear();
        sendq_head_ = 0;
    } else if (sendq_head_ >= 32) {
        sendq_.erase_front(sendq_head_);
        sendq_head_ = 0;
    }
}

void stream::after_send() {
    if (queued_ > 0) {
        // A full transport says when it has room (transport_writable).
        if (!transport_full_) shard_->queue_flush(this);
    } else if (detaching_) {
        maybe_finish();
        return;
    } else if (close_when_drained_) {
        if (!transport_ && !lingering_ && !eof_seen_ && linger_) {
            begin_linger();
        } else {
            close(0);
        }
        return;
    }
    if (over_high_ && queued_ <= shard_->cfg_.send_low_water) {
        over_high_ = false;
        if (handler_) handler_->on_writable(*this);
    }
}

void stream::on_send_cqe(const io_uring_cqe* cqe) {
    --ops_inflight_;
    send_inflight_ = false;
    int res = cqe->res;
    if (res > 0) dequeue_sent(size_t(res));
    if (state_ == state::closing && !detaching_) {
        sendq_.clear();
        sendq_head_ = 0;
        queued_ = 0;
        maybe_finish();
        return;
    }
    if (res < 0) {
        close(res);
        return;
    }
    after_send();
}

void stream::transport_writable() {
    transport_full_ = false;
    if (queued_ > 0 && (state_ == state::open || detaching_)) shard_->queue_flush(this);
}

void stream::transport_received(slice data) {
    size_t len = data.size();
    if (len == 0) return;
    bytes_in_ += len;
    bump(shard_->stats_.recv_bytes, len);
    bump(shard_->stats_.recv_completions);
    if (detaching_) {
        held_.push_back(std::move(data));  // handed over with the fd
        return;
    }
    if (state_ != state::open) return;  // closing: dropped
    if (paused_) {
        held_.push_back(std::move(data));  // not consumed: the peer's window closes
        return;
    }
    transport_->consumed(len);
    handler_->on_data(*this, std::move(data));
}

void stream::transport_eof(int err) {
    if (state_ != state::open || eof_seen_) return;
    eof_seen_ = true;
    // An orderly FIN waits behind the bytes held while paused; a reset is
    // reported at once, like the liveness poll of a kernel socket.
    if (paused_ && err == 0) {
        eof_pending_ = true;
        eof_err_ = 0;
        return;
    }
    handler_->on_eof(*this, err);
}

void stream::arm_receive() {
    io_uring_sqe* sqe = shard_->get_sqe();
    int target = file_index_ >= 0 ? file_index_ : fd_;
    if (shard_->feat_.recv_multishot) {
        io_uring_prep_recv_multishot(sqe, target, nullptr, 0, 0);
    } else {
        io_uring_prep_recv(sqe, target, nullptr, 0, 0);
    }
    sqe->flags |= IOSQE_BUFFER_SELECT;
    if (file_index_ >= 0) sqe->flags |= IOSQE_FIXED_FILE;
    sqe->buf_group = 0;
    io_uring_sqe_set_data64(sqe, encode(this, tag_recv));
    recv_armed_ = true;
    recv_cancel_sent_ = false;
    ++ops_inflight_;
}

void stream::on_receive_cqe(const io_uring_cqe* cqe) {
    int res = cqe->res;
    bool more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        recv_armed_ = false;
        --ops_inflight_;
    }
    if (res > 0) {
        if (!(cqe->flags & IORING_CQE_F_BUFFER)) {
            close(-EIO);  // cannot happen with buffer select; do not guess
            return;
        }
        slice data =
            shard_->take_buffer(uint16_t(cqe->flags >> IORING_CQE_BUFFER_SHIFT), uint32_t(res));
        if (shard_->buffers_free_ < shard_->pressure_below_) {
            data = slice::copy_of(data.data(), data.size());  // the ring buffer goes back now
            bump(shard_->stats_.pressure_copies);
        }
        bytes_in_ += uint32_t(res);
        bump(shard_->stats_.recv_bytes, uint32_t(res));
        bump(shard_->stats_.recv_completions);
        if (detaching_) {
            held_.push_back(std::move(data));  // handed over with the fd
            maybe_finish();
            return;
        }
        if (state_ != state::open) {  // closing: drop (the buffer recycles)
            maybe_finish();
            return;
        }
        if (lingering_) {
            // The peer's bytes after our last reply: nobody will read them.
        } else if (paused_) {
            held_.push_back(std::move(data));
        } else {
            handler_->on_data(*this, std::move(data));
        }
        if (!more && state_ == state::open && !paused_ && !recv_armed_) arm_receive();
        return;
    }
    if (state_ != state::open) {
        maybe_finish();
        return;
    }
    if (res == -ENOBUFS) {
        // Ring empty: the bytes stay in the socket. Re-arm when buffers return.
        bump(shard_->stats_.enobufs);
        if (!more && !starved_) {
            starved_ = true;
            shard_->starved_.push_back(this);
        }
        return;
    }
    if (res == -EINVAL && shard_->feat_.recv_multishot && bytes_in_ == 0 && !more) {
        // Kernel without multishot receive: fall back to one-shot receives.
        shard_->feat_.recv_multishot = false;
        RPCGATE_LOG(core, warn, "shard {}: multishot recv refused, using one-shot recv",
                    shard_->index());
        arm_receive();
        return;
    }
    if (res == -ECANCELED) {
        if (!paused_ && !recv_armed_ && !eof_seen_) arm_receive();
        return;
    }
    // EOF (0) or a receive error.
    if (lingering_) {
        close(0);  // the peer has read what it wanted and closed (or reset)
        return;
    }
    if (eof_seen_) return;
    eof_seen_ = true;
    if (paused_) {
        eof_pending_ = true;
        eof_err_ = res;
        return;
    }
    handler_->on_eof(*this, res);
}

void stream::arm_liveness_poll() {
    if (poll_armed_) return;
    io_uring_sqe* sqe = shard_->get_sqe();
    io_uring_prep_poll_add(sqe, fd_, POLLRDHUP);
    io_uring_sqe_set_data64(sqe, encode(this, tag_poll));
    poll_armed_ = true;
    ++ops_inflight_;
}

void stream::cancel_liveness_poll() {
    if (!poll_armed_) return;
    io_uring_sqe* sqe = shard_->get_sqe();
    io_uring_prep_poll_remove(sqe, encode(this, tag_poll));
    io_uring_sqe_set_data64(sqe, tag_ignore);
}

void stream::on_poll_cqe(const io_uring_cqe* cqe) {
    --ops_inflight_;
    poll_armed_ = false;
    if (state_ != state::open) {
        maybe_finish();
        return;
    }
    // A reset or error while paused: report it now, so that the other side of
    // a proxied pair is not left waiting on a peer that is gone. An orderly
    // FIN alone (POLLRDHUP) waits for resume, after the bytes still held.
    if (cqe->res > 0 && (cqe->res & (POLLERR | POLLHUP)) && paused_ && !eof_seen_) {
        eof_seen_ = true;
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
        handler_->on_eof(*this, err ? -err : -ECONNRESET);
    }
}

void stream::pause_receive() {
    if (paused_) return;
    paused_ = true;
    if (recv_armed_ && !recv_cancel_sent_) {
        io_uring_sqe* sqe = shard_->get_sqe();
        io_uring_prep_cancel64(sqe, encode(this, tag_recv), 0);
        io_uring_sqe_set_data64(sqe, tag_ignore);
        recv_cancel_sent_ = true;
    }
    if (state_ == state::open && !eof_seen_ && !transport_) arm_liveness_poll();
}

void stream::resume_receive() {
    if (!paused_) return;
    paused_ = false;
    cancel_liveness_poll();
    if (state_ != state::open) return;
    // Deliver what arrived while paused; the handler may pause again.
    while (!held_.empty() && !paused_ && state_ == state::open) {
        slice_chain one = held_.split_front(held_.part(0).size());
        slice s = one.linearize();  // a single part: shares, never copies
        if (transport_) transport_->consumed(s.size());
        handler_->on_data(*this, std::move(s));
    }
    if (paused_ || state_ != state::open) return;
    if (eof_pending_) {
        eof_pending_ = false;
        handler_->on_eof(*this, eof_err_);
        return;
    }
    if (!transport_ && !recv_armed_ && !eof_seen_ && !starved_) arm_receive();
}

void stream::close(int err) {
    if (state_ == state::closing || state_ == state::closed) return;
    state_ = state::closing;
    close_err_ = err;
    close_timer_.cancel();
    held_.clear();
    if (transport_) {
        sendq_.clear();
        sendq_head_ = 0;
        queued_ = 0;
        transport_->close(err);
        maybe_finish();
        return;
    }
    // shutdown() completes an in-flight receive (EOF) and send at once; the
    // cancel covers a receive the kernel has not started yet.
    ::shutdown(fd_, SHUT_RDWR);
    cancel_liveness_poll();
    if (recv_armed_ && !recv_cancel_sent_) {
        io_uring_sqe* sqe = shard_->get_sqe();
        io_uring_prep_cancel64(sqe, encode(this, tag_recv), 0);
        io_uring_sqe_set_data64(sqe, tag_ignore);
        recv_cancel_sent_ = true;
    }
    if (!send_inflight_) {
        sendq_.clear();
        sendq_head_ = 0;
        queued_ = 0;
    }
    maybe_finish();
}

void stream::close_after_send(uint64_t deadline_ms, bool linger) {
    if (state_ != state::open && state_ != state::connecting) return;
    close_when_drained_ = true;
    linger_ = linger;
    shard_->timers_.arm(close_timer_, deadline_ms);
    if (queued_ == 0 && state_ == state::open && !send_inflight_) {
        if (transport_ || eof_seen_ || !linger) {
            close(0);
        } else {
            begin_linger();
        }
        return;
    }
    pause_receive();
}

std::string stream::describe() const {
    static const char* names[] = {"connecting", "open", "closing", "closed"};
    return fmt::format(
        "{}fd={} state={} ops={} recv_armed={} cancel_sent={} paused={} starved={} eof={} "
        "send_inflight={} queued={} detaching={} finish_queued={}",
        transport_ ? "virtual " : "", fd_, names[int(state_)], ops_inflight_, recv_armed_,
        recv_cancel_sent_, paused_, starved_, eof_seen_, send_inflight_, queued_, detaching_,
        finish_queued_);
}

void stream::on_close_deadline(timer*, void* arg) {
    auto* s = static_cast<stream*>(arg);
    // A lingering close that reached its deadline is an orderly end all the same.
    s->close(s->lingering_ ? 0 : -ETIMEDOUT);
}

void stream::begin_linger() {
    lingering_ = true;
    ::shutdown(fd_, SHUT_WR);
    held_.clear();  // calls that will not be answered
    eof_pending_ = false;
    paused_ = false;
    cancel_liveness_poll();
    if (!recv_armed_) arm_receive();
}

void stream::detach(detach_fn done) {
    if (state_ != state::open) return;
    detach_cb_ = std::move(done);
    detaching_ = true;
    state_ = state::closing;
    close_timer_.cancel();
    cancel_liveness_poll();
    if (recv_armed_ && !recv_cancel_sent_) {
        io_uring_sqe* sqe = shard_->get_sqe();
        io_uring_prep_cancel64(sqe, encode(this, tag_recv), 0);
        io_uring_sqe_set_data64(sqe, tag_ignore);
        recv_cancel_sent_ = true;
    }
    maybe_finish();
}

void stream::maybe_finish() {
    if (state_ != state::closing || ops_inflight_ > 0 || finish_queued_) return;
    if (detaching_ && queued_ > 0) return;  // the reply before the hand-off must leave first
    finish_queued_ = true;
    shard_->queue_finish(this);
}

void stream::on_connect_cqe(const io_uring_cqe* cqe) {
    --ops_inflight_;
    if (state_ != state::connecting) {
        maybe_finish();
        return;
    }
    if (cqe->res < 0) {
        bump(shard_->stats_.connect_errors);
        state_ = state::open;  // so that close() runs its normal path
        handler_->on_connected(*this, cqe->res);
        close(cqe->res);
        return;
    }
    state_ = state::open;
    bump(shard_->stats_.connects);
    handler_->on_connected(*this, 0);
    if (state_ != state::open) return;
    if (!paused_) arm_receive();
    if (queued_ > 0 && !send_inflight_) submit_send();
}

// ---------------------------------------------------------------- shard

shard::shard(const shard_config& cfg) : cfg_(cfg) {
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

shard::~shard() {
    if (thread_.joinable()) {
        request_stop();
        force_exit();
        thread_.join();
    }
    if (wake_fd_ >= 0) ::close(wake_fd_);
}

mailbox& shard::make_inbox(size_t capacity_pow2) {
    inboxes_.push_back(std::make_unique<mailbox>(wake_fd_, capacity_pow2));
    return *inboxes_.back();
}

std::string shard::start(task init) {
    std::string err;
    std::atomic<int> ready{0};
    thread_ = std::thread([this, init = std::move(init), &err, &ready]() mutable {
        run(std::move(init), &err, &ready);
    });
    while (ready.load(std::memory_order_acquire) == 0) ready.wait(0);
    if (ready.load() < 0) {
        thread_.join();
        return err;
    }
    return {};
}

void shard::request_stop() noexcept {
    stop_requested_.store(true, std::memory_order_release);
    uint64_t one = 1;
    ssize_t r = ::write(wake_fd_, &one, sizeof one);
    (void)r;
}

void shard::join() {
    if (thread_.joinable()) thread_.join();
}

std::string shard::setup_ring() {
    if (wake_fd_ < 0) return std::string("eventfd: ") + std::strerror(errno);
    // Flag sets tried in order; see the header for why each one.
    struct attempt {
        unsigned flags;
        bool single_issuer, defer, coop;
    };
    const attempt attempts[] = {
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, true, true, false},
        {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, false, false, true},
        {0, false, false, false},
    };
    int rc = -EINVAL;
    for (const attempt& a : attempts) {
        io_uring_params p{};
        // A larger CQ than SQ: multishot receives post many completions per SQE.
        p.flags = a.flags | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
        p.cq_entries = cfg_.sq_entries * 4;
        rc = io_uring_queue_init_params(cfg_.sq_entries, &ring_, &p);
        if (rc == 0) {
            feat_.single_issuer = a.single_issuer;
            feat_.defer_taskrun = a.defer;
            feat_.coop_taskrun = a.coop;
            break;
        }
    }
    if (rc < 0) return std::string("io_uring_queue_init: ") + std::strerror(-rc);
    ring_ok_ = true;
    if (!(ring_.features & IORING_FEAT_SUBMIT_STABLE))
        return "io_uring lacks IORING_FEAT_SUBMIT_STABLE (kernel too old)";
    send_descs_ = std::make_unique<send_desc[]>(ring_.sq.ring_entries);  // one per SQE slot

    if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
        feat_.send_zc = io_uring_opcode_supported(probe, IORING_OP_SEND_ZC);
        bool has_recv = io_uring_opcode_supported(probe, IORING_OP_RECV);
        bool has_accept = io_uring_opcode_supported(probe, IORING_OP_ACCEPT);
        io_uring_free_probe(probe);
        if (!has_recv || !has_accept) return "io_uring lacks RECV/ACCEPT (kernel too old)";
    }
    // Multishot accept and receive cannot be probed by opcode; assume them and
    // fall back on the first EINVAL.
    feat_.recv_multishot = true;
    feat_.accept_multishot = true;

    // Provided-buffer ring, by hand: the ring of io_uring_buf entries is plain
    // page-aligned memory that we register with IORING_REGISTER_PBUF_RING.
    unsigned count = cfg_.buffer_count;
    if (count == 0 || (count & (count - 1)) || count > 32768)
        return "buffer count must be a power of two <= 32768";
    br_bytes_ = size_t(count) * sizeof(io_uring_buf);
    void* br =
        ::mmap(nullptr, br_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED) return std::string("mmap buffer ring: ") + std::strerror(errno);
    br_ = static_cast<io_uring_buf_ring*>(br);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uintptr_t>(br_);
    reg.ring_entries = count;
    reg.bgid = 0;
    rc = io_uring_register_buf_ring(&ring_, &reg, 0);
    if (rc < 0)
        return std::string("register provided-buffer ring (needs 5.19+): ") + std::strerror(-rc);
    feat_.buf_ring = true;
    io_uring_buf_ring_init(br_);
    buf_mem_bytes_ = size_t(count) * cfg_.buffer_size;
    void* mem = ::mmap(nullptr, buf_mem_bytes_, PROT_READ | PROT_WRITE,
                       MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) return std::string("mmap receive buffers: ") + std::strerror(errno);
    buf_mem_ = static_cast<uint8_t*>(mem);
    pressure_below_ = cfg_.pressure_copy_below < 0 ? count / 4 : unsigned(cfg_.pressure_copy_below);
    buf_owners_ = std::make_unique<ring_buffer[]>(count);
    for (unsigned i = 0; i < count; ++i) {
        buf_owners_[i].owner_shard = this;
        buf_owners_[i].bid = uint16_t(i);
        buf_owners_[i].release = [](buffer_owner* o) noexcept {
            auto* rb = static_cast<ring_buffer*>(o);
            rb->owner_shard->recycle(rb->bid);
        };
        recycle(uint16_t(i));
    }
    flush_buffers();

    if (cfg_.registered_files > 0 &&
        io_uring_register_files_sparse(&ring_, cfg_.registered_files) == 0) {
        feat_.registered_files = true;
        free_files_.reserve(cfg_.registered_files);
        for (int i = int(cfg_.registered_files) - 1; i >= 0; --i) free_files_.push_back(i);
    }
    return {};
}

void shard::run(task init, std::string* err, std::atomic<int>* ready) {
    if (cfg_.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cfg_.cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    std::string e = setup_ring();
    if (!e.empty()) {
        *err = "shard " + std::to_string(cfg_.index) + ": " + e;
        ready->store(-1, std::memory_order_release);
        ready->notify_all();
        if (ring_ok_) io_uring_queue_exit(&ring_);
        ring_ok_ = false;
        return;
    }
    if (backend_) {
        e = backend_->attach(*this);
        if (!e.empty()) {
            *err = "shard " + std::to_string(cfg_.index) + ": " + backend_->name() + ": " + e;
            ready->store(-1, std::memory_order_release);
            ready->notify_all();
            io_uring_queue_exit(&ring_);
            ring_ok_ = false;
            return;
        }
        backend_attached_ = true;
    }
    now_ns_ = monotonic_ns();
    now_ms_ = now_ns_ / 1000000;
    timers_.set_now(now_ms_);
    arm_wake();
    if (init) init();
    ready->store(1, std::memory_order_release);
    ready->notify_all();
    loop();

    RPCGATE_LOG(core, info,
                "shard {}: {} loop passes, {} completions, {} receives ({} bytes), {} sends ({} "
                "bytes), {} ENOBUFS, {} pressure copies",
                cfg_.index, stats_.loop_passes.load(), stats_.cqes.load(),
                stats_.recv_completions.load(), stats_.recv_bytes.load(), stats_.send_calls.load(),
                stats_.send_bytes.load(), stats_.enobufs.load(), stats_.pressure_copies.load());
    // Exit: close what is left. Tearing the ring down cancels every request,
    // so no completion can refer to a stream after this point.
    close_listeners();
    std::vector<stream*> left = streams_;
    io_uring_queue_exit(&ring_);
    ring_ok_ = false;
    for (stream* s : left) {
        s->sendq_.clear();
        s->held_.clear();
        if (s->transport_ && s->state_ != stream::state::closing) s->transport_->close(-ECANCELED);
        if (s->fd_ >= 0 && !s->detaching_) ::close(s->fd_);
        if (s->handler_) s->handler_->on_closed(*s, -ECANCELED);
        delete s;
    }
    streams_.clear();
    if (backend_attached_) backend_->detach(*this);
    backend_attached_ = false;
    bump(stats_.streams_open, 0);
    stats_.streams_open.store(0, std::memory_order_relaxed);
}

int shard::enter(bool wait, __kernel_timespec* ts) {
    int rc = cfg_.refuse_submit ? cfg_.refuse_submit() : 0;
    if (rc >= 0) {
        if (wait) {
            io_uring_cqe* first = nullptr;
            rc = io_uring_submit_and_wait_timeout(&ring_, &first, 1, ts, nullptr);
        } else {
            rc = io_uring_submit(&ring_);
        }
    }
    if (io_uring_sq_ready(&ring_) > 0) bump(stats_.submits_incomplete);
    return rc;
}

io_uring_sqe* shard::get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (!sqe) {
        enter(false, nullptr);
        sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
}

void shard::arm_wake() {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof wake_buf_, 0);
    io_uring_sqe_set_data64(sqe, encode(this, tag_wake));
}

void shard::loop() {
    for (;;) {
        if (!stop_seen_ && stop_requested_.load(std::memory_order_acquire)) {
            stop_seen_ = true;
            if (on_stop_) on_stop_();
            close_listeners();
        }
        if (exit_now_.load(std::memory_order_acquire) || (stop_seen_ && streams_.empty())) break;

        flush_sends();
        if (backend_) backend_->flush(*this);
        int64_t wait = timers_.ms_until_next(monotonic_ms());
        __kernel_timespec ts{};
        bool timed = wait >= 0;
        if (timed) {
            ts.tv_sec = wait / 1000;
            ts.tv_nsec = (wait % 1000) * 1000000;
        }
        if (backend_) {
            // Packets arrive without a completion: never block while busy,
            // and only briefly when idle (see poll_spin_us).
            uint64_t sleep_ns = uint64_t(cfg_.poll_sleep_us) * 1000;
            if (monotonic_us() - last_work_us_ < cfg_.poll_spin_us) {
                ts = __kernel_timespec{};
            } else {
                if (!timed || uint64_t(wait) * 1000000 > sleep_ns) {
                    ts.tv_sec = 0;
                    ts.tv_nsec = long(sleep_ns);
                }
                bump(stats_.idle_sleeps);
            }
            timed = true;
        }
        // -EBUSY or -EAGAIN: the kernel took no SQE; a short submit: only some.
        // What it left stays in the SQ ring, with its send descriptors (see
        // shard::send_desc), and goes with the next enter; reaping what has
        // completed, below, is what lets a kernel that answered -EBUSY go on.
        int rc = enter(true, timed ? &ts : nullptr);
        now_ns_ = monotonic_ns();
        now_ms_ = now_ns_ / 1000000;
        // With no timer armed the wait above had no timeout and the wheel's
        // clock stood still; bring it to now before anything arms a timer.
        if (timers_.armed_count() == 0) timers_.set_now(now_ms_);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            RPCGATE_LOG(core, error, "shard {}: io_uring wait failed: {}", cfg_.index,
                        std::strerror(-rc));
        }
        unsigned head, n = 0;
        io_uring_cqe* cqe;
        io_uring_for_each_cqe(&ring_, head, cqe) {
            dispatch(cqe);
            ++n;
        }
        if (n) io_uring_cq_advance(&ring_, n);
        bump(stats_.cqes, n);
        bump(stats_.loop_passes);
        if (backend_) {
            if (backend_->poll(*this) || n) last_work_us_ = monotonic_us();
        }
        flush_buffers();
        rearm_starved();
        reap_streams();
        timers_.advance(now_ms_);
    }
}

void shard::dispatch(io_uring_cqe* cqe) {
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    auto tag = op_tag(ud & k_tag_mask);
    void* p = reinterpret_cast<void*>(ud & ~k_tag_mask);
    switch (tag) {
        case tag_ignore:
            return;
        case tag_recv:
            static_cast<stream*>(p)->on_receive_cqe(cqe);
            return;
        case tag_send:
            static_cast<stream*>(p)->on_send_cqe(cqe);
            return;
        case tag_connect:
            static_cast<stream*>(p)->on_connect_cqe(cqe);
            return;
        case tag_poll:
            static_cast<stream*>(p)->on_poll_cqe(cqe);
            return;
        case tag_wake:
            for (auto& box : inboxes_) box->drain();
            arm_wake();
            return;
        case tag_accept: {
            auto* l = static_cast<listener*>(p);
            bool more = cqe->flags & IORING_CQE_F_MORE;
            if (!more) l->armed = false;
            if (cqe->res >= 0) {
                if (l->closed && !l->released) {
                    ::close(cqe->res);
                } else {
                    bump(stats_.accepts);
                    int fd = cqe->res;
                    set_nodelay(fd);
                    sockaddr_storage peer{};
                    socklen_t plen = sizeof peer;
                    ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen);
                    l->h->on_accept(*this, fd, peer);
                }
            } else if (cqe->res == -EINVAL && feat_.accept_multishot && !more) {
                feat_.accept_multishot = false;
            } else if (cqe->res != -ECANCELED) {
                bump(stats_.accept_errors);
                // EMFILE/ENFILE/ENOMEM: pause accepting for a moment rather than spin.
                RPCGATE_LOG(core, warn, "shard {}: accept failed: {}; retrying in 100 ms",
                            cfg_.index, std::strerror(-cqe->res));
                if (!more && !l->closed) {
                    timers_.arm(l->retry, 100);
                    return;
                }
            }
            if (!l->armed && l->released) {
                sweep_released(l);  // its last CQE: the old accept is off the socket
                return;
            }
            if (!l->armed && !l->closed && !stop_seen_) arm_accept(l);
            return;
        }
    }
}

int shard::listen(const sockaddr* addr, socklen_t len, listener_handler* h, int backlog) {
    if (backend_) {
        int port = backend_->listen(*this, addr, len, h);
        if (port > 0 && listen_port_ == 0) listen_port_ = uint16_t(port);
        return port;
    }
    int fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (::bind(fd, addr, len) < 0 || ::listen(fd, backlog) < 0) {
        int e = -errno;
        ::close(fd);
        return e;
    }
    return add_listener(fd, h);
}

int shard::listen_fd(int fd, listener_handler* h) {
    if (backend_) return -EOPNOTSUPP;
    return add_listener(fd, h);
}

int shard::add_listener(int fd, listener_handler* h) {
    auto l = std::make_unique<listener>();
    l->s = this;
    l->fd = fd;
    l->h = h;
    l->retry.set_callback(
        [](timer*, void* arg) {
            auto* li = static_cast<listener*>(arg);
            if (!li->armed && !li->closed) li->s->arm_accept(li);
        },
        l.get());
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl);
    uint16_t port = 0;
    if (ss.ss_family == AF_INET)
        port = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
        port = ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    if (listen_port_ == 0) listen_port_ = port;
    arm_accept(l.get());
    listeners_.push_back(std::move(l));
    return port;
}

std::vector<int> shard::listener_fds() const {
    std::vector<int> out;
    for (const auto& l : listeners_)
        if (!l->closed) out.push_back(l->fd);
    return out;
}

void shard::release_listeners() {
    for (auto& l : listeners_) {
        if (l->closed) continue;
        l->released = true;
        l->closed = true;
        l->retry.cancel();
        if (ring_ok_ && l->armed) {
            // The fd stays open until the accept's last CQE: sweep_released.
            cancel_accept(l.get());
        } else {
            sweep_released(l.get());
        }
    }
}

void shard::stop_listener(listener* l) {
    l->closed = true;
    l->retry.cancel();
    if (ring_ok_ && l->armed) cancel_accept(l);
    ::close(l->fd);
    l->fd = -1;
}

void shard::cancel_accept(listener* l) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, encode(l, tag_accept), 0);
    io_uring_sqe_set_data64(sqe, tag_ignore);
}

// The accept of a released listener is gone from the socket; what is still
// in its accept queue would be nobody's. io_uring waits for a connection as
// an exclusive waiter (one wake-up per connection, to the first waiter in
// the socket's queue, which is ours: we armed it before the new process
// did). A wake-up that reached our accept while this thread was busy is
// turned into a completion only when the thread next waits on the ring
// (deferred task work); a cancel processed first ends the accept with
// -ECANCELED and that connection stays queued, with the new process's
// accept never woken for it: the client hangs until the next connection
// arrives on the same socket. So, now that the wake-ups go to the new
// process, take what is left ourselves (it moves like the others), then
// let go of the socket.
void shard::sweep_released(listener* l) {
    if (l->fd < 0) return;
    // Non-blocking (the file is shared with the new process, whose io_uring
    // accepts do not mind): if it takes the last connection between two of
    // ours, accept4 answers EAGAIN rather than block this thread.
    int flags = ::fcntl(l->fd, F_GETFL);
    if (flags >= 0 && !(flags & O_NONBLOCK)) ::fcntl(l->fd, F_SETFL, flags | O_NONBLOCK);
    unsigned taken = 0;
    // Bounded: connections keep arriving, and they are the new process's.
    for (int i = 0; i < 4096; ++i) {
        sockaddr_storage peer{};
        socklen_t plen = sizeof peer;
        int fd = ::accept4(l->fd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            break;  // EAGAIN: empty; else (fd limit): left for the new process's next wake-up
        }
        bump(stats_.accepts);
        ++taken;
        set_nodelay(fd);
        l->h->on_accept(*this, fd, peer);
    }
    if (taken > 0)
        RPCGATE_LOG(core, info,
                    "shard {}: {} connection(s) left in a released listener's accept queue, "
                    "taken here",
                    cfg_.index, taken);
    ::close(l->fd);
    l->fd = -1;
}

bool shard::listeners_quiet() const noexcept {
    for (const auto& l : listeners_)
        if (l->armed) return false;
    return true;
}

void shard::arm_accept(listener* l) {
    io_uring_sqe* sqe = get_sqe();
    if (feat_.accept_multishot)
        io_uring_prep_multishot_accept(sqe, l->fd, nullptr, nullptr, SOCK_CLOEXEC);
    else
        io_uring_prep_accept(sqe, l->fd, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, encode(l, tag_accept));
    l->armed = true;
}

void shard::close_listeners() {
    if (backend_ && backend_attached_) backend_->close_listeners(*this);
    for (auto& l : listeners_) {
        if (!l->closed) {
            stop_listener(l.get());
        } else if (l->fd >= 0) {
            ::close(l->fd);  // released, its cancel still under way: the loop ends
            l->fd = -1;
        }
    }
}

int shard::register_file(int fd) {
    if (!feat_.registered_files || free_files_.empty()) return -1;
    int idx = free_files_.back();
    if (io_uring_register_files_update(&ring_, unsigned(idx), &fd, 1) != 1) return -1;
    free_files_.pop_back();
    return idx;
}

void shard::unregister_file(int idx) {
    int minus_one = -1;
    io_uring_register_files_update(&ring_, unsigned(idx), &minus_one, 1);
    free_files_.push_back(idx);
}

stream* shard::adopt(int fd, stream_handler* h) {
    if (backend_) {
        if (stream* v = backend_->adopt(*this, fd, h)) return v;
    }
    auto* s = new stream(this, fd, h);
    s->file_index_ = register_file(fd);
    s->slot_ = streams_.size();
    streams_.push_back(s);
    bump(stats_.streams_open);
    s->arm_receive();
    return s;
}

stream* shard::adopt_virtual(int fd, stream_transport* t, stream_handler* h) {
    auto* s = new stream(this, fd, h);
    s->transport_ = t;
    s->slot_ = streams_.size();
    streams_.push_back(s);
    bump(stats_.streams_open);
    return s;
}

stream* shard::connect(const sockaddr* addr, socklen_t len, stream_handler* h,
                       const connect_options& opt, int* err, reserved_port_outcome* reserved) {
    int fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = -errno;
        return nullptr;
    }
    set_nodelay(fd);
    reserved_port_outcome outcome = reserved_port_outcome::not_asked;
    if (opt.reserved_port) {
        // Walk down the range like bindresvport(3); EADDRINUSE moves on, any
        // other error (EACCES: not privileged) ends the walk.
        sockaddr_storage local{};
        local.ss_family = addr->sa_family;
        outcome = reserved_port_outcome::exhausted;
        for (int port = opt.reserved_high; port >= int(opt.reserved_low); --port) {
            if (addr->sa_family == AF_INET)
                reinterpret_cast<sockaddr_in*>(&local)->sin_port = htons(uint16_t(port));
            else
                reinterpret_cast<sockaddr_in6*>(&local)->sin6_port = htons(uint16_t(port));
            socklen_t ll = addr->sa_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
            if (::bind(fd, reinterpret_cast<sockaddr*>(&local), ll) == 0) {
                outcome = reserved_port_outcome::bound;
                break;
            }
            if (errno != EADDRINUSE) {
                outcome = reserved_port_outcome::denied;
                break;
            }
        }
    }
    if (reserved) *reserved = outcome;
    auto* s = new stream(this, fd, h);
    s->state_ = stream::state::connecting;
    s->file_index_ = register_file(fd);
    s->slot_ = streams_.size();
    streams_.push_back(s);
    bump(stats_.streams_open);
    std::memcpy(&s->connect_addr_, addr, len);
    s->connect_len_ = len;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_connect(sqe, fd, reinterpret_cast<sockaddr*>(&s->connect_addr_), len);
    io_uring_sqe_set_data64(sqe, encode(s, tag_connect));
    ++s->ops_inflight_;
    return s;
}

slice shard::take_buffer(uint16_t bid, uint32_t len) {
    --buffers_free_;
    return slice(buf_mem_ + size_t(bid) * cfg_.buffer_size, len, &buf_owners_[bid]);
}

void shard::recycle(uint16_t bid) noexcept {
    if (!br_) return;
    io_uring_buf_ring_add(br_, buf_mem_ + size_t(bid) * cfg_.buffer_size, cfg_.buffer_size, bid,
                          io_uring_buf_ring_mask(cfg_.buffer_count), int(br_pending_));
    ++br_pending_;
    ++buffers_free_;
}

void shard::flush_buffers() noexcept {
    if (br_pending_) {
        io_uring_buf_ring_advance(br_, int(br_pending_));
        br_pending_ = 0;
    }
    stats_.buffers_free.store(buffers_free_, std::memory_order_relaxed);
}

void shard::rearm_starved() {
    if (starved_.empty()) return;
    // Wait for a useful number of free buffers, or every re-armed receive would
    // just hit ENOBUFS again.
    unsigned want = cfg_.buffer_count / 8 ? cfg_.buffer_count / 8 : 1;
    if (buffers_free_ < want) return;
    std::vector<stream*> list;
    list.swap(starved_);
    for (stream* s : list) {
        s->starved_ = false;
        if (s->state_ == stream::state::open && !s->paused_ && !s->recv_armed_ && !s->eof_seen_)
            s->arm_receive();
    }
}

void shard::queue_finish(stream* s) {
    finished_.push_back(s);
}

void shard::queue_flush(stream* s) {
    if (s->flush_queued_) return;
    s->flush_queued_ = true;
    flush_.push_back(s);
}

void shard::flush_sends() {
    // reap_streams takes a freed stream off this list, so every entry is alive.
    for (size_t i = 0; i < flush_.size(); ++i) {
        stream* s = flush_[i];
        s->flush_queued_ = false;
        if (s->queued_ > 0) s->submit_send();
    }
    flush_.clear();
}

void shard::reap_streams() {
    while (!finished_.empty()) {
        std::vector<stream*> list;
        list.swap(finished_);
        for (stream* s : list) {
            // A late op; or bytes a handler queued on a detaching stream
            // after its finish was queued (in the same loop pass), which
            // must leave before the fd is handed over. maybe_finish requeues
            // once they have.
            if (s->ops_inflight_ > 0 || (s->detaching_ && s->queued_ > 0)) {
                s->finish_queued_ = false;
                continue;
            }
            s->state_ = stream::state::closed;
            if (s->flush_queued_) {
                for (auto& p : flush_)
                    if (p == s) p = flush_.back(), flush_.pop_back();
            }
            if (s->starved_) {
                for (auto& p : starved_)
                    if (p == s) p = starved_.back(), starved_.pop_back();
            }
            if (s->file_index_ >= 0) unregister_file(s->file_index_);
            s->file_index_ = -1;
            // Remove from the table (swap with the last).
            stream* last = streams_.back();
            streams_[s->slot_] = last;
            last->slot_ = s->slot_;
            streams_.pop_back();
            stats_.streams_open.store(streams_.size(), std::memory_order_relaxed);
            if (s->detaching_) {
                if (s->transport_) s->transport_->detached();
                int fd = s->fd_;
                s->fd_ = -1;
                slice_chain unread = std::move(s->held_);
                if (s->detach_cb_) s->detach_cb_(fd, std::move(unread));
            } else {
                ::close(s->fd_);
            }
            if (s->handler_) s->handler_->on_closed(*s, s->close_err_);
            delete s;
        }
    }
}

}  // namespace rpcgate::core
