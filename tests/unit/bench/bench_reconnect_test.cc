// run --reconnect against the in-process echo server made to close its
// connections (serve_options' test seams): a close between calls costs one
// reconnect and no call, a close with a call in flight loses exactly that
// call, TLS connections handshake again, and without --reconnect a closed
// connection still ends the way it always did.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "tests/unit/bench/test_address.h"
#include "tls/client/tests/test_support.h"
#include "tls/context.h"
#include "tools/bench/echo_server.h"
#include "tools/bench/load_client.h"

using namespace rpcgate;
using namespace rpcgate::bench;
using rpcgate::bench::test_util::loopback;

namespace {

// An echo server that closes each connection after answering `close_after`
// calls, or on the call after `drop_after` (serve_options' test seams).
std::unique_ptr<echo_server> start_server(uint64_t close_after, uint64_t drop_after,
                                          serve_options o = {}) {
    o.close_after_calls = close_after;
    o.drop_after_calls = drop_after;
    o.listen = loopback(0);
    o.shards = 2;
    auto srv = std::make_unique<echo_server>(o);
    std::string err = srv->start();
    EXPECT_EQ(err, "");
    return err.empty() ? std::move(srv) : nullptr;
}

// `calls` verified calls over `connections` x `depth`, with --reconnect.
run_options options(uint16_t port, uint64_t calls, unsigned connections = 1, unsigned depth = 1) {
    run_options o;
    o.target = loopback(port);
    o.calls = calls;
    o.connections = connections;
    o.depth = depth;
    o.progress_interval_s = 0;
    o.timeout_ms = 20000;  // generous: a loaded machine must not make timeouts
    o.size = 100;
    o.verify = true;
    o.reconnect = true;
    return o;
}

run_report run(const run_options& o) {
    std::string err;
    run_report r = run_load(o, &err);
    EXPECT_EQ(err, "");
    return r;
}

// Open loop at 5 calls/s on one connection: a call leaves every 200 ms, so
// the server's FIN after a reply arrives while nothing is in flight.
run_options sparse(uint16_t port, uint64_t calls) {
    run_options o = options(port, calls);
    o.rate = 5;
    return o;
}

// The connection counters of `r`: connects, reconnects, closes between calls
// and closes with calls in flight.
void expect_connections(const run_report& r, uint64_t connects, uint64_t reconnects, uint64_t clean,
                        uint64_t in_flight) {
    EXPECT_EQ(r.connects, connects) << format_human(r);
    EXPECT_EQ(r.reconnects, reconnects);
    EXPECT_EQ(r.clean_closes, clean);
    EXPECT_EQ(r.closes_in_flight, in_flight);
}

}  // namespace

TEST(bench_reconnect, close_between_calls_costs_a_reconnect_and_no_call) {
    auto srv = start_server(3, 0);
    ASSERT_TRUE(srv);
    run_report r = run(sparse(srv->port(), 9));
    EXPECT_EQ(r.calls, 9u) << format_human(r);
    EXPECT_EQ(r.errors, 0u) << format_human(r);
    EXPECT_EQ(r.lost_calls, 0u);
    // Three connections carried three calls each; the server's close of the
    // last one comes when the run is over and is not a close mid-run.
    expect_connections(r, 3, 2, 2, 0);
    EXPECT_EQ(r.exit_status(), 0);
    srv->stop();
    EXPECT_EQ(srv->totals().connections, 3u);
    EXPECT_EQ(srv->totals().echo_calls, 9u);
}

TEST(bench_reconnect, close_mid_call_loses_that_call_and_reconnects) {
    auto srv = start_server(0, 5);
    ASSERT_TRUE(srv);
    run_options o = options(srv->port(), 20);
    run_report r = run(o);
    // 5 answered + 1 dropped, three times, then the last 2: every call sent
    // is either answered or lost, none twice.
    EXPECT_EQ(r.calls, 17u) << format_human(r);
    EXPECT_EQ(r.lost_calls, 3u);
    EXPECT_EQ(r.errors, 3u);
    expect_connections(r, 4, 3, 0, 3);
    EXPECT_EQ(r.bad_replies, 0u);
    EXPECT_NE(r.exit_status(), 0);
    std::string j = format_json(r);
    for (const char* k :
         {"\"reconnect\":true,", "\"connects\":4,", "\"reconnects\":3,", "\"lost_calls\":3,",
          "\"closes_in_flight\":3,", "\"clean_closes\":0,", "\"p999_us\":"})
        EXPECT_NE(j.find(k), std::string::npos) << k << " in " << j;
    EXPECT_NE(format_human(r).find("connects   4 (3 reconnects)"), std::string::npos)
        << format_human(r);
}

// Pipelined calls on several connections: whatever the timing, every call is
// answered or counted lost, and each close is one reconnect.
TEST(bench_reconnect, pipelined_losses_add_up) {
    auto srv = start_server(0, 40);
    ASSERT_TRUE(srv);
    run_options o = options(srv->port(), 2000, 4, 4);
    o.size_max = 4096;
    run_report r = run(o);
    EXPECT_EQ(r.calls + r.lost_calls, 2000u) << format_human(r);
    EXPECT_EQ(r.errors, r.lost_calls) << format_human(r);
    EXPECT_GT(r.reconnects, 4u);
    EXPECT_EQ(r.connects, 4u + r.reconnects);
    // Every close found a call in flight (the one the server dropped); each
    // was followed by a reconnect unless the connection's budget was spent.
    const uint64_t closes = r.closes_in_flight + r.clean_closes;
    EXPECT_EQ(r.clean_closes, 0u);
    EXPECT_LE(r.reconnects, closes);
    EXPECT_GE(r.reconnects + o.connections, closes);
    EXPECT_GE(r.lost_calls, r.closes_in_flight);
    srv->stop();
    // Replies still queued when the server closed were answered but lost.
    EXPECT_GE(srv->totals().echo_calls, r.calls);
}

TEST(bench_reconnect, without_reconnect_a_closed_connection_ends) {
    auto srv = start_server(0, 5);
    ASSERT_TRUE(srv);
    run_options o = options(srv->port(), 20);
    o.reconnect = false;
    run_report r = run(o);
    EXPECT_EQ(r.calls, 5u) << format_human(r);
    EXPECT_EQ(r.lost_calls, 1u);
    expect_connections(r, 1, 0, 0, 1);
    EXPECT_NE(format_json(r).find("\"reconnect\":false,"), std::string::npos);
}

TEST(bench_reconnect, tls_connections_handshake_again) {
    auto pki = client::testing::make_test_pki();
    ASSERT_FALSE(pki.dir.empty());
    tls::server_options tso;
    tso.cert_file = pki.server_cert;
    tso.key_file = pki.server_key;
    std::string err;
    auto ctx = tls::context::make_server(tso, &err);
    ASSERT_TRUE(ctx) << err;
    serve_options so;
    so.tls = ctx.get();
    auto srv = start_server(3, 0, so);  // close_notify after the third reply
    ASSERT_TRUE(srv);
    run_options o = sparse(srv->port(), 7);
    o.tls = client::tls_mode::implicit;
    o.tls_options.ca_file = pki.ca_cert;
    o.tls_options.server_name = "localhost";
    run_report r = run(o);
    EXPECT_EQ(r.calls, 7u) << format_human(r);
    EXPECT_EQ(r.errors, 0u) << format_human(r);
    expect_connections(r, 3, 2, 2, 0);
    EXPECT_EQ(r.handshake_latency.count(), 3u);
    srv->stop();
    client::testing::remove_test_pki(pki);
}

// A server that goes away for good: the reconnects are refused, retried for
// one call timeout, counted, and then the connection ends; the run is bounded.
TEST(bench_reconnect, refused_reconnects_give_up_after_the_timeout) {
    auto srv = start_server(2, 0);
    ASSERT_TRUE(srv);
    run_options o = sparse(srv->port(), 50);
    o.timeout_ms = 500;
    run_report r;
    std::thread client([&] { r = run(o); });
    // The first close, then the server stops (its listeners close with it).
    const auto t0 = std::chrono::steady_clock::now();
    while (srv->totals().test_closes == 0 &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    srv->stop();
    client.join();
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(took, 30.0) << format_human(r);
    EXPECT_GE(r.calls, 2u) << format_human(r);
    EXPECT_LT(r.calls, 50u);
    EXPECT_GE(r.connect_errors, 2u) << format_human(r);  // retried, not given up at once
    EXPECT_GE(r.reconnects, 1u);
    EXPECT_EQ(r.errors, r.connect_errors + r.lost_calls);
}
