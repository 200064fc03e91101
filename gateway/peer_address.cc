#include "gateway/peer_address.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>

#include <cstdlib>

#include "gateway/config.h"

namespace rpcgate::gw {

std::string peer_text(const sockaddr_storage& ss) {
    char host[INET6_ADDRSTRLEN] = "?";
    uint16_t port = 0;
    if (ss.ss_family == AF_INET) {
        auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        return fmt::format("{}:{}", host, port);
    }
    if (ss.ss_family == AF_INET6) {
        auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
    }
    return fmt::format("[{}]:{}", host, port);
}

sockaddr_storage address_of(const std::string& text) {
    sockaddr_storage ss{};
    size_t colon = text.rfind(':');
    if (colon == std::string::npos) return ss;
    uint16_t port = uint16_t(std::strtoul(text.c_str() + colon + 1, nullptr, 10));
    if (text.front() == '[' && colon > 1 && text[colon - 1] == ']') {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        if (inet_pton(AF_INET6, text.substr(1, colon - 2).c_str(), &a->sin6_addr) == 1) {
            a->sin6_family = AF_INET6;
            a->sin6_port = htons(port);
        }
        return ss;
    }
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &a->sin_addr) == 1) {
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
    }
    return ss;
}

uint16_t local_port(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
    endpoint ep;
    ep.addr = ss;
    return ep.port();
}

}  // namespace rpcgate::gw
