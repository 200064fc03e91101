#include "gateway/admission.h"

#include "core/log.h"
#include "gateway/peer_address.h"

namespace rpcgate::gw {

admission::admission(const gateway_config& cfg, std::atomic<uint32_t>& open,
                     gateway_counters& counters)
    : cfg_(cfg), open_(open), counters_(counters) {
    source_limits_config lc;
    lc.max_connections_per_source = cfg.max_connections_per_source;
    lc.handshakes_per_second = cfg.handshake_rate_per_source;
    lc.handshake_burst = cfg.handshake_burst_per_source;
    if (lc.enabled()) limits_ = std::make_unique<source_limits>(lc.for_shard(cfg.shards));
}

connection_slot admission::admit(const sockaddr_storage& peer, uint64_t now_ms) {
    if (open_.fetch_add(1, std::memory_order_relaxed) >= cfg_.max_connections) {
        open_.fetch_sub(1, std::memory_order_relaxed);
        core::bump(counters_.sessions_refused);
        RPCGATE_LOG(gw, warn, "refusing {}: --max-connections {} reached", peer_text(peer),
                    cfg_.max_connections);
        return {};
    }
    connection_slot slot(&open_);
    if (!admit_source(peer, now_ms)) return {};
    core::bump(counters_.sessions_accepted);
    return slot;
}

bool admission::admit_source(const sockaddr_storage& peer, uint64_t now_ms) {
    if (!limits_) return true;
    source_verdict v = limits_->on_accept(peer, now_ms);
    if (v == source_verdict::admit) return true;
    core::bump(counters_.sessions_refused);
    // Debug only: a flood must not become a flood of log lines; the
    // rpcgate_source_* counters tell.
    RPCGATE_LOG(gw, debug, "refusing {}: {}", peer_text(peer), source_verdict_name(v));
    return false;
}

bool admission::allow_handshake(const sockaddr_storage& peer, uint64_t now_ms) {
    if (!limits_) return true;
    source_verdict v = limits_->on_handshake(peer, now_ms);
    if (v == source_verdict::admit) return true;
    RPCGATE_LOG(gw, debug, "closing {}: {}", peer_text(peer), source_verdict_name(v));
    return false;
}

}  // namespace rpcgate::gw
