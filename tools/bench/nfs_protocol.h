// The NFSv3 and MOUNT v3 calls `rpcgate-bench nfs` makes (RFC 1813), and the
// byte pattern its --verify mode writes and checks.
//
// Calls are built as framed records (record mark included) with an AUTH_SYS
// credential; replies are decoded from a whole record, only as far as the
// benchmark needs (status, file handle, size, READ data, WRITE count): the
// attributes are skipped, never interpreted.
//
// The pattern: the byte at file offset o is byte (o mod 8) of the
// little-endian 64-bit word ((o div 8) + 1) * 0x9E3779B97F4A7C15 (mod 2^64).
// Every 8-byte word of a file differs from its neighbours, so data read from
// the wrong offset, stale or zero-filled data all fail the check; and it is
// easy to make elsewhere (the tests write such a file with Python, then copy it
// in with libnfs).
//
// Pure functions (but exchange(), which blocks on a connection); any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/buffer.h"
#include "rpc/message.h"
#include "tls/client/blocking_client.h"

namespace rpcgate::bench::nfs3 {

inline constexpr uint32_t mount_prog = 100005;
inline constexpr uint32_t mount_vers = 3;
inline constexpr uint32_t mountproc_mnt = 1;
inline constexpr uint32_t nfs_vers = 3;

enum class proc : uint32_t {
    null = 0,
    getattr = 1,
    lookup = 3,
    read = 6,
    write = 7,
    create = 8,
    commit = 21,
};

// nfsstat3 values the benchmark tells apart; any other non-zero is an error.
inline constexpr uint32_t nfs3_ok = 0;
inline constexpr uint32_t nfs3err_noent = 2;
// A reply that could not be decoded (not an nfsstat3).
inline constexpr uint32_t malformed = 0xffffffffu;

enum class stable_how : uint32_t { unstable = 0, data_sync = 1, file_sync = 2 };

// nfs_fh3: opaque<64>.
struct file_handle {
    static constexpr size_t max_size = 64;
    uint32_t len = 0;
    uint8_t data[max_size] = {};

    std::span<const uint8_t> bytes() const noexcept { return {data, len}; }
};

// The caller's AUTH_SYS credential.
rpc::opaque_auth make_cred(uint32_t uid, uint32_t gid, std::string_view machine);

// Framed CALL records.
core::slice_chain build_mnt(uint32_t xid, const rpc::opaque_auth& cred, std::string_view path);
core::slice_chain build_null(uint32_t xid, const rpc::opaque_auth& cred);
core::slice_chain build_getattr(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& fh);
core::slice_chain build_lookup(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& dir,
                               std::string_view name);
// CREATE UNCHECKED with mode `mode` (an existing file is kept as it is).
core::slice_chain build_create(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& dir,
                               std::string_view name, uint32_t mode);
core::slice_chain build_read(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& fh,
                             uint64_t offset, uint32_t count);
core::slice_chain build_write(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& fh,
                              uint64_t offset, stable_how stable, core::slice_chain&& data);
// COMMIT of the whole file.
core::slice_chain build_commit(uint32_t xid, const rpc::opaque_auth& cred, const file_handle& fh);

// A reply record's RPC layer. `ok` is true for MSG_ACCEPTED/SUCCESS, when
// `results` holds the procedure's results; otherwise `why` says what it was.
struct rpc_reply {
    bool ok = false;
    uint32_t xid = 0;
    core::slice_chain results;
    const char* why = "";
};
rpc_reply open_reply(const core::slice_chain& record);
// One blocking call (set-up steps): true and the results of a SUCCESS reply,
// else false and why (no reply, or the RPC layer's refusal).
bool exchange(client::blocking_client& c, core::slice_chain&& call, uint32_t timeout_ms,
              core::slice_chain* results, std::string* why);

// Procedure results. Each returns the status (nfs3_ok, an nfsstat3 or
// mountstat3, or `malformed`) and fills its outputs only on nfs3_ok.
uint32_t decode_mnt(const core::slice_chain& results, file_handle* fh);
// `size` from the object's attributes when the server sent them (else left).
uint32_t decode_lookup(const core::slice_chain& results, file_handle* fh, uint64_t* size);
uint32_t decode_getattr(const core::slice_chain& results, uint64_t* size);
// `has_fh` false: the server created the file but sent no handle (LOOKUP it).
uint32_t decode_create(const core::slice_chain& results, file_handle* fh, bool* has_fh);
// `data` shares the record's buffers.
uint32_t decode_read(const core::slice_chain& results, uint32_t* count, bool* eof,
                     core::slice_chain* data);
uint32_t decode_write(const core::slice_chain& results, uint32_t* count);
uint32_t decode_commit(const core::slice_chain& results);

// The pattern's bytes for [offset, offset + dst.size()).
void fill_pattern(uint64_t offset, std::span<uint8_t> dst) noexcept;
// Bytes of `data` (read at file `offset`) that differ from the pattern.
uint64_t count_mismatches(uint64_t offset, const core::slice_chain& data) noexcept;

}  // namespace rpcgate::bench::nfs3
