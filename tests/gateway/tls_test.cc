// RFC 9289 server role of the gateway, against a client that is not ours:
// Python's ssl module (tests/gateway/rpc_tls_client.py). Certificates come
// from tests/tls/make_certs.sh; the backend is `rpcgate-bench serve`.
#include <dirent.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <functional>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include "gateway/gateway.h"
#include "rpc/message.h"
#include "tests/gateway/child_process.h"
#include "tests/timing.h"

using namespace rpcgate;
using rpcgate::testing::child_process;

namespace {

constexpr uint32_t k_echo_prog = 0x20000001;

std::string g_certs;  // made once per run

size_t count_fds() {
    size_t n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n;
}

class tls_gateway : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        g_certs = rpcgate::testing::make_fixture_certs(MAKE_CERTS);
        ASSERT_NE(g_certs, "") << "make_certs.sh failed";
    }

    void SetUp() override {
        backend_ = std::make_unique<child_process>(std::vector<std::string>{
            RPCGATE_BENCH, "serve", "--listen", "127.0.0.1:0", "--shards", "1"});
        backend_port_ = backend_->wait_ready();
        ASSERT_GT(backend_port_, 0);
    }

    void start(gw::tls_policy mode, std::function<void(gw::gateway_config&)> tweak = {}) {
        gw::gateway_config cfg;
        std::string err;
        gw::endpoint ep;
        ASSERT_TRUE(gw::parse_endpoint("127.0.0.1:0", &ep, &err));
        cfg.listen.push_back(ep);
        cfg.implicit_tls.push_back(ep);
        gw::backend_route r;
        ASSERT_TRUE(gw::parse_backend(fmt::format("{}=127.0.0.1:{}", k_echo_prog, backend_port_),
                                      &r, &err));
        cfg.backends.push_back(r);
        cfg.shards = 2;
        cfg.reserved_port = false;
        cfg.tls = mode;
        cfg.cert = g_certs + "/server.pem";
        cfg.key = g_certs + "/server.key";
        cfg.ca = g_certs + "/ca.pem";
        cfg.crl = g_certs + "/crl.pem";
        if (tweak) tweak(cfg);
        ASSERT_TRUE(gw::validate(&cfg, &err)) << err;
        gw_ = std::make_unique<gw::gateway>(cfg);
        ASSERT_EQ(gw_->start(), "");
    }

    void TearDown() override {
        if (gw_) {
            gw_->stop();
            gw_->wait();
        }
    }

    // Runs the Python client; returns {exit status, stdout}.
    std::pair<int, std::string> client(const std::string& mode, std::vector<std::string> extra = {},
                                       uint16_t port = 0) {
        std::vector<std::string> argv{"/usr/bin/python3",
                                      RPC_TLS_CLIENT,
                                      mode,
                                      "--port",
                                      std::to_string(port ? port : gw_->port()),
                                      "--ca",
                                      g_certs + "/ca.pem"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        child_process c(argv);
        auto st = c.wait_exit(60000);
        std::string out = c.drain_output();
        return {st.value_or(-1), out};
    }

    std::unique_ptr<child_process> backend_;
    int backend_port_ = 0;
    std::unique_ptr<gw::gateway> gw_;
};

TEST_F(tls_gateway, python_ssl_client_starttls_echo_0_to_2mib) {
    start(gw::tls_policy::opportunistic);
    auto [st, out] = client("echo", {"--close-notify"});
    EXPECT_EQ(st, 0) << out;
    EXPECT_NE(out.find("tls TLSv1.3"), std::string::npos) << out;
    EXPECT_NE(out.find("sunrpc"), std::string::npos) << out;
    auto t = gw_->totals();
    EXPECT_EQ(t.starttls, 1u);
    EXPECT_EQ(t.handshakes_ok, 1u);
    EXPECT_EQ(t.tls_sessions, 1u);
    EXPECT_EQ(t.calls_forwarded, 7u);
}

TEST_F(tls_gateway, implicit_tls_listener) {
    start(gw::tls_policy::opportunistic);
    auto [st, out] = client("implicit", {"--sizes", "0,5000,1048576"}, gw_->implicit_port());
    EXPECT_EQ(st, 0) << out;
    EXPECT_EQ(gw_->totals().implicit_tls, 1u);
}

// --tls-auto: one port takes plaintext RPC, STARTTLS and TLS from the first byte.
TEST_F(tls_gateway, auto_mode_tells_tls_from_rpc_by_the_first_byte) {
    start(gw::tls_policy::opportunistic, [](gw::gateway_config& c) { c.tls_auto = true; });
    auto [st, out] = client("implicit", {"--sizes", "0,70000"});
    EXPECT_EQ(st, 0) << out;
    auto [st2, out2] = client("echo", {"--sizes", "70000"});
    EXPECT_EQ(st2, 0) << out2;
    auto [st3, out3] = client("plain-call");
    EXPECT_NE(out3.find("accepted 0"), std::string::npos) << out3;
    auto t = gw_->totals();
    EXPECT_EQ(t.implicit_tls, 1u);
    EXPECT_EQ(t.starttls, 1u);
    EXPECT_EQ(t.handshakes_ok, 2u);
}

TEST_F(tls_gateway, client_without_alpn_accepted_unless_strict) {
    start(gw::tls_policy::opportunistic);
    auto [st, out] = client("echo", {"--alpn", "none", "--sizes", "10"});
    EXPECT_EQ(st, 0) << out;  // the Linux kernel client sends no ALPN
}

TEST_F(tls_gateway, client_without_alpn_refused_when_strict) {
    start(gw::tls_policy::opportunistic, [](gw::gateway_config& c) { c.alpn_strict = true; });
    auto [st, out] = client("echo", {"--alpn", "none", "--sizes", "10"});
    EXPECT_EQ(st, 3) << out;
    EXPECT_EQ(gw_->totals().handshakes_failed, 1u);
}

TEST_F(tls_gateway, alpn_h2_only_is_refused) {
    start(gw::tls_policy::opportunistic);
    auto [st, out] = client("echo", {"--alpn", "h2", "--sizes", "10"});
    EXPECT_EQ(st, 3) << out;
    EXPECT_EQ(gw_->totals().handshakes_failed, 1u);
}

TEST_F(tls_gateway, tls12_only_client_is_refused) {
    start(gw::tls_policy::opportunistic);
    auto [st, out] = client("echo", {"--max-version", "1.2", "--sizes", "10"});
    EXPECT_EQ(st, 3) << out;
    EXPECT_EQ(gw_->totals().handshakes_failed, 1u);
}

TEST_F(tls_gateway, junk_after_the_probe_is_dropped) {
    start(gw::tls_policy::opportunistic);
    auto [st, out] = client("junk");
    EXPECT_EQ(st, 0) << out;
    EXPECT_EQ(gw_->totals().handshakes_not_tls, 1u);
}

TEST_F(tls_gateway, probe_inside_tls_gets_badcred) {
    start(gw::tls_policy::opportunistic);
    auto [st, out] = client("probe-in-tls");
    EXPECT_EQ(st, 0) << out;
    EXPECT_EQ(gw_->totals().auth_tls_misuse, 1u);
}

TEST_F(tls_gateway, plaintext_call_in_required_mode_gets_tooweak) {
    // The echo program is one the listener demands TLS for (--require-tls-for).
    start(gw::tls_policy::required,
          [](gw::gateway_config& c) { c.tls_programs.progs.push_back(0x20000001); });
    auto [st, out] = client("plain-call");
    EXPECT_EQ(st, 0) << out;
    EXPECT_NE(out.find("denied auth_error 5"), std::string::npos) << out;  // AUTH_TOOWEAK
    EXPECT_EQ(gw_->totals().too_weak, 1u);
    EXPECT_EQ(gw_->totals().plaintext_allowed, 0u);
    // ... while the same call inside TLS goes through.
    auto [st2, out2] = client("echo", {"--sizes", "100"});
    EXPECT_EQ(st2, 0) << out2;
}

TEST_F(tls_gateway, required_mode_serves_other_programs_in_plaintext) {
    // By default --tls required demands TLS for NFS and NFS_ACL only: the echo
    // program, like MOUNT or NLM, is served in plaintext, and counted.
    start(gw::tls_policy::required);
    auto [st, out] = client("plain-call");
    EXPECT_EQ(st, 0) << out;
    EXPECT_NE(out.find("accepted 0"), std::string::npos) << out;  // SUCCESS
    EXPECT_EQ(gw_->totals().too_weak, 0u);
    EXPECT_EQ(gw_->totals().plaintext_allowed, 1u);
}

TEST_F(tls_gateway, mtls_accepts_a_valid_client_certificate) {
    start(gw::tls_policy::mtls);
    auto [st, out] = client("echo", {"--cert", g_certs + "/client.pem", "--key",
                                     g_certs + "/client.key", "--sizes", "100"});
    EXPECT_EQ(st, 0) << out;
    EXPECT_EQ(gw_->totals().handshakes_ok, 1u);
}

TEST_F(tls_gateway, mtls_refuses_bad_client_certificates) {
    start(gw::tls_policy::mtls);
    for (const char* who : {"expired", "selfsigned", "revoked", "untrusted"}) {
        auto [st, out] = client("echo", {"--cert", g_certs + "/" + who + ".pem", "--key",
                                         g_certs + "/" + who + ".key", "--sizes", "100"});
        EXPECT_EQ(st, 3) << who << ": " << out;
    }
    {
        auto [st, out] = client("echo", {"--sizes", "100"});  // no certificate at all
        EXPECT_EQ(st, 3) << out;
    }
    auto t = gw_->totals();
    EXPECT_EQ(t.handshakes_failed, 5u);
    EXPECT_EQ(t.handshakes_ok, 0u);
    EXPECT_EQ(t.calls_forwarded, 0u);
}

// 200 clients send the probe and then nothing: each is cut at the handshake
// deadline and every fd comes back.
TEST_F(tls_gateway, silent_clients_after_the_probe_are_cut_at_the_deadline) {
    start(gw::tls_policy::opportunistic,
          [](gw::gateway_config& c) { c.handshake_timeout_ms = 1000; });
    size_t fds_before = count_fds();
    auto [st, out] = client("flood", {"--count", "200", "--timeout", "20"});
    EXPECT_EQ(st, 0) << out;
    auto t = gw_->totals();
    EXPECT_EQ(t.handshakes_timed_out, 200u);
    EXPECT_EQ(t.handshakes_in_progress, 0u);
    EXPECT_EQ(count_fds(), fds_before);
}

// Reload (SIGHUP / POST /reload), issue 7's acceptance: rotate the server
// certificate while TLS connections stream — they go on unbroken and a new
// connection sees the new certificate; revoke one connected client in the
// CRL and reload — that client is closed within 1 s, the other is not; a
// reload with a bad file changes nothing and is counted in /metrics.
TEST_F(tls_gateway, reload_rotates_the_certificate_and_applies_the_crl) {
    // A second server certificate and a second client, from the same CA.
    std::string sh = fmt::format(
        "set -e; cd {0}; "
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server2.key "
        "-subj '/CN=localhost/O=rotated' -out server2.csr 2>/dev/null; "
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext; "
        "openssl x509 -req -in server2.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 "
        "-extfile san.ext -out server2.pem 2>/dev/null; "
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client2.key "
        "-subj '/CN=client2' -out client2.csr 2>/dev/null; "
        "openssl x509 -req -in client2.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 "
        "-out client2.pem 2>/dev/null; "
        "cp server.pem live.pem; cp server.key live.key; cp crl.pem live-crl.pem",
        g_certs);
    child_process gen({"/bin/sh", "-c", sh});
    ASSERT_EQ(gen.wait_exit(30000).value_or(-1), 0);
    std::string conf = g_certs + "/rpcgate.toml";
    std::ofstream(conf) << "listen = \"127.0.0.1:0\"\nbackend = \"536870913=127.0.0.1:9\"\n";
    start(gw::tls_policy::mtls, [&](gw::gateway_config& c) {
        c.cert = g_certs + "/live.pem";
        c.key = g_certs + "/live.key";
        c.crl = g_certs + "/live-crl.pem";
        c.config_file = conf;
    });
    auto hold = [&](const std::string& who) {
        return std::make_unique<child_process>(std::vector<std::string>{
            "/usr/bin/python3", RPC_TLS_CLIENT, "hold", "--port", std::to_string(gw_->port()),
            "--ca", g_certs + "/ca.pem", "--cert", g_certs + "/" + who + ".pem", "--key",
            g_certs + "/" + who + ".key", "--timeout", "60"});
    };
    auto keeper = hold("client2");  // stays through everything
    auto victim = hold("client");   // client1: revoked below
    ASSERT_TRUE(keeper->wait_line("ready", 15000));
    ASSERT_TRUE(victim->wait_line("ready", 15000));

    // Rotate the server certificate.
    ASSERT_EQ(::rename((g_certs + "/server2.pem").c_str(), (g_certs + "/live.pem").c_str()), 0);
    ASSERT_EQ(::rename((g_certs + "/server2.key").c_str(), (g_certs + "/live.key").c_str()), 0);
    EXPECT_EQ(gw_->reload(), "");
    auto [st, out] = client("echo", {"--cert", g_certs + "/client2.pem", "--key",
                                     g_certs + "/client2.key", "--sizes", "10"});
    EXPECT_EQ(st, 0) << out;
    EXPECT_NE(out.find("organizationName=rotated"), std::string::npos) << out;  // the new one
    EXPECT_FALSE(keeper->wait_exit(0).has_value()) << "a streaming connection broke on reload";
    EXPECT_FALSE(victim->wait_exit(0).has_value()) << "a streaming connection broke on reload";

    // Revoke client1 and reload: it is closed within 1 s, client2 is not.
    child_process revoke({"/bin/sh", REVOKE_CERT, g_certs, "client", g_certs + "/new-crl.pem"});
    ASSERT_EQ(revoke.wait_exit(30000).value_or(-1), 0);
    ASSERT_EQ(::rename((g_certs + "/new-crl.pem").c_str(), (g_certs + "/live-crl.pem").c_str()), 0);
    EXPECT_EQ(gw_->reload(), "");
    // Closed by the reload itself, not at some later timeout: within 1 s on a
    // quiet machine (tests/timing.h for the slack allowed otherwise).
    const long bound = rpcgate::testing::timing_bound_ms(1000);
    auto gone = victim->wait_exit(int(bound));
    ASSERT_TRUE(gone.has_value()) << "the revoked client was not closed within " << bound << " ms";
    EXPECT_EQ(*gone, 0) << victim->drain_output();
    EXPECT_EQ(gw_->totals().tls_revoked, 1u);
    auto [st2, out2] = client("echo", {"--cert", g_certs + "/client.pem", "--key",
                                       g_certs + "/client.key", "--sizes", "10"});
    EXPECT_EQ(st2, 3) << out2;  // new handshakes use the new CRL

    // A bad file: nothing changes, the failure is counted.
    std::ofstream(g_certs + "/live-crl.pem") << "not a CRL\n";
    std::string why = gw_->reload();
    EXPECT_NE(why.find("keeping the old TLS material"), std::string::npos) << why;
    std::string metrics = gw_->metrics_text();
    EXPECT_NE(metrics.find("rpcgate_reload_failures_total 1\n"), std::string::npos);
    EXPECT_NE(metrics.find("rpcgate_reloads_total 2\n"), std::string::npos);
    // A config file that no longer parses: same, with one clear reason.
    std::ofstream(conf) << "listen = [\n";
    why = gw_->reload();
    EXPECT_NE(why.find("keeping the old configuration"), std::string::npos) << why;
    EXPECT_NE(gw_->metrics_text().find("rpcgate_reload_failures_total 2\n"), std::string::npos);
    EXPECT_FALSE(keeper->wait_exit(0).has_value()) << "the other client was closed";
    auto [st3, out3] = client("echo", {"--cert", g_certs + "/client2.pem", "--key",
                                       g_certs + "/client2.key", "--sizes", "10"});
    EXPECT_EQ(st3, 0) << out3;  // still serving
}

// tlscertuser: with --cert-user-map, a call from a client whose verified
// certificate is in the map reaches the backend with that AUTH_SYS identity,
// whatever credential the client sent. The backend here is a raw socket that
// records the credential it saw.
TEST_F(tls_gateway, certificate_identity_replaces_the_credential) {
    int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(lfd, 4), 0);
    socklen_t al = sizeof a;
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &al);
    backend_port_ = ntohs(a.sin_port);

    std::string map = g_certs + "/users.map";
    std::ofstream(map) << "# test map\nsubject:CN=client1,O=rpcgate test 1234 5678,10,20\n";
    rpc::auth_sys_params seen;
    bool got = false;
    std::thread backend([&] {
        int fd = ::accept(lfd, nullptr, nullptr);
        if (fd < 0) return;
        timeval tv{20, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        std::string buf;
        char tmp[65536];
        for (;;) {  // one record, in one fragment (the gateway frames it so)
            if (buf.size() >= 4) {
                uint32_t mark = ntohl(*reinterpret_cast<const uint32_t*>(buf.data()));
                if (buf.size() >= 4 + (mark & 0x7fffffff)) break;
            }
            ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
            if (n <= 0) break;
            buf.append(tmp, size_t(n));
        }
        core::slice_chain rec(core::slice::copy_of(buf.substr(4)));
        auto call = rpc::decode_call(rec);
        if (call.ok()) {
            if (auto p = rpc::decode_auth_sys(call->header.cred); p.ok()) {
                seen = *p;
                got = true;
            }
            auto reply = rpc::build_reply(
                rpc::reply_header::accepted(call->header.xid, rpc::accept_stat::success),
                std::move(call->args));
            std::string out = reply.to_string();
            ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
        }
        ::close(fd);
    });
    start(gw::tls_policy::mtls, [&](gw::gateway_config& c) { c.cert_user_map = map; });
    auto [st, out] = client("echo", {"--cert", g_certs + "/client.pem", "--key",
                                     g_certs + "/client.key", "--sizes", "100"});
    backend.join();
    ::close(lfd);
    EXPECT_EQ(st, 0) << out;
    ASSERT_TRUE(got) << "the backend saw no AUTH_SYS credential";
    EXPECT_EQ(seen.uid, 1234u);
    EXPECT_EQ(seen.gid, 5678u);
    EXPECT_EQ(std::vector<uint32_t>(seen.group_ids().begin(), seen.group_ids().end()),
              (std::vector<uint32_t>{10, 20}));
    EXPECT_EQ(gw_->totals().certuser_rewrites, 1u);
}

}  // namespace
