// Kernel TLS on the gateway's server role (issue 6), end to end in one
// process: an independent OpenSSL client (userspace, no kTLS) -> the gateway
// (--tls required) -> the bench echo server. Self-contained (certificates are
// made in-process, no shell or openssl program) so that tests/vm runs the
// same binary in the qemu guest, whose kernel has kTLS.
//
// Each test runs in three gateway modes:
//   off     --ktls off: OpenSSL over memory BIOs on the shard;
//   kernel  --ktls on: handshakes on the socket, then the kernel takes TX and
//           RX where it can (ktls-sw in the guest; here every direction stays
//           userspace, which tests the socket-BIO path and the fall-back);
//   txonly  --ktls on with RX left to userspace (half kTLS).
// What /connections and /metrics report is checked against what the kernel
// can do: RPCGATE_REQUIRE_KTLS=1 (the VM) makes a kernel without kTLS a
// failure instead of a userspace pass.
#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gateway/gateway.h"
#include "tests/gateway/ktls_client.h"
#include "tests/gateway/ktls_gateway_fixture.h"
#include "tests/timing.h"
#include "tests/unit/tls/ktls_test_util.h"
#include "tls/context.h"
#include "tls/ktls.h"
#include "tools/bench/echo_server.h"

using namespace rpcgate;
namespace k = rpcgate::tls::ktls;
using namespace rpcgate::tls::ktls::test;  // have_ktls, require_ktls, certs, random_bytes
using namespace rpcgate::test_gw;          // client, call_record, eventually

namespace {

struct mode_param {
    const char* name;
    const char* ktls;  // --ktls
    bool rx;           // RX to the kernel too (false: half kTLS)
};
// ctest lists the test by this, not by the struct's bytes.
void PrintTo(const mode_param& m, std::ostream* os) {
    *os << m.name;
}

class gateway_ktls : public ktls_gateway_fixture, public ::testing::WithParamInterface<mode_param> {
  protected:
    void SetUp() override {
        ktls_gateway_fixture::SetUp();
        if (!HasFatalFailure()) start_gateway();
    }
    // The gateway under test in this test's kTLS mode.
    void start_gateway(const std::function<void(gw::gateway_config&)>& tweak = {}) {
        start_gateway_in(GetParam().ktls, GetParam().rx, tweak);
    }

    bool kernel() const { return std::string(GetParam().ktls) != "off" && have_ktls(); }
    const char* expect_tx() const { return kernel() ? "ktls-sw" : "userspace"; }
    const char* expect_rx() const { return kernel() && GetParam().rx ? "ktls-sw" : "userspace"; }

    // What /connections and /metrics say while exactly one TLS client is open.
    void expect_protection() { expect_protection(expect_tx(), expect_rx()); }
    void expect_protection(const char* tx, const char* rx) {
        std::string want = fmt::format(R"("protection":{{"tx":"{}","rx":"{}"}})", tx, rx);
        std::string conns = gw_->connections_json();
        EXPECT_NE(conns.find(want), std::string::npos) << want << " not in " << conns;
        std::string m = gw_->metrics_text();
        for (auto [dir, mode] : {std::pair{"tx", tx}, std::pair{"rx", rx}}) {
            std::string line = fmt::format(
                "rpcgate_tls_connections_open{{direction=\"{}\",protection=\"{}\"}} 1\n", dir,
                mode);
            EXPECT_NE(m.find(line), std::string::npos) << line << " not in /metrics";
        }
        std::printf("[gw-ktls] %s: %s\n", GetParam().name, want.c_str());
    }
};

// Byte-identical echo of 0 B to 1 MiB through STARTTLS; where the crypto
// runs, from the kernel; the kernel's counters move; close_notify from the
// client is answered with ours.
TEST_P(gateway_ktls, starttls_echo_protection_and_close_notify) {
    auto before = k::read_tls_stat();
    auto c = open();
    ASSERT_TRUE(c);
    uint32_t xid = 1;
    for (size_t n :
         {size_t(0), size_t(1), size_t(100), size_t(5000), size_t(70000), size_t(1) << 20})
        ASSERT_EQ(c->echo(xid++, random_bytes(n)), "") << n << " bytes";
    expect_protection();
    auto after = k::read_tls_stat();
    if (kernel()) {
        // Per connection: one TX (and RX) context on the gateway's socket.
        EXPECT_GE(k::stat_value(after, "TlsTxSw"), k::stat_value(before, "TlsTxSw") + 1);
        if (GetParam().rx) {
            EXPECT_GE(k::stat_value(after, "TlsRxSw"), k::stat_value(before, "TlsRxSw") + 1);
        }
        std::printf("[gw-ktls] tls_stat TlsTxSw %llu -> %llu, TlsRxSw %llu -> %llu\n",
                    (unsigned long long)k::stat_value(before, "TlsTxSw"),
                    (unsigned long long)k::stat_value(after, "TlsTxSw"),
                    (unsigned long long)k::stat_value(before, "TlsRxSw"),
                    (unsigned long long)k::stat_value(after, "TlsRxSw"));
    }
    auto t0 = clock_type::now();
    SSL_shutdown(c->ssl());  // our close_notify
    EXPECT_EQ(c->wait_close(), "close_notify");
    EXPECT_LT(ms_since(t0),
              rpcgate::testing::timing_bound_ms(1000));  // TCG guest: see tests/timing.h
    if (kernel() && GetParam().rx) {
        EXPECT_TRUE(eventually([&] { return gw_->totals().tls_close_notify == 1; }));
    }
    EXPECT_TRUE(eventually([&] { return gw_->totals().sessions_open == 0; }));
}

TEST_P(gateway_ktls, implicit_tls_echo) {
    auto c = open(true);
    ASSERT_TRUE(c);
    uint32_t xid = 1;
    for (size_t n : {size_t(0), size_t(3), size_t(16384), size_t(300000)})
        ASSERT_EQ(c->echo(xid++, random_bytes(n)), "") << n << " bytes";
    expect_protection();
    EXPECT_EQ(gw_->totals().implicit_tls, 1u);
}

// A gateway that stops (SIGTERM) ends its TLS clients with close_notify:
// on kTLS TX an alert record sent after everything queued before it.
TEST_P(gateway_ktls, stop_sends_close_notify) {
    auto c = open();
    ASSERT_TRUE(c);
    ASSERT_EQ(c->echo(1, random_bytes(100000)), "");
    auto t0 = clock_type::now();
    gw_->stop();
    EXPECT_EQ(c->wait_close(), "close_notify");
    EXPECT_LT(ms_since(t0),
              rpcgate::testing::timing_bound_ms(1000));  // TCG guest: see tests/timing.h
    gw_->wait();
}

// --tls-min-version 1.2 (NIC offload evaluation, outside RFC 9289): a client
// that offers only TLS 1.2 is refused by default and served with it. OpenSSL
// 3.0 hands TLS 1.2 to the kernel itself, both directions (also in txonly,
// which only withholds the TLS 1.3 RX that tls::ktls installs).
TEST_P(gateway_ktls, tls12_only_with_min_version_12) {
    {
        client c(TLS1_2_VERSION);
        ASSERT_TRUE(c.connect(gw_->port()));
        ASSERT_EQ(c.starttls(), "");
        EXPECT_NE(c.handshake(), "") << "TLS 1.2 accepted without --tls-min-version 1.2";
    }
    start_gateway([](gw::gateway_config& cfg) { cfg.tls_min_version = "1.2"; });
    client c(TLS1_2_VERSION);
    ASSERT_TRUE(c.connect(gw_->port()));
    ASSERT_EQ(c.starttls(), "");
    ASSERT_EQ(c.handshake(), "");
    EXPECT_STREQ(SSL_get_version(c.ssl()), "TLSv1.2");
    uint32_t xid = 1;
    for (size_t n : {size_t(0), size_t(5000), size_t(200000)})
        ASSERT_EQ(c.echo(xid++, random_bytes(n)), "") << n << " bytes";
    const char* mode = kernel() ? "ktls-sw" : "userspace";
    expect_protection(mode, mode);
    SSL_shutdown(c.ssl());
    EXPECT_EQ(c.wait_close(), "close_notify");
}

// RFC 8446 §4.6.3 KeyUpdate from the client, update_requested. Userspace
// follows it (and answers with its own), and so does kernel TLS where the
// kernel takes new keys (Linux 6.14+: RX and TX rekeyed, counted); where it
// cannot (6.1, 6.12; and half kTLS, whose TX keys OpenSSL cannot change) the
// connection ends with close_notify, quickly, never a hang.
TEST_P(gateway_ktls, key_update_from_client) {
    auto c = open();
    ASSERT_TRUE(c);
    ASSERT_EQ(c->echo(1, "before"), "");
    ASSERT_EQ(SSL_key_update(c->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
    auto t0 = clock_type::now();
    ASSERT_TRUE(c->write(call_record(2, 1, 0, "after")));  // the KeyUpdate goes first
    bool follows = !kernel() || (GetParam().rx && k::kernel_can_rekey());
    if (follows) {
        std::string body;
        ASSERT_TRUE(c->read_record(body)) << c->why_closed();
        ASSERT_EQ(c->echo(3, "and again"), "");
        EXPECT_EQ(gw_->totals().tls_key_update_closes, 0u);
        if (kernel()) {
            EXPECT_EQ(gw_->totals().tls_rekeys_rx_peer, 1u);
            EXPECT_EQ(gw_->totals().tls_rekeys_tx_peer, 1u);
            EXPECT_NE(gw_->connections_json().find(R"("key_generation":{"tx":1,"rx":1})"),
                      std::string::npos)
                << gw_->connections_json();
        }
        return;
    }
    int replies = 0;
    std::string how = c->wait_close(&replies);
    int64_t took = ms_since(t0);
    std::printf("[gw-ktls] %s: KeyUpdate -> %s in %lld ms (%d replies before)\n", GetParam().name,
                how.c_str(), (long long)took, replies);
    EXPECT_EQ(how, "close_notify");
    EXPECT_LT(took, rpcgate::testing::timing_bound_ms(1000));
    EXPECT_TRUE(eventually([&] { return gw_->totals().tls_key_update_closes == 1; }));
}

// Records only a kTLS client can forge: a fatal alert, and a handshake record
// that is neither a ticket nor a KeyUpdate (unexpected_message back).
class kernel_client {
  public:
    explicit kernel_client(uint16_t port) {
        tls::client_options o;
        o.ca_file = certs().cert;
        o.server_name = "localhost";
        std::string err;
        ctx_ = tls::context::make_client(o, &err);
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ok_ = ctx_ && ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    }
    ~kernel_client() {
        SSL_free(ssl_);
        if (fd_ >= 0) ::close(fd_);
    }
    int fd() const { return fd_; }

    std::string handshake() {
        if (!ok_) return "connect";
        std::string p = call_record(9, 0, 7, "");
        if (::send(fd_, p.data(), p.size(), MSG_NOSIGNAL) != ssize_t(p.size())) return "probe";
        char reply[64];
        ssize_t n = ::recv(fd_, reply, sizeof reply, 0);  // the STARTTLS reply, one segment
        if (n <= 0) return "no STARTTLS reply";
        ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
        ssl_ = SSL_new(ctx_->native());
        SSL_set_connect_state(ssl_);
        SSL_set_tlsext_host_name(ssl_, "localhost");
        std::string err;
        if (!k::attach_socket(ssl_, fd_, {}, &err)) return err;
        auto end = clock_type::now() + std::chrono::milliseconds(k_io_timeout_ms);
        for (;;) {
            k::step s = k::handshake_step(ssl_);
            if (s == k::step::done) break;
            if (s == k::step::error) return "handshake: " + last_ssl_error();
            pollfd pf{fd_, short(s == k::step::want_read ? POLLIN : POLLOUT), 0};
            if (clock_type::now() > end || ::poll(&pf, 1, 100) < 0) return "handshake timed out";
        }
        dir_ = k::finish(ssl_, fd_);
        if (!dir_.tx || !dir_.rx) return "the client's kTLS did not engage";
        return "";
    }

    // Waits for the gateway to end the connection; returns what came:
    // "alert:L/D" records then "eof", or "timeout".
    std::string wait_end(int ms) {
        std::string seen;
        auto end = clock_type::now() + std::chrono::milliseconds(ms);
        for (;;) {
            uint8_t buf[512];
            uint8_t type = 0;
            ssize_t n = k::recv_record(fd_, buf, sizeof buf, &type, MSG_DONTWAIT);
            if (n == 0) return seen + "eof";
            if (n == -ECONNRESET) return seen + "reset";
            if (n > 0 && type == k::rt_alert && n >= 2) {
                seen += fmt::format("alert:{}/{} ", buf[0], buf[1]);
                continue;
            }
            if (n > 0) {
                seen += fmt::format("type{} ", type);
                continue;
            }
            if (n != -EAGAIN) return seen + "error " + std::strerror(int(-n));
            pollfd pf{fd_, POLLIN, 0};
            int left =
                int(std::chrono::duration_cast<std::chrono::milliseconds>(end - clock_type::now())
                        .count());
            if (left <= 0) return seen + "timeout";
            ::poll(&pf, 1, left);
        }
    }

  private:
    std::unique_ptr<tls::context> ctx_;
    SSL* ssl_ = nullptr;
    int fd_ = -1;
    bool ok_ = false;
    k::directions dir_;
};

TEST_P(gateway_ktls, alert_from_client_closes) {
    if (!have_ktls()) GTEST_SKIP() << "forging an alert needs a kTLS client (tests/vm)";
    kernel_client c(gw_->port());
    ASSERT_EQ(c.handshake(), "");
    auto t0 = clock_type::now();
    ASSERT_EQ(k::send_alert(c.fd(), 2, 80), 2);  // fatal internal_error
    std::string how = c.wait_end(int(rpcgate::testing::timing_bound_ms(2000)));
    std::printf("[gw-ktls] %s: alert -> %s in %lld ms\n", GetParam().name, how.c_str(),
                (long long)ms_since(t0));
    EXPECT_TRUE(how == "eof" || how == "reset") << how;  // no reply to a fatal alert
    EXPECT_LT(ms_since(t0),
              rpcgate::testing::timing_bound_ms(1000));  // TCG guest: see tests/timing.h
    if (kernel() && GetParam().rx) {
        EXPECT_TRUE(eventually([&] { return gw_->totals().tls_alerts_received == 1; }));
    }
    EXPECT_TRUE(eventually([&] { return gw_->totals().sessions_open == 0; }));
}

TEST_P(gateway_ktls, unexpected_record_from_client) {
    if (!have_ktls()) GTEST_SKIP() << "forging a record needs a kTLS client (tests/vm)";
    kernel_client c(gw_->port());
    ASSERT_EQ(c.handshake(), "");
    const uint8_t finished_again[] = {20, 0, 0, 0};  // handshake type 20 after the handshake
    ASSERT_EQ(k::send_record(c.fd(), k::rt_handshake, finished_again, sizeof finished_again), 4);
    std::string how = c.wait_end(int(rpcgate::testing::timing_bound_ms(2000)));
    std::printf("[gw-ktls] %s: unexpected record -> %s\n", GetParam().name, how.c_str());
    if (kernel() && GetParam().rx) {
        EXPECT_EQ(how, "alert:2/10 eof");  // unexpected_message
    } else {
        EXPECT_NE(how.find("eof"), std::string::npos) << how;  // OpenSSL's own alert, then EOF
    }
}

// ---- the client role: plaintext client -> gateway A -> RPC-with-TLS -> server ----

// ECHO over a plaintext socket; "" when the same bytes come back.
std::string plain_echo(int fd, uint32_t xid, const std::string& payload) {
    std::string call = call_record(xid, 1, 0, payload);
    if (::send(fd, call.data(), call.size(), MSG_NOSIGNAL) != ssize_t(call.size())) return "send";
    uint8_t mark[4];
    if (::recv(fd, mark, 4, MSG_WAITALL) != 4) return "no reply";
    uint32_t m;
    std::memcpy(&m, mark, 4);
    std::string r(ntohl(m) & 0x7fffffffu, '\0');
    if (::recv(fd, r.data(), r.size(), MSG_WAITALL) != ssize_t(r.size())) return "short reply";
    if (r.size() < 28 || get32(r, 0) != xid || get32(r, 24) != payload.size() ||
        r.compare(28, payload.size(), payload) != 0)
        return "the echoed bytes differ";
    return "";
}

int connect_plain(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{k_io_timeout_ms / 1000, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// An RPC-with-TLS echo server on OpenSSL's own API (blocking, one
// connection, its own thread) that sends NewSessionTickets after the
// handshake, as OpenSSL servers do by default (two in TLS 1.3). With
// `key_update_every` it also asks for a KeyUpdate (SSL_key_update with
// update_requested every other time) before every that many replies, and
// counts the KeyUpdates it sends and receives.
class openssl_echo_server {
  public:
    explicit openssl_echo_server(uint32_t key_update_every = 0) : every_(key_update_every) {
        ctx_ = SSL_CTX_new(TLS_server_method());
        SSL_CTX_clear_options(ctx_, SSL_OP_ENABLE_KTLS);
        SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
        SSL_CTX_use_certificate_file(ctx_, certs().cert.c_str(), SSL_FILETYPE_PEM);
        SSL_CTX_use_PrivateKey_file(ctx_, certs().key.c_str(), SSL_FILETYPE_PEM);
        lfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t al = sizeof a;
        ::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
        ::listen(lfd_, 4);
        ::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &al);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~openssl_echo_server() {
        ::shutdown(lfd_, SHUT_RDWR);
        if (thread_.joinable()) thread_.join();
        ::close(lfd_);
        SSL_CTX_free(ctx_);
    }
    uint16_t port() const { return port_; }
    const std::string& error() const { return err_; }
    uint64_t key_updates_sent() const { return updates_sent_.load(); }
    uint64_t key_updates_requested() const { return updates_requested_.load(); }
    uint64_t key_updates_received() const { return updates_received_.load(); }
    // The replies written; read after the last one came back.
    uint32_t replies() const { return replies_.load(); }

  private:
    void serve() {
        int fd = ::accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) return;
        timeval tv{k_io_timeout_ms / 1000, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        uint8_t mark[4];
        std::string probe(44 - 4, '\0');
        if (::recv(fd, mark, 4, MSG_WAITALL) != 4 ||
            ::recv(fd, probe.data(), probe.size(), MSG_WAITALL) != ssize_t(probe.size())) {
            err_ = "no probe";
            ::close(fd);
            return;
        }
        std::string reply;
        for (uint32_t w : {get32(probe, 0), 1u, 0u, 0u, 8u}) put32(reply, w);
        reply += "STARTTLS";
        put32(reply, 0);
        std::string framed;
        put32(framed, 0x80000000u | uint32_t(reply.size()));
        framed += reply;
        ::send(fd, framed.data(), framed.size(), MSG_NOSIGNAL);
        SSL* ssl = SSL_new(ctx_);
        SSL_set_fd(ssl, fd);
        SSL_set_msg_callback(ssl, [](int write_p, int, int content_type, const void* buf,
                                     size_t len, SSL*, void* arg) {
            if (!write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
                static_cast<const uint8_t*>(buf)[0] == 24)  // KeyUpdate
                static_cast<std::atomic<uint64_t>*>(arg)->fetch_add(1);
        });
        SSL_set_msg_callback_arg(ssl, &updates_received_);
        if (SSL_accept(ssl) != 1) err_ = "SSL_accept: " + last_ssl_error();
        // Echo every call: the opaque argument after a header with AUTH_NONE.
        for (;;) {
            std::string m(4, '\0'), call;
            size_t got = 0;
            if (err_.empty() && SSL_read_ex(ssl, m.data(), 4, &got) == 1 && got == 4) {
                call.resize(get32(m, 0) & 0x7fffffffu);
                size_t off = 0;
                while (off < call.size() &&
                       SSL_read_ex(ssl, call.data() + off, call.size() - off, &got) == 1)
                    off += got;
                if (off == call.size() && call.size() >= 44) {
                    std::string body;
                    for (uint32_t w : {get32(call, 0), 1u, 0u, 0u, 0u, 0u}) put32(body, w);
                    body += call.substr(40);
                    std::string out;
                    put32(out, 0x80000000u | uint32_t(body.size()));
                    out += body;
                    // The KeyUpdate goes out before this reply, under the old
                    // key; every other one asks for the peer's.
                    if (every_ && (replies_.load() + 1) % every_ == 0) {
                        bool ask = updates_sent_.load() % 2 == 0;
                        if (SSL_key_update(ssl, ask ? SSL_KEY_UPDATE_REQUESTED
                                                    : SSL_KEY_UPDATE_NOT_REQUESTED) != 1) {
                            err_ = "SSL_key_update: " + last_ssl_error();
                            break;
                        }
                        updates_sent_.fetch_add(1);
                        updates_requested_.fetch_add(ask);
                    }
                    size_t put = 0;
                    if (SSL_write_ex(ssl, out.data(), out.size(), &put) == 1) {
                        replies_.fetch_add(1);
                        continue;
                    }
                }
            }
            break;
        }
        SSL_free(ssl);
        ::close(fd);
    }

    uint32_t every_ = 0;
    std::atomic<uint64_t> updates_sent_{0}, updates_requested_{0}, updates_received_{0};
    std::atomic<uint32_t> replies_{0};
    SSL_CTX* ctx_ = nullptr;
    int lfd_ = -1;
    uint16_t port_ = 0;
    std::thread thread_;
    std::string err_;
};

// A gateway in plaintext towards its clients and RPC-with-TLS towards
// `port`, in this test's kTLS mode.
std::unique_ptr<gw::gateway> upstream_gateway(const mode_param& p, uint16_t port,
                                              uint64_t rekey_after = 0) {
    gw::gateway_config cfg;
    std::string err;
    gw::endpoint ep;
    EXPECT_TRUE(gw::parse_endpoint("127.0.0.1:0", &ep, &err));
    cfg.listen.push_back(ep);
    gw::backend_route r;
    EXPECT_TRUE(gw::parse_backend(fmt::format("{}=127.0.0.1:{},tls=required,name=localhost,ca={}",
                                              k_echo_prog, port, certs().cert),
                                  &r, &err))
        << err;
    cfg.backends.push_back(r);
    cfg.shards = 1;
    cfg.buffers = 64;
    cfg.reserved_port = false;
    cfg.ktls = p.ktls;
    cfg.ktls_rx = p.rx;
    cfg.tls_rekey_after = rekey_after;
    EXPECT_TRUE(gw::validate(&cfg, &err)) << err;
    auto g = std::make_unique<gw::gateway>(cfg);
    EXPECT_EQ(g->start(), "");
    return g;
}

// Plaintext client -> A -> (kTLS client role) -> B (this suite's gateway,
// kTLS server role) -> echo: TLS on both sides of the A -> B wire.
TEST_P(gateway_ktls, upstream_chain_through_a_second_gateway) {
    auto a = upstream_gateway(GetParam(), gw_->port());
    int fd = connect_plain(a->port());
    ASSERT_GE(fd, 0);
    uint32_t xid = 1;
    for (size_t n : {size_t(0), size_t(7), size_t(70000), size_t(1) << 20})
        EXPECT_EQ(plain_echo(fd, xid++, random_bytes(n)), "") << n << " bytes";
    auto t = a->totals();
    EXPECT_EQ(t.upstream_tls, 1u);
    EXPECT_EQ(t.upstream_ktls_tx, kernel() ? 1u : 0u);
    EXPECT_EQ(t.upstream_ktls_rx, kernel() && GetParam().rx ? 1u : 0u);
    // A's side: the backend link in /connections.
    std::string want = fmt::format(R"("version":"TLSv1.3","protection":{{"tx":"{}","rx":"{}"}})",
                                   expect_tx(), expect_rx());
    std::string conns = a->connections_json();
    EXPECT_NE(conns.find(want), std::string::npos) << want << " not in " << conns;
    expect_protection();  // B's side of the same connection
    ::close(fd);
    a->stop();
    a->wait();
}

// Key updates on both sides of a gateway-to-gateway TLS wire: A (client
// role) and B (server role) each send a KeyUpdate every 20 records
// (--tls-rekey-after), and each follows the other's. In kernel TLS on a
// kernel that rekeys, what one side initiated is what the other followed:
// A's backend link and B's client session both rekey RX from the peer.
// Where the kTLS TX key cannot change (before 6.14, or half kTLS) the first
// side whose key reaches 20 records ends the session cleanly instead.
TEST_P(gateway_ktls, upstream_chain_key_updates_both_ways) {
    constexpr uint64_t k_after = 20;
    start_gateway([](gw::gateway_config& c) { c.tls_rekey_after = k_after; });
    auto a = upstream_gateway(GetParam(), gw_->port(), k_after);
    int fd = connect_plain(a->port());
    ASSERT_GE(fd, 0);
    bool kernel_rekeys = kernel() && GetParam().rx && k::kernel_can_rekey();
    bool closes = kernel() && !kernel_rekeys;
    uint32_t answered = 0;
    for (uint32_t xid = 1; xid <= 40; ++xid, ++answered) {
        std::string e = plain_echo(fd, xid, random_bytes(40000));
        if (closes && !e.empty()) break;
        ASSERT_EQ(e, "") << "call " << xid << "\nA: " << a->connections_json()
                         << "\nB: " << gw_->connections_json();
    }
    if (closes) {
        // 3 records a call each way: A's link reaches 20 first, at call 7.
        EXPECT_LT(answered, 10u) << "the session outlived its TX key";
        auto exhausted = [&] {
            return a->totals().tls_key_exhausted_closes + gw_->totals().tls_key_exhausted_closes;
        };
        EXPECT_TRUE(eventually([&] { return exhausted() >= 1; }));
        std::printf(
            "[gw-ktls] %s: the TX key cannot change: closed after %u calls, "
            "key_exhausted_closes %llu\n",
            GetParam().name, answered, (unsigned long long)exhausted());
        EXPECT_EQ(a->totals().tls_rekeys_tx_own + gw_->totals().tls_rekeys_tx_own, 0u);
        ::close(fd);
        a->stop();
        a->wait();
        return;
    }
    auto ta = a->totals();
    auto tb = gw_->totals();
    std::printf("[gw-ktls] %s: A own %llu, rx %llu; B own %llu, rx %llu\n", GetParam().name,
                (unsigned long long)ta.tls_rekeys_tx_own, (unsigned long long)ta.tls_rekeys_rx_peer,
                (unsigned long long)tb.tls_rekeys_tx_own,
                (unsigned long long)tb.tls_rekeys_rx_peer);
    EXPECT_EQ(ta.upstream_tls, 1u);
    EXPECT_EQ(tb.tls_sessions, 1u);  // no reconnect
    EXPECT_EQ(ta.tls_key_update_closes + tb.tls_key_update_closes, 0u);
    // 40 calls of 40 KB each way: 3 records each, 120 / 20 = 6 (one less
    // where the count is looked at once per batch).
    EXPECT_GE(ta.tls_rekeys_tx_own, 4u);
    EXPECT_GE(tb.tls_rekeys_tx_own, 4u);
    if (kernel_rekeys) {
        EXPECT_EQ(tb.tls_rekeys_rx_peer, ta.tls_rekeys_tx_own);
        EXPECT_EQ(ta.tls_rekeys_rx_peer, tb.tls_rekeys_tx_own);
    }
    ::close(fd);
    a->stop();
    a->wait();
}

// Issue 15's bulk case in the client role: plaintext client -> A (kTLS
// towards its backend, --tls-rekey-after) -> a server on OpenSSL's API that
// sends a KeyUpdate every 1,000 replies, every other one asking for A's.
// A's own KeyUpdate after 1,000 records under one key (size and cadence:
// bulk_key_update_plan). As in gateway_rekey.bulk_with_key_updates_from_both_sides:
// every byte back intact on the one upstream connection, A's counters equal
// to what the server sent, and the server saw exactly A's answers and own.
TEST_P(gateway_ktls, upstream_bulk_with_key_updates_from_both_sides) {
    if (kernel() && !GetParam().rx)
        GTEST_SKIP() << "half kTLS: upstream_chain_key_updates_both_ways covers its rekeys";
    if (kernel() && !k::kernel_can_rekey())
        GTEST_SKIP() << "this kernel cannot rekey kTLS (Linux < 6.14): "
                        "upstream_chain_key_updates_both_ways checks its clean close";
    const auto [mib, calls, k_every] = bulk_key_update_plan();
    openssl_echo_server srv(k_every);
    auto a = upstream_gateway(GetParam(), srv.port(), k_every);
    int fd = connect_plain(a->port());
    ASSERT_GE(fd, 0);
    const std::string payload = random_bytes(16000);
    auto t0 = std::chrono::steady_clock::now();
    for (uint32_t xid = 1; xid <= calls; ++xid)
        ASSERT_EQ(plain_echo(fd, xid, payload), "")
            << "call " << xid << " after " << srv.key_updates_sent()
            << " KeyUpdates from the server; " << srv.error() << "\nA: " << a->connections_json();
    long long ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    // The server counts a reply once SSL_write returned: maybe after the
    // client read it.
    EXPECT_TRUE(eventually([&] { return srv.replies() == calls; })) << srv.replies();
    auto t = a->totals();
    const uint64_t sent = srv.key_updates_sent(), requested = srv.key_updates_requested(),
                   received = srv.key_updates_received();
    std::printf(
        "[gw-ktls] %s: upstream %llu MiB each way in %u calls, %lld ms: KeyUpdates from the "
        "server %llu (%llu asking for one), received by it %llu; A's rekeys rx_peer %llu "
        "tx_peer %llu tx_own %llu\n",
        GetParam().name, (unsigned long long)mib, calls, ms, (unsigned long long)sent,
        (unsigned long long)requested, (unsigned long long)received,
        (unsigned long long)t.tls_rekeys_rx_peer, (unsigned long long)t.tls_rekeys_tx_peer,
        (unsigned long long)t.tls_rekeys_tx_own);
    EXPECT_EQ(sent, calls / k_every);
    EXPECT_EQ(t.upstream_tls, 1u);  // no reconnect
    if (kernel()) {
        EXPECT_EQ(t.upstream_ktls_rx, 1u);
    }
    // The server has read every call, so every KeyUpdate of A's.
    expect_bulk_key_updates(t, kernel(), {sent, requested, received, calls, k_every});
    ::close(fd);
    a->stop();
    a->wait();
    EXPECT_EQ(srv.error(), "");
}

// NewSessionTickets from an upstream server are consumed (on kTLS RX: read
// with recvmsg, then the socket is adopted again) and calls go on.
TEST_P(gateway_ktls, upstream_tickets_are_consumed) {
    openssl_echo_server srv;
    auto a = upstream_gateway(GetParam(), srv.port());
    int fd = connect_plain(a->port());
    ASSERT_GE(fd, 0);
    uint32_t xid = 1;
    for (size_t n : {size_t(0), size_t(5000), size_t(300000), size_t(3)})
        EXPECT_EQ(plain_echo(fd, xid++, random_bytes(n)), "") << n << " bytes";
    auto t = a->totals();
    std::printf("[gw-ktls] %s: upstream ktls tx=%llu rx=%llu, tickets consumed on kTLS RX: %llu\n",
                GetParam().name, (unsigned long long)t.upstream_ktls_tx,
                (unsigned long long)t.upstream_ktls_rx, (unsigned long long)t.upstream_tickets);
    EXPECT_EQ(t.upstream_tls, 1u);
    if (kernel() && GetParam().rx) {
        EXPECT_GE(t.upstream_tickets, 1u);
    } else {
        EXPECT_EQ(t.upstream_tickets, 0u);  // OpenSSL read them in userspace
    }
    ::close(fd);
    a->stop();
    a->wait();
    EXPECT_EQ(srv.error(), "");
}

// The options: --ktls auto|off|on, --tls-min-version 1.3|1.2, and the
// same keys in the TOML file.
TEST(gateway_ktls_config, options_and_keys) {
    auto parse = [](std::vector<std::string> args, gw::gateway_config* cfg) {
        args.insert(args.begin(),
                    {"rpcgate", "--listen", "127.0.0.1:0", "--backend", "nfs=127.0.0.1:2049"});
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        return gw::parse_command_line(int(argv.size()), argv.data(), cfg);
    };
    gw::gateway_config cfg;
    EXPECT_EQ(parse({}, &cfg), -1);
    EXPECT_EQ(cfg.ktls, "auto");
    EXPECT_EQ(cfg.tls_min_version, "1.3");
    gw::gateway_config off;
    EXPECT_EQ(parse({"--ktls", "off", "--tls-min-version", "1.2"}, &off), -1);
    EXPECT_EQ(off.ktls, "off");
    EXPECT_EQ(off.tls_min_version, "1.2");
    gw::gateway_config bad;
    EXPECT_EQ(parse({"--ktls", "sometimes"}, &bad), 2);
    EXPECT_EQ(parse({"--tls-min-version", "1.1"}, &bad), 2);
    std::string path = certs().dir + "/ktls.toml";
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("ktls = \"on\"\ntls_min_version = \"1.2\"\n", f);
    std::fclose(f);
    gw::gateway_config file;
    std::string err;
    EXPECT_TRUE(gw::load_config_file(path, &file, &err)) << err;
    EXPECT_EQ(file.ktls, "on");
    EXPECT_EQ(file.tls_min_version, "1.2");
    std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(modes, gateway_ktls,
                         ::testing::Values(mode_param{"off", "off", true},
                                           mode_param{"kernel", "on", true},
                                           mode_param{"txonly", "on", false}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
