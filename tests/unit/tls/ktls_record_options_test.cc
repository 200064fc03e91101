// The kernel's TLS 1.3 record options (tls::ktls::set_rx_expect_no_pad,
// set_tx_max_payload; --ktls-rx-no-pad and --ktls-tx-record-size of the
// gateway), against an independent userspace OpenSSL peer. They need a kernel
// with kTLS: these machines have none, so the tests run in the qemu guests of
// tests/vm (ktls_vm, ktls_vm_6_12, ktls_vm_7) and skip here, saying why.
//
// Findings pinned:
//   - With TLS_RX_EXPECT_NO_PAD, unpadded records arrive without a retry and a
//     padded one still arrives intact; the kernel counts it in
//     TlsRxNoPadViolation (and TlsDecryptRetry) -- so the option is safe to
//     set wrongly, only slower.
//   - TLS_TX_MAX_PAYLOAD_LEN bounds every record the kernel sends; without it
//     one send() of 10,000 bytes leaves as one record.
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <sys/utsname.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "ktls_peers.h"
#include "ktls_test_util.h"
#include "tls/context.h"
#include "tls/ktls.h"

namespace rpcgate::tls {
namespace {

using namespace ktls::test;

// Major version of the running kernel (0 when unknown).
int kernel_major() {
    utsname u{};
    return ::uname(&u) == 0 ? std::atoi(u.release) : 0;
}

class KtlsRecordOptions : public ::testing::Test {
  protected:
    void SetUp() override {
        if (require_ktls()) {
            ASSERT_TRUE(have_ktls()) << "RPCGATE_REQUIRE_KTLS=1 but the kernel has no kTLS";
        }
        if (!have_ktls()) GTEST_SKIP() << "the kernel has no kTLS (these run in tests/vm)";
        server_options so;
        so.cert_file = certs().cert;
        so.key_file = certs().key;
        std::string e;
        server_ = context::make_server(so, &e);
        ASSERT_TRUE(server_) << e;
    }
    std::unique_ptr<context> server_;
};

// The peer (a client) sends `first` unpadded, then `second` in records of
// 1,000 bytes padded to 1,024. Our RX expects no padding.
TEST_F(KtlsRecordOptions, NoPadTakesUnpaddedRecordsAndSurvivesPaddedOnes) {
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    const std::string first = random_bytes(100 * 1000), second = random_bytes(20 * 1000);
    peer_ctx pc(false);
    std::promise<void> first_read;
    auto first_done = first_read.get_future();
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        if (!c.write_all(first)) return "write: " + last_error();
        // Padding only once the first part was counted on our side.
        if (first_done.wait_for(std::chrono::seconds(30)) != std::future_status::ready)
            return "our side never read the first part";
        // OpenSSL pads only records shorter than 16 KiB: 1,000 bytes each.
        if (SSL_set_block_padding(c.ssl, 512) != 1) return "SSL_set_block_padding failed";
        for (size_t off = 0; off < second.size(); off += 1000)
            if (!c.write_all(second.substr(off, 1000))) return "write: " + last_error();
        std::string got;
        if (!c.read_exact(got, 2)) return "read: " + last_error();
        return got == "ok" ? "" : "no ok";
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    ASSERT_TRUE(o.dir.rx) << "RX is not in the kernel";
    ASSERT_TRUE(ktls::set_rx_expect_no_pad(o.fd)) << std::strerror(errno);

    auto s0 = ktls::read_tls_stat();
    uint8_t type = 0;
    std::string got = o.read_n(first.size(), &type);
    ASSERT_TRUE(got == first) << "the unpadded part differs (" << got.size() << " bytes)";
    auto s1 = ktls::read_tls_stat();
    first_read.set_value();
    // The kernel decrypts in place only into a buffer that holds the whole
    // record: read with room to spare, as a shard's receive buffer has.
    got.clear();
    std::vector<char> buf(64 * 1024);
    while (got.size() < second.size()) {
        ssize_t n = o.read(buf.data(), buf.size(), &type);
        if (n <= 0 || type != ktls::rt_application_data) break;
        got.append(buf.data(), size_t(n));
    }
    ASSERT_TRUE(got == second) << "the padded part differs (" << got.size() << " bytes)";
    auto s2 = ktls::read_tls_stat();
    ASSERT_TRUE(o.write("ok")) << o.err;
    EXPECT_EQ(peer.get(), "");

    auto d = [](const auto& a, const auto& b, const char* k) {
        return ktls::stat_value(b, k) - ktls::stat_value(a, k);
    };
    std::printf(
        "[ktls] no-pad: unpadded part: violations %llu, retries %llu; padded part: "
        "violations %llu, retries %llu\n",
        (unsigned long long)d(s0, s1, "TlsRxNoPadViolation"),
        (unsigned long long)d(s0, s1, "TlsDecryptRetry"),
        (unsigned long long)d(s1, s2, "TlsRxNoPadViolation"),
        (unsigned long long)d(s1, s2, "TlsDecryptRetry"));
    EXPECT_EQ(d(s0, s1, "TlsRxNoPadViolation"), 0u);
    EXPECT_GT(d(s1, s2, "TlsRxNoPadViolation"), 0u) << "a padded record was not noticed";
}

// Record lengths the peer receives (the outer header's length field).
struct record_lengths {
    std::mutex mu;
    std::vector<size_t> lengths;
    static void on_msg(int write_p, int, int content_type, const void* buf, size_t len, SSL*,
                       void* arg) {
        if (write_p || content_type != SSL3_RT_HEADER || len < 5) return;
        auto* b = static_cast<const uint8_t*>(buf);
        if (b[0] != SSL3_RT_APPLICATION_DATA) return;
        auto* self = static_cast<record_lengths*>(arg);
        std::lock_guard g(self->mu);
        self->lengths.push_back(size_t(b[3]) << 8 | b[4]);
    }
};

// Sends 10,000 bytes in one send() with `max_payload` (0: not set) and returns
// the lengths of the records the peer received, or fails.
std::vector<size_t> send_and_measure(const context& server, uint16_t max_payload) {
    tcp_pair p;
    EXPECT_GE(p.ours, 0);
    const std::string data = random_bytes(10000);
    peer_ctx pc(false);
    record_lengths seen;
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        SSL_set_msg_callback(c.ssl, record_lengths::on_msg);
        SSL_set_msg_callback_arg(c.ssl, &seen);
        std::string got;
        if (!c.read_exact(got, data.size())) return "read: " + last_error();
        return got == data ? "" : "the bytes differ";
    });
    ours o(server, p.ours);
    EXPECT_TRUE(o.handshake()) << o.err;
    EXPECT_TRUE(o.dir.tx) << "TX is not in the kernel";
    if (max_payload) {
        EXPECT_TRUE(ktls::set_tx_max_payload(o.fd, max_payload)) << strerror(errno);
    }
    EXPECT_TRUE(o.write(data)) << o.err;
    EXPECT_EQ(peer.get(), "");
    std::lock_guard g(seen.mu);
    // The handshake's last flight and the tickets are type 23 as well; the
    // data's records are those after them, the last lengths seen.
    return seen.lengths;
}

TEST_F(KtlsRecordOptions, TxMaxPayloadBoundsEveryRecord) {
    if (!ktls::kernel_has_tx_max_payload()) {
        if (kernel_major() >= 7)
            FAIL() << "a Linux 7 kernel without TLS_TX_MAX_PAYLOAD_LEN: the probe is broken";
        GTEST_SKIP() << "this kernel has no TLS_TX_MAX_PAYLOAD_LEN (added in 2026 kernels)";
    }
    // TLS 1.3 record overhead on the wire: content type (1) + tag (16).
    constexpr size_t overhead = 17;
    auto whole = send_and_measure(*server_, 0);
    ASSERT_FALSE(whole.empty());
    EXPECT_EQ(whole.back(), 10000 + overhead) << "without the option: one record";
    auto small = send_and_measure(*server_, 1000);
    ASSERT_GE(small.size(), 10u);
    size_t data_records = 0, data_bytes = 0;
    for (auto it = small.rbegin(); it != small.rend() && data_bytes < 10000; ++it) {
        EXPECT_LE(*it, 1000 + overhead);
        data_bytes += *it - overhead;
        ++data_records;
    }
    EXPECT_EQ(data_bytes, 10000u);
    EXPECT_EQ(data_records, 10u);
    std::printf("[ktls] TLS_TX_MAX_PAYLOAD_LEN 1000: 10,000 bytes in %zu records (without: 1)\n",
                data_records);
}

}  // namespace
}  // namespace rpcgate::tls
