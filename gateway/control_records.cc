#include "gateway/control_records.h"

#include <fmt/format.h>
#include <openssl/ssl.h>

#include <poll.h>

#include <cerrno>
#include <cstring>

namespace rpcgate::gw {

namespace k = tls::ktls;

control_read read_control_record(int fd) {
    control_read r;
    r.n = k::read_control(fd, &r.record);
    return r;
}

bool send_alert(int fd, uint8_t level, uint8_t description, std::string* why) {
    ssize_t n = k::send_alert(fd, level, description);
    if (n >= 0) return true;
    if (why) *why = std::strerror(int(-n));
    return false;
}

namespace {

control_reaction react_server(const control_read& r, bool kernel_tx) {
    control_reaction a;
    if (r.n == 0) {  // EOF: answer with our close_notify
        a.orderly = true;
        return a;
    }
    if (r.n < 0) {
        // EBADMSG (a record that did not decrypt) and the like.
        a.counter = &gateway_counters::tls_errors;
        a.no_close_notify = true;
        if (r.n != -EAGAIN)
            a.fatal_alert = r.n == -EBADMSG ? 20 : 80;  // bad_record_mac / internal_error
        a.err = int(r.n);
        a.what = fmt::format("kTLS receive failed: {}", std::strerror(int(-r.n)));
        return a;
    }
    const k::control_record& c = r.record;
    switch (c.kind) {
        case k::control::close_notify:
            a.counter = &gateway_counters::tls_close_notify;
            a.peer_done = true;
            a.orderly = true;  // our close_notify, then the socket
            a.what = "close_notify from the client";
            return a;
        case k::control::alert:
            a.counter = &gateway_counters::tls_alerts_received;
            a.no_close_notify = true;  // RFC 8446 §6.2: the connection is dead, no reply
            a.err = -ECONNRESET;
            a.what = fmt::format("TLS alert from the client: {} ({})",
                                 SSL_alert_desc_string_long(c.alert_description),
                                 int(c.alert_description));
            return a;
        case k::control::key_update:
            a.counter = &gateway_counters::tls_key_update_closes;
            a.orderly = true;  // close_notify under our unchanged TX key
            a.what = fmt::format(
                "KeyUpdate from the client{}: kernel TLS cannot take new RX keys "
                "here; closing with close_notify",
                c.update_requested ? " (update requested)" : "");
            return a;
        case k::control::new_session_ticket:  // a client sends none
        case k::control::unexpected:
            break;
    }
    a.counter = &gateway_counters::tls_errors;
    a.no_close_notify = true;
    if (kernel_tx) a.fatal_alert = 10;  // unexpected_message
    a.err = -EPROTO;
    a.what = "unexpected TLS record from the client: closing";
    return a;
}

control_reaction react_client(const control_read& r, bool kernel_tx) {
    control_reaction a;
    const k::control_record& c = r.record;
    if (r.n > 0 && c.kind == k::control::new_session_ticket) {
        a.go_on = true;
        a.counter = &gateway_counters::upstream_tickets;
        return a;
    }
    a.err = -ECONNRESET;
    a.what = r.n < 0    ? fmt::format("kTLS receive failed: {}", std::strerror(int(-r.n)))
             : r.n == 0 ? std::string("closed the connection")
                        : fmt::format("sent {}", c.name());
    if (r.n > 0 && c.kind == k::control::key_update)
        a.counter = &gateway_counters::tls_key_update_closes;
    if (r.n <= 0 || c.kind == k::control::alert || c.kind == k::control::unexpected)
        a.no_close_notify = true;  // no close_notify after a failure
    if (r.n > 0 && c.kind == k::control::unexpected && kernel_tx)
        a.fatal_alert = 10;  // unexpected_message
    return a;
}

}  // namespace

control_reaction react(tls_role role, const control_read& r, bool kernel_tx) {
    return role == tls_role::server ? react_server(r, kernel_tx) : react_client(r, kernel_tx);
}

control_reaction follow_key_update(tls_role role, int fd, tls::ktls::traffic_secrets* secrets,
                                   const control_read& r, bool kernel_tx) {
    if (secrets && secrets->rekey_rx(fd)) {
        control_reaction a;
        a.go_on = true;
        a.rekey_tx = r.record.update_requested;
        a.counter = &gateway_counters::tls_rekeys_rx_peer;
        return a;
    }
    int e = secrets ? errno : 0;
    control_reaction a = react(role, r, kernel_tx);
    if (e) a.what += fmt::format(" (the kernel refused the next RX key: {})", std::strerror(e));
    return a;
}

bool rekey_tx(int fd, tls::ktls::traffic_secrets& secrets, int wait_ms, std::string* why) {
    for (;;) {
        if (secrets.rekey_tx(fd)) return true;
        if (errno != EAGAIN && errno != EWOULDBLOCK) break;
        // The KeyUpdate did not fit in the socket buffer: nothing was sent.
        pollfd p{fd, POLLOUT, 0};
        if (wait_ms <= 0 || ::poll(&p, 1, wait_ms) <= 0) {
            errno = ETIMEDOUT;
            break;
        }
        wait_ms = 0;  // one wait
    }
    if (why) *why = fmt::format("TX rekey failed: {}", std::strerror(errno));
    return false;
}

}  // namespace rpcgate::gw
