// The hand-off format between a running rpcgate and the binary that takes
// over from it (upgrade.h): messages on a SOCK_SEQPACKET socket pair, file
// descriptors beside them (SCM_RIGHTS).
//
// Every message starts with the same 12-byte header:
//
//   magic    u32  "RGUP"
//   version  u16  k_wire_version of the sender
//   type     u16  msg_type
//   length   u32  bytes of body that follow (at most k_max_body)
//
// and its body is a sequence of big-endian integers and length-prefixed
// byte strings (u32 length). Decoding checks every length against what is
// left; a message that is short, long, of an unknown type or of another
// version is refused as a whole. A new format bumps k_wire_version: the
// other side then refuses before anything moves (docs/upgrade.md).
//
// No I/O here except send_message/recv_message, which move one message and
// its descriptors; the rest is pure and unit-tested
// (tests/unit/gateway/upgrade_wire_test.cc).
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/conn_id.h"
#include "tls/moved_state.h"

namespace rpcgate::gw::upgrade_wire {

inline constexpr uint32_t k_magic = 0x52475550;  // "RGUP"
// 1: plaintext connections; 2: TLS ones too (own records or kTLS both ways).
inline constexpr uint16_t k_wire_version = 2;
inline constexpr size_t k_header = 12;
// Small enough for one SOCK_SEQPACKET datagram under the default socket
// buffer; a connection's unread bytes travel in as many chunks as they need.
inline constexpr size_t k_max_body = 60 * 1024;
// Bytes of one conn_bytes message (its body: a length, then the bytes).
inline constexpr size_t k_max_chunk = k_max_body - 4;
// Descriptors a message may carry (a listener group, or one connection).
inline constexpr size_t k_max_fds = 250;

enum class msg_type : uint16_t {
    hello = 1,       // new -> old: my version and pid; my configuration is valid
    offer = 2,       // old -> new: the listening sockets (fds) and the counters so far
    ready = 3,       // new -> old: the listeners are adopted and the gateway runs
    refuse = 4,      // either way: a reason; nothing moves, the old keeps serving
    conn = 5,        // old -> new: one connection (fds: client, then each link)
    conn_bytes = 6,  // old -> new: a chunk of the unread bytes of the last conn
    end = 7,         // old -> new: no more connections; the counters after the move
    final = 8,       // old -> new: what the old process drained and closed, at its exit
};

// Upgrade counters carried from one process to the next, so that totals
// survive the hand-off (metrics.h renders them).
#define RPCGATE_UPGRADE_TOTALS(X) X(started) X(completed) X(failed) X(moved) X(drained) X(closed)
struct upgrade_totals {
#define RPCGATE_X(f) uint64_t f = 0;
    RPCGATE_UPGRADE_TOTALS(RPCGATE_X)
#undef RPCGATE_X
    bool operator==(const upgrade_totals&) const = default;
};

struct hello_msg {
    uint32_t pid = 0;
    std::string software;  // RPCGATE_VERSION of the new binary
};

// A listening socket group: `kind` 0 = --listen, 1 = --implicit-tls,
// 2 = --admin; `index` its place in the configuration; the fds (one per old
// shard for 0 and 1, SO_REUSEPORT) travel with the message.
struct listener_group {
    uint8_t kind = 0;
    uint32_t index = 0;
    uint32_t count = 0;
    bool operator==(const listener_group&) const = default;
};

struct offer_msg {
    upgrade_totals totals;
    std::vector<listener_group> groups;  // fds in this order
};

// One backend link of a moved connection.
struct link_state {
    uint32_t route = 0;
    uint32_t vers = 0;
    core::conn_id id;
    uint32_t unread = 0;  // bytes received from the backend, not yet parsed
    bool operator==(const link_state&) const = default;
};

// A call forwarded and not yet answered (call_stats.h): the new process
// times its reply. `received_ns` is CLOCK_MONOTONIC, the same in both.
struct call_in_flight {
    uint32_t xid = 0;
    uint16_t kind = 0;
    uint64_t received_ns = 0;
    bool operator==(const call_in_flight&) const = default;
};

// A backchannel CALL (NFSv4.1) waiting for the client's REPLY.
struct backchannel_call {
    uint32_t xid = 0;
    uint32_t route = 0;
    bool operator==(const backchannel_call&) const = default;
};

// Everything a plaintext connection at an RPC record boundary is, besides
// its descriptors (client, then one per link) and its unread bytes (which
// follow in conn_bytes messages: the client's, then each link's in order).
struct conn_msg {
    core::conn_id id;
    uint32_t shard = 0;
    std::string peer;         // as logged
    std::string peer_addr;    // raw sockaddr_storage bytes (for limits)
    uint64_t detach_ns = 0;   // CLOCK_MONOTONIC when the move began (the pause)
    uint64_t created_ms = 0;  // age of the connection, ms
    uint64_t calls_outstanding = 0, calls_forwarded = 0;
    bool first_bytes = true;  // nothing received yet (--tls-auto still undecided)
    // TLS identity (empty for plaintext).
    uint32_t tls_flags = 0;
    std::string tls_subject;
    bool has_certuser = false;
    uint32_t uid = 0, gid = 0;
    std::vector<uint32_t> gids;
    uint32_t client_unread = 0;
    std::vector<link_state> links;
    std::vector<call_in_flight> calls;
    std::vector<backchannel_call> backchannel;
    // A TLS connection: the session's state (tls/moved_state.h). For own
    // records, the client's unread bytes are ciphertext; for kTLS, the
    // socket holds the record state and they are plaintext.
    bool has_tls = false;
    tls::moved_state tls;

    size_t fd_count() const noexcept { return 1 + links.size(); }
    uint64_t unread_total() const noexcept {
        uint64_t n = client_unread;
        for (const auto& l : links) n += l.unread;
        return n;
    }
    bool operator==(const conn_msg&) const = default;
};

// What the old process says when it ends (final) or after the move (end).
struct totals_msg {
    upgrade_totals totals;
};

// ---- encoding: a whole message, header included.
std::string encode_hello(const hello_msg& m, uint16_t version = k_wire_version);
std::string encode_offer(const offer_msg& m);
std::string encode_reason(msg_type t, std::string_view why);  // ready ("") or refuse
std::string encode_conn(const conn_msg& m);
std::string encode_bytes(std::string_view chunk);
std::string encode_totals(msg_type t, const totals_msg& m);  // end or final

// ---- decoding. `parse_header` checks magic, length and type; a version
// other than ours is reported in *version and refused (false) unless
// `any_version` (hello: the old side says why it refuses).
struct header {
    uint16_t version = 0;
    msg_type type = msg_type::hello;
    uint32_t length = 0;
};
bool parse_header(std::string_view msg, header* h, std::string* err, bool any_version = false);
bool decode_hello(std::string_view msg, hello_msg* m, std::string* err);
bool decode_offer(std::string_view msg, offer_msg* m, std::string* err);
bool decode_reason(std::string_view msg, std::string* why, std::string* err);
bool decode_conn(std::string_view msg, conn_msg* m, std::string* err);
bool decode_bytes(std::string_view msg, std::string_view* chunk, std::string* err);
bool decode_totals(std::string_view msg, totals_msg* m, std::string* err);

// ---- one message and its descriptors on a SOCK_SEQPACKET socket.
// Returns "" or why it failed (errno text). Blocking; the socket has a
// send/receive timeout set by the caller.
std::string send_message(int sock, std::string_view msg, const int* fds = nullptr, size_t nfds = 0);
// Receives one message into *msg and its descriptors into *fds (CLOEXEC).
// "" on success; "closed" at EOF; else why.
std::string recv_message(int sock, std::string* msg, std::vector<int>* fds);

}  // namespace rpcgate::gw::upgrade_wire
