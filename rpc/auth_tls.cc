#include "rpc/auth_tls.h"

#include <cstring>

namespace rpcgate::rpc {

auth_tls_use classify_auth_tls(const call_header& h, bool over_tls) noexcept {
    if (!h.cred.is(auth_flavor::tls)) return auth_tls_use::none;
    if (over_tls || h.proc != 0 || h.cred.len != 0 || !h.verf.is(auth_flavor::none) ||
        h.verf.len != 0)
        return auth_tls_use::misuse;
    return auth_tls_use::probe;
}

core::slice build_starttls_reply(uint32_t xid) {
    reply_header h = reply_header::accepted(xid, accept_stat::success);
    h.verf = opaque_auth::make(
        static_cast<uint32_t>(auth_flavor::none),
        {reinterpret_cast<const uint8_t*>(starttls_verifier.data()), starttls_verifier.size()});
    return build_reply(h);
}

core::slice build_auth_tls_badcred_reply(uint32_t xid) {
    return build_reply(reply_header::auth_error(xid, auth_stat::badcred));
}

core::slice build_tls_probe_call(uint32_t xid, uint32_t prog, uint32_t vers) {
    call_header h;
    h.xid = xid;
    h.prog = prog;
    h.vers = vers;
    h.proc = 0;
    h.cred.flavor = static_cast<uint32_t>(auth_flavor::tls);
    return build_call(h, {}).linearize();
}

bool is_starttls_reply(const reply_header& r) noexcept {
    return r.stat == reply_stat::accepted && r.accept == accept_stat::success &&
           r.verf.is(auth_flavor::none) && r.verf.len == starttls_verifier.size() &&
           std::memcmp(r.verf.body, starttls_verifier.data(), starttls_verifier.size()) == 0;
}

}  // namespace rpcgate::rpc
