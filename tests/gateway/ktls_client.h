// The independent TLS client of the gateway's kTLS tests (ktls_gateway_test.cc,
// ktls_rekey_test.cc): plain OpenSSL in userspace on a blocking socket, RPC
// records made by hand (the client must not share the gateway's code).
// Self-contained, so that tests/vm runs the test binaries in the guest.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "tests/unit/tls/ktls_test_util.h"

namespace rpcgate::test_gw {

using namespace rpcgate::tls::ktls::test;  // clock_type, io_timeout_ms, certs

inline constexpr uint32_t k_echo_prog = 0x20000001;
inline constexpr int k_io_timeout_ms = io_timeout_ms;

inline int64_t ms_since(clock_type::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t).count();
}

// Waits for `cond` up to `ms`; true if it held.
template <typename F>
inline bool eventually(F cond, int ms = 3000) {
    auto end = clock_type::now() + std::chrono::milliseconds(ms);
    while (clock_type::now() < end) {
        if (cond()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return cond();
}

// An SSL message callback (SSL_set_msg_callback, `arg` a uint64_t*) that
// counts the KeyUpdates (handshake type 24) the client's OpenSSL received.
inline void count_key_updates(int write_p, int, int content_type, const void* buf, size_t len, SSL*,
                              void* arg) {
    if (!write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
        static_cast<const uint8_t*>(buf)[0] == 24)
        ++*static_cast<uint64_t*>(arg);
}

// ---- RPC records by hand (the client must not share the gateway's code) ----

inline void put32(std::string& s, uint32_t v) {
    v = htonl(v);
    s.append(reinterpret_cast<const char*>(&v), 4);
}
inline uint32_t get32(const std::string& s, size_t off) {
    uint32_t v;
    std::memcpy(&v, s.data() + off, 4);
    return ntohl(v);
}

// A CALL of the echo program, framed: proc 0 with AUTH_TLS = the probe,
// proc 1 with AUTH_NONE = ECHO of `payload`.
inline std::string call_record(uint32_t xid, uint32_t proc, uint32_t cred,
                               const std::string& payload) {
    std::string b;
    for (uint32_t w : {xid, 0u, 2u, k_echo_prog, 1u, proc, cred, 0u, 0u, 0u}) put32(b, w);
    if (proc == 1) {
        put32(b, uint32_t(payload.size()));
        b += payload;
        b.append((4 - payload.size() % 4) % 4, '\0');
    }
    std::string rec;
    put32(rec, 0x80000000u | uint32_t(b.size()));
    return rec + b;
}

inline std::string last_ssl_error() {
    std::string s;
    char buf[256];
    while (unsigned long e = ERR_get_error()) {
        ERR_error_string_n(e, buf, sizeof buf);
        if (!s.empty()) s += "; ";
        s += buf;
    }
    return s;
}

// The independent client: plain OpenSSL in userspace (no SSL_OP_ENABLE_KTLS)
// on a blocking socket with I/O timeouts.
class client {
  public:
    // `version`: the only TLS version offered.
    explicit client(int version = TLS1_3_VERSION) {
        ctx_ = SSL_CTX_new(TLS_client_method());
        SSL_CTX_clear_options(ctx_, SSL_OP_ENABLE_KTLS);
        SSL_CTX_set_min_proto_version(ctx_, version);
        SSL_CTX_set_max_proto_version(ctx_, version);
        SSL_CTX_load_verify_locations(ctx_, certs().cert.c_str(), nullptr);
        SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
        static const unsigned char alpn[] = {6, 's', 'u', 'n', 'r', 'p', 'c'};
        SSL_CTX_set_alpn_protos(ctx_, alpn, sizeof alpn);
    }
    ~client() {
        SSL_free(ssl_);
        SSL_CTX_free(ctx_);
        if (fd_ >= 0) ::close(fd_);
    }
    int fd() const { return fd_; }
    SSL* ssl() const { return ssl_; }

    bool connect(uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        timeval tv{k_io_timeout_ms / 1000, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        int one = 1;
        ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    }

    // RFC 9289 §4.1: the AUTH_TLS probe, answered with the STARTTLS verifier.
    std::string starttls() {
        std::string p = call_record(0x5157, 0, 7, "");
        if (::send(fd_, p.data(), p.size(), MSG_NOSIGNAL) != ssize_t(p.size())) return "send probe";
        std::string rec;
        if (!read_plain_record(rec)) return "no reply to the probe";
        if (rec.find("STARTTLS") == std::string::npos) return "the probe was not answered STARTTLS";
        return "";
    }

    std::string handshake() {
        ssl_ = SSL_new(ctx_);
        SSL_set_fd(ssl_, fd_);
        SSL_set_tlsext_host_name(ssl_, "localhost");
        if (SSL_connect(ssl_) != 1) return "SSL_connect: " + last_ssl_error();
        return "";
    }

    bool write(const std::string& s) {
        size_t put = 0;
        return s.empty() || (SSL_write_ex(ssl_, s.data(), s.size(), &put) == 1 && put == s.size());
    }

    // Next record through TLS; false at close or error (see closed()).
    bool read_record(std::string& body) {
        std::string mark;
        if (!read_exact(mark, 4)) return false;
        uint32_t m = get32(mark, 0);
        return read_exact(body, m & 0x7fffffffu);
    }

    // ECHO `payload`; "" when the reply carries the same bytes.
    std::string echo(uint32_t xid, const std::string& payload) {
        if (!write(call_record(xid, 1, 0, payload))) return "write: " + last_ssl_error();
        std::string r;
        if (!read_record(r)) return "no reply (" + why_closed() + ")";
        if (r.size() < 28 || get32(r, 0) != xid || get32(r, 4) != 1 || get32(r, 8) != 0)
            return "not an accepted reply";
        size_t off = 12;
        off += 8 + ((get32(r, off + 4) + 3) & ~3u);  // verifier
        if (get32(r, off) != 0) return "accept_stat " + std::to_string(get32(r, off));
        uint32_t n = get32(r, off + 4);
        if (n != payload.size() || r.compare(off + 8, n, payload) != 0)
            return "the echoed bytes differ";
        return "";
    }

    // Reads until the connection ends: "close_notify" (the TLS-level close),
    // "eof" (TCP only), or the error.
    std::string wait_close(int* replies_seen = nullptr) {
        std::string body;
        int n = 0;
        while (read_record(body)) ++n;
        if (replies_seen) *replies_seen = n;
        return why_closed();
    }

    std::string why_closed() const { return closed_; }

  private:
    bool read_exact(std::string& out, size_t n) {
        out.resize(n);
        size_t got = 0;
        while (got < n) {
            size_t r = 0;
            ERR_clear_error();
            int rc = SSL_read_ex(ssl_, out.data() + got, n - got, &r);
            if (rc != 1) {
                int e = SSL_get_error(ssl_, rc);
                if (e == SSL_ERROR_ZERO_RETURN)
                    closed_ = "close_notify";
                else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
                    closed_ = "eof";
                else
                    closed_ = "error: " + std::to_string(e) + " " + last_ssl_error();
                return false;
            }
            got += r;
        }
        return true;
    }
    bool read_plain_record(std::string& body) {
        uint8_t mark[4];
        if (::recv(fd_, mark, 4, MSG_WAITALL) != 4) return false;
        uint32_t m;
        std::memcpy(&m, mark, 4);
        body.resize(ntohl(m) & 0x7fffffffu);
        return ::recv(fd_, body.data(), body.size(), MSG_WAITALL) == ssize_t(body.size());
    }

    SSL_CTX* ctx_ = nullptr;
    SSL* ssl_ = nullptr;
    int fd_ = -1;
    std::string closed_;
};

}  // namespace rpcgate::test_gw
