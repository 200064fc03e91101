// The data path's use of the C library's allocator.
#pragma once

#include <cstddef>

namespace rpcgate::core {

// Keeps glibc's malloc from handing record-sized memory back to the kernel
// after every call. By default a thread's arena returns its free top
// (madvise MADV_DONTNEED) once it exceeds the trim threshold, and blocks over
// the mmap threshold are mmap'd and munmap'd one by one; a shard forwarding
// 1 MiB records over TLS frees and reallocates megabytes per call, and every
// 4 KiB page of them then costs a page fault on its next use (the profile in
// docs/performance.md: about 5 syscalls and a twentieth of the gateway's CPU
// per 1 MiB call). After this, blocks up to `k_heap_block_max` come from the
// heap and each arena keeps up to `k_arena_keep` free bytes: a shard that has
// carried large records stays that much larger. Does nothing when the
// environment already tunes malloc (GLIBC_TUNABLES with "glibc.malloc."), so
// an operator's setting wins. Call once at start-up, before the threads.
inline constexpr size_t k_heap_block_max = size_t{8} << 20;
inline constexpr size_t k_arena_keep = size_t{32} << 20;
// True if the settings were applied.
bool keep_record_memory() noexcept;

}  // namespace rpcgate::core
