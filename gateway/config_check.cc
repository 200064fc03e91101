#include "gateway/config_check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cstdio>
#include <cstring>
#include <memory>

#include "rpc/portmap.h"
#include "tls/identity_map.h"

namespace rpcgate::gw {

tls::server_options server_tls_options(const gateway_config& cfg) {
    tls::server_options o;
    o.cert_file = cfg.cert;
    o.key_file = cfg.key;
    o.ca_file = cfg.ca;
    o.crl_file = cfg.crl;
    o.require_client_cert = cfg.tls == tls_policy::mtls;
    o.alpn_strict = cfg.alpn_strict;
    if (cfg.tls_min_version == "1.2") o.min_version = TLS1_2_VERSION;
    o.ciphers.ciphersuites =
        cfg.tls_ciphersuites.empty() ? tls::preferred_ciphersuites() : cfg.tls_ciphersuites;
    o.ciphers.openssl_records = cfg.tls_record_layer == "openssl";
    return o;
}

tls::client_options upstream_tls_options(const gateway_config& cfg, const backend_route& r) {
    tls::client_options o;
    o.ca_file = r.tls.ca;
    o.cert_file = r.tls.cert;
    o.key_file = r.tls.key;
    o.server_name = r.tls.server_name;
    o.require_alpn = r.tls.alpn_strict;
    o.ciphers.ciphersuites =
        cfg.tls_ciphersuites.empty() ? tls::preferred_ciphersuites() : cfg.tls_ciphersuites;
    o.ciphers.openssl_records = cfg.tls_record_layer == "openssl";
    return o;
}

namespace {

std::string asn1_time_text(const ASN1_TIME* t) {
    BIO* b = BIO_new(BIO_s_mem());
    ASN1_TIME_print(b, t);
    char* data = nullptr;
    long n = BIO_get_mem_data(b, &data);
    std::string s(data, size_t(n));
    BIO_free(b);
    return s;
}

// Every certificate of a PEM file, judged at `now`: expired, not valid yet,
// or expiring within cert_expiry_warning_days become warnings. `what` names
// the option the file came from.
void check_validity(const std::string& path, const char* what, std::time_t now, check_report* r) {
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f) return;  // the context load has reported it
    std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> t_now(ASN1_TIME_set(nullptr, now),
                                                                ASN1_TIME_free);
    while (X509* c = PEM_read_X509(f, nullptr, nullptr, nullptr)) {
        char subject[256];
        X509_NAME_oneline(X509_get_subject_name(c), subject, sizeof subject);
        const ASN1_TIME* not_after = X509_get0_notAfter(c);
        const ASN1_TIME* not_before = X509_get0_notBefore(c);
        int days = 0, secs = 0;
        if (ASN1_TIME_diff(&days, &secs, t_now.get(), not_after)) {
            if (days < 0 || (days == 0 && secs < 0)) {
                r->warnings.push_back(fmt::format("{} {}: certificate '{}' expired on {}", what,
                                                  path, subject, asn1_time_text(not_after)));
            } else if (days < cert_expiry_warning_days) {
                r->warnings.push_back(
                    fmt::format("{} {}: certificate '{}' expires on {} (in {} day(s))", what, path,
                                subject, asn1_time_text(not_after), days));
            }
        }
        if (ASN1_TIME_diff(&days, &secs, t_now.get(), not_before) && (days > 0 || secs > 0)) {
            r->warnings.push_back(fmt::format("{} {}: certificate '{}' is not valid before {}",
                                              what, path, subject, asn1_time_text(not_before)));
        }
        X509_free(c);
    }
    std::fclose(f);
    ERR_clear_error();  // the read that ends the loop leaves "no start line"
}

bool is_loopback(const endpoint& ep) {
    if (ep.addr.ss_family == AF_INET) {
        auto* a = reinterpret_cast<const sockaddr_in*>(&ep.addr);
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (ep.addr.ss_family == AF_INET6) {
        auto* a = reinterpret_cast<const sockaddr_in6*>(&ep.addr);
        if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr)) return true;
        return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && a->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

std::string address_text(const endpoint& ep) {
    char host[INET6_ADDRSTRLEN] = "?";
    if (ep.addr.ss_family == AF_INET)
        ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ep.addr)->sin_addr, host,
                    sizeof host);
    else if (ep.addr.ss_family == AF_INET6)
        ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ep.addr)->sin6_addr, host,
                    sizeof host);
    return ep.addr.ss_family == AF_INET6 ? fmt::format("[{}]:{}", host, ep.port())
                                         : fmt::format("{}:{}", host, ep.port());
}

std::string program_label(uint32_t prog) {
    std::string_view name = rpc::program_name_of(prog);
    return name.empty() ? std::to_string(prog) : std::string(name);
}

// The audit log is created by a start, never by a check: only look at where
// it would go.
void check_audit_log(const std::string& path, check_report* r) {
    if (path.empty()) return;
    if (::access(path.c_str(), F_OK) == 0) {
        if (::access(path.c_str(), W_OK) != 0)
            r->errors.push_back(
                fmt::format("--audit-log {}: not writable: {}", path, std::strerror(errno)));
        return;
    }
    size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : path.substr(0, slash ? slash : 1);
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        r->warnings.push_back(fmt::format(
            "--audit-log {}: the directory {} does not exist; a start fails unless it is "
            "created first (systemd: LogsDirectory=)",
            path, dir));
    } else if (::access(dir.c_str(), W_OK) != 0) {
        r->errors.push_back(fmt::format("--audit-log {}: cannot create it in {}: {}", path, dir,
                                        std::strerror(errno)));
    }
}

}  // namespace

check_report check_config(const gateway_config& cfg, std::time_t now) {
    check_report r;
    std::string err;
    // The listeners' TLS material, loaded as a start loads it.
    bool tls_used = cfg.tls != tls_policy::off || !cfg.implicit_tls.empty() || cfg.tls_auto;
    if (tls_used) {
        if (!tls::context::make_server(server_tls_options(cfg), &err))
            r.errors.push_back("TLS: " + err);
        check_validity(cfg.cert, "--cert", now, &r);
        if (!cfg.ca.empty()) check_validity(cfg.ca, "--ca", now, &r);
        if (!cfg.cert_user_map.empty()) {
            tls::identity_map map;
            if (!map.load(cfg.cert_user_map, &err)) r.errors.push_back("--cert-user-map: " + err);
        }
        if (cfg.tls_min_version == "1.2")
            r.warnings.push_back(
                "--tls-min-version 1.2 is outside RFC 9289 (TLS 1.3 or later): for NIC "
                "offload evaluation only");
    }
    if (cfg.tls < tls_policy::required &&
        program_set_text(cfg.tls_programs) != program_set_text(default_tls_programs()))
        r.warnings.push_back(fmt::format(
            "--require-tls-for {} has no effect with --tls {} (it applies to required and mtls)",
            program_set_text(cfg.tls_programs), tls_policy_name(cfg.tls)));
    for (const backend_route& b : cfg.backends) {
        r.notes.push_back(
            fmt::format("backend {} -> {}{}", program_label(b.prog), address_text(b.target),
                        b.tls.mode == tls_policy::off
                            ? ""
                            : fmt::format(" (upstream TLS {}, server name {})",
                                          tls_policy_name(b.tls.mode), b.tls.server_name)));
        if (b.tls.mode == tls_policy::off) continue;
        if (!tls::context::make_client(upstream_tls_options(cfg, b), &err))
            r.errors.push_back(fmt::format("backend '{}': upstream TLS: {}", b.spec, err));
        check_validity(b.tls.ca, "upstream CA", now, &r);
        if (!b.tls.cert.empty()) check_validity(b.tls.cert, "upstream client certificate", now, &r);
        if (b.prog != rpc::nfs_prog && b.prog != rpc::nfs_acl_prog &&
            b.tls.mode >= tls_policy::required)
            r.warnings.push_back(fmt::format(
                "backend '{}': upstream TLS {} for {}: servers protect only NFS with TLS "
                "(knfsd's xprtsec=; rpc.mountd, lockd and statd speak plaintext): add tls=off "
                "to this backend unless its server is known to do RPC-with-TLS",
                b.spec, tls_policy_name(b.tls.mode), program_label(b.prog)));
    }
    if (!cfg.admin.empty()) {
        endpoint ep;
        if (parse_endpoint(cfg.admin, &ep, &err) && !is_loopback(ep))
            r.warnings.push_back(fmt::format(
                "--admin {} is not a loopback address: /metrics, /connections and POST /reload "
                "have no authentication; keep it on 127.0.0.1 or ::1 (or firewall it)",
                cfg.admin));
    }
    check_audit_log(cfg.audit_log, &r);
    return r;
}

}  // namespace rpcgate::gw
