// The two ends of a kTLS test connection, shared by the kTLS unit tests
// (tests/unit/tls/ktls_*test.cc): `ours`, the gateway's way (tls::ktls over a
// tls::context on a non-blocking socket, then plain socket I/O in each
// direction the kernel took), and an independent userspace OpenSSL peer on a
// thread of its own (`peer_ctx`, `run_peer`).
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <string>
#include <string_view>
#include <vector>

#include "ktls_test_util.h"
#include "tls/context.h"
#include "tls/ktls.h"

namespace rpcgate::tls::ktls::test {

namespace k = rpcgate::tls::ktls;

// The independent peer: plain OpenSSL in userspace (no SSL_OP_ENABLE_KTLS)
// on a blocking socket, run on its own thread.
struct peer_ctx {
    SSL_CTX* ctx = nullptr;
    explicit peer_ctx(bool server, int max_version = 0, const char* suites = nullptr) {
        ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
        SSL_CTX_clear_options(ctx, SSL_OP_ENABLE_KTLS);
        if (max_version) SSL_CTX_set_max_proto_version(ctx, max_version);
        // TLS 1.2 names its suites in the cipher list, 1.3 in the ciphersuites.
        if (suites && max_version == TLS1_2_VERSION)
            SSL_CTX_set_cipher_list(ctx, suites);
        else if (suites)
            SSL_CTX_set_ciphersuites(ctx, suites);
        if (server) {
            SSL_CTX_use_certificate_file(ctx, certs().cert.c_str(), SSL_FILETYPE_PEM);
            SSL_CTX_use_PrivateKey_file(ctx, certs().key.c_str(), SSL_FILETYPE_PEM);
            // Default: two NewSessionTickets after the handshake, which is
            // what the client-side test wants to see arrive.
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
        }
    }
    ~peer_ctx() { SSL_CTX_free(ctx); }
};

// Our end: an SSL over socket BIOs (tls::ktls::attach_socket) on a
// non-blocking fd, driven by poll as the control thread would; afterwards
// plain socket I/O in each direction the kernel took, OpenSSL otherwise.
struct ours {
    SSL* ssl = nullptr;
    int fd = -1;
    k::directions dir;
    std::string err;

    ours(const context& ctx, int sock, std::string_view early = {}) : fd(sock) {
        ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
        ssl = SSL_new(ctx.native());
        if (ctx.is_server())
            SSL_set_accept_state(ssl);
        else
            SSL_set_connect_state(ssl);
        if (!k::attach_socket(ssl, fd, early, &err)) ADD_FAILURE() << err;
    }
    ~ours() { SSL_free(ssl); }

    // `install_rx` false leaves TLS 1.3 RX to OpenSSL: send-only kTLS.
    // `keep` receives the traffic secrets.
    bool handshake(bool install_rx = true, k::traffic_secrets* keep = nullptr) {
        auto deadline = clock_type::now() + std::chrono::milliseconds(io_timeout_ms);
        for (;;) {
            switch (k::handshake_step(ssl)) {
                case k::step::done:
                    dir = install_rx ? k::finish(ssl, fd, keep) : k::engaged(ssl);
                    return true;
                case k::step::want_read:
                    if (!wait_fd(fd, POLLIN, deadline)) return fail("handshake: timed out");
                    break;
                case k::step::want_write:
                    if (!wait_fd(fd, POLLOUT, deadline)) return fail("handshake: timed out");
                    break;
                case k::step::error:
                    return fail("handshake: " + last_error());
            }
        }
    }
    bool fail(std::string why) {
        err = std::move(why);
        return false;
    }

    // Application bytes (or, on kTLS RX, a non-data record: *type says).
    // >0 bytes, 0 close (TCP EOF, or close_notify in userspace), <0 -errno.
    ssize_t read(void* buf, size_t len, uint8_t* type, int timeout_ms = io_timeout_ms) {
        auto deadline = clock_type::now() + std::chrono::milliseconds(timeout_ms);
        for (;;) {
            if (dir.rx) {
                ssize_t n = k::recv_record(fd, buf, len, type, MSG_DONTWAIT);
                if (n != -EAGAIN) return n;
            } else {
                *type = k::rt_application_data;
                size_t got = 0;
                ERR_clear_error();
                int r = SSL_read_ex(ssl, buf, len, &got);
                if (r == 1) return static_cast<ssize_t>(got);
                int e = SSL_get_error(ssl, r);
                if (e == SSL_ERROR_ZERO_RETURN) return 0;
                if (e != SSL_ERROR_WANT_READ) {
                    err = last_error();
                    return -EPROTO;
                }
            }
            if (!wait_fd(fd, POLLIN, deadline)) return -ETIMEDOUT;
        }
    }

    bool write(const std::string& data) {
        auto deadline = clock_type::now() + std::chrono::milliseconds(io_timeout_ms);
        size_t off = 0;
        while (off < data.size()) {
            ssize_t n;
            if (dir.tx) {
                n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN) return fail(std::string("send: ") + strerror(errno));
            } else {
                size_t put = 0;
                int r = SSL_write_ex(ssl, data.data() + off, data.size() - off, &put);
                n = r == 1 ? static_cast<ssize_t>(put) : -1;
                if (r != 1 && SSL_get_error(ssl, r) != SSL_ERROR_WANT_WRITE)
                    return fail("SSL_write: " + last_error());
            }
            if (n > 0) {
                off += static_cast<size_t>(n);
            } else if (!wait_fd(fd, POLLOUT, deadline)) {
                return fail("write: timed out");
            }
        }
        return true;
    }

    // Reads application data until `n` bytes came; stops early at a
    // non-data record (returned in *type) or an error.
    std::string read_n(size_t n, uint8_t* type) {
        std::string got;
        std::vector<char> buf(64 * 1024);
        *type = k::rt_application_data;
        while (got.size() < n) {
            ssize_t r = read(buf.data(), std::min(buf.size(), n - got.size()), type);
            if (r <= 0 || *type != k::rt_application_data) break;
            got.append(buf.data(), static_cast<size_t>(r));
        }
        return got;
    }
};

// The peer's side of a TLS connection on its own thread.
struct peer_conn {
    SSL* ssl = nullptr;
    peer_conn(SSL_CTX* ctx, int fd) {
        ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
    }
    ~peer_conn() { SSL_free(ssl); }
    bool read_exact(std::string& out, size_t n) {
        out.resize(n);
        size_t got = 0;
        while (got < n) {
            size_t r = 0;
            if (SSL_read_ex(ssl, out.data() + got, n - got, &r) != 1) return false;
            got += r;
        }
        return true;
    }
    bool write_all(const std::string& s) {
        size_t put = 0;
        return s.empty() || (SSL_write_ex(ssl, s.data(), s.size(), &put) == 1 && put == s.size());
    }
};

// The peer on its own thread: the handshake, then `body`; "" when all went well.
inline std::future<std::string> run_peer(SSL_CTX* ctx, int fd, bool accept,
                                         std::function<std::string(peer_conn&)> body) {
    return std::async(std::launch::async,
                      [ctx, fd, accept, body = std::move(body)]() -> std::string {
                          peer_conn c(ctx, fd);
                          if ((accept ? SSL_accept(c.ssl) : SSL_connect(c.ssl)) != 1)
                              return "handshake: " + last_error();
                          return body(c);
                      });
}

}  // namespace rpcgate::tls::ktls::test
