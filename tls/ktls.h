// Kernel TLS (Linux kTLS) for RPC-with-TLS: where a connection's crypto runs,
// the handshake that hands the record layer to the kernel, and the socket
// calls of the kTLS data path.
//
// Three parts, each usable alone:
//
// 1. Reporting. `query(fd)` asks the kernel where one socket's TLS runs, for
//    TX and RX separately: `userspace` (no kTLS: OpenSSL does it), `ktls-sw`
//    (the kernel's software crypto) or `ktls-hw` (offloaded to the NIC, also
//    for TLS_CONF_HW_RECORD). It reads sock_diag (NETLINK_SOCK_DIAG,
//    INET_DIAG_ULP_INFO: TLS version, cipher, TX/RX conf), which the kernel
//    fills only for a caller with CAP_NET_ADMIN; without it, getsockopt
//    (SOL_TLS) still tells kernel from userspace, reported as `ktls` (kernel,
//    software or NIC unknown). A socket without the "tls" ULP is answered
//    with one getsockopt(TCP_ULP), no netlink. `read_tls_stat()` parses
//    /proc/net/tls_stat (empty where the kernel has no kTLS).
//
// 2. The handshake (control thread). OpenSSL 3.0 switches a direction to
//    kTLS itself when SSL_OP_ENABLE_KTLS is set, the cipher is one the
//    kernel has, and the BIO is a socket BIO: at the change to the
//    application traffic keys it calls BIO_set_ktls, which for BIO_s_socket
//    is setsockopt(SOL_TLS, TLS_TX|TLS_RX) with the right keys and sequence
//    numbers. Memory BIOs never engage (tls::session). `attach_socket` gives
//    an SSL socket BIOs on the connection's fd, with read-ahead off (OpenSSL
//    must not read past the client's Finished: the kernel decrypts from the
//    next byte) and the bytes a shard already read served first. The caller
//    drives `handshake_step` on poll readiness (the fd is non-blocking),
//    then `finish`, which says which directions the kernel took -- and
//    installs TLS 1.3 RX itself, which OpenSSL 3.0 does not do.
//
// 3. The data path (shard). On a kTLS socket the shard sends and receives
//    plaintext. The kernel keeps record types: `recv_record` reads with a
//    control buffer and returns the TLS_GET_RECORD_TYPE of what it read (one
//    type per call); a plain recv()/IORING_OP_RECV fails with EIO at a
//    non-data record and leaves it queued, so a shard can keep plain
//    receives and call recv_record after an EIO. `classify` says what a
//    non-data record is (close_notify, alert, KeyUpdate, NewSessionTicket) and
//    what to do; `send_record`/`send_alert` write a record of another type.
//
// Part 1 is ktls_report.cc, part 2 (and key updates) ktls.cc, part 3
// ktls_records.cc.
//
// Threads: everything here is reentrant; a diag_socket is used by one thread.
#pragma once

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tls/moved_state.h"

namespace rpcgate::tls::ktls {

// ---- where the crypto runs ----

enum class mode : uint8_t {
    userspace,  // no kTLS in this direction: OpenSSL (or nothing) encrypts
    ktls_sw,    // TLS_CONF_SW: the kernel's crypto
    ktls_hw,    // TLS_CONF_HW / TLS_CONF_HW_RECORD: the NIC's
    ktls,       // the kernel, software or NIC unknown (no CAP_NET_ADMIN for sock_diag)
};
// "userspace", "ktls-sw", "ktls-hw", "ktls".
const char* mode_name(mode m) noexcept;

struct protection {
    mode tx = mode::userspace;
    mode rx = mode::userspace;
    uint16_t version = 0;    // TLS_1_3_VERSION (0x0304), TLS_1_2_VERSION; 0 = none/unknown
    uint16_t cipher = 0;     // TLS_CIPHER_AES_GCM_128 ... (linux/tls.h); 0 = none/unknown
    bool ulp = false;        // the socket has the "tls" ULP (OpenSSL sets it on socket BIOs)
    bool from_diag = false;  // read from sock_diag (else getsockopt)
    // "TLSv1.3" / "TLSv1.2" / "" and "AES-GCM-128" / "AES-GCM-256" /
    // "CHACHA20-POLY1305" / ... / "".
    std::string version_name() const;
    std::string cipher_name() const;
};

// A NETLINK_SOCK_DIAG socket kept open for many queries (the admin listing
// asks per connection). One thread at a time.
class diag_socket {
  public:
    diag_socket() = default;
    ~diag_socket();
    diag_socket(const diag_socket&) = delete;
    diag_socket& operator=(const diag_socket&) = delete;

    // Where the TLS crypto of TCP socket `fd` runs. Never fails: what the
    // kernel cannot say falls back as described at the top.
    protection query(int fd);

  private:
    bool diag(int fd, protection& p);
    int nl_ = -1;
    uint32_t seq_ = 0;
};

// One-off query (opens and closes a netlink socket when the ULP is there).
protection query(int fd);

// /proc/net/tls_stat: {"TlsTxSw", 3}, ... in the kernel's order; empty when
// the file is absent (no kTLS) or unreadable.
std::vector<std::pair<std::string, uint64_t>> read_tls_stat(
    const char* path = "/proc/net/tls_stat");
// The value of `name` in `stat`, 0 when absent.
uint64_t stat_value(const std::vector<std::pair<std::string, uint64_t>>& stat,
                    std::string_view name) noexcept;

// ---- the handshake ----

// Replaces the BIOs of `ssl` (before its handshake) with socket BIOs on `fd`
// (BIO_NOCLOSE: the caller keeps the fd), makes fd O_NONBLOCK and turns
// read-ahead off. `early`
// holds bytes already read from fd (the ClientHello a shard saw): OpenSSL
// reads them first. SSL_OP_ENABLE_KTLS must be set on the SSL (tls::context
// sets it). The RX direction is refused to the kernel (OpenSSL carries on in
// userspace) if any early byte is still unread when the keys change.
bool attach_socket(SSL* ssl, int fd, std::string_view early, std::string* err);

enum class step { want_read, want_write, done, error };
// One SSL_do_handshake on a non-blocking fd: poll for POLLIN / POLLOUT and
// call again, or done, or error (SSL_get_error / the OpenSSL error queue).
step handshake_step(SSL* ssl);

struct directions {
    bool tx = false;
    bool rx = false;
};

// Call once the handshake is done, before any SSL_read: completes the hand-
// over and says which directions run in the kernel. OpenSSL 3.0 takes TX
// itself for TLS 1.2 and 1.3, but RX only for TLS 1.2 (its TLS 1.3 code
// skips kTLS for the read side; 3.2 added it). For TLS 1.3 RX this derives
// the peer's application traffic key and IV from the traffic secret that
// the keylog callback saw (RFC 8446 §7.1/§7.3: HKDF-Expand-Label "key",
// "iv") and installs them with setsockopt(SOL_TLS, TLS_RX) at record
// sequence 0 -- right after the handshake with read-ahead off, OpenSSL has
// read no record under those keys, and no byte of the socket is buffered
// anywhere (checked: otherwise RX stays in userspace). RX moves only when TX
// is in the kernel already: a connection is all-userspace, send-only kTLS,
// or kTLS both ways, never receive-only. The secrets are wiped afterwards
// either way. From then on OpenSSL must not read the socket: the
// SSL is only good for its metadata (version, cipher, peer certificate).
class traffic_secrets;
// `keep`: for TLS 1.3, the application traffic secrets move there instead of
// being wiped (for key updates; see traffic_secrets).
directions finish(SSL* ssl, int fd, traffic_secrets* keep = nullptr);

// The TLS 1.3 application traffic secrets of one connection, kept after
// finish() for key updates (RFC 8446 §4.6.3): each KeyUpdate moves one
// direction to HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)
// (§7.2). Linux takes new keys on a kTLS socket from 6.14 on (TLS_RX/TLS_TX
// set again; reads fail with EKEYEXPIRED between the peer's KeyUpdate and
// the new RX key); older kernels refuse with EBUSY and the caller closes
// (gateway/control_records.h). Keeping them costs two secrets per connection in memory:
// keep them only where a rekey can happen. Wiped when destroyed. Used by one
// thread at a time (whichever handles the connection's control records).
class traffic_secrets {
  public:
    traffic_secrets() = default;
    ~traffic_secrets();
    traffic_secrets(const traffic_secrets&) = delete;
    traffic_secrets& operator=(const traffic_secrets&) = delete;

    bool valid() const noexcept { return len_ > 0 && md_; }
    // The peer's KeyUpdate was read off the socket: install its next key as
    // the kernel's RX key. false (errno; EBUSY: this kernel cannot rekey):
    // nothing changed.
    bool rekey_rx(int fd);
    // Our own update (the peer set update_requested): sends KeyUpdate
    // (update_not_requested) under the current TX key, then installs the
    // next TX key. The caller sends nothing else on fd in between. false
    // with the KeyUpdate already sent (the install failed) leaves the peer
    // expecting a key we cannot use: close without close_notify.
    bool rekey_tx(int fd);
    // The next secret of a direction without installing it anywhere (a
    // userspace record layer, tests); counts a generation.
    bool advance_rx();
    bool advance_tx();
    // Key generations installed since the handshake (0: the handshake's
    // application traffic keys), by direction: /connections shows them.
    uint64_t rx_generation() const noexcept { return rx_gen_; }
    uint64_t tx_generation() const noexcept { return tx_gen_; }

    // For tests and diagnostics: the AEAD key and 12-byte IV of the current
    // RX secret (RFC 8446 §7.3).
    struct record_keys {
        uint8_t key[32];
        size_t key_len = 0;
        uint8_t iv[12];
    };
    bool rx_keys(record_keys* out) const;
    bool tx_keys(record_keys* out) const;
    // SSL_CIPHER_get_id of the connection's suite.
    uint32_t suite() const noexcept { return suite_; }

    // A live upgrade (tls/moved_state.h): the suite, the current secrets and
    // the generations out of this process, and back in the next. restore
    // fails for a suite that is not TLS 1.3's or secrets of the wrong length.
    void save(moved_state& st) const;
    bool restore(const moved_state& st);

  private:
    friend directions finish(SSL* ssl, int fd, traffic_secrets* keep);
    friend bool keep_secrets(SSL* ssl, traffic_secrets* keep);
    bool keys_of(const uint8_t* secret, record_keys* out) const;
    void wipe() noexcept;
    bool advance(uint8_t* secret);
    const EVP_MD* md_ = nullptr;
    uint32_t suite_ = 0;  // SSL_CIPHER_get_id
    uint64_t rx_gen_ = 0;
    uint64_t tx_gen_ = 0;
    size_t len_ = 0;
    uint8_t rx_[EVP_MAX_MD_SIZE] = {};
    uint8_t tx_[EVP_MAX_MD_SIZE] = {};
};

// The sequence number of the next record the kernel sends under the current
// TX key (getsockopt(SOL_TLS, TLS_TX) returns the crypto_info with its
// rec_seq): how many records that key has protected. false (errno) when TX
// is not in the kernel or the cipher is unknown.
bool tx_record_seq(int fd, uint64_t* seq);

// RFC 8446 §5.5: records one key may protect before a KeyUpdate. AES-GCM:
// 2^24.5 full-size records; the gateway rekeys at 2^24. ChaCha20-Poly1305:
// more than the sequence number allows: no limit (0). `suite` is
// SSL_CIPHER_get_id of the connection's cipher.
uint64_t aead_record_limit(uint32_t suite) noexcept;

// Which directions run in the kernel now: OpenSSL's own (BIO_get_ktls_send
// on the wbio, BIO_get_ktls_recv on the rbio) plus an RX that finish()
// installed.
directions engaged(SSL* ssl);

// For a session whose records are not the kernel's either (tls::session's
// own record layer): `track_secrets` before the handshake makes the keylog
// callback keep this SSL's TLS 1.3 application traffic secrets
// (prepare_context must have run on its context); `keep_secrets` after it
// moves them into `keep` (false: not TLS 1.3, or the callback saw none).
void track_secrets(SSL* ssl);
bool keep_secrets(SSL* ssl, traffic_secrets* keep);

// Installs the keylog callback that finish() needs on `ctx` (attach_socket
// does it too). Returns false if the context already has another keylog
// callback: then TLS 1.3 RX stays in userspace. Call it when the context is
// made, before handshakes run on other threads.
bool prepare_context(SSL_CTX* ctx);

// Probe: can this kernel run kTLS at all (a loopback TCP pair accepts the
// "tls" ULP, loading the module on demand)? For tests and start-up logs.
bool kernel_has_ktls();
// Probe (once per process, cached): can this kernel change a kTLS socket's
// TLS 1.3 keys (Linux 6.14+)? The gateway initiates a kernel TX KeyUpdate
// only where it can; a peer's KeyUpdate is tried and its failure handled.
bool kernel_can_rekey();

// Record options the kernel offers on a kTLS socket (Documentation/networking/tls.rst):
//   - TLS_RX_EXPECT_NO_PAD (Linux 6.0+, TLS 1.3 RX): the peer does not pad its
//     records, so the kernel may decrypt straight into the reader's buffer. A
//     padded record still arrives intact, decrypted a second time
//     (TlsRxNoPadViolation, TlsDecryptRetry in /proc/net/tls_stat).
//   - TLS_TX_MAX_PAYLOAD_LEN (kernels of 2026; kernel_has_tx_max_payload
//     tells): the most plaintext one record the kernel sends carries, 64 to
//     16384 (the default); RFC 8449's record_size_limit less the content type
//     byte in TLS 1.3. Refused (EBUSY) while a record is open.
// false (errno) when the kernel refuses or does not know the option.
bool set_rx_expect_no_pad(int fd);
bool set_tx_max_payload(int fd, uint16_t bytes);
// Probe (once per process, cached): does this kernel know TLS_TX_MAX_PAYLOAD_LEN?
bool kernel_has_tx_max_payload();

// ---- the data path ----

// TLS content types (RFC 8446 §5.1), as TLS_GET/SET_RECORD_TYPE carry them.
enum record_type : uint8_t {
    rt_none = 0,  // no record type came with the bytes: not a kTLS RX socket
    rt_change_cipher_spec = 20,
    rt_alert = 21,
    rt_handshake = 22,
    rt_application_data = 23,
};

// Room for the control message that carries the record type; size the
// msg_control of an IORING_OP_RECVMSG with it.
inline constexpr size_t record_cmsg_space = CMSG_SPACE(sizeof(uint8_t));

// The record type in a received msghdr's control messages, rt_none if absent.
uint8_t record_type_of(const msghdr& m) noexcept;

// recvmsg(fd, buf, len) with a control buffer: bytes of records of one type
// (the kernel stops at a change of type), their type in *type. Returns the
// byte count, 0 at EOF, or -errno (-EAGAIN on a non-blocking socket with
// nothing to read, -EBADMSG for a record that failed to decrypt).
ssize_t recv_record(int fd, void* buf, size_t len, uint8_t* type, int flags = 0);

// Sends one record of `type` through a kTLS TX socket (sendmsg with
// TLS_SET_RECORD_TYPE). Returns bytes sent or -errno.
ssize_t send_record(int fd, uint8_t type, const void* data, size_t len, int flags = 0);
// An alert record (level 1 warning, 2 fatal; RFC 8446 §6), MSG_DONTWAIT.
// close_notify is send_alert(fd, 1, 0).
ssize_t send_alert(int fd, uint8_t level, uint8_t description);

// What a non-application record means and what the connection should do.
enum class control {
    close_notify,        // the peer closes: send close_notify, close
    alert,               // any other alert (fatal in TLS 1.3): close, no reply
    new_session_ticket,  // consumed; the connection goes on
    key_update,          // the peer's keys changed: rekey RX or close cleanly
    unexpected,          // a protocol violation: close with unexpected_message
};
struct control_record {
    control kind = control::unexpected;
    uint8_t alert_level = 0;            // alerts
    uint8_t alert_description = 0;      // alerts
    bool update_requested = false;      // key_update: the peer asked for ours too
    const char* name() const noexcept;  // "close_notify", "alert", ...
};
// Reads the record a kTLS RX receive stopped at: a plain receive (the
// shard's) failed with EIO, or recv_record gave a non-data type, so the
// record waits at the head of the socket. Non-blocking; records are at most
// 16 KiB of plaintext. -EAGAIN: nothing there; 0: EOF; -EBADMSG etc.: the
// connection is broken; >0: its length, with *out filled (application data,
// which should not happen here, comes back as `unexpected`). What the
// connection does next is the gateway's (gateway/control_records.h).
ssize_t read_control(int fd, control_record* out);

// Classifies the plaintext of one non-data record of `type`. A handshake
// record may hold several messages: KeyUpdate wins over tickets; anything
// but NewSessionTicket/KeyUpdate is unexpected after the handshake.
control_record classify(uint8_t type, const uint8_t* data, size_t len) noexcept;

}  // namespace rpcgate::tls::ktls
