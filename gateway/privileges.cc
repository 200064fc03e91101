#include "gateway/privileges.h"

#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fstream>

namespace rpcgate::gw {

bool has_net_bind_service() noexcept {
    // capget(2) directly: libcap would be a dependency for one bit.
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
    if (::syscall(SYS_capget, &hdr, data) != 0) return false;
    return data[CAP_NET_BIND_SERVICE / 32].effective & (1u << (CAP_NET_BIND_SERVICE % 32));
}

bool can_bind_port(uint16_t port, std::string* why) {
    if (has_net_bind_service()) {
        *why = "CAP_NET_BIND_SERVICE";
        return true;
    }
    unsigned start = 1024;
    std::ifstream("/proc/sys/net/ipv4/ip_unprivileged_port_start") >> start;
    if (port >= start) {
        *why = fmt::format("net.ipv4.ip_unprivileged_port_start is {}", start);
        return true;
    }
    *why =
        "no CAP_NET_BIND_SERVICE (run as root, or give the service "
        "AmbientCapabilities=CAP_NET_BIND_SERVICE)";
    return false;
}

}  // namespace rpcgate::gw
