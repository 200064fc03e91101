// Peer addresses as text and back, for logs, /connections and the per-source
// table. Reentrant.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>

namespace rpcgate::gw {

// "a.b.c.d:port" or "[v6]:port".
std::string peer_text(const sockaddr_storage& ss);
// peer_text's output back to an address; AF_UNSPEC when it is neither form.
sockaddr_storage address_of(const std::string& text);
// The local port of a socket, 0 when it has none (a DPDK socketpair end).
uint16_t local_port(int fd);

}  // namespace rpcgate::gw
