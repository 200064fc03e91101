#include "gateway/admin.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <chrono>
#include <cstring>

#include "core/log.h"

namespace rpcgate::gw {

std::string json_escape(const std::string& in) {
    std::string out;
    for (char c : in) {
        if (c == '"' || c == '\\') out += '\\';
        if (static_cast<unsigned char>(c) < 0x20) continue;
        out += c;
    }
    return out;
}

admin_server::~admin_server() {
    stop();
}

std::string admin_server::start(const endpoint& ep, handlers h, int inherited) {
    h_ = std::move(h);
    if (inherited >= 0) {
        listen_fd_ = inherited;
        return serve_bound();
    }
    listen_fd_ = ::socket(ep.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) return fmt::format("--admin {}: socket: {}", ep.text, std::strerror(errno));
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len) != 0 ||
        ::listen(listen_fd_, 64) != 0) {
        std::string e = fmt::format("--admin {}: {}", ep.text, std::strerror(errno));
        ::close(listen_fd_);
        listen_fd_ = -1;
        return e;
    }
    return serve_bound();
}

std::string admin_server::serve_bound() {
    endpoint bound;
    socklen_t len = sizeof bound.addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound.addr), &len);
    port_ = bound.port();
    thread_ = std::thread([this] { run(); });
    return {};
}

void admin_server::stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = -1;
}

void admin_server::run() {
    // Non-blocking: during an upgrade two processes poll the same socket,
    // and the one that loses the race must not block in accept.
    ::fcntl(listen_fd_, F_SETFL, ::fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
    while (!stop_.load()) {
        pollfd p{listen_fd_, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0) continue;  // wakes to notice stop()
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) continue;
        serve(fd);
        ::close(fd);
    }
}

void admin_server::serve(int fd) {
    // Read the request head with a deadline; a slow or huge request is dropped.
    std::string req;
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    char buf[2048];
    while (req.find("\r\n\r\n") == std::string::npos && req.find("\n\n") == std::string::npos) {
        int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(
                           end - std::chrono::steady_clock::now())
                           .count());
        if (left <= 0 || req.size() > 8192) return;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, left) <= 0) return;
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return;
        req.append(buf, size_t(n));
    }
    std::string status = "200 OK", type = "text/plain; charset=utf-8", body;
    auto line_end = req.find_first_of("\r\n");
    std::string line = req.substr(0, line_end);
    if (line.rfind("GET /metrics", 0) == 0) {
        type = "text/plain; version=0.0.4; charset=utf-8";
        body = h_.metrics ? h_.metrics() : "";
    } else if (line.rfind("POST /reload", 0) == 0) {
        std::string why = h_.reload ? h_.reload() : "reload is not available";
        status = why.empty() ? "200 OK" : "500 Internal Server Error";
        body = why.empty() ? "reloaded\n" : why + "\n";
    } else if (line.rfind("POST /upgrade", 0) == 0) {
        std::string why = h_.upgrade ? h_.upgrade() : "upgrade is not available";
        status = why.empty() ? "202 Accepted" : "409 Conflict";
        body =
            why.empty() ? "upgrade started: see the log and rpcgate_upgrades_total\n" : why + "\n";
    } else if ((line.rfind("GET /clients", 0) == 0 || line.rfind("GET /connections?", 0) == 0) &&
               h_.views) {
        type = "application/json";
        std::string target = line.substr(4, line.find(' ', 4) - 4);
        body = h_.views(target);
    } else if (line.rfind("GET /connections", 0) == 0) {
        type = "application/json";
        body = h_.connections ? h_.connections() : "[]";
    } else if (line.rfind("GET /healthz", 0) == 0) {
        bool ok = h_.healthy && h_.healthy();
        status = ok ? "200 OK" : "503 Service Unavailable";
        body = ok ? "ok\n" : "not ready\n";
    } else if (line.rfind("GET /readyz", 0) == 0) {
        type = "application/json";
        auto [ok, json] = h_.ready ? h_.ready() : std::pair<bool, std::string>{false, "{}\n"};
        status = ok ? "200 OK" : "503 Service Unavailable";
        body = std::move(json);
    } else if (line.rfind("GET ", 0) == 0) {
        status = "404 Not Found";
        body = "not found: try /metrics, /connections, /clients, /healthz or /readyz\n";
    } else {
        status = "405 Method Not Allowed";
        body = "only GET\n";
    }
    std::string resp = fmt::format(
        "HTTP/1.0 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        status, type, body.size(), body);
    size_t off = 0;
    while (off < resp.size()) {
        ssize_t w = ::send(fd, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
        if (w <= 0) return;
        off += size_t(w);
    }
}

}  // namespace rpcgate::gw
