#include "dpdk/port.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include <cstring>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <vector>

#include "core/log.h"
#include "core/shard.h"

namespace rpcgate::dpdk {
namespace {

constexpr unsigned k_mbufs = 8191;  // 2^n - 1: the ring under the mempool wants it
constexpr unsigned k_mbuf_cache = 256;
constexpr uint16_t k_rx_desc = 1024;
constexpr uint16_t k_tx_desc = 1024;
constexpr unsigned k_burst = 32;
// net_af_packet kicks the kernel (one sendto) per tx burst: hand it as many
// frames at once as it may take.
constexpr unsigned k_tx_burst = 512;

bool has_option(const std::vector<std::string>& args, const char* prefix) {
    size_t n = std::strlen(prefix);
    for (const auto& a : args)
        if (a.compare(0, n, prefix) == 0) return true;
    return false;
}

}  // namespace

std::unique_ptr<port> port::open(const std::string& eal_args, uint16_t priv_size,
                                 std::string* err) {
    static std::once_flag once;
    bool first = false;
    std::call_once(once, [&] { first = true; });
    if (!first) {
        *err = "EAL is already initialised in this process (one DPDK port per process)";
        return nullptr;
    }
    std::vector<std::string> args{"rpcgate"};
    bool own_runtime_dir = false;
    std::istringstream in(eal_args);
    for (std::string a; in >> a;) args.push_back(a);
    // Defaults the user did not set: one lcore (the gateway's threads are not
    // EAL workers), no shared runtime files (several test processes may run
    // at once), EAL's start-up chatter off.
    if (!has_option(args, "-l") && !has_option(args, "-c") && !has_option(args, "--lcores"))
        args.insert(args.begin() + 1, "-l0");
    if (!has_option(args, "--file-prefix") && !has_option(args, "--in-memory") &&
        !has_option(args, "--proc-type")) {
        if (has_option(args, "--no-huge")) {
            // --in-memory refuses --no-huge (legacy memory): a runtime folder
            // of our own instead, removed again in ~port.
            args.insert(args.begin() + 1, "--no-shconf");
            args.insert(args.begin() + 1, fmt::format("--file-prefix=rpcgate-{}", ::getpid()));
            own_runtime_dir = true;
        } else {
            args.insert(args.begin() + 1, "--in-memory");
        }
    }
    if (!has_option(args, "--log-level")) args.insert(args.begin() + 1, "--log-level=warning");
    if (!has_option(args, "--telemetry") && !has_option(args, "--no-telemetry"))
        args.insert(args.begin() + 1, "--no-telemetry");
    // --no-huge gives EAL 64 MB unless told otherwise: too tight for the pool.
    if (has_option(args, "--no-huge") && !has_option(args, "-m") &&
        !has_option(args, "--socket-mem"))
        args.insert(args.begin() + 1, "-m256");
    // net_af_packet's default ring (512 frames) overflows under one TCP
    // window of traffic: the kernel drops the rest silently and the peer
    // retransmits. Give it 8192 frames unless the user chose.
    for (auto& a : args) {
        if (a.rfind("--vdev=net_af_packet", 0) == 0 && a.find("framecnt=") == std::string::npos) {
            a += ",framecnt=8192";
            RPCGATE_LOG(core, info, "dpdk: {} (a larger kernel ring than the default)", a);
        }
    }
    // EAL keeps pointers into argv: the strings live as long as the process.
    static std::vector<std::string> keep;
    keep = args;
    static std::vector<char*> argv;
    for (auto& a : keep) argv.push_back(a.data());
    argv.push_back(nullptr);

    // EAL pins the calling thread to its main lcore; the threads the gateway
    // starts afterwards would inherit that. Put the original mask back.
    cpu_set_t mask;
    CPU_ZERO(&mask);
    bool have_mask = pthread_getaffinity_np(pthread_self(), sizeof mask, &mask) == 0;
    int rc = rte_eal_init(int(argv.size() - 1), argv.data());
    if (have_mask) pthread_setaffinity_np(pthread_self(), sizeof mask, &mask);
    if (rc < 0) {
        *err =
            std::string("rte_eal_init failed: ") + rte_strerror(rte_errno) + " (check --dpdk-args)";
        return nullptr;
    }
    std::unique_ptr<port> p(new port());
    if (own_runtime_dir) p->runtime_dir_ = rte_eal_get_runtime_dir();
    uint16_t id = RTE_MAX_ETHPORTS;
    uint16_t pid;
    RTE_ETH_FOREACH_DEV(pid) {
        id = pid;
        break;
    }
    if (id == RTE_MAX_ETHPORTS) {
        *err =
            "no Ethernet port found (give one with --dpdk-args \"--vdev=net_af_packet0,iface=IF\")";
        return nullptr;  // ~port cleans EAL up
    }
    p->id_ = id;
    auto* pool = rte_pktmbuf_pool_create("rpcgate_mbufs", k_mbufs, k_mbuf_cache,
                                         RTE_ALIGN(priv_size, RTE_MBUF_PRIV_ALIGN),
                                         RTE_MBUF_DEFAULT_BUF_SIZE, int(rte_socket_id()));
    if (!pool) {
        *err = std::string("cannot create the mbuf pool: ") + rte_strerror(rte_errno) +
               " (EAL memory: -m MB in --dpdk-args)";
        return nullptr;
    }
    p->pool_ = pool;
    rte_eth_dev_info info{};
    rte_eth_dev_info_get(id, &info);
    rte_eth_conf conf{};
    uint16_t nrx = k_rx_desc, ntx = k_tx_desc;
    if ((rc = rte_eth_dev_configure(id, 1, 1, &conf)) < 0 ||
        (rc = rte_eth_dev_adjust_nb_rx_tx_desc(id, &nrx, &ntx)) < 0 ||
        (rc = rte_eth_rx_queue_setup(id, 0, nrx, rte_eth_dev_socket_id(id), nullptr, pool)) < 0 ||
        (rc = rte_eth_tx_queue_setup(id, 0, ntx, rte_eth_dev_socket_id(id), nullptr)) < 0 ||
        (rc = rte_eth_dev_start(id)) < 0) {
        *err = std::string("cannot start port: ") + rte_strerror(-rc);
        rte_eth_dev_close(id);
        return nullptr;
    }
    p->started_ = true;
    rte_ether_addr mac{};
    rte_eth_macaddr_get(id, &mac);
    std::memcpy(p->mac_, mac.addr_bytes, 6);
    uint16_t mtu = 1500;
    if (rte_eth_dev_get_mtu(id, &mtu) == 0 && mtu >= 576) p->mtu_ = mtu;
    char macs[RTE_ETHER_ADDR_FMT_SIZE];
    rte_ether_format_addr(macs, sizeof macs, &mac);
    p->desc_ = fmt::format("{} (port {}) {} mtu {}", info.driver_name ? info.driver_name : "?", id,
                           macs, p->mtu_);
    return p;
}

port::~port() {
    if (started_) {
        for (unsigned i = 0; i < txn_; ++i) rte_pktmbuf_free(static_cast<rte_mbuf*>(txq_[i]));
        txn_ = 0;
        rte_eth_dev_stop(id_);
        rte_eth_dev_close(id_);
    }
    if (pool_) rte_mempool_free(static_cast<rte_mempool*>(pool_));
    rte_eal_cleanup();
    if (!runtime_dir_.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(runtime_dir_, ec);
    }
}

std::string port::attach_thread() {
    if (rte_lcore_id() != LCORE_ID_ANY) return {};
    if (rte_thread_register() < 0)
        return std::string("rte_thread_register: ") + rte_strerror(rte_errno);
    return {};
}

unsigned port::rx(rx_frame* out, unsigned max) {
    rte_mbuf* pkts[k_burst];
    if (max > k_burst) max = k_burst;
    uint16_t n = rte_eth_rx_burst(id_, 0, pkts, uint16_t(max));
    if (n == 0) {
        core::bump(stats_.rx_empty);
        return 0;
    }
    uint64_t bytes = 0;
    unsigned kept = 0;
    for (uint16_t i = 0; i < n; ++i) {
        rte_mbuf* m = pkts[i];
        if (m->nb_segs != 1) {  // a frame over one mbuf: never with MTU 1500; drop it
            rte_pktmbuf_free(m);
            continue;
        }
        out[kept++] = rx_frame{m, rte_pktmbuf_mtod(m, uint8_t*), m->data_len};
        bytes += m->data_len;
    }
    core::bump(stats_.rx_bursts);
    core::bump(stats_.rx_packets, n);
    core::bump(stats_.rx_bytes, bytes);
    return kept;
}

std::string port::driver_stats() const {
    rte_eth_stats st{};
    if (rte_eth_stats_get(id_, &st) != 0) return "driver counters unavailable";
    return fmt::format("driver: {} in, {} missed, {} in errors, {} no mbuf, {} out, {} out errors",
                       st.ipackets, st.imissed, st.ierrors, st.rx_nombuf, st.opackets, st.oerrors);
}

void port::release(void* handle) noexcept {
    rte_pktmbuf_free(static_cast<rte_mbuf*>(handle));
}

void* port::priv(void* handle) noexcept {
    return rte_mbuf_to_priv(static_cast<rte_mbuf*>(handle));
}

uint8_t* port::tx_begin(uint16_t len, void** handle) noexcept {
    rte_mbuf* m = rte_pktmbuf_alloc(static_cast<rte_mempool*>(pool_));
    if (!m) {
        core::bump(stats_.tx_dropped);
        return nullptr;
    }
    char* p = rte_pktmbuf_append(m, len);
    if (!p) {
        rte_pktmbuf_free(m);
        core::bump(stats_.tx_dropped);
        return nullptr;
    }
    *handle = m;
    return reinterpret_cast<uint8_t*>(p);
}

void port::tx_commit(void* handle) noexcept {
    if (txn_ == k_tx_max) tx_flush();
    if (txn_ == k_tx_max) {
        rte_pktmbuf_free(static_cast<rte_mbuf*>(handle));
        core::bump(stats_.tx_dropped);
        return;
    }
    txq_[txn_++] = handle;
}

void port::tx_flush() noexcept {
    unsigned done = 0;
    uint64_t bytes = 0;
    while (done < txn_) {
        uint16_t want = uint16_t(std::min<unsigned>(k_tx_burst, txn_ - done));
        auto** pkts = reinterpret_cast<rte_mbuf**>(&txq_[done]);
        for (uint16_t i = 0; i < want; ++i) bytes += pkts[i]->pkt_len;
        uint16_t sent = rte_eth_tx_burst(id_, 0, pkts, want);
        core::bump(stats_.tx_bursts);
        for (uint16_t i = sent; i < want; ++i) bytes -= pkts[i]->pkt_len;
        done += sent;
        if (sent < want) {
            core::bump(stats_.tx_deferred, want - sent);
            break;  // the driver's ring is full: the rest waits for the next pass
        }
    }
    core::bump(stats_.tx_packets, done);
    core::bump(stats_.tx_bytes, bytes);
    if (done == 0) return;
    std::memmove(&txq_[0], &txq_[done], (txn_ - done) * sizeof(void*));
    txn_ -= done;
}

}  // namespace rpcgate::dpdk
