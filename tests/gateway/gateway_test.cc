// The plaintext gateway against real peers on loopback: a libtirpc echo
// server behind it, raw sockets and the libtirpc client in front of it.
#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <chrono>

#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "rpc/portmap.h"
#include "rpc/xdr_codec.h"
#include "tests/gateway/child_process.h"
#include "tests/timing.h"

using namespace rpcgate;
using rpcgate::testing::child_process;

namespace {

constexpr uint32_t k_echo_prog = 0x20000001;

template <typename P>
bool wait_for(P pred, int ms = 10000) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return pred();
}

size_t count_fds() {
    size_t n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n;
}

size_t rss_kib() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
    return 0;
}

// A blocking RPC client over a raw socket.
struct rpc_conn {
    int fd = -1;
    explicit rpc_conn(uint16_t port, int timeout_s = 10) {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            ::close(fd);
            fd = -1;
            return;
        }
        timeval tv{timeout_s, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    ~rpc_conn() {
        if (fd >= 0) ::close(fd);
    }
    bool send_bytes(std::string_view b) {
        size_t off = 0;
        while (off < b.size()) {
            ssize_t w = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
            if (w <= 0) return false;
            off += size_t(w);
        }
        return true;
    }
    bool read_exact(void* dst, size_t n) {
        auto* p = static_cast<char*>(dst);
        while (n) {
            ssize_t r = ::recv(fd, p, n, 0);
            if (r <= 0) return false;
            p += r;
            n -= size_t(r);
        }
        return true;
    }
    // One whole record (fragments joined), or nullopt on EOF/timeout.
    std::optional<std::string> read_record() {
        std::string rec;
        for (;;) {
            uint32_t mark;
            if (!read_exact(&mark, 4)) return std::nullopt;
            mark = ntohl(mark);
            size_t len = mark & 0x7fffffff;
            size_t at = rec.size();
            rec.resize(at + len);
            if (len && !read_exact(rec.data() + at, len)) return std::nullopt;
            if (mark & 0x80000000u) return rec;
        }
    }
    // True once the peer has closed (EOF or reset) within `ms`.
    bool closed_by_peer(int ms) {
        auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
        char tmp[65536];
        while (std::chrono::steady_clock::now() < end) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            ssize_t r = ::recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return true;
        }
        return false;
    }
};

std::string to_string(core::slice_chain&& c) {
    return c.to_string();
}

// A framed CALL with AUTH_NONE and the given (already XDR-encoded) args.
std::string make_call(uint32_t xid, uint32_t prog, uint32_t vers, uint32_t proc,
                      std::string_view args = {}, uint32_t cred_flavor = 0) {
    rpc::call_header h;
    h.xid = xid;
    h.prog = prog;
    h.vers = vers;
    h.proc = proc;
    h.cred.flavor = cred_flavor;
    core::slice_chain a;
    if (!args.empty()) a.push_back(core::slice::copy_of(args));
    return to_string(rpc::build_call(h, std::move(a)));
}

std::string echo_args(std::string_view payload) {
    rpc::xdr_writer w;
    w.opaque({reinterpret_cast<const uint8_t*>(payload.data()), payload.size()});
    return to_string(w.finish());
}

rpc::reply_message decode(const std::string& rec) {
    core::slice_chain c(core::slice::copy_of(rec));
    auto r = rpc::decode_reply(c);
    EXPECT_TRUE(r.ok());
    return r.ok() ? std::move(*r) : rpc::reply_message{};
}

// A libtirpc echo server behind an in-process gateway.
class gateway_test : public ::testing::Test {
  protected:
    void SetUp() override { start_backend(0); }

    void start_backend(int port) {
        backend_ = std::make_unique<child_process>(std::vector<std::string>{
            TIRPC_ECHO_SERVER, "--port", std::to_string(port), "--host", "127.0.0.1"});
        backend_port_ = backend_->wait_ready();
        ASSERT_GT(backend_port_, 0) << "tirpc_echo_server did not start";
    }

    void start_gateway(std::function<void(gw::gateway_config&)> tweak = {}) {
        gw::gateway_config cfg;
        std::string err;
        gw::endpoint ep;
        ASSERT_TRUE(gw::parse_endpoint("127.0.0.1:0", &ep, &err)) << err;
        cfg.listen.push_back(ep);
        gw::backend_route r;
        ASSERT_TRUE(
            gw::parse_backend(fmt::format("{}=127.0.0.1:{}", k_echo_prog, backend_port_), &r, &err))
            << err;
        cfg.backends.push_back(r);
        cfg.shards = 2;
        cfg.buffers = 256;
        cfg.reserved_port = false;
        if (tweak) tweak(cfg);
        ASSERT_TRUE(gw::validate(&cfg, &err)) << err;
        gw_ = std::make_unique<gw::gateway>(cfg);
        ASSERT_EQ(gw_->start(), "");
        port_ = gw_->port();
    }

    void TearDown() override {
        if (gw_) {
            gw_->stop();
            gw_->wait();
        }
    }

    // One echo round trip on its own connection.
    void expect_echo_works(const std::string& payload = "ping") {
        rpc_conn c(port_);
        ASSERT_GE(c.fd, 0);
        ASSERT_TRUE(c.send_bytes(make_call(77, k_echo_prog, 1, 1, echo_args(payload))));
        auto rec = c.read_record();
        ASSERT_TRUE(rec.has_value());
        auto rep = decode(*rec);
        EXPECT_EQ(rep.header.xid, 77u);
        EXPECT_EQ(rep.header.accept, rpc::accept_stat::success);
        EXPECT_EQ(rep.results.to_string(), echo_args(payload));
    }

    std::unique_ptr<child_process> backend_;
    int backend_port_ = 0;
    std::unique_ptr<gw::gateway> gw_;
    uint16_t port_ = 0;
};

TEST_F(gateway_test, echo_round_trip_keeps_xid_and_bytes) {
    start_gateway();
    expect_echo_works("hello through the gateway");
    EXPECT_EQ(gw_->totals().calls_forwarded, 1u);
    EXPECT_EQ(gw_->totals().replies_forwarded, 1u);
}

// 10,000 libtirpc calls of 0 B .. 2 MiB on 4 connections; small record-stream
// buffers make libtirpc split most records into many fragments.
TEST_F(gateway_test, tirpc_client_10000_calls_byte_identical) {
    start_gateway();
    child_process client({TIRPC_ECHO_CLIENT, "--host", "127.0.0.1", "--port", std::to_string(port_),
                          "--calls", "10000", "--min", "0", "--max", "2097152", "--seed", "11",
                          "--sendsz", "65536", "--connections", "4"});
    auto st = client.wait_exit(900'000);
    ASSERT_TRUE(st.has_value()) << "client still running after 15 min";
    EXPECT_EQ(*st, 0) << client.drain_output();
    RecordProperty("client", client.drain_output());
    auto t = gw_->totals();
    EXPECT_GE(t.calls_forwarded, 10000u);
    EXPECT_EQ(t.calls_forwarded, t.replies_forwarded);
    EXPECT_EQ(t.malformed + t.oversize + t.backend_lost, 0u);
}

TEST_F(gateway_test, unrouted_program_gets_prog_unavail) {
    start_gateway();
    rpc_conn c(port_);
    ASSERT_TRUE(c.send_bytes(make_call(5, 100099, 1, 0)));
    auto rec = c.read_record();
    ASSERT_TRUE(rec);
    auto rep = decode(*rec);
    EXPECT_EQ(rep.header.xid, 5u);
    EXPECT_EQ(rep.header.stat, rpc::reply_stat::accepted);
    EXPECT_EQ(rep.header.accept, rpc::accept_stat::prog_unavail);
    EXPECT_EQ(gw_->totals().prog_unavail, 1u);
}

TEST_F(gateway_test, portmap_getport_answers_the_gateway_port) {
    start_gateway();
    rpc_conn c(port_);
    auto getport = [&](uint32_t xid, uint32_t prog, uint32_t prot) {
        rpc::pmap_mapping m{prog, 1, prot, 0};
        EXPECT_TRUE(c.send_bytes(to_string(rpc::build_getport_call(xid, m))));
        auto rec = c.read_record();
        EXPECT_TRUE(rec);
        auto rep = decode(rec.value_or(""));
        EXPECT_EQ(rep.header.xid, xid);
        auto port = rpc::decode_getport_result(rep.results);
        EXPECT_TRUE(port.ok());
        return port.ok() ? *port : 0xffffffffu;
    };
    EXPECT_EQ(getport(1, k_echo_prog, rpc::pmap_ipproto_tcp), port_);
    EXPECT_EQ(getport(2, 100003, rpc::pmap_ipproto_tcp), 0u);  // nfs not routed here
    EXPECT_EQ(getport(3, k_echo_prog, rpc::pmap_ipproto_udp), 0u);
    ASSERT_TRUE(c.send_bytes(make_call(4, rpc::pmap_prog, 2, 0)));
    auto rep = decode(c.read_record().value_or(""));
    EXPECT_EQ(rep.header.accept, rpc::accept_stat::success);
    ASSERT_TRUE(c.send_bytes(make_call(5, rpc::pmap_prog, 4, 0)));  // rpcbind v4
    rep = decode(c.read_record().value_or(""));
    EXPECT_EQ(rep.header.accept, rpc::accept_stat::prog_mismatch);
    EXPECT_EQ(rep.header.mismatch_low, 2u);
    EXPECT_EQ(rep.header.mismatch_high, 2u);
}

TEST_F(gateway_test, tls_probe_refused_and_auth_tls_misuse_gets_badcred) {
    start_gateway();
    rpc_conn c(port_);
    ASSERT_TRUE(c.send_bytes(rpc::build_tls_probe_call(9, k_echo_prog, 1).view()));
    auto rep = decode(c.read_record().value_or(""));
    EXPECT_EQ(rep.header.stat, rpc::reply_stat::denied);
    EXPECT_EQ(rep.header.reject, rpc::reject_stat::auth_error);
    EXPECT_EQ(rep.header.auth, rpc::auth_stat::rejectedcred);
    // AUTH_TLS on a non-NULL procedure: exact BADCRED reply bytes.
    ASSERT_TRUE(c.send_bytes(make_call(10, k_echo_prog, 1, 1, echo_args("x"), 7)));
    auto rec = c.read_record();
    ASSERT_TRUE(rec);
    EXPECT_EQ(*rec, std::string(rpc::build_auth_tls_badcred_reply(10).view().substr(4)));
    auto t = gw_->totals();
    EXPECT_EQ(t.tls_probes, 1u);
    EXPECT_EQ(t.auth_tls_misuse, 1u);
    EXPECT_EQ(t.calls_forwarded, 0u);
}

TEST_F(gateway_test, rpc_version_3_gets_rpc_mismatch) {
    start_gateway();
    rpc_conn c(port_);
    std::string call = make_call(21, k_echo_prog, 1, 0);
    call[4 + 8 + 3] = 3;  // rpcvers, the third word of the body
    ASSERT_TRUE(c.send_bytes(call));
    auto rep = decode(c.read_record().value_or(""));
    EXPECT_EQ(rep.header.xid, 21u);
    EXPECT_EQ(rep.header.stat, rpc::reply_stat::denied);
    EXPECT_EQ(rep.header.reject, rpc::reject_stat::rpc_mismatch);
    EXPECT_EQ(rep.header.mismatch_low, 2u);
    EXPECT_EQ(rep.header.mismatch_high, 2u);
}

// Garbage, a 2 GiB fragment header and a record cut off by close each cost
// only their own connection; a client in between keeps working.
TEST_F(gateway_test, bad_input_closes_only_the_offender) {
    start_gateway();
    rpc_conn good(port_);
    auto good_call = [&](uint32_t xid) {
        ASSERT_TRUE(good.send_bytes(make_call(xid, k_echo_prog, 1, 1, echo_args("still here"))));
        auto rec = good.read_record();
        ASSERT_TRUE(rec) << "the good client lost its connection";
        EXPECT_EQ(decode(*rec).header.xid, xid);
    };
    good_call(1);
    {
        rpc_conn bad(port_);  // a small fragment of bytes that are no RPC message
        ASSERT_TRUE(bad.send_bytes(std::string("\x80\x00\x00\x10", 4) + "GET / HTTP/1.1\r\n\r\n"));
        EXPECT_TRUE(bad.closed_by_peer(5000));
    }
    good_call(2);
    {
        rpc_conn bad(port_);  // 2 GiB - 1 announced
        ASSERT_TRUE(bad.send_bytes(std::string("\xff\xff\xff\xff", 4) + "xxxx"));
        EXPECT_TRUE(bad.closed_by_peer(5000));
    }
    good_call(3);
    {
        rpc_conn bad(port_);  // a record cut off by close
        std::string call = make_call(99, k_echo_prog, 1, 1, echo_args(std::string(5000, 'z')));
        ASSERT_TRUE(bad.send_bytes(call.substr(0, 3000)));
    }
    good_call(4);
    auto t = gw_->totals();
    EXPECT_EQ(t.malformed, 1u);
    EXPECT_EQ(t.oversize, 1u);
    EXPECT_TRUE(wait_for([&] { return gw_->totals().cut_records == 1; }));
}

// A client that sends 1 MiB calls and never reads: the gateway stops reading
// it once its replies back up; memory stays bounded and others are served.
TEST_F(gateway_test, client_that_never_reads_keeps_memory_bounded) {
    start_gateway([](gw::gateway_config& c) { c.max_inflight = 2 << 20; });
    expect_echo_works();
    size_t rss_before = rss_kib();
    rpc_conn hog(port_, 1);
    int sndbuf = 256 * 1024;
    ::setsockopt(hog.fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    std::string call = make_call(1, k_echo_prog, 1, 1, echo_args(std::string(1 << 20, 'h')));
    size_t sent_calls = 0;
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    // Send until the kernel refuses for a whole second: the gateway stopped reading.
    while (std::chrono::steady_clock::now() < end && sent_calls < 400) {
        if (!hog.send_bytes(call)) break;  // SO_SNDTIMEO of 1 s expired
        ++sent_calls;
    }
    EXPECT_LT(sent_calls, 400u) << "the gateway kept reading a client that never reads";
    EXPECT_GT(gw_->totals().flow_pauses, 0u);
    size_t rss_after = rss_kib();
    RecordProperty("rss_growth_kib", int(rss_after - rss_before));
    EXPECT_LT(rss_after, rss_before + 64 * 1024)
        << "RSS grew by " << rss_after - rss_before << " KiB";
    // The gateway still answers others at once. (The single-threaded libtirpc
    // backend itself is stuck writing to the hog's link, so ask the gateway.)
    {
        rpc_conn other(port_);
        ASSERT_TRUE(other.send_bytes(make_call(6, rpc::pmap_prog, 2, 0)));
        auto rec = other.read_record();
        ASSERT_TRUE(rec);
        EXPECT_EQ(decode(*rec).header.accept, rpc::accept_stat::success);
    }
    // Once the hog goes, its backend link goes too and the backend recovers.
    ::close(hog.fd);
    hog.fd = -1;
    expect_echo_works("others are served again");
}

TEST_F(gateway_test, connect_close_churn_leaks_no_fd) {
    start_gateway();
    expect_echo_works();  // the backend link path is warm
    ASSERT_TRUE(wait_for([&] { return gw_->totals().sessions_open == 0; }));
    size_t before = count_fds();
    for (int i = 0; i < 10000; ++i) {
        rpc_conn c(port_);
        ASSERT_GE(c.fd, 0) << "connect " << i;
        if (i % 10 == 0) {  // some with a call, so that backend links churn too
            ASSERT_TRUE(c.send_bytes(make_call(uint32_t(i), k_echo_prog, 1, 0)));
            ASSERT_TRUE(c.read_record());
        }
    }
    // Every connection accepted (the last accepts may still be in flight when
    // the client side is done) and every one closed again.
    ASSERT_TRUE(wait_for(
        [&] {
            auto t = gw_->totals();
            return t.sessions_accepted == 10001 && t.sessions_open == 0;
        },
        30000))
        << gw_->totals().describe();
    EXPECT_TRUE(wait_for([&] { return count_fds() == before; }, 5000))
        << count_fds() << " fds, " << before << " before";
}

// The backend dies in the middle of a 2 MiB transfer: the client connection is
// closed within a second; once the backend is back, new connections work.
TEST_F(gateway_test, backend_killed_closes_client_within_a_second) {
    start_gateway();
    expect_echo_works();
    rpc_conn c(port_);
    std::string big = make_call(3, k_echo_prog, 1, 1, echo_args(std::string(2 << 20, 'b')));
    std::thread writer([&] {
        for (int i = 0; i < 50 && c.send_bytes(big); ++i) {
        }
    });
    // Let a reply start flowing, then kill the backend outright.
    auto first = c.read_record();
    ASSERT_TRUE(first);
    auto killed = std::chrono::steady_clock::now();
    backend_->kill(SIGKILL);
    bool closed = c.closed_by_peer(10000);  // not closed at all: the bug this guards
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - killed);
    ::shutdown(c.fd, SHUT_RDWR);
    writer.join();
    ASSERT_TRUE(closed);
    RecordProperty("close_ms", int(took.count()));
    // Promptly, not after a timeout of its own (tests/timing.h on the slack).
    EXPECT_LT(took.count(), rpcgate::testing::timing_bound_ms(1000));
    EXPECT_GE(gw_->totals().backend_lost, 1u);
    start_backend(backend_port_);
    expect_echo_works("after the restart");
}

TEST_F(gateway_test, backend_down_closes_client_and_counts) {
    start_gateway();
    backend_->kill(SIGKILL);
    rpc_conn c(port_);
    ASSERT_TRUE(c.send_bytes(make_call(1, k_echo_prog, 1, 0)));
    EXPECT_TRUE(c.closed_by_peer(3000));
    EXPECT_TRUE(wait_for([&] { return gw_->totals().backend_connect_failures == 1; }));
}

// GET on the admin endpoint; returns the whole HTTP response.
std::string http_get(uint16_t port, const std::string& path) {
    rpc_conn c(port);
    if (c.fd < 0) return "";
    c.send_bytes("GET " + path + " HTTP/1.0\r\n\r\n");
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(c.fd, buf, sizeof buf, 0)) > 0) out.append(buf, size_t(n));
    return out;
}

// Sum of a metric family's samples over all shards.
uint64_t metric_sum(const std::string& text, const std::string& name) {
    uint64_t sum = 0;
    size_t at = 0;
    while ((at = text.find("\n" + name + "{", at)) != std::string::npos) {
        size_t sp = text.find(' ', at + 1);
        sum += std::stoull(text.substr(sp + 1));
        at = sp;
    }
    return sum;
}

TEST_F(gateway_test, admin_metrics_move_with_traffic) {
    start_gateway([](gw::gateway_config& c) { c.admin = "127.0.0.1:0"; });
    ASSERT_GT(gw_->admin_port(), 0);
    std::string health = http_get(gw_->admin_port(), "/healthz");
    EXPECT_EQ(health.rfind("HTTP/1.0 200", 0), 0u) << health;
    std::string before = http_get(gw_->admin_port(), "/metrics");
    ASSERT_NE(before.find("# TYPE rpcgate_calls_forwarded_total counter"), std::string::npos);
    for (int i = 0; i < 5; ++i) expect_echo_works("metered");
    {
        rpc_conn c(port_);
        ASSERT_TRUE(c.send_bytes(make_call(1, 100099, 1, 0)));  // unrouted
        ASSERT_TRUE(c.read_record());
    }
    std::string after = http_get(gw_->admin_port(), "/metrics");
    EXPECT_EQ(metric_sum(after, "rpcgate_calls_forwarded_total") -
                  metric_sum(before, "rpcgate_calls_forwarded_total"),
              5u);
    EXPECT_EQ(metric_sum(after, "rpcgate_replies_forwarded_total") -
                  metric_sum(before, "rpcgate_replies_forwarded_total"),
              5u);
    EXPECT_EQ(metric_sum(after, "rpcgate_connections_accepted_total") -
                  metric_sum(before, "rpcgate_connections_accepted_total"),
              6u);
    EXPECT_EQ(metric_sum(after, "rpcgate_prog_unavail_total"), 1u);
    EXPECT_EQ(http_get(gw_->admin_port(), "/nope").rfind("HTTP/1.0 404", 0), 0u);

    // /connections lists an open client with its ID, peer and counters.
    rpc_conn open_one(port_);
    ASSERT_TRUE(open_one.send_bytes(make_call(2, k_echo_prog, 1, 0)));
    ASSERT_TRUE(open_one.read_record());
    std::string conns = http_get(gw_->admin_port(), "/connections");
    EXPECT_NE(conns.find("application/json"), std::string::npos) << conns;
    EXPECT_NE(conns.find("\"state\":\"open\""), std::string::npos) << conns;
    EXPECT_NE(conns.find("\"peer\":\"127.0.0.1:"), std::string::npos) << conns;
    EXPECT_NE(conns.find("\"backend_links\":1"), std::string::npos) << conns;
    EXPECT_NE(conns.find("\"tls\":null"), std::string::npos) << conns;
    EXPECT_NE(conns.find("\"calls\":1,"), std::string::npos) << conns;

    // The bounded views: the busiest connection, and clients by source.
    ASSERT_TRUE(open_one.send_bytes(make_call(3, k_echo_prog, 1, 0)));
    ASSERT_TRUE(open_one.read_record());
    rpc_conn idle_one(port_);
    ASSERT_TRUE(wait_for([&] { return gw_->totals().sessions_open == 2; }));
    std::string top = http_get(gw_->admin_port(), "/connections?top=1");
    EXPECT_NE(top.find("application/json"), std::string::npos) << top;
    EXPECT_NE(top.find("\"calls\":2,"), std::string::npos) << top;
    EXPECT_EQ(top.find("\"calls\":0,"), std::string::npos) << top;  // the idle one is cut
    std::string clients = http_get(gw_->admin_port(), "/clients");
    EXPECT_NE(clients.find(R"({"clients":1,"connections":2,"by":"calls","top":[)"),
              std::string::npos)
        << clients;
    EXPECT_NE(clients.find(R"("source":"127.0.0.1","identity":"","connections":2,"calls":2,)"),
              std::string::npos)
        << clients;
}

TEST_F(gateway_test, max_connections_refuses_the_extra_client) {
    start_gateway([](gw::gateway_config& c) { c.max_connections = 2; });
    rpc_conn a(port_), b(port_);
    ASSERT_TRUE(wait_for([&] { return gw_->totals().sessions_open == 2; }));
    rpc_conn extra(port_);
    EXPECT_TRUE(extra.closed_by_peer(3000));
    EXPECT_EQ(gw_->totals().sessions_refused, 1u);
}

TEST_F(gateway_test, idle_client_is_closed) {
    start_gateway([](gw::gateway_config& c) { c.idle_timeout_s = 1; });
    rpc_conn c(port_);
    EXPECT_TRUE(c.closed_by_peer(5000));
    EXPECT_EQ(gw_->totals().idle_timeouts, 1u);
}

// SIGTERM semantics: a reply in flight when the stop comes is still delivered.
TEST_F(gateway_test, stop_delivers_replies_in_flight) {
    start_gateway();
    rpc_conn c(port_);
    std::string payload(1 << 20, 'q');
    ASSERT_TRUE(c.send_bytes(make_call(8, k_echo_prog, 1, 1, echo_args(payload))));
    ASSERT_TRUE(wait_for([&] { return gw_->totals().calls_forwarded == 1; }));
    gw_->stop();
    auto rec = c.read_record();
    ASSERT_TRUE(rec) << "reply in flight was lost on stop";
    EXPECT_EQ(decode(*rec).results.to_string(), echo_args(payload));
    EXPECT_TRUE(c.closed_by_peer(6000));
    gw_->wait();
}

}  // namespace

namespace {

// NFSv4.1-style backchannel: behind the gateway, rpcgate-bench's CALLBACK
// procedure makes the server send a CALL to the client on the same
// connection; the client's REPLY must reach the server, which then answers
// the original call with what the client returned (checked with --verify).
TEST(gateway_backchannel, server_calls_reach_the_client_and_replies_come_back) {
    child_process backend({RPCGATE_BENCH, "serve", "--listen", "127.0.0.1:0", "--shards", "1"});
    int bport = backend.wait_ready();
    ASSERT_GT(bport, 0);
    gw::gateway_config cfg;
    std::string err;
    gw::endpoint ep;
    ASSERT_TRUE(gw::parse_endpoint("127.0.0.1:0", &ep, &err));
    cfg.listen.push_back(ep);
    gw::backend_route r;
    ASSERT_TRUE(gw::parse_backend(fmt::format("{}=127.0.0.1:{}", k_echo_prog, bport), &r, &err));
    cfg.backends.push_back(r);
    cfg.shards = 2;
    cfg.reserved_port = false;
    ASSERT_TRUE(gw::validate(&cfg, &err)) << err;
    gw::gateway g(cfg);
    ASSERT_EQ(g.start(), "");
    child_process client({RPCGATE_BENCH, "run", "--target", fmt::format("127.0.0.1:{}", g.port()),
                          "--connections", "4", "--depth", "8", "--size", "0", "--size-max",
                          "200000", "--calls", "1000", "--proc", "callback", "--verify"});
    auto st = client.wait_exit(120000);
    ASSERT_TRUE(st.has_value());
    EXPECT_EQ(*st, 0) << client.drain_output();
    auto t = g.totals();
    EXPECT_EQ(t.backchannel_calls, 1000u);
    EXPECT_EQ(t.backchannel_replies, 1000u);
    EXPECT_EQ(t.orphan_replies, 0u);
    g.stop();
    g.wait();
}

}  // namespace
