// echo_server: the `rpcgate-bench serve` RPC server, on the rpcgate engine.
//
// Serves the bench echo program (see echo_protocol.h) on N shards, each with
// its own SO_REUSEPORT listener on the same port: NULL, ECHO (the reply shares
// the argument slices — zero copy) and CALLBACK (a CALL to the client on the
// same connection; its answer becomes the reply). Wrong program, version or
// procedure get PROG_UNAVAIL / PROG_MISMATCH(1,1) / PROC_UNAVAIL; rpcvers != 2
// gets RPC_MISMATCH(2,2); bytes that are not RPC close the connection (counted).
// With a TLS context every connection is implicit TLS (a direct-TLS baseline):
// each has its own tls::session driven on the shard, no handshake thread.
// A connection whose send queue is full stops being read until it drains, so
// a client that never reads its replies holds bounded memory.
//
// Threads: `start`, `stop` and the destructor are for the owning thread; the
// shards run the connections; `totals` may be read from any thread at any time.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/shard.h"
#include "tls/context.h"
#include "tools/bench/address.h"

namespace rpcgate::bench {

struct serve_options {
    socket_address listen;
    unsigned shards = 1;
    core::shard_config shard;  // index and cpu are set per shard
    // Implicit TLS (from the first byte) with this server context; null for
    // plaintext. Must outlive the server.
    const tls::context* tls = nullptr;
    // On stop: how long connections may take to flush their replies.
    uint64_t drain_ms = 2000;
    // Test seams for clients that must ride out a server closing on them
    // (`run --reconnect`); 0 = off. close_after_calls: after answering this
    // many calls on a connection, stop reading it and close it once the last
    // reply has left (FIN, or close_notify then FIN under TLS), as a proxy
    // draining at an idle point does. drop_after_calls: answer this many
    // calls on a connection, then close it (no reply) when the next one
    // arrives, as a crashing or hard-stopped proxy does.
    uint64_t close_after_calls = 0;
    uint64_t drop_after_calls = 0;
};

// Counters summed across shards.
struct serve_totals {
    uint64_t calls = 0;  // calls answered, any outcome
    uint64_t null_calls = 0;
    uint64_t echo_calls = 0;
    uint64_t callback_calls = 0;  // proc-2 calls answered (after the backchannel round trip)
    uint64_t refused = 0;         // PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL, RPC_MISMATCH, ...
    uint64_t garbage_closes = 0;  // connections closed for bytes that are not RPC
    uint64_t test_closes = 0;     // by close_after_calls or drop_after_calls
    uint64_t connections = 0;     // accepted
    uint64_t payload_bytes = 0;   // ECHO/CALLBACK opaque bytes received
};

class echo_server {
  public:
    explicit echo_server(serve_options opt);
    ~echo_server();
    echo_server(const echo_server&) = delete;
    echo_server& operator=(const echo_server&) = delete;

    // Starts the shards and their listeners. Returns "" or a one-line reason.
    std::string start();
    // The port every shard listens on (after a successful start).
    uint16_t port() const noexcept { return port_; }
    // Stops accepting, lets replies in flight leave (up to drain_ms), closes
    // every connection and joins the shards. Idempotent.
    void stop();
    serve_totals totals() const noexcept;

    // One shard's listener and counters (defined in the .cc; public only so
    // that the connection handlers there can name it).
    struct per_shard;

  private:
    serve_options opt_;
    std::vector<std::unique_ptr<per_shard>> shards_;
    uint16_t port_ = 0;
    bool running_ = false;
};

}  // namespace rpcgate::bench
