// rpcgate-splice-bench: does splice (socket -> pipe -> socket) beat
// recv + send for the payload of large RPC records? The measurement behind
// issue 6 item 3 (zero-copy forwarding); the method and the figures are in
// docs/splice.md.
//
// One process, three threads per run, loopback TCP:
//
//   writer --source--> forwarder --sink--> reader
//
// The writer sends N records of one size (record mark, a 40-byte RPC call
// header, S bytes of payload) until the run's time is up. The forwarder moves
// them on in one of these ways:
//
//   copy-32k   recv into a 32 KiB buffer + send: the gateway today (io_uring
//              provided buffers of 32 KiB). Record boundaries are tracked in
//              the stream, as the gateway's reassembler does.
//   copy-1m    the same with a 1 MiB buffer.
//   splice     recv of the 4-byte mark + 40-byte header into user memory
//              (routing needs it), send of it with MSG_MORE, then exactly the
//              payload length spliced source -> pipe -> sink (1 MiB pipe).
//
// and, where the kernel has kTLS, the same three from a kTLS RX source (TLS
// 1.3, AES-128-GCM; the writer is a userspace OpenSSL client): ktls-copy-32k,
// ktls-copy-1m, ktls-splice. There splice returns at most one TLS record
// (16 KiB) per call and stops with EINVAL at the writer's close_notify.
//
// The reader checks every byte (mark, header, payload) against what the
// writer sent; any difference, short record or error exits 1. Reported per
// point: MB/s of forwarded record bytes, the forwarder thread's CPU time per
// MiB (CLOCK_THREAD_CPUTIME_ID: on a shared machine this is steadier than
// wall-clock throughput), and its system calls per record, counted where they
// are made. Variants run interleaved, --repeat times, and the medians are
// printed with the ratios splice/copy.
//
//   rpcgate-splice-bench [--seconds 2] [--repeat 3] [--sizes 4096,65536,1048576]
//                        [--ktls auto|on|off] [--quick] [--corrupt]
//
// --quick: 0.2 s per point, one repeat (the ctest). --ktls on: a kernel
// without kTLS is an error (the VM). --corrupt: the forwarder flips one byte
// (the ctest that proves the check can fail).
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/tls/ktls_test_util.h"
#include "tls/context.h"
#include "tls/ktls.h"

namespace {

using clock_type = std::chrono::steady_clock;
namespace ktls = rpcgate::tls::ktls;

constexpr size_t header_size = 44;  // record mark + 10 XDR words of call header
constexpr uint32_t nfs_prog = 100003;
constexpr int pipe_size = 1 << 20;  // the default /proc/sys/fs/pipe-max-size
constexpr int io_timeout_s = 20;    // a stuck run fails, it does not hang

struct options {
    double seconds = 2.0;
    int repeat = 3;
    std::vector<size_t> sizes{4096, 65536, 1048576};
    enum { ktls_auto, ktls_on, ktls_off } ktls = ktls_auto;
    bool corrupt = false;
};

enum class how { copy, splice };
struct variant {
    const char* name;
    how kind;
    size_t buffer;  // copy: recv buffer size
    bool tls;
};
const variant all_variants[] = {
    {"copy-32k", how::copy, 32 * 1024, false},  {"copy-1m", how::copy, 1 << 20, false},
    {"splice", how::splice, 0, false},          {"ktls-copy-32k", how::copy, 32 * 1024, true},
    {"ktls-copy-1m", how::copy, 1 << 20, true}, {"ktls-splice", how::splice, 0, true},
};

struct result {
    bool ok = false;
    std::string why;
    uint64_t records = 0;
    double mb_per_s = 0;
    double cpu_us_per_mib = 0;
    double syscalls_per_record = 0;
};

// ---- the records ----

uint32_t load_be32(const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
}
void store_be32(uint8_t* p, uint32_t v) {
    p[0] = uint8_t(v >> 24);
    p[1] = uint8_t(v >> 16);
    p[2] = uint8_t(v >> 8);
    p[3] = uint8_t(v);
}

// Record i: last-fragment mark of 40 + S bytes, a CALL to NFS v3 WRITE with
// AUTH_NONE (xid = i), and S bytes of a random pattern starting at a
// per-record offset (so that a record moved to the wrong place shows).
void make_header(uint8_t* h, uint64_t i, size_t size) {
    const uint32_t words[11] = {
        0x80000000u | uint32_t(40 + size), uint32_t(i), 0, 2, nfs_prog, 3, 7, 0, 0, 0, 0};
    for (int w = 0; w < 11; ++w) store_be32(h + 4 * w, words[w]);
}
size_t payload_offset(uint64_t i, size_t size) {
    return (i * 4099) % size;
}

struct pattern {
    std::vector<uint8_t> bytes;  // 2 * size: payload i is bytes[offset(i) .. +size]
    explicit pattern(size_t size) : bytes(2 * size) {
        std::mt19937_64 g(size);
        for (auto& b : bytes) b = uint8_t(g());
    }
};

// Record boundaries in a byte stream: what the gateway's reassembler does,
// and what the reader checks against.
struct stream_parser {
    uint8_t hdr[header_size];
    size_t have = 0;  // header bytes gathered
    uint64_t payload_left = 0;
    uint64_t records = 0;  // headers seen
    // on_header(h) -> false stops; on_payload(p, n, offset in payload) -> false stops.
    template <typename H, typename P>
    bool feed(const uint8_t* p, size_t n, H&& on_header, P&& on_payload) {
        while (n > 0) {
            if (payload_left == 0 && have < header_size) {
                size_t k = std::min(n, header_size - have);
                std::memcpy(hdr + have, p, k);
                have += k;
                p += k;
                n -= k;
                if (have < header_size) return true;
                uint32_t mark = load_be32(hdr);
                if (!(mark & 0x80000000u) || (mark & 0x7fffffffu) < 40) return false;
                if (!on_header(hdr)) return false;
                payload_left = (mark & 0x7fffffffu) - 40;
                pos = 0;
                ++records;
                if (payload_left == 0) have = 0;
                continue;
            }
            size_t k = size_t(std::min<uint64_t>(n, payload_left));
            if (!on_payload(p, k, pos)) return false;
            pos += k;
            payload_left -= k;
            p += k;
            n -= k;
            if (payload_left == 0) have = 0;
        }
        return true;
    }
    bool at_boundary() const { return have == 0 && payload_left == 0; }

  private:
    uint64_t pos = 0;
};

// ---- sockets ----

void set_timeouts(int fd) {
    timeval tv{io_timeout_s, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// A connected loopback pair {a, b}, blocking, with timeouts.
bool tcp_pair(int fds[2]) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || ::bind(l, reinterpret_cast<sockaddr*>(&a), al) != 0 || ::listen(l, 1) != 0 ||
        ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &al) != 0) {
        if (l >= 0) ::close(l);
        return false;
    }
    fds[0] = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    fds[1] = -1;
    if (::connect(fds[0], reinterpret_cast<sockaddr*>(&a), al) == 0)
        fds[1] = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(l);
    if (fds[1] < 0) {
        ::close(fds[0]);
        return false;
    }
    for (int i = 0; i < 2; ++i) set_timeouts(fds[i]);
    return true;
}

bool send_all(int fd, const uint8_t* p, size_t n, int flags, uint64_t* calls) {
    while (n > 0) {
        ssize_t k = ::send(fd, p, n, flags | MSG_NOSIGNAL);
        ++*calls;
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        n -= size_t(k);
    }
    return true;
}

// ---- kTLS source: our end a kTLS RX socket, the writer's an OpenSSL client ----

struct tls_contexts {
    SSL_CTX* server = nullptr;  // ours: SSL_OP_ENABLE_KTLS, socket BIOs (tls::ktls)
    SSL_CTX* client = nullptr;  // the writer's: plain userspace OpenSSL
    bool make(std::string* err) {
        // The kTLS tests' in-process certificate (no openssl program or
        // shell in the qemu guest).
        const auto& cf = ktls::test::certs();
        server = SSL_CTX_new(TLS_server_method());
        client = SSL_CTX_new(TLS_client_method());
        bool ok = server && client && !cf.cert.empty() &&
                  SSL_CTX_use_certificate_file(server, cf.cert.c_str(), SSL_FILETYPE_PEM) == 1 &&
                  SSL_CTX_use_PrivateKey_file(server, cf.key.c_str(), SSL_FILETYPE_PEM) == 1;
        if (!ok) {
            *err = "cannot make the TLS contexts";
            return false;
        }
        for (SSL_CTX* c : {server, client}) {
            SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
            SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256");
        }
        SSL_CTX_set_options(server, SSL_OP_ENABLE_KTLS);
        SSL_CTX_set_num_tickets(server, 0);  // nothing from us after the handshake
        SSL_CTX_clear_options(client, SSL_OP_ENABLE_KTLS);
        SSL_CTX_set_verify(client, SSL_VERIFY_NONE, nullptr);
        if (!ktls::prepare_context(server)) {
            *err = "cannot install the keylog callback";
            return false;
        }
        return true;
    }
    ~tls_contexts() {
        SSL_CTX_free(server);
        SSL_CTX_free(client);
    }
};

// Handshake on the pair {writer_fd, our_fd}; *client_ssl is the writer's SSL.
// True when our RX is in the kernel.
bool tls_handshake(const tls_contexts& tc, int writer_fd, int our_fd, SSL** client_ssl,
                   std::string* err) {
    SSL* c = SSL_new(tc.client);
    SSL_set_fd(c, writer_fd);
    std::atomic<int> crc{0};
    std::thread peer([&] { crc = SSL_connect(c); });
    SSL* s = SSL_new(tc.server);
    SSL_set_accept_state(s);
    bool ok = ktls::attach_socket(s, our_fd, {}, err);
    ktls::directions d;
    auto deadline = clock_type::now() + std::chrono::seconds(io_timeout_s);
    while (ok) {
        ktls::step st = ktls::handshake_step(s);
        if (st == ktls::step::done) {
            d = ktls::finish(s, our_fd);
            break;
        }
        if (st == ktls::step::error || clock_type::now() > deadline) {
            *err = "handshake failed: " + rpcgate::tls::last_error();
            ok = false;
            break;
        }
        pollfd p{our_fd, short(st == ktls::step::want_read ? POLLIN : POLLOUT), 0};
        ::poll(&p, 1, 1000);
    }
    if (!ok) ::shutdown(our_fd, SHUT_RDWR);  // the writer's SSL_connect returns now
    peer.join();
    SSL_free(s);  // after finish() the SSL is metadata only; the fd is ours
    // attach_socket made it non-blocking; the forwarder blocks.
    ::fcntl(our_fd, F_SETFL, ::fcntl(our_fd, F_GETFL) & ~O_NONBLOCK);
    if (ok && crc != 1) {
        *err = "the writer's handshake failed";
        ok = false;
    }
    if (ok && !d.rx) {
        *err = "the kernel did not take the RX direction";
        ok = false;
    }
    if (!ok) {
        SSL_free(c);
        return false;
    }
    *client_ssl = c;
    return true;
}

// ---- one run ----

struct forwarder_stats {
    uint64_t records = 0, bytes = 0, syscalls = 0;
    double cpu_s = 0;
    std::string error;  // empty: a clean end of stream at a record boundary
};

double thread_cpu_s() {
    timespec ts;
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// End of the source. Plain TCP: recv 0. kTLS RX: the writer's close_notify
// stops recv with EIO and splice with EINVAL and stays queued: read it as the
// gateway's control path would.
bool source_closed(int fd, bool tls, ssize_t rc, int err, uint64_t* calls) {
    if (rc == 0) return true;
    if (!tls || (err != EIO && err != EINVAL)) return false;
    ktls::control_record c;
    ++*calls;
    return ktls::read_control(fd, &c) > 0 && c.kind == ktls::control::close_notify;
}

void forward_copy(int src, int sink, const variant& v, bool corrupt, forwarder_stats& st) {
    std::vector<uint8_t> buf(v.buffer);
    stream_parser parser;
    auto route = [](const uint8_t* h) { return load_be32(h + 16) == nfs_prog; };
    auto nothing = [](const uint8_t*, size_t, uint64_t) { return true; };
    for (;;) {
        ssize_t n = ::recv(src, buf.data(), buf.size(), 0);
        ++st.syscalls;
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (!source_closed(src, v.tls, n, errno, &st.syscalls))
                st.error = std::string("recv: ") + (n == 0 ? "EOF" : std::strerror(errno));
            else if (!parser.at_boundary())
                st.error = "source ended inside a record";
            break;
        }
        if (!parser.feed(buf.data(), size_t(n), route, nothing)) {
            st.error = "bad record header at the forwarder";
            break;
        }
        if (corrupt && st.bytes == 0) buf[size_t(n) - 1] ^= 1;
        if (!send_all(sink, buf.data(), size_t(n), 0, &st.syscalls)) {
            st.error = std::string("send: ") + std::strerror(errno);
            break;
        }
        st.bytes += uint64_t(n);
    }
    st.records = parser.records;
}

void forward_splice(int src, int sink, const variant& v, bool corrupt, forwarder_stats& st) {
    int pfd[2];
    if (::pipe2(pfd, O_CLOEXEC) != 0) {
        st.error = "pipe2 failed";
        return;
    }
    ::fcntl(pfd[1], F_SETPIPE_SZ, pipe_size);
    const size_t cap = size_t(std::max(::fcntl(pfd[1], F_GETPIPE_SZ), 4096));
    uint8_t h[header_size];
    for (;;) {
        // The header into user memory: routing reads the program number.
        ssize_t n = ::recv(src, h, sizeof(h), MSG_WAITALL);
        ++st.syscalls;
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (!source_closed(src, v.tls, n, errno, &st.syscalls))
                st.error = std::string("recv: ") + (n == 0 ? "EOF" : std::strerror(errno));
            break;
        }
        uint32_t mark = load_be32(h);
        if (n != ssize_t(sizeof(h)) || !(mark & 0x80000000u) || (mark & 0x7fffffffu) < 40 ||
            load_be32(h + 16) != nfs_prog) {
            st.error = "bad record header at the forwarder";
            break;
        }
        if (corrupt && st.records == 0) h[header_size - 1] ^= 1;
        uint64_t left = (mark & 0x7fffffffu) - 40;
        if (!send_all(sink, h, sizeof(h), left ? MSG_MORE : 0, &st.syscalls)) {
            st.error = std::string("send: ") + std::strerror(errno);
            break;
        }
        // Exactly the payload: the next record's header stays in the socket.
        while (left > 0 && st.error.empty()) {
            ssize_t in = ::splice(src, nullptr, pfd[1], nullptr, std::min<uint64_t>(left, cap),
                                  SPLICE_F_MOVE | SPLICE_F_MORE);
            ++st.syscalls;
            if (in < 0 && errno == EINTR) continue;
            if (in <= 0) {
                st.error = std::string("splice in: ") + (in == 0 ? "EOF" : std::strerror(errno));
                break;
            }
            left -= uint64_t(in);
            while (in > 0) {
                ssize_t out = ::splice(pfd[0], nullptr, sink, nullptr, size_t(in),
                                       SPLICE_F_MOVE | (left ? SPLICE_F_MORE : 0));
                ++st.syscalls;
                if (out < 0 && errno == EINTR) continue;
                if (out <= 0) {
                    st.error = std::string("splice out: ") + std::strerror(errno);
                    break;
                }
                in -= out;
            }
        }
        if (!st.error.empty()) break;
        st.bytes += (mark & 0x7fffffffu) + 4;
        ++st.records;
    }
    ::close(pfd[0]);
    ::close(pfd[1]);
}

result run_one(const variant& v, size_t size, const pattern& pat, const options& opt,
               const tls_contexts* tc) {
    result r;
    int src[2], sink[2];  // [0] the writer's / forwarder's sending end
    if (!tcp_pair(src)) return r.why = "no loopback pair", r;
    if (!tcp_pair(sink)) {
        ::close(src[0]);
        ::close(src[1]);
        return r.why = "no loopback pair", r;
    }
    SSL* wssl = nullptr;
    if (v.tls && !tls_handshake(*tc, src[0], src[1], &wssl, &r.why)) {
        for (int fd : {src[0], src[1], sink[0], sink[1]}) ::close(fd);
        return r;
    }

    std::atomic<bool> stop{false};
    uint64_t written = 0;
    std::string writer_error, reader_error;
    uint64_t read_records = 0;
    forwarder_stats fs;
    const auto t0 = clock_type::now();

    std::thread writer([&] {
        // The record is sent from one contiguous span: the header is written
        // in front of the payload's place in a private copy of the pattern
        // (and the 44 bytes it covered put back afterwards).
        std::vector<uint8_t> w(header_size + pat.bytes.size());
        std::memcpy(w.data() + header_size, pat.bytes.data(), pat.bytes.size());
        uint8_t saved[header_size];
        uint64_t calls = 0;
        for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
            uint8_t* at = w.data() + payload_offset(i, size);
            std::memcpy(saved, at, header_size);
            make_header(at, i, size);
            bool ok;
            if (wssl) {
                size_t done = 0;
                ok = SSL_write_ex(wssl, at, header_size + size, &done) == 1;
            } else {
                ok = send_all(src[0], at, header_size + size, 0, &calls);
            }
            std::memcpy(at, saved, header_size);
            if (!ok) {
                writer_error = "writer: send failed";
                break;
            }
            written = i + 1;
        }
        if (wssl) SSL_shutdown(wssl);  // close_notify: the kTLS source's end
        ::shutdown(src[0], SHUT_WR);
    });
    std::thread forwarder([&] {
        double c0 = thread_cpu_s();
        if (v.kind == how::copy)
            forward_copy(src[1], sink[0], v, opt.corrupt, fs);
        else
            forward_splice(src[1], sink[0], v, opt.corrupt, fs);
        fs.cpu_s = thread_cpu_s() - c0;
        ::shutdown(sink[0], SHUT_WR);
        // After an error keep the writer going until its time is up (it
        // stops at a record boundary only then): drain and drop.
        if (!fs.error.empty()) {
            std::vector<uint8_t> scratch(1 << 16);
            while (::recv(src[1], scratch.data(), scratch.size(), 0) > 0) {
            }
        }
    });
    std::thread reader([&] {
        std::vector<uint8_t> buf(1 << 20);
        stream_parser parser;
        uint64_t index = 0;
        uint8_t expect[header_size];
        auto on_header = [&](const uint8_t* h) {
            index = parser.records;
            make_header(expect, index, size);
            if (std::memcmp(h, expect, header_size) != 0) {
                reader_error = "record " + std::to_string(index) + ": header differs";
                return false;
            }
            return true;
        };
        auto on_payload = [&](const uint8_t* p, size_t n, uint64_t pos) {
            if (std::memcmp(p, pat.bytes.data() + payload_offset(index, size) + pos, n) != 0) {
                reader_error = "record " + std::to_string(index) + ": payload differs";
                return false;
            }
            return true;
        };
        for (;;) {
            ssize_t n = ::recv(sink[1], buf.data(), buf.size(), 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                reader_error = std::string("reader: recv: ") + std::strerror(errno);
                break;
            }
            if (n == 0) {
                if (!parser.at_boundary()) reader_error = "reader: stream ended inside a record";
                break;
            }
            if (!parser.feed(buf.data(), size_t(n), on_header, on_payload)) {
                if (reader_error.empty()) reader_error = "reader: bad record mark";
                break;
            }
        }
        read_records = parser.records - (parser.at_boundary() ? 0 : 1);
        // After a failure keep draining, so that the forwarder and the writer
        // end at the run's time instead of a send timeout.
        if (!reader_error.empty())
            while (::recv(sink[1], buf.data(), buf.size(), 0) > 0) {
            }
    });

    std::this_thread::sleep_for(std::chrono::duration<double>(opt.seconds));
    stop = true;
    writer.join();
    forwarder.join();
    reader.join();
    const double wall = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (wssl) SSL_free(wssl);
    for (int fd : {src[0], src[1], sink[0], sink[1]}) ::close(fd);

    if (!reader_error.empty())
        r.why = reader_error;
    else if (!fs.error.empty())
        r.why = "forwarder: " + fs.error;
    else if (!writer_error.empty())
        r.why = writer_error;
    else if (read_records != written || fs.records != written)
        r.why = "records: written " + std::to_string(written) + ", forwarded " +
                std::to_string(fs.records) + ", read " + std::to_string(read_records);
    else if (written == 0)
        r.why = "no record went through";
    if (!r.why.empty()) return r;
    r.ok = true;
    r.records = written;
    const double bytes = double(written) * double(header_size + size);
    r.mb_per_s = bytes / wall / 1e6;
    r.cpu_us_per_mib = fs.cpu_s * 1e6 / (bytes / (1 << 20));
    r.syscalls_per_record = double(fs.syscalls) / double(written);
    return r;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

bool parse_args(int argc, char** argv, options& o) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        if (a == "--quick") {
            o.seconds = 0.2;
            o.repeat = 1;
        } else if (a == "--corrupt") {
            o.corrupt = true;
        } else if (a == "--seconds" || a == "--repeat" || a == "--sizes" || a == "--ktls") {
            const char* v = value();
            if (!v) return false;
            if (a == "--seconds")
                o.seconds = std::atof(v);
            else if (a == "--repeat")
                o.repeat = std::atoi(v);
            else if (a == "--ktls") {
                std::string k = v;
                if (k == "auto")
                    o.ktls = options::ktls_auto;
                else if (k == "on")
                    o.ktls = options::ktls_on;
                else if (k == "off")
                    o.ktls = options::ktls_off;
                else
                    return false;
            } else {
                o.sizes.clear();
                for (char* s = const_cast<char*>(v); *s;) {
                    char* end;
                    unsigned long n = std::strtoul(s, &end, 10);
                    if (end == s || n < 1) return false;
                    o.sizes.push_back(n);
                    s = *end == ',' ? end + 1 : end;
                }
            }
        } else {
            return false;
        }
    }
    return o.seconds > 0 && o.repeat > 0 && !o.sizes.empty();
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    if (!parse_args(argc, argv, opt)) {
        std::fprintf(stderr,
                     "usage: rpcgate-splice-bench [--seconds S] [--repeat N] [--sizes A,B,...] "
                     "[--ktls auto|on|off] [--quick] [--corrupt]\n");
        return 2;
    }
    bool with_tls = false;
    tls_contexts tc;
    if (opt.ktls != options::ktls_off) {
        with_tls = ktls::kernel_has_ktls();
        std::string err;
        if (with_tls && !tc.make(&err)) {
            std::fprintf(stderr, "rpcgate-splice-bench: %s\n", err.c_str());
            return 1;
        }
        if (!with_tls && opt.ktls == options::ktls_on) {
            std::fprintf(stderr, "rpcgate-splice-bench: --ktls on, but the kernel has no kTLS\n");
            return 1;
        }
        if (!with_tls) std::printf("# kTLS variants skipped: the kernel has no kTLS\n");
    }
    std::vector<const variant*> vs;
    for (const variant& v : all_variants)
        if (!v.tls || with_tls) vs.push_back(&v);

    std::printf(
        "# %.2f s per point, %d repeat(s), variants interleaved; MB = 10^6 bytes of "
        "records (mark + header + payload)\n",
        opt.seconds, opt.repeat);
    bool failed = false;
    for (size_t size : opt.sizes) {
        pattern pat(size);
        std::map<std::string, std::vector<double>> mbs, cpu, calls;
        for (int rep = 0; rep < opt.repeat; ++rep) {
            for (const variant* v : vs) {
                result r = run_one(*v, size, pat, opt, &tc);
                if (!r.ok) {
                    std::printf("FAIL size=%zu %s: %s\n", size, v->name, r.why.c_str());
                    failed = true;
                    continue;
                }
                std::printf(
                    "run size=%zu %-14s rep=%d records=%llu MB/s=%.1f cpu_us/MiB=%.1f "
                    "syscalls/record=%.2f\n",
                    size, v->name, rep, (unsigned long long)r.records, r.mb_per_s, r.cpu_us_per_mib,
                    r.syscalls_per_record);
                std::fflush(stdout);
                mbs[v->name].push_back(r.mb_per_s);
                cpu[v->name].push_back(r.cpu_us_per_mib);
                calls[v->name].push_back(r.syscalls_per_record);
            }
        }
        std::printf("\n%-9s %-14s %10s %14s %14s %12s %12s\n", "size", "variant", "MB/s",
                    "fwd-cpu-us/MiB", "syscalls/rec", "MB/s ratio", "cpu ratio");
        for (const variant* v : vs) {
            if (mbs[v->name].empty()) continue;
            std::string base = v->tls ? "ktls-copy-32k" : "copy-32k";
            double m = median(mbs[v->name]), c = median(cpu[v->name]);
            double bm = median(mbs[base]), bc = median(cpu[base]);
            std::printf("%-9zu %-14s %10.1f %14.1f %14.2f %12.2f %12.2f\n", size, v->name, m, c,
                        median(calls[v->name]), bm > 0 ? m / bm : 0, bc > 0 ? c / bc : 0);
        }
        std::printf("(ratios against %s of the same source)\n\n", "copy-32k");
        std::fflush(stdout);
    }
    if (failed) {
        std::printf("FAILED: bytes or records did not arrive intact (see FAIL lines)\n");
        return 1;
    }
    std::printf("OK: every record arrived byte-identical\n");
    return 0;
}
