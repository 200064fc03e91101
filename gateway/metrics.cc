#include "gateway/metrics.h"

#include <fmt/format.h>

#include <iterator>

#include <openssl/crypto.h>

#include "tls/ktls.h"

namespace rpcgate::gw {

namespace {

uint64_t rd(const std::atomic<uint64_t>& a) {
    return a.load(std::memory_order_relaxed);
}

constexpr const char* counter = "counter";
constexpr const char* gauge = "gauge";

void header(std::string& out, const char* name, const char* type, const char* help) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace

void gateway_totals::add(const gateway_counters& c) {
#define RPCGATE_X(field, label, metric, type, help) field += rd(c.field);
    RPCGATE_GATEWAY_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
    for (size_t m = 1; m < 4; ++m) {  // every mode but userspace is the kernel's
        ktls_tx_open += rd(c.tls_protection_open[0][m]);
        ktls_rx_open += rd(c.tls_protection_open[1][m]);
    }
}

std::string gateway_totals::describe() const {
    std::string out;
    auto put = [&](const char* label, uint64_t v) {
        fmt::format_to(std::back_inserter(out), "{}{}={}", out.empty() ? "" : " ", label, v);
    };
#define RPCGATE_X(field, label, metric, type, help) put(label, field);
    RPCGATE_GATEWAY_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
    put("ktls_tx_open", ktls_tx_open);
    put("ktls_rx_open", ktls_rx_open);
    put("handshakes_ok", handshakes_ok);
    put("handshakes_failed", handshakes_failed);
    put("handshakes_timed_out", handshakes_timed_out);
    put("handshakes_not_tls", handshakes_not_tls);
    put("handshakes_busy", handshakes_busy);
    put("handshakes_in_progress", handshakes_in_progress);
    return out;
}

void render_per_shard(std::string& out, const char* name, const char* type, const char* help,
                      const std::vector<uint64_t>& per_shard) {
    header(out, name, type, help);
    for (size_t i = 0; i < per_shard.size(); ++i)
        fmt::format_to(std::back_inserter(out), "{}{{shard=\"{}\"}} {}\n", name, i, per_shard[i]);
}

void render_one(std::string& out, const char* name, const char* type, const char* help,
                uint64_t value) {
    header(out, name, type, help);
    fmt::format_to(std::back_inserter(out), "{} {}\n", name, value);
}

void render_gateway_counters(std::string& out, const std::vector<const gateway_counters*>& shards) {
    std::vector<uint64_t> v(shards.size());
#define RPCGATE_X(field, label, metric, type, help)                             \
    if (metric[0] != '\0') {                                                    \
        for (size_t i = 0; i < shards.size(); ++i) v[i] = rd(shards[i]->field); \
        render_per_shard(out, "rpcgate_" metric, type, help, v);                \
    }
    RPCGATE_GATEWAY_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
}

void render_tls_protection(std::string& out, const std::vector<const gateway_counters*>& shards) {
    // Where the TLS crypto runs, per direction, as the kernel reported it
    // for each connection (tls::ktls::query).
    header(out, "rpcgate_tls_connections_open", gauge,
           "TLS client connections by direction and where the crypto runs.");
    for (size_t dir = 0; dir < 2; ++dir) {
        for (tls::ktls::mode m : {tls::ktls::mode::userspace, tls::ktls::mode::ktls_sw,
                                  tls::ktls::mode::ktls_hw, tls::ktls::mode::ktls}) {
            uint64_t v = 0;
            for (const gateway_counters* c : shards)
                v += rd(c->tls_protection_open[dir][size_t(m)]);
            fmt::format_to(
                std::back_inserter(out),
                "rpcgate_tls_connections_open{{direction=\"{}\",protection=\"{}\"}} {}\n",
                dir == 0 ? "tx" : "rx", tls::ktls::mode_name(m), v);
        }
    }
}

void render_backend_health(std::string& out, const std::vector<std::string>& labels,
                           const std::vector<const backend_health*>& per_shard) {
#define RPCGATE_X(field, metric, type, help)                                                      \
    header(out, "rpcgate_" metric, type, help);                                                   \
    for (size_t r = 0; r < labels.size(); ++r) {                                                  \
        uint64_t sum = 0;                                                                         \
        for (const backend_health* h : per_shard) sum += rd(h[r].field);                          \
        fmt::format_to(std::back_inserter(out), "rpcgate_" metric "{{{}}} {}\n", labels[r], sum); \
    }
    RPCGATE_BACKEND_COUNTERS(RPCGATE_X)
#undef RPCGATE_X
}

std::string label_value(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

std::string backend_labels(std::string_view name, std::string_view address) {
    return fmt::format(R"(backend="{}",address="{}")", label_value(name), label_value(address));
}

std::string snake_case(std::string_view camel) {
    std::string out;
    for (size_t i = 0; i < camel.size(); ++i) {
        char c = camel[i];
        if (c >= 'A' && c <= 'Z') {
            if (i > 0) out += '_';
            out += char(c - 'A' + 'a');
        } else {
            out += c;
        }
    }
    return out;
}

void render_kernel_tls_stat(std::string& out,
                            const std::vector<std::pair<std::string, uint64_t>>& stat) {
    // TlsCurrTxSw, TlsCurrRxDevice ... count connections now (gauges); every
    // other field (TlsTxSw, TlsDecryptError ...) only grows (counters).
    auto it = std::back_inserter(out);
    for (const auto& [key, v] : stat) {
        bool now = key.rfind("TlsCurr", 0) == 0;
        std::string name = "rpcgate_kernel_" + snake_case(key) + (now ? "" : "_total");
        fmt::format_to(it, "# HELP {0} /proc/net/tls_stat {1}.\n# TYPE {0} {2}\n{0} {3}\n", name,
                       key, now ? gauge : counter, v);
    }
}

void render_build_info(std::string& out, std::string_view version, std::string_view io_backend) {
    header(out, "rpcgate_build_info", gauge,
           "Always 1: the version, the OpenSSL it runs with and the compiler in labels.");
    fmt::format_to(std::back_inserter(out),
                   "rpcgate_build_info{{version=\"{}\",openssl=\"{}\",compiler=\"{}\","
                   "io_backend=\"{}\"}} 1\n",
                   label_value(version), label_value(OpenSSL_version(OPENSSL_VERSION)),
                   label_value(__VERSION__), label_value(io_backend));
}

void render_cert_expiry(std::string& out, const std::vector<loaded_cert>& certs) {
    header(out, "rpcgate_certificate_not_after_seconds", gauge,
           "When a loaded certificate expires (seconds since the epoch), by role.");
    for (const loaded_cert& c : certs)
        fmt::format_to(std::back_inserter(out),
                       "rpcgate_certificate_not_after_seconds{{role=\"{}\",subject=\"{}\","
                       "serial=\"{}\"}} {}\n",
                       label_value(c.role), label_value(c.subject), label_value(c.serial),
                       c.not_after);
}

}  // namespace rpcgate::gw
