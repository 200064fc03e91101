// TLS contexts for RPC-with-TLS (RFC 9289): OpenSSL 3 SSL_CTX set-up.
//
// A `context` wraps one SSL_CTX configured for one role:
//   server: TLS 1.3 only (RFC 9289 §5.1: "MUST use TLS 1.3 or later"), ALPN
//           "sunrpc" (a client offering ALPN without "sunrpc" is refused; a
//           client offering none is accepted unless `alpn_strict` — the Linux
//           kernel client via tlshd sends no ALPN), no 0-RTT, session tickets
//           off unless asked for, a client certificate requested on every
//           handshake and verified against the CA (+ CRL) when one is given;
//           `require_client_cert` (mtls) refuses a handshake without a valid one.
//   client: TLS 1.3 only, ALPN "sunrpc" offered, server certificate verified
//           against the CA with the expected name (DNS-ID, no wildcard
//           matching; an IP address checks the IP SAN), optional client
//           certificate.
// A context is immutable after make_*; any thread may create sessions from
// it (SSL_CTX is thread-safe for that). Reloading makes a new context.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace rpcgate::tls {

inline constexpr const char* alpn_sunrpc = "sunrpc";

// Which ciphers and key exchange a context allows, in order of preference.
// Empty strings keep OpenSSL's defaults. Both roles.
struct cipher_options {
    std::string ciphersuites;  // TLS 1.3 (SSL_CTX_set_ciphersuites), "A:B:C"
    std::string cipher_list;   // TLS 1.2 (SSL_CTX_set_cipher_list), with min_version 1.2
    std::string groups;        // key exchange groups (SSL_CTX_set1_groups_list), "X25519:P-256"
    int max_version = 0;       // 0: the highest OpenSSL has; TLS1_2_VERSION for evaluation
    // TLS 1.3 data records through SSL_read/SSL_write instead of rpcgate's own
    // record layer (tls/record_layer.h): for comparison, or a peer that needs it.
    bool openssl_records = false;
};

// The TLS 1.3 suites rpcgate prefers by default: AES-128-GCM first where the
// CPU has AES instructions (the cheapest suite there, and the one kTLS and
// every NIC TLS offload engine support), else ChaCha20-Poly1305 first.
std::string preferred_ciphersuites();
// Every TLS 1.3 cipher suite this OpenSSL knows, by its RFC 8446 name, in
// code point order ("TLS_AES_128_GCM_SHA256", ...).
std::vector<std::string> known_ciphersuites();
// Checks a TLS 1.3 suite list ("A:B:C", SSL_CTX_set_ciphersuites syntax):
// false, and a line naming the first unknown suite, when a name is not one of
// known_ciphersuites(). OpenSSL itself drops an unknown name silently and
// fails only when no name is known, so a typo would quietly narrow the list.
bool check_ciphersuites(const std::string& suites, std::string* err);
// True when this CPU has AES and carry-less multiply instructions (AES-NI
// and PCLMULQDQ on x86-64, the AES extension on AArch64).
bool cpu_has_aes() noexcept;

struct server_options {
    std::string cert_file;             // PEM, may hold the chain
    std::string key_file;              // PEM
    std::string ca_file;               // CA bundle for client certificates ("" = none)
    std::string ca_dir;                // hashed CA directory ("" = none)
    std::string crl_file;              // PEM CRL(s), checked for the whole chain ("" = none)
    bool require_client_cert = false;  // mtls
    bool alpn_strict = false;          // refuse clients that offer no ALPN
    bool session_tickets = false;
    // Evaluation only (NIC offload of 1.3 is limited): TLS1_2_VERSION allows 1.2.
    int min_version = TLS1_3_VERSION;
    // Suites and groups; with `ciphersuites` set the server's order wins
    // (SSL_OP_CIPHER_SERVER_PREFERENCE).
    cipher_options ciphers;
};

struct client_options {
    std::string ca_file;    // "" = do not verify the server (logged loudly by callers)
    std::string cert_file;  // client certificate for mtls ("" = none)
    std::string key_file;
    std::string server_name;    // DNS name or IP address to verify and send as SNI
    bool require_alpn = false;  // refuse a server that selects no ALPN
    int min_version = TLS1_3_VERSION;
    cipher_options ciphers;  // offered in this order
};

class context {
  public:
    ~context();
    context(const context&) = delete;
    context& operator=(const context&) = delete;

    // Return null and a one-line reason (file, OpenSSL error) on failure.
    static std::unique_ptr<context> make_server(const server_options& opt, std::string* err);
    static std::unique_ptr<context> make_client(const client_options& opt, std::string* err);

    bool is_server() const noexcept { return server_; }
    SSL_CTX* native() const noexcept { return ctx_; }
    const server_options& server() const noexcept { return sopt_; }
    const client_options& client() const noexcept { return copt_; }

  private:
    context() = default;
    SSL_CTX* ctx_ = nullptr;
    bool server_ = false;
    server_options sopt_;
    client_options copt_;
};

// The last OpenSSL error(s) as one line, clearing the queue.
std::string last_error();

}  // namespace rpcgate::tls
