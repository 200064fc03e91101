#include "core/conn_id.h"

#include <sys/time.h>

#include <atomic>

namespace rpcgate::core {

namespace {
std::atomic<uint64_t> g_next_seq{1};
}

conn_id next_conn_id() noexcept {
    timeval tv;
    gettimeofday(&tv, nullptr);
    uint64_t seq = g_next_seq.fetch_add(1, std::memory_order_relaxed);
    if (seq == 0) seq = g_next_seq.fetch_add(1, std::memory_order_relaxed);  // wrapped: skip 0
    return conn_id{tv.tv_sec, int32_t(tv.tv_usec), seq};
}

std::string conn_id::str() const {
    return fmt::format("{}", *this);
}

}  // namespace rpcgate::core
