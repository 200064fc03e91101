// Test fixtures for the RFC 9289 client role: a throw-away PKI and a tiny
// blocking RPC-with-TLS server built on `tls::session` (the server role), so
// the client library can be tested end to end before, and independently of,
// the gateway. Tests only: every call blocks; the server runs one thread and
// serves connections one after another.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

namespace rpcgate::client::testing {

// A CA, a server certificate for "localhost" / 127.0.0.1 and a client
// certificate, all EC P-256, written as PEM files into `dir`.
struct test_pki {
    std::string dir;
    std::string ca_cert, ca_key;
    std::string server_cert, server_key;
    std::string client_cert, client_key;
};
// Creates a fresh directory under TMPDIR and the files in it; "" dir on error.
test_pki make_test_pki();
void remove_test_pki(const test_pki& pki);

// How the test server answers.
enum class server_behavior {
    starttls,         // STARTTLS, TLS 1.3, then answer NULL calls over TLS
    implicit,         // TLS from the first byte, then NULL calls
    rejectedcred,     // AUTH_ERROR / AUTH_REJECTEDCRED (nfs-ganesha 4.3)
    no_token,         // MSG_ACCEPTED SUCCESS with an empty verifier
    close_on_probe,   // close without answering
    silent_over_tls,  // STARTTLS and the handshake, then never answer
    close_at_call,    // STARTTLS and the handshake, then close at the first call
                      // (as a gateway whose backend is unreachable)
    not_routed,       // STARTTLS and the handshake, then PROG_UNAVAIL to every call
};

class tls_test_server {
  public:
    tls_test_server(const test_pki& pki, server_behavior b);
    ~tls_test_server();
    uint16_t port() const noexcept { return port_; }
    // Connections whose handshake completed / NULL calls answered over TLS.
    unsigned handshakes() const noexcept { return handshakes_.load(); }
    unsigned null_calls() const noexcept { return nulls_.load(); }

  private:
    void run();
    void serve(int fd);

    test_pki pki_;
    server_behavior behavior_;
    int listen_fd_ = -1;
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<unsigned> handshakes_{0}, nulls_{0};
    std::thread thread_;
};

}  // namespace rpcgate::client::testing
