// What a call is, as a small number: (program, version, procedure) — and for
// an NFSv4 COMPOUND its main operation — mapped onto one fixed table of known
// kinds, with everything else in "other". The gateway counts and times calls
// per kind; the table's size bounds the label sets of those metrics.
//
// Known: NFSv3 (22 procedures), NFSv4 (NULL, and COMPOUND by main operation,
// ops 3..75 of RFC 8881 §16.2, RFC 7862 and RFC 8276), MOUNT v1 and v3, NLM
// v4, NFSACL v3, and rpcgate-bench's echo program. A known program with an
// unknown version or procedure, an unknown program, a COMPOUND whose ops
// cannot be read (truncated, garbage, past the bounds in call_kind.cc) are
// all "other".
//
// The main op of a COMPOUND is its first op that neither sets up (SEQUENCE,
// PUTFH, PUTROOTFH, PUTPUBFH) nor fetches what clients cache alongside the
// work (GETATTR, GETFH, SAVEFH, RESTOREFH): SEQUENCE PUTFH WRITE GETATTR is a
// WRITE, PUTFH GETATTR GETFH READDIR a READDIR. With none, the first of the
// latter (SEQUENCE PUTFH GETATTR is a GETATTR), else the last set-up op (a
// lone SEQUENCE renews the lease).
//
// Decoding reads only the call header's numbers and, for COMPOUND, the tag,
// minor version and op numbers, skipping the arguments of the few ops that
// may come before the main op (SEQUENCE's fixed size, PUTFH's handle,
// GETATTR's bitmap): no full XDR decode, no allocation. Pure functions; any
// thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/buffer.h"
#include "rpc/xdr_codec.h"

namespace rpcgate::rpc {

// An index into the kind table: 0 is "other", then 1 .. call_kind_count-1.
using call_kind = uint16_t;
inline constexpr call_kind call_kind_other = 0;

// How one kind is labelled: program name ("nfs", "mount", ...), version as
// text ("3"), procedure ("read"; for NFSv4, the main op: "read", "sequence",
// or "compound" for a COMPOUND with no op we know).
struct call_kind_labels {
    std::string_view program;
    std::string_view version;
    std::string_view procedure;
};

// The number of kinds (the table's size, "other" included).
size_t call_kind_count() noexcept;
// Labels of kind k (k < call_kind_count()).
call_kind_labels call_kind_info(call_kind k) noexcept;

// The kind of a call from its header numbers and its arguments (the bytes
// after the call header; read only for NFSv4 COMPOUND).
call_kind classify_call(uint32_t prog, uint32_t vers, uint32_t proc,
                        const core::slice_chain& args) noexcept;

// The kind of a known (program, version, procedure), ignoring arguments
// (NFSv4 COMPOUND gives the "compound" kind). For tests and tools.
call_kind find_call_kind(std::string_view program, std::string_view version,
                         std::string_view procedure) noexcept;

// Whether a REPLY record says the call succeeded at the RPC level
// (MSG_ACCEPTED with SUCCESS). Anything else, a truncated reply included,
// is an error. Inline for the reply nearly every server sends (RFC 5531
// §9: an empty verifier, the header in the first slice); the rest decodes.
bool reply_accepted_ok_decoded(const core::slice_chain& record) noexcept;
inline bool reply_accepted_ok(const core::slice_chain& record) noexcept {
    if (record.count() > 0 && record.part(0).size() >= 24) {
        const uint8_t* p = record.part(0).data();
        // xid, REPLY (1), MSG_ACCEPTED (0), verifier flavor, length 0, SUCCESS (0)
        if (load_be32(p + 16) == 0)
            return load_be32(p + 4) == 1 && load_be32(p + 8) == 0 && load_be32(p + 20) == 0;
    }
    return reply_accepted_ok_decoded(record);
}

}  // namespace rpcgate::rpc
