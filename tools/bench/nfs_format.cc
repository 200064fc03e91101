#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>

#include "tools/bench/load_client.h"
#include "tools/bench/nfs_load.h"

// The `rpcgate-bench nfs` report and its --mix: formatting and parsing only.
namespace rpcgate::bench {
namespace {

// An error line inside a JSON string: quotes, backslashes and control
// characters become '?' (it is a message for people, not data).
std::string json_text(std::string s) {
    for (char& ch : s)
        if (ch == '"' || ch == '\\' || (unsigned char)ch < 0x20) ch = '?';
    return s;
}

}  // namespace

const char* to_string(nfs_op op) noexcept {
    static constexpr const char* names[nfs_op_count] = {"read", "write", "getattr", "lookup",
                                                        "null"};
    return names[unsigned(op)];
}

bool parse_nfs_mix(const std::string& text, unsigned (&mix)[nfs_op_count], std::string* err) {
    unsigned out[nfs_op_count] = {};
    unsigned total = 0;
    size_t pos = 0;
    while (pos <= text.size()) {
        size_t comma = text.find(',', pos);
        if (comma == std::string::npos) comma = text.size();
        const std::string item = text.substr(pos, comma - pos);
        const size_t eq = item.find('=');
        const std::string name = item.substr(0, eq);
        unsigned i = 0;
        while (i < nfs_op_count && name != to_string(nfs_op(i))) ++i;
        unsigned long w = 0;
        char* end = nullptr;
        if (eq != std::string::npos) w = std::strtoul(item.c_str() + eq + 1, &end, 10);
        if (i == nfs_op_count || eq == std::string::npos || eq + 1 == item.size() || *end ||
            w > 1000000) {
            *err = "--mix: '" + item + "' is not KIND=WEIGHT (read, write, getattr, lookup, null)";
            return false;
        }
        out[i] += unsigned(w);
        total += unsigned(w);
        pos = comma + 1;
    }
    if (total == 0) {
        *err = "--mix: the weights add up to 0";
        return false;
    }
    std::copy(std::begin(out), std::end(out), std::begin(mix));
    return true;
}

std::string format_nfs_mix(const unsigned (&mix)[nfs_op_count]) {
    std::string out;
    for (unsigned i = 0; i < nfs_op_count; ++i)
        if (mix[i])
            out += fmt::format("{}{}={}", out.empty() ? "" : ",", to_string(nfs_op(i)), mix[i]);
    return out;
}

std::string format_human(const nfs_report& r) {
    std::string out = fmt::format(
        "rpcgate-bench nfs: NFSv{} {} mix={} size={} B pattern={} file_size={} connections={} "
        "depth={}{}\n",
        r.v4 ? "4.1" : "3", r.target, r.mix, r.size, r.random ? "rand" : "seq", r.file_size,
        r.connections, r.depth, r.verify ? " verify" : "");
    out += fmt::format("  calls      {} in {:.3f} s: {:.0f} ops/s\n", r.calls, r.elapsed_s,
                       r.ops_per_sec());
    out += fmt::format("  data       {:.2f} MB/s (read {} B, written {} B; MB = 10^6 bytes)\n",
                       r.bytes_per_sec() / 1e6, r.bytes_read, r.bytes_written);
    out += "  latency    " + latency_human(r.latency) + "\n";
    for (unsigned k = 0; k < nfs_op_count; ++k)
        if (r.op_calls[k])
            out += fmt::format("  {:<10} {} calls: {}\n", to_string(nfs_op(k)), r.op_calls[k],
                               latency_human(r.op_latency[k]));
    if (r.tls != client::tls_mode::off)
        out += fmt::format("  tls        {} {} {}\n", client::to_string(r.tls), r.tls_version,
                           r.tls_cipher);
    if (r.verify)
        out += fmt::format("  verify     {} READ(s) differ from the pattern ({} bytes)\n",
                           r.mismatched_reads, r.mismatched_bytes);
    out += fmt::format(
        "  errors     {} (connect {}, lost {}, rpc {}, nfs {}, bad replies {}, mismatches {})",
        r.errors, r.connect_errors, r.lost_calls, r.rpc_errors, r.nfs_errors, r.bad_replies,
        r.mismatched_reads);
    if (!r.first_error.empty()) out += "\n  first error: " + r.first_error;
    return out;
}

std::string format_json(const nfs_report& r) {
    std::string ops;
    for (unsigned k = 0; k < nfs_op_count; ++k) {
        if (!r.op_calls[k]) continue;
        ops += fmt::format("{}\"{}\":{{\"calls\":{},{},\"histogram\":{}}}", ops.empty() ? "" : ",",
                           to_string(nfs_op(k)), r.op_calls[k],
                           latency_json_fields(r.op_latency[k]), histogram_json(r.op_latency[k]));
    }
    return fmt::format(
        "{{\"workload\":\"{}\",\"target\":\"{}\",\"mix\":\"{}\",\"connections\":{},"
        "\"depth\":{},\"size\":{},\"pattern\":\"{}\",\"file_size\":{},\"verify\":{},"
        "\"tls\":\"{}\",\"tls_version\":\"{}\",\"tls_cipher\":\"{}\",\"calls\":{},"
        "\"elapsed_s\":{:.6f},\"ops_per_sec\":{:.1f},\"bytes_per_sec\":{:.1f},"
        "\"mb_per_sec\":{:.3f},\"bytes_read\":{},\"bytes_written\":{},{},"
        "\"errors\":{},\"connect_errors\":{},\"lost_calls\":{},\"rpc_errors\":{},"
        "\"nfs_errors\":{},\"bad_replies\":{},\"mismatched_reads\":{},\"mismatched_bytes\":{},"
        "\"first_error\":\"{}\",\"ops\":{{{}}},\"histogram\":{}}}",
        r.v4 ? "nfs4.1" : "nfs3", r.target, r.mix, r.connections, r.depth, r.size,
        r.random ? "rand" : "seq", r.file_size, r.verify ? "true" : "false",
        client::to_string(r.tls), r.tls_version, r.tls_cipher, r.calls, r.elapsed_s,
        r.ops_per_sec(), r.bytes_per_sec(), r.bytes_per_sec() / 1e6, r.bytes_read, r.bytes_written,
        latency_json_fields(r.latency), r.errors, r.connect_errors, r.lost_calls, r.rpc_errors,
        r.nfs_errors, r.bad_replies, r.mismatched_reads, r.mismatched_bytes,
        json_text(r.first_error), ops, histogram_json(r.latency));
}

}  // namespace rpcgate::bench
