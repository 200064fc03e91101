// record_layer: TLS 1.3 application records (RFC 8446 §5) sealed and opened
// by rpcgate itself, after OpenSSL has run the handshake.
//
// Why: through SSL_read/SSL_write every byte of a userspace TLS connection
// is copied three times besides the AEAD -- fed slices into OpenSSL's read
// buffer, that buffer into the caller's, the write buffer out through the
// BIO. Here a record is decrypted straight from the receive slices it
// arrived in (one may span several) into the plaintext block that is then
// forwarded, and encrypted straight from the plaintext slices into the block
// that is sent: the AEAD's own pass is the only one. It is the userspace twin
// of kTLS: the same traffic secrets (keylog callback, tls/ktls.h), the same
// record sequence numbers starting at 0 after the handshake.
//
// What it does: application data both ways; alerts (close_notify ends the
// stream, any other alert is an error); post-handshake messages --
// NewSessionTicket (ignored: sessions are not resumed through it) and
// KeyUpdate (RFC 8446 §4.6.3: the peer's next RX key, and our own update when
// the peer asks for it); our own KeyUpdate after `rekey_after` records
// (§5.5). Anything else after the handshake (a plaintext record, a record
// too long, a bad tag, another handshake message, a message spanning a key
// change) is a fatal error, answered with the alert RFC 8446 names for it.
// Suites: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384 and
// TLS_CHACHA20_POLY1305_SHA256 (not the CCM ones: OpenSSL keeps those).
//
// Threads: one at a time, as tls::session.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <string>

#include "core/buffer.h"
#include "tls/block_writer.h"
#include "tls/ktls.h"
#include "tls/moved_state.h"

namespace rpcgate::tls {

class record_layer {
  public:
    // From the handshake's application traffic secrets (moved in). Null, and
    // a reason, for a suite it does not do or keys that do not load.
    static std::unique_ptr<record_layer> make(std::unique_ptr<ktls::traffic_secrets> secrets,
                                              std::string* why);
    ~record_layer();
    record_layer(const record_layer&) = delete;
    record_layer& operator=(const record_layer&) = delete;

    enum class result {
        ok,      // every complete record was opened
        closed,  // the peer's close_notify (what came before it is in `plain`)
        error,   // fatal: error(); `out` holds our alert
    };
    // Opens the complete records at the front of `in` and consumes them;
    // application data goes to `plain`, our answers (a KeyUpdate the peer
    // asked for, an alert) to `out`. A partial record stays in `in`.
    result open(core::slice_chain& in, block_writer& plain, block_writer& out);
    // Seals all of `plain` into records of up to 16 KiB of it each (a
    // record may take bytes of several slices) appended to `out`. false
    // after a fatal error (nothing sealed).
    bool seal(const core::slice_chain& plain, block_writer& out);
    // A close_notify alert.
    void close_notify(block_writer& out);
    // Our KeyUpdate now (RFC 8446 §4.6.3), asking the peer for its own when
    // `ask_peer`; records after it use the next TX key.
    void key_update(bool ask_peer, block_writer& out);

    // Before a seal() once `records` went out under one key: our KeyUpdate
    // first (update_not_requested). 0: never.
    void set_rekey_after(uint64_t records) noexcept { rekey_after_ = records; }
    uint64_t own_key_updates() const noexcept { return own_updates_; }
    // Key generations since the handshake, by direction.
    uint64_t tx_generation() const noexcept { return secrets_->tx_generation(); }
    uint64_t rx_generation() const noexcept { return secrets_->rx_generation(); }
    const std::string& error() const noexcept { return error_; }

    // Frees the two cipher contexts (about 2 KiB) while the connection is
    // idle; the next call loads the current keys again from the secrets.
    void release() noexcept;

    // A live upgrade (tls/moved_state.h): secrets, sequence numbers and
    // counts out; false (*why) after an error or while a post-handshake
    // message is half-read (a KeyUpdate may be in it).
    bool save(moved_state& st, std::string* why) const;
    // Why save() would refuse now ("" when it would not), without copying anything.
    std::string move_blocker() const;
    // The same record layer again, in the next process.
    static std::unique_ptr<record_layer> restore(const moved_state& st, std::string* why);

    // The most ciphertext one seal() of `plain_bytes` can add, plus a KeyUpdate.
    static size_t sealed_size(size_t plain_bytes) noexcept;

  private:
    struct direction {
        EVP_CIPHER_CTX* ctx = nullptr;
        uint8_t iv[12] = {};
        uint64_t seq = 0;
        void nonce(uint8_t out[12]) const noexcept;
    };
    record_layer() = default;
    // The current keys of a direction into its context (made if released);
    // `restart` also starts its record sequence at 0 (a new key).
    bool load(direction& d, bool encrypt, bool restart = true);
    bool ready();
    // One record of `type` holding `n` bytes of `plain` from (slice `part`,
    // offset `off`), which move past them; `out` has room.
    void seal_record(uint8_t type, const core::slice_chain& plain, size_t& part, size_t& off,
                     size_t n, block_writer& out);
    void seal_bytes(uint8_t type, const uint8_t* p, size_t n, block_writer& out);
    void send_key_update(bool request, block_writer& out);
    result fail(uint8_t alert, std::string why, block_writer& out);
    bool handle_handshake(const uint8_t* p, size_t n, block_writer& out, result& r);

    std::unique_ptr<ktls::traffic_secrets> secrets_;
    const EVP_CIPHER* cipher_ = nullptr;
    direction rx_;
    direction tx_;
    std::string hs_;  // a post-handshake message cut across records
    uint64_t rekey_after_ = 0;
    uint64_t records_since_update_ = 0;
    uint64_t own_updates_ = 0;
    bool failed_ = false;
    std::string error_;
};

}  // namespace rpcgate::tls
