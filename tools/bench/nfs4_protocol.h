// The NFSv4.1 COMPOUNDs `rpcgate-bench nfs --nfs-version 4.1` makes
// (RFC 8881), built and decoded only as far as the benchmark needs.
//
// Each connection has its own client ID and session (EXCHANGE_ID with an
// owner unique to the connection, CREATE_SESSION with one slot per call in
// flight, RECLAIM_COMPLETE), so that connections share no state; every call
// is SEQUENCE on its slot, PUTFH, and the operation. Each session OPENs the
// file as a client would (CLAIM_FH, read and write, no delegation wanted) and
// READ and WRITE carry that open's stateid; CLOSE before the session ends.
// OPEN does not create: the test file must exist (the NFSv3 mode creates
// it). The file handle comes the NFSv4 way: PUTROOTFH, LOOKUP of each
// component of the export's path, then of the file.
//
// Builders return framed records; decoders take a SUCCESS reply's results and
// return the status of the first operation that failed (nfs4_ok, an nfsstat4,
// or nfs3::malformed). The set-up helpers block on a connection.
//
// Single thread per session.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/buffer.h"
#include "rpc/message.h"
#include "tls/client/blocking_client.h"
#include "tools/bench/nfs_protocol.h"

namespace rpcgate::bench::nfs4 {

inline constexpr uint32_t nfs_vers = 4;
inline constexpr uint32_t minor_version = 1;
inline constexpr uint32_t nfs4_ok = 0;
inline constexpr uint32_t nfs4err_noent = 2;

// nfs_fh4: opaque<128>.
struct file_handle {
    static constexpr size_t max_size = 128;
    uint32_t len = 0;
    uint8_t data[max_size] = {};
};

// stateid4: all zero is the anonymous stateid (RFC 8881 §8.2.3).
struct stateid {
    uint32_t seqid = 0;
    uint8_t other[12] = {};
};

struct session {
    uint64_t clientid = 0;
    uint8_t id[16] = {};
    std::vector<uint32_t> seqid;  // the next sequence ID of each slot
    stateid open;                 // of open_file; READ and WRITE carry it
    bool opened = false;
};

// EXCHANGE_ID (owner `owner`), CREATE_SESSION with `slots` slots of up to
// `max_message` bytes each way, RECLAIM_COMPLETE. False and a reason when the
// server refuses, or grants fewer slots.
bool open_session(client::blocking_client& c, const rpc::opaque_auth& cred,
                  const std::string& owner, unsigned slots, uint32_t max_message,
                  uint32_t timeout_ms, session* s, std::string* err);
// DESTROY_SESSION and DESTROY_CLIENTID; errors are ignored (end of run).
void close_session(client::blocking_client& c, const rpc::opaque_auth& cred, session& s,
                   uint32_t timeout_ms);
// The export's directory and the file in it, and the file's size. Returns the
// status (nfs4err_noent: the file does not exist) or nfs3::malformed; `err`
// holds a reason for anything but nfs4_ok.
uint32_t look_up(client::blocking_client& c, const rpc::opaque_auth& cred, session& s,
                 std::string_view export_path, std::string_view file, file_handle* dir,
                 file_handle* fh, uint64_t* size, uint32_t timeout_ms, std::string* err);

// OPEN of `fh` for reading and writing (CLAIM_FH, NOCREATE, no delegation
// wanted), owner `owner`, on slot 0: the stateid goes into s.open. Returns
// the status, or nfs3::malformed with a reason in `err`.
uint32_t open_file(client::blocking_client& c, const rpc::opaque_auth& cred, session& s,
                   const file_handle& fh, const std::string& owner, uint32_t timeout_ms,
                   std::string* err);
// CLOSE of s.open on slot 0, when open_file succeeded; the status.
uint32_t close_file(client::blocking_client& c, const rpc::opaque_auth& cred, session& s,
                    const file_handle& fh, uint32_t timeout_ms);

// Calls on `slot` (each takes the slot's next sequence ID). Framed records.
core::slice_chain build_null(uint32_t xid, const rpc::opaque_auth& cred);
core::slice_chain build_read(uint32_t xid, const rpc::opaque_auth& cred, session& s, uint32_t slot,
                             const file_handle& fh, uint64_t offset, uint32_t count);
core::slice_chain build_write(uint32_t xid, const rpc::opaque_auth& cred, session& s, uint32_t slot,
                              const file_handle& fh, uint64_t offset, nfs3::stable_how stable,
                              core::slice_chain&& data);
core::slice_chain build_getattr(uint32_t xid, const rpc::opaque_auth& cred, session& s,
                                uint32_t slot, const file_handle& fh);
core::slice_chain build_lookup(uint32_t xid, const rpc::opaque_auth& cred, session& s,
                               uint32_t slot, const file_handle& dir, std::string_view name);
core::slice_chain build_commit(uint32_t xid, const rpc::opaque_auth& cred, session& s,
                               uint32_t slot, const file_handle& fh);

uint32_t decode_read(const core::slice_chain& results, uint32_t* count, bool* eof,
                     core::slice_chain* data);
uint32_t decode_write(const core::slice_chain& results, uint32_t* count);
uint32_t decode_getattr(const core::slice_chain& results, uint64_t* size);
uint32_t decode_lookup(const core::slice_chain& results);
uint32_t decode_commit(const core::slice_chain& results);

}  // namespace rpcgate::bench::nfs4
