// rpcgate-probe: does a server speak RPC-with-TLS (RFC 9289), and how?
//
//   rpcgate-probe HOST:PORT [--prog N|name] [--vers N] [--ca FILE]
//                 [--cert FILE --key FILE] [--server-name NAME] [--implicit]
//                 [--json] [--timeout S]
//
// Stages, one line each: TCP connect; the AUTH_TLS probe and what the server
// answered; the TLS handshake (version, cipher, ALPN); the server certificate
// (subject, issuer, validity) and whether it verified; one NULL call over TLS.
// With --implicit there is no probe: TLS starts with the first byte.
//
// Exit status (distinct per stage so scripts can tell why):
//   0  RFC 9289 TLS works: probe accepted, TLS 1.3, NULL answered over TLS
//   2  bad options            3  TCP connect failed
//   4  probe refused, or no usable reply to it
//   5  TLS handshake failed, or it negotiated less than TLS 1.3
//   6  no (or a bad) reply to the NULL call over TLS
//
// Through a gateway the NULL call is forwarded to the server the program is
// routed to, so a failure after a good handshake usually lies behind the
// gateway: the verdict says which (connection closed at the call: the backend
// is unreachable; PROG_UNAVAIL: the program is not routed).
//
// The protocol is the shared client library's (tls/client); this file only
// runs it and reports. Main thread; blocks.
#pragma once

#include <cstdint>
#include <string>

#include "tls/context.h"

namespace rpcgate::probe {

inline constexpr int exit_ok = 0;
inline constexpr int exit_usage = 2;
inline constexpr int exit_connect = 3;
inline constexpr int exit_probe = 4;
inline constexpr int exit_handshake = 5;
inline constexpr int exit_no_reply = 6;

struct probe_options {
    std::string host;
    uint16_t port = 0;
    uint32_t prog = 100003;  // nfs
    uint32_t vers = 3;
    bool implicit = false;
    double timeout_s = 10;
    tls::client_options tls;
};

// What each stage found; `exit_status` is the first failure's code.
struct probe_report {
    std::string target;
    bool implicit = false;
    uint32_t prog = 0, vers = 0;
    bool connected = false;
    double connect_ms = 0;
    std::string connect_error;
    // Probe (starttls only).
    std::string probe_outcome;  // "accepted", "refused", "error", "skipped"
    std::string probe_reply;    // what the server answered, in words
    uint32_t probe_xid = 0;
    double probe_ms = 0;
    // Handshake.
    bool handshake_ok = false;
    double handshake_ms = 0;
    std::string handshake_error;
    std::string version, cipher, alpn;
    std::string peer_subject, peer_issuer, not_before, not_after;
    std::string verify;  // "ok", "not checked (no --ca)", or the X509 error
    std::string flags;   // "HANDSHAKE|GOTCERT|VERIFIED"
    // NULL over TLS.
    bool null_ok = false;
    double null_ms = 0;
    std::string null_result;
    // Why the NULL call failed: "closed" (the peer ended the connection at the
    // call), "no reply" (none in time), "not served" (PROG_UNAVAIL or
    // PROG_MISMATCH), "error" (anything else); "" when it succeeded.
    std::string null_failure;
    int exit_status = exit_ok;
    std::string verdict;  // one line
};

probe_report run_probe(const probe_options& opt);
// One line per stage / one JSON object (single line).
std::string format_human(const probe_report& r);
std::string format_json(const probe_report& r);

// The whole CLI minus the process (tests call it in-process): parses `argv`,
// prints to stdout/stderr, returns the exit status.
int probe_main(int argc, char** argv);

}  // namespace rpcgate::probe
