#include "core/buffer.h"
#include "core/memory.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <string>

using rpcgate::core::buffer_owner;
using rpcgate::core::slice;
using rpcgate::core::slice_chain;

namespace {

// An owner that counts its releases, standing in for a ring buffer slot.
struct counting_owner : buffer_owner {
    int released = 0;
    counting_owner() {
        release = [](buffer_owner* o) noexcept { ++static_cast<counting_owner*>(o)->released; };
    }
};

TEST(slice, owner_gets_memory_back_when_last_share_dies) {
    counting_owner own;
    static const char text[] = "hello world";
    {
        slice a(reinterpret_cast<const uint8_t*>(text), 11, &own);
        slice b = a.share(6, 5);
        EXPECT_EQ(b.view(), "world");
        EXPECT_EQ(own.refs, 2u);
        { slice moved = std::move(a); }
        EXPECT_EQ(own.released, 0);
        EXPECT_EQ(own.refs, 1u);
    }
    EXPECT_EQ(own.released, 1);
    EXPECT_EQ(own.refs, 0u);
}

TEST(slice, heap_copy_and_trims) {
    slice s = slice::copy_of("abcdef");
    s.trim_front(2);
    s.trim(3);
    EXPECT_EQ(s.view(), "cde");
    slice empty;
    EXPECT_TRUE(empty.empty());
}

slice_chain make_chain(std::initializer_list<std::string_view> parts) {
    slice_chain c;
    for (auto p : parts) c.push_back(slice::copy_of(p));
    return c;
}

TEST(slice_chain, split_front_shares_straddling_slice) {
    counting_owner own;
    static const char text[] = "0123456789";
    slice_chain c;
    c.push_back(slice(reinterpret_cast<const uint8_t*>(text), 4, &own));
    c.push_back(slice(reinterpret_cast<const uint8_t*>(text) + 4, 6, &own));
    slice_chain head = c.split_front(6);
    EXPECT_TRUE(head == "012345");
    EXPECT_TRUE(c == "6789");
    EXPECT_EQ(head.count(), 2u);
    EXPECT_EQ(own.refs, 3u);  // 4-byte part, 2-byte share, 4-byte rest
    head.clear();
    c.clear();
    EXPECT_EQ(own.released, 1);
}

TEST(slice_chain, trim_and_copy_out) {
    slice_chain c = make_chain({"ab", "cde", "fghi"});
    EXPECT_EQ(c.size(), 9u);
    EXPECT_EQ(c.at(4), 'e');
    char buf[4];
    ASSERT_TRUE(c.copy_out(1, buf, 4));
    EXPECT_EQ(std::string(buf, 4), "bcde");
    EXPECT_FALSE(c.copy_out(7, buf, 4));
    c.trim_front(3);
    EXPECT_TRUE(c == "defghi");
    c.trim(4);
    EXPECT_TRUE(c == "defg");
    EXPECT_EQ(c.count(), 2u);
}

TEST(slice_chain, iovec_export_points_into_slices) {
    slice_chain c = make_chain({"ab", "", "cde"});
    EXPECT_EQ(c.count(), 2u);  // empty slice dropped
    iovec iov[4];
    ASSERT_EQ(c.to_iovec(iov, 4), 2u);
    EXPECT_EQ(iov[0].iov_base, c.part(0).data());
    EXPECT_EQ(iov[1].iov_len, 3u);
}

TEST(slice_chain, grows_beyond_inline_capacity) {
    slice_chain c;
    std::string expect;
    for (int i = 0; i < 100; ++i) {
        std::string p(1 + i % 7, char('a' + i % 26));
        expect += p;
        c.push_back(slice::copy_of(p));
    }
    EXPECT_EQ(c.count(), 100u);
    EXPECT_EQ(c.to_string(), expect);
    slice_chain moved = std::move(c);
    EXPECT_EQ(moved.to_string(), expect);
    EXPECT_EQ(moved.linearize().view(), expect);
}

// A record-sized block comes from the heap, not an mmap of its own, and once
// freed stays with malloc instead of going back to the kernel (where its pages
// would fault in again on the next call).
TEST(keep_record_memory, record_sized_blocks_stay_in_the_heap) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    // ASan and TSan replace malloc with their own allocator: glibc's mallopt
    // and mallinfo2 are not what the data path uses there.
    GTEST_SKIP() << "a sanitizer's allocator replaces glibc malloc (mallopt does not apply)";
#endif
    ASSERT_TRUE(rpcgate::core::keep_record_memory());
    const size_t len = 6u << 20;
    ASSERT_LT(len, rpcgate::core::k_heap_block_max);
    const size_t mapped = mallinfo2().hblks;
    {
        slice s = slice::allocate(len);
        std::memset(s.mutable_data(), 1, len);
        EXPECT_EQ(mallinfo2().hblks, mapped) << "the block was mmap'd on its own";
    }
    EXPECT_GE(mallinfo2().fordblks, len) << "the freed block went back to the kernel";
}

}  // namespace
