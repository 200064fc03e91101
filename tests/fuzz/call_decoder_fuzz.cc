// Fuzzes decode_call (and what the gateway does next with a call: AUTH_TLS
// classification, AUTH_SYS parsing). A decoded call re-encoded with
// build_call must decode to the same header and arguments. The first input
// byte chooses how the record is cut into slices.
#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "tests/fuzz/fuzz_util.h"

using namespace rpcgate;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    core::slice_chain rec = fuzz::split_chain(data + 1, size - 1, data[0]);
    auto peek = rpc::peek_message(rec);
    auto m = rpc::decode_call(rec);
    if (!m) {
        if (m.error() == rpc::errc::rpc_version_mismatch) RPCGATE_FUZZ_CHECK(peek.ok());
        return 0;
    }
    RPCGATE_FUZZ_CHECK(peek.ok() && peek->type == rpc::msg_type::call);
    const auto& h = m->header;
    RPCGATE_FUZZ_CHECK(h.cred.len <= rpc::opaque_auth::max_body);
    (void)rpc::classify_auth_tls(h, data[0] & 1);
    if (h.cred.is(rpc::auth_flavor::sys)) {
        auto sys = rpc::decode_auth_sys(h.cred);
        if (sys) RPCGATE_FUZZ_CHECK(sys->machinename_len <= 255 && sys->gid_count <= 16);
    }
    std::string args = m->args.to_string();
    auto framed = rpc::build_call(h, std::move(m->args), 1 + data[0] * 7);
    rpc::record_reassembler ra;
    int n = 0;
    for (const auto& s : framed) {
        auto r = ra.feed(s, [&](core::slice_chain&& again) {
            ++n;
            auto m2 = rpc::decode_call(again);
            RPCGATE_FUZZ_CHECK(m2.ok());
            const auto& h2 = m2->header;
            RPCGATE_FUZZ_CHECK(h2.xid == h.xid && h2.prog == h.prog && h2.vers == h.vers &&
                               h2.proc == h.proc && h2.cred == h.cred && h2.verf == h.verf);
            RPCGATE_FUZZ_CHECK(m2->args == args);
        });
        RPCGATE_FUZZ_CHECK(r.ok());
    }
    RPCGATE_FUZZ_CHECK(n == 1);
    return 0;
}
