// The RFC 9289 client role, without I/O: the AUTH_TLS probe and what follows.
//
// RPC-with-TLS (RFC 9289 §4.1) starts in plaintext: the client sends a NULL
// call of the target program with an AUTH_TLS credential, and a server that
// can do TLS answers MSG_ACCEPTED / SUCCESS with the verifier AUTH_NONE
// "STARTTLS"; both sides then run a TLS 1.3 handshake on the same connection.
// Servers that cannot do it answer in many ways, all seen in the wild:
// AUTH_ERROR with AUTH_REJECTEDCRED (nfs-ganesha 4.3) or AUTH_BADCRED, a
// SUCCESS with an empty verifier or without the token (servers that ignore the
// credential flavor), PROG_UNAVAIL / PROG_MISMATCH (wrong program), or they
// close the connection.
//
// `starttls_client` is that exchange as a state machine fed with bytes: a
// blocking socket (`connect_starttls`, blocking_client.h), an engine stream
// (rpcgate-bench) and the gateway's upstream side all drive the same code.
// `client_session` (client_session.h) adds the TLS handshake and the data path.
//
// Single-thread objects; any thread may own one.
#pragma once

#include <cstdint>
#include <string>

#include "core/buffer.h"
#include "rpc/message.h"
#include "rpc/record.h"

namespace rpcgate::client {

enum class probe_outcome {
    pending,   // no complete reply yet: feed more bytes
    accepted,  // STARTTLS: start the TLS handshake on this connection
    refused,   // a well-formed reply that is not STARTTLS: `reason` says which
    error,     // no usable reply: malformed, wrong xid, not a reply, closed early
};
const char* to_string(probe_outcome o) noexcept;

struct probe_result {
    probe_outcome outcome = probe_outcome::pending;
    // One line: what the server answered ("MSG_ACCEPTED SUCCESS, verifier
    // AUTH_NONE \"STARTTLS\"", "AUTH_ERROR AUTH_REJECTEDCRED", ...) or why
    // there is no answer.
    std::string reason;
    bool got_reply = false;  // `reply` holds the decoded header
    rpc::reply_header reply;
};

// One line describing any reply header (also used for replies over TLS).
std::string describe_reply(const rpc::reply_header& h);

// Classifies a decoded reply to the probe (xid already matched).
probe_result classify_probe_reply(const rpc::reply_header& h);

class starttls_client {
  public:
    // `xid` 0 picks a random one (getrandom), so that probes of different
    // clients, or of one client retrying, are told apart in captures.
    explicit starttls_client(uint32_t xid = 0);
    starttls_client(const starttls_client&) = delete;
    starttls_client& operator=(const starttls_client&) = delete;

    // The framed probe call (44 bytes) for (prog, vers); send it as is.
    core::slice start(uint32_t prog, uint32_t vers);
    uint32_t xid() const noexcept { return xid_; }

    // Bytes received after the probe was sent. Once the outcome is no longer
    // pending, further bytes go to `leftover` untouched (they belong to TLS).
    probe_outcome on_bytes(const core::slice& data);
    // The peer closed (err 0) or the connection failed (-errno) before a reply.
    probe_outcome on_eof(int err = 0);

    probe_outcome outcome() const noexcept { return result_.outcome; }
    const probe_result& result() const noexcept { return result_; }
    // Bytes received after the reply (the server's first TLS bytes can only
    // follow a ClientHello, but a server that answers and then sends anything
    // must not lose it). Moves them out.
    core::slice_chain take_leftover() noexcept { return std::move(leftover_); }

  private:
    void fail(std::string why);

    uint32_t xid_;
    bool started_ = false;
    rpc::record_reassembler rr_;
    probe_result result_;
    core::slice_chain leftover_;
};

}  // namespace rpcgate::client
