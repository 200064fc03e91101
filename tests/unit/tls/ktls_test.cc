// Kernel TLS: the handshake that hands records to the kernel, the protection
// report, and what the kernel does with non-data records.
//
// Our side (tls::ktls over a tls::context, as the gateway's control thread
// and shards would use it) talks over loopback TCP to an independent
// userspace OpenSSL peer on its own thread. Where the kernel has kTLS (the
// qemu guest of tests/vm) every test asserts that the kernel took the
// records (ktls-sw for TX and RX, /proc/net/tls_stat moving); where it has
// none (these machines' kernel) the same tests run on userspace TLS and
// assert `userspace` -- the fallback. RPCGATE_REQUIRE_KTLS=1 (set in the VM)
// turns a kernel without kTLS into a failure instead of the fallback.
//
// The kernel findings each test pins down are in its comment.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <liburing.h>
#include <linux/capability.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ktls_peers.h"
#include "ktls_test_util.h"
#include "tests/timing.h"
#include "tls/context.h"
#include "tls/ktls.h"

namespace rpcgate::tls {
namespace {

namespace k = ktls;
using namespace ktls::test;

class KtlsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_FALSE(certs().dir.empty());
        if (require_ktls()) {
            ASSERT_TRUE(have_ktls()) << "RPCGATE_REQUIRE_KTLS=1 but the kernel has no kTLS";
        }
        server_options so;
        so.cert_file = certs().cert;
        so.key_file = certs().key;
        so.min_version = TLS1_2_VERSION;  // the TLS 1.2 test needs it; the peers pick 1.3 otherwise
        std::string e;
        server_ = context::make_server(so, &e);
        ASSERT_TRUE(server_) << e;
        client_options co;
        co.ca_file = certs().cert;
        co.server_name = "localhost";
        client_ = context::make_client(co, &e);
        ASSERT_TRUE(client_) << e;
    }

    // The mode every direction must report here.
    static k::mode expected() { return have_ktls() ? k::mode::ktls_sw : k::mode::userspace; }

    std::unique_ptr<context> server_, client_;
};

TEST_F(KtlsTest, PlainSocketIsUserspace) {
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    k::protection pr = k::query(p.ours);
    EXPECT_EQ(pr.tx, k::mode::userspace);
    EXPECT_EQ(pr.rx, k::mode::userspace);
    EXPECT_FALSE(pr.ulp);
}

// The main path: a server handshake whose ClientHello a shard already read
// (`early`), both directions in the kernel, data byte-identical both ways,
// the kernel's counters moving, and the peer's close_notify arriving as an
// alert record. Finding: a plain recv() on a kTLS RX socket fails with EIO
// at a non-data record and leaves it queued; recvmsg with a control buffer
// then returns it with its type.
TEST_F(KtlsTest, ServerHandsRecordsToKernel) {
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    auto before = k::read_tls_stat();
    const std::string up = random_bytes(300 * 1000), down = random_bytes(200 * 1000);
    peer_ctx pc(false);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        if (!c.write_all(up)) return "write: " + last_error();
        std::string got;
        if (!c.read_exact(got, down.size())) return "read: " + last_error();
        if (got != down) return "the bytes that came back differ";
        SSL_shutdown(c.ssl);  // close_notify
        return "";
    });
    // The ClientHello, read as a shard reads it before the hand-off.
    auto deadline = clock_type::now() + std::chrono::seconds(10);
    ASSERT_TRUE(wait_fd(p.ours, POLLIN, deadline));
    // Only part of it: OpenSSL reads the rest from the socket after these.
    char hello[100];
    ssize_t hn = ::recv(p.ours, hello, sizeof(hello), 0);
    ASSERT_GT(hn, 5);
    ours o(*server_, p.ours, std::string_view(hello, static_cast<size_t>(hn)));
    ASSERT_TRUE(o.handshake()) << o.err;
    EXPECT_EQ(o.dir.tx, have_ktls());
    EXPECT_EQ(o.dir.rx, have_ktls());
    k::protection pr = k::query(o.fd);
    std::printf("[ktls] server: engaged tx=%d rx=%d; kernel: tx=%s rx=%s %s %s (sock_diag: %d)\n",
                o.dir.tx, o.dir.rx, k::mode_name(pr.tx), k::mode_name(pr.rx),
                pr.version_name().c_str(), pr.cipher_name().c_str(), pr.from_diag);
    EXPECT_EQ(pr.tx, expected());
    EXPECT_EQ(pr.rx, expected());
    if (have_ktls()) {
        EXPECT_TRUE(pr.from_diag) << "sock_diag gave no ULP info (CAP_NET_ADMIN?)";
        EXPECT_EQ(pr.version, TLS_1_3_VERSION);
        EXPECT_NE(pr.cipher, 0);
    }

    uint8_t type = 0;
    std::string got = o.read_n(up.size(), &type);
    EXPECT_EQ(got.size(), up.size()) << "stopped at record type " << int(type) << " " << o.err;
    EXPECT_TRUE(got == up) << "the bytes that arrived differ";
    ASSERT_TRUE(o.write(down)) << o.err;

    if (have_ktls()) {
        auto after = k::read_tls_stat();
        for (const char* c : {"TlsTxSw", "TlsRxSw"})
            EXPECT_GT(k::stat_value(after, c), k::stat_value(before, c)) << c;
        EXPECT_GE(k::stat_value(after, "TlsCurrTxSw"), 1u);
        EXPECT_GE(k::stat_value(after, "TlsCurrRxSw"), 1u);
        // close_notify: first a plain recv, as IORING_OP_RECV would do it.
        ASSERT_TRUE(wait_fd(o.fd, POLLIN, clock_type::now() + std::chrono::seconds(10)));
        char b[64];
        ssize_t n = ::recv(o.fd, b, sizeof(b), MSG_DONTWAIT);
        int e = n < 0 ? errno : 0;
        std::printf("[ktls] plain recv() at close_notify: %zd %s\n", n, n < 0 ? strerror(e) : "");
        EXPECT_EQ(n, -1);
        EXPECT_EQ(e, EIO);
        k::control_record c;
        n = k::read_control(o.fd, &c);
        ASSERT_EQ(n, 2) << "the record was not left queued by the failed recv";
        EXPECT_EQ(c.kind, k::control::close_notify);
        (void)k::send_alert(o.fd, 1, 0);  // our close_notify, through the kernel
    } else {
        char b[64];
        EXPECT_EQ(o.read(b, sizeof(b), &type), 0) << "no close_notify in userspace";
    }
    EXPECT_EQ(peer.get(), "");
}

// The shard's own receive: an IORING_OP_RECV (no control buffer) on a kTLS
// RX socket completes with -EIO at a non-data record and leaves it for a
// recvmsg with a control buffer; IORING_OP_RECVMSG with one gets the type.
TEST_F(KtlsTest, IoUringRecvStopsAtControlRecord) {
    if (!have_ktls()) GTEST_SKIP() << "the kernel has no kTLS (run in tests/vm)";
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    std::promise<void> sent_all;
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        if (!c.write_all("data-record")) return "write: " + last_error();
        SSL_shutdown(c.ssl);
        sent_all.set_value();
        return "";
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    ASSERT_TRUE(o.dir.rx);
    sent_all.get_future().wait_for(std::chrono::seconds(10));
    ASSERT_EQ(peer.get(), "");

    io_uring ring;
    ASSERT_EQ(io_uring_queue_init(8, &ring, 0), 0);
    auto recv_once = [&](char* buf, size_t len, msghdr* mh) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        if (mh)
            io_uring_prep_recvmsg(sqe, o.fd, mh, 0);
        else
            io_uring_prep_recv(sqe, o.fd, buf, len, 0);
        io_uring_submit(&ring);
        io_uring_cqe* cqe = nullptr;
        __kernel_timespec ts{10, 0};
        int res = io_uring_wait_cqe_timeout(&ring, &cqe, &ts) == 0 ? cqe->res : -ETIMEDOUT;
        if (cqe) io_uring_cqe_seen(&ring, cqe);
        return res;
    };
    char buf[256];
    int r = recv_once(buf, sizeof(buf), nullptr);
    EXPECT_EQ(r, 11) << "the data record first";
    r = recv_once(buf, sizeof(buf), nullptr);
    std::printf("[ktls] IORING_OP_RECV at close_notify: %d (%s)\n", r, r < 0 ? strerror(-r) : "");
    EXPECT_EQ(r, -EIO);
    alignas(cmsghdr) char cbuf[k::record_cmsg_space];
    iovec iov{buf, sizeof(buf)};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    r = recv_once(nullptr, 0, &mh);
    EXPECT_EQ(r, 2);
    EXPECT_EQ(k::record_type_of(mh), k::rt_alert);
    io_uring_queue_exit(&ring);
}

// The shard's actual receive: a multishot IORING_OP_RECV with provided
// buffers. Data records complete with IORING_CQE_F_MORE; the close_notify
// ends the multishot with -EIO (no F_MORE) and stays queued: the socket
// still polls readable and recvmsg with a control buffer returns it. So a
// shard can keep its receive path and treat -EIO on a kTLS RX connection as
// "a control record waits": hand the fd to the control thread.
TEST_F(KtlsTest, IoUringMultishotRecvEndsAtControlRecord) {
    if (!have_ktls()) GTEST_SKIP() << "the kernel has no kTLS (run in tests/vm)";
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    std::promise<void> sent_all;
    const std::string data = random_bytes(50000);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        if (!c.write_all(data.substr(0, 20000)) || !c.write_all(data.substr(20000)))
            return "write: " + last_error();
        SSL_shutdown(c.ssl);
        sent_all.set_value();
        return "";
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    ASSERT_TRUE(o.dir.rx);
    ASSERT_EQ(sent_all.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
    ASSERT_EQ(peer.get(), "");

    constexpr unsigned nbufs = 32, bsize = 4096;
    std::vector<char> bufs(nbufs * bsize);
    io_uring ring;
    ASSERT_EQ(io_uring_queue_init(16, &ring, 0), 0);
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_provide_buffers(sqe, bufs.data(), bsize, nbufs, 1, 0);
    io_uring_submit(&ring);
    io_uring_cqe* cqe = nullptr;
    ASSERT_EQ(io_uring_wait_cqe(&ring, &cqe), 0);
    ASSERT_GE(cqe->res, 0);
    io_uring_cqe_seen(&ring, cqe);
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recv_multishot(sqe, o.fd, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 1;
    io_uring_submit(&ring);
    std::string got;
    int last = 0, completions = 0;
    for (;;) {
        __kernel_timespec ts{10, 0};
        ASSERT_EQ(io_uring_wait_cqe_timeout(&ring, &cqe, &ts), 0) << "the multishot receive hung";
        int res = cqe->res;
        unsigned flags = cqe->flags;
        io_uring_cqe_seen(&ring, cqe);
        ++completions;
        if (res > 0) {
            unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
            got.append(bufs.data() + size_t(bid) * bsize, size_t(res));
        }
        if (!(flags & IORING_CQE_F_MORE)) {
            last = res;
            break;
        }
    }
    io_uring_queue_exit(&ring);
    std::printf("[ktls] multishot recv: %d completions, %zu bytes, ended with %d (%s)\n",
                completions, got.size(), last, last < 0 ? strerror(-last) : "");
    EXPECT_TRUE(got == data) << got.size() << " of " << data.size() << " bytes";
    EXPECT_EQ(last, -EIO);
    EXPECT_TRUE(wait_fd(o.fd, POLLIN, clock_type::now() + std::chrono::seconds(1)))
        << "the queued control record does not poll readable";
    char b[16];
    uint8_t type = 0;
    EXPECT_EQ(k::recv_record(o.fd, b, sizeof(b), &type, MSG_DONTWAIT), 2);
    EXPECT_EQ(type, k::rt_alert);
}

// splice (issue 6 item 3, zero-copy forwarding) on kTLS: from a kTLS RX
// socket into a pipe, one call returns application data of one record at
// most; at a non-data record it fails with EINVAL and leaves the record
// queued. Into a kTLS TX socket from a pipe, the kernel encrypts.
TEST_F(KtlsTest, SpliceOnKtls) {
    if (!have_ktls()) GTEST_SKIP() << "the kernel has no kTLS (run in tests/vm)";
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    const std::string up = random_bytes(40000), down = random_bytes(30000);
    std::promise<void> sent_all;
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        if (!c.write_all(up)) return "write: " + last_error();
        SSL_shutdown(c.ssl);
        sent_all.set_value();
        std::string got;
        if (!c.read_exact(got, down.size())) return "read: " + last_error();
        return got == down ? "" : "the spliced bytes differ";
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    ASSERT_TRUE(o.dir.rx && o.dir.tx);
    ASSERT_EQ(sent_all.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
    int pipefd[2];
    ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
    ::fcntl(pipefd[0], F_SETPIPE_SZ, 1 << 20);
    std::string got;
    size_t calls = 0, largest = 0;
    int err = 0;
    while (got.size() <= up.size()) {
        ssize_t n = ::splice(o.fd, nullptr, pipefd[1], nullptr, 1 << 20, SPLICE_F_NONBLOCK);
        if (n <= 0) {
            err = n < 0 ? errno : 0;
            break;
        }
        ++calls;
        largest = std::max(largest, size_t(n));
        std::string chunk(size_t(n), '\0');
        ASSERT_EQ(::read(pipefd[0], chunk.data(), chunk.size()), n);
        got += chunk;
    }
    std::printf("[ktls] splice from kTLS RX: %zu bytes in %zu calls (largest %zu), then %s\n",
                got.size(), calls, largest, err ? strerror(err) : "EOF");
    EXPECT_TRUE(got == up);
    EXPECT_LE(largest, 16384u) << "one splice crossed a record boundary";
    EXPECT_EQ(err, EINVAL);
    k::control_record c;
    EXPECT_EQ(k::read_control(o.fd, &c), 2) << "the record did not stay queued";
    EXPECT_EQ(c.kind, k::control::close_notify);
    // The other way: pipe -> kTLS TX socket.
    size_t off = 0;
    while (off < down.size()) {
        size_t chunk = std::min<size_t>(down.size() - off, 16384);
        ASSERT_EQ(::write(pipefd[1], down.data() + off, chunk), ssize_t(chunk));
        size_t left = chunk;
        while (left > 0) {
            ssize_t n = ::splice(pipefd[0], nullptr, o.fd, nullptr, left, 0);
            if (n < 0 && errno == EAGAIN) {
                ASSERT_TRUE(wait_fd(o.fd, POLLOUT, clock_type::now() + std::chrono::seconds(10)));
                continue;
            }
            ASSERT_GT(n, 0) << strerror(errno);
            left -= size_t(n);
        }
        off += chunk;
    }
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    EXPECT_EQ(peer.get(), "");
}

// A fatal alert from the peer: our side sends a record the peer cannot
// accept after the handshake (a Finished), OpenSSL answers with
// unexpected_message, and the kernel hands it up as an alert record.
TEST_F(KtlsTest, AlertFromPeerIsAControlRecord) {
    if (!have_ktls()) GTEST_SKIP() << "needs kTLS TX to put a stray record on the wire (tests/vm)";
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        char b[16];
        size_t n = 0;
        if (SSL_read_ex(c.ssl, b, sizeof(b), &n) == 1) return "the stray record was accepted";
        return "";
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    ASSERT_TRUE(o.dir.tx && o.dir.rx);
    const uint8_t finished[] = {20, 0, 0, 4, 0, 0, 0, 0};
    ASSERT_EQ(k::send_record(o.fd, k::rt_handshake, finished, sizeof(finished)), 8);
    uint8_t type = 0;
    uint8_t b[64];
    ssize_t n = o.read(b, sizeof(b), &type, 5000);
    ASSERT_EQ(n, 2) << (n < 0 ? strerror(int(-n)) : "");
    EXPECT_EQ(type, k::rt_alert);
    k::control_record c = k::classify(type, b, 2);
    EXPECT_EQ(c.kind, k::control::alert);
    EXPECT_EQ(c.alert_level, 2);
    EXPECT_EQ(c.alert_description, SSL_AD_UNEXPECTED_MESSAGE);
    EXPECT_EQ(peer.get(), "");
}

// KeyUpdate from the peer (RFC 8446 §4.6.3), with update_requested. On kTLS
// the shard sees a handshake record, stops reading there (the records after
// it are under the peer's next key) and the control thread closes cleanly
// with close_notify under our unchanged TX key: the peer sees the close
// within 1 s. In userspace OpenSSL rekeys by itself and data goes on.
TEST_F(KtlsTest, KeyUpdateFromPeerEndsCleanly) {
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    std::promise<clock_type::time_point> updated;
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        if (!c.write_all("before")) return "write: " + last_error();
        if (SSL_key_update(c.ssl, SSL_KEY_UPDATE_REQUESTED) != 1)
            return "key_update: " + last_error();
        updated.set_value(clock_type::now());
        if (!c.write_all("after")) return "write after: " + last_error();  // sends KeyUpdate first
        char b[64];
        size_t n = 0;
        int r = SSL_read_ex(c.ssl, b, sizeof(b), &n);
        if (r == 1)
            return std::string(b, n) == "after" ? "" : "unexpected reply";  // userspace echo
        if (SSL_get_error(c.ssl, r) == SSL_ERROR_ZERO_RETURN) return "";    // close_notify
        return "no clean close: " + last_error();
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    uint8_t type = 0;
    EXPECT_EQ(o.read_n(6, &type), "before");
    auto when = updated.get_future();
    ASSERT_EQ(when.wait_for(std::chrono::seconds(10)), std::future_status::ready);
    auto t0 = when.get();
    char b[64];
    ssize_t n = o.read(b, sizeof(b), &type, 2000);
    if (o.dir.rx) {
        ASSERT_GT(n, 0) << strerror(int(-n));
        ASSERT_EQ(type, k::rt_handshake);
        k::control_record c = k::classify(type, reinterpret_cast<uint8_t*>(b), size_t(n));
        EXPECT_EQ(c.kind, k::control::key_update);
        EXPECT_TRUE(c.update_requested);
        // No TLS_RX rekey on this kernel: close cleanly (close_notify).
        (void)k::send_alert(o.fd, 1, 0);
        ::shutdown(o.fd, SHUT_WR);
    } else {
        ASSERT_EQ(n, 5);
        EXPECT_EQ(std::string(b, 5), "after");
        ASSERT_TRUE(o.write("after")) << o.err;
    }
    EXPECT_EQ(peer.get(), "");
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count();
    std::printf("[ktls] KeyUpdate -> %s in %lld ms\n", o.dir.rx ? "close_notify" : "rekey",
                static_cast<long long>(ms));
    EXPECT_LT(ms, rpcgate::testing::timing_bound_ms(1000));  // a close, not a stall: tests/timing.h
}

// One TLS 1.3 record (RFC 8446 §5.2) decrypted with AES-GCM `keys` at
// sequence `seq`: content || type, or "" when it does not authenticate.
std::string open_record(const k::traffic_secrets::record_keys& keys, uint64_t seq,
                        const std::string& rec) {
    if (rec.size() < 5 + 16) return "";
    uint8_t nonce[12];
    std::memcpy(nonce, keys.iv, 12);
    for (int i = 0; i < 8; ++i) nonce[11 - i] ^= uint8_t(seq >> (8 * i));
    EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
    const EVP_CIPHER* cipher = keys.key_len == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    std::string out(rec.size() - 5 - 16, '\0');
    int n = 0, fin = 0;
    auto* in = reinterpret_cast<const unsigned char*>(rec.data());
    bool ok = EVP_DecryptInit_ex(c, cipher, nullptr, keys.key, nonce) == 1 &&
              EVP_DecryptUpdate(c, nullptr, &n, in, 5) == 1 &&  // AAD: the record header
              EVP_DecryptUpdate(c, reinterpret_cast<unsigned char*>(out.data()), &n, in + 5,
                                int(out.size())) == 1 &&
              EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16,
                                  const_cast<unsigned char*>(in + rec.size() - 16)) == 1 &&
              EVP_DecryptFinal_ex(c, reinterpret_cast<unsigned char*>(out.data()) + n, &fin) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok ? out : "";
}

// Key updates with the kept traffic secrets. Without kTLS, the derivation
// itself is checked: the peer's records before and after its KeyUpdate are
// read raw off the socket and open under generation 0 and 1 of the secret.
// With kTLS RX, rekey_rx either takes (Linux 6.14+: "after" arrives through
// the kernel) or is refused with EBUSY (Linux 6.1).
TEST_F(KtlsTest, KeyUpdateWithKeptSecrets) {
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(true, 0, "TLS_AES_128_GCM_SHA256");
    SSL_CTX_set_num_tickets(pc.ctx, 0);
    std::promise<void> sent;
    auto peer = run_peer(pc.ctx, p.theirs, true, [&](peer_conn& c) -> std::string {
        if (SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
            return "key_update: " + last_error();
        if (!c.write_all("after")) return "write: " + last_error();
        sent.set_value();
        char b[8];
        size_t n = 0;
        SSL_read_ex(c.ssl, b, sizeof(b), &n);  // until we close
        return "";
    });
    ours o(*client_, p.ours);
    k::traffic_secrets ts;
    ASSERT_TRUE(o.handshake(true, &ts)) << o.err;
    ASSERT_TRUE(ts.valid());
    ASSERT_EQ(sent.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
    if (o.dir.rx) {
        uint8_t type = 0;
        char b[64];
        ssize_t n = o.read(b, sizeof(b), &type, 5000);
        ASSERT_GT(n, 0);
        ASSERT_EQ(k::classify(type, reinterpret_cast<uint8_t*>(b), size_t(n)).kind,
                  k::control::key_update);
        bool ok = ts.rekey_rx(o.fd);
        int e = errno;
        std::printf("[ktls] rekey_rx: %s\n", ok ? "the kernel took the next key" : strerror(e));
        if (ok) {
            EXPECT_EQ(o.read_n(5, &type), "after");
        } else {
            EXPECT_EQ(e, EBUSY);
        }
    } else {
        std::string raw;
        auto deadline = clock_type::now() + std::chrono::seconds(10);
        auto record = [&](size_t at) -> size_t {  // length of the record at `at`, 0 if incomplete
            if (raw.size() < at + 5) return 0;
            size_t len = 5 + (size_t(uint8_t(raw[at + 3])) << 8 | uint8_t(raw[at + 4]));
            return raw.size() >= at + len ? len : 0;
        };
        while (!(record(0) && record(record(0)))) {
            char b[4096];
            ssize_t n = ::recv(o.fd, b, sizeof(b), MSG_DONTWAIT);
            if (n > 0)
                raw.append(b, size_t(n));
            else if (n == 0 || errno != EAGAIN || !wait_fd(o.fd, POLLIN, deadline))
                break;
        }
        size_t first = record(0);
        ASSERT_GT(first, 0u);
        ASSERT_GT(record(first), 0u);
        k::traffic_secrets::record_keys keys;
        ASSERT_TRUE(ts.rx_keys(&keys));
        EXPECT_EQ(open_record(keys, 0, raw.substr(0, first)), std::string("\x18\0\0\x01\0\x16", 6))
            << "generation 0 does not open the KeyUpdate";
        ASSERT_TRUE(ts.advance_rx());
        ASSERT_TRUE(ts.rx_keys(&keys));
        EXPECT_EQ(open_record(keys, 0, raw.substr(first, record(first))), "after\x17")
            << "generation 1 does not open the record after the KeyUpdate";
    }
    ::shutdown(o.fd, SHUT_RDWR);
    EXPECT_EQ(peer.get(), "");
}

// What this kernel does after a KeyUpdate if a reader ignores it and reads
// on, and whether TLS_RX can be set again (the rekey of kernels that have
// it). Pinned so that a kernel change shows up here.
TEST_F(KtlsTest, KernelAfterKeyUpdate) {
    if (!have_ktls()) GTEST_SKIP() << "the kernel has no kTLS (run in tests/vm)";
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED);
        if (!c.write_all("after")) return "write: " + last_error();
        return "";
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    ASSERT_TRUE(o.dir.rx);
    ASSERT_EQ(peer.get(), "");
    uint8_t type = 0;
    char b[64];
    ssize_t n = o.read(b, sizeof(b), &type, 5000);
    ASSERT_GT(n, 0);
    ASSERT_EQ(type, k::rt_handshake);
    n = o.read(b, sizeof(b), &type, 2000);
    std::printf("[ktls] read past a KeyUpdate: %zd (%s) type %d\n", n,
                n < 0 ? strerror(int(-n)) : "", type);
    EXPECT_LT(n, 0) << "the kernel decrypted a record under the old key";
    EXPECT_NE(n, -ETIMEDOUT) << "a read past a KeyUpdate hung";
    tls12_crypto_info_aes_gcm_256 ci{};
    k::protection pr = k::query(o.fd);
    ci.info.version = TLS_1_3_VERSION;
    ci.info.cipher_type = pr.cipher;
    int r = ::setsockopt(
        o.fd, SOL_TLS, TLS_RX, &ci,
        pr.cipher == TLS_CIPHER_AES_GCM_256 ? sizeof(ci) : sizeof(tls12_crypto_info_aes_gcm_128));
    std::printf("[ktls] TLS_RX set again: %d (%s)\n", r, r ? strerror(errno) : "accepted");
}

// The upstream side: our client with kTLS, a userspace server that sends its
// default two NewSessionTickets after the handshake and then data. The
// tickets arrive as handshake records, classify() consumes them and the data
// that follows is intact.
TEST_F(KtlsTest, TicketOnKtlsClientIsConsumed) {
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(true);
    const std::string hello = random_bytes(5000);
    auto peer = run_peer(pc.ctx, p.theirs, true, [&](peer_conn& c) -> std::string {
        if (!c.write_all(hello)) return "write: " + last_error();
        std::string back;
        if (!c.read_exact(back, 4)) return "read: " + last_error();
        return back == "done" ? "" : "wrong reply";
    });
    ours o(*client_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    EXPECT_EQ(o.dir.tx, have_ktls());
    EXPECT_EQ(o.dir.rx, have_ktls());
    k::protection pr = k::query(o.fd);
    EXPECT_EQ(pr.tx, expected());
    EXPECT_EQ(pr.rx, expected());
    std::string got;
    int tickets = 0;
    std::vector<char> b(16384);
    while (got.size() < hello.size()) {
        uint8_t type = 0;
        ssize_t n = o.read(b.data(), b.size(), &type);
        ASSERT_GT(n, 0) << (n < 0 ? strerror(int(-n)) : "EOF");
        if (type == k::rt_application_data) {
            got.append(b.data(), size_t(n));
            continue;
        }
        k::control_record c = k::classify(type, reinterpret_cast<uint8_t*>(b.data()), size_t(n));
        ASSERT_EQ(c.kind, k::control::new_session_ticket) << "record type " << int(type);
        ++tickets;
    }
    std::printf("[ktls] client: %d ticket record(s) consumed on %s RX\n", tickets,
                k::mode_name(pr.rx));
    if (have_ktls()) {
        EXPECT_GE(tickets, 1);
    }
    EXPECT_TRUE(got == hello);
    ASSERT_TRUE(o.write("done")) << o.err;
    EXPECT_EQ(peer.get(), "");
}

// sock_diag finds an IPv6 socket too (its 4-tuple is 16-byte addresses).
TEST_F(KtlsTest, QueryOverIpv6) {
    tcp_pair p(AF_INET6);
    if (p.ours < 0) GTEST_SKIP() << "no IPv6 loopback here";
    peer_ctx pc(false);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        std::string got;
        return c.read_exact(got, 2) ? "" : "read: " + last_error();
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    k::protection pr = k::query(o.fd);
    EXPECT_EQ(pr.tx, expected());
    EXPECT_EQ(pr.rx, expected());
    EXPECT_EQ(pr.from_diag, have_ktls());
    ASSERT_TRUE(o.write("ok")) << o.err;
    EXPECT_EQ(peer.get(), "");
}

// The early bytes come first, then the socket's; the filter reports them
// pending (finish() keeps RX in userspace while any is unread).
TEST_F(KtlsTest, EarlyBytesComeFirst) {
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    ASSERT_EQ(::write(p.theirs, "def", 3), 3);
    SSL* ssl = SSL_new(server_->native());
    std::string err;
    ASSERT_TRUE(k::attach_socket(ssl, p.ours, "abc", &err)) << err;
    EXPECT_TRUE(::fcntl(p.ours, F_GETFL) & O_NONBLOCK);
    BIO* rb = SSL_get_rbio(ssl);
    EXPECT_EQ(BIO_ctrl_pending(rb), 3u);
    EXPECT_EQ(SSL_get_fd(ssl), p.ours);
    std::string got;
    char b[8];
    auto deadline = clock_type::now() + std::chrono::seconds(10);
    while (got.size() < 6 && clock_type::now() < deadline) {
        int n = BIO_read(rb, b, sizeof(b));
        if (n > 0)
            got.append(b, size_t(n));
        else if (BIO_should_retry(rb))
            wait_fd(p.ours, POLLIN, deadline);
        else
            break;
    }
    EXPECT_EQ(got, "abcdef");
    EXPECT_EQ(BIO_ctrl_pending(rb), 0u);
    EXPECT_LE(BIO_read(rb, b, sizeof(b)), 0);
    EXPECT_TRUE(BIO_should_retry(rb)) << "an empty non-blocking socket must ask for a retry";
    SSL_free(ssl);
}

// Half kTLS: the kernel encrypts what we send, OpenSSL decrypts what we
// receive (from the same socket, which carries the "tls" ULP). What a
// connection whose RX could not move to the kernel runs on.
TEST_F(KtlsTest, HalfKtlsSendOnly) {
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    const std::string up = random_bytes(70000), down = random_bytes(90000);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        if (!c.write_all(up)) return "write: " + last_error();
        std::string got;
        if (!c.read_exact(got, down.size())) return "read: " + last_error();
        return got == down ? "" : "the bytes that came back differ";
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake(false)) << o.err;
    EXPECT_EQ(o.dir.tx, have_ktls());
    EXPECT_FALSE(o.dir.rx);
    k::protection pr = k::query(o.fd);
    EXPECT_EQ(pr.tx, expected());
    EXPECT_EQ(pr.rx, k::mode::userspace);
    uint8_t type = 0;
    EXPECT_TRUE(o.read_n(up.size(), &type) == up);
    ASSERT_TRUE(o.write(down)) << o.err;
    EXPECT_EQ(peer.get(), "");
}

// Tickets on: the server's OpenSSL sends NewSessionTicket after the client's
// Finished through the kernel's TX (a handshake-type record via sendmsg),
// and the peer gets a resumable session.
TEST_F(KtlsTest, ServerTicketsGoThroughKernelTx) {
    server_options so;
    so.cert_file = certs().cert;
    so.key_file = certs().key;
    so.session_tickets = true;
    std::string e;
    auto ctx = context::make_server(so, &e);
    ASSERT_TRUE(ctx) << e;
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        std::string got;
        if (!c.read_exact(got, 5) || got != "hello") return "read: " + last_error();
        SSL_SESSION* sess = SSL_get1_session(c.ssl);
        bool ticket = sess && SSL_SESSION_has_ticket(sess);
        SSL_SESSION_free(sess);
        return ticket ? "" : "no ticket arrived";
    });
    ours o(*ctx, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    EXPECT_EQ(o.dir.tx, have_ktls());
    EXPECT_EQ(o.dir.rx, have_ktls());
    ASSERT_TRUE(o.write("hello")) << o.err;
    EXPECT_EQ(peer.get(), "");
}

// Without CAP_NET_ADMIN Linux 6.1 and 6.12 leave INET_DIAG_ULP_INFO out; the
// report falls back to getsockopt(SOL_TLS): kernel or not, version and
// cipher, but not software or NIC (`ktls`). Linux 7.x gives the ULP info to
// an unprivileged caller too: then the report is the full one. Capabilities
// are per thread: one thread drops CAP_NET_ADMIN and asks.
TEST_F(KtlsTest, ProtectionWithoutNetAdmin) {
    if (!have_ktls()) GTEST_SKIP() << "the kernel has no kTLS (run in tests/vm)";
    if (geteuid() != 0) GTEST_SKIP() << "needs CAP_NET_ADMIN to drop";
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        std::string got;
        return c.read_exact(got, 2) ? "" : "read: " + last_error();
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    k::protection full = k::query(o.fd), limited;
    bool dropped = false;
    std::thread([&] {
        __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
        __user_cap_data_struct d[2] = {};
        if (syscall(SYS_capget, &h, d) != 0) return;
        d[CAP_NET_ADMIN / 32].effective &= ~(1u << (CAP_NET_ADMIN % 32));
        dropped = syscall(SYS_capset, &h, d) == 0;
        limited = k::query(o.fd);
    }).join();
    ASSERT_TRUE(dropped);
    EXPECT_TRUE(full.from_diag);
    EXPECT_EQ(full.tx, k::mode::ktls_sw);
    std::printf("[ktls] without CAP_NET_ADMIN: %s\n",
                limited.from_diag ? "sock_diag still reports (full)" : "getsockopt fallback");
    if (limited.from_diag) {
        EXPECT_EQ(limited.tx, full.tx);
        EXPECT_EQ(limited.rx, full.rx);
    } else {
        EXPECT_EQ(limited.tx, k::mode::ktls);
        EXPECT_EQ(limited.rx, k::mode::ktls);
    }
    EXPECT_EQ(limited.version, full.version);
    EXPECT_EQ(limited.cipher, full.cipher);
    ASSERT_TRUE(o.write("ok")) << o.err;
    EXPECT_EQ(peer.get(), "");
}

// Which suites and versions the kernel takes (OpenSSL 3.0 + Linux 6.1):
// TLS 1.3 with ChaCha20-Poly1305 and TLS 1.2 with AES-GCM both engage.
struct variant {
    const char* name;
    int max_version;
    const char* suites;
    uint16_t version;
    uint16_t cipher;
};
void PrintTo(const variant& v, std::ostream* os) {
    *os << v.name;
}
class KtlsVariantTest : public KtlsTest, public ::testing::WithParamInterface<variant> {};

TEST_P(KtlsVariantTest, Engages) {
    const variant& v = GetParam();
    tcp_pair p;
    ASSERT_GE(p.ours, 0);
    peer_ctx pc(false, v.max_version, v.suites);
    const std::string data = random_bytes(40000);
    auto peer = run_peer(pc.ctx, p.theirs, false, [&](peer_conn& c) -> std::string {
        if (!c.write_all(data)) return "write: " + last_error();
        std::string back;
        if (!c.read_exact(back, data.size())) return "read: " + last_error();
        return back == data ? "" : "echo differs";
    });
    ours o(*server_, p.ours);
    ASSERT_TRUE(o.handshake()) << o.err;
    k::protection pr = k::query(o.fd);
    std::printf("[ktls] %s: %s, engaged tx=%d rx=%d, kernel %s/%s %s %s\n", v.name,
                SSL_get_cipher_name(o.ssl), o.dir.tx, o.dir.rx, k::mode_name(pr.tx),
                k::mode_name(pr.rx), pr.version_name().c_str(), pr.cipher_name().c_str());
    EXPECT_EQ(pr.tx, expected());
    EXPECT_EQ(pr.rx, expected());
    if (have_ktls()) {
        EXPECT_EQ(pr.version, v.version);
        EXPECT_EQ(pr.cipher, v.cipher);
    }
    uint8_t type = 0;
    std::string got = o.read_n(data.size(), &type);
    ASSERT_TRUE(got == data);
    ASSERT_TRUE(o.write(got)) << o.err;
    EXPECT_EQ(peer.get(), "");
}

INSTANTIATE_TEST_SUITE_P(
    Suites, KtlsVariantTest,
    ::testing::Values(variant{"tls13_aes128", 0, "TLS_AES_128_GCM_SHA256", TLS_1_3_VERSION,
                              TLS_CIPHER_AES_GCM_128},
                      variant{"tls13_aes256", 0, "TLS_AES_256_GCM_SHA384", TLS_1_3_VERSION,
                              TLS_CIPHER_AES_GCM_256},
                      variant{"tls13_chacha", 0, "TLS_CHACHA20_POLY1305_SHA256", TLS_1_3_VERSION,
                              TLS_CIPHER_CHACHA20_POLY1305},
                      variant{"tls12_aes128", TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256",
                              TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128}),
    [](const ::testing::TestParamInfo<variant>& i) { return std::string(i.param.name); });

// ---- pure functions ----

TEST(KtlsClassify, Records) {
    const uint8_t close_notify[] = {1, 0}, fatal[] = {2, 40};
    EXPECT_EQ(k::classify(k::rt_alert, close_notify, 2).kind, k::control::close_notify);
    auto a = k::classify(k::rt_alert, fatal, 2);
    EXPECT_EQ(a.kind, k::control::alert);
    EXPECT_EQ(a.alert_description, 40);
    EXPECT_EQ(k::classify(k::rt_alert, fatal, 1).kind, k::control::unexpected);
    const uint8_t ku_req[] = {24, 0, 0, 1, 1}, ku[] = {24, 0, 0, 1, 0}, ku_bad[] = {24, 0, 0, 1, 2};
    auto u = k::classify(k::rt_handshake, ku_req, sizeof(ku_req));
    EXPECT_EQ(u.kind, k::control::key_update);
    EXPECT_TRUE(u.update_requested);
    EXPECT_FALSE(k::classify(k::rt_handshake, ku, sizeof(ku)).update_requested);
    EXPECT_EQ(k::classify(k::rt_handshake, ku_bad, sizeof(ku_bad)).kind, k::control::unexpected);
    // Two tickets in one record, then one followed by a KeyUpdate.
    const uint8_t two[] = {4, 0, 0, 2, 9, 9, 4, 0, 0, 1, 7};
    EXPECT_EQ(k::classify(k::rt_handshake, two, sizeof(two)).kind, k::control::new_session_ticket);
    const uint8_t mix[] = {4, 0, 0, 1, 7, 24, 0, 0, 1, 0};
    EXPECT_EQ(k::classify(k::rt_handshake, mix, sizeof(mix)).kind, k::control::key_update);
    const uint8_t split[] = {4, 0, 0, 9, 1};
    EXPECT_EQ(k::classify(k::rt_handshake, split, sizeof(split)).kind, k::control::unexpected);
    const uint8_t fin[] = {20, 0, 0, 0};
    EXPECT_EQ(k::classify(k::rt_handshake, fin, sizeof(fin)).kind, k::control::unexpected);
    EXPECT_EQ(k::classify(k::rt_change_cipher_spec, close_notify, 1).kind, k::control::unexpected);
}

TEST(KtlsStat, ParsesTheKernelFormat) {
    char path[] = "/tmp/rpcgate-tls-stat.XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    const char text[] =
        "TlsCurrTxSw                     \t1\nTlsTxSw                         \t7\n";
    ASSERT_EQ(::write(fd, text, sizeof(text) - 1), ssize_t(sizeof(text) - 1));
    ::close(fd);
    auto s = k::read_tls_stat(path);
    ::unlink(path);
    ASSERT_EQ(s.size(), 2u);
    EXPECT_EQ(s[0].first, "TlsCurrTxSw");
    EXPECT_EQ(k::stat_value(s, "TlsTxSw"), 7u);
    EXPECT_EQ(k::stat_value(s, "TlsRxSw"), 0u);
    EXPECT_TRUE(k::read_tls_stat("/nonexistent/tls_stat").empty());
    // The real file: present exactly when the kernel has kTLS loaded.
    if (have_ktls()) {
        EXPECT_FALSE(k::read_tls_stat().empty());
    }
}

TEST(KtlsNames, Modes) {
    EXPECT_STREQ(k::mode_name(k::mode::userspace), "userspace");
    EXPECT_STREQ(k::mode_name(k::mode::ktls_sw), "ktls-sw");
    EXPECT_STREQ(k::mode_name(k::mode::ktls_hw), "ktls-hw");
    k::protection p;
    p.version = TLS_1_3_VERSION;
    p.cipher = TLS_CIPHER_AES_GCM_256;
    EXPECT_EQ(p.version_name(), "TLSv1.3");
    EXPECT_EQ(p.cipher_name(), "AES-GCM-256");
}

}  // namespace
}  // namespace rpcgate::tls
