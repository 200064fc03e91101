// port: one DPDK Ethernet port (the first one EAL probes), one RX and one TX
// queue, polled by one thread. The only file that includes DPDK headers, so
// that lwIP's and DPDK's macros never meet in one translation unit.
//
// Lifetime: `open` runs rte_eal_init (once per process: EAL cannot be
// initialised twice) and starts the port, on the main thread, before the
// polling thread exists. The destructor stops the port and cleans EAL up, after
// that thread has exited and every mbuf is back.
//
// Threading: everything but open/~port/stats runs on the polling thread,
// which must call attach_thread() first (it becomes an EAL thread, with a
// mempool cache of its own).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace rpcgate::dpdk {

// A received frame. `handle` is its mbuf: give it back with port::release.
struct rx_frame {
    void* handle;
    uint8_t* data;
    uint16_t len;
};

// Written by the polling thread only; readable from any thread.
struct port_stats {
    std::atomic<uint64_t> rx_packets{0}, rx_bytes{0}, rx_bursts{0}, rx_empty{0};
    std::atomic<uint64_t> tx_packets{0}, tx_bytes{0}, tx_bursts{0};
    std::atomic<uint64_t> tx_deferred{
        0};  // frames the driver refused at first (sent on a later burst)
    std::atomic<uint64_t> tx_dropped{0};  // frames dropped: no mbuf, or the backlog was full
};

class port {
  public:
    // `eal_args` as given to --dpdk-args (split on blanks). `priv_size`: bytes
    // of private area per mbuf, for the caller's per-frame bookkeeping.
    static std::unique_ptr<port> open(const std::string& eal_args, uint16_t priv_size,
                                      std::string* err);
    ~port();
    port(const port&) = delete;
    port& operator=(const port&) = delete;

    // --- the polling thread
    std::string attach_thread();
    // Up to `max` received frames.
    unsigned rx(rx_frame* out, unsigned max);
    static void release(void* handle) noexcept;
    static void* priv(void* handle) noexcept;
    // A frame of `len` bytes to fill, or null (no mbuf: the frame is dropped
    // and counted). Queue it with tx_commit; nothing leaves before tx_flush.
    uint8_t* tx_begin(uint16_t len, void** handle) noexcept;
    void tx_commit(void* handle) noexcept;
    // Hands the queued frames to the driver; what it refuses waits for the
    // next flush (bounded backlog), so TCP does not see a loss for a full ring.
    void tx_flush() noexcept;
    bool tx_pending() const noexcept { return txn_ > 0; }

    const uint8_t* mac() const noexcept { return mac_; }
    uint16_t mtu() const noexcept { return mtu_; }
    // "net_af_packet (port 0) 02:...:01 mtu 1500"
    const std::string& describe() const noexcept { return desc_; }
    const port_stats& stats() const noexcept { return stats_; }
    // The driver's own counters (rte_eth_stats): drops in the kernel ring show here.
    std::string driver_stats() const;

  private:
    port() = default;
    static constexpr unsigned k_tx_max = 4096;
    uint16_t id_ = 0;
    void* pool_ = nullptr;  // rte_mempool*
    uint8_t mac_[6] = {};
    uint16_t mtu_ = 1500;
    std::string desc_;
    port_stats stats_;
    void* txq_[k_tx_max] = {};  // rte_mbuf*: queued, in order
    unsigned txn_ = 0;
    bool started_ = false;
    std::string runtime_dir_;  // EAL's runtime folder when we made it up (removed at the end)
};

}  // namespace rpcgate::dpdk
