// Handshake rate: `rpcgate-bench handshake`.
//
//   against a server  N client threads, each in a loop: connect, (probe,)
//                     TLS 1.3 handshake, one NULL call over TLS, close_notify,
//                     close. Reports completed cycles per second and the
//                     latency of a whole cycle. Uses the shared client library
//                     (tls/client) with one client context for all threads.
//   --baseline        the same handshake (and NULL exchange) between two
//                     in-memory tls::sessions in this process: no sockets, no
//                     kernel, both sides in one thread. Besides the loop rate it
//                     reports the server side's own rate (1 / CPU time spent in
//                     the server session per cycle): the ceiling of one
//                     handshake thread, which is what a control thread that only
//                     runs server handshakes can be compared with. Both sides
//                     take the versions, ciphers and groups of `tls` and
//                     `ciphersuites`.
//
// Both block the calling thread for the duration; `stop` (a signal flag) ends
// them early.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "tls/client/client_session.h"
#include "tls/context.h"
#include "tools/bench/latency_histogram.h"

namespace rpcgate::bench {

struct handshake_options {
    std::string host;  // target (not for the baseline)
    uint16_t port = 0;
    client::tls_mode mode = client::tls_mode::starttls;
    unsigned connections = 1;  // client threads, one connection each at a time
    double duration_s = 5;
    uint32_t program = 0x20000001;
    uint32_t version = 1;
    double timeout_s = 10;
    tls::client_options tls;   // client side
    std::string ciphersuites;  // "" = OpenSSL's default
    // Baseline only: the server side's certificate and key.
    std::string server_cert, server_key;
};

struct handshake_report {
    std::string what;  // "starttls 127.0.0.1:2049", "baseline"
    unsigned connections = 0;
    uint64_t handshakes = 0;  // completed cycles
    uint64_t errors = 0;
    std::string first_error;
    double elapsed_s = 0;
    latency_histogram latency;  // per cycle, nanoseconds
    std::string version, cipher;
    double server_cpu_s = 0;  // baseline: time spent in the server session

    double rate() const noexcept { return elapsed_s > 0 ? double(handshakes) / elapsed_s : 0; }
    double server_rate() const noexcept {
        return server_cpu_s > 0 ? double(handshakes) / server_cpu_s : 0;
    }
    int exit_status() const noexcept { return handshakes > 0 && errors == 0 ? 0 : 1; }
};

// On a set-up failure (bad certificate files, ...) `err` holds one line.
handshake_report run_handshakes(const handshake_options& opt, std::string* err,
                                const std::atomic<bool>* stop = nullptr);
handshake_report run_baseline(const handshake_options& opt, std::string* err,
                              const std::atomic<bool>* stop = nullptr);

std::string format_human(const handshake_report& r);
std::string format_json(const handshake_report& r);

}  // namespace rpcgate::bench
