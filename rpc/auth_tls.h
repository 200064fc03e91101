// RPC-with-TLS (RFC 9289 §4.1): the AUTH_TLS probe and its replies.
//
// A client that wants TLS sends a NULL call (procedure 0) of the target
// program whose credential is AUTH_TLS (flavor 7) with an empty body and whose
// verifier is AUTH_NONE with an empty body. A server that can do TLS answers
// MSG_ACCEPTED / SUCCESS with the verifier AUTH_NONE carrying the 8 bytes
// "STARTTLS"; then both sides start a TLS handshake on the same connection.
// AUTH_TLS anywhere else (another procedure, a non-empty credential or
// verifier, or inside an established TLS session) is answered with
// AUTH_ERROR / AUTH_BADCRED.
//
// Pure functions; any thread.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/buffer.h"
#include "rpc/message.h"

namespace rpcgate::rpc {

// The verifier body of a STARTTLS acceptance.
inline constexpr std::string_view starttls_verifier = "STARTTLS";

enum class auth_tls_use {
    none,    // the credential is not AUTH_TLS: an ordinary call
    probe,   // a well-formed probe: answer with build_starttls_reply
    misuse,  // AUTH_TLS where it is not allowed: answer with build_auth_tls_badcred_reply
};

// Classifies a decoded call. `over_tls` is true when the connection already
// runs TLS, where any AUTH_TLS credential is misuse (RFC 9289 §4.1).
auth_tls_use classify_auth_tls(const call_header& h, bool over_tls = false) noexcept;

// The STARTTLS reply, framed: record mark 0x80000020 then the 32-byte body
// (xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 8, "STARTTLS", SUCCESS). 36 bytes.
core::slice build_starttls_reply(uint32_t xid);
// AUTH_ERROR / AUTH_BADCRED, framed (record mark 0x80000014 + 20 bytes).
core::slice build_auth_tls_badcred_reply(uint32_t xid);

// The probe call for the client role, framed: NULL procedure of (prog, vers),
// credential AUTH_TLS with an empty body, verifier AUTH_NONE. 44 bytes.
core::slice build_tls_probe_call(uint32_t xid, uint32_t prog, uint32_t vers);
// True if `reply` accepts the probe: MSG_ACCEPTED, SUCCESS, and a verifier
// AUTH_NONE whose body is exactly "STARTTLS". (Servers that do not know
// AUTH_TLS typically answer AUTH_ERROR/AUTH_REJECTEDCRED or AUTH_BADCRED.)
bool is_starttls_reply(const reply_header& reply) noexcept;

}  // namespace rpcgate::rpc
