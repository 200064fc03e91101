// Per-call accounting: how many calls of each kind (rpc/call_kind.h: program,
// version, procedure, NFSv4 main op) a shard forwarded, how many replies came
// back, how many were RPC errors, their bytes, and two latency histograms:
//
//   backend  from the call forwarded to the backend (or, when it waited for
//            the backend connection or its TLS handshake, from the moment
//            the link was ready) to its reply received from the backend;
//   gateway  from the call received from the client to its reply sent to it.
//
// Times come from the shard's loop-pass clock (core::shard::now_ns): no
// clock read per call. The families are declared in metrics.h
// (RPCGATE_CALL_COUNTERS, RPCGATE_CALL_HISTOGRAMS) and rendered summed over
// shards, one series per kind seen, so their label sets are bounded by the
// kind table.
//
// Threads: `call_stats` is written by its shard only (relaxed atomics, no
// lock) and read by the admin thread at scrape time. `calls_in_flight` is
// one session's, shard thread only; it allocates only when it grows (its
// size doubles), never per call.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/shard.h"
#include "gateway/metrics.h"
#include "rpc/call_kind.h"

namespace rpcgate::gw {

// Bucket k (0 .. k_latency_buckets-1) counts durations under 2^(k+4) µs
// (16 µs .. 8.4 s); the last one counts the rest (+Inf).
inline constexpr size_t k_latency_buckets = 20;

struct latency_histogram {
    std::atomic<uint64_t> buckets[k_latency_buckets + 1] = {};
    std::atomic<uint64_t> sum_ns{0};

    static size_t bucket_of(uint64_t ns) noexcept {
        uint64_t us16 = ns / 16000;  // in units of 16 µs
        size_t b = size_t(std::bit_width(us16));
        return b < k_latency_buckets ? b : k_latency_buckets;
    }
    void record(uint64_t ns) noexcept {
        core::bump(buckets[bucket_of(ns)]);
        core::bump(sum_ns, ns);
    }
    // Upper bound of bucket k in seconds (k < k_latency_buckets).
    static double bound_seconds(size_t k) noexcept { return double(uint64_t(16) << k) * 1e-6; }
};

// The two latency histograms of a kind (RPCGATE_CALL_HISTOGRAMS names them).
enum latency_kind : size_t { backend_latency = 0, gateway_latency = 1 };

// One kind's figures on one shard, laid out for the data path: the counters
// and both sums share one cache line, and the two histograms' buckets are
// interleaved, since a call's two durations mostly fall in the same bucket.
// A call and its reply touch two or three lines, not five.
struct alignas(64) call_kind_stats {
#define RPCGATE_X(field, metric, help) std::atomic<uint64_t> field{0};
    RPCGATE_CALL_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
    std::atomic<uint64_t> sum_ns[2] = {};                          // [latency_kind]
    std::atomic<uint64_t> buckets[k_latency_buckets + 1][2] = {};  // [bucket][latency_kind]

    void record(latency_kind h, uint64_t ns) noexcept {
        core::bump(buckets[latency_histogram::bucket_of(ns)][h]);
        core::bump(sum_ns[h], ns);
    }
};

// One shard's figures for every kind.
class call_stats {
  public:
    call_stats() : kinds_(new call_kind_stats[rpc::call_kind_count()]) {}

    call_kind_stats& at(rpc::call_kind k) noexcept { return kinds_[k]; }
    const call_kind_stats& at(rpc::call_kind k) const noexcept { return kinds_[k]; }

  private:
    std::unique_ptr<call_kind_stats[]> kinds_;
};

// The calls of one session waiting for their reply: xid -> (kind, time
// received). Clients number their calls in sequence (Linux, libtirpc,
// rpcgate-bench), so a call goes first to its direct slot, xid modulo the
// slot count: the calls in flight sit side by side, and a batch of calls or
// of replies touches a cache line or two of the table rather than one line
// each (their reply comes a millisecond later, when a scattered line has
// left the cache). A call whose slot is taken (a retransmission, xids out
// of sequence, a window wider than the slots) goes to the spill table: open
// addressing on a hash of the xid, linear probing, deletion by backward
// shift. A retransmitted xid is one more entry (its reply takes one). Past
// k_max_entries a call is counted but not timed (add returns false).
class calls_in_flight {
  public:
    static constexpr size_t k_max_entries = 1u << 14;
    static constexpr size_t k_max_direct = 1u << 12;  // 64 KiB of direct slots at most

    // Remembers a call; false when full (the call is then not timed).
    inline bool add(uint32_t xid, rpc::call_kind kind, uint64_t received_ns);
    // Finds and forgets the call `xid`; false if it is not there.
    inline bool take(uint32_t xid, rpc::call_kind* kind, uint64_t* received_ns) noexcept;
    size_t size() const noexcept { return size_; }
    // How many of them sit in the spill table (tests).
    size_t spilled() const noexcept { return spill_size_; }
    // Calls f(xid, kind, received_ns) for every call remembered (an upgrade
    // carries them to the new process).
    template <typename F>
    void for_each(F&& f) const {
        for (size_t i = 0; i < direct_cap_; ++i)
            if (direct_[i].used)
                f(direct_[i].xid, rpc::call_kind(direct_[i].kind), direct_[i].received_ns);
        for (size_t i = 0; i < spill_cap_; ++i)
            if (spill_[i].used)
                f(spill_[i].xid, rpc::call_kind(spill_[i].kind), spill_[i].received_ns);
    }

  private:
    struct entry {
        uint64_t received_ns;
        uint32_t xid;
        uint16_t kind;
        uint16_t used;
    };
    size_t home(uint32_t xid) const noexcept {
        return size_t((xid * 0x9E3779B1u) >> (32 - spill_shift_)) & (spill_cap_ - 1);
    }
    void grow_direct();
    void grow_spill();
    void spill_add(const entry& e);
    bool spill_take(uint32_t xid, entry* out) noexcept;

    std::unique_ptr<entry[]> direct_;
    size_t direct_cap_ = 0;
    std::unique_ptr<entry[]> spill_;
    size_t spill_cap_ = 0;
    size_t spill_size_ = 0;
    unsigned spill_shift_ = 0;  // log2(spill_cap_)
    size_t size_ = 0;           // direct and spilled
};

// A call of kind `kind` and `bytes` bytes forwarded at `now_ns`: counted,
// and remembered until its reply (counters.calls_untimed when it cannot be).
inline void note_call(call_stats& cs, calls_in_flight& f, gateway_counters& counters, uint32_t xid,
                      rpc::call_kind kind, size_t bytes, uint64_t now_ns);
// The reply `record` (xid `xid`) from a backend link that became ready at
// `link_ready_ns`, sent to the client at `now_ns`: counted and timed when
// its call is in `f`.
inline void note_reply(call_stats& cs, calls_in_flight& f, const core::slice_chain& record,
                       uint32_t xid, uint64_t link_ready_ns, uint64_t now_ns);

// Every family of RPCGATE_CALL_COUNTERS and RPCGATE_CALL_HISTOGRAMS, summed
// over shards; only the kinds with at least one call appear.
void render_call_stats(std::string& out, const std::vector<const call_stats*>& shards);

// ---- inline: on the data path, per call

inline bool calls_in_flight::add(uint32_t xid, rpc::call_kind kind, uint64_t received_ns) {
    if (size_ >= k_max_entries) return false;
    // At most half full: a window of sequential xids never wraps onto itself.
    if (size_ * 2 >= direct_cap_ && direct_cap_ < k_max_direct) grow_direct();
    entry& d = direct_[xid & (direct_cap_ - 1)];
    if (!d.used)
        d = entry{received_ns, xid, kind, 1};
    else
        spill_add(entry{received_ns, xid, kind, 1});
    ++size_;
    return true;
}

inline bool calls_in_flight::take(uint32_t xid, rpc::call_kind* kind,
                                  uint64_t* received_ns) noexcept {
    if (size_ == 0) return false;
    entry& d = direct_[xid & (direct_cap_ - 1)];
    entry found;
    if (d.used && d.xid == xid) {
        found = d;
        d.used = 0;
    } else if (spill_size_ == 0 || !spill_take(xid, &found)) {
        return false;
    }
    *kind = found.kind;
    *received_ns = found.received_ns;
    --size_;
    return true;
}

inline void note_call(call_stats& cs, calls_in_flight& f, gateway_counters& counters, uint32_t xid,
                      rpc::call_kind kind, size_t bytes, uint64_t now_ns) {
    call_kind_stats& k = cs.at(kind);
    core::bump(k.calls);
    core::bump(k.call_bytes, bytes);
    if (!f.add(xid, kind, now_ns)) core::bump(counters.calls_untimed);
}

inline void note_reply(call_stats& cs, calls_in_flight& f, const core::slice_chain& record,
                       uint32_t xid, uint64_t link_ready_ns, uint64_t now_ns) {
    rpc::call_kind kind;
    uint64_t received_ns;
    if (!f.take(xid, &kind, &received_ns)) return;
    call_kind_stats& k = cs.at(kind);
    core::bump(k.replies);
    core::bump(k.reply_bytes, record.size());
    if (!rpc::reply_accepted_ok(record)) core::bump(k.errors);
    uint64_t forwarded_ns = received_ns > link_ready_ns ? received_ns : link_ready_ns;
    k.record(backend_latency, now_ns > forwarded_ns ? now_ns - forwarded_ns : 0);
    k.record(gateway_latency, now_ns > received_ns ? now_ns - received_ns : 0);
}

}  // namespace rpcgate::gw
