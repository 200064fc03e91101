#include "tools/bench/address.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>

namespace rpcgate::bench {

uint16_t socket_address::port() const noexcept {
    if (storage.ss_family == AF_INET)
        return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
    if (storage.ss_family == AF_INET6)
        return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
    return 0;
}

void socket_address::set_port(uint16_t port) noexcept {
    if (storage.ss_family == AF_INET)
        reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(port);
    else if (storage.ss_family == AF_INET6)
        reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(port);
}

std::string socket_address::str() const {
    char buf[INET6_ADDRSTRLEN] = {};
    if (storage.ss_family == AF_INET) {
        ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, buf,
                    sizeof buf);
        return fmt::format("{}:{}", buf, port());
    }
    if (storage.ss_family == AF_INET6) {
        ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, buf,
                    sizeof buf);
        return fmt::format("[{}]:{}", buf, port());
    }
    return "?";
}

bool parse_address(std::string_view text, bool wildcard_default, socket_address* out,
                   std::string* err) {
    std::string_view host, port_text;
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
        port_text = text;
    } else {
        host = text.substr(0, colon);
        port_text = text.substr(colon + 1);
    }
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
        port > 65535) {
        *err = "bad address '" + std::string(text) + "': expected ADDR:PORT";
        return false;
    }
    std::string h(host.empty() ? (wildcard_default ? "0.0.0.0" : "127.0.0.1") : host);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (wildcard_default ? AI_PASSIVE : 0);
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(h.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0 || !res) {
        *err = "cannot resolve '" + h + "': " + ::gai_strerror(rc);
        return false;
    }
    std::memcpy(&out->storage, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    ::freeaddrinfo(res);
    return true;
}

}  // namespace rpcgate::bench
