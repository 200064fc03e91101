// kTLS control records: what a connection does with a TLS record that is not
// application data, for both sides of the gateway.
//
// With kTLS RX the kernel decrypts, and a plain receive stops with EIO at a
// record that is not application data, leaving it at the head of the
// socket (tls/ktls.h). The connection then reads it (`read_control_record`,
// built on tls::ktls::read_control) and `react` says what follows, by role:
//
//   role::server  a client connection (client_session): a client sends no
//                 tickets; the receive side is over whatever else came.
//   role::client  a backend connection (backend_link): servers send
//                 NewSessionTickets after the handshake (RFC 8446 §4.6.1);
//                 one is consumed and the connection goes on. Anything else
//                 ends it.
//
// A KeyUpdate (RFC 8446 §4.6.3), either role, goes to `follow_key_update`
// first: on Linux 6.14+ the kernel pauses RX at it (reads fail with
// EKEYEXPIRED) until the peer's next key is installed with
// setsockopt(TLS_RX); the session's kept traffic secrets
// (tls::session::secrets) give that key (§7.2), and the connection goes on,
// owing its own KeyUpdate and TX rekey when the peer asked for it. Where the
// kernel refuses the key (Linux 6.1: EBUSY) `react` closes as before:
// close_notify under the unchanged TX key from the server role, the link
// lost in the client role.
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
    bool rekey_tx = false;         // a KeyUpdate of ours is owed (update_requested)
    uint8_t fatal_alert = 0;       // a fatal alert to send first (0: none)
    int err = 0;                   // the close's error when not orderly
    std::atomic<uint64_t> gateway_counters::*counter = nullptr;  // counted (or null)
    std::string what;                                            // for the log line
};
// `kernel_tx`: our TX is in the kernel (alerts can be sent as records).
control_reaction react(tls_role role, const control_read& r, bool kernel_tx);

// `r` is a KeyUpdate read on kTLS RX socket `fd`: installs the peer's next
// key from `secrets` (null: none kept) and goes on (counted in
// tls_rekeys_rx_peer; `rekey_tx` when the peer asked for ours), or, where
// the kernel cannot, what `react` does.
control_reaction follow_key_update(tls_role role, int fd, tls::ktls::traffic_secrets* secrets,
                                   const control_read& r, bool kernel_tx);

// Our KeyUpdate and the next TX key on kTLS socket `fd`, called when nothing
// is queued or in flight on it (the KeyUpdate must precede every later
// record). A full socket buffer is waited for, up to `wait_ms` (a KeyUpdate
// is rare; the shard waits). false (the reason in *why): the connection
// cannot go on and must close without close_notify.
bool rekey_tx(int fd, tls::ktls::traffic_secrets& secrets, int wait_ms, std::string* why);

// A fatal (2) or warning (1) alert through kTLS TX, never blocking; false
// (with the reason in *why) when it was not sent.
bool send_alert(int fd, uint8_t level, uint8_t description, std::string* why);

}  // namespace rpcgate::gw
