#include "tools/bench/handshake_load.h"

#include <fmt/format.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "rpc/message.h"
#include "rpc/portmap.h"
#include "rpc/record.h"
#include "tls/client/blocking_client.h"
#include "tls/session.h"
#include "tools/bench/load_client.h"

namespace rpcgate::bench {
namespace {

using clock = std::chrono::steady_clock;

uint64_t ns_since(clock::time_point t0) {
    return uint64_t(
        std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - t0).count());
}

// One NULL call of the echo program, framed.
core::slice_chain null_call(uint32_t xid, const handshake_options& opt) {
    rpc::call_header h;
    h.xid = xid;
    h.prog = opt.program;
    h.vers = opt.version;
    h.proc = 0;
    return rpc::build_call(h, {});
}

bool is_success(const core::slice_chain& rec, uint32_t xid) {
    auto rep = rpc::decode_reply(rec);
    return rep && rep->header.xid == xid && rep->header.stat == rpc::reply_stat::accepted &&
           rep->header.accept == rpc::accept_stat::success;
}

struct thread_result {
    uint64_t done = 0, errors = 0;
    std::string first_error, version, cipher;
    latency_histogram latency;
};

}  // namespace

handshake_report run_handshakes(const handshake_options& opt, std::string* err,
                                const std::atomic<bool>* stop) {
    handshake_report r;
    err->clear();
    r.what = fmt::format("{} {}:{}", client::to_string(opt.mode), opt.host, opt.port);
    r.connections = opt.connections;
    auto ctx = make_tls_client_context(opt.tls, opt.ciphersuites, err);
    if (!ctx) return r;
    const auto timeout = std::chrono::milliseconds(int64_t(opt.timeout_s * 1000));
    const auto t0 = clock::now();
    const auto end = t0 + std::chrono::duration<double>(opt.duration_s);
    std::vector<thread_result> results(opt.connections);
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < opt.connections; ++i) {
        threads.emplace_back([&, i] {
            thread_result& tr = results[i];
            uint32_t xid = 1 + i * 0x01000000u;
            while (clock::now() < end && !(stop && stop->load())) {
                const auto c0 = clock::now();
                client::blocking_client c = client::blocking_client::open(
                    opt.host, opt.port, opt.mode, opt.program, opt.version, ctx.get(), timeout);
                std::string why;
                if (!c.ok()) {
                    why = std::string(client::to_string(c.failed_at())) + ": " + c.error();
                } else {
                    ++xid;
                    core::slice_chain rec = c.call(null_call(xid, opt), timeout);
                    if (!is_success(rec, xid))
                        why = "NULL over TLS: " + (c.error().empty() ? "bad reply" : c.error());
                    if (tr.version.empty() && c.tls()) {
                        tr.version = c.tls()->version();
                        tr.cipher = c.tls()->cipher();
                    }
                    c.close();
                }
                if (why.empty()) {
                    ++tr.done;
                    tr.latency.record(ns_since(c0));
                } else {
                    if (tr.errors++ == 0) tr.first_error = why;
                    // A server that refuses must not be hammered in a tight loop.
                    std::this_thread::sleep_for(std::chrono::milliseconds(10));
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    r.elapsed_s = double(ns_since(t0)) / 1e9;
    for (auto& tr : results) {
        r.handshakes += tr.done;
        r.errors += tr.errors;
        r.latency.merge(tr.latency);
        if (r.first_error.empty()) r.first_error = tr.first_error;
        if (r.version.empty()) {
            r.version = tr.version;
            r.cipher = tr.cipher;
        }
    }
    return r;
}

handshake_report run_baseline(const handshake_options& opt, std::string* err,
                              const std::atomic<bool>* stop) {
    handshake_report r;
    err->clear();
    r.what = "baseline (in-memory OpenSSL pair, one thread)";
    r.connections = 1;
    tls::server_options so;
    so.cert_file = opt.server_cert;
    so.key_file = opt.server_key;
    // Both ends take the same versions, ciphers and groups, as serve and run
    // against it would (--tls-max-version, --ciphers, --groups, --ciphersuites).
    so.min_version = opt.tls.min_version;
    so.ciphers = opt.tls.ciphers;
    so.ciphers.ciphersuites = opt.ciphersuites;
    auto sctx = tls::context::make_server(so, err);
    if (!sctx) return r;
    auto cctx = make_tls_client_context(opt.tls, opt.ciphersuites, err);
    if (!cctx) return r;
    const auto t0 = clock::now();
    const auto end = t0 + std::chrono::duration<double>(opt.duration_s);
    uint64_t server_ns = 0;
    uint32_t xid = 1;
    auto note = [&r](std::string why) {
        if (r.errors++ == 0) r.first_error = std::move(why);
    };
    while (clock::now() < end && !(stop && stop->load()) && r.errors < 100) {
        const auto c0 = clock::now();
        auto cs = tls::session::make(*cctx, err);
        auto s0 = clock::now();
        auto ss = tls::session::make(*sctx, err);
        server_ns += ns_since(s0);
        if (!cs || !ss) return r;
        // Ping-pong the flights until both sides are done.
        bool c_done = false, s_done = false, failed = false;
        for (int round = 0; round < 10 && !(c_done && s_done) && !failed; ++round) {
            core::slice_chain c_out, s_out;
            if (!c_done) {
                tls::status st = cs->handshake(c_out);
                c_done = st == tls::status::done;
                failed |= st == tls::status::error;
            }
            s0 = clock::now();
            if (!c_out.empty()) ss->feed(std::move(c_out));
            if (!s_done) {
                tls::status st = ss->handshake(s_out);
                s_done = st == tls::status::done;
                failed |= st == tls::status::error;
            }
            server_ns += ns_since(s0);
            if (!s_out.empty()) cs->feed(std::move(s_out));
        }
        if (failed || !c_done || !s_done) {
            note("handshake: " + cs->error_text() + " / " + ss->error_text());
            continue;
        }
        // One NULL call and its reply, as the socket loop does.
        ++xid;
        core::slice_chain enc, plain, out;
        cs->write(null_call(xid, opt), enc);
        s0 = clock::now();
        ss->feed(std::move(enc));
        ss->read(plain, out);
        core::slice_chain reply_enc;
        if (plain.size() >= 8) {
            rpc::record_reassembler rr;
            uint32_t got = 0;
            for (const core::slice& p : plain)
                (void)rr.feed(p, [&](core::slice_chain&& rec) {
                    auto call = rpc::decode_call(rec);
                    if (call) got = call->header.xid;
                });
            ss->write(core::slice_chain(rpc::build_null_reply(got)), reply_enc);
        }
        server_ns += ns_since(s0);
        cs->feed(std::move(reply_enc));
        core::slice_chain reply, out2;
        cs->read(reply, out2);
        rpc::record_reassembler rr;
        bool ok = false;
        for (const core::slice& p : reply)
            (void)rr.feed(p, [&](core::slice_chain&& rec) { ok = is_success(rec, xid); });
        if (!ok) {
            note("NULL over the in-memory pair failed");
            continue;
        }
        if (r.version.empty()) {
            r.version = cs->version();
            r.cipher = cs->cipher();
        }
        ++r.handshakes;
        r.latency.record(ns_since(c0));
    }
    r.elapsed_s = double(ns_since(t0)) / 1e9;
    r.server_cpu_s = double(server_ns) / 1e9;
    return r;
}

std::string format_human(const handshake_report& r) {
    auto us = [](uint64_t ns) { return double(ns) / 1000.0; };
    std::string out =
        fmt::format("rpcgate-bench handshake: {} connections={}\n", r.what, r.connections);
    out += fmt::format("  handshakes {} in {:.3f} s: {:.0f} /s ({} {})\n", r.handshakes,
                       r.elapsed_s, r.rate(), r.version, r.cipher);
    if (r.server_cpu_s > 0)
        out += fmt::format(
            "  server     {:.3f} s in the server session: {:.0f} handshakes/s "
            "per thread\n",
            r.server_cpu_s, r.server_rate());
    out += fmt::format("  latency    p50 {:.1f} us  p99 {:.1f} us  max {:.1f} us\n",
                       us(r.latency.percentile(0.5)), us(r.latency.percentile(0.99)),
                       us(r.latency.max()));
    out += fmt::format("  errors     {}{}", r.errors,
                       r.first_error.empty() ? "" : " (first: " + r.first_error + ")");
    return out;
}

std::string format_json(const handshake_report& r) {
    auto us = [](uint64_t ns) { return double(ns) / 1000.0; };
    std::string first;
    for (char ch : r.first_error) {
        if (ch == '"' || ch == '\\') first += '\\';
        if (uint8_t(ch) >= 0x20) first += ch;
    }
    return fmt::format(
        "{{\"what\":\"{}\",\"connections\":{},\"handshakes\":{},\"elapsed_s\":{:.6f},"
        "\"handshakes_per_sec\":{:.1f},\"server_cpu_s\":{:.6f},\"server_handshakes_per_sec\":"
        "{:.1f},\"p50_us\":{:.2f},\"p99_us\":{:.2f},\"max_us\":{:.2f},\"version\":\"{}\","
        "\"cipher\":\"{}\",\"errors\":{},\"first_error\":\"{}\"}}",
        r.what, r.connections, r.handshakes, r.elapsed_s, r.rate(), r.server_cpu_s, r.server_rate(),
        us(r.latency.percentile(0.5)), us(r.latency.percentile(0.99)), us(r.latency.max()),
        r.version, r.cipher, r.errors, first);
}

}  // namespace rpcgate::bench
