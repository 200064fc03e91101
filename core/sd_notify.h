// systemd's notify protocol (sd_notify(3)), without linking libsystemd:
// a datagram such as "READY=1" to the unix socket named by $NOTIFY_SOCKET
// (a leading '@' means the abstract namespace). Outside systemd the variable
// is unset and every call is a no-op returning false.
#pragma once

#include <cstdint>
#include <string_view>

namespace rpcgate::core {

// Sends `state` ("READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=..."); true if sent.
bool sd_notify(std::string_view state) noexcept;
// The watchdog interval systemd asked for ($WATCHDOG_USEC, for this pid), or 0.
uint64_t sd_watchdog_usec() noexcept;

}  // namespace rpcgate::core
