#include "tls/record_layer.h"

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstring>

namespace rpcgate::tls {
namespace {

// RFC 8446 §5: the outer header, the most plaintext one record carries, the
// most ciphertext a peer may send in one, and the AEAD tag.
constexpr size_t header_len = 5;
constexpr size_t max_plain = 16384;
constexpr size_t max_cipher = max_plain + 256;
constexpr size_t tag_len = 16;
// Per sealed record: header, the inner content type byte, the tag.
constexpr size_t seal_overhead = header_len + 1 + tag_len;

constexpr uint8_t ct_alert = 21;
constexpr uint8_t ct_handshake = 22;
constexpr uint8_t ct_data = 23;

// Alert descriptions (RFC 8446 §6).
constexpr uint8_t ad_close_notify = 0;
constexpr uint8_t ad_unexpected_message = 10;
constexpr uint8_t ad_bad_record_mac = 20;
constexpr uint8_t ad_record_overflow = 22;
constexpr uint8_t ad_illegal_parameter = 47;
constexpr uint8_t ad_decode_error = 50;
constexpr uint8_t ad_internal_error = 80;

// Handshake message types after the handshake (RFC 8446 §4).
constexpr uint8_t hs_new_session_ticket = 4;
constexpr uint8_t hs_key_update = 24;
// A NewSessionTicket may carry a ticket of up to 2^16-1 bytes and
// extensions: more than that buffered is not a message we will ever finish.
constexpr size_t max_post_handshake = 128 * 1024;

// The suite's AEAD, fetched once per process.
const EVP_CIPHER* cipher_for(uint32_t suite) {
    static EVP_CIPHER* const aes128 = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
    static EVP_CIPHER* const aes256 = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
    static EVP_CIPHER* const chacha = EVP_CIPHER_fetch(nullptr, "ChaCha20-Poly1305", nullptr);
    switch (suite) {
        case TLS1_3_CK_AES_128_GCM_SHA256:
            return aes128;
        case TLS1_3_CK_AES_256_GCM_SHA384:
            return aes256;
        case TLS1_3_CK_CHACHA20_POLY1305_SHA256:
            return chacha;
        default:
            return nullptr;
    }
}

}  // namespace

void record_layer::direction::nonce(uint8_t out[12]) const noexcept {
    // RFC 8446 §5.3: the 64-bit sequence number, big-endian, left-padded to
    // the IV's length and XORed with it.
    std::memcpy(out, iv, 12);
    for (int i = 0; i < 8; ++i) out[4 + i] ^= static_cast<uint8_t>(seq >> (56 - 8 * i));
}

std::unique_ptr<record_layer> record_layer::make(std::unique_ptr<ktls::traffic_secrets> secrets,
                                                 std::string* why) {
    if (!secrets || !secrets->valid()) {
        *why = "no traffic secrets";
        return nullptr;
    }
    std::unique_ptr<record_layer> r(new record_layer());
    r->cipher_ = cipher_for(secrets->suite());
    if (!r->cipher_) {
        *why = "a suite the record layer does not do";
        return nullptr;
    }
    r->secrets_ = std::move(secrets);
    if (!r->load(r->rx_, false) || !r->load(r->tx_, true)) {
        *why = "cannot load the traffic keys";
        return nullptr;
    }
    return r;
}

std::string record_layer::move_blocker() const {
    if (failed_) return "the record layer failed: " + error_;
    if (!hs_.empty()) return "a post-handshake message is half-read";
    return "";
}

bool record_layer::save(moved_state& st, std::string* why) const {
    *why = move_blocker();
    if (!why->empty()) return false;
    secrets_->save(st);
    st.where = moved_state::records::own;
    st.tx_seq = tx_.seq;
    st.rx_seq = rx_.seq;
    st.records_since_update = records_since_update_;
    st.own_updates = own_updates_;
    return true;
}

std::unique_ptr<record_layer> record_layer::restore(const moved_state& st, std::string* why) {
    auto secrets = std::make_unique<ktls::traffic_secrets>();
    if (!secrets->restore(st)) {
        *why = "traffic secrets that do not fit suite " + std::to_string(st.suite);
        return nullptr;
    }
    std::unique_ptr<record_layer> r = make(std::move(secrets), why);
    if (!r) return nullptr;
    r->tx_.seq = st.tx_seq;
    r->rx_.seq = st.rx_seq;
    r->records_since_update_ = st.records_since_update;
    r->own_updates_ = st.own_updates;
    return r;
}

record_layer::~record_layer() {
    EVP_CIPHER_CTX_free(rx_.ctx);
    EVP_CIPHER_CTX_free(tx_.ctx);
}

size_t record_layer::sealed_size(size_t plain_bytes) noexcept {
    size_t records = (plain_bytes + max_plain - 1) / max_plain;
    return plain_bytes + records * seal_overhead + 2 * (seal_overhead + 5);
}

void record_layer::release() noexcept {
    EVP_CIPHER_CTX_free(rx_.ctx);
    EVP_CIPHER_CTX_free(tx_.ctx);
    rx_.ctx = tx_.ctx = nullptr;
}

bool record_layer::ready() {
    if (rx_.ctx && tx_.ctx) return true;
    if ((!rx_.ctx && !load(rx_, false, false)) || (!tx_.ctx && !load(tx_, true, false))) {
        failed_ = true;
        error_ = "cannot load the traffic keys again";
        return false;
    }
    return true;
}

bool record_layer::load(direction& d, bool encrypt, bool restart) {
    if (!d.ctx) d.ctx = EVP_CIPHER_CTX_new();
    if (!d.ctx) return false;
    ktls::traffic_secrets::record_keys k;
    bool ok = encrypt ? secrets_->tx_keys(&k) : secrets_->rx_keys(&k);
    ok = ok && EVP_CipherInit_ex(d.ctx, cipher_, nullptr, k.key, k.iv, encrypt ? 1 : 0) == 1;
    if (ok) std::memcpy(d.iv, k.iv, sizeof(d.iv));
    OPENSSL_cleanse(&k, sizeof(k));
    if (restart) d.seq = 0;
    return ok;
}

void record_layer::seal_record(uint8_t type, const core::slice_chain& plain, size_t& part,
                               size_t& off, size_t n, block_writer& out) {
    uint8_t* rec = out.tail();
    const size_t len = n + 1 + tag_len;
    rec[0] = ct_data;  // every protected record says application_data outside
    rec[1] = 0x03;
    rec[2] = 0x03;
    rec[3] = static_cast<uint8_t>(len >> 8);
    rec[4] = static_cast<uint8_t>(len);
    uint8_t nonce[12];
    tx_.nonce(nonce);
    int outl = 0;
    EVP_CipherInit_ex(tx_.ctx, nullptr, nullptr, nullptr, nonce, 1);
    EVP_EncryptUpdate(tx_.ctx, nullptr, &outl, rec, header_len);  // the header is the AAD
    uint8_t* dst = rec + header_len;
    while (n > 0) {
        const core::slice& s = plain.part(part);
        size_t take = std::min(n, s.size() - off);
        EVP_EncryptUpdate(tx_.ctx, dst, &outl, s.data() + off, static_cast<int>(take));
        dst += take;
        n -= take;
        off += take;
        if (off == s.size()) {
            ++part;
            off = 0;
        }
    }
    EVP_EncryptUpdate(tx_.ctx, dst, &outl, &type, 1);
    ++dst;
    EVP_EncryptFinal_ex(tx_.ctx, dst, &outl);
    EVP_CIPHER_CTX_ctrl(tx_.ctx, EVP_CTRL_AEAD_GET_TAG, tag_len, dst);
    out.commit(header_len + len);
    ++tx_.seq;
    ++records_since_update_;
}

void record_layer::seal_bytes(uint8_t type, const uint8_t* p, size_t n, block_writer& out) {
    core::slice_chain one(core::slice::unowned(p, n));
    size_t part = 0, off = 0;
    out.ensure(n + seal_overhead);
    seal_record(type, one, part, off, n, out);
}

void record_layer::send_key_update(bool request, block_writer& out) {
    const uint8_t msg[] = {hs_key_update, 0, 0, 1, static_cast<uint8_t>(request ? 1 : 0)};
    seal_bytes(ct_handshake, msg, sizeof(msg), out);
    // The KeyUpdate went out under the old key; everything after, the new.
    if (!secrets_->advance_tx() || !load(tx_, true)) {
        // Cannot happen with keys that loaded once; if it does, the peer
        // will fail our next record and close: better than sending on.
        failed_ = true;
        error_ = "cannot derive the next TX key";
    }
    records_since_update_ = 0;
}

bool record_layer::seal(const core::slice_chain& plain, block_writer& out) {
    if (failed_) return false;
    if (plain.empty()) return true;
    if (!ready()) return false;
    out.ensure(sealed_size(plain.size()));
    if (rekey_after_ && records_since_update_ >= rekey_after_) {
        send_key_update(false, out);
        ++own_updates_;
    }
    size_t part = 0, off = 0, left = plain.size();
    while (left > 0) {
        size_t n = std::min(left, max_plain);
        seal_record(ct_data, plain, part, off, n, out);
        left -= n;
    }
    return !failed_;
}

void record_layer::key_update(bool ask_peer, block_writer& out) {
    if (failed_ || !ready()) return;
    send_key_update(ask_peer, out);
    ++own_updates_;
}

void record_layer::close_notify(block_writer& out) {
    if (failed_ || !ready()) return;
    const uint8_t alert[] = {1, ad_close_notify};  // warning level, as every stack sends it
    seal_bytes(ct_alert, alert, sizeof(alert), out);
}

record_layer::result record_layer::fail(uint8_t alert, std::string why, block_writer& out) {
    if (!failed_) {
        const uint8_t a[] = {2, alert};  // fatal
        seal_bytes(ct_alert, a, sizeof(a), out);
        failed_ = true;
        error_ = std::move(why);
    }
    return result::error;
}

// One record's worth of post-handshake message bytes. Returns false when it
// ended the stream (r set).
bool record_layer::handle_handshake(const uint8_t* p, size_t n, block_writer& out, result& r) {
    hs_.append(reinterpret_cast<const char*>(p), n);
    if (hs_.size() > max_post_handshake) {
        r = fail(ad_unexpected_message, "a post-handshake message longer than 128 KiB", out);
        return false;
    }
    while (hs_.size() >= 4) {
        const auto* m = reinterpret_cast<const uint8_t*>(hs_.data());
        size_t len = size_t(m[1]) << 16 | size_t(m[2]) << 8 | m[3];
        if (hs_.size() < 4 + len) break;
        if (m[0] == hs_key_update) {
            // §4.6.3: one byte, 0 or 1; and §5.1: a message that changes
            // keys must end its record (nothing after it under the old key).
            if (len != 1 || m[4] > 1) {
                r = fail(ad_decode_error, "a malformed KeyUpdate", out);
                return false;
            }
            if (hs_.size() != 5) {
                r = fail(ad_unexpected_message, "data after a KeyUpdate in the same record", out);
                return false;
            }
            bool requested = m[4] == 1;
            hs_.clear();
            if (!secrets_->advance_rx() || !load(rx_, false)) {
                r = fail(ad_internal_error, "cannot derive the next RX key", out);
                return false;
            }
            if (requested) send_key_update(false, out);
            return true;
        }
        if (m[0] != hs_new_session_ticket) {
            r = fail(ad_unexpected_message,
                     "handshake message " + std::to_string(m[0]) + " after the handshake", out);
            return false;
        }
        hs_.erase(0, 4 + len);  // a ticket: this gateway does not resume through it
    }
    return true;
}

record_layer::result record_layer::open(core::slice_chain& in, block_writer& plain,
                                        block_writer& out) {
    if (failed_) return result::error;
    if (in.size() >= header_len && !ready()) return result::error;
    while (in.size() >= header_len) {
        uint8_t h[header_len];
        in.copy_out(0, h, header_len);
        const size_t len = size_t(h[3]) << 8 | h[4];
        // Every TLS 1.3 stack sends 0x0303 (§5.1); anything else is not TLS.
        if (h[1] != 3 || h[2] != 3)
            return fail(ad_decode_error,
                        "not a TLS record (legacy version " + std::to_string(h[1]) + "." +
                            std::to_string(h[2]) + ")",
                        out);
        if (h[0] != ct_data)
            return fail(
                ad_unexpected_message,
                "an unprotected record (type " + std::to_string(h[0]) + ") after the handshake",
                out);
        if (len > max_cipher)
            return fail(ad_record_overflow,
                        "a record of " + std::to_string(len) + " bytes (at most 16,640)", out);
        if (len < 1 + tag_len) return fail(ad_decode_error, "a record too short to open", out);
        if (in.size() < header_len + len) break;

        const size_t n = len - tag_len;  // inner plaintext: content, type, padding
        if (plain.room() < n) plain.ensure(std::clamp(in.size(), n, size_t(256 * 1024)));
        uint8_t* dst = plain.tail();
        uint8_t nonce[12];
        rx_.nonce(nonce);
        int outl = 0;
        EVP_CipherInit_ex(rx_.ctx, nullptr, nullptr, nullptr, nonce, 0);
        EVP_DecryptUpdate(rx_.ctx, nullptr, &outl, h, header_len);
        // The ciphertext where it lies: across as many slices as it arrived in.
        size_t at = header_len, left = n, done = 0;
        for (const core::slice& s : in) {
            if (left == 0) break;
            if (at >= s.size()) {
                at -= s.size();
                continue;
            }
            size_t take = std::min(left, s.size() - at);
            if (EVP_DecryptUpdate(rx_.ctx, dst + done, &outl, s.data() + at,
                                  static_cast<int>(take)) != 1 ||
                size_t(outl) != take)
                return fail(ad_internal_error, "the AEAD did not decrypt in step", out);
            done += take;
            left -= take;
            at = 0;
        }
        uint8_t tag[tag_len];
        in.copy_out(header_len + n, tag, tag_len);
        EVP_CIPHER_CTX_ctrl(rx_.ctx, EVP_CTRL_AEAD_SET_TAG, tag_len, tag);
        if (EVP_DecryptFinal_ex(rx_.ctx, dst + done, &outl) != 1)
            return fail(ad_bad_record_mac, "a record that does not authenticate (bad_record_mac)",
                        out);
        ++rx_.seq;
        in.trim_front(header_len + len);

        // §5.4: the content type is the last non-zero byte; zeros after it pad.
        size_t end = n;
        while (end > 0 && dst[end - 1] == 0) --end;
        if (end == 0) return fail(ad_unexpected_message, "a record with no content type", out);
        const uint8_t type = dst[end - 1];
        const size_t body = end - 1;
        if (body > max_plain)
            return fail(ad_record_overflow, "a record with more than 16 KiB of content", out);
        if (type == ct_data) {
            plain.commit(body);  // only now: the bytes are authenticated
            continue;
        }
        if (type == ct_alert) {
            if (body != 2) return fail(ad_decode_error, "a malformed alert", out);
            if (dst[1] == ad_close_notify) return result::closed;
            failed_ = true;
            error_ = std::string("alert received: ") + SSL_alert_desc_string_long(dst[1]);
            return result::error;
        }
        if (type == ct_handshake) {
            if (body == 0) return fail(ad_unexpected_message, "an empty handshake record", out);
            result r = result::ok;
            if (!handle_handshake(dst, body, out, r)) return r;
            continue;
        }
        return fail(ad_unexpected_message,
                    "a record of content type " + std::to_string(type) + " after the handshake",
                    out);
    }
    return result::ok;
}

}  // namespace rpcgate::tls
