// Micro-benchmarks of a userspace TLS session on small calls (tls/session.h):
// what OpenSSL's record buffers cost when they are given back after every
// read and write (SSL_MODE_RELEASE_BUFFERS, which keeps an idle connection's
// memory low; tls::session is lean until it gets busy) against keeping them.
//
// One iteration: the client seals `calls` 64-byte calls in one write, the
// server opens them, seals as many 64-byte replies in one write, and the
// client opens those: what one connection's batch costs the gateway on each
// side (TLS 1.3, the default suite of the context, in memory, one thread).
//
//   rpcgate-micro --benchmark_filter=tls_small_calls
#include <benchmark/benchmark.h>
#include <openssl/ssl.h>
#include <cstring>
#include <memory>
#include <string>

#include "tests/unit/tls/cert_fixtures.h"
#include "tls/context.h"
#include "tls/session.h"

using namespace rpcgate;

namespace {

struct contexts {
    std::unique_ptr<tls::context> server, client;
    std::string err;
    contexts() {
        server = tls::context::make_server(tls::test::server_opts(), &err);
        if (server) client = tls::context::make_client(tls::test::client_opts(), &err);
    }
};

// Moves every byte of `from`'s output to `to` until both handshakes are done.
bool handshake(tls::session& client, tls::session& server) {
    tls::status cs = tls::status::ok, ss = tls::status::ok;
    for (int round = 0; round < 10; ++round) {
        core::slice_chain to_server, to_client;
        if (cs == tls::status::ok) cs = client.handshake(to_server);
        server.feed(std::move(to_server));
        if (ss == tls::status::ok) ss = server.handshake(to_client);
        client.feed(std::move(to_client));
        if (cs == tls::status::error || ss == tls::status::error) return false;
        if (cs == tls::status::done && ss == tls::status::done) return true;
    }
    return false;
}

// One side's write carried to the other side's read; false on any error.
bool carry(tls::session& from, tls::session& to, const core::slice_chain& plain, size_t expect) {
    core::slice_chain wire, out, back;
    if (from.write(plain, wire) != tls::status::ok) return false;
    to.feed(std::move(wire));
    if (to.read(out, back) != tls::status::ok) return false;
    return out.size() == expect;
}

void tls_small_calls(benchmark::State& state) {
    const bool release = state.range(0) != 0;
    const size_t calls = size_t(state.range(1));
    static contexts ctx;
    if (!ctx.client) {
        state.SkipWithError(("no TLS context: " + ctx.err).c_str());
        return;
    }
    std::string err;
    auto client = tls::session::make(*ctx.client, &err);
    auto server = tls::session::make(*ctx.server, &err);
    if (!client || !server || !handshake(*client, *server)) {
        state.SkipWithError("handshake failed");
        return;
    }
    // A session starts lean and stops after tls::session::k_busy_reads
    // reads; the mode is set again every iteration to measure lean alone.
    auto set_mode = [&] {
        for (tls::session* s : {client.get(), server.get()}) {
            if (release)
                SSL_set_mode(s->native(), SSL_MODE_RELEASE_BUFFERS);
            else
                SSL_clear_mode(s->native(), SSL_MODE_RELEASE_BUFFERS);
        }
    };
    set_mode();
    core::slice batch = core::slice::allocate(64 * calls);
    std::memset(batch.mutable_data(), 0x5a, batch.size());
    for (auto _ : state) {
        if (release) set_mode();
        core::slice_chain plain(batch.share());
        if (!carry(*client, *server, plain, batch.size()) ||
            !carry(*server, *client, plain, batch.size())) {
            state.SkipWithError("record exchange failed");
            return;
        }
    }
    state.SetItemsProcessed(int64_t(state.iterations() * calls));
    state.SetLabel(release ? "buffers released after each read and write" : "buffers kept");
}
BENCHMARK(tls_small_calls)->ArgNames({"release", "calls"})->ArgsProduct({{0, 1}, {1, 16}});

}  // namespace
