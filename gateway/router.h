// Routing: which configured backend serves a call, by program and version,
// and what the gateway does with a call from a client (`decide_call`).
//
// A route is one configured backend (`--backend PROG=HOST:PORT,vers=N`,
// see config.h): its index in gateway_config::backends is the route number
// that sessions use for their backend links. A route without a version
// takes every version of its program (the usual case: one NFS server for
// NFSv3 and NFSv4); a route with one takes that version only, and wins over
// a route of the same program without one.
//
// Pure logic, no I/O: unit-tested in tests/unit/gateway/router_test.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gateway/config.h"
#include "rpc/message.h"

namespace rpcgate::gw {

class router {
  public:
    static constexpr size_t no_route = size_t(-1);

    explicit router(const std::vector<backend_route>& routes) : routes_(routes) {}

    // The route for (prog, vers), or no_route.
    size_t route(uint32_t prog, uint32_t vers) const noexcept;
    // True when some route serves `prog` (any version).
    bool routes(uint32_t prog) const noexcept;
    // The lowest and highest version routed for `prog` when every route of
    // it names a version (for PROG_MISMATCH); false otherwise.
    bool version_range(uint32_t prog, uint32_t* low, uint32_t* high) const noexcept;

  private:
    const std::vector<backend_route>& routes_;
};

// What a session does with one CALL from its client, by RFC 9289 policy,
// then routing. In the order the checks run.
enum class call_verdict {
    starttls,         // an AUTH_TLS probe and TLS is offered: STARTTLS, then hand off
    refuse_probe,     // an AUTH_TLS probe, TLS off: AUTH_ERROR rejectedcred
    auth_tls_misuse,  // AUTH_TLS where it does not belong: AUTH_BADCRED
    too_weak,         // plaintext call of a program the listener demands TLS for:
                      // AUTH_TOOWEAK (RFC 9289 §4.2)
    forward,          // to `route`
    portmap,          // answered by the gateway (portmap v2)
    prog_mismatch,    // the program is routed, not this version: PROG_MISMATCH low..high
    prog_unavail,     // no route: PROG_UNAVAIL
};
const char* call_verdict_name(call_verdict v) noexcept;

struct call_decision {
    call_verdict verdict = call_verdict::prog_unavail;
    // The listener demands TLS (required/mtls), the call came in plaintext and
    // was let through because its program is not in `tls_programs`.
    bool plaintext_allowed = false;
    size_t route = router::no_route;  // forward
    uint32_t low = 0, high = 0;       // prog_mismatch
};

// What a listener demands of its calls: `policy` (--tls), and under required
// or mtls the programs it demands TLS for (--require-tls-for).
struct listener_policy {
    tls_policy policy = tls_policy::off;
    const program_set* tls_programs = nullptr;  // nullptr: every program
};

// `in_tls`: the connection is in TLS already; `tls_offered`: the gateway
// runs handshakes and --tls is not off.
call_decision decide_call(const rpc::call_header& h, bool in_tls, bool tls_offered,
                          const listener_policy& policy, bool answer_portmap, const router& r);

}  // namespace rpcgate::gw
