// Shared by the kTLS tests (tests/unit/tls/ktls_test.cc and the gateway's
// kTLS tests): self-contained fixtures -- a certificate made in-process, a
// loopback TCP pair, the kernel's kTLS verdict -- so that the same binaries
// run in the qemu guest of tests/vm, which has no shell tools or openssl.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "tls/ktls.h"

namespace rpcgate::tls::ktls::test {

using clock_type = std::chrono::steady_clock;

// How long any one step of a test may block before it fails.
inline constexpr int io_timeout_ms = 10000;

inline int ms_left(clock_type::time_point deadline) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    return ms.count() > 0 ? static_cast<int>(ms.count()) : 0;
}

inline bool wait_fd(int fd, short events, clock_type::time_point deadline) {
    pollfd p{fd, events, 0};
    return ::poll(&p, 1, ms_left(deadline)) > 0;
}

// The kernel under test: kTLS or not (decided once; the VM insists on it).
inline bool have_ktls() {
    static const bool v = kernel_has_ktls();
    return v;
}
inline bool require_ktls() {
    const char* e = std::getenv("RPCGATE_REQUIRE_KTLS");
    return e && std::string(e) == "1";
}

// A self-signed EC certificate for "localhost", made in-process so that the
// test runs in the guest without the openssl program or a shell.
struct cert_files {
    std::string dir, cert, key;
    cert_files() {
        char tmpl[] = "/tmp/rpcgate-ktls.XXXXXX";
        if (!mkdtemp(tmpl)) return;
        dir = tmpl;
        cert = dir + "/cert.pem";
        key = dir + "/key.pem";
        EVP_PKEY* pk = EVP_EC_gen("P-256");
        X509* x = X509_new();
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
        X509_gmtime_adj(X509_getm_notBefore(x), -3600);
        X509_gmtime_adj(X509_getm_notAfter(x), 86400);
        X509_set_pubkey(x, pk);
        X509_NAME* n = X509_get_subject_name(x);
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
        X509_set_issuer_name(x, n);
        X509V3_CTX v3;
        X509V3_set_ctx_nodb(&v3);
        X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
        for (auto [nid, val] : {std::pair{NID_subject_alt_name, "DNS:localhost"},
                                std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
            X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, val);
            X509_add_ext(x, ext, -1);
            X509_EXTENSION_free(ext);
        }
        X509_sign(x, pk, EVP_sha256());
        FILE* f = std::fopen(cert.c_str(), "w");
        PEM_write_X509(f, x);
        std::fclose(f);
        f = std::fopen(key.c_str(), "w");
        PEM_write_PrivateKey(f, pk, nullptr, nullptr, 0, nullptr, nullptr);
        std::fclose(f);
        X509_free(x);
        EVP_PKEY_free(pk);
    }
    ~cert_files() {
        if (dir.empty()) return;
        std::remove(cert.c_str());
        std::remove(key.c_str());
        ::rmdir(dir.c_str());
    }
};

inline const cert_files& certs() {
    static const cert_files c;
    return c;
}

// A connected loopback TCP pair: `ours` (the gateway side) and `theirs`.
struct tcp_pair {
    int ours = -1, theirs = -1;
    explicit tcp_pair(int family = AF_INET) {
        sockaddr_storage a{};
        socklen_t al;
        if (family == AF_INET6) {
            auto* a6 = reinterpret_cast<sockaddr_in6*>(&a);
            a6->sin6_family = AF_INET6;
            a6->sin6_addr = in6addr_loopback;
            al = sizeof(*a6);
        } else {
            auto* a4 = reinterpret_cast<sockaddr_in*>(&a);
            a4->sin_family = AF_INET;
            a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            al = sizeof(*a4);
        }
        const socklen_t len = al;
        int l = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (::bind(l, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(l, 1) != 0 ||
            ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &al) != 0) {
            ::close(l);
            return;
        }
        theirs = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (::connect(theirs, reinterpret_cast<sockaddr*>(&a), len) == 0)
            ours = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
        ::close(l);
        // The peer blocks, but never for ever: a stuck test fails, it does not hang.
        timeval tv{io_timeout_ms / 1000, 0};
        ::setsockopt(theirs, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        ::setsockopt(theirs, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        int one = 1;
        ::setsockopt(theirs, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        ::setsockopt(ours, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    tcp_pair(const tcp_pair&) = delete;
    tcp_pair& operator=(const tcp_pair&) = delete;
    ~tcp_pair() {
        if (ours >= 0) ::close(ours);
        if (theirs >= 0) ::close(theirs);
    }
};

inline std::string random_bytes(size_t n) {
    std::string s(n, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(n));
    return s;
}

}  // namespace rpcgate::tls::ktls::test
