// tls/ktls.h, part 1: where a socket's TLS crypto runs (sock_diag,
// getsockopt) and /proc/net/tls_stat.
#include "tls/ktls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace rpcgate::tls::ktls {
namespace {

#ifndef SOL_TLS
constexpr int SOL_TLS = 282;
#endif
#ifndef TCP_ULP
constexpr int TCP_ULP = 31;
#endif

mode mode_of_conf(uint16_t conf) {
    switch (conf) {
        case TLS_CONF_SW:
            return mode::ktls_sw;
        case TLS_CONF_HW:
        case TLS_CONF_HW_RECORD:
            return mode::ktls_hw;
        default:
            return mode::userspace;  // TLS_CONF_BASE: the ULP, no keys
    }
}

// The attributes of one netlink attribute run (nested or top level).
template <typename F>
void for_each_attr(const void* data, size_t len, F&& f) {
    auto* a = static_cast<const rtattr*>(data);
    auto n = static_cast<unsigned int>(len);
    for (; RTA_OK(a, n); a = RTA_NEXT(a, n))
        f(static_cast<uint16_t>(a->rta_type & NLA_TYPE_MASK), RTA_DATA(a), RTA_PAYLOAD(a));
}

uint16_t u16_of(const void* p, size_t n) {
    uint16_t v = 0;
    if (n >= sizeof(v)) std::memcpy(&v, p, sizeof(v));
    return v;
}

}  // namespace

const char* mode_name(mode m) noexcept {
    switch (m) {
        case mode::userspace:
            return "userspace";
        case mode::ktls_sw:
            return "ktls-sw";
        case mode::ktls_hw:
            return "ktls-hw";
        case mode::ktls:
            return "ktls";
    }
    return "?";
}

std::string protection::version_name() const {
    switch (version) {
        case TLS_1_3_VERSION:
            return "TLSv1.3";
        case TLS_1_2_VERSION:
            return "TLSv1.2";
        default:
            return "";
    }
}

std::string protection::cipher_name() const {
    switch (cipher) {
        case TLS_CIPHER_AES_GCM_128:
            return "AES-GCM-128";
        case TLS_CIPHER_AES_GCM_256:
            return "AES-GCM-256";
        case TLS_CIPHER_AES_CCM_128:
            return "AES-CCM-128";
        case TLS_CIPHER_CHACHA20_POLY1305:
            return "CHACHA20-POLY1305";
#ifdef TLS_CIPHER_SM4_GCM
        case TLS_CIPHER_SM4_GCM:
            return "SM4-GCM";
        case TLS_CIPHER_SM4_CCM:
            return "SM4-CCM";
#endif
        default:
            return cipher ? "cipher-" + std::to_string(cipher) : "";
    }
}

diag_socket::~diag_socket() {
    if (nl_ >= 0) ::close(nl_);
}

// One SOCK_DIAG_BY_FAMILY request for exactly this socket (4-tuple and
// cookie), asking for INET_DIAG_INFO: tcp_diag then adds INET_DIAG_ULP_INFO
// for callers with CAP_NET_ADMIN (net/ipv4/tcp_diag.c, tcp_diag_get_aux).
bool diag_socket::diag(int fd, protection& p) {
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof(local), pl = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0)
        return false;
    if (local.ss_family != AF_INET && local.ss_family != AF_INET6) return false;
    if (nl_ < 0) {
        nl_ = ::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
        if (nl_ < 0) return false;
    }
    struct {
        nlmsghdr nh;
        inet_diag_req_v2 r;
    } req{};
    req.nh.nlmsg_len = sizeof(req);
    req.nh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.nh.nlmsg_seq = ++seq_;
    req.r.sdiag_family = static_cast<uint8_t>(local.ss_family);
    req.r.sdiag_protocol = IPPROTO_TCP;
    req.r.idiag_ext = 1u << (INET_DIAG_INFO - 1);
    req.r.idiag_states = ~0u;
    if (local.ss_family == AF_INET) {
        auto* l = reinterpret_cast<sockaddr_in*>(&local);
        auto* r = reinterpret_cast<sockaddr_in*>(&peer);
        req.r.id.idiag_sport = l->sin_port;
        req.r.id.idiag_dport = r->sin_port;
        req.r.id.idiag_src[0] = l->sin_addr.s_addr;
        req.r.id.idiag_dst[0] = r->sin_addr.s_addr;
    } else {
        auto* l = reinterpret_cast<sockaddr_in6*>(&local);
        auto* r = reinterpret_cast<sockaddr_in6*>(&peer);
        req.r.id.idiag_sport = l->sin6_port;
        req.r.id.idiag_dport = r->sin6_port;
        std::memcpy(req.r.id.idiag_src, &l->sin6_addr, 16);
        std::memcpy(req.r.id.idiag_dst, &r->sin6_addr, 16);
    }
    uint64_t cookie = 0;
    socklen_t cl = sizeof(cookie);
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &cl) == 0 && cl == sizeof(cookie)) {
        req.r.id.idiag_cookie[0] = static_cast<uint32_t>(cookie);
        req.r.id.idiag_cookie[1] = static_cast<uint32_t>(cookie >> 32);
    } else {
        req.r.id.idiag_cookie[0] = req.r.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    }
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(nl_, &req, sizeof(req), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel)) !=
        static_cast<ssize_t>(sizeof(req)))
        return false;
    // The kernel answers inside sendto: the reply is queued already, so
    // never block on it (a lost reply is a failed query, not a hang).
    alignas(nlmsghdr) char buf[8192];
    for (;;) {
        ssize_t n = ::recv(nl_, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0) return false;
        auto len = static_cast<unsigned int>(n);
        for (auto* nh = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(nh, len);
             nh = NLMSG_NEXT(nh, len)) {
            if (nh->nlmsg_seq != seq_) continue;  // a late answer to an old query
            if (nh->nlmsg_type == NLMSG_ERROR || nh->nlmsg_type == NLMSG_DONE) return false;
            if (nh->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
            if (nh->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) return false;
            const char* attrs =
                static_cast<const char*>(NLMSG_DATA(nh)) + NLMSG_ALIGN(sizeof(inet_diag_msg));
            size_t alen = nh->nlmsg_len - NLMSG_LENGTH(NLMSG_ALIGN(sizeof(inet_diag_msg)));
            for_each_attr(attrs, alen, [&](uint16_t type, const void* d, size_t dn) {
                if (type != INET_DIAG_ULP_INFO) return;
                for_each_attr(d, dn, [&](uint16_t ut, const void* ud, size_t un) {
                    if (ut == INET_ULP_INFO_NAME) {
                        std::string_view name(static_cast<const char*>(ud),
                                              strnlen(static_cast<const char*>(ud), un));
                        if (name == "tls") p.ulp = true;
                    } else if (ut == INET_ULP_INFO_TLS) {
                        p.from_diag = true;
                        for_each_attr(ud, un, [&](uint16_t tt, const void* td, size_t tn) {
                            switch (tt) {
                                case TLS_INFO_VERSION:
                                    p.version = u16_of(td, tn);
                                    break;
                                case TLS_INFO_CIPHER:
                                    p.cipher = u16_of(td, tn);
                                    break;
                                case TLS_INFO_TXCONF:
                                    p.tx = mode_of_conf(u16_of(td, tn));
                                    break;
                                case TLS_INFO_RXCONF:
                                    p.rx = mode_of_conf(u16_of(td, tn));
                                    break;
                                default:
                                    break;
                            }
                        });
                    }
                });
            });
            return true;
        }
    }
}

protection diag_socket::query(int fd) {
    protection p;
    // The cheap test first: no "tls" ULP on the socket means no kTLS either
    // way (and no netlink round trip for every userspace connection).
    char ulp[16] = {};
    socklen_t ulen = sizeof(ulp);
    if (getsockopt(fd, IPPROTO_TCP, TCP_ULP, ulp, &ulen) != 0 || ulen == 0 ||
        std::string_view(ulp, strnlen(ulp, ulen)) != "tls")
        return p;
    p.ulp = true;
    if (diag(fd, p) && p.from_diag) return p;
    // No ULP details from sock_diag (no CAP_NET_ADMIN): the socket options
    // still tell whether keys are installed. Asking for exactly the 4-byte
    // struct tls_crypto_info returns version and cipher, never the keys.
    p = protection{};
    p.ulp = true;
    for (int dir : {TLS_TX, TLS_RX}) {
        tls_crypto_info ci{};
        socklen_t len = sizeof(ci);
        if (getsockopt(fd, SOL_TLS, dir, &ci, &len) != 0 || ci.cipher_type == 0) continue;
        (dir == TLS_TX ? p.tx : p.rx) = mode::ktls;
        p.version = ci.version;
        p.cipher = ci.cipher_type;
    }
    return p;
}

protection query(int fd) {
    diag_socket d;
    return d.query(fd);
}

std::vector<std::pair<std::string, uint64_t>> read_tls_stat(const char* path) {
    std::vector<std::pair<std::string, uint64_t>> out;
    FILE* f = std::fopen(path, "re");
    if (!f) return out;
    char key[64];
    unsigned long long v;
    while (std::fscanf(f, "%63s %llu", key, &v) == 2) out.emplace_back(key, v);
    std::fclose(f);
    return out;
}

uint64_t stat_value(const std::vector<std::pair<std::string, uint64_t>>& stat,
                    std::string_view name) noexcept {
    for (const auto& [k, v] : stat)
        if (k == name) return v;
    return 0;
}

}  // namespace rpcgate::tls::ktls
