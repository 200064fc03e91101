// RFC 9289 client role of the gateway (upstream TLS): a plaintext client ->
// gateway A (--upstream-tls) -> a TLS server -> `rpcgate-bench serve`.
//
// The TLS servers are gateway B (the server role, tested on its own against
// Python's ssl module in tls_test.cc) and `raw_tls_server` below, written
// straight on OpenSSL's blocking API with none of our TLS code, which can
// select any ALPN, send session tickets and ask for a KeyUpdate.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include "gateway/gateway.h"
#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "rpc/record.h"
#include "rpc/xdr_codec.h"
#include "tests/gateway/child_process.h"
#include "tls/client/blocking_client.h"

using namespace rpcgate;
using namespace std::chrono_literals;
using rpcgate::testing::child_process;

namespace {

constexpr uint32_t k_echo_prog = 0x20000001;
std::string g_certs;

// Echo calls of `sizes` on one plaintext connection to `port`. "" when every
// reply carried the bytes sent, else what went wrong first.
std::string echo(uint16_t port, const std::vector<size_t>& sizes) {
    auto c = client::blocking_client::open("127.0.0.1", port, client::tls_mode::off, k_echo_prog, 1,
                                           nullptr, 10000ms);
    if (!c.ok()) return "connect: " + c.error();
    uint32_t xid = 0x5000;
    for (size_t size : sizes) {
        std::vector<uint8_t> payload(size);
        for (size_t i = 0; i < size; ++i) payload[i] = uint8_t(i * 131 + size);
        rpc::call_header h;
        h.xid = ++xid;
        h.prog = k_echo_prog;
        h.vers = 1;
        h.proc = 1;
        rpc::xdr_writer w(size + 16);
        w.opaque(payload);
        core::slice_chain reply = c.call(rpc::build_call(h, w.finish()), 30000ms);
        if (reply.empty()) return fmt::format("call of {} bytes: {}", size, c.error());
        auto r = rpc::decode_reply(reply);
        if (!r.ok() || r->header.xid != h.xid || r->header.stat != rpc::reply_stat::accepted ||
            r->header.accept != rpc::accept_stat::success)
            return fmt::format("call of {} bytes: not a SUCCESS reply to xid {:#x}", size, h.xid);
        std::string got = r->results.to_string();
        if (got.size() < 4 || got.size() - 4 < size ||
            (size > 0 && std::memcmp(got.data() + 4, payload.data(), size) != 0))
            return fmt::format("call of {} bytes: the reply holds other bytes", size);
    }
    return {};
}

// A TLS 1.3 RPC server on OpenSSL's blocking API: answers the AUTH_TLS probe
// with STARTTLS, then echoes calls (results = the call's arguments).
class raw_tls_server {
  public:
    struct options {
        std::string alpn = "sunrpc";  // what the server selects, whatever was offered; "" = none
        int tickets = 0;              // NewSessionTickets after the handshake
        bool key_update = false;      // ask the client for a KeyUpdate before echoing
    };

    explicit raw_tls_server(options o) : opt_(std::move(o)) {
        ctx_ = SSL_CTX_new(TLS_server_method());
        SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
        SSL_CTX_use_certificate_chain_file(ctx_, (g_certs + "/server.pem").c_str());
        SSL_CTX_use_PrivateKey_file(ctx_, (g_certs + "/server.key").c_str(), SSL_FILETYPE_PEM);
        SSL_CTX_set_num_tickets(ctx_, size_t(opt_.tickets));
        SSL_CTX_set_alpn_select_cb(ctx_, &raw_tls_server::select_alpn, this);
        lfd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        ::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
        ::listen(lfd_, 16);
        ::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { run(); });
    }
    ~raw_tls_server() {
        stop_ = true;
        ::shutdown(lfd_, SHUT_RDWR);
        thread_.join();
        ::close(lfd_);
        SSL_CTX_free(ctx_);
    }
    uint16_t port() const { return port_; }
    int handshakes() const { return handshakes_.load(); }
    int calls() const { return calls_.load(); }

  private:
    static int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen,
                           const unsigned char*, unsigned, void* arg) {
        auto* self = static_cast<raw_tls_server*>(arg);
        if (self->opt_.alpn.empty()) return SSL_TLSEXT_ERR_NOACK;
        *out = reinterpret_cast<const unsigned char*>(self->opt_.alpn.data());
        *outlen = static_cast<unsigned char>(self->opt_.alpn.size());
        return SSL_TLSEXT_ERR_OK;
    }

    static bool read_full(int fd, SSL* ssl, void* p, size_t n) {
        auto* b = static_cast<uint8_t*>(p);
        while (n > 0) {
            int r = ssl ? SSL_read(ssl, b, int(n)) : int(::recv(fd, b, n, 0));
            if (r <= 0) return false;
            b += r;
            n -= size_t(r);
        }
        return true;
    }

    // One record (all fragments) or nothing.
    static std::optional<std::string> read_record(int fd, SSL* ssl) {
        std::string rec;
        for (;;) {
            uint8_t m[4];
            if (!read_full(fd, ssl, m, 4)) return std::nullopt;
            uint32_t mark = rpc::load_be32(m);
            size_t len = mark & 0x7fffffff;
            if (len > (8u << 20)) return std::nullopt;
            size_t at = rec.size();
            rec.resize(at + len);
            if (!read_full(fd, ssl, rec.data() + at, len)) return std::nullopt;
            if (mark & 0x80000000u) return rec;
        }
    }

    void run() {
        while (!stop_) {
            int fd = ::accept(lfd_, nullptr, nullptr);
            if (fd < 0) return;
            timeval tv{10, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            serve(fd);
            ::close(fd);
        }
    }

    void serve(int fd) {
        auto probe = read_record(fd, nullptr);
        if (!probe || probe->size() < 8) return;
        uint32_t xid = rpc::load_be32(reinterpret_cast<const uint8_t*>(probe->data()));
        core::slice r = rpc::build_starttls_reply(xid);
        std::string reply(reinterpret_cast<const char*>(r.data()), r.size());
        if (::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL) != ssize_t(reply.size())) return;
        SSL* ssl = SSL_new(ctx_);
        SSL_set_fd(ssl, fd);
        if (SSL_accept(ssl) == 1) {
            ++handshakes_;
            if (opt_.key_update) SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED);
            while (auto rec = read_record(fd, ssl)) {
                core::slice_chain chain(core::slice::copy_of(rec->data(), rec->size()));
                auto call = rpc::decode_call(chain);
                if (!call.ok()) break;
                ++calls_;
                std::string out = rpc::build_reply(rpc::reply_header::accepted(
                                                       call->header.xid, rpc::accept_stat::success),
                                                   std::move(call->args))
                                      .to_string();
                if (SSL_write(ssl, out.data(), int(out.size())) != int(out.size())) break;
            }
            SSL_shutdown(ssl);
        }
        SSL_free(ssl);
    }

    options opt_;
    SSL_CTX* ctx_ = nullptr;
    int lfd_ = -1;
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<int> handshakes_{0}, calls_{0};
    std::thread thread_;
};

class upstream_tls : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        g_certs = rpcgate::testing::make_fixture_certs(MAKE_CERTS);
        ASSERT_NE(g_certs, "") << "make_certs.sh failed";
    }

    void SetUp() override {
        echo_ = std::make_unique<child_process>(std::vector<std::string>{
            RPCGATE_BENCH, "serve", "--listen", "127.0.0.1:0", "--shards", "1"});
        echo_port_ = echo_->wait_ready();
        ASSERT_GT(echo_port_, 0);
    }

    void TearDown() override {
        for (auto* g : {&a_, &b_}) {
            if (*g) {
                (*g)->stop();
                (*g)->wait();
            }
        }
    }

    static std::unique_ptr<gw::gateway> make(const std::string& backend,
                                             std::function<void(gw::gateway_config&)> tweak) {
        gw::gateway_config cfg;
        std::string err;
        gw::endpoint ep;
        EXPECT_TRUE(gw::parse_endpoint("127.0.0.1:0", &ep, &err));
        cfg.listen.push_back(ep);
        gw::backend_route r;
        EXPECT_TRUE(gw::parse_backend(backend, &r, &err)) << err;
        cfg.backends.push_back(r);
        cfg.shards = 1;
        cfg.reserved_port = false;
        cfg.handshake_timeout_ms = 3000;
        if (tweak) tweak(cfg);
        if (!gw::validate(&cfg, &err)) {
            ADD_FAILURE() << err;
            return nullptr;
        }
        auto g = std::make_unique<gw::gateway>(cfg);
        std::string why = g->start();
        if (!why.empty()) {
            ADD_FAILURE() << why;
            return nullptr;
        }
        return g;
    }

    // Gateway B: the RFC 9289 server role in front of the echo server.
    void start_b(gw::tls_policy mode, const std::string& cert = "server") {
        b_ = make(fmt::format("{}=127.0.0.1:{}", k_echo_prog, echo_port_),
                  [&](gw::gateway_config& c) {
                      c.tls = mode;
                      c.cert = g_certs + "/" + cert + ".pem";
                      c.key = g_certs + "/" + cert + ".key";
                      c.ca = g_certs + "/ca.pem";
                  });
        ASSERT_TRUE(b_);
    }

    // Gateway A: plaintext in, upstream TLS `mode` towards `port`.
    void start_a(uint16_t port, gw::tls_policy mode,
                 std::function<void(gw::upstream_tls&)> tweak = {}) {
        a_ = make(fmt::format("{}=127.0.0.1:{}", k_echo_prog, port), [&](gw::gateway_config& c) {
            c.upstream.mode = mode;
            c.upstream.ca = g_certs + "/ca.pem";
            if (tweak) tweak(c.upstream);
        });
        ASSERT_TRUE(a_);
    }

    std::unique_ptr<child_process> echo_;
    int echo_port_ = 0;
    std::unique_ptr<gw::gateway> a_, b_;
};

const std::vector<size_t> k_sizes = {0, 1, 100, 5000, 70000, 1 << 20, 2 << 20};

TEST_F(upstream_tls, chain_plaintext_to_tls_to_plaintext_0_to_2mib) {
    start_b(gw::tls_policy::required);
    start_a(b_->port(), gw::tls_policy::required);
    EXPECT_EQ(echo(a_->port(), k_sizes), "");
    EXPECT_EQ(echo(a_->port(), {10, 300000}), "");  // a second client: its own backend TLS
    auto ta = a_->totals();
    EXPECT_EQ(ta.upstream_tls, 2u);
    EXPECT_EQ(ta.upstream_plaintext, 0u);
    EXPECT_EQ(ta.upstream_tls_failures, 0u);
    EXPECT_EQ(ta.calls_forwarded, k_sizes.size() + 2);
    auto tb = b_->totals();
    EXPECT_EQ(tb.starttls, 2u);
    EXPECT_EQ(tb.handshakes_ok, 2u);
    EXPECT_EQ(tb.too_weak, 0u);  // nothing reached B in plaintext
    EXPECT_EQ(tb.calls_forwarded, k_sizes.size() + 2);
    EXPECT_NE(a_->metrics_text().find("rpcgate_upstream_handshakes_ok_total 2"), std::string::npos);
}

TEST_F(upstream_tls, many_calls_in_flight_through_the_chain) {
    start_b(gw::tls_policy::required);
    start_a(b_->port(), gw::tls_policy::required);
    // rpcgate-bench checks every echoed byte (--verify); 4 connections, 16 deep.
    child_process run({RPCGATE_BENCH, "run", "--target", fmt::format("127.0.0.1:{}", a_->port()),
                       "--connections", "4", "--depth", "16", "--size", "0", "--size-max", "200000",
                       "--calls", "2000", "--verify", "--timeout", "30"});
    auto st = run.wait_exit(120000);
    std::string out = run.drain_output();
    ASSERT_TRUE(st.has_value()) << out;
    EXPECT_EQ(*st, 0) << out;
    EXPECT_NE(out.find("errors     0"), std::string::npos) << out;
    EXPECT_EQ(a_->totals().upstream_tls, 4u);
}

TEST_F(upstream_tls, mtls_presents_the_client_certificate) {
    start_b(gw::tls_policy::mtls);
    start_a(b_->port(), gw::tls_policy::mtls, [](gw::upstream_tls& u) {
        u.cert = g_certs + "/client.pem";
        u.key = g_certs + "/client.key";
    });
    EXPECT_EQ(echo(a_->port(), {100, 70000}), "");
    EXPECT_EQ(b_->totals().handshakes_ok, 1u);
}

TEST_F(upstream_tls, mtls_server_refuses_a_gateway_without_certificate) {
    start_b(gw::tls_policy::mtls);
    start_a(b_->port(), gw::tls_policy::required);
    EXPECT_NE(echo(a_->port(), {100}), "");
    EXPECT_EQ(a_->totals().upstream_tls_failures + a_->totals().tls_errors, 1u);
}

// B with TLS off answers the probe AUTH_ERROR/AUTH_REJECTEDCRED, as nfs-ganesha does.
TEST_F(upstream_tls, opportunistic_goes_on_in_plaintext_when_the_probe_is_refused) {
    start_b(gw::tls_policy::off);
    start_a(b_->port(), gw::tls_policy::opportunistic);
    EXPECT_EQ(echo(a_->port(), {0, 100, 1 << 20}), "");
    auto ta = a_->totals();
    EXPECT_EQ(ta.upstream_plaintext, 1u);
    EXPECT_EQ(ta.upstream_tls, 0u);
    EXPECT_EQ(b_->totals().tls_probes, 1u);  // B saw the probe and refused it
    EXPECT_NE(a_->metrics_text().find("rpcgate_upstream_probes_refused_total 1"),
              std::string::npos);
}

TEST_F(upstream_tls, required_refuses_and_closes_the_client_when_the_probe_is_refused) {
    start_b(gw::tls_policy::off);
    start_a(b_->port(), gw::tls_policy::required);
    std::string why = echo(a_->port(), {100});
    EXPECT_NE(why, "");
    auto ta = a_->totals();
    EXPECT_EQ(ta.upstream_tls_failures, 1u);
    EXPECT_EQ(ta.upstream_plaintext, 0u);
    EXPECT_EQ(b_->totals().calls_forwarded, 0u);  // nothing went out in plaintext
}

TEST_F(upstream_tls, server_name_mismatch_is_refused) {
    start_b(gw::tls_policy::required);
    start_a(b_->port(), gw::tls_policy::required,
            [](gw::upstream_tls& u) { u.server_name = "nfs.example.org"; });
    EXPECT_NE(echo(a_->port(), {100}), "");
    EXPECT_EQ(a_->totals().upstream_tls_failures, 1u);
    EXPECT_EQ(b_->totals().calls_forwarded, 0u);
}

TEST_F(upstream_tls, name_given_per_backend_overrides_the_default) {
    start_b(gw::tls_policy::required);
    // The certificate carries DNS:localhost; the backend is dialled by IP.
    a_ = make(fmt::format("{}=127.0.0.1:{},tls=required,name=localhost,ca={}/ca.pem", k_echo_prog,
                          b_->port(), g_certs),
              [](gw::gateway_config& c) { c.upstream.server_name = "nfs.example.org"; });
    ASSERT_TRUE(a_);
    EXPECT_EQ(echo(a_->port(), {100}), "");
    EXPECT_EQ(a_->totals().upstream_tls, 1u);
}

TEST_F(upstream_tls, untrusted_server_certificate_is_refused) {
    start_b(gw::tls_policy::required, "untrusted");  // issued by a CA A does not trust
    start_a(b_->port(), gw::tls_policy::required);
    EXPECT_NE(echo(a_->port(), {100}), "");
    EXPECT_EQ(a_->totals().upstream_tls_failures, 1u);
    EXPECT_EQ(b_->totals().calls_forwarded, 0u);
}

TEST_F(upstream_tls, server_selecting_alpn_h2_is_refused) {
    raw_tls_server srv({.alpn = "h2"});
    start_a(srv.port(), gw::tls_policy::required);
    EXPECT_NE(echo(a_->port(), {100}), "");
    EXPECT_EQ(a_->totals().upstream_tls_failures, 1u);
    EXPECT_EQ(srv.calls(), 0);
}

TEST_F(upstream_tls, server_without_alpn_accepted_unless_strict) {
    raw_tls_server srv({.alpn = ""});
    start_a(srv.port(), gw::tls_policy::required);
    EXPECT_EQ(echo(a_->port(), {100}), "");
    a_->stop();
    a_->wait();
    start_a(srv.port(), gw::tls_policy::required,
            [](gw::upstream_tls& u) { u.alpn_strict = true; });
    EXPECT_NE(echo(a_->port(), {100}), "");
    EXPECT_EQ(a_->totals().upstream_tls_failures, 1u);
}

// NewSessionTickets and a KeyUpdate request from the server are TLS business:
// consumed (and answered) by the gateway, never forwarded to the client.
TEST_F(upstream_tls, tickets_and_key_update_from_the_server_are_consumed) {
    raw_tls_server srv({.alpn = "sunrpc", .tickets = 2, .key_update = true});
    start_a(srv.port(), gw::tls_policy::required);
    EXPECT_EQ(echo(a_->port(), {0, 100, 70000, 1 << 20}), "");
    EXPECT_EQ(srv.handshakes(), 1);
    EXPECT_EQ(srv.calls(), 4);
}

TEST_F(upstream_tls, config_errors_are_one_clear_line) {
    gw::gateway_config cfg;
    std::string err;
    gw::endpoint ep;
    ASSERT_TRUE(gw::parse_endpoint("127.0.0.1:0", &ep, &err));
    cfg.listen.push_back(ep);
    gw::backend_route r;
    ASSERT_TRUE(gw::parse_backend("nfs=127.0.0.1:2049,tls=required", &r, &err)) << err;
    cfg.backends.push_back(r);
    EXPECT_FALSE(gw::validate(&cfg, &err));
    EXPECT_NE(err.find("needs a CA"), std::string::npos) << err;
    EXPECT_FALSE(gw::parse_backend("nfs=127.0.0.1:2049,tls=maybe", &r, &err));
    EXPECT_NE(err.find("expected off, opportunistic, required or mtls"), std::string::npos) << err;
    EXPECT_FALSE(gw::parse_backend("nfs=127.0.0.1:2049,colour=blue", &r, &err));
    EXPECT_NE(err.find("unknown option 'colour'"), std::string::npos) << err;
}

}  // namespace

// Per-source limits (--max-connections-per-source, --handshake-rate-per-source)
// on the client side of a gateway; every client here is 127.0.0.1.
class source_limits_gateway : public upstream_tls {};

TEST_F(source_limits_gateway, connection_cap_per_source_refuses_then_recovers) {
    b_ = make(fmt::format("{}=127.0.0.1:{}", k_echo_prog, echo_port_),
              [](gw::gateway_config& c) { c.max_connections_per_source = 3; });
    ASSERT_TRUE(b_);
    std::vector<client::blocking_client> held;
    for (int i = 0; i < 3; ++i) {
        held.push_back(client::blocking_client::open("127.0.0.1", b_->port(), client::tls_mode::off,
                                                     k_echo_prog, 1, nullptr, 5000ms));
        ASSERT_TRUE(held.back().ok()) << held.back().error();
    }
    EXPECT_NE(echo(b_->port(), {10}), "");  // the fourth is closed at once
    EXPECT_NE(b_->metrics_text().find("rpcgate_source_refused_connections_total{shard=\"0\"} 1"),
              std::string::npos)
        << b_->metrics_text();
    held.pop_back();  // one closes: its slot comes back
    auto deadline = std::chrono::steady_clock::now() + 5s;
    std::string why = "not tried";
    while (std::chrono::steady_clock::now() < deadline && !(why = echo(b_->port(), {10})).empty())
        std::this_thread::sleep_for(20ms);  // the close reaches the shard asynchronously
    EXPECT_EQ(why, "");
}

TEST_F(source_limits_gateway, handshake_rate_per_source_closes_the_excess) {
    b_ = make(fmt::format("{}=127.0.0.1:{}", k_echo_prog, echo_port_), [](gw::gateway_config& c) {
        c.tls = gw::tls_policy::opportunistic;
        c.cert = g_certs + "/server.pem";
        c.key = g_certs + "/server.key";
        c.handshake_rate_per_source = 1;  // one a second, burst 2
        c.handshake_burst_per_source = 2;
    });
    ASSERT_TRUE(b_);
    tls::client_options o;
    o.ca_file = g_certs + "/ca.pem";
    o.server_name = "localhost";
    int ok = 0, refused = 0;
    for (int i = 0; i < 4; ++i) {
        auto c = client::connect_starttls("127.0.0.1", b_->port(), k_echo_prog, 1, o, 5000ms);
        (c.ok() ? ok : refused)++;
    }
    // Four back to back: the burst of two passes; the rest is refused unless
    // a slow machine took over a second, when one more token has come.
    EXPECT_GE(ok, 2);
    EXPECT_GE(refused, 1);
    EXPECT_NE(b_->metrics_text().find(fmt::format(
                  "rpcgate_source_refused_handshakes_total{{shard=\"0\"}} {}", refused)),
              std::string::npos);
    // Plaintext calls from the same source are not rate limited.
    EXPECT_EQ(echo(b_->port(), {10}), "");
}
