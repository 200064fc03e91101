// kTLS control records: what a connection does with a TLS record that is not
// application data, for both sides of the gateway.
//
// With kTLS RX the kernel decrypts, and a plain receive stops with EIO at a
// record that is not application data, leaving it at the head of the
// socket (tls/ktls.h). The connection then reads it (`read_control_record`,
// built on tls::ktls::read_control) and `react` says what follows, by role:
//
//   role::server  a client connection (client_session): a client sends no
//                 tickets, and a KeyUpdate cannot be followed (the kernel
//                 takes no new RX key before Linux 6.14, and OpenSSL 3.0 keeps
//                 no traffic secret to derive one from): the receive side is
//                 over whatever came.
//   role::client  a backend connection (backend_link): servers send
//                 NewSessionTickets after the handshake (RFC 8446 §4.6.1);
//                 one is consumed and the connection goes on. Anything else
//                 ends it.
//
// Alerts go out with tls::ktls::send_alert (RFC 8446 §6). Pure logic apart
// from the read and the alert: `react` is unit-tested without sockets.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "gateway/metrics.h"
#include "tls/ktls.h"

namespace rpcgate::gw {

enum class tls_role : uint8_t { server, client };

// What a read at a kTLS control record found.
struct control_read {
    ssize_t n = 0;                     // tls::ktls::read_control: >0 a record, 0 EOF, -errno
    tls::ktls::control_record record;  // when n > 0
};
control_read read_control_record(int fd);

// What the connection does next.
struct control_reaction {
    bool go_on = false;            // consumed (a ticket): receive again
    bool orderly = false;          // close cleanly: our close_notify, then the socket
    bool peer_done = false;        // the peer said it sends no more (its close_notify)
    bool no_close_notify = false;  // the connection is dead: nothing more to send (§6.2)
    uint8_t fatal_alert = 0;       // a fatal alert to send first (0: none)
    int err = 0;                   // the close's error when not orderly
    std::atomic<uint64_t> gateway_counters::*counter = nullptr;  // counted (or null)
    std::string what;                                            // for the log line
};
// `kernel_tx`: our TX is in the kernel (alerts can be sent as records).
control_reaction react(tls_role role, const control_read& r, bool kernel_tx);

// A fatal (2) or warning (1) alert through kTLS TX, never blocking; false
// (with the reason in *why) when it was not sent.
bool send_alert(int fd, uint8_t level, uint8_t description, std::string* why);

}  // namespace rpcgate::gw
