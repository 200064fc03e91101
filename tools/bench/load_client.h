// load_client: the `rpcgate-bench run` load generator, on the rpcgate engine.
//
// N connections are spread round-robin over T shards; each keeps `depth`
// calls in flight (pipelined on the one connection) until the run's duration
// or call count is reached, then drains what is in flight and closes. Per
// call: one hand-encoded 48-byte header from a per-connection slab, and the
// payload as an *unowned* slice of one process-wide block (same bytes for
// every call and thread, so nothing is copied or reference-counted); replies
// come through one record_reassembler per connection and are matched by xid
// to a slot (xid = sequence << slot_bits | slot). Latency (queued for sending
// → reply decoded) goes into a per-shard latency_histogram.
//
// Every run is bounded: a call unanswered after `timeout_ms`, or a connect
// that takes longer, is an error and ends its connection; the shards are made
// to exit a short grace after the last connection finished.
//
// Errors are counted, never fatal to the run: refused or failed connects, a
// connection lost mid-run (its calls in flight count), timeouts, non-SUCCESS
// replies (PROG_UNAVAIL, ...), malformed replies, replies whose xid matches
// no call in flight, and with `verify` any byte that differs.
//
// A CALL received from the server (the backchannel, program 0x20000002) is
// answered with its own opaque (echo), as an NFSv4.1 client answers callbacks.
//
// Open loop (`rate` > 0): instead of sending when a slot frees, each
// connection sends on the schedule of open_loop_schedule, and a call's
// latency runs from its *intended* send time (no coordinated omission). A
// pacer thread wakes a shard when one of its connections has a call due; the
// `depth` slots still bound the calls in flight, and a call that finds none
// free waits, its lateness counted. The report says how late the client sent
// (send lag) and how many calls were due but never sent when the run ended.
//
// Progress: every `progress_interval_s` the main thread asks each shard for a
// copy of its histogram (through its mailbox) and prints one line on stderr:
// elapsed, ops/s over the last interval, p50/p99 so far, errors.
//
// Reconnect (`reconnect`, off by default): a connection the server closes,
// or loses, while the run goes on is opened again (with a new TLS handshake
// under TLS) and carries on with its budget. Its calls in flight at the close
// are lost (counted in lost_calls, errors); a close with none in flight, e.g.
// a proxy draining at an idle point, loses nothing. Connects, reconnects and
// both kinds of close are counted, so that a proxy reload under load can be
// measured. A reconnect that fails is retried every 20 ms for one
// `timeout_ms` (each failure a connect error), then the connection ends.
// Protocol errors, TLS failures and call timeouts still end the connection.
// Without `reconnect` a connection the server closes mid-run ends there, and
// counts one lost call even when it had none in flight.
//
// Threads: `run_load` is called from one thread, which it blocks; it starts
// and joins the shards (and the pacer) itself. `stop` may be set from any thread (a signal
// handler's flag): the run then ends early, as if its duration had passed.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "core/shard.h"
#include "tls/client/client_session.h"
#include "tls/context.h"
#include "tools/bench/address.h"
#include "tools/bench/latency_histogram.h"

namespace rpcgate::bench {

enum class bench_proc { null, echo, callback };

struct run_options {
    socket_address target;
    unsigned connections = 1;
    unsigned depth = 1;
    unsigned threads = 0;   // 0: min(cores, connections)
    size_t size = 0;        // payload bytes per call
    size_t size_max = 0;    // > size: uniform random in [size, size_max]
    double duration_s = 0;  // run time (0: until `calls`)
    uint64_t calls = 0;     // total calls (0: until `duration_s`)
    bench_proc proc = bench_proc::echo;
    uint32_t program = 0x20000001;  // overridable to test refusals
    uint32_t version = 1;
    bool verify = false;     // compare every reply byte (default: lengths only)
    bool reconnect = false;  // reopen a connection the server closed (see above)
    uint64_t seed = 1;
    uint32_t timeout_ms = 10000;     // per call, and per connect
    double rate = 0;                 // open loop: calls/s over all connections; 0: closed loop
    double progress_interval_s = 1;  // stderr progress line; 0: none
    // Progress lines only for runs longer than this (a --calls run: from then on).
    double progress_min_run_s = 3;
    core::shard_config shard;  // index set per shard
    // TLS per connection (client::client_session, the RFC 9289 client role):
    // starttls = AUTH_TLS probe of (program, version), then TLS 1.3; implicit
    // = TLS from the first byte. The handshake is done on the shard, before
    // the connection's first call; its time is not in the throughput figures.
    client::tls_mode tls = client::tls_mode::off;
    tls::client_options tls_options;
    std::string ciphersuites;  // TLS 1.3 suites to offer ("" = OpenSSL's default)
};

struct run_report {
    // What was asked.
    unsigned connections = 0, depth = 0, threads = 0;
    size_t size = 0, size_max = 0;
    bench_proc proc = bench_proc::echo;
    bool verify = false;
    bool reconnect = false;
    client::tls_mode tls = client::tls_mode::off;
    double rate = 0;  // open loop's target calls/s; 0: closed loop
    // What happened.
    uint64_t calls = 0;                   // completed successfully
    uint64_t errors = 0;                  // sum of the kinds below
    uint64_t connect_errors = 0;          // connects refused, failed or timed out
    uint64_t lost_calls = 0;              // calls in flight on a connection that closed
    uint64_t connects = 0;                // TCP connects that succeeded, first ones included
    uint64_t reconnects = 0;              // of which after a close (with `reconnect`)
    uint64_t clean_closes = 0;            // server closes mid-run with no call in flight
    uint64_t closes_in_flight = 0;        // server closes (or losses) with calls in flight
    uint64_t timeouts = 0;                // calls unanswered after timeout_ms
    uint64_t rpc_errors = 0;              // replies that were not MSG_ACCEPTED/SUCCESS
    uint64_t bad_replies = 0;             // malformed, wrong length, bytes differ, unknown xid
    uint64_t tls_errors = 0;              // probe refused, handshake or record failure
    uint64_t backchannel_calls = 0;       // server CALLs answered by the client
    uint64_t missed_calls = 0;            // open loop: due before the end, never sent
    uint64_t payload_bytes_sent = 0;      // opaque bytes of completed calls
    uint64_t payload_bytes_received = 0;  // opaque bytes of their replies
    double elapsed_s = 0;                 // first call sent -> last reply
    latency_histogram latency;            // nanoseconds
    latency_histogram handshake_latency;  // connect done -> TLS ready, nanoseconds
    latency_histogram send_lag;           // open loop: sent - intended, nanoseconds
    std::string tls_version, tls_cipher;  // as negotiated (first connection)

    double ops_per_sec() const noexcept { return elapsed_s > 0 ? double(calls) / elapsed_s : 0; }
    // Payload bytes both ways (sent + received) per second.
    double bytes_per_sec() const noexcept {
        return elapsed_s > 0 ? double(payload_bytes_sent + payload_bytes_received) / elapsed_s : 0;
    }
    // The process exit status the CLI uses: 0 only if calls completed and
    // nothing failed.
    int exit_status() const noexcept { return calls > 0 && errors == 0 ? 0 : 1; }
};

// Runs the load; returns the report, or "" in `err` on success and a one-line
// reason (and an empty report) when the run could not start at all.
run_report run_load(const run_options& opt, std::string* err,
                    const std::atomic<bool>* stop = nullptr);

// The one TLS client context of a run, shared by all its connections and
// threads (an SSL_CTX is), offering only `ciphersuites` when it is not "".
// Null and a reason in `err` when the options are not usable.
std::unique_ptr<tls::context> make_tls_client_context(const tls::client_options& o,
                                                      const std::string& ciphersuites,
                                                      std::string* err);

// A multi-line human summary / one JSON object (single line, no newline).
// The JSON has the summary figures (ops_per_sec, mb_per_sec, p50_us, p90_us,
// p99_us, p999_us, max_us, errors, lost_calls, connects, reconnects,
// clean_closes, closes_in_flight, ...) and, under "histogram", every
// non-empty latency bucket (see histogram_json). Defined in run_format.cc,
// with the other text forms below.
std::string format_human(const run_report& r);
std::string format_json(const run_report& r);
// {"unit":"ns","count":N,"buckets":[[lowest,highest,count],...]}: the
// non-empty buckets, lowest first; bucket b holds values in [lowest, highest].
std::string histogram_json(const latency_histogram& h);
// The latency figures of `h` as JSON members, no braces: "p50_us":..,
// "p90_us", "p99_us", "p999_us", "max_us", "min_us", "mean_us" (microseconds).
std::string latency_json_fields(const latency_histogram& h);
// The same for people: "p50 12.3 us  p90 ... us  p99 ...  p999 ...  max ...".
std::string latency_human(const latency_histogram& h);
// The progress line (no newline): elapsed seconds, ops/s over the last
// interval, p50/p99 of `so_far` (omitted when it is empty), errors.
std::string format_progress(double elapsed_s, double ops_per_sec, const latency_histogram& so_far,
                            uint64_t errors);
const char* to_string(bench_proc p) noexcept;

}  // namespace rpcgate::bench
