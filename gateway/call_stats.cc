#include "gateway/call_stats.h"

#include <fmt/format.h>

#include <iterator>

namespace rpcgate::gw {

namespace {

uint64_t rd(const std::atomic<uint64_t>& a) {
    return a.load(std::memory_order_relaxed);
}

}  // namespace

void calls_in_flight::grow_direct() {
    size_t old_cap = direct_cap_;
    std::unique_ptr<entry[]> old = std::move(direct_);
    direct_cap_ = old_cap ? old_cap * 2 : 16;
    direct_.reset(new entry[direct_cap_]());
    // Every direct entry finds its slot again (a wider table keeps apart what
    // a narrower one kept apart), or spills; the spilled stay where they are.
    for (size_t i = 0; i < old_cap; ++i) {
        if (!old[i].used) continue;
        entry& d = direct_[old[i].xid & (direct_cap_ - 1)];
        if (!d.used)
            d = old[i];
        else
            spill_add(old[i]);
    }
}

void calls_in_flight::grow_spill() {
    size_t old_cap = spill_cap_;
    std::unique_ptr<entry[]> old = std::move(spill_);
    spill_cap_ = old_cap ? old_cap * 2 : 16;
    spill_shift_ = unsigned(std::countr_zero(spill_cap_));
    spill_.reset(new entry[spill_cap_]());
    for (size_t i = 0; i < old_cap; ++i) {
        if (!old[i].used) continue;
        size_t j = home(old[i].xid);
        while (spill_[j].used) j = (j + 1) & (spill_cap_ - 1);
        spill_[j] = old[i];
    }
}

void calls_in_flight::spill_add(const entry& e) {
    // At most a quarter full: short runs keep a lookup and its backward
    // shift to a slot or two.
    if ((spill_size_ + 1) * 4 > spill_cap_) grow_spill();
    size_t i = home(e.xid);
    while (spill_[i].used) i = (i + 1) & (spill_cap_ - 1);
    spill_[i] = e;
    ++spill_size_;
}

bool calls_in_flight::spill_take(uint32_t xid, entry* out) noexcept {
    size_t mask = spill_cap_ - 1;
    for (size_t i = home(xid); spill_[i].used; i = (i + 1) & mask) {
        if (spill_[i].xid != xid) continue;
        *out = spill_[i];
        // Backward shift: move up every later entry of the run that may
        // sit at i (its home is not in (i, j]), so no tombstone is needed.
        size_t j = i;
        for (;;) {
            spill_[i].used = 0;
            for (;;) {
                j = (j + 1) & mask;
                if (!spill_[j].used) {
                    --spill_size_;
                    return true;
                }
                size_t h = home(spill_[j].xid);
                bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
                if (!stays) break;
            }
            spill_[i] = spill_[j];
            i = j;
        }
    }
    return false;
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
#define RPCGATE_X(field, metric, help)                                                             \
    fmt::format_to(it, "# HELP rpcgate_" metric " " help "\n# TYPE rpcgate_" metric " counter\n"); \
    for (rpc::call_kind k : seen) {                                                                \
        uint64_t v = 0;                                                                            \
        for (const call_stats* s : shards) v += rd(s->at(k).field);                                \
        fmt::format_to(it, "rpcgate_" metric "{{{}}} {}\n", labels(k), v);                         \
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
            for (const call_stats* s : shards) cum += rd(s->at(k).buckets[b][field]);            \
            if (b < k_latency_buckets)                                                           \
                fmt::format_to(it, "rpcgate_" metric "_bucket{{{},le=\"{}\"}} {}\n", l,          \
                               latency_histogram::bound_seconds(b), cum);                        \
        }                                                                                        \
        for (const call_stats* s : shards) sum_ns += rd(s->at(k).sum_ns[field]);                 \
        fmt::format_to(it, "rpcgate_" metric "_bucket{{{},le=\"+Inf\"}} {}\n", l, cum);          \
        fmt::format_to(it, "rpcgate_" metric "_sum{{{}}} {}\n", l, double(sum_ns) * 1e-9);       \
        fmt::format_to(it, "rpcgate_" metric "_count{{{}}} {}\n", l, cum);                       \
    }
    RPCGATE_CALL_HISTOGRAMS(RPCGATE_X)
#undef RPCGATE_X
}

}  // namespace rpcgate::gw
