#include "tls/client/tests/test_support.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "rpc/portmap.h"
#include "rpc/record.h"
#include "tls/context.h"
#include "tls/session.h"

namespace rpcgate::client::testing {
namespace {

EVP_PKEY* new_key() {
    return EVP_EC_gen("P-256");
}

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    if (ext) {
        X509_add_ext(cert, ext, -1);
        X509_EXTENSION_free(ext);
    }
}

X509* new_cert(EVP_PKEY* key, const char* cn, X509* issuer, EVP_PKEY* issuer_key, long serial) {
    X509* c = X509_new();
    X509_set_version(c, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c), serial);
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c), 86400L * 30);
    X509_set_pubkey(c, key);
    X509_NAME* n = X509_get_subject_name(c);
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("rpcgate tests"), -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn),
                               -1, -1, 0);
    X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : n);
    X509* iss = issuer ? issuer : c;
    if (!issuer) {
        add_ext(c, iss, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(c, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
        add_ext(c, iss, NID_subject_key_identifier, "hash");
    } else {
        add_ext(c, iss, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(c, iss, NID_authority_key_identifier, "keyid");
        add_ext(c, iss, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
        add_ext(c, iss, NID_ext_key_usage, "serverAuth,clientAuth");
    }
    X509_sign(c, issuer_key ? issuer_key : key, EVP_sha256());
    return c;
}

bool write_pem(const std::string& path, X509* cert, EVP_PKEY* key) {
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) return false;
    bool ok = cert ? PEM_write_X509(f, cert) == 1
                   : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
    std::fclose(f);
    return ok;
}

bool send_all(int fd, const core::slice_chain& c) {
    for (const core::slice& s : c) {
        size_t off = 0;
        while (off < s.size()) {
            ssize_t w = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
            if (w <= 0) return false;
            off += size_t(w);
        }
    }
    return true;
}

// One recv with a 5-second cap; empty slice on EOF, error or timeout.
core::slice recv_some(int fd) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return {};
    core::slice b = core::slice::allocate(64 * 1024);
    ssize_t n = ::recv(fd, b.mutable_data(), b.size(), 0);
    if (n <= 0) return {};
    b.trim(size_t(n));
    return b;
}

}  // namespace

test_pki make_test_pki() {
    test_pki p;
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp ? tmp : "/tmp") + "/rpcgate-pki.XXXXXX";
    if (!::mkdtemp(templ.data())) return p;
    p.dir = templ;
    p.ca_cert = p.dir + "/ca.pem";
    p.ca_key = p.dir + "/ca.key";
    p.server_cert = p.dir + "/server.pem";
    p.server_key = p.dir + "/server.key";
    p.client_cert = p.dir + "/client.pem";
    p.client_key = p.dir + "/client.key";
    EVP_PKEY* ca_key = new_key();
    EVP_PKEY* srv_key = new_key();
    EVP_PKEY* cli_key = new_key();
    X509* ca = new_cert(ca_key, "rpcgate test CA", nullptr, nullptr, 1);
    X509* srv = new_cert(srv_key, "localhost", ca, ca_key, 2);
    X509* cli = new_cert(cli_key, "client", ca, ca_key, 3);
    bool ok = write_pem(p.ca_cert, ca, nullptr) && write_pem(p.ca_key, nullptr, ca_key) &&
              write_pem(p.server_cert, srv, nullptr) && write_pem(p.server_key, nullptr, srv_key) &&
              write_pem(p.client_cert, cli, nullptr) && write_pem(p.client_key, nullptr, cli_key);
    X509_free(ca);
    X509_free(srv);
    X509_free(cli);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(srv_key);
    EVP_PKEY_free(cli_key);
    if (!ok) p.dir.clear();
    return p;
}

void remove_test_pki(const test_pki& pki) {
    std::error_code ec;
    if (!pki.dir.empty()) std::filesystem::remove_all(pki.dir, ec);
}

tls_test_server::tls_test_server(const test_pki& pki, server_behavior b) : pki_(pki), behavior_(b) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), len) < 0 ||
        ::listen(listen_fd_, 64) < 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) < 0)
        return;
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
}

tls_test_server::~tls_test_server() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
}

void tls_test_server::run() {
    while (!stop_.load()) {
        pollfd p{listen_fd_, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) continue;
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(fd);
        ::close(fd);
    }
}

void tls_test_server::serve(int fd) {
    core::slice_chain after_probe;
    if (behavior_ != server_behavior::implicit) {
        // Read the probe; answer it the configured way.
        rpc::record_reassembler rr;
        bool got = false;
        uint32_t xid = 0;
        while (!got) {
            core::slice s = recv_some(fd);
            if (s.empty()) return;
            auto fed = rr.feed(s, [&](core::slice_chain&& rec) {
                auto call = rpc::decode_call(rec);
                if (!call || rpc::classify_auth_tls(call->header) != rpc::auth_tls_use::probe)
                    return false;
                xid = call->header.xid;
                got = true;
                return false;
            });
            if (!fed) return;
            if (got && *fed < s.size()) after_probe.push_back(s.share(*fed, s.size() - *fed));
            if (!got && *fed < s.size()) return;
        }
        switch (behavior_) {
            case server_behavior::rejectedcred:
                send_all(fd, core::slice_chain(rpc::build_reply(rpc::reply_header::auth_error(
                                 xid, rpc::auth_stat::rejectedcred))));
                return;
            case server_behavior::no_token:
                send_all(fd, core::slice_chain(rpc::build_null_reply(xid)));
                return;
            case server_behavior::close_on_probe:
                return;
            default:
                break;
        }
        if (!send_all(fd, core::slice_chain(rpc::build_starttls_reply(xid)))) return;
    }
    tls::server_options so;
    so.cert_file = pki_.server_cert;
    so.key_file = pki_.server_key;
    so.ca_file = pki_.ca_cert;
    std::string err;
    auto ctx = tls::context::make_server(so, &err);
    if (!ctx) return;
    auto sess = tls::session::make(*ctx, &err);
    if (!sess) return;
    if (!after_probe.empty()) sess->feed(std::move(after_probe));
    for (;;) {
        core::slice_chain out;
        tls::status st = sess->handshake(out);
        if (!send_all(fd, out)) return;
        if (st == tls::status::done) break;
        if (st != tls::status::ok) return;
        core::slice s = recv_some(fd);
        if (s.empty()) return;
        sess->feed(std::move(s));
    }
    ++handshakes_;
    if (behavior_ == server_behavior::silent_over_tls) {
        while (!recv_some(fd).empty()) {
        }
        return;
    }
    rpc::record_reassembler rr;
    for (;;) {
        core::slice_chain plain, out;
        tls::status st = sess->read(plain, out);
        if (!send_all(fd, out) || st == tls::status::error || st == tls::status::closed) return;
        core::slice_chain replies;
        bool close_now = false;
        for (const core::slice& p : plain) {
            auto fed = rr.feed(p, [&](core::slice_chain&& rec) {
                auto call = rpc::decode_call(rec);
                if (!call) return false;
                if (behavior_ == server_behavior::close_at_call) {
                    close_now = true;
                    return false;
                }
                if (behavior_ == server_behavior::not_routed) {
                    replies.append(core::slice_chain(rpc::build_reply(rpc::reply_header::accepted(
                        call->header.xid, rpc::accept_stat::prog_unavail))));
                    return true;
                }
                if (call->header.proc == 0) ++nulls_;
                replies.append(core::slice_chain(rpc::build_null_reply(call->header.xid)));
                return true;
            });
            if (!fed || close_now) return;  // the caller closes the connection
        }
        if (!replies.empty()) {
            core::slice_chain enc;
            if (sess->write(replies, enc) == tls::status::error || !send_all(fd, enc)) return;
        }
        core::slice s = recv_some(fd);
        if (s.empty()) return;
        sess->feed(std::move(s));
    }
}

}  // namespace rpcgate::client::testing
