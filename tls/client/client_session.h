// One RPC client connection's protocol stack, without I/O: plaintext,
// RFC 9289 STARTTLS (probe, then TLS 1.3), or implicit TLS from the first byte.
//
// The owner moves bytes: it sends whatever the session appends to `out`, and
// feeds what it receives to `on_bytes`, which also hands back the application
// plaintext (RPC records still framed) once the connection is ready. The same
// object serves a blocking socket (blocking_client.h), a shard stream
// (rpcgate-bench) and the gateway's upstream side (tls/handshake_service.h);
// nothing here blocks, allocates per record in plain mode, or reads a socket.
//
// One exception, for kernel TLS: with `session_params::socket_fd` set, the
// TLS handshake (after the probe, which still goes through on_bytes) runs on
// that socket's own BIOs, so that OpenSSL can later give the record layer to
// the kernel (tls/ktls.h). The owner then calls step_socket() whenever the
// socket is ready instead of feeding bytes, until the state leaves
// `handshaking`; tls() then takes tls::session::finish_on_socket.
//
//   probing ──accepted──> handshaking ──done──> ready ──close_notify──> closed
//      └─refused/error─> refused / failed        └─error─> failed
// Implicit TLS starts in `handshaking`; plain mode starts in `ready`.
//
// Single thread at a time; the `tls::context` must outlive the session.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/buffer.h"
#include "tls/client/starttls_client.h"
#include "tls/context.h"
#include "tls/session.h"

namespace rpcgate::client {

enum class tls_mode { off, starttls, implicit };
const char* to_string(tls_mode m) noexcept;
// "off" | "starttls" | "implicit"; false for anything else.
bool parse_tls_mode(std::string_view text, tls_mode* out) noexcept;

// Restricts the TLS 1.3 cipher suites a context offers or accepts
// (SSL_CTX_set_ciphersuites, e.g. "TLS_AES_128_GCM_SHA256"), so that
// benchmarks compare like with like. Call before any session is made from
// `ctx`. False and a reason for a list naming a suite OpenSSL does not know
// (tls::check_ciphersuites) or one it does not accept.
bool set_tls13_ciphersuites(tls::context& ctx, const std::string& suites, std::string* err);

enum class session_state {
    probing,      // probe sent, waiting for the reply
    handshaking,  // TLS handshake in progress
    ready,        // application data may flow
    refused,      // the server refused the probe (see probe())
    failed,       // handshake or record error, bad probe reply (see error())
    closed,       // close_notify received
};
const char* to_string(session_state s) noexcept;

struct session_params {
    tls_mode mode = tls_mode::off;
    const tls::context* ctx = nullptr;  // client context; needed unless mode is off
    uint32_t prog = 0;                  // probed program/version (starttls)
    uint32_t vers = 0;
    uint32_t xid = 0;    // probe xid; 0 = random
    int socket_fd = -1;  // >= 0: the handshake on this (non-blocking) socket; see above
};

class client_session {
  public:
    explicit client_session(const session_params& p);
    client_session(const client_session&) = delete;
    client_session& operator=(const client_session&) = delete;

    // Appends the first bytes to send (the probe, a ClientHello, or nothing).
    session_state start(core::slice_chain& out);
    // Bytes from the server. Appends bytes to send to `out` and, in `ready`,
    // decrypted application bytes to `plain`.
    session_state on_bytes(core::slice data, core::slice_chain& out, core::slice_chain& plain);
    // The server closed (0) or the connection failed (-errno).
    session_state on_eof(int err);
    // With `socket_fd`, in `handshaking`: one handshake step on the socket.
    // While the state stays `handshaking`, `*want_write` says whether to wait
    // for the socket to be writable (else readable).
    session_state step_socket(bool* want_write);
    // In `ready`: appends `plain` (encrypted unless the mode is off) to `out`.
    // False (and `failed`) if encryption failed.
    bool write(core::slice_chain&& plain, core::slice_chain& out);
    // Appends close_notify to `out` when a TLS session is up.
    void shutdown(core::slice_chain& out);

    session_state state() const noexcept { return state_; }
    bool ready() const noexcept { return state_ == session_state::ready; }
    tls_mode mode() const noexcept { return mode_; }
    const probe_result& probe() const noexcept { return probe_.result(); }
    // After `refused`: bytes the server sent after its reply (moved out).
    core::slice_chain take_leftover() noexcept { return probe_.take_leftover(); }
    // The TLS session (null when off, or after release_tls()).
    tls::session* tls() const noexcept { return tls_.get(); }
    // Hands the TLS session over (e.g. to another thread); the client session
    // is then unusable for data.
    std::unique_ptr<tls::session> release_tls() noexcept { return std::move(tls_); }
    // Why the session failed or was refused (one line), or "".
    const std::string& error() const noexcept { return error_; }

  private:
    session_state begin_handshake(core::slice_chain&& input, core::slice_chain& out,
                                  core::slice_chain& plain);
    session_state step_handshake(core::slice_chain& out, core::slice_chain& plain);
    session_state read_records(core::slice_chain& out, core::slice_chain& plain);
    session_state fail(std::string why);

    tls_mode mode_;
    const tls::context* ctx_;
    uint32_t prog_, vers_;
    int socket_fd_;
    session_state state_ = session_state::ready;
    starttls_client probe_;
    std::unique_ptr<tls::session> tls_;
    std::string error_;
};

}  // namespace rpcgate::client
