#include "tls/session.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>

#include "tls/block_writer.h"
#include "tls/record_layer.h"
#include "tls/verify_state.h"

namespace rpcgate::tls {
namespace {

// TLS plaintext record limit (RFC 8446 §5.1) and the per-record expansion we
// plan for: header 5 + content type 1 + AEAD tag 16 in TLS 1.3; TLS 1.2 GCM
// adds an 8-byte explicit nonce instead of the type byte. 32 covers both.
constexpr size_t max_record = 16384;
constexpr size_t record_overhead = 32;
// Blocks are sized to what a call needs (a 64 KiB write gets one block and
// leaves as one slice), never smaller than these floors, so that a connection
// exchanging small RPCs keeps a few KiB, not a few dozen.
constexpr size_t cipher_block_min = 4096;
constexpr size_t plain_block_min = 2048;
// Plaintext blocks are sized from the ciphertext fed (plaintext is never
// larger) up to this, and are retired when less room than a small record is
// left rather than filled with a sliver of one.
constexpr size_t plain_block_max = 256 * 1024;
constexpr size_t plain_min_room = 512;

// Small slices are gathered here so they leave as one record. Per thread, not
// per session: it is empty between calls, and idle sessions should not pay
// 16 KiB each for it.
thread_local uint8_t staging[max_record];

}  // namespace

namespace {

// What the BIO callbacks touch: the ciphertext going in and coming out.
struct bio_io {
    core::slice_chain in;  // fed ciphertext not yet read by OpenSSL
    block_writer cipher{cipher_block_min};
};

// Both BIOs of a session use this method with the same bio_io. Reading
// serves the fed slices (OpenSSL copies into its record buffer, the one copy
// there has to be); writing appends to the ciphertext block and never blocks.
int bio_read(BIO* b, char* buf, size_t len, size_t* got) {
    auto* io = static_cast<bio_io*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    if (io->in.empty()) {
        BIO_set_retry_read(b);
        *got = 0;
        return 0;
    }
    size_t n = std::min(len, io->in.size());
    io->in.copy_out(0, buf, n);
    io->in.trim_front(n);
    *got = n;
    return 1;
}

int bio_write(BIO* b, const char* data, size_t len, size_t* put) {
    auto* io = static_cast<bio_io*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    io->cipher.ensure(len);
    std::memcpy(io->cipher.tail(), data, len);
    io->cipher.commit(len);
    *put = len;
    return 1;
}

long bio_ctrl(BIO* b, int cmd, long, void*) {
    switch (cmd) {
        case BIO_CTRL_FLUSH:  // everything is "sent" as soon as it is written
            return 1;
        case BIO_CTRL_PENDING:
            return static_cast<long>(static_cast<bio_io*>(BIO_get_data(b))->in.size());
        default:  // includes BIO_CTRL_SET_KTLS: no kTLS on memory, OpenSSL carries on
            return 0;
    }
}

int bio_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

const BIO_METHOD* bio_method() {
    static BIO_METHOD* const m = [] {
        BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "rpcgate slices");
        if (!bm) return bm;
        BIO_meth_set_read_ex(bm, bio_read);
        BIO_meth_set_write_ex(bm, bio_write);
        BIO_meth_set_ctrl(bm, bio_ctrl);
        BIO_meth_set_create(bm, bio_create);
        return bm;
    }();
    return m;
}

// The alert's name as RFC 8446 §6 spells it, in words. OpenSSL 3.0 names
// the TLS 1.2 alerts only and calls the newer ones "unknown" (it sends
// certificate_required, 116, to a client without a certificate when one is
// required), so those are named here.
const char* alert_text(int desc) {
    switch (desc) {
        case 109:
            return "missing extension";
        case 115:
            return "unknown psk identity";
        case 116:
            return "certificate required";
        case 120:
            return "no application protocol";
        default:
            return SSL_alert_desc_string_long(desc);
    }
}

}  // namespace

struct session::detached {
    std::string version, cipher, alpn, subject;
    uint32_t suite = 0;
    X509* peer = nullptr;  // owned
    ~detached() { X509_free(peer); }
};

struct session::io : bio_io {
    verify_state vs;
    block_writer plain{plain_block_min};
    bool server = false;
    bool require_alpn = false;
    bool own_records = false;  // try the own record layer after the handshake
};

// ---- verify_state (declared in verify_state.h) ----

std::string subject_text(const X509* cert) {
    if (!cert) return {};
    BIO* b = BIO_new(BIO_s_mem());
    if (!b) return {};
    X509_NAME_print_ex(b, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
    char* p = nullptr;
    long n = BIO_get_mem_data(b, &p);
    std::string s(p, n > 0 ? static_cast<size_t>(n) : 0);
    BIO_free(b);
    return s;
}

bool is_self_signed(X509* cert) {
    if (X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)) != 0) return false;
    EVP_PKEY* key = X509_get0_pubkey(cert);
    bool ok = key && X509_verify(cert, key) == 1;
    ERR_clear_error();  // a failed self-check is an answer, not an error to report
    return ok;
}

void verify_state::record(int preverify_ok, X509_STORE_CTX* store) {
    if (!saw_cert) {
        saw_cert = true;
        X509* leaf = X509_STORE_CTX_get0_cert(store);
        if (leaf) {
            leaf_subject = subject_text(leaf);
            selfsigned = is_self_signed(leaf);
        }
    }
    if (preverify_ok) return;
    int e = X509_STORE_CTX_get_error(store);
    if (e == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT) selfsigned = true;
    if (first_error == X509_V_OK) {
        first_error = e;
        error_depth = X509_STORE_CTX_get_error_depth(store);
    }
}

void verify_state::record_alert(bool received, int ret) {
    int desc = ret & 0xff;
    if (desc == SSL_AD_CLOSE_NOTIFY) return;
    (received ? alert_received : alert_sent) = desc;
}

// ---- session ----

std::string flags_text(uint32_t flags) {
    static constexpr const char* names[] = {"HANDSHAKE", "GOTCERT",  "SELFSIGNED", "VERIFIED",
                                            "CERTUSER",  "DISABLED", "HANDSHFAIL"};
    std::string s;
    for (size_t i = 0; i < std::size(names); ++i) {
        if (!(flags & (1u << i))) continue;
        if (!s.empty()) s += '|';
        s += names[i];
    }
    return s;
}

std::unique_ptr<session> session::make_bare(const context& ctx, std::string* err) {
    if (!bio_method()) {
        *err = "BIO_meth_new: " + last_error();
        return nullptr;
    }
    std::unique_ptr<session> s(new session());
    s->io_ = std::make_unique<io>();
    s->io_->server = ctx.is_server();
    s->io_->require_alpn = !ctx.is_server() && ctx.client().require_alpn;
    s->io_->own_records = !(ctx.is_server() ? ctx.server().ciphers.openssl_records
                                            : ctx.client().ciphers.openssl_records);
    s->ssl_ = SSL_new(ctx.native());
    if (!s->ssl_) {
        *err = "SSL_new: " + last_error();
        return nullptr;
    }
    SSL_set_ex_data(s->ssl_, session_ex_index(), &s->io_->vs);
    SSL_set_msg_callback(s->ssl_, on_openssl_message);
    SSL_set_msg_callback_arg(s->ssl_, s.get());
    if (ctx.is_server()) {
        SSL_set_accept_state(s->ssl_);
    } else {
        SSL_set_connect_state(s->ssl_);
        const std::string& name = ctx.client().server_name;
        // RFC 6066 §3: SNI carries DNS names only, never address literals.
        if (!name.empty() && !is_ip_address(name) &&
            SSL_set_tlsext_host_name(s->ssl_, name.c_str()) != 1) {
            *err = "SNI '" + name + "': " + last_error();
            return nullptr;
        }
    }
    return s;
}

BIO* session::new_slice_bio() {
    const BIO_METHOD* method = bio_method();
    BIO* b = method ? BIO_new(method) : nullptr;
    if (b) BIO_set_data(b, static_cast<bio_io*>(io_.get()));
    return b;
}

std::unique_ptr<session> session::make(const context& ctx, std::string* err) {
    std::string scratch;
    std::unique_ptr<session> s = make_bare(ctx, err ? err : &scratch);
    if (!s) return nullptr;
    BIO* rb = s->new_slice_bio();
    BIO* wb = rb ? s->new_slice_bio() : nullptr;
    if (!wb) {
        BIO_free(rb);
        if (err) *err = "BIO_new: " + last_error();
        return nullptr;  // ~session frees ssl_
    }
    SSL_set_bio(s->ssl_, rb, wb);
    if (s->io_->own_records) {
        // The record layer takes over at the first byte after the handshake:
        // OpenSSL must not read past it (read-ahead off: a header, then
        // exactly one record), and the keylog hook keeps the secrets.
        ktls::track_secrets(s->ssl_);
        SSL_set_read_ahead(s->ssl_, 0);
    } else {
        // Read-ahead lets OpenSSL take every fed byte in one BIO call instead
        // of a header and then a body per record: many small records, few calls.
        SSL_set_read_ahead(s->ssl_, 1);
    }
    s->set_lean(true);
    return s;
}

std::unique_ptr<session> session::make_on_socket(const context& ctx, int fd, std::string_view early,
                                                 std::string* err) {
    std::string scratch;
    if (!err) err = &scratch;
    std::unique_ptr<session> s = make_bare(ctx, err);
    if (!s || !ktls::attach_socket(s->ssl_, fd, early, err)) return nullptr;
    s->on_socket_ = true;
    return s;
}

ktls::step session::socket_handshake() {
    if (flags_ & flag_handshake) return ktls::step::done;
    if (flags_ & flag_handshfail) return ktls::step::error;
    ktls::step st = ktls::handshake_step(ssl_);
    if (st == ktls::step::done) {
        if (finish_handshake() != status::done) return ktls::step::error;
    } else if (st == ktls::step::error) {
        fail(last_error());
    }
    return st;
}

ktls::directions session::finish_on_socket(int fd, bool allow_rx) {
    auto keep = std::make_unique<ktls::traffic_secrets>();
    ktls::directions d = allow_rx ? ktls::finish(ssl_, fd, keep.get()) : ktls::engaged(ssl_);
    kernel_tx_ = d.tx;
    kernel_rx_ = d.rx;
    if (d.rx && keep->valid()) secrets_ = std::move(keep);
    on_socket_ = false;
    if (!d.rx) {
        // Userspace RX from here on, fed by the shard. Read-ahead was off, so
        // OpenSSL holds no byte of the stream; only early bytes the shard
        // handed over may be left in the prefix BIO: they come first.
        BIO* rb = SSL_get_rbio(ssl_);
        size_t pending = rb ? BIO_ctrl_pending(rb) : 0;
        if (pending > 0) {
            core::slice left = core::slice::allocate(pending);
            size_t got = 0;
            if (BIO_read_ex(rb, left.mutable_data(), pending, &got) == 1 && got > 0)
                feed(left.share(0, got));
        }
        ERR_clear_error();
        SSL_set0_rbio(ssl_, new_slice_bio());  // frees the socket BIO chain (NOCLOSE)
        SSL_set_read_ahead(ssl_, 1);
    }
    if (!d.tx) SSL_set0_wbio(ssl_, new_slice_bio());
    return d;
}

session::~session() {
    SSL_free(ssl_);
}

// ---- without OpenSSL: drop_openssl, and a live upgrade ----

void moved_state::wipe() noexcept {
    OPENSSL_cleanse(tx_secret.data(), tx_secret.size());
    OPENSSL_cleanse(rx_secret.data(), rx_secret.size());
    tx_secret.clear();
    rx_secret.clear();
}

void session::drop_openssl() {
    if (!ssl_ || !records_) return;
    auto d = std::make_unique<detached>();
    d->version = version();
    d->cipher = cipher();
    d->alpn = alpn();
    d->subject = peer_subject();
    d->suite = suite();
    if (X509* peer = SSL_get0_peer_certificate(ssl_)) {
        X509_up_ref(peer);
        d->peer = peer;
    }
    SSL_free(ssl_);
    ssl_ = nullptr;
    det_ = std::move(d);
}

std::string session::move_blocker() const {
    if (!(flags_ & flag_handshake)) return "the handshake is not over";
    if (!error_.empty()) return "the session failed: " + error_;
    if (kernel_tx_ && kernel_rx_) {
        if (!secrets_ || !secrets_->valid()) return "kTLS without the traffic secrets (TLS 1.2)";
        return "";
    }
    if (kernel_tx_ || kernel_rx_) return "half kTLS: OpenSSL holds one direction's records";
    if (!records_)
        return "OpenSSL's records (" +
               (records_note_.empty() ? std::string("asked for") : records_note_) + ")";
    return records_->move_blocker();
}

bool session::save(moved_state* st, std::string* why) const {
    *why = move_blocker();
    if (!why->empty()) return false;
    if (records_) {
        if (!records_->save(*st, why)) return false;
    } else {
        secrets_->save(*st);
        st->where = moved_state::records::kernel;
        st->records_since_update = records_since_update_;
        st->own_updates = own_updates_;
    }
    st->flags = flags_;
    st->version = version();
    st->cipher = cipher();
    st->alpn = alpn();
    st->peer_subject = peer_subject();
    st->peer_cert.clear();
    if (X509* peer = peer_certificate()) {
        int n = i2d_X509(peer, nullptr);
        if (n > 0) {
            st->peer_cert.resize(static_cast<size_t>(n));
            auto* p = reinterpret_cast<unsigned char*>(st->peer_cert.data());
            i2d_X509(peer, &p);
        }
    }
    return true;
}

core::slice_chain session::take_input() {
    core::slice_chain in;
    in.append(std::move(io_->in));
    io_->in.clear();
    return in;
}

std::unique_ptr<session> session::restore(const moved_state& st, bool server, std::string* err) {
    std::unique_ptr<session> s(new session());
    s->io_ = std::make_unique<io>();
    s->io_->server = server;
    s->flags_ = st.flags | flag_handshake;
    auto d = std::make_unique<detached>();
    d->version = st.version;
    d->cipher = st.cipher;
    d->alpn = st.alpn;
    d->subject = st.peer_subject;
    d->suite = st.suite;
    if (!st.peer_cert.empty()) {
        const auto* p = reinterpret_cast<const unsigned char*>(st.peer_cert.data());
        d->peer = d2i_X509(nullptr, &p, static_cast<long>(st.peer_cert.size()));
        if (!d->peer) {
            *err = "the peer certificate does not decode: " + last_error();
            return nullptr;
        }
    }
    s->det_ = std::move(d);
    if (st.where == moved_state::records::kernel) {
        auto secrets = std::make_unique<ktls::traffic_secrets>();
        if (!secrets->restore(st)) {
            *err = "traffic secrets that do not fit suite " + std::to_string(st.suite);
            return nullptr;
        }
        s->secrets_ = std::move(secrets);
        s->kernel_tx_ = s->kernel_rx_ = true;
        s->records_since_update_ = st.records_since_update;
        s->own_updates_ = st.own_updates;
        return s;
    }
    s->records_ = record_layer::restore(st, err);
    if (!s->records_) return nullptr;
    return s;
}

void session::feed(core::slice ciphertext) {
    io_->in.push_back(std::move(ciphertext));
}
void session::feed(core::slice_chain&& ciphertext) {
    io_->in.append(std::move(ciphertext));
}
size_t session::pending_input() const noexcept {
    return io_->in.size();
}

bool session::handshake_done() const noexcept {
    return (flags_ & flag_handshake) != 0;
}

status session::handshake(core::slice_chain& out) {
    if (flags_ & flag_handshake) return status::done;
    if (flags_ & flag_handshfail) return status::error;
    ERR_clear_error();
    int r = SSL_do_handshake(ssl_);
    status st = status::ok;
    if (r == 1) {
        st = finish_handshake();
    } else if (SSL_get_error(ssl_, r) != SSL_ERROR_WANT_READ) {
        fail(last_error());
        st = status::error;
    }
    io_->cipher.drain(out);
    // The session now goes to a shard: keep no block whose (non-atomic)
    // reference count the control thread still touches through `out`.
    if (st != status::ok) io_->cipher.release();
    return st;
}

void session::note_peer(bool completed) {
    const verify_state& vs = io_->vs;
    X509* peer = SSL_get0_peer_certificate(ssl_);
    if (peer || vs.saw_cert) flags_ |= flag_gotcert;
    if (vs.selfsigned) flags_ |= flag_selfsigned;
    if (completed && peer && vs.first_error == X509_V_OK &&
        SSL_get_verify_result(ssl_) == X509_V_OK) {
        flags_ |= flag_verified;
    }
}

status session::finish_handshake() {
    note_peer(true);
    if (io_->require_alpn && alpn().empty()) {
        fail("server selected no ALPN protocol (\"sunrpc\" required)");
        return status::error;
    }
    // A client offers only "sunrpc"; a server that selects anything else is
    // not speaking RPC-with-TLS (RFC 9289 §5.2), whatever OpenSSL let through.
    if (!SSL_is_server(ssl_) && !alpn().empty() && alpn() != alpn_sunrpc) {
        fail("server selected ALPN \"" + alpn() + "\", not \"sunrpc\"");
        return status::error;
    }
    flags_ |= flag_handshake;
    if (!on_socket_ && io_->own_records) start_records();
    return status::done;
}

void session::start_records() {
    io_->own_records = false;
    // The hand-over is exact only where OpenSSL holds no byte of the stream
    // and has sent no record under the application keys: a server that
    // issues tickets sends them right after its Finished.
    if (SSL_version(ssl_) != TLS1_3_VERSION) {
        records_note_ = "TLS 1.2 (own records are TLS 1.3 only)";
    } else if (SSL_has_pending(ssl_)) {
        records_note_ = "OpenSSL read past the handshake";
    } else if (SSL_is_server(ssl_) && SSL_get_num_tickets(ssl_) > 0) {
        records_note_ = "session tickets are on (OpenSSL sent records under the new keys)";
    } else {
        auto secrets = std::make_unique<ktls::traffic_secrets>();
        if (!ktls::keep_secrets(ssl_, secrets.get())) {
            records_note_ = "the keylog hook saw no traffic secrets";
        } else {
            records_ = record_layer::make(std::move(secrets), &records_note_);
        }
    }
    if (records_) {
        records_note_.clear();
        records_->set_rekey_after(rekey_after_);
        SSL_free_buffers(ssl_);
    } else {
        SSL_set_read_ahead(ssl_, 1);
    }
}

void session::set_rekey_after(uint64_t records) noexcept {
    rekey_after_ = records;
    if (records_) records_->set_rekey_after(records);
}

uint64_t session::own_key_updates() const noexcept {
    return records_ ? records_->own_key_updates() : own_updates_;
}

uint64_t session::tx_generation() const noexcept {
    return records_ ? records_->tx_generation() : openssl_tx_updates_;
}

uint64_t session::rx_generation() const noexcept {
    return records_ ? records_->rx_generation() : openssl_rx_updates_;
}

// OpenSSL answers a peer's update_requested inside SSL_read (it writes its
// KeyUpdate there and then): only its message callback sees that our TX
// key changed, and so that the records under the new one count from zero.
void session::on_openssl_message(int write_p, int, int content_type, const void* buf, size_t len,
                                 SSL*, void* arg) {
    constexpr uint8_t hs_key_update = 24;
    if (content_type != SSL3_RT_HANDSHAKE || len == 0 ||
        static_cast<const uint8_t*>(buf)[0] != hs_key_update)
        return;
    auto* s = static_cast<session*>(arg);
    if (write_p) {
        ++s->openssl_tx_updates_;
        s->records_since_update_ = 0;
    } else {
        ++s->openssl_rx_updates_;
    }
}

void session::fail(std::string why) {
    const verify_state& vs = io_->vs;
    note_peer(false);
    flags_ |= flag_handshfail;
    if (vs.first_error != X509_V_OK) {
        why += "; certificate: ";
        why += X509_verify_cert_error_string(vs.first_error);
        why += " at depth " + std::to_string(vs.error_depth);
    }
    if (vs.alert_sent >= 0) {
        why += "; alert sent: ";
        why += alert_text(vs.alert_sent);
    }
    if (vs.alert_received >= 0) {
        why += "; alert received: ";
        why += alert_text(vs.alert_received);
    }
    error_ = std::move(why);
}

status session::read(core::slice_chain& plain, core::slice_chain& out) {
    if (!(flags_ & flag_handshake)) {
        // Still handshaking (or a caller that is eager): finish it first.
        status h = handshake(out);
        if (h != status::done) return h;
    }
    // The kernel decrypts: plaintext reaches the owner straight from the socket.
    if (kernel_rx_) return status::ok;
    if (records_) {
        if (io_->in.empty()) return status::ok;
        record_layer::result r = records_->open(io_->in, io_->plain, io_->cipher);
        io_->plain.drain(plain);
        io_->cipher.drain(out);
        if (r == record_layer::result::closed) return status::closed;
        if (r == record_layer::result::error) {
            error_ = records_->error();
            return status::error;
        }
        return status::ok;
    }
    // Nothing fed and nothing buffered: skip the call and the block it needs.
    if (io_->in.empty() && !SSL_has_pending(ssl_)) return status::ok;
    ERR_clear_error();
    status st = status::ok;
    block_writer& pb = io_->plain;
    size_t expect = io_->in.size();  // an upper bound on the plaintext still to come
    for (;;) {
        pb.ensure(std::clamp(expect, plain_min_room, plain_block_max));
        size_t n = 0;
        int r = SSL_read_ex(ssl_, pb.tail(), pb.room(), &n);
        if (r == 1) {
            pb.commit(n);
            expect -= std::min(expect, n);
            continue;
        }
        int e = SSL_get_error(ssl_, r);
        if (e == SSL_ERROR_WANT_READ) break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            st = status::closed;
        } else {
            error_ = last_error();
            st = status::error;
        }
        break;
    }
    // A KeyUpdate that asked for ours (RFC 8446 §4.6.3) would otherwise wait
    // for our next write; answer now, the reading side may have nothing to say.
    // OpenSSL only notes the owed update; SSL_key_update with the same
    // (not-requested) type re-enters the state machine, which sends it once.
    // With TX in the kernel our keys cannot change (Linux < 6.14 refuses
    // TLS_TX again), so a peer that asked for it cannot be answered: end the
    // connection (the owner sends close_notify under the old, expected key).
    if (st == status::ok && kernel_tx_ &&
        SSL_get_key_update_type(ssl_) == SSL_KEY_UPDATE_NOT_REQUESTED) {
        error_ = "the peer asked for a KeyUpdate of our keys, which are in the kernel's TX";
        key_update_refused_ = true;
        st = status::error;
    }
    if (st == status::ok && SSL_get_key_update_type(ssl_) == SSL_KEY_UPDATE_NOT_REQUESTED &&
        SSL_key_update(ssl_, SSL_KEY_UPDATE_NOT_REQUESTED) == 1) {
        SSL_do_handshake(ssl_);
        ERR_clear_error();
    }
    if (lean_ && !pb.idle() && ++data_reads_ >= k_busy_reads) set_lean(false);
    pb.drain(plain);
    io_->cipher.drain(out);
    return st;
}

bool session::write_records(const uint8_t* p, size_t n) {
    size_t put = 0;
    bool ok = SSL_write_ex(ssl_, p, n, &put) == 1 && put == n;
    // After the write: a KeyUpdate it carried first set the count to zero.
    records_since_update_ += (n + max_record - 1) / max_record;
    if (ok) return true;
    error_ = last_error();
    return false;
}

status session::write(const core::slice_chain& plain, core::slice_chain& out) {
    if (!(flags_ & flag_handshake)) {
        error_ = "write before the handshake completed";
        return status::error;
    }
    if (kernel_tx_) {
        error_ = "write through OpenSSL on a kernel TX socket";
        return status::error;
    }
    if (plain.empty()) return status::ok;
    if (records_) {
        bool ok = records_->seal(plain, io_->cipher);
        io_->cipher.drain(out);
        if (!ok) {
            error_ = records_->error();
            return status::error;
        }
        return status::ok;
    }
    ERR_clear_error();
    if (rekey_after_ && records_since_update_ >= rekey_after_ &&
        SSL_key_update(ssl_, SSL_KEY_UPDATE_NOT_REQUESTED) == 1) {
        records_since_update_ = 0;  // the KeyUpdate goes out with the next record
        ++own_updates_;
    }
    // Room for all the records at once (plus a KeyUpdate that may go first),
    // so that the output is one slice and at most one allocation.
    io_->cipher.ensure(plain.size() + (plain.size() / max_record + 2) * record_overhead + 64);
    size_t staged = 0;
    bool ok = true;
    for (const core::slice& s : plain) {
        const uint8_t* p = s.data();
        size_t n = s.size();
        while (ok && n > 0) {
            if (staged == 0 && n >= max_record) {
                // Whole records straight from the caller's memory.
                size_t direct = n - n % max_record;
                ok = write_records(p, direct);
                p += direct;
                n -= direct;
                continue;
            }
            size_t take = std::min(n, max_record - staged);
            std::memcpy(staging + staged, p, take);
            staged += take;
            p += take;
            n -= take;
            if (staged == max_record) {
                ok = write_records(staging, staged);
                staged = 0;
            }
        }
    }
    if (ok && staged > 0) ok = write_records(staging, staged);
    io_->cipher.drain(out);
    return ok ? status::ok : status::error;
}

void session::shutdown(core::slice_chain& out) {
    if (kernel_tx_) return;  // the owner sends close_notify with ktls::send_alert
    if (records_) {
        records_->close_notify(io_->cipher);
        io_->cipher.drain(out);
        return;
    }
    if (flags_ & flag_handshake) {
        ERR_clear_error();
        SSL_shutdown(ssl_);
        ERR_clear_error();
    }
    io_->cipher.drain(out);
}

status session::key_update(bool ask_peer, core::slice_chain& out) {
    if (!(flags_ & flag_handshake) || kernel_tx_) {
        error_ = "a KeyUpdate needs a finished handshake and userspace TX";
        return status::error;
    }
    if (records_) {
        records_->key_update(ask_peer, io_->cipher);
    } else {
        ERR_clear_error();
        int type = ask_peer ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED;
        if (SSL_key_update(ssl_, type) != 1 || SSL_do_handshake(ssl_) != 1) {
            error_ = "SSL_key_update: " + last_error();
            return status::error;
        }
        ++own_updates_;
    }
    io_->cipher.drain(out);
    return status::ok;
}

void session::release_buffers() noexcept {
    if (!io_->in.empty()) return;
    if (ssl_) SSL_free_buffers(ssl_);  // refuses (harmlessly) while a partial record is buffered
    io_->cipher.release();
    io_->plain.release();
    if (records_) records_->release();
    if (!on_socket_) set_lean(true);
}

void session::set_lean(bool on) noexcept {
    lean_ = on;
    data_reads_ = 0;
    if (!ssl_) return;
    if (on)
        SSL_set_mode(ssl_, SSL_MODE_RELEASE_BUFFERS);
    else
        SSL_clear_mode(ssl_, SSL_MODE_RELEASE_BUFFERS);
}

std::string session::version() const {
    if (!ssl_) return det_ ? det_->version : "";
    return SSL_get_version(ssl_);
}

std::string session::cipher() const {
    if (!ssl_) return det_ ? det_->cipher : "";
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl_);
    return c ? SSL_CIPHER_get_name(c) : "";
}

uint32_t session::suite() const {
    if (!ssl_) return det_ ? det_->suite : 0;
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl_);
    return c ? SSL_CIPHER_get_id(c) : 0;
}

X509* session::peer_certificate() const {
    if (!ssl_) return det_ ? det_->peer : nullptr;
    return SSL_get0_peer_certificate(ssl_);
}

std::string session::alpn() const {
    if (!ssl_) return det_ ? det_->alpn : "";
    const unsigned char* p = nullptr;
    unsigned int n = 0;
    SSL_get0_alpn_selected(ssl_, &p, &n);
    return p ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
}

std::string session::peer_subject() const {
    if (!ssl_) return det_ ? det_->subject : "";
    if (X509* peer = SSL_get0_peer_certificate(ssl_)) return subject_text(peer);
    return io_->vs.leaf_subject;
}

}  // namespace rpcgate::tls
