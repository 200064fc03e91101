// Fuzzes AUTH_TLS probe recognition (RFC 9289 §4.1) against a reference that
// reads the credential and verifier straight from the record's bytes, and the
// replies the gateway sends for each verdict: a probe gets a STARTTLS reply
// that the client role recognises, misuse gets AUTH_ERROR/AUTH_BADCRED that
// it does not. The input is also tried as a reply, where is_starttls_reply
// must agree with the same byte-level reference.
//   input[0]: bit 0 = the connection already runs TLS; the rest picks the cut
//   input[1..]: one record body (no record mark)
#include <cstring>
#include <string>

#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "rpc/record.h"
#include "tests/fuzz/fuzz_util.h"

using namespace rpcgate;

namespace {

uint32_t be32(const uint8_t* p) {
    return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}

void check_as_call(const uint8_t* body, size_t size, bool over_tls, uint32_t shape) {
    auto m = rpc::decode_call(fuzz::split_chain(body, size, shape));
    if (!m) return;
    const auto& h = m->header;
    // Reference, by offset: xid type rpcvers prog vers proc | cred flavor len body.. | verf.
    RPCGATE_FUZZ_CHECK(size >= 32);
    uint32_t proc = be32(body + 20), cflavor = be32(body + 24), clen = be32(body + 28);
    size_t at = 32 + ((clen + 3) & ~size_t{3});
    RPCGATE_FUZZ_CHECK(at + 8 <= size);
    uint32_t vflavor = be32(body + at), vlen = be32(body + at + 4);
    RPCGATE_FUZZ_CHECK(h.proc == proc && h.cred.flavor == cflavor && h.cred.len == clen &&
                       h.verf.flavor == vflavor && h.verf.len == vlen);
    rpc::auth_tls_use want = rpc::auth_tls_use::none;
    if (cflavor == 7)
        want = !over_tls && proc == 0 && clen == 0 && vflavor == 0 && vlen == 0
                   ? rpc::auth_tls_use::probe
                   : rpc::auth_tls_use::misuse;
    rpc::auth_tls_use got = rpc::classify_auth_tls(h, over_tls);
    RPCGATE_FUZZ_CHECK(got == want);

    if (got == rpc::auth_tls_use::probe) {
        core::slice reply = rpc::build_starttls_reply(h.xid);
        RPCGATE_FUZZ_CHECK(reply.size() == 36);
        auto r = rpc::decode_reply(fuzz::unframe(core::slice_chain(std::move(reply))));
        RPCGATE_FUZZ_CHECK(r.ok() && r->header.xid == h.xid && rpc::is_starttls_reply(r->header));
        RPCGATE_FUZZ_CHECK(r->results.size() == 0);
    } else if (got == rpc::auth_tls_use::misuse) {
        core::slice reply = rpc::build_auth_tls_badcred_reply(h.xid);
        RPCGATE_FUZZ_CHECK(reply.size() == 24);
        auto r = rpc::decode_reply(fuzz::unframe(core::slice_chain(std::move(reply))));
        RPCGATE_FUZZ_CHECK(r.ok() && r->header.xid == h.xid && !rpc::is_starttls_reply(r->header));
        RPCGATE_FUZZ_CHECK(r->header.stat == rpc::reply_stat::denied &&
                           r->header.reject == rpc::reject_stat::auth_error &&
                           r->header.auth == rpc::auth_stat::badcred);
    }
    // The client role's probe for this program is recognised as one, and only
    // outside TLS.
    core::slice probe = rpc::build_tls_probe_call(h.xid, h.prog, h.vers);
    RPCGATE_FUZZ_CHECK(probe.size() == 44);
    auto p = rpc::decode_call(fuzz::unframe(core::slice_chain(std::move(probe))));
    RPCGATE_FUZZ_CHECK(p.ok() && p->header.prog == h.prog && p->header.vers == h.vers);
    RPCGATE_FUZZ_CHECK(rpc::classify_auth_tls(p->header, false) == rpc::auth_tls_use::probe);
    RPCGATE_FUZZ_CHECK(rpc::classify_auth_tls(p->header, true) == rpc::auth_tls_use::misuse);
}

void check_as_reply(const uint8_t* body, size_t size, uint32_t shape) {
    auto r = rpc::decode_reply(fuzz::split_chain(body, size, shape));
    if (!r) return;
    // xid REPLY MSG_ACCEPTED verf(flavor len body) accept_stat
    bool want = size >= 20 && be32(body + 8) == 0 && be32(body + 12) == 0 && be32(body + 16) == 8 &&
                size >= 32 && std::memcmp(body + 20, "STARTTLS", 8) == 0 && be32(body + 28) == 0;
    RPCGATE_FUZZ_CHECK(rpc::is_starttls_reply(r->header) == want);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    bool over_tls = data[0] & 1;
    check_as_call(data + 1, size - 1, over_tls, data[0]);
    check_as_reply(data + 1, size - 1, data[0]);
    return 0;
}
