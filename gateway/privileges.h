// Can this process bind a TCP port below 1024? Asked once at start, to
// decide whether backend connections use a reserved source port (knfsd's
// `secure` export option accepts only those).
//
// The answer is the capability, not the user: root has CAP_NET_BIND_SERVICE,
// and so has a service started with `User=rpcgate` and
// `AmbientCapabilities=CAP_NET_BIND_SERVICE`; a port at or above
// net.ipv4.ip_unprivileged_port_start needs nothing. Any thread.
#pragma once

#include <cstdint>
#include <string>

namespace rpcgate::gw {

// True when CAP_NET_BIND_SERVICE is in this process's effective set.
bool has_net_bind_service() noexcept;
// True when a TCP port `port` may be bound here (the capability, or a port
// the kernel does not treat as privileged). `why` says which, for the log.
bool can_bind_port(uint16_t port, std::string* why);

}  // namespace rpcgate::gw
