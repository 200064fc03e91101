// tls/ktls.h, part 3: the data path -- records of a type through a kTLS
// socket, and what a non-data record means.
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

}  // namespace

uint8_t record_type_of(const msghdr& m) noexcept {
    for (const cmsghdr* c = CMSG_FIRSTHDR(&m); c;
         c = CMSG_NXTHDR(const_cast<msghdr*>(&m), const_cast<cmsghdr*>(c))) {
        if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE &&
            c->cmsg_len >= CMSG_LEN(sizeof(uint8_t)))
            return *CMSG_DATA(c);
    }
    return rt_none;
}

ssize_t recv_record(int fd, void* buf, size_t len, uint8_t* type, int flags) {
    alignas(cmsghdr) char cbuf[record_cmsg_space];
    iovec iov{buf, len};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof(cbuf);
    ssize_t n = ::recvmsg(fd, &m, flags);
    if (n < 0) return -errno;
    *type = record_type_of(m);
    return n;
}

ssize_t send_record(int fd, uint8_t type, const void* data, size_t len, int flags) {
    alignas(cmsghdr) char cbuf[record_cmsg_space] = {};
    iovec iov{const_cast<void*>(data), len};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof(cbuf);
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_TLS;
    c->cmsg_type = TLS_SET_RECORD_TYPE;
    c->cmsg_len = CMSG_LEN(sizeof(uint8_t));
    *CMSG_DATA(c) = type;
    ssize_t n = ::sendmsg(fd, &m, flags | MSG_NOSIGNAL);
    return n < 0 ? -errno : n;
}

ssize_t send_alert(int fd, uint8_t level, uint8_t description) {
    // Never blocks: an alert that finds the send buffer full is dropped (it
    // precedes a close anyway).
    const uint8_t alert[2] = {level, description};
    return send_record(fd, rt_alert, alert, sizeof(alert), MSG_DONTWAIT);
}

const char* control_record::name() const noexcept {
    switch (kind) {
        case control::close_notify:
            return "close_notify";
        case control::alert:
            return "alert";
        case control::new_session_ticket:
            return "new_session_ticket";
        case control::key_update:
            return "key_update";
        case control::unexpected:
            return "unexpected";
    }
    return "?";
}

ssize_t read_control(int fd, control_record* out) {
    // RFC 8446 §5.1/§5.4: plaintext is at most 2^14 bytes (+1 content type
    // byte and padding the kernel strips): one record always fits.
    uint8_t buf[16384 + 256];
    uint8_t type = rt_none;
    ssize_t n = recv_record(fd, buf, sizeof(buf), &type, MSG_DONTWAIT);
    if (n > 0) *out = classify(type, buf, static_cast<size_t>(n));
    OPENSSL_cleanse(buf, static_cast<size_t>(std::max<ssize_t>(n, 0)));
    return n;
}

control_record classify(uint8_t type, const uint8_t* data, size_t len) noexcept {
    control_record c;
    if (type == rt_alert) {
        // RFC 8446 §6: an alert record is level + description; close_notify
        // (0) closes, every other alert is fatal in TLS 1.3 (user_canceled
        // is followed by close_notify, so it also ends the connection).
        if (len != 2) return c;
        c.alert_level = data[0];
        c.alert_description = data[1];
        c.kind = data[1] == 0 ? control::close_notify : control::alert;
        return c;
    }
    if (type != rt_handshake) return c;  // CCS or unknown after the handshake
    // RFC 8446 §4: msg_type (1) + length (3) + body; several may share a record.
    bool ticket = false, update = false, requested = false;
    size_t off = 0;
    while (off < len) {
        if (len - off < 4) return c;
        uint8_t msg = data[off];
        size_t body = (size_t(data[off + 1]) << 16) | (size_t(data[off + 2]) << 8) | data[off + 3];
        if (body > len - off - 4) return c;  // a message split across records: not supported
        if (msg == 4) {                      // new_session_ticket
            ticket = true;
        } else if (msg == 24 && body == 1 && data[off + 4] <= 1) {  // key_update
            update = true;
            requested = requested || data[off + 4] == 1;
        } else {
            return c;
        }
        off += 4 + body;
    }
    if (update) {
        c.kind = control::key_update;
        c.update_requested = requested;
    } else if (ticket) {
        c.kind = control::new_session_ticket;
    }
    return c;
}

}  // namespace rpcgate::tls::ktls
