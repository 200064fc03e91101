// Connection IDs: {tv_sec, tv_usec, seq}.
//
// Every accepted (and every backend) connection is stamped with the time it
// was established and a 64-bit sequence number that is never 0 and unique
// across shards (one process-wide atomic counter, touched once per accept).
// Logs, metrics, the admin listing and the control thread all name a
// connection by it; the timestamp keeps IDs of a restarted gateway from
// aliasing old ones. Printed as `SEC.USEC-SEQ` (e.g. `1764109395.123456-42`).
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>

namespace rpcgate::core {

struct conn_id {
    int64_t sec = 0;
    int32_t usec = 0;
    uint64_t seq = 0;  // 0 only in a default-constructed (invalid) id

    bool valid() const noexcept { return seq != 0; }
    std::string str() const;
    friend bool operator==(const conn_id&, const conn_id&) = default;
};

// Stamps a new connection. Thread-safe.
conn_id next_conn_id() noexcept;

}  // namespace rpcgate::core

template <>
struct fmt::formatter<rpcgate::core::conn_id> : fmt::formatter<std::string_view> {
    template <typename Ctx>
    auto format(const rpcgate::core::conn_id& id, Ctx& ctx) const {
        return fmt::format_to(ctx.out(), "{}.{:06}-{}", id.sec, id.usec, id.seq);
    }
};
