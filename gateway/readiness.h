// Readiness (/readyz on the admin endpoint): can this gateway serve a client
// now? Yes when its listeners are up and every route's backend accepts a TCP
// connection. /healthz answers a different question (are the threads alive);
// a load balancer or systemd should route by /readyz, restart by /healthz.
//
// The backend check is active: each /readyz connects to every route's
// backend at once (non-blocking), waits for all of them up to a deadline,
// and closes the probes without sending a byte. That notices a backend that
// died while no client was using it, which the per-route counters cannot.
// Runs on the admin thread; blocking for at most `timeout_ms`.
#pragma once

#include <string>
#include <vector>

#include "gateway/config.h"

namespace rpcgate::gw {

struct backend_probe {
    bool reachable = false;
    std::string error;  // strerror of the failed connect, or "timed out"
    double ms = 0;      // how long the connect took (reachable only)
};

// One TCP connect per route, all at once, each cut at `timeout_ms`.
std::vector<backend_probe> probe_backends(const std::vector<backend_route>& routes, int timeout_ms);

struct readiness {
    bool listeners_up = false;
    std::vector<backend_probe> backends;  // one per route, in route order
    bool ready() const noexcept;
    // {"ready":..,"listeners":"up"|"down","routes":[{"route":"nfs(100003)",
    //  "backend":"HOST:PORT","reachable":..,"ms":..|"error":".."}]}
    std::string json(const std::vector<backend_route>& routes) const;
};

}  // namespace rpcgate::gw
