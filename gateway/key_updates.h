// TLS 1.3 key updates of one connection of the gateway (a client session or
// a backend link), in kernel TLS and in userspace (RFC 8446 §4.6.3, §5.5).
//
// Three events change a key:
//   - the peer's KeyUpdate on kTLS RX (gateway/control_records.h,
//     follow_key_update): the next RX key is installed at once; the receive,
//     which ended at the record, starts again on the same socket;
//   - the peer asked for ours too (update_requested): our KeyUpdate and the
//     next TX key, once nothing is queued or in flight on the socket;
//   - our TX key protected `--tls-rekey-after` records (default: the AEAD's
//     limit, tls::ktls::aead_record_limit): the same, on our own initiative.
//     In userspace OpenSSL does it (tls::session::set_rekey_after); on kTLS
//     TX the kernel's own record count (tls::ktls::tx_record_seq) decides,
//     read only when a cheap upper bound of the records sent since the last
//     look says the limit may have come. Only where the kernel can take a
//     new TX key (tls::ktls::kernel_can_rekey, Linux 6.14+) and the secrets
//     were kept (RX in the kernel too).
//
// Where the kTLS TX key cannot change (Linux before 6.14, or half kTLS, which
// keeps no secrets), the same count ends the connection instead: once the
// key has protected its records it must not protect more (RFC 8446 §5.5), so
// the owner closes cleanly, with close_notify after the RPC record that was
// just queued, and counts it (tls_key_exhausted_closes). The client
// reconnects with fresh keys.
//
// The owner (client_session, backend_link) does the stream part: a kTLS
// socket whose receive ended at a control record, or that must be quiet for
// a TX rekey, is detached (core::stream::detach lets queued sends leave
// first) and adopted again; `on_drained` runs in between. Bytes are neither
// lost nor reordered, and the connection is the same.
//
// Shard thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "gateway/metrics.h"
#include "tls/session.h"

namespace rpcgate::gw {

class key_updates {
  public:
    // After the handshake, with the connection's session: `rekey_after` is
    // --tls-rekey-after (0: the AEAD's limit); `record_size` the most
    // plaintext per kTLS TX record (--ktls-tx-record-size; 0: 16384).
    void start(tls::session& tls, uint64_t rekey_after, size_t record_size = 0);
    // kTLS TX of a connection moved in from another process: the records
    // its key protected there count too.
    void resume(int fd);

    // What the owner does after queuing kTLS TX bytes.
    enum class tx_step {
        go_on,  // the key has records left (or has no limit)
        rekey,  // due for an update: the owner starts a quiet spell (detach)
                // and calls on_drained
        close,  // used up and it cannot change: the owner logs close_reason,
                // counts tls_key_exhausted_closes and closes with close_notify
    };
    // kTLS TX: `bytes` (whole RPC records) were just queued on `fd`.
    tx_step due(int fd, size_t bytes);
    // One line for the log when due() said close.
    std::string close_reason() const;
    // The peer asked for our KeyUpdate (follow_key_update's rekey_tx).
    void owe() noexcept { owed_ = owed_peer_ = true; }
    bool owed() const noexcept { return owed_; }
    // Nothing queued or in flight on `fd`: sends the KeyUpdate owed, if any,
    // and installs the next TX key, counting it. false (*why): the owner
    // closes without close_notify.
    bool on_drained(int fd, gateway_counters& c, std::string* why);

    // Userspace TX: counts the KeyUpdates OpenSSL sent for us since the last call.
    void count_userspace(gateway_counters& c);

    // Key generations for /connections: {"tx":N,"rx":M}.
    std::string generations_json() const;

  private:
    tls::session* tls_ = nullptr;
    uint64_t limit_ = 0;  // records per TX key on kTLS TX; 0: never
    size_t record_size_ = 16384;
    bool can_rekey_ = false;  // else the connection closes at limit_
    bool exhausted_ = false;  // due() said close
    uint64_t left_ = 0;       // records that surely still fit before a look at the kernel's count
    uint64_t userspace_seen_ = 0;
    bool owed_ = false;
    bool owed_peer_ = false;
};

}  // namespace rpcgate::gw
