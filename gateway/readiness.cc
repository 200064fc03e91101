#include "gateway/readiness.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <chrono>
#include <cstring>

#include "gateway/admin.h"
#include "rpc/portmap.h"

namespace rpcgate::gw {

std::vector<backend_probe> probe_backends(const std::vector<backend_route>& routes,
                                          int timeout_ms) {
    using clock = std::chrono::steady_clock;
    std::vector<backend_probe> out(routes.size());
    std::vector<pollfd> fds(routes.size(), pollfd{-1, POLLOUT, 0});
    auto t0 = clock::now();
    auto elapsed_ms = [&] {
        return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    };
    for (size_t i = 0; i < routes.size(); ++i) {
        const endpoint& ep = routes[i].target;
        int fd = ::socket(ep.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            out[i].error = std::strerror(errno);
            continue;
        }
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len) == 0) {
            out[i].reachable = true;
            out[i].ms = elapsed_ms();
            ::close(fd);
        } else if (errno == EINPROGRESS) {
            fds[i].fd = fd;
        } else {
            out[i].error = std::strerror(errno);
            ::close(fd);
        }
    }
    for (;;) {
        int left = timeout_ms - int(elapsed_ms());
        bool pending = false;
        for (const pollfd& p : fds) pending |= p.fd >= 0;
        if (!pending || left <= 0) break;
        if (::poll(fds.data(), fds.size(), left) < 0 && errno != EINTR) break;
        for (size_t i = 0; i < fds.size(); ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0) continue;
            int so_error = 0;
            socklen_t len = sizeof so_error;
            ::getsockopt(fds[i].fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
            out[i].reachable = so_error == 0;
            if (so_error) out[i].error = std::strerror(so_error);
            out[i].ms = elapsed_ms();
            ::close(fds[i].fd);
            fds[i].fd = -1;
        }
    }
    for (size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].fd < 0) continue;
        out[i].error = fmt::format("no answer within {} ms", timeout_ms);
        ::close(fds[i].fd);
    }
    return out;
}

bool readiness::ready() const noexcept {
    if (!listeners_up) return false;
    for (const backend_probe& b : backends)
        if (!b.reachable) return false;
    return true;
}

std::string readiness::json(const std::vector<backend_route>& routes) const {
    std::string out = fmt::format("{{\"ready\":{},\"listeners\":\"{}\",\"routes\":[",
                                  ready() ? "true" : "false", listeners_up ? "up" : "down");
    for (size_t i = 0; i < routes.size() && i < backends.size(); ++i) {
        std::string_view name = rpc::program_name_of(routes[i].prog);
        std::string label = fmt::format("{}({}){}", name.empty() ? "prog" : name, routes[i].prog,
                                        routes[i].vers ? fmt::format(" v{}", routes[i].vers) : "");
        out += fmt::format("{}{{\"route\":\"{}\",\"backend\":\"{}\",\"reachable\":{},",
                           i ? "," : "", label, json_escape(routes[i].target.text),
                           backends[i].reachable ? "true" : "false");
        out += backends[i].reachable
                   ? fmt::format("\"ms\":{:.1f}}}", backends[i].ms)
                   : fmt::format("\"error\":\"{}\"}}", json_escape(backends[i].error));
    }
    out += "]}\n";
    return out;
}

}  // namespace rpcgate::gw
