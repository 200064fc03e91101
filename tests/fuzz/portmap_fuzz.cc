// Fuzzes the portmap v2 codec (RFC 1833 §3) and the program-name parser the
// operator's --backend goes through.
//   input[0] selects the cut of the bytes into slices; input[1..] is tried as
//   GETPORT arguments, as a GETPORT result and (as text) as a program name.
// Properties: GETPORT arguments decode exactly when they are four XDR words
// (no trailing bytes), and re-encode to the same bytes; a GETPORT call built
// from them decodes as PMAPPROC_GETPORT with the same mapping; a GETPORT
// reply carries the port back; a name or number that parses names that
// number, and a program's preferred name parses back to it.
#include <string>
#include <string_view>

#include "rpc/message.h"
#include "rpc/portmap.h"
#include "rpc/record.h"
#include "rpc/xdr_codec.h"
#include "tests/fuzz/fuzz_util.h"

using namespace rpcgate;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    uint32_t shape = data[0];
    const uint8_t* body = data + 1;
    size_t n = size - 1;

    auto m = rpc::decode_getport_args(fuzz::split_chain(body, n, shape));
    RPCGATE_FUZZ_CHECK(m.ok() == (n == 16));
    if (m) {
        rpc::xdr_writer w(16);
        rpc::encode_mapping(w, *m);
        RPCGATE_FUZZ_CHECK(w.finish().to_string() ==
                           std::string(reinterpret_cast<const char*>(body), 16));
        uint32_t xid = m->port ^ m->prog;
        auto call = rpc::decode_call(fuzz::unframe(rpc::build_getport_call(xid, *m)));
        RPCGATE_FUZZ_CHECK(call.ok());
        RPCGATE_FUZZ_CHECK(call->header.xid == xid && call->header.prog == rpc::pmap_prog &&
                           call->header.vers == rpc::pmap_vers &&
                           call->header.proc == uint32_t(rpc::pmap_proc::getport));
        auto again = rpc::decode_getport_args(call->args);
        RPCGATE_FUZZ_CHECK(again.ok() && again->prog == m->prog && again->vers == m->vers &&
                           again->prot == m->prot && again->port == m->port);
        auto reply = rpc::decode_reply(
            fuzz::unframe(core::slice_chain(rpc::build_getport_reply(xid, m->vers))));
        RPCGATE_FUZZ_CHECK(reply.ok() && reply->header.xid == xid);
        auto port = rpc::decode_getport_result(reply->results);
        RPCGATE_FUZZ_CHECK(port.ok() && *port == m->vers);
    }
    auto res = rpc::decode_getport_result(fuzz::split_chain(body, n, shape));
    RPCGATE_FUZZ_CHECK(res.ok() == (n == 4));

    std::string_view text(reinterpret_cast<const char*>(body), n);
    if (auto prog = rpc::parse_program(text)) {
        std::string_view name = rpc::program_name_of(*prog);
        bool is_name = false;
        for (const auto& p : rpc::well_known_programs()) is_name |= p.name == text;
        if (is_name) RPCGATE_FUZZ_CHECK(!name.empty());
        if (!name.empty()) {
            auto back = rpc::parse_program(name);
            RPCGATE_FUZZ_CHECK(back && *back == *prog);
        }
        // A number given in decimal is that number.
        if (!is_name && !text.empty() && text[0] >= '1' && text[0] <= '9')
            RPCGATE_FUZZ_CHECK(std::to_string(*prog) == text);
    }
    return 0;
}
