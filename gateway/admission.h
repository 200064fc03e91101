// Admission: whether a new connection may in, and the slots it holds while
// it lives.
//
// Two limits: the process-wide --max-connections (one atomic count shared by
// every shard and the handshake threads) and the per-source limits of
// source_limits (connections per source address, handshake rate per source),
// each shard enforcing its share. A connection that is let in holds a
// `connection_slot`, which gives the process-wide slot back when destroyed;
// the per-source slot is given back with `release_source`.
//
// Threading: an `admission` belongs to one shard's thread; a
// connection_slot is given back from whichever thread holds it.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "gateway/config.h"
#include "gateway/metrics.h"
#include "gateway/source_limits.h"

namespace rpcgate::gw {

// One slot of --max-connections, owned by one connection. Empty (false)
// when refused. hand_over(): the handshake thread now holds the slot and
// gives it back itself (tls::handshake_service).
class connection_slot {
  public:
    connection_slot() noexcept = default;
    ~connection_slot() { reset(); }
    connection_slot(connection_slot&& o) noexcept : open_(o.open_) { o.open_ = nullptr; }
    connection_slot& operator=(connection_slot&& o) noexcept {
        if (this != &o) {
            reset();
            open_ = o.open_;
            o.open_ = nullptr;
        }
        return *this;
    }
    explicit operator bool() const noexcept { return open_ != nullptr; }
    void hand_over() noexcept { open_ = nullptr; }
    void reset() noexcept {
        if (open_) open_->fetch_sub(1, std::memory_order_relaxed);
        open_ = nullptr;
    }

  private:
    friend class admission;
    explicit connection_slot(std::atomic<uint32_t>* open) noexcept : open_(open) {}
    std::atomic<uint32_t>* open_ = nullptr;
};

class admission {
  public:
    // `open`: the process-wide count of open connections; `counters`: the
    // shard's (sessions_accepted, sessions_refused).
    admission(const gateway_config& cfg, std::atomic<uint32_t>& open, gateway_counters& counters);

    // A new connection from `peer`: a slot of --max-connections and of the
    // source's share, or an empty slot (counted, logged) when either is full.
    // The source's slot is given back with release_source().
    connection_slot admit(const sockaddr_storage& peer, uint64_t now_ms);
    // A connection the handshake thread counted comes back: its slot.
    connection_slot adopt() noexcept { return connection_slot(&open_); }
    // A connection moved in from the process this one took over from: it
    // was admitted there, and counts here from now on (no limit refuses it).
    connection_slot take_moved() noexcept {
        open_.fetch_add(1, std::memory_order_relaxed);
        return connection_slot(&open_);
    }
    // The source's connection slot alone (a connection back from a handshake).
    bool admit_source(const sockaddr_storage& peer, uint64_t now_ms);
    // A token of the source's handshake rate.
    bool allow_handshake(const sockaddr_storage& peer, uint64_t now_ms);
    void release_source(const sockaddr_storage& peer) noexcept {
        if (limits_) limits_->on_close(peer);
    }
    // Null when no per-source limit is configured.
    const source_limits* limits() const noexcept { return limits_.get(); }

  private:
    const gateway_config& cfg_;
    std::atomic<uint32_t>& open_;
    gateway_counters& counters_;
    std::unique_ptr<source_limits> limits_;
};

}  // namespace rpcgate::gw
