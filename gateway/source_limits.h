// Per-source-address limits: a connection cap and a handshake rate limit.
//
// A gateway on the network edge must not let one address take every
// connection slot or keep the TLS control thread busy with handshakes. Each
// shard owns one `source_limits`; it is consulted on accept (connection cap)
// and when a TLS handshake is about to start (an answered AUTH_TLS probe or an
// accept on an implicit-TLS listener: token bucket). Nothing is shared between
// shards and nothing is locked: the table belongs to the shard's thread.
//
// Per shard, not per process. The kernel spreads one address's connections
// over the SO_REUSEPORT listeners by a hash of the 4-tuple, so each shard
// enforces its share of the configured limit (`for_shard`): with N shards an
// address gets at most ceil(limit / N) connections and rate / N handshakes per
// second on each shard. That is exact for one shard and conservative by at
// most one hashing imbalance otherwise; the alternative, a table shared by all
// shards, would put a cache line that every accept writes on the data path.
//
// Sources. IPv4 addresses count one by one; IPv6 addresses are grouped by
// their first `ipv6_prefix` bits (64 by default: one host usually owns a whole
// /64, and counting single IPv6 addresses would let it take 2^64 identities).
// An IPv4-mapped IPv6 address counts as the IPv4 address.
//
// Bounded memory. The table is set-associative: `table_size` entries in sets
// of 8, indexed by a keyed hash (a per-process random key, so that an attacker
// cannot aim many addresses at one set). A source that is new takes a free way
// of its set or evicts the way that holds no connection and was seen longest
// ago; evicting forgets its token bucket, which only lets that source start
// again with a full bucket. When every way of the set holds live connections
// the new source is refused (`table_full`), as nginx's limit_conn does when
// its zone is exhausted: fail closed, counted, never unbounded. With the
// default 8192 entries per shard that takes thousands of connections from
// addresses that hash to the same set, which --max-connections bounds first.
//
// Time is passed in (milliseconds, monotonic), so that tests control it.
//
// Threading: one shard's thread only. The counters are atomics so that the
// metrics thread can read them.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>

namespace rpcgate::gw {

struct source_limits_config {
    // Connections open at once from one source; 0: no cap.
    uint32_t max_connections_per_source = 0;
    // Handshakes a second from one source (token bucket refill); 0: no limit.
    uint32_t handshakes_per_second = 0;
    // Bucket depth: handshakes one source may start back to back. 0: equal
    // to handshakes_per_second (one second's worth).
    uint32_t handshake_burst = 0;
    // Sources tracked at once (rounded up to a power of two, at least 8).
    uint32_t table_size = 8192;
    // IPv6 sources are grouped by this many leading bits (1..128).
    uint32_t ipv6_prefix = 64;

    bool enabled() const noexcept {
        return max_connections_per_source != 0 || handshakes_per_second != 0;
    }
    // This shard's share of gateway-wide limits (see the header comment):
    // caps and rates divided by `shards`, rounded up, never below 1.
    source_limits_config for_shard(unsigned shards) const noexcept;
};

enum class source_verdict : uint8_t {
    admit,
    too_many_connections,  // the source is at its connection cap
    handshake_rate,        // the source's handshake bucket is empty
    table_full,            // no room to track a new source (fail closed)
};
const char* source_verdict_name(source_verdict v) noexcept;

// Written by the owning shard, readable by any thread (for /metrics).
struct source_limits_counters {
    std::atomic<uint64_t> refused_connections{0};  // too_many_connections
    std::atomic<uint64_t> refused_handshakes{0};   // handshake_rate
    std::atomic<uint64_t> table_full{0};
    std::atomic<uint64_t> evictions{0};  // idle sources forgotten to make room
    std::atomic<uint64_t> tracked{0};    // sources in the table now
};

class source_limits {
  public:
    // `key` seeds the hash; pass a random value (0 picks one from the OS).
    explicit source_limits(const source_limits_config& cfg, uint64_t key = 0);
    ~source_limits();
    source_limits(const source_limits&) = delete;
    source_limits& operator=(const source_limits&) = delete;

    // A connection from `peer` was accepted. On `admit` the source holds one
    // more connection until `on_close(peer)`; on any other verdict nothing is
    // held and the caller closes the socket. Other address families (AF_UNIX)
    // are always admitted and never held.
    source_verdict on_accept(const sockaddr_storage& peer, uint64_t now_ms) noexcept;
    // The connection admitted by `on_accept` ended (exactly once per admit).
    void on_close(const sockaddr_storage& peer) noexcept;
    // A TLS handshake from `peer` is about to start: takes one token. On
    // `handshake_rate` the caller closes the connection instead.
    source_verdict on_handshake(const sockaddr_storage& peer, uint64_t now_ms) noexcept;

    // Connections `peer` holds now (for tests and diagnostics).
    uint32_t connections_of(const sockaddr_storage& peer) const noexcept;
    const source_limits_config& config() const noexcept { return cfg_; }
    const source_limits_counters& counters() const noexcept { return counters_; }
    size_t table_entries() const noexcept { return mask_ + 1; }

  private:
    struct source_key {
        uint64_t hi = 0, lo = 0;  // IPv4: lo = address; IPv6: the prefix
        bool operator==(const source_key&) const noexcept = default;
    };
    struct entry;
    static constexpr unsigned k_ways = 8;

    static bool key_of(const sockaddr_storage& peer, uint32_t ipv6_prefix,
                       source_key* out) noexcept;
    uint64_t hash(const source_key& k) const noexcept;
    entry* find(const source_key& k) const noexcept;
    entry* find_or_insert(const source_key& k, uint64_t now_ms) noexcept;
    void refill(entry& e, uint64_t now_ms) const noexcept;

    source_limits_config cfg_;
    uint64_t key0_, key1_;
    uint64_t mask_;  // entries - 1 (entries are a power of two, a multiple of k_ways)
    std::unique_ptr<entry[]> table_;
    uint64_t burst_milli_;  // bucket depth in thousandths of a token
    source_limits_counters counters_;
};

}  // namespace rpcgate::gw
