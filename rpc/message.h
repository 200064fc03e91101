// ONC RPC version 2 message headers (RFC 5531 §8-§9), AUTH_SYS (§A).
//
// Decoding works on a complete record (from `record_reassembler`): the header
// fields are parsed into plain structs and whatever follows the header — call
// arguments or reply results — is returned as a zero-copy `core::slice_chain`
// sharing the record's buffers. Credentials and verifiers (≤ 400 bytes by
// RFC 5531 §8.2) are stored inline, so decoding allocates nothing.
//
// Encoding builds headers with `xdr_writer`; the `build_*` functions return a
// framed record (record mark included) ready for sendmsg().
//
// All functions are pure (no I/O, no global state) and may be called from any
// thread on objects that thread owns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "core/buffer.h"
#include "rpc/record.h"
#include "rpc/result.h"
#include "rpc/xdr_codec.h"

namespace rpcgate::rpc {

inline constexpr uint32_t rpc_version = 2;

enum class msg_type : uint32_t { call = 0, reply = 1 };
enum class reply_stat : uint32_t { accepted = 0, denied = 1 };
enum class accept_stat : uint32_t {
    success = 0,
    prog_unavail = 1,
    prog_mismatch = 2,
    proc_unavail = 3,
    garbage_args = 4,
    system_err = 5,
};
enum class reject_stat : uint32_t { rpc_mismatch = 0, auth_error = 1 };

// Credential / verifier flavors (RFC 5531 §8.2, RFC 9289 §4.1 for tls).
enum class auth_flavor : uint32_t {
    none = 0,
    sys = 1,
    short_ = 2,
    dh = 3,
    rpcsec_gss = 6,
    tls = 7,
};

// Why authentication failed (RFC 5531 §9, incl. the RPCSEC_GSS values of
// RFC 2203 §5.3.3.3). RFC 9289 adds no auth_stat: AUTH_TLS misuse is answered
// with badcred.
enum class auth_stat : uint32_t {
    ok = 0,
    badcred = 1,
    rejectedcred = 2,
    badverf = 3,
    rejectedverf = 4,
    tooweak = 5,
    invalidresp = 6,
    failed = 7,
    kerb_generic = 8,
    timeexpire = 9,
    tktfile = 10,
    decode = 11,
    net_addr = 12,
    rpcsec_gss_credproblem = 13,
    rpcsec_gss_ctxproblem = 14,
};
inline constexpr uint32_t auth_stat_max = 14;

// opaque_auth: a flavor and up to 400 body bytes, stored inline. The body
// array is deliberately left uninitialised beyond `len`.
struct opaque_auth {
    static constexpr size_t max_body = 400;

    uint32_t flavor = 0;
    uint32_t len = 0;
    uint8_t body[max_body];

    opaque_auth() noexcept {}
    // Copies only the `len` bytes in use: headers are moved around per call,
    // and copying 400 mostly-unused bytes twice per header costs more than
    // decoding it.
    opaque_auth(const opaque_auth& o) noexcept : flavor(o.flavor), len(o.len) {
        std::memcpy(body, o.body, len);
    }
    opaque_auth& operator=(const opaque_auth& o) noexcept {
        flavor = o.flavor;
        len = o.len;
        std::memmove(body, o.body, len);
        return *this;
    }

    static opaque_auth none() noexcept { return opaque_auth(); }
    // Precondition: bytes.size() <= max_body.
    static opaque_auth make(uint32_t flavor, std::span<const uint8_t> bytes) noexcept;
    std::span<const uint8_t> bytes() const noexcept { return {body, len}; }
    bool is(auth_flavor f) const noexcept { return flavor == static_cast<uint32_t>(f); }
};
bool operator==(const opaque_auth& a, const opaque_auth& b) noexcept;

struct call_header {
    uint32_t xid = 0;
    uint32_t rpcvers = rpc_version;
    uint32_t prog = 0;
    uint32_t vers = 0;
    uint32_t proc = 0;
    opaque_auth cred;
    opaque_auth verf;
};

// Every reply shape in one struct; which fields matter depends on `stat`:
//   accepted: verf, accept (+ mismatch_low/high for prog_mismatch)
//   denied:   reject (+ mismatch_low/high for rpc_mismatch, auth for auth_error)
struct reply_header {
    uint32_t xid = 0;
    reply_stat stat = reply_stat::accepted;
    opaque_auth verf;
    accept_stat accept = accept_stat::success;
    reject_stat reject = reject_stat::rpc_mismatch;
    auth_stat auth = auth_stat::ok;
    uint32_t mismatch_low = 0;
    uint32_t mismatch_high = 0;

    static reply_header accepted(uint32_t xid, accept_stat s) noexcept;
    static reply_header prog_mismatch(uint32_t xid, uint32_t low, uint32_t high) noexcept;
    static reply_header rpc_mismatch(uint32_t xid, uint32_t low = rpc_version,
                                     uint32_t high = rpc_version) noexcept;
    static reply_header auth_error(uint32_t xid, auth_stat why) noexcept;
};

struct call_message {
    call_header header;
    core::slice_chain args;  // procedure arguments, sharing the record's buffers
};
struct reply_message {
    reply_header header;
    core::slice_chain results;  // after the header (SUCCESS results), zero-copy
};

// The first two words of any message: enough to route by direction.
struct message_peek {
    uint32_t xid;
    msg_type type;
};

// xid and direction of a record; bad_value if msg_type is neither CALL nor REPLY.
result<message_peek> peek_message(const core::slice_chain& record) noexcept;

// Decodes a CALL. rpcvers != 2 gives errc::rpc_version_mismatch (RFC 5531 §9:
// the rest of the header may not be version 2's) — answer it with
// build_reply(reply_header::rpc_mismatch(peek.xid)). A REPLY gives bad_value.
result<call_message> decode_call(const core::slice_chain& record);
// Decodes a REPLY of any kind.
result<reply_message> decode_reply(const core::slice_chain& record);

// Header encoders (no record mark).
void encode_call_header(xdr_writer& w, const call_header& h);
void encode_reply_header(xdr_writer& w, const reply_header& h);
void encode_opaque_auth(xdr_writer& w, const opaque_auth& a);
// Reads an opaque_auth, refusing bodies over 400 bytes (too_long).
result<void> decode_opaque_auth(xdr_reader& r, opaque_auth& out) noexcept;

// Framed records. `max_fragment` splits large records (see frame_record).
// A reply with no results: every non-SUCCESS reply, or SUCCESS of a void proc.
core::slice build_reply(const reply_header& h);
// A reply followed by `results` (spliced, zero-copy).
core::slice_chain build_reply(const reply_header& h, core::slice_chain&& results,
                              size_t max_fragment = record_max_fragment);
core::slice_chain build_call(const call_header& h, core::slice_chain&& args,
                             size_t max_fragment = record_max_fragment);

// AUTH_SYS credential body (RFC 5531 §A / authsys_parms).
struct auth_sys_params {
    static constexpr size_t max_machinename = 255;
    static constexpr size_t max_gids = 16;

    uint32_t stamp = 0;
    uint32_t uid = 0;
    uint32_t gid = 0;
    uint32_t machinename_len = 0;
    uint32_t gid_count = 0;
    char machinename[max_machinename];
    uint32_t gids[max_gids];

    std::string_view machine() const noexcept { return {machinename, machinename_len}; }
    std::span<const uint32_t> group_ids() const noexcept { return {gids, gid_count}; }
    // Returns false if a limit is exceeded.
    bool set_machine(std::string_view name) noexcept;
    bool set_groups(std::span<const uint32_t> g) noexcept;
};

// Parses an AUTH_SYS body exactly (trailing bytes are an error).
result<auth_sys_params> decode_auth_sys(std::span<const uint8_t> body) noexcept;
// Parses the credential of a call; bad_value if its flavor is not AUTH_SYS.
result<auth_sys_params> decode_auth_sys(const opaque_auth& cred) noexcept;
// Encodes as an AUTH_SYS credential (always fits: at most 340 bytes).
opaque_auth encode_auth_sys(const auth_sys_params& p) noexcept;

}  // namespace rpcgate::rpc
