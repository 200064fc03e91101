// Fuzzes the record reassembler differentially: the input (after a 4-byte
// prologue choosing limits and split points) is fed once whole and once cut
// into pieces; both runs must produce the same records and the same error,
// and no record may break the cap.
#include <string>
#include <vector>

#include "rpc/message.h"
#include "rpc/record.h"
#include "tests/fuzz/fuzz_util.h"

using namespace rpcgate;

namespace {

struct outcome {
    std::vector<std::string> records;
    rpc::errc error = rpc::errc::ok;
    bool partial = false;
};

outcome run(const rpc::record_limits& limits, const uint8_t* data, size_t size, uint32_t shape,
            bool split) {
    outcome out;
    rpc::record_reassembler ra(limits);
    core::slice whole = core::slice::copy_of(data, size);
    size_t at = 0;
    while (at < size) {
        size_t piece = size - at;
        if (split) {
            shape = shape * 1103515245u + 12345u;
            piece = std::min<size_t>(piece, 1 + (shape >> 16) % 64);
        }
        core::slice s = whole.share(at, piece);
        auto r = ra.feed(s, [&](core::slice_chain&& rec) {
            RPCGATE_FUZZ_CHECK(rec.size() <= limits.max_record);
            // Payload must be views of the fed buffer, never copies.
            for (const auto& p : rec) RPCGATE_FUZZ_CHECK(p.owner() == whole.owner());
            (void)rpc::peek_message(rec);
            out.records.push_back(rec.to_string());
        });
        if (!r) {
            out.error = r.error();
            return out;
        }
        RPCGATE_FUZZ_CHECK(*r == piece);
        RPCGATE_FUZZ_CHECK(ra.buffered() <= limits.max_record + 4);
        at += piece;
    }
    out.partial = ra.partial();
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 4) return 0;
    rpc::record_limits limits;
    limits.max_record = size_t{1} << (data[0] % 24);
    limits.max_fragments = 1 + data[1] * 16;
    uint32_t shape = uint32_t{data[2]} << 8 | data[3];
    data += 4;
    size -= 4;
    outcome a = run(limits, data, size, shape, false);
    outcome b = run(limits, data, size, shape, true);
    RPCGATE_FUZZ_CHECK(a.error == b.error);
    RPCGATE_FUZZ_CHECK(a.records == b.records);
    RPCGATE_FUZZ_CHECK(a.error != rpc::errc::ok || a.partial == b.partial);
    return 0;
}
