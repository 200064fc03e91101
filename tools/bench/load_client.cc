#include "tools/bench/load_client.h"

#include <fmt/format.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/log.h"
#include "rpc/message.h"
#include "rpc/record.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/echo_protocol.h"
#include "tools/bench/open_loop.h"

namespace rpcgate::bench {
namespace {

// Calls start at a random offset in [0, k_offset_span) of the payload block,
// so that a reply carrying another call's bytes fails --verify.
constexpr size_t k_offset_span = 4096;
// How often a shard checks deadlines (run end, call and connect timeouts).
constexpr uint64_t k_tick_ms = 20;
// After its last connection finished, a shard gets this long to close the rest.
constexpr uint64_t k_exit_grace_ms = 1000;
// Open loop: the pacer sleeps at most this long between looks at the shards'
// next due times (a shard may lower its own after a reply), and looks again
// this soon after it has posted a shard a wake-up.
constexpr uint64_t k_pacer_max_sleep_ns = 1000000;
constexpr uint64_t k_pacer_recheck_ns = 20000;
// A progress line's percentiles wait this long for the shards' histograms.
constexpr double k_snapshot_wait_s = 0.5;
// --reconnect: a refused or failed reconnect is tried again this much later
// (a listener may be between two processes for a moment).
constexpr uint64_t k_retry_ns = 20'000'000;

uint32_t proc_number(bench_proc p) noexcept {
    switch (p) {
        case bench_proc::null:
            return proc_null;
        case bench_proc::echo:
            return proc_echo;
        case bench_proc::callback:
            return proc_callback;
    }
    return proc_echo;
}

// Counters of one shard: written by its thread only, read by the main thread
// for progress lines and the final report.
struct worker_counters {
    std::atomic<uint64_t> calls{0}, connect_errors{0}, lost_calls{0}, timeouts{0};
    std::atomic<uint64_t> rpc_errors{0}, bad_replies{0}, backchannel_calls{0}, tls_errors{0};
    std::atomic<uint64_t> bytes_sent{0}, bytes_received{0};
    std::atomic<uint64_t> missed{0};  // open loop: due before the end, never sent
    std::atomic<uint64_t> connects{0}, reconnects{0}, clean_closes{0}, closes_in_flight{0};

    uint64_t errors() const noexcept {
        auto g = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
        return g(connect_errors) + g(lost_calls) + g(timeouts) + g(rpc_errors) + g(bad_replies) +
               g(tls_errors);
    }
};

struct load_worker;

// One connection with `depth` call slots. Owned by its worker; lives on the
// worker's shard thread.
class load_conn final : public core::stream_handler {
  public:
    load_conn(load_worker& w, unsigned index, uint64_t budget);

    void start();
    void check(uint64_t now);
    void wind_down();
    // Open loop: sends every call due by `now` that a free slot allows.
    void pace(uint64_t now);
    // Open loop: when the next call is due, or UINT64_MAX if none can leave
    // before a reply frees a slot (or ever).
    uint64_t next_due() const noexcept;
    bool finished() const noexcept { return finished_; }
    core::stream* stream() const noexcept { return st_; }

    void on_connected(core::stream& s, int err) override;
    void on_data(core::stream& s, core::slice data) override;
    void on_eof(core::stream& s, int err) override;
    void on_closed(core::stream& s, int err) override;

  private:
    struct call_slot {
        uint64_t sent_ns = 0;  // when it was sent (call timeouts)
        uint64_t due_ns = 0;   // when it was meant to be sent (latency)
        uint32_t xid = 0;
        uint32_t len = 0;
        uint32_t off = 0;
        bool busy = false;
    };

    void fill();
    void send_due(uint64_t now);
    void issue(uint32_t idx, uint64_t due_ns);
    // Every byte sent goes through send(); with TLS it is collected and
    // encrypted once per burst by flush().
    void send(core::slice_chain&& c);
    void flush();
    void feed_plain(const core::slice& data);
    void on_tls_bytes(core::slice data);
    void on_ready();
    bool handle(core::slice_chain&& rec);
    bool check_results(const call_slot& sl, core::slice_chain& results) const noexcept;
    void release(uint32_t idx);
    // Ends the connection early: calls in flight count as `kind` errors.
    void fail(std::atomic<uint64_t>& kind, const char* why, int err);
    // The server closed (err 0) or lost the connection mid-run: counts the
    // close by kind; with --reconnect, loses the calls in flight and opens
    // the connection again (once the old stream is gone), else ends it.
    void server_closed(int err);
    // With --reconnect: may a failed reconnect be tried again?
    bool may_retry(uint64_t now) const noexcept;
    void close_if_done();
    void finish();

    load_worker& w_;
    unsigned index_;
    core::stream* st_ = nullptr;
    rpc::record_reassembler rr_;
    header_slab slab_;
    std::vector<call_slot> slots_;
    std::vector<uint32_t> free_;
    unsigned slot_bits_ = 0;
    uint32_t seq_ = 0;
    uint64_t budget_;
    unsigned inflight_ = 0;
    rng rng_;
    uint64_t connect_started_ = 0;
    uint64_t tcp_connected_ = 0;
    open_loop_schedule sched_;                      // open loop only; set when ready
    uint64_t next_k_ = 0;                           // index of the next call on sched_
    std::unique_ptr<client::client_session> sess_;  // TLS modes only
    core::slice_chain outq_;                        // plaintext waiting for flush()
    bool connected_ = false;  // ready for calls (after the handshake with TLS)
    bool finished_ = false;
    // --reconnect: connects that succeeded; when the connection was lost;
    // a new connect waits for the old stream's on_closed (reconnect_pending_)
    // or for retry_at_ after a failed one (retry_pending_).
    uint64_t connects_ = 0;
    uint64_t lost_at_ = 0;
    uint64_t retry_at_ = 0;
    bool reconnect_pending_ = false;
    bool retry_pending_ = false;
    bool sched_set_ = false;  // open loop: the schedule survives reconnects
};

// The state of one shard of the run: its connections, counters and
// histogram. Public fields are read by run_load after the shard has joined
// (counters: at any time); everything else is the shard thread's.
struct load_worker {
    load_worker(const run_options& opt, unsigned index, const uint8_t* payload,
                const tls::context* tls_ctx)
        : sh(shard_cfg(opt, index)),
          opt(opt),
          payload(payload),
          tls_ctx(tls_ctx),
          inbox(&sh.make_inbox(16)),
          pace_inbox(&sh.make_inbox(64)) {}

    // Shard thread: opens the connections and starts the deadline tick.
    void init(const std::vector<std::pair<unsigned, uint64_t>>& plan) {
        start_ns = now_ns();
        if (opt.duration_s > 0) end_ns = start_ns + uint64_t(opt.duration_s * 1e9);
        live_ = unsigned(plan.size());
        for (auto& [idx, budget] : plan)
            conns_.push_back(std::make_unique<load_conn>(*this, idx, budget));
        tick_timer_.set_callback(
            [](core::timer*, void* a) { static_cast<load_worker*>(a)->tick(); }, this);
        exit_timer_.set_callback(
            [](core::timer*, void* a) { static_cast<load_worker*>(a)->sh.force_exit(); }, this);
        sh.set_on_stop([this] { on_stop(); });
        sh.timers().arm(tick_timer_, k_tick_ms);
        if (live_ == 0) mark_done();
        for (auto& c : conns_) c->start();
    }

    // Shard thread: no new calls; connections close once their calls are in.
    void begin_stop() {
        if (stopping) return;
        stopping = true;
        next_due.store(UINT64_MAX, std::memory_order_release);
        for (auto& c : conns_) c->wind_down();
    }

    void conn_done() {
        if (--live_ == 0) mark_done();
    }

    // Shard thread, open loop: the pacer's wake-up. Sends what is due and
    // tells the pacer when to come back.
    void pace() {
        pace_posted.store(false, std::memory_order_relaxed);
        uint64_t now = now_ns(), due = UINT64_MAX;
        for (auto& c : conns_) {
            if (c->finished()) continue;
            c->pace(now);
            due = std::min(due, c->next_due());
        }
        next_due.store(due, std::memory_order_release);
    }
    // Shard thread: a connection's next call is due at `t` (maybe earlier
    // than the pacer knows).
    void lower_next_due(uint64_t t) noexcept {
        if (t < next_due.load(std::memory_order_relaxed))
            next_due.store(t, std::memory_order_release);
    }
    // Shard thread: copies the histogram for a progress line; `seq` tells the
    // main thread which request the copy answers.
    void snapshot(uint64_t seq) {
        snap.clear();
        snap.merge(hist);
        snap_seq.store(seq, std::memory_order_release);
    }

    core::shard sh;  // first member: destroyed last, after everything using it
    const run_options& opt;
    const uint8_t* payload;
    const tls::context* tls_ctx;
    core::mailbox* inbox;       // from the main thread
    core::mailbox* pace_inbox;  // from the pacer thread
    worker_counters ctr;
    latency_histogram hist;
    latency_histogram handshake_hist;
    latency_histogram lag_hist;  // open loop: sent - intended
    latency_histogram snap;      // progress copy of hist, valid once snap_seq says so
    std::atomic<uint64_t> snap_seq{0};
    // Open loop: the earliest intended send time of this shard's connections
    // (written by the shard, read by the pacer) and whether a wake-up is posted.
    std::atomic<uint64_t> next_due{UINT64_MAX};
    std::atomic<bool> pace_posted{false};
    std::string tls_version, tls_cipher;
    std::atomic<bool> done{false};
    bool stopping = false;
    uint64_t start_ns = 0, end_ns = 0;
    uint64_t first_send_ns = UINT64_MAX, last_reply_ns = 0;
    bool warned_connect = false, warned_rpc = false, warned_lost = false, warned_bad = false;
    bool warned_tls = false;

  private:
    static core::shard_config shard_cfg(const run_options& opt, unsigned index) {
        core::shard_config c = opt.shard;
        c.index = index;
        return c;
    }
    void mark_done() { done.store(true, std::memory_order_release); }

    void tick() {
        uint64_t t = now_ns();
        if (end_ns && t >= end_ns) begin_stop();
        for (auto& c : conns_)
            if (!c->finished()) c->check(t);
        if (!done.load(std::memory_order_relaxed)) sh.timers().arm(tick_timer_, k_tick_ms);
    }

    void on_stop() {
        begin_stop();
        // Whatever is still open now (a stuck connect, a run cut short) is closed;
        // the loop is then left even if the kernel is slow to finish the closes.
        for (auto& c : conns_)
            if (c->stream()) c->stream()->close(-ECANCELED);
        sh.timers().arm(exit_timer_, k_exit_grace_ms);
    }

    std::vector<std::unique_ptr<load_conn>> conns_;
    unsigned live_ = 0;
    core::timer tick_timer_;
    core::timer exit_timer_;
};

// Logs the first problem of each kind per shard at warn, the rest at debug:
// 64 refused connections make one line, not 64.
template <typename... A>
void report_once(bool& warned, fmt::format_string<A...> f, A&&... a) {
    auto level = warned ? core::log_level::debug : core::log_level::warn;
    warned = true;
    core::log(core::log_subsys::bench, level, f, std::forward<A>(a)...);
}

load_conn::load_conn(load_worker& w, unsigned index, uint64_t budget)
    : w_(w),
      index_(index),
      slab_(w.opt.depth * 2 + 2),
      budget_(budget),
      rng_{w.opt.seed * 0x100000001b3ull + index} {
    unsigned depth = std::max(1u, w.opt.depth);
    while ((1u << slot_bits_) < depth) ++slot_bits_;
    slots_.resize(depth);
    free_.reserve(depth);
    for (uint32_t i = depth; i-- > 0;) free_.push_back(i);
    seq_ = uint32_t(rng_.next());
}

void load_conn::start() {
    connect_started_ = now_ns();
    int err = 0;
    st_ = w_.sh.connect(w_.opt.target.get(), w_.opt.target.len, this, {}, &err);
    if (!st_) {
        core::bump(w_.ctr.connect_errors);
        report_once(w_.warned_connect, "run: socket for {}: {}", w_.opt.target.str(),
                    std::strerror(-err));
        if (may_retry(connect_started_)) {
            retry_pending_ = true;
            retry_at_ = connect_started_ + k_retry_ns;
            return;
        }
        finish();
    }
}

bool load_conn::may_retry(uint64_t now) const noexcept {
    return w_.opt.reconnect && connects_ > 0 && !finished_ && !w_.stopping && budget_ > 0 &&
           now - lost_at_ < uint64_t(w_.opt.timeout_ms) * 1000000u;
}

void load_conn::on_connected(core::stream& s, int err) {
    if (err < 0) {
        if (!finished_) {
            core::bump(w_.ctr.connect_errors);
            report_once(w_.warned_connect, "run: connect to {}: {}", w_.opt.target.str(),
                        std::strerror(-err));
        }
        // The stream closes itself; on_closed follows (and starts the retry).
        const uint64_t now = now_ns();
        if (may_retry(now)) {
            retry_pending_ = true;
            retry_at_ = now + k_retry_ns;
            return;
        }
        finish();
        return;
    }
    tcp_connected_ = now_ns();
    core::bump(w_.ctr.connects);
    if (connects_++ > 0) core::bump(w_.ctr.reconnects);
    if (w_.opt.tls != client::tls_mode::off) {
        client::session_params p;
        p.mode = w_.opt.tls;
        p.ctx = w_.tls_ctx;
        p.prog = w_.opt.program;
        p.vers = w_.opt.version;
        sess_ = std::make_unique<client::client_session>(p);
        core::slice_chain out;
        if (sess_->start(out) == client::session_state::failed) {
            fail(w_.ctr.tls_errors, sess_->error().c_str(), -EPROTO);
            return;
        }
        st_->send(std::move(out));
        return;  // calls start in on_ready()
    }
    on_ready();
}

void load_conn::on_ready() {
    connected_ = true;
    if (w_.stopping) {
        close_if_done();
        return;
    }
    // Open loop: a reconnected connection keeps its schedule, so that calls
    // due while it was away are sent late and their latency says so.
    if (w_.opt.rate > 0 && !sched_set_) {
        sched_ = open_loop_schedule(w_.opt.rate, w_.opt.connections, index_, now_ns());
        sched_set_ = true;
    }
    fill();
    flush();
}

void load_conn::send(core::slice_chain&& c) {
    if (sess_)
        outq_.append(std::move(c));
    else
        st_->send(std::move(c));
}

void load_conn::flush() {
    if (!sess_ || outq_.empty() || !st_) return;
    core::slice_chain out;
    if (!sess_->write(std::move(outq_), out)) {
        outq_.clear();
        fail(w_.ctr.tls_errors, sess_->error().c_str(), -EPROTO);
        return;
    }
    outq_.clear();
    st_->send(std::move(out));
}

void load_conn::on_tls_bytes(core::slice data) {
    core::slice_chain out, plain;
    const bool was_ready = sess_->ready();
    client::session_state st = sess_->on_bytes(std::move(data), out, plain);
    if (!out.empty() && st_) st_->send(std::move(out));
    if (st == client::session_state::failed || st == client::session_state::refused) {
        if (!finished_) {
            report_once(w_.warned_tls, "run: TLS: {}", sess_->error());
            fail(w_.ctr.tls_errors, "TLS failed", -EPROTO);
        }
        return;
    }
    if (!was_ready && st == client::session_state::ready) {
        w_.handshake_hist.record(now_ns() - tcp_connected_);
        if (w_.tls_version.empty() && sess_->tls()) {
            w_.tls_version = sess_->tls()->version();
            w_.tls_cipher = sess_->tls()->cipher();
        }
        on_ready();
    }
    for (const core::slice& p : plain) {
        if (finished_) break;
        feed_plain(p);
    }
    flush();
    if (st == client::session_state::closed && !finished_ && st_) on_eof(*st_, 0);
}

void load_conn::fill() {
    if (w_.opt.rate > 0) {
        send_due(now_ns());
        return;
    }
    while (!free_.empty() && budget_ > 0 && !w_.stopping && st_ && st_->open()) {
        uint32_t idx = free_.back();
        free_.pop_back();
        --budget_;
        issue(idx, 0);
    }
}

void load_conn::send_due(uint64_t now) {
    if (!connected_) return;
    while (!free_.empty() && budget_ > 0 && !w_.stopping && st_ && st_->open()) {
        const uint64_t due = sched_.intended(next_k_);
        if (due > now) break;
        ++next_k_;
        uint32_t idx = free_.back();
        free_.pop_back();
        --budget_;
        issue(idx, due);
    }
    w_.lower_next_due(next_due());
}

void load_conn::pace(uint64_t now) {
    if (finished_) return;
    send_due(now);
    flush();
}

uint64_t load_conn::next_due() const noexcept {
    if (!connected_ || finished_ || free_.empty() || budget_ == 0 || w_.stopping || !st_)
        return UINT64_MAX;
    return sched_.intended(next_k_);
}

// `due_ns`: the open loop's intended send time; 0 in closed loop (now).
void load_conn::issue(uint32_t idx, uint64_t due_ns) {
    const run_options& o = w_.opt;
    call_slot& sl = slots_[idx];
    sl.len = uint32_t(o.size);
    if (o.size_max > o.size) sl.len += uint32_t(rng_.below(o.size_max - o.size + 1));
    sl.off = uint32_t(rng_.below(k_offset_span));
    sl.xid = (++seq_ << slot_bits_) | idx;
    sl.busy = true;
    ++inflight_;
    const bool with_opaque = o.proc != bench_proc::null;
    if (!with_opaque) sl.len = 0;
    sl.sent_ns = now_ns();
    sl.due_ns = due_ns ? due_ns : sl.sent_ns;
    if (due_ns) w_.lag_hist.record(sl.sent_ns - std::min(sl.sent_ns, due_ns));
    // One clock per shard thread: its first call is its earliest.
    if (w_.first_send_ns == UINT64_MAX) w_.first_send_ns = sl.due_ns;
    send(opaque_call(slab_, sl.xid, o.program, o.version, proc_number(o.proc),
                     core::slice::unowned(w_.payload + sl.off, sl.len), with_opaque));
}

void load_conn::on_data(core::stream& s, core::slice data) {
    if (sess_)
        on_tls_bytes(std::move(data));
    else
        feed_plain(data);
}

void load_conn::feed_plain(const core::slice& data) {
    auto fed = rr_.feed(data, [this](core::slice_chain&& rec) { return handle(std::move(rec)); });
    if (!fed && !finished_) fail(w_.ctr.bad_replies, rpc::to_string(fed.error()), -EPROTO);
}

bool load_conn::handle(core::slice_chain&& rec) {
    if (finished_ || !st_) return false;
    auto pk = rpc::peek_message(rec);
    if (!pk) {
        fail(w_.ctr.bad_replies, "not an RPC message", -EPROTO);
        return false;
    }
    if (pk->type == rpc::msg_type::call) {
        auto call = rpc::decode_call(rec);
        if (!call) {
            fail(w_.ctr.bad_replies, "undecodable backchannel call", -EPROTO);
            return false;
        }
        core::bump(w_.ctr.backchannel_calls);
        send(answer_callback(slab_, std::move(*call)));
        return true;
    }
    auto rep = rpc::decode_reply(rec);
    if (!rep) {
        fail(w_.ctr.bad_replies, "undecodable reply", -EPROTO);
        return false;
    }
    const uint32_t xid = rep->header.xid;
    const uint32_t idx = xid & ((1u << slot_bits_) - 1);
    if (idx >= slots_.size() || !slots_[idx].busy || slots_[idx].xid != xid) {
        core::bump(w_.ctr.bad_replies);
        report_once(w_.warned_bad, "run: reply with unknown xid {:#x}", xid);
        return true;
    }
    const uint64_t t = now_ns();
    call_slot& sl = slots_[idx];
    if (rep->header.stat != rpc::reply_stat::accepted ||
        rep->header.accept != rpc::accept_stat::success) {
        core::bump(w_.ctr.rpc_errors);
        report_once(w_.warned_rpc, "run: call refused: {}", client::describe_reply(rep->header));
    } else if (!check_results(sl, rep->results)) {
        core::bump(w_.ctr.bad_replies);
        report_once(w_.warned_bad, "run: reply of {} bytes does not match the {}-byte call{}",
                    rep->results.size(), sl.len, w_.opt.verify ? " (verified)" : "");
    } else {
        core::bump(w_.ctr.calls);
        core::bump(w_.ctr.bytes_sent, sl.len);
        core::bump(w_.ctr.bytes_received, sl.len);
        w_.hist.record(t - sl.due_ns);
        w_.last_reply_ns = t;
    }
    release(idx);
    fill();
    close_if_done();
    return !finished_;
}

bool load_conn::check_results(const call_slot& sl, core::slice_chain& results) const noexcept {
    if (w_.opt.proc == bench_proc::null) return results.empty();
    auto len = opaque_length(results);
    if (!len || *len != sl.len) return false;
    if (!w_.opt.verify) return true;
    results.trim_front(4);
    results.trim(sl.len);
    return chain_equals(results, w_.payload + sl.off, sl.len);
}

void load_conn::release(uint32_t idx) {
    slots_[idx].busy = false;
    free_.push_back(idx);
    --inflight_;
}

void load_conn::check(uint64_t now) {
    const uint64_t limit = uint64_t(w_.opt.timeout_ms) * 1000000u;
    if (retry_pending_) {
        if (now < retry_at_ || st_) return;  // st_: the failed stream is still closing
        retry_pending_ = false;
        start();
        return;
    }
    if (!connected_) {
        if (now - connect_started_ > limit) {
            core::bump(w_.ctr.connect_errors);
            report_once(w_.warned_connect, "run: connect to {}: timed out", w_.opt.target.str());
            if (st_) st_->close(-ETIMEDOUT);
            finish();
        }
        return;
    }
    unsigned late = 0;
    for (const call_slot& sl : slots_)
        if (sl.busy && now - sl.sent_ns > limit) ++late;
    if (late == 0) return;
    core::bump(w_.ctr.timeouts, late);
    inflight_ -= late;
    fail(w_.ctr.lost_calls, "call timed out", -ETIMEDOUT);
}

void load_conn::wind_down() {
    if (w_.opt.rate > 0 && connected_ && !finished_) {
        // Calls whose time came before the end but that never left: the
        // client (or a server holding every slot) could not keep the rate.
        uint64_t end = w_.end_ns ? std::min(w_.end_ns, now_ns()) : now_ns();
        uint64_t due = sched_.due_by(end);
        if (due > next_k_) core::bump(w_.ctr.missed, std::min(due - next_k_, budget_));
    }
    if (!connected_) {
        if (st_) st_->close(-ECANCELED);
        finish();
        return;
    }
    close_if_done();
}

void load_conn::close_if_done() {
    if (finished_ || inflight_ > 0) return;
    if (budget_ > 0 && !w_.stopping) return;
    if (st_) st_->close(0);
    finish();
}

void load_conn::fail(std::atomic<uint64_t>& kind, const char* why, int err) {
    if (finished_) return;
    if (&kind != &w_.ctr.lost_calls) core::bump(kind);  // the event itself
    if (inflight_ > 0) {
        core::bump(w_.ctr.lost_calls, inflight_);
        report_once(w_.warned_lost, "run: connection {} ended with {} calls in flight: {}", index_,
                    inflight_, why);
    }
    for (auto& sl : slots_) sl.busy = false;
    inflight_ = 0;
    if (st_) st_->close(err);
    finish();
}

void load_conn::on_eof(core::stream& s, int err) {
    if (sess_ && !connected_ && !finished_) {
        // The server gave up on the probe or the handshake (a deadline, a
        // refusal it did not explain): a TLS failure, not a lost call.
        report_once(w_.warned_tls, "run: TLS: {}",
                    err ? std::strerror(-err) : "closed by the server during the handshake");
        fail(w_.ctr.tls_errors, "closed during the TLS handshake", err);
        return;
    }
    if (!finished_ && (inflight_ > 0 || (budget_ > 0 && !w_.stopping))) {
        server_closed(err);
        return;
    }
    s.close(err);
    finish();
}

void load_conn::server_closed(int err) {
    const char* why = err ? std::strerror(-err) : "closed by the server";
    if (inflight_ > 0) {
        core::bump(w_.ctr.closes_in_flight);
    } else {
        core::bump(w_.ctr.clean_closes);
    }
    if (!w_.opt.reconnect) {
        // Closed under us mid-run: the calls in flight are lost; a connection
        // that had none in flight still counts once.
        if (inflight_ == 0) core::bump(w_.ctr.lost_calls);
        fail(w_.ctr.lost_calls, why, err);
        return;
    }
    if (inflight_ > 0) {
        core::bump(w_.ctr.lost_calls, inflight_);
        report_once(w_.warned_lost, "run: connection {} closed with {} calls in flight: {}", index_,
                    inflight_, why);
    }
    // Every slot is free again; what the old connection had half received or
    // not yet encrypted goes with it.
    free_.clear();
    for (uint32_t i = uint32_t(slots_.size()); i-- > 0;) {
        slots_[i].busy = false;
        free_.push_back(i);
    }
    inflight_ = 0;
    rr_.reset();
    outq_.clear();
    sess_.reset();
    connected_ = false;
    lost_at_ = connect_started_ = now_ns();
    if (st_) {
        // The new connect waits for on_closed: the old stream's sends may
        // still point into slab_.
        reconnect_pending_ = true;
        st_->close(err);
        return;
    }
    start();
}

void load_conn::on_closed(core::stream&, int err) {
    st_ = nullptr;
    if (retry_pending_) return;  // check() starts the next connect
    if (reconnect_pending_) {
        reconnect_pending_ = false;
        if (!finished_ && !w_.stopping && budget_ > 0) {
            start();
            return;
        }
        finish();
        return;
    }
    if (sess_ && !connected_ && !finished_) {
        core::bump(w_.ctr.tls_errors);
        report_once(w_.warned_tls, "run: TLS: connection ended during the handshake");
    }
    if (!finished_ && connected_ && (inflight_ > 0 || (budget_ > 0 && !w_.stopping))) {
        server_closed(err);
        if (!finished_) return;  // reconnecting
    }
    finish();
}

void load_conn::finish() {
    if (finished_) return;
    finished_ = true;
    w_.conn_done();
}

// The open loop's pacer: sleeps until the earliest call due on any shard,
// then posts that shard a wake-up (one at a time: a shard that has not yet
// taken the last one is not sent another). The thread's timer slack is set to
// 1 ns: the default 50 us would make every call that much late.
void run_pacer(const std::vector<std::unique_ptr<load_worker>>& workers,
               const std::atomic<bool>& stop) {
    ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    while (!stop.load(std::memory_order_relaxed)) {
        const uint64_t now = now_ns();
        uint64_t wake = now + k_pacer_max_sleep_ns;
        for (auto& w : workers) {
            if (w->done.load(std::memory_order_relaxed)) continue;
            const uint64_t due = w->next_due.load(std::memory_order_acquire);
            if (due > now) {
                wake = std::min(wake, due);
                continue;
            }
            if (w->pace_posted.exchange(true, std::memory_order_relaxed)) {
                wake = std::min(wake, now + k_pacer_recheck_ns);
                continue;
            }
            // Posted or not, look again soon: the shard's next due time
            // changes once it has sent.
            load_worker* wp = w.get();
            if (!wp->pace_inbox->try_post([wp] { wp->pace(); }))
                wp->pace_posted.store(false, std::memory_order_relaxed);
            wake = std::min(wake, now + k_pacer_recheck_ns);
        }
        timespec ts{time_t(wake / 1000000000u), long(wake % 1000000000u)};
        ::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
    }
}

unsigned default_threads(unsigned connections) {
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    return std::max(1u, std::min(cores, connections));
}

}  // namespace

std::unique_ptr<tls::context> make_tls_client_context(const tls::client_options& o,
                                                      const std::string& ciphersuites,
                                                      std::string* err) {
    auto ctx = tls::context::make_client(o, err);
    if (ctx && !ciphersuites.empty() && !client::set_tls13_ciphersuites(*ctx, ciphersuites, err))
        return nullptr;
    return ctx;
}

run_report run_load(const run_options& opt, std::string* err, const std::atomic<bool>* stop) {
    run_report r;
    err->clear();
    if (opt.connections == 0 || opt.depth == 0) {
        *err = "connections and depth must be at least 1";
        return r;
    }
    if (opt.duration_s <= 0 && opt.calls == 0) {
        *err = "a run needs --duration or --calls";
        return r;
    }
    const unsigned threads =
        std::min(opt.threads ? opt.threads : default_threads(opt.connections), opt.connections);
    // One payload block for every call of every thread, random from the seed.
    const size_t max_size = std::max(opt.size, opt.size_max);
    std::vector<uint8_t> payload(max_size + k_offset_span);
    rng fill_rng{opt.seed};
    for (size_t i = 0; i < payload.size(); i += 8) {
        uint64_t v = fill_rng.next();
        std::memcpy(payload.data() + i, &v, std::min<size_t>(8, payload.size() - i));
    }

    // Connection i goes to shard i % threads; --calls is split evenly.
    std::vector<std::vector<std::pair<unsigned, uint64_t>>> plan(threads);
    for (unsigned i = 0; i < opt.connections; ++i) {
        uint64_t budget = UINT64_MAX;
        if (opt.calls) budget = opt.calls / opt.connections + (i < opt.calls % opt.connections);
        plan[i % threads].push_back({i, budget});
    }

    // One TLS client context for every connection.
    std::unique_ptr<tls::context> tls_ctx;
    if (opt.tls != client::tls_mode::off) {
        tls_ctx = make_tls_client_context(opt.tls_options, opt.ciphersuites, err);
        if (!tls_ctx) return r;
    }

    std::vector<std::unique_ptr<load_worker>> workers;
    for (unsigned t = 0; t < threads; ++t) {
        auto w = std::make_unique<load_worker>(opt, t, payload.data(), tls_ctx.get());
        load_worker* wp = w.get();
        const auto& conns = plan[t];
        std::string e = wp->sh.start([wp, &conns] { wp->init(conns); });
        if (!e.empty()) {
            *err = e;
            for (auto& o : workers) {
                o->sh.request_stop();
                o->sh.join();
            }
            return r;
        }
        workers.push_back(std::move(w));
    }

    // Open loop: one pacer thread wakes each shard when a call of its is due.
    std::atomic<bool> pacer_stop{false};
    std::thread pacer;
    if (opt.rate > 0)
        pacer = std::thread([&workers, &pacer_stop] { run_pacer(workers, pacer_stop); });

    using clock = std::chrono::steady_clock;
    const auto started = clock::now();
    // Backstops; the per-call and connect timeouts end every connection well
    // before them: a duration run may overrun by little, and any run whose
    // counters stall for several timeouts is stopped.
    const double timeout_s = opt.timeout_ms / 1000.0;
    const double stall_s = 3 * timeout_s + 5;
    // Progress lines: only on runs long enough to want them.
    const bool progress = opt.progress_interval_s > 0 &&
                          (opt.duration_s <= 0 || opt.duration_s > opt.progress_min_run_s);
    auto next_progress =
        started + std::chrono::duration<double>(progress ? opt.progress_interval_s : 1e9);
    uint64_t last_calls = 0, last_events = 0;
    auto last_progress = started, last_change = started, stop_sent_at = started;
    bool stop_sent = false;
    // A progress line is printed when every shard has answered the snapshot
    // request `snap_asked` (or after k_snapshot_wait_s, without the late ones).
    latency_histogram so_far;
    uint64_t snap_asked = 0, snap_errors = 0;
    double snap_elapsed = 0, snap_rate = 0;
    bool snap_pending = false;
    auto snap_at = started;
    for (;;) {
        bool all_done = true;
        uint64_t events = 0;
        for (auto& w : workers) {
            all_done &= w->done.load(std::memory_order_acquire);
            events += w->ctr.calls.load(std::memory_order_relaxed) + w->ctr.errors();
        }
        if (all_done) break;
        auto now = clock::now();
        auto secs = [&](clock::time_point since) {
            return std::chrono::duration<double>(now - since).count();
        };
        const double elapsed = secs(started);
        if (events != last_events) {
            last_events = events;
            last_change = now;
        }
        if (!stop_sent && ((stop && stop->load()) || secs(last_change) > stall_s ||
                           (opt.duration_s > 0 && elapsed > opt.duration_s + stall_s))) {
            stop_sent = true;
            stop_sent_at = now;
            for (auto& w : workers) {
                load_worker* wp = w.get();
                if (!wp->inbox->try_post([wp] { wp->begin_stop(); })) wp->sh.request_stop();
            }
        }
        // Calls in flight get one timeout to come in; then the shards are stopped.
        if (stop_sent && secs(stop_sent_at) > timeout_s + 2) break;
        if (progress && now >= next_progress && !snap_pending) {
            next_progress += std::chrono::duration<double>(opt.progress_interval_s);
            if (opt.duration_s > 0 || elapsed >= opt.progress_min_run_s) {
                uint64_t calls = 0;
                snap_errors = 0;
                for (auto& w : workers) {
                    calls += w->ctr.calls.load(std::memory_order_relaxed);
                    snap_errors += w->ctr.errors();
                }
                double dt = secs(last_progress);
                snap_rate = dt > 0 ? double(calls - last_calls) / dt : 0.0;
                snap_elapsed = elapsed;
                last_calls = calls;
                last_progress = now;
                ++snap_asked;
                for (auto& w : workers) {
                    load_worker* wp = w.get();
                    (void)wp->inbox->try_post([wp, n = snap_asked] { wp->snapshot(n); });
                }
                snap_pending = true;
                snap_at = now;
            }
        }
        if (snap_pending) {
            bool all = true;
            for (auto& w : workers)
                all &= w->snap_seq.load(std::memory_order_acquire) == snap_asked;
            if (all || secs(snap_at) > k_snapshot_wait_s) {
                so_far.clear();
                for (auto& w : workers)
                    if (w->snap_seq.load(std::memory_order_acquire) == snap_asked)
                        so_far.merge(w->snap);
                std::string line = format_progress(snap_elapsed, snap_rate, so_far, snap_errors);
                line += '\n';
                ssize_t wr = ::write(2, line.data(), line.size());
                (void)wr;
                snap_pending = false;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (pacer.joinable()) {
        pacer_stop.store(true);
        pacer.join();
    }
    for (auto& w : workers) w->sh.request_stop();
    for (auto& w : workers) w->sh.join();

    r.connections = opt.connections;
    r.depth = opt.depth;
    r.threads = threads;
    r.size = opt.size;
    r.size_max = std::max(opt.size, opt.size_max);
    r.proc = opt.proc;
    r.verify = opt.verify;
    r.reconnect = opt.reconnect;
    r.tls = opt.tls;
    r.rate = opt.rate;
    uint64_t first = UINT64_MAX, last = 0;
    for (auto& w : workers) {
        auto g = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
        r.calls += g(w->ctr.calls);
        r.connect_errors += g(w->ctr.connect_errors);
        r.lost_calls += g(w->ctr.lost_calls);
        r.connects += g(w->ctr.connects);
        r.reconnects += g(w->ctr.reconnects);
        r.clean_closes += g(w->ctr.clean_closes);
        r.closes_in_flight += g(w->ctr.closes_in_flight);
        r.timeouts += g(w->ctr.timeouts);
        r.rpc_errors += g(w->ctr.rpc_errors);
        r.bad_replies += g(w->ctr.bad_replies);
        r.tls_errors += g(w->ctr.tls_errors);
        r.handshake_latency.merge(w->handshake_hist);
        if (r.tls_version.empty()) {
            r.tls_version = w->tls_version;
            r.tls_cipher = w->tls_cipher;
        }
        r.backchannel_calls += g(w->ctr.backchannel_calls);
        r.payload_bytes_sent += g(w->ctr.bytes_sent);
        r.payload_bytes_received += g(w->ctr.bytes_received);
        r.latency.merge(w->hist);
        r.send_lag.merge(w->lag_hist);
        r.missed_calls += g(w->ctr.missed);
        first = std::min(first, w->first_send_ns);
        last = std::max(last, w->last_reply_ns);
    }
    r.errors =
        r.connect_errors + r.lost_calls + r.timeouts + r.rpc_errors + r.bad_replies + r.tls_errors;
    if (r.calls > 0 && last > first) r.elapsed_s = double(last - first) / 1e9;
    return r;
}

}  // namespace rpcgate::bench
