// The reports of `rpcgate-bench run` as text: the human summary, the JSON
// object, the progress line (declared in load_client.h).
#include <fmt/format.h>

#include "tools/bench/load_client.h"

namespace rpcgate::bench {

const char* to_string(bench_proc p) noexcept {
    switch (p) {
        case bench_proc::null:
            return "null";
        case bench_proc::echo:
            return "echo";
        case bench_proc::callback:
            return "callback";
    }
    return "?";
}

std::string format_human(const run_report& r) {
    auto us = [](uint64_t ns) { return double(ns) / 1000.0; };
    std::string sizes = r.size_max > r.size ? fmt::format("{}..{} B", r.size, r.size_max)
                                            : fmt::format("{} B", r.size);
    std::string out =
        fmt::format("rpcgate-bench run: proc={} size={} connections={} depth={} threads={}{}{}\n",
                    to_string(r.proc), sizes, r.connections, r.depth, r.threads,
                    r.verify ? " verify" : "", r.reconnect ? " reconnect" : "");
    out += fmt::format("  calls      {} in {:.3f} s: {:.0f} ops/s\n", r.calls, r.elapsed_s,
                       r.ops_per_sec());
    if (r.rate > 0)
        out += fmt::format(
            "  open loop  target {:.0f} calls/s; latency from the intended send time; send lag "
            "p50 {:.1f} us  p99 {:.1f} us; {} calls due but never sent\n",
            r.rate, us(r.send_lag.percentile(0.50)), us(r.send_lag.percentile(0.99)),
            r.missed_calls);
    out += fmt::format(
        "  payload    {:.2f} MB/s both directions ({:.2f} MB/s each way; MB = 10^6 bytes)\n",
        r.bytes_per_sec() / 1e6, r.bytes_per_sec() / 2e6);
    out += "  latency    " + latency_human(r.latency) + "\n";
    if (r.tls != client::tls_mode::off)
        out +=
            fmt::format("  tls        {} {} {}: handshake p50 {:.1f} us  p99 {:.1f} us ({} done)\n",
                        client::to_string(r.tls), r.tls_version, r.tls_cipher,
                        us(r.handshake_latency.percentile(0.50)),
                        us(r.handshake_latency.percentile(0.99)), r.handshake_latency.count());
    out += fmt::format(
        "  errors     {} (connect {}, lost {}, timeouts {}, rpc {}, bad replies {}, tls {})",
        r.errors, r.connect_errors, r.lost_calls, r.timeouts, r.rpc_errors, r.bad_replies,
        r.tls_errors);
    out += fmt::format(
        "\n  connects   {} ({} reconnects); server closes: {} between calls, {} with calls in "
        "flight",
        r.connects, r.reconnects, r.clean_closes, r.closes_in_flight);
    if (r.backchannel_calls)
        out += fmt::format("\n  backchannel calls answered {}", r.backchannel_calls);
    return out;
}

std::string histogram_json(const latency_histogram& h) {
    std::string out = fmt::format("{{\"unit\":\"ns\",\"count\":{},\"buckets\":[", h.count());
    bool first = true;
    h.for_each_bucket([&](uint64_t lo, uint64_t hi, uint64_t n) {
        out += fmt::format("{}[{},{},{}]", first ? "" : ",", lo, hi, n);
        first = false;
    });
    out += "]}";
    return out;
}

std::string format_json(const run_report& r) {
    auto us = [](uint64_t ns) { return double(ns) / 1000.0; };
    const latency_histogram& l = r.latency;
    std::string out = fmt::format(
        "{{\"proc\":\"{}\",\"connections\":{},\"depth\":{},\"threads\":{},\"size\":{},"
        "\"size_max\":{},\"verify\":{},\"mode\":\"{}\",\"rate\":{:.1f},\"calls\":{},"
        "\"elapsed_s\":{:.6f},\"ops_per_sec\":{:.1f},"
        "\"bytes_per_sec\":{:.1f},\"mb_per_sec\":{:.3f},"
        "\"bytes_per_sec_note\":\"payload, both directions; MB = 10^6 bytes\","
        "\"payload_bytes_sent\":{},\"payload_bytes_received\":{},{},",
        to_string(r.proc), r.connections, r.depth, r.threads, r.size, r.size_max,
        r.verify ? "true" : "false", r.rate > 0 ? "open" : "closed", r.rate, r.calls, r.elapsed_s,
        r.ops_per_sec(), r.bytes_per_sec(), r.bytes_per_sec() / 1e6, r.payload_bytes_sent,
        r.payload_bytes_received, latency_json_fields(l));
    out += fmt::format(
        "\"errors\":{},\"connect_errors\":{},\"lost_calls\":{},\"reconnect\":{},"
        "\"connects\":{},\"reconnects\":{},\"clean_closes\":{},\"closes_in_flight\":{},"
        "\"timeouts\":{},\"rpc_errors\":{},\"bad_replies\":{},\"backchannel_calls\":{},"
        "\"missed_calls\":{},\"send_lag_p50_us\":{:.2f},\"send_lag_p99_us\":{:.2f},"
        "\"tls\":\"{}\",\"tls_errors\":{},\"tls_version\":\"{}\",\"tls_cipher\":\"{}\","
        "\"handshakes\":{},\"handshake_p50_us\":{:.2f},\"handshake_p99_us\":{:.2f},"
        "\"histogram\":{}}}",
        r.errors, r.connect_errors, r.lost_calls, r.reconnect ? "true" : "false", r.connects,
        r.reconnects, r.clean_closes, r.closes_in_flight, r.timeouts, r.rpc_errors, r.bad_replies,
        r.backchannel_calls, r.missed_calls, us(r.send_lag.percentile(0.50)),
        us(r.send_lag.percentile(0.99)), client::to_string(r.tls), r.tls_errors, r.tls_version,
        r.tls_cipher, r.handshake_latency.count(), us(r.handshake_latency.percentile(0.50)),
        us(r.handshake_latency.percentile(0.99)), histogram_json(l));
    return out;
}

std::string latency_json_fields(const latency_histogram& h) {
    auto us = [](uint64_t ns) { return double(ns) / 1000.0; };
    return fmt::format(
        "\"p50_us\":{:.2f},\"p90_us\":{:.2f},\"p99_us\":{:.2f},\"p999_us\":{:.2f},"
        "\"max_us\":{:.2f},\"min_us\":{:.2f},\"mean_us\":{:.2f}",
        us(h.percentile(0.50)), us(h.percentile(0.90)), us(h.percentile(0.99)),
        us(h.percentile(0.999)), us(h.max()), us(h.min()), h.mean() / 1000.0);
}

std::string latency_human(const latency_histogram& h) {
    auto us = [](uint64_t ns) { return double(ns) / 1000.0; };
    return fmt::format("p50 {:.1f} us  p90 {:.1f} us  p99 {:.1f} us  p999 {:.1f} us  max {:.1f} us",
                       us(h.percentile(0.50)), us(h.percentile(0.90)), us(h.percentile(0.99)),
                       us(h.percentile(0.999)), us(h.max()));
}

std::string format_progress(double elapsed_s, double ops_per_sec, const latency_histogram& so_far,
                            uint64_t errors) {
    std::string out = fmt::format("progress: {:.0f}s {:.0f} ops/s", elapsed_s, ops_per_sec);
    if (so_far.count())
        out += fmt::format(" p50 {:.1f} us p99 {:.1f} us", double(so_far.percentile(0.50)) / 1e3,
                           double(so_far.percentile(0.99)) / 1e3);
    out += fmt::format(" errors {}", errors);
    return out;
}

}  // namespace rpcgate::bench
