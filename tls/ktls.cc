#include "tls/ktls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace rpcgate::tls::ktls {
namespace {

#ifndef SOL_TLS
constexpr int SOL_TLS = 282;
#endif
#ifndef TCP_ULP
constexpr int TCP_ULP = 31;
#endif
// OpenSSL 3.0's BIO_CTRL_SET_KTLS (include/internal/bio.h, not public):
// num = 1 for TX, 0 for RX; ptr = the kernel's crypto_info.
constexpr int bio_ctrl_set_ktls = 72;

// Bytes a shard had already read off the socket, served to OpenSSL before
// the socket BIO below it. A filter so that every other BIO control (kTLS
// among them) reaches the socket BIO untouched.
struct prefix {
    std::string bytes;
    size_t off = 0;
    bool empty() const noexcept { return off == bytes.size(); }
};

int prefix_read(BIO* b, char* out, size_t len, size_t* got) {
    auto* p = static_cast<prefix*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    if (!p->empty()) {
        size_t n = std::min(len, p->bytes.size() - p->off);
        std::memcpy(out, p->bytes.data() + p->off, n);
        p->off += n;
        *got = n;
        return 1;
    }
    BIO* next = BIO_next(b);
    if (!next) return 0;
    int r = BIO_read_ex(next, out, len, got);
    BIO_copy_next_retry(b);
    return r;
}

int prefix_write(BIO* b, const char* data, size_t len, size_t* put) {
    BIO* next = BIO_next(b);
    if (!next) return 0;
    BIO_clear_retry_flags(b);
    int r = BIO_write_ex(next, data, len, put);
    BIO_copy_next_retry(b);
    return r;
}

long prefix_ctrl(BIO* b, int cmd, long num, void* ptr) {
    auto* p = static_cast<prefix*>(BIO_get_data(b));
    BIO* next = BIO_next(b);
    switch (cmd) {
        case BIO_CTRL_PENDING:
            return static_cast<long>(p->bytes.size() - p->off) +
                   (next ? BIO_ctrl(next, cmd, num, ptr) : 0);
        case bio_ctrl_set_ktls:
            // The kernel would decrypt from the socket's next byte; bytes
            // still here would be skipped. Refused: OpenSSL stays in userspace.
            if (num == 0 && !p->empty()) return 0;
            break;
        default:
            break;
    }
    return next ? BIO_ctrl(next, cmd, num, ptr) : 0;
}

int prefix_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

int prefix_destroy(BIO* b) {
    delete static_cast<prefix*>(BIO_get_data(b));
    BIO_set_data(b, nullptr);
    return 1;
}

const BIO_METHOD* prefix_method() {
    static BIO_METHOD* const m = [] {
        BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_FILTER, "rpcgate early bytes");
        if (!bm) return bm;
        BIO_meth_set_read_ex(bm, prefix_read);
        BIO_meth_set_write_ex(bm, prefix_write);
        BIO_meth_set_ctrl(bm, prefix_ctrl);
        BIO_meth_set_create(bm, prefix_create);
        BIO_meth_set_destroy(bm, prefix_destroy);
        return bm;
    }();
    return m;
}

std::string openssl_errors() {
    std::string s;
    unsigned long e;
    char buf[256];
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        if (!s.empty()) s += "; ";
        s += buf;
    }
    return s;
}

// Per SSL (ex_data): the application traffic secrets the keylog callback
// reported, until finish() used them, and whether it installed RX.
struct secrets {
    uint8_t client[EVP_MAX_MD_SIZE];
    uint8_t server[EVP_MAX_MD_SIZE];
    size_t client_len = 0;
    size_t server_len = 0;
    bool rx_installed = false;
    void wipe() noexcept {
        OPENSSL_cleanse(client, sizeof(client));
        OPENSSL_cleanse(server, sizeof(server));
        client_len = server_len = 0;
    }
};

void free_secrets(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
    auto* s = static_cast<secrets*>(ptr);
    if (!s) return;
    s->wipe();
    delete s;
}

int secrets_index() {
    static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_secrets);
    return idx;
}

secrets* secrets_of(const SSL* ssl) {
    return static_cast<secrets*>(SSL_get_ex_data(ssl, secrets_index()));
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// NSS key log format (what SSL_CTX_set_keylog_callback hands over):
// "LABEL <client_random hex> <secret hex>". Only the two TLS 1.3
// application traffic secrets are kept, and only for SSLs attach_socket set up.
void keylog(const SSL* ssl, const char* line) {
    secrets* s = secrets_of(ssl);
    if (!s) return;
    std::string_view l(line);
    uint8_t* out = nullptr;
    size_t* out_len = nullptr;
    if (l.rfind("CLIENT_TRAFFIC_SECRET_0 ", 0) == 0) {
        out = s->client;
        out_len = &s->client_len;
    } else if (l.rfind("SERVER_TRAFFIC_SECRET_0 ", 0) == 0) {
        out = s->server;
        out_len = &s->server_len;
    } else {
        return;
    }
    size_t sp = l.rfind(' ');
    std::string_view hex = l.substr(sp + 1);
    if (hex.size() % 2 || hex.size() / 2 > EVP_MAX_MD_SIZE) return;
    for (size_t i = 0; i < hex.size() / 2; ++i) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return;
        out[i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    *out_len = hex.size() / 2;
}

// HKDF-Expand-Label(secret, label, "", len) of RFC 8446 §7.1.
bool expand_label(const EVP_MD* md, const uint8_t* secret, size_t secret_len,
                  std::string_view label, uint8_t* out, size_t len) {
    uint8_t info[2 + 1 + 255 + 1];
    size_t n = 0;
    std::string full = "tls13 " + std::string(label);
    info[n++] = static_cast<uint8_t>(len >> 8);
    info[n++] = static_cast<uint8_t>(len);
    info[n++] = static_cast<uint8_t>(full.size());
    std::memcpy(info + n, full.data(), full.size());
    n += full.size();
    info[n++] = 0;  // empty context
    EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
    EVP_KDF_CTX* kctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
    int hmode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                         const_cast<char*>(EVP_MD_get0_name(md)), 0),
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &hmode),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret),
                                          secret_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
        OSSL_PARAM_construct_end(),
    };
    bool ok = kctx && EVP_KDF_derive(kctx, out, len, params) == 1;
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return ok;
}

// The kernel's crypto_info for one TLS 1.3 direction at record sequence 0:
// the 12-byte IV is salt (4) + iv (8) for AES-GCM, all iv for ChaCha20
// (the layout OpenSSL's own ktls_configure_crypto uses for TLS 1.2/1.3 TX).
union crypto_info_any {
    tls_crypto_info info;
    tls12_crypto_info_aes_gcm_128 gcm128;
    tls12_crypto_info_aes_gcm_256 gcm256;
    tls12_crypto_info_chacha20_poly1305 chacha;
};

// AES-GCM crypto_info: the 12-byte IV is salt (4) || iv (8).
template <typename T>
void fill_gcm(T& g, const uint8_t* key, const uint8_t* iv) {
    std::memcpy(g.key, key, sizeof(g.key));
    std::memcpy(g.salt, iv, sizeof(g.salt));
    std::memcpy(g.iv, iv + sizeof(g.salt), sizeof(g.iv));
}
template <typename T>
void split_gcm(const T& g, uint8_t* key, size_t* key_len, uint8_t* iv) {
    std::memcpy(key, g.key, sizeof(g.key));
    *key_len = sizeof(g.key);
    std::memcpy(iv, g.salt, sizeof(g.salt));
    std::memcpy(iv + sizeof(g.salt), g.iv, sizeof(g.iv));
}

// The AEAD key and IV of one traffic secret (RFC 8446 §7.3) and the
// kernel's crypto_info for them at record sequence 0. `suite` is
// SSL_CIPHER_get_id's TLS 1.3 suite; false for one the kernel lacks.
bool crypto_info_for(uint32_t suite, const EVP_MD* md, const uint8_t* secret, size_t secret_len,
                     crypto_info_any& ci, socklen_t& ci_len) {
    std::memset(&ci, 0, sizeof(ci));
    size_t key_len;
    uint8_t key[32], iv[12];
    switch (suite) {
        case TLS1_3_CK_AES_128_GCM_SHA256:
            ci.info.cipher_type = TLS_CIPHER_AES_GCM_128;
            key_len = TLS_CIPHER_AES_GCM_128_KEY_SIZE;
            ci_len = sizeof(ci.gcm128);
            break;
        case TLS1_3_CK_AES_256_GCM_SHA384:
            ci.info.cipher_type = TLS_CIPHER_AES_GCM_256;
            key_len = TLS_CIPHER_AES_GCM_256_KEY_SIZE;
            ci_len = sizeof(ci.gcm256);
            break;
        case TLS1_3_CK_CHACHA20_POLY1305_SHA256:
            ci.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
            key_len = TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE;
            ci_len = sizeof(ci.chacha);
            break;
        default:
            return false;  // AES-CCM: not worth it
    }
    ci.info.version = TLS_1_3_VERSION;
    bool ok = expand_label(md, secret, secret_len, "key", key, key_len) &&
              expand_label(md, secret, secret_len, "iv", iv, sizeof(iv));
    if (ok) {
        switch (ci.info.cipher_type) {
            case TLS_CIPHER_AES_GCM_128:
                fill_gcm(ci.gcm128, key, iv);
                break;
            case TLS_CIPHER_AES_GCM_256:
                fill_gcm(ci.gcm256, key, iv);
                break;
            default:
                std::memcpy(ci.chacha.key, key, key_len);
                std::memcpy(ci.chacha.iv, iv, 12);
                break;
        }
        // rec_seq stays 0: the first record under these keys is next.
    }
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(iv, sizeof(iv));
    return ok;
}

// Installs `secret`'s keys as the socket's `dir` (TLS_RX / TLS_TX); errno on failure.
bool install(int fd, int dir, uint32_t suite, const EVP_MD* md, const uint8_t* secret,
             size_t secret_len) {
    crypto_info_any ci;
    socklen_t ci_len = 0;
    bool ok = crypto_info_for(suite, md, secret, secret_len, ci, ci_len);
    if (!ok) errno = EOPNOTSUPP;
    int saved = errno;
    if (ok) {
        ok = ::setsockopt(fd, SOL_TLS, dir, &ci, ci_len) == 0;
        saved = errno;
    }
    OPENSSL_cleanse(&ci, sizeof(ci));
    errno = saved;
    return ok;
}

}  // namespace

bool attach_socket(SSL* ssl, int fd, std::string_view early, std::string* err) {
    // The caller's thread drives many handshakes: a socket BIO must never
    // block it (io_uring, which a shard uses later, does not mind).
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)) {
        if (err) *err = std::string("O_NONBLOCK: ") + std::strerror(errno);
        return false;
    }
    // BIO_new_socket also puts the "tls" ULP on the socket (OpenSSL's
    // ktls_enable); a kernel without kTLS refuses it and nothing changes.
    // Two socket BIOs on one fd: OpenSSL keeps the kTLS flags per BIO, TX on
    // the wbio and RX on the rbio, which is what engaged() reads back.
    BIO* wb = BIO_new_socket(fd, BIO_NOCLOSE);
    BIO* rs = wb ? BIO_new_socket(fd, BIO_NOCLOSE) : nullptr;
    BIO* rb = rs;
    if (rs && !early.empty()) {
        const BIO_METHOD* m = prefix_method();
        BIO* f = m ? BIO_new(m) : nullptr;
        if (f) {
            BIO_set_data(f, new prefix{std::string(early), 0});
            rb = BIO_push(f, rs);
        } else {
            rb = nullptr;
            BIO_free(rs);
        }
    }
    if (!rb) {
        BIO_free(wb);
        if (err) *err = "socket BIO: " + openssl_errors();
        return false;
    }
    SSL_set_bio(ssl, rb, wb);
    prepare_context(SSL_get_SSL_CTX(ssl));
    if (!secrets_of(ssl)) SSL_set_ex_data(ssl, secrets_index(), new secrets());
    // Read-ahead would pull the first application records into OpenSSL's
    // buffer with the client's Finished; the kernel must find them in the
    // socket instead. Off, OpenSSL reads a header, then exactly one record.
    SSL_set_read_ahead(ssl, 0);
    return true;
}

step handshake_step(SSL* ssl) {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    if (r == 1) return step::done;
    switch (SSL_get_error(ssl, r)) {
        case SSL_ERROR_WANT_READ:
            return step::want_read;
        case SSL_ERROR_WANT_WRITE:
            return step::want_write;
        default:
            return step::error;
    }
}

directions engaged(SSL* ssl) {
    directions d;
    if (BIO* w = SSL_get_wbio(ssl)) d.tx = BIO_get_ktls_send(w);
    if (BIO* r = SSL_get_rbio(ssl)) d.rx = BIO_get_ktls_recv(r);
    if (secrets* s = secrets_of(ssl)) d.rx = d.rx || s->rx_installed;
    return d;
}

bool prepare_context(SSL_CTX* ctx) {
    auto cb = SSL_CTX_get_keylog_callback(ctx);
    if (cb == keylog) return true;
    if (cb) return false;
    SSL_CTX_set_keylog_callback(ctx, keylog);
    return true;
}

directions finish(SSL* ssl, int fd, traffic_secrets* keep) {
    directions d = engaged(ssl);
    secrets* s = secrets_of(ssl);
    if (!s) return d;
    const bool server = SSL_is_server(ssl);
    const uint8_t* peer = server ? s->client : s->server;
    size_t peer_len = server ? s->client_len : s->server_len;
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl);
    const EVP_MD* md = c ? SSL_CIPHER_get_handshake_digest(c) : nullptr;
    uint32_t suite = c ? SSL_CIPHER_get_id(c) : 0;
    // Nothing of the socket's byte stream may sit in userspace: not in
    // OpenSSL (a record read ahead, plaintext not yet returned) and not in
    // the early bytes a shard handed over.
    BIO* rb = SSL_get_rbio(ssl);
    bool drained = !SSL_has_pending(ssl) && (!rb || BIO_ctrl_pending(rb) == 0);
    if (!d.rx && d.tx && SSL_version(ssl) == TLS1_3_VERSION && peer_len > 0 && md && drained &&
        SSL_is_init_finished(ssl))
        s->rx_installed = d.rx = install(fd, TLS_RX, suite, md, peer, peer_len);
    if (keep) keep_secrets(ssl, keep);
    s->wipe();
    return d;
}

void track_secrets(SSL* ssl) {
    if (!secrets_of(ssl)) SSL_set_ex_data(ssl, secrets_index(), new secrets());
}

bool keep_secrets(SSL* ssl, traffic_secrets* keep) {
    secrets* s = secrets_of(ssl);
    if (!s) return false;
    const bool server = SSL_is_server(ssl);
    const uint8_t* peer = server ? s->client : s->server;
    size_t peer_len = server ? s->client_len : s->server_len;
    const uint8_t* own = server ? s->server : s->client;
    size_t own_len = server ? s->server_len : s->client_len;
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl);
    const EVP_MD* md = c ? SSL_CIPHER_get_handshake_digest(c) : nullptr;
    bool ok = SSL_version(ssl) == TLS1_3_VERSION && md && peer_len > 0 && peer_len == own_len;
    if (ok) {
        keep->wipe();
        keep->md_ = md;
        keep->suite_ = SSL_CIPHER_get_id(c);
        keep->len_ = peer_len;
        keep->rx_gen_ = keep->tx_gen_ = 0;
        std::memcpy(keep->rx_, peer, peer_len);
        std::memcpy(keep->tx_, own, own_len);
    }
    s->wipe();
    return ok;
}

// ---- traffic_secrets ----

traffic_secrets::~traffic_secrets() {
    wipe();
}

void traffic_secrets::wipe() noexcept {
    OPENSSL_cleanse(rx_, sizeof(rx_));
    OPENSSL_cleanse(tx_, sizeof(tx_));
    len_ = 0;
}

void traffic_secrets::save(moved_state& st) const {
    st.suite = suite_;
    st.tx_secret.assign(reinterpret_cast<const char*>(tx_), len_);
    st.rx_secret.assign(reinterpret_cast<const char*>(rx_), len_);
    st.tx_generation = tx_gen_;
    st.rx_generation = rx_gen_;
}

bool traffic_secrets::restore(const moved_state& st) {
    // The suite names its hash (RFC 8446 B.4); the secrets are that long.
    const EVP_MD* md = nullptr;
    switch (st.suite) {
        case TLS1_3_CK_AES_128_GCM_SHA256:
        case TLS1_3_CK_CHACHA20_POLY1305_SHA256:
        case TLS1_3_CK_AES_128_CCM_SHA256:
        case TLS1_3_CK_AES_128_CCM_8_SHA256:
            md = EVP_sha256();
            break;
        case TLS1_3_CK_AES_256_GCM_SHA384:
            md = EVP_sha384();
            break;
        default:
            return false;
    }
    const size_t len = static_cast<size_t>(EVP_MD_get_size(md));
    if (st.tx_secret.size() != len || st.rx_secret.size() != len) return false;
    wipe();
    md_ = md;
    suite_ = st.suite;
    len_ = len;
    std::memcpy(tx_, st.tx_secret.data(), len);
    std::memcpy(rx_, st.rx_secret.data(), len);
    tx_gen_ = st.tx_generation;
    rx_gen_ = st.rx_generation;
    return true;
}

// RFC 8446 §7.2: application_traffic_secret_N+1 =
//     HKDF-Expand-Label(application_traffic_secret_N, "traffic upd", "", Hash.length)
bool traffic_secrets::advance(uint8_t* secret) {
    uint8_t next[EVP_MAX_MD_SIZE];
    bool ok = valid() && expand_label(md_, secret, len_, "traffic upd", next, len_);
    if (ok) std::memcpy(secret, next, len_);
    OPENSSL_cleanse(next, sizeof(next));
    return ok;
}

bool traffic_secrets::advance_rx() {
    if (!advance(rx_)) return false;
    ++rx_gen_;
    return true;
}

bool traffic_secrets::advance_tx() {
    if (!advance(tx_)) return false;
    ++tx_gen_;
    return true;
}

bool traffic_secrets::rekey_rx(int fd) {
    uint8_t next[EVP_MAX_MD_SIZE];
    std::memcpy(next, rx_, len_);
    bool ok = advance(next) && install(fd, TLS_RX, suite_, md_, next, len_);
    if (ok) {
        std::memcpy(rx_, next, len_);
        ++rx_gen_;
    }
    int saved = errno;
    OPENSSL_cleanse(next, sizeof(next));
    errno = saved;
    return ok;
}

bool traffic_secrets::rekey_tx(int fd) {
    if (!valid()) {
        errno = EINVAL;
        return false;
    }
    uint8_t next[EVP_MAX_MD_SIZE];
    std::memcpy(next, tx_, len_);
    // Derive first: once the KeyUpdate is out, the peer expects the new key.
    bool ok = advance(next);
    if (ok) {
        static const uint8_t key_update[] = {24, 0, 0, 1, 0};  // update_not_requested
        ok = send_record(fd, rt_handshake, key_update, sizeof(key_update)) == sizeof(key_update) &&
             install(fd, TLS_TX, suite_, md_, next, len_);
    }
    if (ok) {
        std::memcpy(tx_, next, len_);
        ++tx_gen_;
    }
    int saved = errno;
    OPENSSL_cleanse(next, sizeof(next));
    errno = saved;
    return ok;
}

bool tx_record_seq(int fd, uint64_t* seq) {
    // The kernel answers only a length that is exactly the header (the
    // version and cipher) or exactly the cipher's whole struct: ask for the
    // header first, then for that cipher's struct.
    crypto_info_any ci{};
    socklen_t len = sizeof(ci.info);
    if (::getsockopt(fd, SOL_TLS, TLS_TX, &ci, &len) != 0) return false;
    const unsigned char* rs = nullptr;
    switch (ci.info.cipher_type) {
        case TLS_CIPHER_AES_GCM_128:
            len = sizeof(ci.gcm128);
            rs = ci.gcm128.rec_seq;
            break;
        case TLS_CIPHER_AES_GCM_256:
            len = sizeof(ci.gcm256);
            rs = ci.gcm256.rec_seq;
            break;
        case TLS_CIPHER_CHACHA20_POLY1305:
            len = sizeof(ci.chacha);
            rs = ci.chacha.rec_seq;
            break;
        default:
            errno = EOPNOTSUPP;
            return false;
    }
    if (::getsockopt(fd, SOL_TLS, TLS_TX, &ci, &len) != 0) {
        OPENSSL_cleanse(&ci, sizeof(ci));
        return false;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | rs[i];  // big-endian (RFC 8446 §5.3)
    OPENSSL_cleanse(&ci, sizeof(ci));
    *seq = v;
    return true;
}

uint64_t aead_record_limit(uint32_t suite) noexcept {
    switch (suite & 0xffff) {
        case 0x1301:  // TLS_AES_128_GCM_SHA256
        case 0x1302:  // TLS_AES_256_GCM_SHA384
            return uint64_t(1) << 24;
        default:  // TLS_CHACHA20_POLY1305_SHA256: no practical limit
            return 0;
    }
}

bool traffic_secrets::rx_keys(record_keys* out) const {
    return keys_of(rx_, out);
}

bool traffic_secrets::tx_keys(record_keys* out) const {
    return keys_of(tx_, out);
}

bool traffic_secrets::keys_of(const uint8_t* secret, record_keys* out) const {
    crypto_info_any ci;
    socklen_t ci_len = 0;
    if (!valid() || !crypto_info_for(suite_, md_, secret, len_, ci, ci_len)) return false;
    switch (ci.info.cipher_type) {
        case TLS_CIPHER_AES_GCM_128:
            split_gcm(ci.gcm128, out->key, &out->key_len, out->iv);
            break;
        case TLS_CIPHER_AES_GCM_256:
            split_gcm(ci.gcm256, out->key, &out->key_len, out->iv);
            break;
        default:
            out->key_len = 32;
            std::memcpy(out->key, ci.chacha.key, 32);
            std::memcpy(out->iv, ci.chacha.iv, 12);
            break;
    }
    OPENSSL_cleanse(&ci, sizeof(ci));
    return true;
}

namespace {

// A loopback TCP pair with the "tls" ULP on the connecting side, then
// `with(cfd)`; false when any step fails.
template <typename Fn>
bool on_tls_pair(Fn with) {
    int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int cfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int afd = -1;
    bool ok = false;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    // The ULP needs an established connection.
    if (lfd >= 0 && cfd >= 0 && ::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
        ::listen(lfd, 1) == 0 && ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &al) == 0 &&
        ::connect(cfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
        (afd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC)) >= 0) {
        ok = ::setsockopt(cfd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) == 0 && with(cfd);
    }
    for (int fd : {lfd, cfd, afd})
        if (fd >= 0) ::close(fd);
    return ok;
}

// TLS 1.3 AES-128-GCM TX keys for a probe, all zero but the first byte.
bool throwaway_tx(int fd, uint8_t first) {
    tls12_crypto_info_aes_gcm_128 ci{};
    ci.info.version = TLS_1_3_VERSION;
    ci.info.cipher_type = TLS_CIPHER_AES_GCM_128;
    ci.key[0] = first;
    return ::setsockopt(fd, SOL_TLS, TLS_TX, &ci, sizeof(ci)) == 0;
}

}  // namespace

bool kernel_has_ktls() {
    return on_tls_pair([](int) { return true; });
}

// TLS_TX twice on a socket that sent nothing, with throw-away keys: Linux
// 6.14+ takes the second as a rekey, older kernels refuse it (EBUSY).
bool kernel_can_rekey() {
    static const bool can =
        on_tls_pair([](int fd) { return throwaway_tx(fd, 0) && throwaway_tx(fd, 1); });
    return can;
}

// Debian 12's <linux/tls.h> predates both (values from the kernel's uapi).
#ifndef TLS_RX_EXPECT_NO_PAD
#define TLS_RX_EXPECT_NO_PAD 4
#endif
#ifndef TLS_TX_MAX_PAYLOAD_LEN
#define TLS_TX_MAX_PAYLOAD_LEN 5
#endif

bool set_rx_expect_no_pad(int fd) {
    int one = 1;
    return ::setsockopt(fd, SOL_TLS, TLS_RX_EXPECT_NO_PAD, &one, sizeof(one)) == 0;
}

bool set_tx_max_payload(int fd, uint16_t bytes) {
    return ::setsockopt(fd, SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, &bytes, sizeof(bytes)) == 0;
}

// A kernel without the option answers ENOPROTOOPT to getsockopt; one that has
// it reports the current limit once TX is set up.
bool kernel_has_tx_max_payload() {
    static const bool has = on_tls_pair([](int fd) {
        if (!throwaway_tx(fd, 0)) return false;
        uint16_t v = 0;
        socklen_t len = sizeof(v);
        return ::getsockopt(fd, SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, &v, &len) == 0;
    });
    return has;
}

}  // namespace rpcgate::tls::ktls
