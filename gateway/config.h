// Gateway configuration: the command line and the TOML file, merged.
//
// Every option has a long form on the command line and the same key in the
// config file (`--idle-timeout 30` == `idle_timeout = 30`); the file is read
// first and the command line wins. A bad option or file yields one line that
// says what is wrong, and a non-zero exit from main().
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

namespace rpcgate::gw {

// A resolved socket address with the text it came from.
struct endpoint {
    sockaddr_storage addr{};
    socklen_t len = 0;
    std::string text;
    uint16_t port() const noexcept;
    void set_port(uint16_t p) noexcept;
};

// "HOST:PORT", "[v6addr]:PORT" or "PORT" (all interfaces when allowed).
bool parse_endpoint(const std::string& text, endpoint* out, std::string* err);

// How much TLS a listener (--tls) or a backend (upstream TLS) demands. (How
// a client starts TLS, STARTTLS or implicit, is client::tls_mode.)
enum class tls_policy { off, opportunistic, required, mtls };
const char* tls_policy_name(tls_policy m) noexcept;

// RPC-with-TLS towards one backend (the RFC 9289 client role). `mode`:
//   off           plaintext;
//   opportunistic probe; a server that does not answer STARTTLS is used in
//                 plaintext (logged); a failed handshake still fails;
//   required      probe + TLS 1.3, or the backend connection (and the client
//                 connection that needed it) is refused;
//   mtls          required, presenting `cert`/`key`.
// The server certificate is verified against `ca` with `server_name` (a DNS
// name, no wildcard matching, or an IP address checked against the IP SAN).
struct upstream_tls {
    tls_policy mode = tls_policy::off;
    std::string ca, cert, key;
    std::string server_name;   // "" = the backend's host as written
    bool alpn_strict = false;  // refuse a server that selects no ALPN
};

// PROG=HOST:PORT[,tls=MODE][,name=NAME][,ca=FILE][,cert=FILE][,key=FILE]
// where PROG is a number or a well-known name (nfs, mount, ...). The options
// override the --upstream-* defaults for this backend.
struct backend_route {
    uint32_t prog = 0;
    uint32_t vers = 0;  // ",vers=N": this version of prog only; 0: every version
    endpoint target;
    std::string spec;  // as written, for logs
    std::string host;  // HOST as written (no port)
    // Overrides given in the spec ("" / unset = take the global default).
    bool tls_set = false;
    upstream_tls tls;  // after validate(): the effective settings
};
bool parse_backend(const std::string& text, backend_route* out, std::string* err);

// Which programs a TLS-demanding listener (--tls required|mtls) demands TLS
// for (--require-tls-for). A call of any other program is served in
// plaintext too, as knfsd and the Linux client do: `xprtsec=` protects the
// NFS program only, while mount.nfs asks portmap and MOUNT, and lockd/statd
// speak NLM and NSM, in plaintext (README.md, "Which programs need
// TLS"). Inside TLS every program is served.
struct program_set {
    bool all = false;             // every program ("all")
    std::vector<uint32_t> progs;  // else these
    bool contains(uint32_t prog) const noexcept;
};
// The default: NFS (100003) and NFS_ACL (100227), the programs that carry file
// data and that `xprtsec=` covers.
program_set default_tls_programs();
// "all", or a comma-separated list of program numbers or well-known names
// ("nfs,nfs_acl,mount"); `what` names the option in the error.
bool parse_program_set(const std::string& text, program_set* out, std::string* err,
                       const char* what);
// "nfs,nfs_acl" / "all": the set as an operator writes it (logs, --check-config).
std::string program_set_text(const program_set& s);

struct gateway_config {
    std::vector<endpoint> listen;
    // Listeners where TLS starts with the first byte (stunnel / efs-utils style).
    std::vector<endpoint> implicit_tls;
    std::vector<backend_route> backends;
    unsigned shards = 0;  // 0: one per core
    tls_policy tls = tls_policy::off;
    // With --tls required or mtls: the programs refused in plaintext
    // (AUTH_TOOWEAK); the others are served in plaintext as well.
    program_set tls_programs = default_tls_programs();
    std::string cert, key, ca, crl;
    bool alpn_strict = false;  // refuse TLS clients that offer no ALPN
    // On --listen ports, a connection whose first byte is a TLS handshake
    // record (0x16) is taken as implicit TLS. No record mark can start with
    // 0x16: that would announce a non-final fragment of over 350 MiB.
    bool tls_auto = false;
    // Map file: a verified client certificate -> AUTH_SYS identity that replaces
    // the credentials of every call on that connection (FreeBSD's tlscertuser).
    std::string cert_user_map;
    uint32_t handshake_timeout_ms = 10000;
    // Kernel TLS, both roles: "auto" (default: used when the kernel
    // has it, tls::ktls::kernel_has_ktls), "off" (OpenSSL over memory BIOs on
    // the shards), "on" (handshakes on socket BIOs even where the kernel has
    // no kTLS: every direction then stays in userspace; for tests).
    std::string ktls = "auto";
    // KeyUpdate of our TX keys after this many records under one key (RFC
    // 8446 §5.5), kTLS and userspace alike; 0 (default): the AEAD's limit
    // (tls::ktls::aead_record_limit: 2^24 for AES-GCM, none for ChaCha20).
    uint64_t tls_rekey_after = 0;
    // kTLS record options (tls::ktls::set_rx_expect_no_pad, set_tx_max_payload),
    // both roles, where the kernel holds the record layer: the peers do not pad
    // their TLS 1.3 records (the kernel then decrypts in place; a padded one is
    // decrypted twice and counted by the kernel); the most plaintext per record
    // the gateway sends, 64..16384 (0: the kernel's 16384).
    bool ktls_rx_no_pad = false;
    uint32_t ktls_tx_record_size = 0;
    // Tests only (no option): false leaves RX in userspace (half kTLS, TX only).
    bool ktls_rx = true;
    // "1.3" (RFC 9289 §5.1) or "1.2": evaluation only (NIC offload of TLS 1.3
    // is limited), outside RFC 9289, logged at warn level at start.
    std::string tls_min_version = "1.3";
    // TLS 1.3 cipher suites in order of preference, both roles (the listeners'
    // order wins over the client's). "": tls::preferred_ciphersuites(),
    // AES-128-GCM first where the CPU has AES instructions.
    std::string tls_ciphersuites;
    // Userspace TLS 1.3 data records, both roles: "own" (tls/record_layer.h:
    // decrypted from the receive slices, encrypted into the send blocks, no
    // copy besides the AEAD) or "openssl" (SSL_read/SSL_write).
    std::string tls_record_layer = "own";
    std::string admin;
    // Defaults for every backend (each may override them in its spec).
    upstream_tls upstream;
    // Listen even where another process (same user) already listens on the
    // port, sharing its clients by SO_REUSEPORT. Off: such a start is refused.
    bool reuse_port = false;
    // Backend connections from a source port in [reserved_low, reserved_high]
    // (knfsd's `secure`), when the process may bind one (privileges.h);
    // otherwise, and when the range is used up, an ephemeral port (counted).
    bool reserved_port = true;
    uint16_t reserved_low = 512, reserved_high = 1023;
    bool answer_portmap = true;  // answer portmap v2 GETPORT/NULL locally
    // Count and time every forwarded call per kind (rpc/call_kind.h); off
    // only to measure what that costs.
    bool call_stats = true;
    uint32_t idle_timeout_s = 300;  // 0: never
    uint32_t connect_timeout_ms = 5000;
    uint32_t drain_timeout_ms = 5000;
    // In-place upgrade (upgrade.h): the binary to start ("" = the one this
    // process was started from); how long the new process has to say it is
    // ready; how long connections have to reach a record boundary (to
    // move) or an idle point (to close cleanly) before they are closed.
    std::string upgrade_binary;
    uint32_t upgrade_timeout_ms = 10000;
    uint32_t upgrade_drain_timeout_ms = 10000;
    // Hidden: set by the running process for the binary that takes over
    // (the hand-off socket); -1 otherwise.
    int upgrade_fd = -1;
    uint32_t max_connections = 65536;
    // Per source address (IPv6: per /64), gateway-wide, 0 = no limit: open
    // connections, and TLS handshakes a second (burst: back to back).
    uint32_t max_connections_per_source = 0;
    uint32_t handshake_rate_per_source = 0;
    uint32_t handshake_burst_per_source = 0;
    uint64_t max_record = 4 * 1024 * 1024 + 64 * 1024;
    // Per connection and direction: bytes queued towards a peer before the
    // other side stops being read.
    uint64_t max_inflight = 8 * 1024 * 1024;
    // Receive buffers per shard (power of two): 512 x 32 KiB = 16 MiB a shard, which
    // holds eight 1 MiB records in flight with room to spare; RSS after load is
    // what these buffers cost, so the default stays modest.
    uint32_t buffers = 512;
    uint32_t buffer_size = 32 * 1024;
    std::string log_level = "info";
    std::string audit_log;  // file for the audit lines (RFC 9289 §6); "" = with the rest
    // Client-facing packet I/O: "uring" (kernel sockets) or "dpdk" (DPDK + lwIP
    // on one shard, see dpdk/backend.h); `dpdk_args` go to rte_eal_init.
    std::string io_backend = "uring";
    std::string dpdk_args;
    std::string config_file;
    bool check_only = false;
};

// Parses argv. Returns -1 to go on, or an exit status (0 after --help or
// --version, 2 on error) with its message already printed.
int parse_command_line(int argc, char** argv, gateway_config* cfg);

// Applies a TOML file to `cfg` (used by parse_command_line; exposed for tests).
bool load_config_file(const std::string& path, gateway_config* cfg, std::string* err);

// Checks cross-option rules (at least one listener and backend, TLS files...).
bool validate(gateway_config* cfg, std::string* err);

}  // namespace rpcgate::gw
