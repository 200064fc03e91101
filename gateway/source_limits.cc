#include "gateway/source_limits.h"

#include <netinet/in.h>
#include <sys/random.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <ctime>

namespace rpcgate::gw {

struct source_limits::entry {
    source_key key;
    uint64_t tokens_milli = 0;  // thousandths of a handshake token
    uint64_t refill_ms = 0;     // when tokens_milli was last brought up to date
    uint64_t seen_ms = 0;       // last accept or handshake: the eviction order
    uint32_t conns = 0;
    bool used = false;
};

namespace {

void bump(std::atomic<uint64_t>& c, int64_t n = 1) noexcept {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

uint32_t share(uint32_t v, unsigned shards) noexcept {
    if (v == 0 || shards <= 1) return v;
    return std::max<uint32_t>(1, (v + shards - 1) / shards);
}

// SipHash-2-4 of two 64-bit words: keyed, so set indices cannot be predicted
// from outside (a plain multiplicative hash would let one attacker fill a set).
uint64_t rotl(uint64_t x, int b) noexcept {
    return (x << b) | (x >> (64 - b));
}

uint64_t siphash_2x64(uint64_t k0, uint64_t k1, uint64_t m0, uint64_t m1) noexcept {
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    auto round = [&] {
        v0 += v1;
        v1 = rotl(v1, 13);
        v1 ^= v0;
        v0 = rotl(v0, 32);
        v2 += v3;
        v3 = rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = rotl(v1, 17);
        v1 ^= v2;
        v2 = rotl(v2, 32);
    };
    for (uint64_t m : {m0, m1, uint64_t{16} << 56}) {
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }
    v2 ^= 0xff;
    for (int i = 0; i < 4; ++i) round();
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t load_be64(const uint8_t* p) noexcept {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | p[i];
    return v;
}

}  // namespace

source_limits_config source_limits_config::for_shard(unsigned shards) const noexcept {
    source_limits_config c = *this;
    c.max_connections_per_source = share(max_connections_per_source, shards);
    c.handshakes_per_second = share(handshakes_per_second, shards);
    c.handshake_burst = share(handshake_burst, shards);
    return c;
}

const char* source_verdict_name(source_verdict v) noexcept {
    switch (v) {
        case source_verdict::admit:
            return "admit";
        case source_verdict::too_many_connections:
            return "too many connections from this source";
        case source_verdict::handshake_rate:
            return "handshake rate of this source exceeded";
        case source_verdict::table_full:
            return "source table full";
    }
    return "?";
}

source_limits::source_limits(const source_limits_config& cfg, uint64_t key) : cfg_(cfg) {
    cfg_.table_size =
        std::max<uint32_t>(k_ways, std::bit_ceil(std::max<uint32_t>(cfg.table_size, 1)));
    cfg_.ipv6_prefix = std::clamp<uint32_t>(cfg.ipv6_prefix, 1, 128);
    if (cfg_.handshake_burst == 0) cfg_.handshake_burst = cfg_.handshakes_per_second;
    burst_milli_ = uint64_t{cfg_.handshake_burst} * 1000;
    mask_ = cfg_.table_size - 1;
    uint64_t k[2] = {key, key * 0x9e3779b97f4a7c15ull};
    if (key == 0 && getrandom(k, sizeof k, 0) != sizeof k) {
        // No entropy source (should not happen on Linux >= 3.17): the clock
        // is a weak key, but still not one an attacker picks.
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        k[0] = uint64_t(ts.tv_nsec) * 0x9e3779b97f4a7c15ull ^ uint64_t(ts.tv_sec);
        k[1] = rotl(k[0], 29) ^ reinterpret_cast<uintptr_t>(this);
    }
    key0_ = k[0];
    key1_ = k[1];
    // Only allocated when a limit is on: a gateway without limits pays nothing.
    if (cfg_.enabled()) table_.reset(new entry[cfg_.table_size]);
}

source_limits::~source_limits() = default;

bool source_limits::key_of(const sockaddr_storage& peer, uint32_t prefix,
                           source_key* out) noexcept {
    if (peer.ss_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(&peer);
        out->hi = 4;  // keeps IPv4 keys apart from IPv6 prefixes
        out->lo = ntohl(in->sin_addr.s_addr);
        return true;
    }
    if (peer.ss_family != AF_INET6) return false;
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&peer);
    const uint8_t* a = in6->sin6_addr.s6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
        out->hi = 4;
        out->lo = uint32_t{a[12]} << 24 | uint32_t{a[13]} << 16 | uint32_t{a[14]} << 8 | a[15];
        return true;
    }
    uint64_t hi = load_be64(a), lo = load_be64(a + 8);
    if (prefix <= 64) {
        hi = prefix == 64 ? hi : hi & ~(~uint64_t{0} >> prefix);
        lo = 0;
    } else if (prefix < 128) {
        lo &= ~(~uint64_t{0} >> (prefix - 64));
    }
    // The IPv4 tag (hi == 4) cannot collide with a real prefix in practice
    // (::/62 holds only reserved addresses), and a collision would only merge
    // two sources' counts.
    out->hi = hi;
    out->lo = lo;
    return true;
}

uint64_t source_limits::hash(const source_key& k) const noexcept {
    return siphash_2x64(key0_, key1_, k.hi, k.lo);
}

source_limits::entry* source_limits::find(const source_key& k) const noexcept {
    entry* set = &table_[hash(k) & mask_ & ~uint64_t{k_ways - 1}];
    for (unsigned i = 0; i < k_ways; ++i)
        if (set[i].used && set[i].key == k) return &set[i];
    return nullptr;
}

source_limits::entry* source_limits::find_or_insert(const source_key& k, uint64_t now_ms) noexcept {
    entry* set = &table_[hash(k) & mask_ & ~uint64_t{k_ways - 1}];
    entry* free_way = nullptr;
    entry* victim = nullptr;
    for (unsigned i = 0; i < k_ways; ++i) {
        entry& e = set[i];
        if (!e.used) {
            if (!free_way) free_way = &e;
            continue;
        }
        if (e.key == k) return &e;
        if (e.conns == 0 && (!victim || e.seen_ms < victim->seen_ms)) victim = &e;
    }
    entry* e = free_way;
    if (!e && victim) {
        e = victim;
        bump(counters_.evictions);
        bump(counters_.tracked, -1);
    }
    if (!e) {
        bump(counters_.table_full);
        return nullptr;
    }
    *e = entry{};
    e->used = true;
    e->key = k;
    e->tokens_milli = burst_milli_;
    e->refill_ms = now_ms;
    e->seen_ms = now_ms;
    bump(counters_.tracked);
    return e;
}

void source_limits::refill(entry& e, uint64_t now_ms) const noexcept {
    if (now_ms <= e.refill_ms) return;
    // handshakes_per_second tokens a second == that many thousandths a millisecond.
    uint64_t elapsed = now_ms - e.refill_ms;
    uint64_t room = burst_milli_ - std::min(burst_milli_, e.tokens_milli);
    uint64_t rate = cfg_.handshakes_per_second;
    e.tokens_milli += rate != 0 && elapsed > room / rate ? room : elapsed * rate;
    e.refill_ms = now_ms;
}

source_verdict source_limits::on_accept(const sockaddr_storage& peer, uint64_t now_ms) noexcept {
    source_key k;
    if (!table_ || !key_of(peer, cfg_.ipv6_prefix, &k)) return source_verdict::admit;
    entry* e = find_or_insert(k, now_ms);
    if (!e) return source_verdict::table_full;
    e->seen_ms = std::max(e->seen_ms, now_ms);
    if (cfg_.max_connections_per_source != 0 && e->conns >= cfg_.max_connections_per_source) {
        bump(counters_.refused_connections);
        return source_verdict::too_many_connections;
    }
    ++e->conns;
    return source_verdict::admit;
}

void source_limits::on_close(const sockaddr_storage& peer) noexcept {
    source_key k;
    if (!table_ || !key_of(peer, cfg_.ipv6_prefix, &k)) return;
    // An admitted source holds a connection, so it was never evicted.
    if (entry* e = find(k); e && e->conns > 0) --e->conns;
}

source_verdict source_limits::on_handshake(const sockaddr_storage& peer, uint64_t now_ms) noexcept {
    source_key k;
    if (!table_ || cfg_.handshakes_per_second == 0 || !key_of(peer, cfg_.ipv6_prefix, &k))
        return source_verdict::admit;
    entry* e = find_or_insert(k, now_ms);
    if (!e) return source_verdict::table_full;
    e->seen_ms = std::max(e->seen_ms, now_ms);
    refill(*e, now_ms);
    if (e->tokens_milli < 1000) {
        bump(counters_.refused_handshakes);
        return source_verdict::handshake_rate;
    }
    e->tokens_milli -= 1000;
    return source_verdict::admit;
}

uint32_t source_limits::connections_of(const sockaddr_storage& peer) const noexcept {
    source_key k;
    if (!table_ || !key_of(peer, cfg_.ipv6_prefix, &k)) return 0;
    const entry* e = find(k);
    return e ? e->conns : 0;
}

}  // namespace rpcgate::gw
