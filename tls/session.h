// A TLS session driven by bytes: no sockets, no blocking, no threads of its own.
//
// The owner feeds ciphertext it received (`feed`) and sends whatever the
// session produces (`out` chains). The same object runs the handshake (on the
// control thread) and then the data path (on a shard), moved between them;
// it is never used by two threads at once. OpenSSL sees custom BIOs that
// read from the fed slices and write into our own heap blocks, so ciphertext
// is neither copied into nor out of a BIO_s_mem.
//
// Plaintext comes out as slices of fresh heap blocks (decryption writes new
// bytes anyway); `write` coalesces a plaintext chain into full-size TLS
// records (up to 16 KiB each) so that a 4-byte record mark never becomes a
// record of its own.
//
// Outcome flags follow FreeBSD's rpctls names (RFC 9289 §6 audit):
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "core/buffer.h"
#include "tls/context.h"
#include "tls/ktls.h"
#include "tls/moved_state.h"

namespace rpcgate::tls {

class record_layer;

enum flag : uint32_t {
    flag_handshake = 1u << 0,   // the handshake completed
    flag_gotcert = 1u << 1,     // the peer presented a certificate
    flag_selfsigned = 1u << 2,  // ... which is self-signed
    flag_verified = 1u << 3,    // ... which verified against the CA (and CRL)
    flag_certuser = 1u << 4,    // ... which maps to an AUTH_SYS identity
    flag_disabled = 1u << 5,    // TLS was refused by policy / revoked later
    flag_handshfail = 1u << 6,  // the handshake failed
};
// "HANDSHAKE|GOTCERT|VERIFIED" for logs.
std::string flags_text(uint32_t flags);

enum class status {
    ok,      // progress made; nothing more to do until more bytes arrive
    done,    // handshake: complete
    closed,  // the peer sent close_notify
    error,   // fatal: see error_text(); send `out` (an alert) and close
};

class session {
  public:
    // A session for one connection; `ctx` must outlive it.
    static std::unique_ptr<session> make(const context& ctx, std::string* err);
    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    // ---- kernel TLS (tls/ktls.h) ----
    // A session whose handshake runs on socket BIOs over `fd` (non-blocking;
    // the caller keeps the fd), so that OpenSSL can give the record layer to
    // the kernel. `early`: bytes already read from fd (served first). Drive it
    // with socket_handshake() on poll readiness, then finish_on_socket().
    static std::unique_ptr<session> make_on_socket(const context& ctx, int fd,
                                                   std::string_view early, std::string* err);
    // One handshake step: want_read / want_write (poll the fd), done (flags
    // set as after handshake()), or error (error_text(), HANDSHFAIL).
    ktls::step socket_handshake();
    // After done, before any data: the kernel takes what it can
    // (ktls::finish), and the directions it did not take go on in userspace
    // over this session's own BIOs, fed and drained by the owner as usual
    // (read-ahead was off: nothing of the stream is buffered in OpenSSL; early
    // bytes not consumed by the handshake are fed). From then on:
    //   kernel_tx(): the owner sends plaintext to the socket, close_notify with
    //     ktls::send_alert; write() and shutdown() do nothing useful;
    //   kernel_rx(): the socket yields plaintext (and EIO at a non-data
    //     record: ktls::recv_record); read() returns ok with nothing.
    // `allow_rx` false keeps RX in userspace whatever the kernel could do
    // (half kTLS: TX only; OpenSSL 3.0 takes TLS 1.3 TX itself).
    ktls::directions finish_on_socket(int fd, bool allow_rx = true);
    bool kernel_tx() const noexcept { return kernel_tx_; }
    bool kernel_rx() const noexcept { return kernel_rx_; }
    // TLS 1.3 with RX in the kernel: the application traffic secrets, kept
    // after finish_on_socket for key updates (RFC 8446 §4.6.3; what a KeyUpdate
    // does on each kernel is gateway/control_records.h's). Null otherwise.
    ktls::traffic_secrets* secrets() const noexcept { return secrets_.get(); }

    // Userspace TX: before a write() once `records` records went out under
    // one key, a KeyUpdate (update_not_requested) goes first (RFC 8446 §5.5
    // limits what one key may protect). Checked once per write(), so a key
    // may protect one write's records more. 0: never.
    void set_rekey_after(uint64_t records) noexcept;
    // KeyUpdates of our TX keys this session initiated in userspace.
    uint64_t own_key_updates() const noexcept;
    // Userspace records: rpcgate's own record layer (tls/record_layer.h) took
    // them over from OpenSSL after a TLS 1.3 handshake on memory BIOs, unless
    // the context asked for OpenSSL's (`openssl_records`) or the session
    // could not (see records_note()).
    bool own_records() const noexcept { return records_ != nullptr; }
    // Why a userspace TLS 1.3 session kept OpenSSL's records ("" otherwise).
    const std::string& records_note() const noexcept { return records_note_; }
    // Key generations since the handshake in userspace (own records: both
    // directions; OpenSSL's: our own updates, RX unknown, 0).
    uint64_t tx_generation() const noexcept;
    uint64_t rx_generation() const noexcept;
    // read() failed because the peer asked for a KeyUpdate while our TX keys
    // are in the kernel, which cannot change them: close with close_notify.
    bool key_update_refused() const noexcept { return key_update_refused_; }

    // Ciphertext from the peer, in order (shared, not copied).
    void feed(core::slice ciphertext);
    void feed(core::slice_chain&& ciphertext);
    // Bytes fed but not yet consumed by OpenSSL.
    size_t pending_input() const noexcept;

    // Advances the handshake with what was fed; appends bytes to send to `out`.
    // Returns ok (needs more input), done, or error.
    status handshake(core::slice_chain& out);
    bool handshake_done() const noexcept;

    // Decrypts every complete record fed so far; appends plaintext to `plain`
    // and any bytes to send (e.g. a KeyUpdate response) to `out`.
    status read(core::slice_chain& plain, core::slice_chain& out);
    // Encrypts `plain` (all of it); appends the records to `out`.
    status write(const core::slice_chain& plain, core::slice_chain& out);
    // Appends a close_notify alert to `out`.
    void shutdown(core::slice_chain& out);
    // Appends our KeyUpdate to `out` now (update_requested when `ask_peer`),
    // in userspace TLS 1.3; error on a kernel TX socket or before the handshake.
    status key_update(bool ask_peer, core::slice_chain& out);
    // Lets go of the session's buffers (OpenSSL's record buffers and our output
    // blocks) while nothing is in flight; they come back on the next call.
    // Call it when a connection goes idle: afterwards the session costs only
    // the SSL object and its peer certificate. It also makes the session lean
    // again (below).
    void release_buffers() noexcept;
    // Lean: OpenSSL gives its record buffers back after every read and write
    // (SSL_MODE_RELEASE_BUFFERS), so that a connection that talks now and
    // then holds none between calls (about 6 KiB of RSS per idle connection
    // measured with 1,000 of them). That costs a malloc and a free per
    // record operation, so a session stops being lean after k_busy_reads
    // reads that yielded plaintext, and keeps its buffers until the owner's
    // next release_buffers().
    static constexpr uint32_t k_busy_reads = 64;
    bool lean() const noexcept { return lean_; }

    // After the handshake.
    uint32_t flags() const noexcept { return flags_; }
    void add_flags(uint32_t f) noexcept { flags_ |= f; }
    std::string version() const;       // "TLSv1.3"
    std::string cipher() const;        // "TLS_AES_256_GCM_SHA384"
    std::string alpn() const;          // "sunrpc" or ""
    std::string peer_subject() const;  // "CN=client,O=..." or ""
    // Why the handshake or a read failed (one line), or "".
    const std::string& error_text() const noexcept { return error_; }
    // SSL_CIPHER_get_id of the suite (0 before the handshake).
    uint32_t suite() const;
    // The peer's certificate (OpenSSL's, or the one kept by drop_openssl or
    // restore), or null.
    X509* peer_certificate() const;
    // Null after drop_openssl() or restore().
    SSL* native() const noexcept { return ssl_; }

    // ---- a live upgrade (tls/moved_state.h; gateway/upgrade.h) ----
    // "" when the session can move to another process now: TLS 1.3 whose
    // records are rpcgate's own both ways or the kernel's both ways, with
    // nothing half-done inside (a post-handshake message half-read, an
    // error); else why not. Ciphertext fed and not yet opened (a record cut
    // by a receive) is no obstacle: take_input() hands it back to the owner,
    // which carries it with the connection's unread bytes.
    std::string move_blocker() const;
    // Its state, after move_blocker() said "" (false and *why otherwise).
    bool save(moved_state* st, std::string* why) const;
    core::slice_chain take_input();
    // The session again, in the next process, for the same connection (the
    // same socket for kTLS): the handshake is over, and there is no SSL
    // object (native() is null).
    static std::unique_ptr<session> restore(const moved_state& st, bool server, std::string* err);
    // Own records: frees OpenSSL's SSL object, whose work ended with the
    // handshake (and its read and write buffers), keeping what the gateway
    // still reads of it -- version, suite, ALPN, the peer's subject and
    // certificate. No-op otherwise. native() is null afterwards.
    void drop_openssl();

  private:
    session() = default;
    // SSL, verify hooks, role; no BIOs yet.
    static std::unique_ptr<session> make_bare(const context& ctx, std::string* err);
    BIO* new_slice_bio();
    status finish_handshake();
    void fail(std::string why);  // HANDSHFAIL with a one-line reason
    void note_peer(bool completed);
    bool write_records(const uint8_t* p, size_t n);
    void start_records();

    struct io;  // the custom BIO state, the verify record and the output blocks
    SSL* ssl_ = nullptr;
    std::unique_ptr<io> io_;
    uint32_t flags_ = 0;
    std::string error_;
    bool on_socket_ = false;  // handshaking on socket BIOs
    bool kernel_tx_ = false;
    bool kernel_rx_ = false;
    bool key_update_refused_ = false;
    std::unique_ptr<ktls::traffic_secrets> secrets_;
    uint64_t rekey_after_ = 0;
    uint64_t records_since_update_ = 0;
    uint64_t own_updates_ = 0;
    // KeyUpdates OpenSSL wrote and read (its own record path only): the key
    // generations, whoever started them.
    uint64_t openssl_tx_updates_ = 0, openssl_rx_updates_ = 0;
    static void on_openssl_message(int write_p, int version, int content_type, const void* buf,
                                   size_t len, SSL* ssl, void* arg);
    bool lean_ = false;
    uint32_t data_reads_ = 0;  // reads that yielded plaintext since the session became lean
    std::unique_ptr<record_layer> records_;
    std::string records_note_;
    struct detached;  // what drop_openssl() or restore() kept of the SSL object
    std::unique_ptr<detached> det_;
    void set_lean(bool on) noexcept;
};

}  // namespace rpcgate::tls
