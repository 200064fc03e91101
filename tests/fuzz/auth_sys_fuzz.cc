// Fuzzes decode_auth_sys: limits hold, and decode(encode(decode(x))) is stable.
#include "rpc/message.h"
#include "tests/fuzz/fuzz_util.h"

using namespace rpcgate;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    auto p = rpc::decode_auth_sys(std::span<const uint8_t>(data, size));
    if (!p) return 0;
    RPCGATE_FUZZ_CHECK(p->machinename_len <= rpc::auth_sys_params::max_machinename);
    RPCGATE_FUZZ_CHECK(p->gid_count <= rpc::auth_sys_params::max_gids);
    // A valid body is at most 340 bytes and fits an opaque_auth.
    RPCGATE_FUZZ_CHECK(size <= 340);
    rpc::opaque_auth cred = rpc::encode_auth_sys(*p);
    RPCGATE_FUZZ_CHECK(cred.len == size);  // only padding bytes may differ
    auto q = rpc::decode_auth_sys(cred);
    RPCGATE_FUZZ_CHECK(q.ok());
    RPCGATE_FUZZ_CHECK(q->stamp == p->stamp && q->uid == p->uid && q->gid == p->gid &&
                       q->machine() == p->machine() && q->gid_count == p->gid_count);
    for (uint32_t i = 0; i < p->gid_count; ++i) RPCGATE_FUZZ_CHECK(q->gids[i] == p->gids[i]);
    return 0;
}
