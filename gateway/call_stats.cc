#include "gateway/call_stats.h"

#include <fmt/format.h>

#include <iterator>

namespace rpcgate::gw {

namespace {

uint64_t rd(const std::atomic<uint64_t>& a) {
    return a.load(std::memory_order_relaxed);
}

}  // namespace

bool calls_in_flight::add(uint32_t xid, rpc::call_kind kind, uint64_t received_ns) {
    if ((size_ + 1) * 2 > cap_) {
        if (cap_ >= k_max_entries * 2) return false;
        grow();
    }
    size_t i = home(xid);
    while (slots_[i].used) i = (i + 1) & (cap_ - 1);
    slots_[i] = entry{received_ns, xid, kind, 1};
    ++size_;
    return true;
}

bool calls_in_flight::take(uint32_t xid, rpc::call_kind* kind, uint64_t* received_ns) noexcept {
    if (size_ == 0) return false;
    size_t i = home(xid);
    for (; slots_[i].used; i = (i + 1) & (cap_ - 1)) {
        if (slots_[i].xid != xid) continue;
        *kind = slots_[i].kind;
        *received_ns = slots_[i].received_ns;
        // Backward shift: move up every later entry of the run that may
        // sit at i (its home is not in (i, j]), so no tombstone is needed.
        size_t j = i;
        for (;;) {
            slots_[i].used = 0;
            for (;;) {
                j = (j + 1) & (cap_ - 1);
                if (!slots_[j].used) {
                    --size_;
                    return true;
                }
                size_t h = home(slots_[j].xid);
                bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
                if (!stays) break;
            }
            slots_[i] = slots_[j];
            i = j;
        }
    }
    return false;
}

void calls_in_flight::grow() {
    size_t old_cap = cap_;
    std::unique_ptr<entry[]> old = std::move(slots_);
    cap_ = old_cap ? old_cap * 2 : 16;
    shift_ = unsigned(std::countr_zero(cap_));
    slots_.reset(new entry[cap_]());
    for (size_t i = 0; i < old_cap; ++i) {
        if (!old[i].used) continue;
        size_t j = home(old[i].xid);
        while (slots_[j].used) j = (j + 1) & (cap_ - 1);
        slots_[j] = old[i];
    }
}

void note_call(call_stats& cs, calls_in_flight& f, gateway_counters& counters, uint32_t xid,
               rpc::call_kind kind, size_t bytes, uint64_t now_ns) {
    call_kind_stats& k = cs.at(kind);
    core::bump(k.calls);
    core::bump(k.call_bytes, bytes);
    if (!f.add(xid, kind, now_ns)) core::bump(counters.calls_untimed);
}

void note_reply(call_stats& cs, calls_in_flight& f, const core::slice_chain& record, uint32_t xid,
                uint64_t link_ready_ns, uint64_t now_ns) {
    rpc::call_kind kind;
    uint64_t received_ns;
    if (!f.take(xid, &kind, &received_ns)) return;
    call_kind_stats& k = cs.at(kind);
    core::bump(k.replies);
    core::bump(k.reply_bytes, record.size());
    if (!rpc::reply_accepted_ok(record)) core::bump(k.errors);
    uint64_t forwarded_ns = received_ns > link_ready_ns ? received_ns : link_ready_ns;
    k.backend_latency.record(now_ns > forwarded_ns ? now_ns - forwarded_ns : 0);
    k.gateway_latency.record(now_ns > received_ns ? now_ns - received_ns : 0);
}

void render_call_stats(std::string& out, const std::vector<const call_stats*>& shards) {
    size_t n = rpc::call_kind_count();
    // Kinds seen at least once (a call counted), over all shards.
    std::vector<rpc::call_kind> seen;
    for (size_t k = 0; k < n; ++k) {
        for (const call_stats* s : shards) {
            if (rd(s->at(rpc::call_kind(k)).calls) != 0) {
                seen.push_back(rpc::call_kind(k));
                break;
            }
        }
    }
    auto labels = [](rpc::call_kind k) {
        rpc::call_kind_labels l = rpc::call_kind_info(k);
        return fmt::format(R"(program="{}",version="{}",procedure="{}")", l.program, l.version,
                           l.procedure);
    };
    auto it = std::back_inserter(out);
#define RPCGATE_X(field, metric, help)                                                           \
    fmt::format_to(it, "# HELP rpcgate_" metric " " help "\n# TYPE rpcgate_" metric " counter\n"); \
    for (rpc::call_kind k : seen) {                                                              \
        uint64_t v = 0;                                                                          \
        for (const call_stats* s : shards) v += rd(s->at(k).field);                              \
        fmt::format_to(it, "rpcgate_" metric "{{{}}} {}\n", labels(k), v);                       \
    }
    RPCGATE_CALL_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
#define RPCGATE_X(field, metric, help)                                                           \
    fmt::format_to(it,                                                                           \
                   "# HELP rpcgate_" metric " " help "\n# TYPE rpcgate_" metric " histogram\n"); \
    for (rpc::call_kind k : seen) {                                                              \
        std::string l = labels(k);                                                               \
        uint64_t cum = 0, sum_ns = 0;                                                            \
        for (size_t b = 0; b <= k_latency_buckets; ++b) {                                        \
            for (const call_stats* s : shards) cum += rd(s->at(k).field.buckets[b]);             \
            if (b < k_latency_buckets)                                                           \
                fmt::format_to(it, "rpcgate_" metric "_bucket{{{},le=\"{}\"}} {}\n", l,          \
                               latency_histogram::bound_seconds(b), cum);                        \
        }                                                                                        \
        for (const call_stats* s : shards) sum_ns += rd(s->at(k).field.sum_ns);                  \
        fmt::format_to(it, "rpcgate_" metric "_bucket{{{},le=\"+Inf\"}} {}\n", l, cum);          \
        fmt::format_to(it, "rpcgate_" metric "_sum{{{}}} {}\n", l, double(sum_ns) * 1e-9);       \
        fmt::format_to(it, "rpcgate_" metric "_count{{{}}} {}\n", l, cum);                       \
    }
    RPCGATE_CALL_HISTOGRAMS(RPCGATE_X)
#undef RPCGATE_X
}

}  // namespace rpcgate::gw
