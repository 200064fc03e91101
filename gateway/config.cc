#include "gateway/config.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <unistd.h>

#include <fmt/format.h>
#include <toml++/toml.h>
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>

#include "dpdk/backend.h"
#include "rpc/portmap.h"

namespace rpcgate::gw {

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

namespace {
bool parse_tls_policy(const std::string& s, tls_policy* out, std::string* err, const char* what);
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

namespace {

bool parse_tls_policy(const std::string& s, tls_policy* out, std::string* err,
                      const char* what = "--tls") {
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

// The TOML keys; every one mirrors a long option.
template <typename T>
bool toml_get(const toml::table& t, const char* key, T* out, std::string* err) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    // value_exact: no conversion (a float such as 4.2e124 into int64_t would be
    // undefined; the config fuzzer found it).
    if (auto v = n->value_exact<T>()) {
        *out = *v;
        return true;
    }
    *err = fmt::format("config key '{}' has the wrong type", key);
    return false;
}

bool toml_strings(const toml::table& t, const char* key, std::vector<std::string>* out,
                  std::string* err) {
    const toml::node* n = t.get(key);
    if (!n) return true;
    if (auto s = n->value<std::string>()) {
        out->push_back(*s);
        return true;
    }
    if (const toml::array* a = n->as_array()) {
        for (const auto& e : *a) {
            auto s = e.value<std::string>();
            if (!s) {
                *err = fmt::format("config key '{}' must hold strings", key);
                return false;
            }
            out->push_back(*s);
        }
        return true;
    }
    *err = fmt::format("config key '{}' must be a string or an array of strings", key);
    return false;
}

}  // namespace

bool load_config_file(const std::string& path, gateway_config* cfg, std::string* err) {
    toml::table t;
    try {
        t = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        const auto& src = e.source();
        *err = fmt::format("{}:{}:{}: {}", path, src.begin.line, src.begin.column, e.description());
        return false;
    }
    static const char* known[] = {"listen",
                                  "backend",
                                  "backends",
                                  "shards",
                                  "tls",
                                  "cert",
                                  "key",
                                  "ca",
                                  "crl",
                                  "admin",
                                  "upstream_tls",
                                  "reserved_port",
                                  "portmap",
                                  "idle_timeout",
                                  "connect_timeout",
                                  "drain_timeout",
                                  "max_connections",
                                  "max_record",
                                  "max_inflight",
                                  "buffers",
                                  "buffer_size",
                                  "log_level",
                                  "implicit_tls",
                                  "alpn_strict",
                                  "handshake_timeout",
                                  "cert_user_map",
                                  "tls_auto",
                                  "audit_log",
                                  "upstream_ca",
                                  "upstream_cert",
                                  "upstream_key",
                                  "upstream_server_name",
                                  "upstream_alpn_strict",
                                  "max_connections_per_source",
                                  "handshake_rate_per_source",
                                  "handshake_burst_per_source",
                                  "ktls",
                                  "tls_rekey_after",
                                  "tls_min_version"};
    for (const auto& [k, v] : t) {
        bool ok = false;
        for (const char* name : known) ok |= k.str() == name;
        if (!ok) {
            *err = fmt::format("{}: unknown key '{}'", path, k.str());
            return false;
        }
    }
    std::vector<std::string> listen, backends, implicit;
    if (!toml_strings(t, "listen", &listen, err)) return false;
    if (!toml_strings(t, "implicit_tls", &implicit, err)) return false;
    for (const auto& l : implicit) {
        endpoint ep;
        if (!parse_endpoint(l, &ep, err)) return false;
        cfg->implicit_tls.push_back(ep);
    }
    if (!toml_strings(t, "backend", &backends, err)) return false;
    if (const toml::table* b = t["backends"].as_table()) {
        // [backends] nfs = "10.0.0.5:2049"
        for (const auto& [k, v] : *b) {
            auto s = v.value<std::string>();
            if (!s) {
                *err = fmt::format("{}: backends.{} must be \"HOST:PORT\"", path, k.str());
                return false;
            }
            backends.push_back(std::string(k.str()) + "=" + *s);
        }
    }
    for (const auto& l : listen) {
        endpoint ep;
        if (!parse_endpoint(l, &ep, err)) return false;
        cfg->listen.push_back(ep);
    }
    for (const auto& b : backends) {
        backend_route r;
        if (!parse_backend(b, &r, err)) return false;
        cfg->backends.push_back(r);
    }
    int64_t i = 0;
    std::string s;
    bool b = false;
#define RPCGATE_TOML_INT(key, field)                                                         \
    i = int64_t(cfg->field);                                                                 \
    if (!toml_get<int64_t>(t, key, &i, err)) return false;                                   \
    if (i < 0 || uint64_t(i) > uint64_t(std::numeric_limits<decltype(cfg->field)>::max())) { \
        *err = fmt::format("{}: '{}' must be between 0 and {}", path, key,                   \
                           std::numeric_limits<decltype(cfg->field)>::max());                \
        return false;                                                                        \
    }                                                                                        \
    cfg->field = decltype(cfg->field)(i);
    RPCGATE_TOML_INT("shards", shards)
    RPCGATE_TOML_INT("idle_timeout", idle_timeout_s)
    RPCGATE_TOML_INT("connect_timeout", connect_timeout_ms)
    RPCGATE_TOML_INT("drain_timeout", drain_timeout_ms)
    RPCGATE_TOML_INT("max_connections", max_connections)
    RPCGATE_TOML_INT("max_record", max_record)
    RPCGATE_TOML_INT("max_inflight", max_inflight)
    RPCGATE_TOML_INT("buffers", buffers)
    RPCGATE_TOML_INT("buffer_size", buffer_size)
    RPCGATE_TOML_INT("handshake_timeout", handshake_timeout_ms)
    RPCGATE_TOML_INT("tls_rekey_after", tls_rekey_after)
    RPCGATE_TOML_INT("max_connections_per_source", max_connections_per_source)
    RPCGATE_TOML_INT("handshake_rate_per_source", handshake_rate_per_source)
    RPCGATE_TOML_INT("handshake_burst_per_source", handshake_burst_per_source)
#undef RPCGATE_TOML_INT
    s = tls_policy_name(cfg->tls);
    if (!toml_get<std::string>(t, "tls", &s, err) || !parse_tls_policy(s, &cfg->tls, err))
        return false;
    if (!toml_get<std::string>(t, "cert", &cfg->cert, err)) return false;
    if (!toml_get<std::string>(t, "key", &cfg->key, err)) return false;
    if (!toml_get<std::string>(t, "ca", &cfg->ca, err)) return false;
    if (!toml_get<std::string>(t, "crl", &cfg->crl, err)) return false;
    if (!toml_get<std::string>(t, "admin", &cfg->admin, err)) return false;
    if (!toml_get<std::string>(t, "log_level", &cfg->log_level, err)) return false;
    if (!toml_get<std::string>(t, "cert_user_map", &cfg->cert_user_map, err)) return false;
    if (!toml_get<std::string>(t, "audit_log", &cfg->audit_log, err)) return false;
    if (!toml_get<std::string>(t, "ktls", &cfg->ktls, err)) return false;
    if (!toml_get<std::string>(t, "tls_min_version", &cfg->tls_min_version, err)) return false;
    s = tls_policy_name(cfg->upstream.mode);
    if (!toml_get<std::string>(t, "upstream_tls", &s, err) ||
        !parse_tls_policy(s, &cfg->upstream.mode, err, "upstream_tls"))
        return false;
    if (!toml_get<std::string>(t, "upstream_ca", &cfg->upstream.ca, err)) return false;
    if (!toml_get<std::string>(t, "upstream_cert", &cfg->upstream.cert, err)) return false;
    if (!toml_get<std::string>(t, "upstream_key", &cfg->upstream.key, err)) return false;
    if (!toml_get<std::string>(t, "upstream_server_name", &cfg->upstream.server_name, err))
        return false;
    b = cfg->upstream.alpn_strict;
    if (!toml_get<bool>(t, "upstream_alpn_strict", &b, err)) return false;
    cfg->upstream.alpn_strict = b;
    b = cfg->reserved_port;
    if (!toml_get<bool>(t, "reserved_port", &b, err)) return false;
    cfg->reserved_port = b;
    b = cfg->answer_portmap;
    if (!toml_get<bool>(t, "portmap", &b, err)) return false;
    cfg->answer_portmap = b;
    b = cfg->alpn_strict;
    if (!toml_get<bool>(t, "alpn_strict", &b, err)) return false;
    cfg->alpn_strict = b;
    b = cfg->tls_auto;
    if (!toml_get<bool>(t, "tls_auto", &b, err)) return false;
    cfg->tls_auto = b;
    return true;
}

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
    if (cfg->tls_min_version != "1.3" && cfg->tls_min_version != "1.2") {
        *err = fmt::format("--tls-min-version must be 1.3 or 1.2, not '{}'", cfg->tls_min_version);
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

int parse_command_line(int argc, char** argv, gateway_config* cfg) {
    CLI::App app{
        "rpcgate: an ONC RPC gateway that adds or removes RPC-with-TLS (RFC 9289) "
        "between NFS clients and servers.",
        "rpcgate"};
    app.get_formatter()->column_width(34);
    std::vector<std::string> listen, backends;
    std::string tls, log_level, max_record, max_inflight, buffer_size;
    gateway_config d;  // defaults, for the help text
    bool version = false, no_reserved = false, no_portmap = false;

    app.add_option("--listen,-l", listen, "ADDR:PORT to accept clients on (repeatable)")
        ->type_name("ADDR:PORT");
    app.add_option(
           "--backend,-b", backends,
           "PROG=HOST:PORT[,vers=N,tls=MODE,name=NAME,ca=FILE,cert=FILE,key=FILE]: route program "
           "PROG (number or name: nfs, mount, nlm, nsm, portmap, nfs_acl) to a server, "
           "with its own upstream TLS settings (repeatable)")
        ->type_name("PROG=ADDR:PORT");
    auto* o_config = app.add_option("--config,-c", cfg->config_file,
                                    "TOML file with the same keys; the command line wins");
    auto* o_shards = app.add_option("--shards", cfg->shards, "engine threads (default: cores)");
    auto* o_tls = app.add_option("--tls", tls, "client-side TLS: off|opportunistic|required|mtls");
    std::vector<std::string> implicit;
    app.add_option("--implicit-tls", implicit,
                   "ADDR:PORT where TLS starts with the first byte, no AUTH_TLS probe "
                   "(stunnel-style clients; repeatable)")
        ->type_name("ADDR:PORT");
    auto* o_auto = app.add_flag("--tls-auto", cfg->tls_auto,
                                "on --listen ports, also accept TLS from the first byte (told "
                                "from a record mark by the first byte)");
    auto* o_alpn = app.add_flag("--alpn-strict", cfg->alpn_strict,
                                "refuse TLS clients that offer no ALPN (the Linux kernel "
                                "client offers none)");
    auto* o_hst = app.add_option("--handshake-timeout", cfg->handshake_timeout_ms,
                                 "milliseconds for a TLS handshake (default 10000)");
    auto* o_ktls = app.add_option("--ktls", cfg->ktls,
                                  "kernel TLS for TLS connections (clients and backends): auto "
                                  "(default: when the kernel has it), off, on (socket-BIO "
                                  "handshakes even without kernel support; testing)");
    auto* o_rekey = app.add_option("--tls-rekey-after", cfg->tls_rekey_after,
                                   "records under one TLS key before the gateway sends a "
                                   "KeyUpdate (default: the AEAD's RFC 8446 limit)");
    auto* o_minv = app.add_option("--tls-min-version", cfg->tls_min_version,
                                  "1.3 (default, RFC 9289) or 1.2 (evaluation of NIC offload "
                                  "only, outside RFC 9289)");
    auto* o_map = app.add_option("--cert-user-map", cfg->cert_user_map,
                                 "FILE mapping verified client certificates (subject:... or "
                                 "san:...) to 'UID GID[,GID...]'; calls on such a connection "
                                 "carry that AUTH_SYS identity");
    auto* o_cert = app.add_option("--cert", cfg->cert, "server certificate (PEM)");
    auto* o_key = app.add_option("--key", cfg->key, "server private key (PEM)");
    auto* o_ca = app.add_option("--ca", cfg->ca, "CA bundle for client certificates");
    auto* o_crl = app.add_option("--crl", cfg->crl, "certificate revocation list");
    auto* o_admin = app.add_option(
        "--admin", cfg->admin,
        "ADDR:PORT of the admin HTTP endpoint (/metrics, /healthz); keep it on loopback");
    std::string up_tls;
    auto* o_up = app.add_option("--upstream-tls", up_tls,
                                "RPC-with-TLS towards the backends: off|opportunistic|required|"
                                "mtls (default off; a backend's tls=MODE overrides it)");
    auto* o_up_ca = app.add_option("--upstream-ca", cfg->upstream.ca,
                                   "CA bundle that verifies the backends' certificates");
    auto* o_up_cert = app.add_option("--upstream-cert", cfg->upstream.cert,
                                     "client certificate (PEM) presented to the backends");
    auto* o_up_key =
        app.add_option("--upstream-key", cfg->upstream.key, "key of --upstream-cert (PEM)");
    auto* o_up_name = app.add_option("--upstream-server-name", cfg->upstream.server_name,
                                     "name (or IP) the backends' certificates must carry "
                                     "(default: each backend's host)");
    auto* o_up_alpn = app.add_flag("--upstream-alpn-strict", cfg->upstream.alpn_strict,
                                   "refuse a backend that selects no ALPN (default: 'sunrpc' "
                                   "or none)");
    app.add_flag("--no-reserved-port", no_reserved,
                 "do not bind a source port < 1024 for backend connections (default: bind one "
                 "when running as root, as knfsd's 'secure' export option expects)");
    app.add_flag("--no-portmap", no_portmap,
                 "do not answer portmap GETPORT locally (forward it if routed)");
    auto* o_idle = app.add_option("--idle-timeout", cfg->idle_timeout_s,
                                  fmt::format("seconds without traffic before a client is "
                                              "closed, 0 = never (default {})",
                                              d.idle_timeout_s));
    auto* o_ct = app.add_option("--connect-timeout", cfg->connect_timeout_ms,
                                "milliseconds to connect to a backend (default 5000)");
    auto* o_dt = app.add_option("--drain-timeout", cfg->drain_timeout_ms,
                                "milliseconds to finish replies in flight on SIGTERM (default "
                                "5000)");
    auto* o_maxc = app.add_option("--max-connections", cfg->max_connections,
                                  "client connections at most (default 65536)");
    auto* o_mcs = app.add_option("--max-connections-per-source", cfg->max_connections_per_source,
                                 "client connections at most from one address (IPv6: one /64), "
                                 "0 = no limit (default 0)");
    auto* o_hrs = app.add_option("--handshake-rate-per-source", cfg->handshake_rate_per_source,
                                 "TLS handshakes a second at most from one address, 0 = no "
                                 "limit (default 0)");
    auto* o_hbs = app.add_option("--handshake-burst-per-source", cfg->handshake_burst_per_source,
                                 "handshakes one address may start back to back (default: one "
                                 "second's worth of the rate)");
    auto* o_rec = app.add_option("--max-record", max_record,
                                 "largest RPC record accepted, bytes or K/M (default 4M+64K)");
    auto* o_inf = app.add_option("--max-inflight", max_inflight,
                                 "bytes queued per connection and direction before reading the "
                                 "other side pauses (default 8M)");
    auto* o_buf = app.add_option("--buffers", cfg->buffers,
                                 "receive buffers per shard, a power of two (default 512)");
    auto* o_bsz =
        app.add_option("--buffer-size", buffer_size, "bytes per receive buffer (default 32K)");
    auto* o_log = app.add_option("--log-level", log_level,
                                 "LEVEL or SUBSYS=LEVEL,... (trace debug info warn error; "
                                 "subsystems core gw tls admin audit)");
    auto* o_audit = app.add_option("--audit-log", cfg->audit_log,
                                   "FILE for the audit lines of TLS decisions (appended)");
    auto* o_iob = app.add_option("--io-backend", cfg->io_backend,
                                 "client-facing packet I/O: uring (kernel sockets, default) or "
                                 "dpdk (DPDK + lwIP, one shard; needs a build with DPDK)")
                      ->check(CLI::IsMember({"uring", "dpdk"}));
    auto* o_dpdk = app.add_option("--dpdk-args", cfg->dpdk_args,
                                  "EAL arguments for --io-backend dpdk, e.g. \"--no-huge --no-pci "
                                  "--vdev=net_af_packet0,iface=IF\"");
    app.add_flag("--check-config", cfg->check_only, "validate the configuration and exit");
    app.add_flag("--version,-V", version, "print the version and exit");

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        std::fputs(app.help().c_str(), stdout);
        return 0;
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "rpcgate: %s (see --help)\n", e.what());
        return 2;
    }
    if (version) {
        std::printf("rpcgate %s\n", RPCGATE_VERSION);
        return 0;
    }
    std::string err;
    // The file first, then every option given on the command line on top of it.
    gateway_config merged;
    if (o_config->count() && !load_config_file(cfg->config_file, &merged, &err)) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    for (const auto& l : listen) {
        endpoint ep;
        if (!parse_endpoint(l, &ep, &err)) {
            std::fprintf(stderr, "rpcgate: --listen %s\n", err.c_str());
            return 2;
        }
        if (&l == &listen.front()) merged.listen.clear();
        merged.listen.push_back(ep);
    }
    for (const auto& b : backends) {
        backend_route r;
        if (!parse_backend(b, &r, &err)) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 2;
        }
        if (&b == &backends.front()) merged.backends.clear();
        merged.backends.push_back(r);
    }
    for (const auto& l : implicit) {
        endpoint ep;
        if (!parse_endpoint(l, &ep, &err)) {
            std::fprintf(stderr, "rpcgate: --implicit-tls %s\n", err.c_str());
            return 2;
        }
        if (&l == &implicit.front()) merged.implicit_tls.clear();
        merged.implicit_tls.push_back(ep);
    }
    if (o_alpn->count()) merged.alpn_strict = true;
    if (o_auto->count()) merged.tls_auto = true;
    if (o_hst->count()) merged.handshake_timeout_ms = cfg->handshake_timeout_ms;
    if (o_ktls->count()) merged.ktls = cfg->ktls;
    if (o_rekey->count()) merged.tls_rekey_after = cfg->tls_rekey_after;
    if (o_minv->count()) merged.tls_min_version = cfg->tls_min_version;
    merged.config_file = cfg->config_file;
    merged.check_only = cfg->check_only;
    if (o_shards->count()) merged.shards = cfg->shards;
    if (o_tls->count() && !parse_tls_policy(tls, &merged.tls, &err)) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    if (o_cert->count()) merged.cert = cfg->cert;
    if (o_map->count()) merged.cert_user_map = cfg->cert_user_map;
    if (o_key->count()) merged.key = cfg->key;
    if (o_ca->count()) merged.ca = cfg->ca;
    if (o_crl->count()) merged.crl = cfg->crl;
    if (o_admin->count()) merged.admin = cfg->admin;
    if (o_up->count() && !parse_tls_policy(up_tls, &merged.upstream.mode, &err, "--upstream-tls")) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    if (o_up_ca->count()) merged.upstream.ca = cfg->upstream.ca;
    if (o_up_cert->count()) merged.upstream.cert = cfg->upstream.cert;
    if (o_up_key->count()) merged.upstream.key = cfg->upstream.key;
    if (o_up_name->count()) merged.upstream.server_name = cfg->upstream.server_name;
    if (o_up_alpn->count()) merged.upstream.alpn_strict = true;
    if (no_reserved) merged.reserved_port = false;
    if (no_portmap) merged.answer_portmap = false;
    if (o_idle->count()) merged.idle_timeout_s = cfg->idle_timeout_s;
    if (o_ct->count()) merged.connect_timeout_ms = cfg->connect_timeout_ms;
    if (o_dt->count()) merged.drain_timeout_ms = cfg->drain_timeout_ms;
    if (o_maxc->count()) merged.max_connections = cfg->max_connections;
    if (o_mcs->count()) merged.max_connections_per_source = cfg->max_connections_per_source;
    if (o_hrs->count()) merged.handshake_rate_per_source = cfg->handshake_rate_per_source;
    if (o_hbs->count()) merged.handshake_burst_per_source = cfg->handshake_burst_per_source;
    if (o_buf->count()) merged.buffers = cfg->buffers;
    if (o_log->count()) merged.log_level = log_level;
    if (o_audit->count()) merged.audit_log = cfg->audit_log;
    if (o_iob->count()) merged.io_backend = cfg->io_backend;
    if (o_dpdk->count()) merged.dpdk_args = cfg->dpdk_args;
    uint64_t v = 0;
    if (o_rec->count()) {
        if (!parse_size(max_record, &v, &err, "--max-record")) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 2;
        }
        merged.max_record = v;
    }
    if (o_inf->count()) {
        if (!parse_size(max_inflight, &v, &err, "--max-inflight")) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 2;
        }
        merged.max_inflight = v;
    }
    if (o_bsz->count()) {
        if (!parse_size(buffer_size, &v, &err, "--buffer-size")) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 2;
        }
        merged.buffer_size = uint32_t(v);
    }
    if (!validate(&merged, &err)) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    *cfg = std::move(merged);
    return -1;
}

}  // namespace rpcgate::gw
