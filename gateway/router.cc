#include "gateway/router.h"

#include "rpc/auth_tls.h"
#include "rpc/portmap.h"

namespace rpcgate::gw {

size_t router::route(uint32_t prog, uint32_t vers) const noexcept {
    size_t any = no_route;
    for (size_t i = 0; i < routes_.size(); ++i) {
        if (routes_[i].prog != prog) continue;
        if (routes_[i].vers == vers) return i;
        if (routes_[i].vers == 0 && any == no_route) any = i;
    }
    return any;
}

bool router::routes(uint32_t prog) const noexcept {
    for (const backend_route& r : routes_)
        if (r.prog == prog) return true;
    return false;
}

bool router::version_range(uint32_t prog, uint32_t* low, uint32_t* high) const noexcept {
    bool found = false;
    for (const backend_route& r : routes_) {
        if (r.prog != prog) continue;
        if (r.vers == 0) return false;
        if (!found || r.vers < *low) *low = r.vers;
        if (!found || r.vers > *high) *high = r.vers;
        found = true;
    }
    return found;
}

const char* call_verdict_name(call_verdict v) noexcept {
    switch (v) {
        case call_verdict::starttls:
            return "starttls";
        case call_verdict::refuse_probe:
            return "refuse_probe";
        case call_verdict::auth_tls_misuse:
            return "auth_tls_misuse";
        case call_verdict::too_weak:
            return "too_weak";
        case call_verdict::forward:
            return "forward";
        case call_verdict::portmap:
            return "portmap";
        case call_verdict::prog_mismatch:
            return "prog_mismatch";
        case call_verdict::prog_unavail:
            return "prog_unavail";
    }
    return "?";
}

call_decision decide_call(const rpc::call_header& h, bool in_tls, bool tls_offered,
                          const listener_policy& policy, bool answer_portmap, const router& r) {
    call_decision d;
    switch (rpc::classify_auth_tls(h, in_tls)) {
        case rpc::auth_tls_use::probe:
            d.verdict = tls_offered ? call_verdict::starttls : call_verdict::refuse_probe;
            return d;
        case rpc::auth_tls_use::misuse:
            d.verdict = call_verdict::auth_tls_misuse;
            return d;
        case rpc::auth_tls_use::none:
            break;
    }
    if (!in_tls && policy.policy >= tls_policy::required) {
        // RFC 9289 §4.2 leaves to the server which RPC programs it serves
        // only inside TLS. Per program, as knfsd's `xprtsec=` (the NFS program
        // only) and the Linux client (portmap, MOUNT, NLM, NSM in plaintext):
        // a listener that refused them all could never serve an NFSv3 mount.
        if (!policy.tls_programs || policy.tls_programs->contains(h.prog)) {
            d.verdict = call_verdict::too_weak;
            return d;
        }
        d.plaintext_allowed = true;
    }
    d.route = r.route(h.prog, h.vers);
    if (d.route != router::no_route) {
        d.verdict = call_verdict::forward;
        return d;
    }
    if (r.version_range(h.prog, &d.low, &d.high)) {
        d.verdict = call_verdict::prog_mismatch;
        return d;
    }
    if (h.prog == rpc::pmap_prog && answer_portmap) {
        d.verdict = call_verdict::portmap;
        return d;
    }
    d.verdict = call_verdict::prog_unavail;
    return d;
}

}  // namespace rpcgate::gw
