// The bench echo program on the wire, shared by `serve` and `run`.
//
// Program 0x20000001 (user-defined range, RFC 5531 §7.3) version 1:
//   proc 0 NULL      void -> void
//   proc 1 ECHO      opaque<> -> the same opaque<>
//   proc 2 CALLBACK  opaque<> -> the opaque<> that the client answered to a
//                    backchannel CALL (program 0x20000002 version 1 proc 1,
//                    same opaque) sent on the same connection — the shape of an
//                    NFSv4.1 callback (RFC 8881 §2.10.3.1).
// Every reply here is AUTH_NONE and every call is sent with AUTH_NONE.
//
// Because the XDR of the ECHO results equals the XDR of its arguments, a reply
// is a small header followed by the argument slices themselves: zero copy.
// The headers are hand-encoded into `header_slab` blocks so that a call or a
// reply costs no allocation in steady state.
//
// Single-thread objects: a slab belongs to one connection on one shard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "core/buffer.h"
#include "rpc/message.h"

namespace rpcgate::bench {

inline constexpr uint32_t echo_program = 0x20000001;
inline constexpr uint32_t echo_version = 1;
inline constexpr uint32_t proc_null = 0;
inline constexpr uint32_t proc_echo = 1;
inline constexpr uint32_t proc_callback = 2;

inline constexpr uint32_t callback_program = 0x20000002;
inline constexpr uint32_t callback_version = 1;
inline constexpr uint32_t callback_proc_echo = 1;

// Bytes of the hand-encoded headers, record mark included.
inline constexpr size_t call_header_bytes = 44;   // mark + 10 words (AUTH_NONE x2)
inline constexpr size_t reply_header_bytes = 28;  // mark + 6 words (accepted, SUCCESS)

// A fixed pool of small blocks for RPC headers. A block is reused once the
// last slice over it has died (its send completed); when every block is busy
// `take` falls back to a heap block, so correctness never depends on the pool
// size. The slab must outlive every slice it handed out: owners keep it in the
// connection, whose stream drops its send queue before on_closed.
class header_slab {
  public:
    static constexpr size_t block_size = 64;

    explicit header_slab(size_t count);
    header_slab(const header_slab&) = delete;
    header_slab& operator=(const header_slab&) = delete;

    // A private, writable block of `len` bytes (len <= block_size).
    core::slice take(size_t len);
    // Blocks taken from the heap because the pool was busy (diagnostics).
    uint64_t fallbacks() const noexcept { return fallbacks_; }

  private:
    struct block : core::buffer_owner {
        alignas(16) uint8_t bytes[block_size];
    };
    std::unique_ptr<block[]> blocks_;
    size_t count_;
    size_t next_ = 0;
    uint64_t fallbacks_ = 0;
};

// The argument XDR of ECHO/CALLBACK: exactly one opaque<>. Returns its length,
// or nothing when `args` is anything else (answer GARBAGE_ARGS).
std::optional<uint32_t> opaque_length(const core::slice_chain& args) noexcept;

// Appends `payload` (shared) as the body of an opaque<> (the length word is the
// caller's), then its XDR padding (a static run of zeros).
void append_opaque_body(core::slice_chain& out, const core::slice& payload);

// A framed SUCCESS reply whose results are `results` (spliced, zero copy).
core::slice_chain success_reply(header_slab& slab, uint32_t xid, core::slice_chain&& results);

// A framed CALL with AUTH_NONE whose args are an opaque<> holding `payload`
// (shared), or no args at all when `with_opaque` is false.
core::slice_chain opaque_call(header_slab& slab, uint32_t xid, uint32_t prog, uint32_t vers,
                              uint32_t proc, const core::slice& payload, bool with_opaque);

// How a program with procedures [0, max_proc] of one version answers a call
// header: nothing when the call is for it, else the refusal (PROG_UNAVAIL,
// PROG_MISMATCH(vers, vers), PROC_UNAVAIL).
std::optional<rpc::reply_header> refusal(const rpc::call_header& h, uint32_t prog, uint32_t vers,
                                         uint32_t max_proc) noexcept;

// Answers a backchannel CALL the way the client does: program 0x20000002
// version 1 proc 1 echoes its opaque; anything else is refused. Returns the
// framed reply.
core::slice_chain answer_callback(header_slab& slab, rpc::call_message&& call);

// True when `a` holds exactly the bytes [p, p+len).
bool chain_equals(const core::slice_chain& a, const uint8_t* p, size_t len) noexcept;

}  // namespace rpcgate::bench
