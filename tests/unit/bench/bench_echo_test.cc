// rpcgate-bench in-process: echo_server and run_load against each other over
// loopback (port 0), plus raw-socket checks of the server's refusals.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "rpc/message.h"
#include "tests/unit/bench/test_address.h"
#include "tools/bench/echo_protocol.h"
#include "tools/bench/echo_server.h"
#include "tools/bench/load_client.h"

using namespace rpcgate;
using namespace rpcgate::bench;
using rpcgate::bench::test_util::loopback;

namespace {

struct server_fixture : ::testing::Test {
    std::unique_ptr<echo_server> srv;

    void SetUp() override {
        serve_options o;
        o.listen = loopback(0);
        o.shards = 2;
        srv = std::make_unique<echo_server>(o);
        ASSERT_EQ(srv->start(), "");
        ASSERT_GT(srv->port(), 0);
    }
    void TearDown() override { srv->stop(); }

    run_options options(uint64_t calls) {
        run_options o;
        o.target = loopback(srv->port());
        o.calls = calls;
        o.progress_interval_s = 0;
        o.timeout_ms = 10000;
        return o;
    }
    run_report run(const run_options& o) {
        std::string err;
        run_report r = run_load(o, &err);
        EXPECT_EQ(err, "");
        return r;
    }
    // Runs `o` and expects every call to complete without error.
    run_report run_clean(const run_options& o) {
        run_report r = run(o);
        EXPECT_EQ(r.errors, 0u) << format_human(r);
        if (o.calls) {
            EXPECT_EQ(r.calls, o.calls);
        }
        EXPECT_EQ(r.exit_status(), 0);
        return r;
    }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST_F(server_fixture, echo_of_mixed_sizes_up_to_2mib_verifies) {
    run_options o = options(240);
    o.connections = 4;
    o.depth = 3;
    o.size = 0;
    o.size_max = 2 * 1024 * 1024;
    o.verify = true;
    o.seed = 42;
    run_report r = run_clean(o);
    EXPECT_GT(r.payload_bytes_sent, 100u * 1024 * 1024);  // ~1 MiB average
    EXPECT_EQ(r.payload_bytes_sent, r.payload_bytes_received);
    EXPECT_EQ(srv->totals().echo_calls, 240u);
    EXPECT_GT(r.latency.percentile(0.5), 0u);
}

TEST_F(server_fixture, echo_of_small_calls_pipelined) {
    run_options o = options(20000);
    o.connections = 8;
    o.depth = 16;
    o.size = 64;
    o.verify = true;
    run_report r = run_clean(o);
    EXPECT_EQ(r.payload_bytes_sent, 20000u * 64);
}

TEST_F(server_fixture, null_proc) {
    run_options o = options(1000);
    o.connections = 2;
    o.depth = 8;
    o.proc = bench_proc::null;
    o.size = 1000;  // ignored: NULL has no arguments
    run_report r = run_clean(o);
    EXPECT_EQ(r.payload_bytes_sent, 0u);
    EXPECT_EQ(srv->totals().null_calls, 1000u);
}

TEST_F(server_fixture, wrong_program_is_prog_unavail_and_counted) {
    run_options o = options(50);
    o.program = 0x20000099;
    o.size = 16;
    run_report r = run(o);
    EXPECT_EQ(r.calls, 0u);
    EXPECT_EQ(r.rpc_errors, 50u);
    EXPECT_EQ(r.errors, 50u);
    EXPECT_NE(r.exit_status(), 0);
    EXPECT_EQ(srv->totals().refused, 50u);
}

TEST_F(server_fixture, wrong_version_is_prog_mismatch_and_counted) {
    run_options o = options(10);
    o.version = 7;
    run_report r = run(o);
    EXPECT_EQ(r.rpc_errors, 10u);
    EXPECT_NE(r.exit_status(), 0);
}

TEST_F(server_fixture, callback_round_trips_through_the_client_backchannel) {
    run_options o = options(300);
    o.connections = 3;
    o.depth = 4;
    o.size = 0;
    o.size_max = 64 * 1024;
    o.proc = bench_proc::callback;
    o.verify = true;
    run_report r = run_clean(o);
    EXPECT_EQ(r.backchannel_calls, 300u);
    EXPECT_EQ(srv->totals().callback_calls, 300u);
}

TEST_F(server_fixture, duration_run_ends_on_time) {
    run_options o = options(0);
    o.duration_s = 0.5;
    o.connections = 8;
    o.depth = 16;
    o.size = 64;
    auto t0 = std::chrono::steady_clock::now();
    run_report r = run_clean(o);
    double took = seconds_since(t0);
    EXPECT_GT(r.calls, 100u);
    EXPECT_GE(took, 0.45);
    EXPECT_LT(took, 5.0);
    EXPECT_GT(r.elapsed_s, 0.3);
    // The JSON carries what scripts read.
    std::string j = format_json(r);
    for (const char* k : {"\"ops_per_sec\":", "\"bytes_per_sec\":", "\"p50_us\":", "\"p99_us\":",
                          "\"p999_us\":", "\"max_us\":", "\"calls\":", "\"errors\":0,",
                          "\"connections\":8,", "\"depth\":16,", "\"size\":64,"})
        EXPECT_NE(j.find(k), std::string::npos) << k << " in " << j;
}

TEST(bench_run, closed_port_reports_errors_and_ends_quickly) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    socket_address a = loopback(0);
    ASSERT_EQ(::bind(fd, a.get(), a.len), 0);
    socklen_t len = sizeof a.storage;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a.storage), &len);
    ::close(fd);  // nothing listens there now

    run_options o;
    o.target = a;
    o.connections = 4;
    o.depth = 2;
    o.calls = 100;
    o.progress_interval_s = 0;
    std::string err;
    auto t0 = std::chrono::steady_clock::now();
    run_report r = run_load(o, &err);
    EXPECT_EQ(err, "");
    EXPECT_LT(seconds_since(t0), 3.0);
    EXPECT_EQ(r.calls, 0u);
    EXPECT_EQ(r.connect_errors, 4u);
    EXPECT_NE(r.exit_status(), 0);
}

// Runs `o` against a peer that accepts (the kernel's backlog does) but never
// answers.
run_report run_against_silent_peer(run_options o) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    socket_address a = loopback(0);
    EXPECT_EQ(::bind(fd, a.get(), a.len), 0);
    EXPECT_EQ(::listen(fd, 16), 0);
    socklen_t len = sizeof a.storage;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a.storage), &len);
    o.target = a;
    o.progress_interval_s = 0;
    std::string err;
    run_report r = run_load(o, &err);
    EXPECT_EQ(err, "");
    ::close(fd);
    return r;
}

// The per-call timeout turns the calls into errors and the run ends.
TEST(bench_run, silent_server_times_out) {
    run_options o;
    o.connections = 2;
    o.depth = 3;
    o.duration_s = 30;
    o.timeout_ms = 300;
    auto t0 = std::chrono::steady_clock::now();
    run_report r = run_against_silent_peer(o);
    EXPECT_LT(seconds_since(t0), 5.0);
    EXPECT_EQ(r.calls, 0u);
    EXPECT_EQ(r.timeouts, 6u) << format_human(r);
    EXPECT_NE(r.exit_status(), 0);
}

// ---- open loop

TEST_F(server_fixture, open_loop_keeps_to_the_schedule) {
    // 400 calls at 2000/s over 4 connections: the last ones are not due
    // before ~0.2 s, however fast the server answers.
    run_options o = options(400);
    o.rate = 2000;
    o.connections = 4;
    o.depth = 8;
    o.size = 100;
    o.verify = true;
    run_report r = run_clean(o);
    EXPECT_EQ(r.rate, 2000);
    EXPECT_GE(r.elapsed_s, 0.19) << format_human(r);
    EXPECT_EQ(r.send_lag.count(), 400u) << "every call's lateness is recorded";
    EXPECT_EQ(r.latency.count(), 400u);
    EXPECT_EQ(r.missed_calls, 0u);
    EXPECT_NE(format_json(r).find("\"mode\":\"open\""), std::string::npos);
}

TEST(bench_run, open_loop_counts_calls_it_could_not_send) {
    // One slot, and a server that never answers: the first call takes the
    // slot, the ~1000 due after it in 1 s (less the connect) never leave. A closed-loop client
    // would report one slow call and nothing else.
    run_options o;
    o.connections = 1;
    o.depth = 1;
    o.rate = 1000;
    o.duration_s = 1.0;
    o.timeout_ms = 1000;
    run_report r = run_against_silent_peer(o);
    EXPECT_EQ(r.calls, 0u);
    EXPECT_EQ(r.timeouts, 1u) << format_human(r);
    // At most the calls due in the run, less the one sent. At least those due
    // after the connection was ready: the lower bound allows 0.75 s for the
    // connect and the thread start on a loaded or sanitized machine; a client
    // that did not count missed calls reports 0.
    EXPECT_LE(r.missed_calls, 1000u) << format_human(r);
    EXPECT_GE(r.missed_calls, 250u) << format_human(r);
}

// ---- progress lines

TEST_F(server_fixture, progress_lines_carry_rate_and_percentiles) {
    run_options o = options(0);
    o.duration_s = 0.7;
    o.connections = 2;
    o.progress_interval_s = 0.15;
    o.progress_min_run_s = 0;
    ::testing::internal::CaptureStderr();
    run_report r = run_clean(o);
    std::string err = ::testing::internal::GetCapturedStderr();
    size_t lines = 0;
    for (size_t at = err.find("progress: "); at != std::string::npos;
         at = err.find("progress: ", at + 1)) {
        ++lines;
        size_t eol = err.find('\n', at);
        std::string line = err.substr(at, eol - at);
        EXPECT_NE(line.find(" ops/s p50 "), std::string::npos) << line;
        EXPECT_NE(line.find(" us p99 "), std::string::npos) << line;
    }
    EXPECT_GE(lines, 2u) << err;
    EXPECT_LE(lines, 12u) << err;  // about one per interval, not one per loop pass
}

TEST_F(server_fixture, short_runs_print_no_progress) {
    run_options o = options(0);
    o.duration_s = 0.5;
    o.progress_interval_s = 0.1;  // progress_min_run_s stays at its 3 s
    ::testing::internal::CaptureStderr();
    run_clean(o);
    std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(err.find("progress:"), std::string::npos) << err;
}

// ---- raw-socket checks of the server

int connect_raw(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    socket_address a = loopback(port);
    if (::connect(fd, a.get(), a.len) != 0) {
        ::close(fd);
        return -1;
    }
    timeval tv{10, 0};  // a broken server fails the test instead of hanging it
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

bool write_chain(int fd, const core::slice_chain& c) {
    std::string s = c.to_string();
    return ::write(fd, s.data(), s.size()) == ssize_t(s.size());
}

// Reads one single-fragment record (what the server sends).
bool read_record(int fd, std::string& out) {
    auto read_n = [&](char* p, size_t n) {
        size_t got = 0;
        while (got < n) {
            ssize_t r = ::read(fd, p + got, n - got);
            if (r <= 0) return false;
            got += size_t(r);
        }
        return true;
    };
    uint8_t mark[4];
    if (!read_n(reinterpret_cast<char*>(mark), 4)) return false;
    out.resize(rpc::load_be32(mark) & rpc::record_max_fragment);
    return read_n(out.data(), out.size());
}

rpc::reply_header decode(const std::string& rec) {
    core::slice_chain c(core::slice::copy_of(rec));
    auto r = rpc::decode_reply(c);
    EXPECT_TRUE(r.ok());
    return r.ok() ? r->header : rpc::reply_header{};
}

TEST_F(server_fixture, refusals_and_garbage) {
    int fd = connect_raw(srv->port());
    ASSERT_GE(fd, 0);
    header_slab slab(4);
    core::slice payload = core::slice::copy_of("abc");
    std::string rec;

    // Unknown procedure.
    ASSERT_TRUE(
        write_chain(fd, opaque_call(slab, 1, echo_program, echo_version, 9, payload, true)));
    ASSERT_TRUE(read_record(fd, rec));
    auto h = decode(rec);
    EXPECT_EQ(h.xid, 1u);
    EXPECT_EQ(h.accept, rpc::accept_stat::proc_unavail);

    // Wrong version: PROG_MISMATCH(1, 1).
    ASSERT_TRUE(write_chain(fd, opaque_call(slab, 2, echo_program, 3, 1, payload, true)));
    ASSERT_TRUE(read_record(fd, rec));
    h = decode(rec);
    EXPECT_EQ(h.accept, rpc::accept_stat::prog_mismatch);
    EXPECT_EQ(h.mismatch_low, 1u);
    EXPECT_EQ(h.mismatch_high, 1u);

    // ECHO whose args are not one opaque<>: GARBAGE_ARGS.
    ASSERT_TRUE(write_chain(fd, opaque_call(slab, 3, echo_program, 1, 1, payload, false)));
    ASSERT_TRUE(read_record(fd, rec));
    EXPECT_EQ(decode(rec).accept, rpc::accept_stat::garbage_args);

    // rpcvers 3: RPC_MISMATCH(2, 2).
    core::slice_chain bad = opaque_call(slab, 4, echo_program, 1, 1, payload, true);
    std::string raw = bad.to_string();
    raw[4 + 8 + 3] = 3;  // after the record mark: xid, msg_type, then rpcvers
    ASSERT_EQ(::write(fd, raw.data(), raw.size()), ssize_t(raw.size()));
    ASSERT_TRUE(read_record(fd, rec));
    h = decode(rec);
    EXPECT_EQ(h.stat, rpc::reply_stat::denied);
    EXPECT_EQ(h.reject, rpc::reject_stat::rpc_mismatch);
    EXPECT_EQ(h.mismatch_low, 2u);

    // Echo still works on the same connection.
    ASSERT_TRUE(write_chain(fd, opaque_call(slab, 5, echo_program, 1, 1, payload, true)));
    ASSERT_TRUE(read_record(fd, rec));
    EXPECT_EQ(decode(rec).accept, rpc::accept_stat::success);
    EXPECT_EQ(rec.substr(24), std::string("\0\0\0\3abc\0", 8));

    // Garbage (msg_type 7) closes the connection.
    const char junk[] = "\x80\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x07";
    ASSERT_EQ(::write(fd, junk, 12), 12);
    char c;
    EXPECT_EQ(::read(fd, &c, 1), 0);
    ::close(fd);
    EXPECT_EQ(srv->totals().garbage_closes, 1u);

    // And the server serves the next client.
    run_clean(options(10));
}

}  // namespace
