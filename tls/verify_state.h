// Internal to tls/: what a handshake saw, recorded by the OpenSSL callbacks
// that context.cc installs and read back by session.cc for the outcome flags
// and the error line. Not part of the public API.
//
// Each SSL that a `session` creates carries a pointer to its verify_state in
// the ex_data slot `session_ex_index()`; each SSL_CTX carries its `context`
// in `context_ex_index()`. Callbacks find both from the SSL they are given, so
// nothing here is global except the two indexes.
#pragma once

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <string>

namespace rpcgate::tls {

struct verify_state {
    bool saw_cert = false;        // verification ran: the peer sent a certificate
    bool selfsigned = false;      // the peer's leaf certificate signs itself
    int first_error = X509_V_OK;  // the first verification error, if any
    int error_depth = -1;         // ... and where in the chain it was
    std::string leaf_subject;     // RFC 2253 subject of the leaf, kept for audit lines
    int alert_sent = -1;          // last alert description we sent (-1: none)
    int alert_received = -1;      // last alert description the peer sent

    // From the verify callback: one call per certificate and per error.
    void record(int preverify_ok, X509_STORE_CTX* store);
    // From the info callback (`ret` as OpenSSL passes it: level << 8 | desc).
    void record_alert(bool received, int ret);
};

int context_ex_index();  // SSL_CTX ex_data slot holding the `context*`
int session_ex_index();  // SSL ex_data slot holding the `verify_state*`
bool is_ip_address(const std::string& s);
// "CN=client1,O=rpcgate test" (RFC 2253), or "" for null.
std::string subject_text(const X509* cert);
// Self-signed: issuer == subject and the signature verifies with its own key.
bool is_self_signed(X509* cert);

}  // namespace rpcgate::tls
