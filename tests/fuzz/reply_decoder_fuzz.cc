// Fuzzes decode_reply. A decoded reply re-encoded with build_reply must
// decode to the same header and results. The first byte chooses the slicing.
#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "tests/fuzz/fuzz_util.h"

using namespace rpcgate;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    core::slice_chain rec = fuzz::split_chain(data + 1, size - 1, data[0]);
    auto m = rpc::decode_reply(rec);
    if (!m) return 0;
    const auto& h = m->header;
    (void)rpc::is_starttls_reply(h);
    std::string results = m->results.to_string();
    auto framed = rpc::build_reply(h, std::move(m->results));
    // Single fragment: strip the record mark and decode again.
    std::string bytes = framed.to_string();
    RPCGATE_FUZZ_CHECK(bytes.size() >= 4);
    core::slice_chain again(core::slice::copy_of(bytes.substr(4)));
    auto m2 = rpc::decode_reply(again);
    RPCGATE_FUZZ_CHECK(m2.ok());
    const auto& h2 = m2->header;
    RPCGATE_FUZZ_CHECK(h2.xid == h.xid && h2.stat == h.stat);
    if (h.stat == rpc::reply_stat::accepted) {
        RPCGATE_FUZZ_CHECK(h2.accept == h.accept && h2.verf == h.verf);
    } else {
        RPCGATE_FUZZ_CHECK(h2.reject == h.reject);
        if (h.reject == rpc::reject_stat::auth_error) RPCGATE_FUZZ_CHECK(h2.auth == h.auth);
    }
    RPCGATE_FUZZ_CHECK(h2.mismatch_low == h.mismatch_low && h2.mismatch_high == h.mismatch_high);
    RPCGATE_FUZZ_CHECK(m2->results == results);
    // The no-results builder must agree with the chain builder's header.
    if (results.empty()) RPCGATE_FUZZ_CHECK(rpc::build_reply(h).view() == bytes);
    return 0;
}
