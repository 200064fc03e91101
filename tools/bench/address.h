// ADDR:PORT parsing for the bench command line.
//
// Accepts `1.2.3.4:PORT`, `[::1]:PORT`, `HOST:PORT` (resolved once, at
// start-up, with getaddrinfo; the first TCP address wins) and `:PORT` or a
// bare `PORT` (meaning 127.0.0.1 for a target and 0.0.0.0 for a listener).
// Start-up code only: may block on name resolution.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace rpcgate::bench {

struct socket_address {
    sockaddr_storage storage{};
    socklen_t len = 0;

    const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
    uint16_t port() const noexcept;
    void set_port(uint16_t port) noexcept;
    // "127.0.0.1:2049" / "[::1]:2049".
    std::string str() const;
};

// Parses `text`; on failure returns false and sets `err` to a one-line reason.
// `wildcard_default` picks the address used when only a port is given.
bool parse_address(std::string_view text, bool wildcard_default, socket_address* out,
                   std::string* err);

}  // namespace rpcgate::bench
