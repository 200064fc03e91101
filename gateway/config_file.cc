#include "gateway/config.h"

#include <fmt/format.h>
#include <toml++/toml.h>
#include <limits>

#include "gateway/config_parse.h"

namespace rpcgate::gw {

using detail::parse_port_range;
using detail::parse_tls_policy;

namespace {

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
                                  "call_stats",
                                  "idle_timeout",
                                  "connect_timeout",
                                  "drain_timeout",
                                  "upgrade_binary",
                                  "upgrade_timeout",
                                  "upgrade_drain_timeout",
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
                                  "ktls_rx_no_pad",
                                  "ktls_tx_record_size",
                                  "tls_min_version",
                                  "require_tls_for",
                                  "reuse_port",
                                  "reserved_ports",
                                  "tls_ciphersuites",
                                  "tls_record_layer"};
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
    RPCGATE_TOML_INT("upgrade_timeout", upgrade_timeout_ms)
    RPCGATE_TOML_INT("upgrade_drain_timeout", upgrade_drain_timeout_ms)
    RPCGATE_TOML_INT("max_connections", max_connections)
    RPCGATE_TOML_INT("max_record", max_record)
    RPCGATE_TOML_INT("max_inflight", max_inflight)
    RPCGATE_TOML_INT("buffers", buffers)
    RPCGATE_TOML_INT("buffer_size", buffer_size)
    RPCGATE_TOML_INT("handshake_timeout", handshake_timeout_ms)
    RPCGATE_TOML_INT("tls_rekey_after", tls_rekey_after)
    RPCGATE_TOML_INT("ktls_tx_record_size", ktls_tx_record_size)
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
    if (!toml_get<std::string>(t, "upgrade_binary", &cfg->upgrade_binary, err)) return false;
    if (!toml_get<std::string>(t, "ktls", &cfg->ktls, err)) return false;
    if (!toml_get<std::string>(t, "tls_min_version", &cfg->tls_min_version, err)) return false;
    if (!toml_get<std::string>(t, "tls_ciphersuites", &cfg->tls_ciphersuites, err)) return false;
    if (!toml_get<std::string>(t, "tls_record_layer", &cfg->tls_record_layer, err)) return false;
    s.clear();
    if (!toml_get<std::string>(t, "reserved_ports", &s, err)) return false;
    if (!s.empty() &&
        !parse_port_range(s, &cfg->reserved_low, &cfg->reserved_high, err, "reserved_ports"))
        return false;
    // require_tls_for = ["nfs", "nfs_acl"] or "all" or "nfs,nfs_acl,mount".
    std::vector<std::string> progs;
    if (!toml_strings(t, "require_tls_for", &progs, err)) return false;
    if (!progs.empty()) {
        std::string joined;
        for (const auto& p : progs) joined += (joined.empty() ? "" : ",") + p;
        if (!parse_program_set(joined, &cfg->tls_programs, err, "require_tls_for")) return false;
    }
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
    b = cfg->reuse_port;
    if (!toml_get<bool>(t, "reuse_port", &b, err)) return false;
    cfg->reuse_port = b;
    b = cfg->reserved_port;
    if (!toml_get<bool>(t, "reserved_port", &b, err)) return false;
    cfg->reserved_port = b;
    b = cfg->answer_portmap;
    if (!toml_get<bool>(t, "portmap", &b, err)) return false;
    cfg->answer_portmap = b;
    b = cfg->call_stats;
    if (!toml_get<bool>(t, "call_stats", &b, err)) return false;
    cfg->call_stats = b;
    b = cfg->alpn_strict;
    if (!toml_get<bool>(t, "alpn_strict", &b, err)) return false;
    cfg->alpn_strict = b;
    b = cfg->tls_auto;
    if (!toml_get<bool>(t, "tls_auto", &b, err)) return false;
    cfg->tls_auto = b;
    b = cfg->ktls_rx_no_pad;
    if (!toml_get<bool>(t, "ktls_rx_no_pad", &b, err)) return false;
    cfg->ktls_rx_no_pad = b;
    return true;
}

}  // namespace rpcgate::gw
