// Blocking RPC-with-TLS connections for tools and tests (rpcgate-probe, test
// fixtures): connect, probe, handshake and exchange records on a socket with
// poll() deadlines. The protocol is `client_session`'s; this file only moves
// bytes. Not for the data path: every call blocks its thread.
//
// Thread: one `blocking_client` per thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "core/buffer.h"
#include "rpc/record.h"
#include "tls/client/client_session.h"
#include "tls/context.h"

namespace rpcgate::client {

// Where a connection attempt stopped.
enum class connect_stage {
    none,       // it worked
    options,    // bad client options (CA/cert/key file)
    connect,    // TCP connect failed or timed out
    probe,      // no usable probe reply (closed, garbage, timeout)
    refused,    // the server refused the probe
    handshake,  // the TLS handshake failed or timed out
};
const char* to_string(connect_stage s) noexcept;

class blocking_client {
  public:
    blocking_client() = default;
    ~blocking_client();
    // Moves leave the source without a socket.
    blocking_client(blocking_client&& o) noexcept { *this = std::move(o); }
    blocking_client& operator=(blocking_client&& o) noexcept;

    bool ok() const noexcept { return stage_ == connect_stage::none && fd_ >= 0; }
    connect_stage failed_at() const noexcept { return stage_; }
    const std::string& error() const noexcept { return error_; }
    int fd() const noexcept { return fd_; }
    // The protocol state: probe result, TLS session (version, cipher, peer).
    const client_session* session() const noexcept { return sess_.get(); }
    const probe_result& probe() const noexcept { return sess_->probe(); }
    tls::session* tls() const noexcept { return sess_ ? sess_->tls() : nullptr; }
    // Milliseconds each stage took (0 when not reached).
    double connect_ms = 0, probe_ms = 0, handshake_ms = 0;

    // Sends `record` (a framed RPC message) and waits for the next complete
    // record from the server. Returns it, or an empty chain and error().
    core::slice_chain call(core::slice_chain&& record, std::chrono::milliseconds timeout);
    // Waits for the next complete record from the server (calls pipelined
    // with send(): replies come back in any order). Returns it, or an empty
    // chain and error().
    core::slice_chain receive(std::chrono::milliseconds timeout);
    // Sends plaintext (encrypted when TLS is up). False and error() on failure.
    bool send(core::slice_chain&& plain, std::chrono::milliseconds timeout);
    // Sends close_notify (if TLS) and closes the socket.
    void close();

    // Connects and runs the mode's start-up; `host` is a name or address.
    // This form makes (and owns) a client context from `opt`.
    static blocking_client open(const std::string& host, uint16_t port, tls_mode mode,
                                uint32_t prog, uint32_t vers, const tls::client_options& opt,
                                std::chrono::milliseconds timeout);
    // The same with a context the caller made once (loops that open many
    // connections); `ctx` may be null for tls_mode::off and must outlive the client.
    static blocking_client open(const std::string& host, uint16_t port, tls_mode mode,
                                uint32_t prog, uint32_t vers, const tls::context* ctx,
                                std::chrono::milliseconds timeout);

  private:
    bool flush(core::slice_chain& out, std::chrono::steady_clock::time_point deadline);
    // Reads once (waiting up to the deadline), feeds the session, sends what it
    // produced and cuts the plaintext into records_.
    bool pump(std::chrono::steady_clock::time_point deadline);
    bool take_plain(core::slice_chain&& plain);
    blocking_client& failed(connect_stage st, std::string why);

    int fd_ = -1;
    connect_stage stage_ = connect_stage::none;
    std::string error_;
    std::unique_ptr<tls::context> own_ctx_;  // before sess_: outlives it
    std::unique_ptr<client_session> sess_;
    // Plaintext from the server cut into records; records not yet returned.
    std::unique_ptr<rpc::record_reassembler> rr_;
    std::deque<core::slice_chain> records_;
};

// RFC 9289: probe (prog, vers), then TLS 1.3 on the same connection.
inline blocking_client connect_starttls(const std::string& host, uint16_t port, uint32_t prog,
                                        uint32_t vers, const tls::client_options& opt,
                                        std::chrono::milliseconds timeout) {
    return blocking_client::open(host, port, tls_mode::starttls, prog, vers, opt, timeout);
}
// TLS from the first byte (stunnel-style servers, `--implicit-tls` listeners).
inline blocking_client connect_implicit(const std::string& host, uint16_t port,
                                        const tls::client_options& opt,
                                        std::chrono::milliseconds timeout) {
    return blocking_client::open(host, port, tls_mode::implicit, 0, 0, opt, timeout);
}

}  // namespace rpcgate::client
