// Portmap version 2 (RFC 1833 §3) codec and the well-known program table.
//
// The gateway answers PMAPPROC_GETPORT itself (every program it routes is
// reachable on its own port), so only the pieces it needs are here: decoding
// GETPORT arguments, encoding the port result, NULL, and the client-side
// GETPORT call. Program names let operators write `--backend nfs=...`.
//
// Pure functions and constant data; any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "core/buffer.h"
#include "rpc/message.h"

namespace rpcgate::rpc {

inline constexpr uint32_t pmap_prog = 100000;
inline constexpr uint32_t pmap_vers = 2;
// The NFS programs proper: file data travels in them (RFC 1813, RFC 7530).
inline constexpr uint32_t nfs_prog = 100003;
inline constexpr uint32_t nfs_acl_prog = 100227;

enum class pmap_proc : uint32_t {
    null = 0,
    set = 1,
    unset = 2,
    getport = 3,
    dump = 4,
    callit = 5,
};

inline constexpr uint32_t pmap_ipproto_tcp = 6;
inline constexpr uint32_t pmap_ipproto_udp = 17;

// struct mapping { prog, vers, prot, port } — GETPORT ignores `port`.
struct pmap_mapping {
    uint32_t prog = 0;
    uint32_t vers = 0;
    uint32_t prot = pmap_ipproto_tcp;
    uint32_t port = 0;
};

// Decodes GETPORT arguments (exactly one mapping; trailing bytes are an error).
result<pmap_mapping> decode_getport_args(const core::slice_chain& args) noexcept;
void encode_mapping(xdr_writer& w, const pmap_mapping& m);
// Decodes a GETPORT result (one unsigned int; 0 means "not registered").
result<uint32_t> decode_getport_result(const core::slice_chain& results) noexcept;

// SUCCESS reply carrying `port`, framed (record mark + 28 bytes).
core::slice build_getport_reply(uint32_t xid, uint32_t port);
// SUCCESS reply with no results: the answer to NULL of any program. Framed.
core::slice build_null_reply(uint32_t xid);
// GETPORT call with AUTH_NONE, framed.
core::slice_chain build_getport_call(uint32_t xid, const pmap_mapping& m);

struct program_name {
    std::string_view name;
    uint32_t number;
};

// Well-known ONC RPC programs (names as in /etc/rpc where one exists).
std::span<const program_name> well_known_programs() noexcept;
// "nfs", "100003" or "0x186a3" -> 100003; unknown names and bad numbers -> nullopt.
std::optional<uint32_t> parse_program(std::string_view text) noexcept;
// The preferred name of a program number, or "" if not well known.
std::string_view program_name_of(uint32_t number) noexcept;

}  // namespace rpcgate::rpc
