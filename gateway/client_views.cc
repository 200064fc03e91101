#include "gateway/client_views.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <iterator>
#include <map>
#include <utility>

#include "gateway/admin.h"

namespace rpcgate::gw {

namespace {

uint64_t weight(const client_view& v, bool by_bytes) {
    return by_bytes ? v.bytes_in + v.bytes_out : v.calls;
}

}  // namespace

view_query parse_view_query(std::string_view target) {
    view_query q;
    size_t qm = target.find('?');
    if (qm == std::string_view::npos) return q;
    std::string_view rest = target.substr(qm + 1);
    while (!rest.empty()) {
        size_t amp = rest.find('&');
        std::string_view kv = rest.substr(0, amp);
        rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
        size_t eq = kv.find('=');
        if (eq == std::string_view::npos) continue;
        std::string_view k = kv.substr(0, eq), v = kv.substr(eq + 1);
        if (k == "top") {
            size_t n = 0;
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            if (ec == std::errc() && p == v.data() + v.size() && n >= 1 && n <= 1000) q.top = n;
        } else if (k == "by") {
            if (v == "bytes") q.by_bytes = true;
            if (v == "calls") q.by_bytes = false;
        }
    }
    return q;
}

std::string source_of(std::string_view peer) {
    if (!peer.empty() && peer.front() == '[') {
        size_t close = peer.find(']');
        return std::string(peer.substr(1, close == std::string_view::npos ? peer.npos : close - 1));
    }
    size_t colon = peer.rfind(':');
    return std::string(colon == std::string_view::npos ? peer : peer.substr(0, colon));
}

std::string top_connections_json(std::vector<client_view> views, const view_query& q) {
    size_t n = std::min(q.top, views.size());
    std::partial_sort(views.begin(), views.begin() + ptrdiff_t(n), views.end(),
                      [&](const client_view& a, const client_view& b) {
                          return weight(a, q.by_bytes) > weight(b, q.by_bytes);
                      });
    std::string out = "[";
    for (size_t i = 0; i < n; ++i) {
        if (i) out += ",\n";
        out += views[i].json;
    }
    return out + "]\n";
}

std::string clients_json(const std::vector<client_view>& views, const view_query& q) {
    struct group {
        uint64_t connections = 0, calls = 0, bytes_in = 0, bytes_out = 0;
    };
    std::map<std::pair<std::string, std::string>, group> by_client;
    for (const client_view& v : views) {
        group& g = by_client[{v.source, v.identity}];
        ++g.connections;
        g.calls += v.calls;
        g.bytes_in += v.bytes_in;
        g.bytes_out += v.bytes_out;
    }
    using row = std::pair<const std::pair<std::string, std::string>*, const group*>;
    std::vector<row> rows;
    rows.reserve(by_client.size());
    for (const auto& [k, g] : by_client) rows.push_back({&k, &g});
    size_t n = std::min(q.top, rows.size());
    std::partial_sort(
        rows.begin(), rows.begin() + ptrdiff_t(n), rows.end(), [&](const row& a, const row& b) {
            uint64_t wa = q.by_bytes ? a.second->bytes_in + a.second->bytes_out : a.second->calls;
            uint64_t wb = q.by_bytes ? b.second->bytes_in + b.second->bytes_out : b.second->calls;
            return wa > wb;
        });
    std::string out = fmt::format(R"({{"clients":{},"connections":{},"by":"{}","top":[)",
                                  rows.size(), views.size(), q.by_bytes ? "bytes" : "calls");
    for (size_t i = 0; i < n; ++i) {
        const auto& [k, g] = rows[i];
        fmt::format_to(
            std::back_inserter(out),
            R"({}{{"source":"{}","identity":"{}","connections":{},"calls":{},"bytes_in":{},"bytes_out":{}}})",
            i ? ",\n" : "\n", json_escape(k->first), json_escape(k->second), g->connections,
            g->calls, g->bytes_in, g->bytes_out);
    }
    return out + "]}\n";
}

}  // namespace rpcgate::gw
