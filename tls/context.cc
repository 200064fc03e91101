#include "tls/context.h"

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "tls/ktls.h"
#include "tls/verify_state.h"

namespace rpcgate::tls {
namespace {

// ALPN protocol list in wire form: length-prefixed names (RFC 7301 §3.1).
constexpr unsigned char alpn_wire[] = {6, 's', 'u', 'n', 'r', 'p', 'c'};

context* context_of(SSL* ssl) {
    return static_cast<context*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), context_ex_index()));
}

bool offers_sunrpc(const unsigned char* in, unsigned int inlen) {
    for (unsigned int i = 0; i < inlen;) {
        unsigned int n = in[i];
        if (n == 0 || i + 1 + n > inlen) return false;  // malformed: OpenSSL checks too
        if (n == sizeof(alpn_wire) - 1 && std::memcmp(in + i + 1, alpn_wire + 1, n) == 0) {
            return true;
        }
        i += 1 + n;
    }
    return false;
}

// Called only when the client sent the ALPN extension. RFC 7301 §3.2: no
// common protocol is a fatal no_application_protocol alert, which is what
// SSL_TLSEXT_ERR_ALERT_FATAL makes OpenSSL send.
int alpn_select(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
    if (!offers_sunrpc(in, inlen)) return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = alpn_wire + 1;
    *outlen = sizeof(alpn_wire) - 1;
    return SSL_TLSEXT_ERR_OK;
}

// The ALPN callback is not called when the extension is absent, so the
// strict policy is enforced on the ClientHello itself.
int client_hello(SSL* ssl, int* alert, void*) {
    const context* c = context_of(ssl);
    if (!c || !c->server().alpn_strict) return SSL_CLIENT_HELLO_SUCCESS;
    const unsigned char* ext = nullptr;
    size_t len = 0;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext,
                                  &len)) {
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    *alert = SSL_AD_NO_APPLICATION_PROTOCOL;
    ERR_raise_data(ERR_LIB_SSL, SSL_R_NO_APPLICATION_PROTOCOL, "client offered no ALPN");
    return SSL_CLIENT_HELLO_ERROR;
}

// Records what verification saw for the session's flags and audit line. A
// server that does not require a client certificate lets the handshake go on
// whatever the verdict (opportunistic: the flags tell the policy what it got).
int verify_peer(int preverify_ok, X509_STORE_CTX* store) {
    auto* ssl =
        static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
    if (!ssl) return preverify_ok;
    if (auto* st = static_cast<verify_state*>(SSL_get_ex_data(ssl, session_ex_index()))) {
        st->record(preverify_ok, store);
    }
    const context* c = context_of(ssl);
    if (c && c->is_server() && !c->server().require_client_cert) return 1;
    return preverify_ok;
}

void note_alert(const SSL* ssl, int where, int ret) {
    if (!(where & SSL_CB_ALERT)) return;
    if (auto* st = static_cast<verify_state*>(SSL_get_ex_data(ssl, session_ex_index()))) {
        st->record_alert((where & SSL_CB_READ) != 0, ret);
    }
}

std::string file_error(const char* what, const std::string& path) {
    std::string e = what;
    e += " '";
    e += path;
    e += "': ";
    e += last_error();
    return e;
}

// Settings both roles share: TLS 1.3 floor, kTLS wanted, no 0-RTT, the verify
// and alert hooks, and a way back from the SSL_CTX to this context.
bool common_setup(SSL_CTX* ctx, context* self, int min_version, const cipher_options& c,
                  std::string* err) {
    if (!SSL_CTX_set_min_proto_version(ctx, min_version)) {
        *err = "min_version: " + last_error();
        return false;
    }
    if (c.max_version && !SSL_CTX_set_max_proto_version(ctx, c.max_version)) {
        *err = "max_version: " + last_error();
        return false;
    }
    if (!c.ciphersuites.empty() && !check_ciphersuites(c.ciphersuites, err)) return false;
    // The keylog hook hands the TLS 1.3 traffic secrets to the kernel (kTLS)
    // or to the session's own record layer; installed before any handshake.
    if (!c.openssl_records) ktls::prepare_context(ctx);
    if (!c.ciphersuites.empty() && SSL_CTX_set_ciphersuites(ctx, c.ciphersuites.c_str()) != 1) {
        *err = "TLS 1.3 cipher suites '" + c.ciphersuites + "': " + last_error();
        return false;
    }
    if (!c.cipher_list.empty() && SSL_CTX_set_cipher_list(ctx, c.cipher_list.c_str()) != 1) {
        *err = "TLS 1.2 cipher list '" + c.cipher_list + "': " + last_error();
        return false;
    }
    if (!c.groups.empty() && SSL_CTX_set1_groups_list(ctx, c.groups.c_str()) != 1) {
        *err = "key exchange groups '" + c.groups + "': " + last_error();
        return false;
    }
    SSL_CTX_set_ex_data(ctx, context_ex_index(), self);
    // kTLS needs a socket BIO; with the session's memory BIOs OpenSSL simply
    // does not engage it. The flag is set so that a socket hand-off can.
    SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_max_early_data(ctx, 0);
    SSL_CTX_set_recv_max_early_data(ctx, 0);
    SSL_CTX_set_info_callback(ctx, note_alert);
    return true;
}

bool load_identity(SSL_CTX* ctx, const std::string& cert, const std::string& key,
                   std::string* err) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
        *err = file_error("cert_file", cert);
        return false;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
        *err = file_error("key_file", key);
        return false;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        *err = "key_file '" + key + "' does not match cert_file '" + cert + "': " + last_error();
        return false;
    }
    return true;
}

}  // namespace

bool cpu_has_aes() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
#elif defined(__aarch64__)
    return (getauxval(AT_HWCAP) & HWCAP_AES) != 0;
#else
    return false;
#endif
}

std::string preferred_ciphersuites() {
    return cpu_has_aes()
               ? "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
               : "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384";
}

std::vector<std::string> known_ciphersuites() {
    std::vector<std::string> names;
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_method()), SSL_CTX_free);
    std::unique_ptr<SSL, decltype(&SSL_free)> ssl(ctx ? SSL_new(ctx.get()) : nullptr, SSL_free);
    if (!ssl) return names;
    // TLS 1.3 suites live at code points 0x13,0x01 onwards (RFC 8446 §B.4).
    for (unsigned lo = 1; lo < 256; ++lo) {
        const unsigned char id[2] = {0x13, static_cast<unsigned char>(lo)};
        const SSL_CIPHER* c = SSL_CIPHER_find(ssl.get(), id);
        if (c && std::strcmp(SSL_CIPHER_get_version(c), "TLSv1.3") == 0)
            names.emplace_back(SSL_CIPHER_standard_name(c));
    }
    return names;
}

bool check_ciphersuites(const std::string& suites, std::string* err) {
    static const std::vector<std::string> known = known_ciphersuites();
    for (size_t start = 0; start <= suites.size();) {
        const size_t end = std::min(suites.find(':', start), suites.size());
        std::string name = suites.substr(start, end - start);
        start = end + 1;
        // OpenSSL's list syntax allows blanks around a name, and empty entries.
        name.erase(0, name.find_first_not_of(" \t"));
        name.erase(name.find_last_not_of(" \t") + 1);
        if (name.empty() || std::find(known.begin(), known.end(), name) != known.end()) continue;
        std::string list;
        for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
        *err = "unknown TLS 1.3 cipher suite '" + name + "' (this OpenSSL knows: " + list + ")";
        return false;
    }
    return true;
}

bool is_ip_address(const std::string& s) {
    unsigned char buf[sizeof(in6_addr)];
    return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

int context_ex_index() {
    static const int idx = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return idx;
}

int session_ex_index() {
    static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return idx;
}

context::~context() {
    SSL_CTX_free(ctx_);
}

std::unique_ptr<context> context::make_server(const server_options& opt, std::string* err) {
    std::string scratch;
    if (!err) err = &scratch;
    ERR_clear_error();
    std::unique_ptr<context> c(new context());
    c->server_ = true;
    c->sopt_ = opt;
    c->ctx_ = SSL_CTX_new(TLS_server_method());
    if (!c->ctx_) {
        *err = "SSL_CTX_new: " + last_error();
        return nullptr;
    }
    SSL_CTX* ctx = c->ctx_;
    if (!common_setup(ctx, c.get(), opt.min_version, opt.ciphers, err)) return nullptr;
    if (!opt.ciphers.ciphersuites.empty() || !opt.ciphers.cipher_list.empty())
        SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (opt.cert_file.empty() || opt.key_file.empty()) {
        *err = "server: cert_file and key_file are required";
        return nullptr;
    }
    if (!load_identity(ctx, opt.cert_file, opt.key_file, err)) return nullptr;

    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, nullptr);
    SSL_CTX_set_client_hello_cb(ctx, client_hello, nullptr);
    if (!opt.session_tickets) {
        // SSL_OP_NO_TICKET alone still sends stateful TLS 1.3 tickets; asking
        // for none and keeping no cache means no resumption state at all.
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }

    if (!opt.ca_file.empty()) {
        if (SSL_CTX_load_verify_file(ctx, opt.ca_file.c_str()) != 1) {
            *err = file_error("ca_file", opt.ca_file);
            return nullptr;
        }
        // CertificateRequest names the acceptable CAs so a client can pick a cert.
        if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(opt.ca_file.c_str())) {
            SSL_CTX_set_client_CA_list(ctx, names);
        }
    }
    if (!opt.ca_dir.empty() && SSL_CTX_load_verify_dir(ctx, opt.ca_dir.c_str()) != 1) {
        *err = file_error("ca_dir", opt.ca_dir);
        return nullptr;
    }
    if (!opt.crl_file.empty()) {
        X509_STORE* store = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP* lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (!lookup || X509_load_crl_file(lookup, opt.crl_file.c_str(), X509_FILETYPE_PEM) <= 0) {
            *err = file_error("crl_file", opt.crl_file);
            return nullptr;
        }
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    }
    if (opt.require_client_cert && opt.ca_file.empty() && opt.ca_dir.empty()) {
        *err = "server: require_client_cert needs ca_file or ca_dir";
        return nullptr;
    }
    // Always ask (RFC 9289 §5.2.3 lets the server judge by policy afterwards).
    int mode = SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE;
    if (opt.require_client_cert) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(ctx, mode, verify_peer);
    return c;
}

std::unique_ptr<context> context::make_client(const client_options& opt, std::string* err) {
    std::string scratch;
    if (!err) err = &scratch;
    ERR_clear_error();
    std::unique_ptr<context> c(new context());
    c->server_ = false;
    c->copt_ = opt;
    c->ctx_ = SSL_CTX_new(TLS_client_method());
    if (!c->ctx_) {
        *err = "SSL_CTX_new: " + last_error();
        return nullptr;
    }
    SSL_CTX* ctx = c->ctx_;
    if (!common_setup(ctx, c.get(), opt.min_version, opt.ciphers, err)) return nullptr;
    // Returns 0 on success, unlike most of OpenSSL.
    if (SSL_CTX_set_alpn_protos(ctx, alpn_wire, sizeof(alpn_wire)) != 0) {
        *err = "ALPN: " + last_error();
        return nullptr;
    }
    if (!opt.cert_file.empty() || !opt.key_file.empty()) {
        if (!load_identity(ctx, opt.cert_file, opt.key_file, err)) return nullptr;
    }
    if (opt.ca_file.empty()) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, verify_peer);
        return c;
    }
    if (SSL_CTX_load_verify_file(ctx, opt.ca_file.c_str()) != 1) {
        *err = file_error("ca_file", opt.ca_file);
        return nullptr;
    }
    if (!opt.server_name.empty()) {
        X509_VERIFY_PARAM* param = SSL_CTX_get0_param(ctx);
        int ok;
        if (is_ip_address(opt.server_name)) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(param, opt.server_name.c_str());
        } else {
            X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_WILDCARDS);
            ok = X509_VERIFY_PARAM_set1_host(param, opt.server_name.c_str(), 0);
        }
        if (ok != 1) {
            *err = "server_name '" + opt.server_name + "': " + last_error();
            return nullptr;
        }
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_peer);
    return c;
}

std::string last_error() {
    // Reason strings are loaded by the first SSL_CTX_new; a caller may ask earlier.
    static const bool strings_loaded =
        OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, nullptr);
    (void)strings_loaded;
    std::string out;
    unsigned long e;
    const char* data = nullptr;
    int flags = 0;
    while ((e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) != 0) {
        const char* reason = ERR_reason_error_string(e);
        std::string part = reason ? reason : "error " + std::to_string(ERR_GET_REASON(e));
        if (data && (flags & ERR_TXT_STRING) && *data) {
            part += " (";
            part += data;
            part += ")";
        }
        if (out.find(part) != std::string::npos) continue;
        if (!out.empty()) out += "; ";
        out += part;
    }
    if (out.empty()) out = "unknown error";
    return out;
}

}  // namespace rpcgate::tls
