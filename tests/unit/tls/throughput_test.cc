// Figures for the notes, not a pass/fail test: run with
//   tls_unit_tests --gtest_also_run_disabled_tests --gtest_filter='TlsFigures.*'
// Handshakes per second of two in-memory sessions (EC P-256 server
// certificate, one thread doing both sides), encrypt + decrypt MB/s for 64 KiB
// writes, and heap bytes per idle session after release_buffers().
#include <gtest/gtest.h>
#include <malloc.h>

#include <chrono>
#include <cstdio>

#include "test_util.h"

namespace rpcgate::tls {
namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

TEST(TlsFigures, DISABLED_HandshakesPerSecond) {
    std::string err;
    auto s = context::make_server(test::server_opts(), &err);
    auto c = context::make_client(test::client_opts(), &err);
    ASSERT_TRUE(s && c) << err;
    int n = 0;
    auto t0 = clock_type::now();
    while (seconds_since(t0) < 2.0) {
        test::pair p(*c, *s);
        p.handshake();
        ASSERT_EQ(p.sst, status::done);
        ++n;
    }
    double secs = seconds_since(t0);
    std::printf("handshakes (both sides, one thread): %.0f/s\n", n / secs);
}

TEST(TlsFigures, DISABLED_Throughput64KiB) {
    std::string err;
    auto s = context::make_server(test::server_opts(), &err);
    auto c = context::make_client(test::client_opts(), &err);
    test::pair p(*c, *s);
    p.handshake();
    ASSERT_EQ(p.sst, status::done);
    core::slice payload = core::slice::allocate(64 * 1024);
    std::memset(payload.mutable_data(), 0x5a, payload.size());
    size_t bytes = 0;
    auto t0 = clock_type::now();
    while (seconds_since(t0) < 2.0) {
        for (int i = 0; i < 64; ++i) {
            core::slice_chain wire, plain, reply;
            ASSERT_EQ(p.client->write(core::slice_chain(payload.share()), wire), status::ok);
            p.server->feed(std::move(wire));
            ASSERT_EQ(p.server->read(plain, reply), status::ok);
            ASSERT_EQ(plain.size(), payload.size());
            bytes += plain.size();
        }
    }
    double secs = seconds_since(t0);
    std::printf("encrypt+decrypt, 64 KiB writes (%s): %.0f MB/s\n", p.client->cipher().c_str(),
                bytes / secs / 1e6);
}

TEST(TlsFigures, DISABLED_IdleSessionMemory) {
    std::string err;
    auto s = context::make_server(test::server_opts(), &err);
    auto c = context::make_client(test::client_opts(), &err);
    constexpr int n = 200;
    std::vector<std::unique_ptr<test::pair>> pairs;
    std::vector<std::unique_ptr<session>> servers;
    size_t before = mallinfo2().uordblks;
    size_t after_handshake = 0;
    for (int pass = 0; pass < 2; ++pass) {
        for (int i = 0; i < n; ++i) {
            auto p = std::make_unique<test::pair>(*c, *s);
            p->handshake();
            ASSERT_EQ(p->sst, status::done);
            auto got = test::pair::send(*p->client, *p->server,
                                        core::slice_chain(core::slice::copy_of("x")));
            if (pass == 1) p->server->release_buffers();
            servers.push_back(std::move(p->server));
        }
        size_t now = mallinfo2().uordblks;
        if (pass == 0) {
            after_handshake = now - before;
            servers.clear();
            before = mallinfo2().uordblks;
        } else {
            std::printf(
                "server session after one record: %zu B kept, %zu B after "
                "release_buffers()\n",
                after_handshake / n, (now - before) / n);
        }
    }
}

}  // namespace
}  // namespace rpcgate::tls
