#include "rpc/result.h"

#include <string>

namespace rpcgate::rpc {
namespace {

class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "rpc"; }
    std::string message(int v) const override { return to_string(static_cast<errc>(v)); }
};

}  // namespace

const char* to_string(errc e) noexcept {
    switch (e) {
        case errc::ok:
            return "ok";
        case errc::short_input:
            return "short_input";
        case errc::too_long:
            return "too_long";
        case errc::bad_value:
            return "bad_value";
        case errc::record_too_large:
            return "record_too_large";
        case errc::too_many_fragments:
            return "too_many_fragments";
        case errc::rpc_version_mismatch:
            return "rpc_version_mismatch";
        case errc::trailing_bytes:
            return "trailing_bytes";
    }
    return "unknown";
}

const std::error_category& rpc_category() noexcept {
    static const category c;
    return c;
}

}  // namespace rpcgate::rpc
