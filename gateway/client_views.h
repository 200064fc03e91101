// The per-client view of the admin endpoint, bounded: the top talkers among
// the open connections (GET /connections?top=N[&by=calls|bytes]) and a
// summary by source address and TLS identity (GET /clients[?top=N&by=...]).
// Neither is a Prometheus family: one series per client would be unbounded.
//
// Built from a snapshot of every open session (client_session::view(),
// gathered from the shards by the gateway); pure functions, any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace rpcgate::gw {

// One open client connection, as its shard saw it.
struct client_view {
    std::string source;    // peer address without the port ("10.0.0.7", "::1")
    std::string identity;  // the TLS client certificate's subject, "" without one
    uint64_t calls = 0;    // calls forwarded to backends
    uint64_t bytes_in = 0, bytes_out = 0;
    std::string json;  // its /connections object
};

// What an admin request for a view asked: "/clients?top=5&by=bytes".
struct view_query {
    size_t top = 20;        // at most this many rows (1 .. 1000)
    bool by_bytes = false;  // order by bytes in + out instead of calls
};
// Parses the query part of `target` ("/clients?top=5&by=bytes"); unknown
// keys and bad values keep the defaults.
view_query parse_view_query(std::string_view target);

// The `q.top` connections with the most calls (or bytes): a JSON array of
// their /connections objects, the busiest first.
std::string top_connections_json(std::vector<client_view> views, const view_query& q);

// Open connections grouped by (source, identity), the `q.top` busiest
// groups: {"clients":N,"connections":N,"top":[{"source","identity",
// "connections","calls","bytes_in","bytes_out"}, ...]}.
std::string clients_json(const std::vector<client_view>& views, const view_query& q);

// "10.0.0.7:812" -> "10.0.0.7", "[::1]:812" -> "::1".
std::string source_of(std::string_view peer);

}  // namespace rpcgate::gw
