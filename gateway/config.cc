#include "gateway/config.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "dpdk/backend.h"
#include "gateway/config_parse.h"
#include "rpc/portmap.h"
#include "tls/context.h"

namespace rpcgate::gw {

using detail::parse_tls_policy;

uint16_t endpoint::port() const noexcept {
    if (addr.ss_family == AF_INET)
        return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
    if (addr.ss_family == AF_INET6)
        return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
    return 0;
}

void endpoint::set_port(uint16_t p) noexcept {
    if (addr.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&addr)->sin_port = htons(p);
    if (addr.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = htons(p);
}

bool parse_endpoint(const std::string& text, endpoint* out, std::string* err) {
    std::string host, port;
    if (!text.empty() && text[0] == '[') {
        size_t close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            *err = fmt::format("'{}': expected [ADDRESS]:PORT", text);
            return false;
        }
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        size_t colon = text.rfind(':');
        if (colon == std::string::npos) {
            host = "0.0.0.0";
            port = text;
        } else {
            host = text.substr(0, colon);
            port = text.substr(colon + 1);
        }
    }
    if (host.empty() || host == "*") host = "0.0.0.0";
    char* end = nullptr;
    unsigned long p = std::strtoul(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p > 65535) {
        *err = fmt::format("'{}': bad port '{}'", text, port);
        return false;
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0 || !res) {
        *err = fmt::format("'{}': cannot resolve '{}': {}", text, host, gai_strerror(rc));
        return false;
    }
    std::memcpy(&out->addr, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    out->text = text;
    ::freeaddrinfo(res);
    return true;
}

bool parse_backend(const std::string& text, backend_route* out, std::string* err) {
    size_t eq = text.find('=');
    if (eq == std::string::npos) {
        *err =
            fmt::format("--backend '{}': expected PROG=HOST:PORT (e.g. nfs=10.0.0.5:2049)", text);
        return false;
    }
    auto prog = rpc::parse_program(text.substr(0, eq));
    if (!prog) {
        *err = fmt::format(
            "--backend '{}': unknown program '{}' (a number or a name such as "
            "nfs, mount, nlm, nsm, portmap, nfs_acl)",
            text, text.substr(0, eq));
        return false;
    }
    out->prog = *prog;
    out->spec = text;
    // HOST:PORT, then ",key=value" options.
    std::string rest = text.substr(eq + 1);
    size_t comma = rest.find(',');
    std::string addr = rest.substr(0, comma);
    while (comma != std::string::npos) {
        size_t next = rest.find(',', comma + 1);
        std::string opt = rest.substr(
            comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1);
        comma = next;
        size_t oe = opt.find('=');
        std::string k = opt.substr(0, oe), v = oe == std::string::npos ? "" : opt.substr(oe + 1);
        if (oe == std::string::npos || v.empty()) {
            *err = fmt::format("--backend '{}': option '{}' needs a value (KEY=VALUE)", text, opt);
            return false;
        }
        if (k == "tls") {
            if (!parse_tls_policy(v, &out->tls.mode, err, "--backend tls=")) return false;
            out->tls_set = true;
        } else if (k == "vers") {
            char* end = nullptr;
            unsigned long n = std::strtoul(v.c_str(), &end, 10);
            if (*end != '\0' || n == 0 || n > UINT32_MAX) {
                *err = fmt::format("--backend '{}': vers={} is not a program version (1..{})", text,
                                   v, UINT32_MAX);
                return false;
            }
            out->vers = uint32_t(n);
        } else if (k == "name") {
            out->tls.server_name = v;
        } else if (k == "ca") {
            out->tls.ca = v;
        } else if (k == "cert") {
            out->tls.cert = v;
        } else if (k == "key") {
            out->tls.key = v;
        } else {
            *err = fmt::format(
                "--backend '{}': unknown option '{}' (vers, tls, name, ca, cert, key)", text, k);
            return false;
        }
    }
    std::string e;
    if (!parse_endpoint(addr, &out->target, &e)) {
        *err = "--backend " + e;
        return false;
    }
    // The host as written: "[v6]:port" -> v6, "name:port" -> name.
    if (!addr.empty() && addr.front() == '[') {
        out->host = addr.substr(1, addr.find(']') - 1);
    } else {
        size_t colon = addr.rfind(':');
        out->host = colon == std::string::npos ? std::string() : addr.substr(0, colon);
    }
    return true;
}

bool program_set::contains(uint32_t prog) const noexcept {
    if (all) return true;
    for (uint32_t p : progs)
        if (p == prog) return true;
    return false;
}

program_set default_tls_programs() {
    return program_set{false, {rpc::nfs_prog, rpc::nfs_acl_prog}};
}

bool parse_program_set(const std::string& text, program_set* out, std::string* err,
                       const char* what) {
    program_set s;
    if (text == "all") {
        s.all = true;
        *out = s;
        return true;
    }
    size_t at = 0;
    while (at <= text.size()) {
        size_t comma = text.find(',', at);
        std::string item =
            text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
        auto prog = rpc::parse_program(item);
        if (!prog) {
            *err = fmt::format(
                "{} '{}': '{}' is not a program (a number or a name such as nfs, nfs_acl, "
                "mount, nlm, nsm, portmap; or 'all')",
                what, text, item);
            return false;
        }
        if (!s.contains(*prog)) s.progs.push_back(*prog);
        if (comma == std::string::npos) break;
        at = comma + 1;
    }
    *out = s;
    return true;
}

std::string program_set_text(const program_set& s) {
    if (s.all) return "all";
    std::string out;
    for (uint32_t p : s.progs) {
        if (!out.empty()) out += ',';
        std::string_view name = rpc::program_name_of(p);
        out += name.empty() ? std::to_string(p) : std::string(name);
    }
    return out.empty() ? "none" : out;
}

const char* tls_policy_name(tls_policy m) noexcept {
    switch (m) {
        case tls_policy::off:
            return "off";
        case tls_policy::opportunistic:
            return "opportunistic";
        case tls_policy::required:
            return "required";
        case tls_policy::mtls:
            return "mtls";
    }
    return "?";
}

namespace detail {

bool parse_tls_policy(const std::string& s, tls_policy* out, std::string* err, const char* what) {
    for (tls_policy m :
         {tls_policy::off, tls_policy::opportunistic, tls_policy::required, tls_policy::mtls}) {
        if (s == tls_policy_name(m)) {
            *out = m;
            return true;
        }
    }
    *err = fmt::format("{} '{}': expected off, opportunistic, required or mtls", what, s);
    return false;
}

bool parse_port_range(const std::string& s, uint16_t* low, uint16_t* high, std::string* err,
                      const char* what) {
    unsigned lo = 0, hi = 0;
    char dash = 0, extra = 0;
    if (std::sscanf(s.c_str(), "%u%c%u%c", &lo, &dash, &hi, &extra) != 3 || dash != '-' || lo < 1 ||
        lo > hi || hi > 1023) {
        *err = fmt::format("{} '{}': expected LOW-HIGH with 1 <= LOW <= HIGH <= 1023", what, s);
        return false;
    }
    *low = uint16_t(lo);
    *high = uint16_t(hi);
    return true;
}

// Sizes accept K/M/G suffixes (powers of two).
bool parse_size(const std::string& s, uint64_t* out, std::string* err, const char* what) {
    char* end = nullptr;
    unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (end == s.c_str()) {
        *err = fmt::format("{} '{}': not a size", what, s);
        return false;
    }
    std::string suf(end);
    if (suf == "K" || suf == "k" || suf == "KiB")
        v <<= 10;
    else if (suf == "M" || suf == "MiB")
        v <<= 20;
    else if (suf == "G" || suf == "GiB")
        v <<= 30;
    else if (!suf.empty()) {
        *err = fmt::format("{} '{}': unknown suffix '{}' (K, M, G)", what, s, suf);
        return false;
    }
    *out = v;
    return true;
}

}  // namespace detail

bool validate(gateway_config* cfg, std::string* err) {
    if (cfg->io_backend == "dpdk" && !dpdk::available()) {
        *err =
            "--io-backend dpdk: this build has no DPDK (configure with -DRPCGATE_WITH_DPDK=ON; "
            "see scripts/test-dpdk.sh)";
        return false;
    }
    if (cfg->listen.empty() && cfg->implicit_tls.empty()) {
        *err = "no --listen address given (e.g. --listen 0.0.0.0:2049)";
        return false;
    }
    if (cfg->backends.empty()) {
        *err = "no --backend given (e.g. --backend nfs=10.0.0.5:2049)";
        return false;
    }
    for (size_t i = 0; i < cfg->backends.size(); ++i)
        for (size_t j = 0; j < i; ++j)
            if (cfg->backends[i].prog == cfg->backends[j].prog &&
                cfg->backends[i].vers == cfg->backends[j].vers) {
                *err =
                    fmt::format("program {} is routed twice ('{}' and '{}')", cfg->backends[i].prog,
                                cfg->backends[j].spec, cfg->backends[i].spec);
                return false;
            }
    if (cfg->shards == 0) cfg->shards = std::max(1u, std::thread::hardware_concurrency());
    if (cfg->shards > 256) {
        *err = "--shards must be between 1 and 256";
        return false;
    }
    if (cfg->buffers == 0 || (cfg->buffers & (cfg->buffers - 1)) || cfg->buffers > 32768) {
        *err = "--buffers must be a power of two between 1 and 32768";
        return false;
    }
    if (cfg->buffer_size < 512 || cfg->buffer_size > (1u << 20)) {
        *err = "--buffer-size must be between 512 and 1048576 bytes";
        return false;
    }
    if (cfg->max_record < 64) {
        *err = "--max-record must be at least 64 bytes";
        return false;
    }
    if (cfg->max_inflight < 64 * 1024) {
        *err = "--max-inflight must be at least 64 KiB";
        return false;
    }
    bool tls_used = cfg->tls != tls_policy::off || !cfg->implicit_tls.empty() || cfg->tls_auto;
    if (tls_used && (cfg->cert.empty() || cfg->key.empty())) {
        *err = fmt::format("--tls {}{} needs --cert and --key", tls_policy_name(cfg->tls),
                           cfg->implicit_tls.empty() ? "" : " / --implicit-tls");
        return false;
    }
    if (cfg->tls == tls_policy::mtls && cfg->ca.empty()) {
        *err = "--tls mtls needs --ca (the CA that signs client certificates)";
        return false;
    }
    if (cfg->ktls != "auto" && cfg->ktls != "off" && cfg->ktls != "on") {
        *err = fmt::format("--ktls must be auto, off or on, not '{}'", cfg->ktls);
        return false;
    }
    if (cfg->ktls_tx_record_size != 0 &&
        (cfg->ktls_tx_record_size < 64 || cfg->ktls_tx_record_size > 16384)) {
        *err = fmt::format("--ktls-tx-record-size must be 64..16384 bytes (RFC 8449), not {}",
                           cfg->ktls_tx_record_size);
        return false;
    }
    if (cfg->tls_min_version != "1.3" && cfg->tls_min_version != "1.2") {
        *err = fmt::format("--tls-min-version must be 1.3 or 1.2, not '{}'", cfg->tls_min_version);
        return false;
    }
    if (cfg->tls_record_layer != "own" && cfg->tls_record_layer != "openssl") {
        *err = fmt::format("--tls-record-layer must be own or openssl, not '{}'",
                           cfg->tls_record_layer);
        return false;
    }
    if (!cfg->tls_ciphersuites.empty() && !tls::check_ciphersuites(cfg->tls_ciphersuites, err)) {
        *err = "--tls-ciphersuites / tls_ciphersuites: " + *err;
        return false;
    }
    if (cfg->handshake_timeout_ms < 100) {
        *err = "--handshake-timeout must be at least 100 ms";
        return false;
    }
    // Each backend's effective upstream TLS: its own options over the defaults.
    for (backend_route& r : cfg->backends) {
        upstream_tls& u = r.tls;
        const upstream_tls& d = cfg->upstream;
        if (!r.tls_set) u.mode = d.mode;
        if (u.ca.empty()) u.ca = d.ca;
        if (u.cert.empty()) u.cert = d.cert;
        if (u.key.empty()) u.key = d.key;
        if (u.server_name.empty()) u.server_name = d.server_name;
        if (u.server_name.empty()) u.server_name = r.host;
        u.alpn_strict = d.alpn_strict;
        if (u.mode == tls_policy::off) continue;
        if (u.ca.empty()) {
            *err = fmt::format(
                "backend '{}': upstream TLS {} needs a CA to verify the server "
                "(--upstream-ca or ca=FILE in the backend)",
                r.spec, tls_policy_name(u.mode));
            return false;
        }
        if (u.server_name.empty()) {
            *err = fmt::format(
                "backend '{}': no server name to verify (--upstream-server-name "
                "or name=NAME in the backend)",
                r.spec);
            return false;
        }
        if (u.server_name.find('*') != std::string::npos) {
            // The client role matches names exactly (no wildcard matching,
            // tls/context.h): a pattern here could never match.
            *err = fmt::format(
                "backend '{}': server name '{}' has a wildcard; give the exact name the "
                "server's certificate carries (its DNS-ID or IP SAN)",
                r.spec, u.server_name);
            return false;
        }
        if (u.mode == tls_policy::mtls && (u.cert.empty() || u.key.empty())) {
            *err = fmt::format(
                "backend '{}': upstream TLS mtls needs a client certificate and "
                "key (--upstream-cert/--upstream-key or cert=/key= in the backend)",
                r.spec);
            return false;
        }
        if (u.cert.empty() != u.key.empty()) {
            *err = fmt::format(
                "backend '{}': an upstream client certificate needs its key, and "
                "a key its certificate",
                r.spec);
            return false;
        }
        for (const std::string* f : {&u.ca, &u.cert, &u.key}) {
            if (!f->empty() && ::access(f->c_str(), R_OK) != 0) {
                *err = fmt::format("backend '{}': cannot read '{}': {}", r.spec, *f,
                                   std::strerror(errno));
                return false;
            }
        }
    }
    if (!cfg->admin.empty()) {
        endpoint ep;
        if (!parse_endpoint(cfg->admin, &ep, err)) {
            *err = "--admin " + *err;
            return false;
        }
    }
    if (!cfg->cert_user_map.empty() && !tls_used) {
        *err = "--cert-user-map needs TLS (--tls or --implicit-tls)";
        return false;
    }
    for (const std::string* f : {&cfg->cert, &cfg->key, &cfg->ca, &cfg->crl, &cfg->cert_user_map}) {
        if (!f->empty() && ::access(f->c_str(), R_OK) != 0) {
            *err = fmt::format("cannot read '{}': {}", *f, std::strerror(errno));
            return false;
        }
    }
    return true;
}

}  // namespace rpcgate::gw
