// moved_state: what a TLS 1.3 session is once OpenSSL has finished the
// handshake and no longer holds any of its record state -- enough for
// another process to go on with the same connection (a live upgrade,
// gateway/upgrade.h).
//
// That is so in two cases:
//   - rpcgate's own record layer both ways (tls/record_layer.h): the traffic
//     secrets and the two record sequence numbers are the whole state;
//   - kTLS both ways: the socket itself holds the keys and the sequence
//     numbers; the secrets travel for the key updates after the move
//     (tls/ktls.h, traffic_secrets).
// Plus what the gateway shows and decides on: flags, version, suite, ALPN,
// the peer's subject and certificate (CRL reloads check it).
//
// Secrets are wiped when the struct goes away. Plain data: no OpenSSL types,
// so that the hand-off format (gateway/upgrade_wire.h) can carry it.
#pragma once

#include <cstdint>
#include <string>

namespace rpcgate::tls {

struct moved_state {
    enum class records : uint8_t {
        own = 1,     // rpcgate's record layer, in userspace
        kernel = 2,  // kTLS TX and RX on the socket
    };
    records where = records::own;
    uint32_t flags = 0;  // tls::flag
    uint32_t suite = 0;  // SSL_CIPHER_get_id
    std::string version, cipher, alpn, peer_subject;
    std::string peer_cert;  // DER; "" when the peer sent none
    // The current application traffic secrets (RFC 8446 §7.1), equal length.
    std::string tx_secret, rx_secret;
    uint64_t tx_generation = 0, rx_generation = 0;
    // Own records: the sequence number of the next record each way, and our
    // records under the current TX key (for --tls-rekey-after).
    uint64_t tx_seq = 0, rx_seq = 0;
    uint64_t records_since_update = 0;
    uint64_t own_updates = 0;

    moved_state() = default;
    moved_state(const moved_state&) = default;
    moved_state& operator=(const moved_state&) = default;
    ~moved_state() { wipe(); }
    void wipe() noexcept;
    bool operator==(const moved_state&) const = default;
};

}  // namespace rpcgate::tls
