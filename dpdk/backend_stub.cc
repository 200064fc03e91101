// The DPDK backend when the build has no DPDK: the option exists and says so.
#include "dpdk/backend.h"

namespace rpcgate::dpdk {

bool available() noexcept {
    return false;
}

std::unique_ptr<core::io_backend> make_backend(const backend_options&, std::string* err) {
    *err =
        "this build has no DPDK (configure with -DRPCGATE_WITH_DPDK=ON; see scripts/test-dpdk.sh)";
    return nullptr;
}

std::string describe_stats(const core::io_backend&) {
    return {};
}

}  // namespace rpcgate::dpdk
