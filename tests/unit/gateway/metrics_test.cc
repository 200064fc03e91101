// The counter table and what is generated from it (gateway/metrics.h).
#include "gateway/metrics.h"

#include <gtest/gtest.h>

#include <string>

namespace rpcgate::gw {
namespace {

TEST(metrics, totals_sum_the_shards_and_the_exit_log_names_every_row) {
    gateway_counters a, b;
    core::bump(a.calls_forwarded, 3);
    core::bump(b.calls_forwarded, 4);
    core::bump(b.replies_forwarded, 7);
    core::bump(a.tls_protection_open[0][1]);  // tx in the kernel (ktls-sw)
    gateway_totals t;
    t.add(a);
    t.add(b);
    EXPECT_EQ(t.calls_forwarded, 7u);
    EXPECT_EQ(t.replies_forwarded, 7u);
    EXPECT_EQ(t.ktls_tx_open, 1u);
    std::string line = t.describe();
    // tests/faults reads "calls=N replies=N" from the exit log.
    EXPECT_NE(line.find("calls=7 replies=7"), std::string::npos) << line;
#define RPCGATE_X(field, label, metric, type, help) \
    EXPECT_NE(line.find(std::string(label) + "="), std::string::npos) << label;
    RPCGATE_GATEWAY_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
}

TEST(metrics, every_exported_row_is_one_family_per_shard) {
    gateway_counters a, b;
    core::bump(b.calls_forwarded, 2);
    std::string out;
    render_gateway_counters(out, {&a, &b});
    EXPECT_NE(out.find("# TYPE rpcgate_calls_forwarded_total counter\n"
                       "rpcgate_calls_forwarded_total{shard=\"0\"} 0\n"
                       "rpcgate_calls_forwarded_total{shard=\"1\"} 2\n"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find("# TYPE rpcgate_connections_open gauge\n"), std::string::npos);
    EXPECT_EQ(out.find("orphan"), std::string::npos);  // rows without a metric name
}

TEST(metrics, backend_health_is_summed_per_backend) {
    backend_health s0[2], s1[2];
    core::bump(s0[1].connects, 2);
    core::bump(s1[1].connects, 3);
    std::string out;
    render_backend_health(out, {backend_labels("nfs", "a:1"), backend_labels("mount", "b:2")},
                          {s0, s1});
    EXPECT_NE(out.find("rpcgate_backend_connects_total{backend=\"mount\",address=\"b:2\"} 5\n"),
              std::string::npos)
        << out;
    EXPECT_NE(out.find("# TYPE rpcgate_backend_connections_open gauge\n"), std::string::npos);
}

TEST(metrics, kernel_tls_stat_is_snake_case_counters_and_current_gauges) {
    EXPECT_EQ(snake_case("TlsDecryptError"), "tls_decrypt_error");
    EXPECT_EQ(snake_case("TlsRxNoPadViolation"), "tls_rx_no_pad_violation");
    std::string out;
    render_kernel_tls_stat(out, {{"TlsCurrTxSw", 2}, {"TlsTxSw", 7}, {"TlsDecryptError", 1}});
    EXPECT_NE(
        out.find("# TYPE rpcgate_kernel_tls_curr_tx_sw gauge\nrpcgate_kernel_tls_curr_tx_sw 2\n"),
        std::string::npos)
        << out;
    EXPECT_NE(
        out.find(
            "# TYPE rpcgate_kernel_tls_tx_sw_total counter\nrpcgate_kernel_tls_tx_sw_total 7\n"),
        std::string::npos)
        << out;
    EXPECT_NE(out.find("rpcgate_kernel_tls_decrypt_error_total 1\n"), std::string::npos);
    EXPECT_EQ(out.find("Tls"), out.find("/proc/net/tls_stat Tls") + 19) << out;  // only in HELP
}

TEST(metrics, build_info_and_certificate_expiry) {
    std::string out;
    render_build_info(out, "1.2.3", "uring");
    EXPECT_NE(out.find("rpcgate_build_info{version=\"1.2.3\",openssl=\"OpenSSL "),
              std::string::npos)
        << out;
    EXPECT_NE(out.find("io_backend=\"uring\"} 1\n"), std::string::npos) << out;
    out.clear();
    render_cert_expiry(out, {{"server", "gw \"one\"", "0A", 1893456000}});
    EXPECT_NE(out.find("# TYPE rpcgate_certificate_not_after_seconds gauge\n"
                       "rpcgate_certificate_not_after_seconds{role=\"server\",subject=\"gw "
                       "\\\"one\\\"\",serial=\"0A\"} 1893456000\n"),
              std::string::npos)
        << out;
}

TEST(metrics, a_gauge_slot_gives_its_unit_back_once) {
    std::atomic<uint64_t> g{0};
    {
        gauge_slot s;
        s.take(g);
        EXPECT_EQ(g.load(), 1u);
        s.release();
        EXPECT_EQ(g.load(), 0u);
        s.take(g);
    }
    EXPECT_EQ(g.load(), 0u);
}

}  // namespace
}  // namespace rpcgate::gw
