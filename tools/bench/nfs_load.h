// nfs_load: the `rpcgate-bench nfs` load generator — NFSv3 (or NFSv4.1) over
// TCP (ONC RPC record marking, AUTH_SYS) against any NFS server or gateway.
//
// NFSv4.1 (`v4`): no MOUNT; the set-up and each connection have their own
// client ID and session, and the handles come from PUTROOTFH and LOOKUPs; the
// file must exist (see nfs4_protocol.h). Everything else is as for NFSv3,
// which the rest of this comment describes.
//
// Set-up, not timed: MOUNT v3 MNT of the export (to `mount_port`, or to the
// port portmap's GETPORT on port 111 gives for MOUNT v3 over TCP) gives the
// root file handle; LOOKUP of the test file in it, CREATE (UNCHECKED) when it
// does not exist; with `fill`, the pattern (nfs_protocol.h) is written over
// [0, file_size) and committed.
//
// The run: N connections, one thread each (the client library's blocking
// connection, tls/client/blocking_client.h, so --tls starttls is the RFC 9289
// probe of the NFS version in use and TLS 1.3, as `run` and `handshake` do it), each
// keeping `depth` calls in flight, pipelined: a new call leaves as soon as a
// reply came back. Each call is drawn from the mix (READ, WRITE, GETATTR,
// LOOKUP, NULL by weight); READ and WRITE move `size` bytes at an offset in
// [0, file_size) that is sequential (one cursor per kind shared by every
// connection, wrapping) or random (aligned to `size`). WRITEs are UNSTABLE
// unless asked otherwise and are committed after the run (not timed).
//
// Sends block the connection's thread (with the call timeout as deadline)
// while the socket is full; its replies wait in the socket meanwhile, so very
// deep pipelines of large WRITEs are bounded by the socket buffers, not by
// `depth` alone.
//
// Latency (call sent → reply decoded) goes into one histogram per connection
// and per kind; progress lines, the human summary and the JSON use the same
// helpers as `run` (load_client.h).
//
// --verify: WRITEs carry the pattern of their offset (so the file stays
// verifiable while it is written), and every READ's bytes are compared with
// it; a READ that ends early before the end of the file counts too. Any
// difference is a mismatch, and a mismatch makes the exit status 1.
//
// Errors are counted, never fatal to the run: a connection that fails to
// open, or is lost (its calls in flight count as lost), ends that connection
// only. A set-up failure ends the run before it starts (`err`).
//
// Threads: run_nfs blocks its caller, starting and joining the connection
// threads itself; `stop` (a signal flag) ends the run early.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "tls/client/client_session.h"
#include "tls/context.h"
#include "tools/bench/latency_histogram.h"
#include "tools/bench/nfs_protocol.h"

namespace rpcgate::bench {

// The kinds of call the mix draws from.
enum class nfs_op { read, write, getattr, lookup, null };
inline constexpr unsigned nfs_op_count = 5;
const char* to_string(nfs_op op) noexcept;

struct nfs_options {
    std::string host = "127.0.0.1";
    uint16_t port = 2049;
    bool v4 = false;          // NFSv4.1 (nfs4_protocol.h) instead of NFSv3
    uint16_t mount_port = 0;  // 0: ask portmap on port 111 (NFSv3 only)
    std::string export_path = "/";
    std::string file = "rpcgate-bench.dat";
    unsigned connections = 1;
    unsigned depth = 1;
    uint32_t size = 4096;        // bytes per READ / WRITE
    uint64_t file_size = 0;      // 0: the file's size, or 16 MiB if it is smaller than `size`
    bool random = false;         // offsets: random, else sequential
    unsigned mix[nfs_op_count];  // weights by nfs_op
    double duration_s = 0;
    uint64_t calls = 0;
    bool verify = false;
    bool fill = false;  // write the pattern over the file first
    nfs3::stable_how stable = nfs3::stable_how::unstable;
    uint32_t uid = 0, gid = 0;  // AUTH_SYS
    uint64_t seed = 1;
    uint32_t timeout_ms = 10000;
    double progress_interval_s = 1;
    double progress_min_run_s = 3;
    client::tls_mode tls = client::tls_mode::off;
    // MOUNT's connection: as `tls` unless set (e.g. plaintext MOUNT straight
    // to the server while NFS goes through a TLS tunnel).
    std::optional<client::tls_mode> mount_tls;
    tls::client_options tls_options;
    std::string ciphersuites;

    nfs_options() : mix{100, 0, 0, 0, 0} {}
};

// "read=70,write=30" (kinds: read, write, getattr, lookup, null) into weights;
// false and a reason for anything else or an all-zero mix.
bool parse_nfs_mix(const std::string& text, unsigned (&mix)[nfs_op_count], std::string* err);
std::string format_nfs_mix(const unsigned (&mix)[nfs_op_count]);

struct nfs_report {
    // What was asked.
    std::string target, mix;
    bool v4 = false;
    unsigned connections = 0, depth = 0;
    uint32_t size = 0;
    uint64_t file_size = 0;
    bool random = false, verify = false;
    client::tls_mode tls = client::tls_mode::off;
    // What happened.
    uint64_t calls = 0;             // completed with NFS3_OK
    uint64_t errors = 0;            // sum of the kinds below
    uint64_t connect_errors = 0;    // connection (or TLS start-up) failed
    uint64_t lost_calls = 0;        // in flight on a connection that failed or timed out
    uint64_t rpc_errors = 0;        // replies that were not MSG_ACCEPTED/SUCCESS
    uint64_t nfs_errors = 0;        // NFS status other than NFS3_OK
    uint64_t bad_replies = 0;       // undecodable, unknown xid, short WRITE
    uint64_t mismatched_reads = 0;  // --verify: READs whose bytes differ (or ended early)
    uint64_t mismatched_bytes = 0;
    uint64_t bytes_read = 0, bytes_written = 0;
    double elapsed_s = 0;       // first call sent -> last reply
    latency_histogram latency;  // every kind, nanoseconds
    uint64_t op_calls[nfs_op_count] = {};
    latency_histogram op_latency[nfs_op_count];
    std::string tls_version, tls_cipher;
    std::string first_error;

    double ops_per_sec() const noexcept { return elapsed_s > 0 ? double(calls) / elapsed_s : 0; }
    // File data read plus written, per second.
    double bytes_per_sec() const noexcept {
        return elapsed_s > 0 ? double(bytes_read + bytes_written) / elapsed_s : 0;
    }
    int exit_status() const noexcept { return calls > 0 && errors == 0 ? 0 : 1; }
};

nfs_report run_nfs(const nfs_options& opt, std::string* err,
                   const std::atomic<bool>* stop = nullptr);

std::string format_human(const nfs_report& r);
std::string format_json(const nfs_report& r);

}  // namespace rpcgate::bench
