// Micro-benchmarks of a userspace TLS session (tls/session.h), in memory, on
// one thread, TLS 1.3 with the context's default suite (AES-128-GCM on a CPU
// with AES instructions).
//
// tls_small_calls: with OpenSSL's records, what its record buffers cost when
// they are given back after every read and write (SSL_MODE_RELEASE_BUFFERS,
// which keeps an idle connection's memory low; tls::session is lean until it
// gets busy) against keeping them. One iteration: the client seals `calls`
// 64-byte calls in one write, the server opens them, seals as many 64-byte
// replies in one write, and the client opens those.
//
// tls_records: the same round trip of `bytes` each way through rpcgate's own
// record layer (own=1, tls/record_layer.h) or OpenSSL's (own=0), beside
// aead_floor: the AEAD alone on the same bytes (each byte sealed once and
// opened once in each direction, in 16 KiB records): what no record layer
// can go below. Compare the three in one run: own / aead_floor is the
// record layer's overhead over the crypto itself.
//
//   rpcgate-micro --benchmark_filter='tls_small_calls|tls_records|aead_floor'
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "tests/unit/tls/cert_fixtures.h"
#include "tls/context.h"
#include "tls/session.h"

using namespace rpcgate;

namespace {

struct contexts {
    std::unique_ptr<tls::context> server, client;
    std::string err;
    explicit contexts(bool openssl_records) {
        auto so = tls::test::server_opts();
        auto co = tls::test::client_opts();
        so.ciphers.openssl_records = co.ciphers.openssl_records = openssl_records;
        server = tls::context::make_server(so, &err);
        if (server) client = tls::context::make_client(co, &err);
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

// A client and a server session of `ctx` after their handshake; nulls (and
// the benchmark skipped with the reason) when that fails.
std::pair<std::unique_ptr<tls::session>, std::unique_ptr<tls::session>> connected(
    const contexts& ctx, benchmark::State& state) {
    if (!ctx.client) {
        state.SkipWithError(("no TLS context: " + ctx.err).c_str());
        return {};
    }
    std::string err;
    auto client = tls::session::make(*ctx.client, &err);
    auto server = tls::session::make(*ctx.server, &err);
    if (!client || !server || !handshake(*client, *server)) {
        state.SkipWithError("handshake failed");
        return {};
    }
    return {std::move(client), std::move(server)};
}

void tls_small_calls(benchmark::State& state) {
    const bool release = state.range(0) != 0;
    const size_t calls = size_t(state.range(1));
    static contexts ctx(true);
    auto [client, server] = connected(ctx, state);
    if (!client) return;
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

void tls_records(benchmark::State& state) {
    const bool own = state.range(0) != 0;
    const size_t bytes = size_t(state.range(1));
    static contexts own_ctx(false), openssl_ctx(true);
    auto [client, server] = connected(own ? own_ctx : openssl_ctx, state);
    if (!client) return;
    if (client->own_records() != own || server->own_records() != own) {
        state.SkipWithError("not the record layer asked for");
        return;
    }
    core::slice block = core::slice::allocate(bytes);
    std::memset(block.mutable_data(), 0x5a, block.size());
    for (auto _ : state) {
        core::slice_chain plain(block.share());
        if (!carry(*client, *server, plain, bytes) || !carry(*server, *client, plain, bytes)) {
            state.SkipWithError("record exchange failed");
            return;
        }
    }
    state.SetBytesProcessed(int64_t(state.iterations() * 2 * bytes));
    state.SetLabel(own ? "rpcgate's record layer" : "OpenSSL's SSL_read/SSL_write");
}
BENCHMARK(tls_records)->ArgNames({"own", "bytes"})->ArgsProduct({{0, 1}, {64 * 16, 1 << 20}});

// The AEAD alone: `bytes` each way, each sealed and opened once, in 16 KiB
// pieces (one nonce each), AES-128-GCM.
void aead_floor(benchmark::State& state) {
    const size_t bytes = size_t(state.range(0));
    const size_t piece = 16384;
    EVP_CIPHER* gcm = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
    EVP_CIPHER_CTX* enc = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX* dec = EVP_CIPHER_CTX_new();
    uint8_t key[16] = {1}, iv[12] = {2}, tag[16];
    EVP_EncryptInit_ex(enc, gcm, nullptr, key, iv);
    EVP_DecryptInit_ex(dec, gcm, nullptr, key, iv);
    std::string in(bytes, 'p'), sealed(bytes, 0), opened(bytes, 0);
    for (auto _ : state) {
        for (int way = 0; way < 2; ++way) {
            for (size_t at = 0; at < bytes; at += piece) {
                int n = int(std::min(piece, bytes - at)), outl = 0;
                auto* s = reinterpret_cast<uint8_t*>(sealed.data()) + at;
                EVP_EncryptInit_ex(enc, nullptr, nullptr, nullptr, iv);
                EVP_EncryptUpdate(enc, s, &outl, reinterpret_cast<const uint8_t*>(in.data()) + at,
                                  n);
                EVP_EncryptFinal_ex(enc, s + n, &outl);
                EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_AEAD_GET_TAG, 16, tag);
                EVP_DecryptInit_ex(dec, nullptr, nullptr, nullptr, iv);
                EVP_DecryptUpdate(dec, reinterpret_cast<uint8_t*>(opened.data()) + at, &outl, s, n);
                EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_AEAD_SET_TAG, 16, tag);
                if (EVP_DecryptFinal_ex(dec, tag, &outl) != 1) state.SkipWithError("tag");
            }
        }
        benchmark::DoNotOptimize(opened.data());
    }
    EVP_CIPHER_CTX_free(enc);
    EVP_CIPHER_CTX_free(dec);
    EVP_CIPHER_free(gcm);
    state.SetBytesProcessed(int64_t(state.iterations() * 2 * bytes));
    state.SetLabel("AES-128-GCM alone");
}
BENCHMARK(aead_floor)->ArgNames({"bytes"})->Arg(64 * 16)->Arg(1 << 20);

}  // namespace
