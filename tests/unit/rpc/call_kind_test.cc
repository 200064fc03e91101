// The call kind table (rpc/call_kind.h): NFSv3 procedures, NFSv4 COMPOUND by
// main op, and everything unreadable as "other", never a crash.
#include "rpc/call_kind.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "rpc/message.h"
#include "rpc/xdr_codec.h"
#include "tests/unit/rpc/test_util.h"

namespace rpcgate::rpc {
namespace {

using test::bytewise_chain;
using test::chain_of;

constexpr uint32_t nfs = 100003;

std::string name_of(call_kind k) {
    call_kind_labels l = call_kind_info(k);
    return std::string(l.program) + "/" + std::string(l.version) + "/" + std::string(l.procedure);
}

// COMPOUND4args: tag, minorversion, then ops given as (opnum, args bytes).
struct op {
    uint32_t num;
    std::vector<uint32_t> args;  // words
};
std::string compound(const std::vector<op>& ops, std::string tag = "", uint32_t minor = 1) {
    xdr_writer w;
    w.string(tag);
    w.u32(minor);
    w.u32(uint32_t(ops.size()));
    for (const op& o : ops) {
        w.u32(o.num);
        for (uint32_t a : o.args) w.u32(a);
    }
    return w.finish().to_string();
}

const op sequence{53, {1, 2, 3, 4, 7, 0, 9, 1}};      // sessionid(16) + 4 words
const op putfh{22, {8, 0xaaaaaaaa, 0xbbbbbbbb}};      // an 8-byte handle
const op putfh_odd{22, {5, 0x01020304, 0x05000000}};  // 5 bytes + 3 of padding
const op putrootfh{24, {}};
const op read_op{25, {0, 0, 0, 0, 0, 0, 4096}};
const op write_op{38, {0, 0, 0, 0, 0, 0, 2, 0}};
const op getattr{9, {1, 0x00100000}};

call_kind v4(const std::string& args) {
    return classify_call(nfs, 4, 1, chain_of(args));
}

TEST(CallKind, TableHasEveryKnownProgramAndOther) {
    EXPECT_EQ(name_of(call_kind_other), "other/other/other");
    EXPECT_GT(call_kind_count(), 100u);
    EXPECT_LT(call_kind_count(), 200u);  // the bound on every label set
    std::set<std::string> names;
    for (size_t k = 1; k < call_kind_count(); ++k) {
        std::string n = name_of(call_kind(k));
        if (call_kind_info(call_kind(k)).procedure.empty()) continue;  // unused NLM numbers
        EXPECT_TRUE(names.insert(n).second) << "twice: " << n;
    }
}

TEST(CallKind, NfsV3ProceduresByNumber) {
    core::slice_chain none;
    EXPECT_EQ(name_of(classify_call(nfs, 3, 0, none)), "nfs/3/null");
    EXPECT_EQ(name_of(classify_call(nfs, 3, 1, none)), "nfs/3/getattr");
    EXPECT_EQ(name_of(classify_call(nfs, 3, 6, none)), "nfs/3/read");
    EXPECT_EQ(name_of(classify_call(nfs, 3, 7, none)), "nfs/3/write");
    EXPECT_EQ(name_of(classify_call(nfs, 3, 17, none)), "nfs/3/readdirplus");
    EXPECT_EQ(name_of(classify_call(nfs, 3, 21, none)), "nfs/3/commit");
    EXPECT_EQ(classify_call(nfs, 3, 22, none), call_kind_other);
    EXPECT_EQ(classify_call(nfs, 3, 0xffffffff, none), call_kind_other);
    EXPECT_EQ(classify_call(nfs, 2, 6, none), call_kind_other);  // NFSv2 is not in the table
    EXPECT_EQ(find_call_kind("nfs", "3", "read"), classify_call(nfs, 3, 6, none));
}

TEST(CallKind, OtherPrograms) {
    core::slice_chain none;
    EXPECT_EQ(name_of(classify_call(100005, 3, 1, none)), "mount/3/mnt");
    EXPECT_EQ(name_of(classify_call(100005, 1, 3, none)), "mount/1/umnt");
    EXPECT_EQ(name_of(classify_call(100021, 4, 2, none)), "nlm/4/lock");
    EXPECT_EQ(classify_call(100021, 4, 17, none), call_kind_other);  // a hole in NLM v4
    EXPECT_EQ(name_of(classify_call(100227, 3, 1, none)), "nfsacl/3/getacl");
    EXPECT_EQ(name_of(classify_call(0x20000001, 1, 1, none)), "echo/1/echo");
    EXPECT_EQ(classify_call(100000, 2, 3, none), call_kind_other);  // portmap: answered here
    EXPECT_EQ(classify_call(12345, 1, 0, none), call_kind_other);
}

TEST(CallKind, Nfs4NullAndUnknownProcedure) {
    core::slice_chain none;
    EXPECT_EQ(name_of(classify_call(nfs, 4, 0, none)), "nfs/4/null");
    EXPECT_EQ(classify_call(nfs, 4, 2, none), call_kind_other);
}

TEST(CallKind, CompoundByMainOperation) {
    EXPECT_EQ(name_of(v4(compound({sequence, putfh, read_op}))), "nfs/4/read");
    EXPECT_EQ(name_of(v4(compound({sequence, putfh, write_op, getattr}))), "nfs/4/write");
    EXPECT_EQ(name_of(v4(compound({sequence, putfh_odd, getattr}))), "nfs/4/getattr");
    EXPECT_EQ(name_of(v4(compound({sequence, putrootfh, {15, {1, 0x61000000}}}))), "nfs/4/lookup");
    // Bookkeeping ops before the work (libnfs: PUTFH GETATTR GETFH READDIR).
    EXPECT_EQ(
        name_of(v4(compound({putfh, getattr, {10, {}}, {26, {0, 0, 0, 0, 512, 4096, 1, 2}}}))),
        "nfs/4/readdir");
    EXPECT_EQ(name_of(v4(compound({sequence, putfh, getattr}))), "nfs/4/getattr");
    EXPECT_EQ(name_of(v4(compound({sequence, putfh, {32, {}}, {10, {}}}))), "nfs/4/savefh");
    // NFSv4.0: no SEQUENCE.
    EXPECT_EQ(name_of(v4(compound({putfh, read_op}, "tag-v40", 0))), "nfs/4/read");
    // Set-up ops only: the last of them (a lone SEQUENCE renews the lease).
    EXPECT_EQ(name_of(v4(compound({sequence}))), "nfs/4/sequence");
    EXPECT_EQ(name_of(v4(compound({putrootfh}))), "nfs/4/putrootfh");
    EXPECT_EQ(name_of(v4(compound({{42, {}}}))), "nfs/4/exchange_id");
    EXPECT_EQ(name_of(v4(compound({}))), "nfs/4/compound");
    EXPECT_EQ(name_of(v4(compound({sequence, putfh, {75, {}}}))), "nfs/4/removexattr");
    // A tag of odd length is padded.
    EXPECT_EQ(name_of(v4(compound({sequence, putfh, read_op}, "abcde"))), "nfs/4/read");
}

TEST(CallKind, CompoundSplitAcrossSlicesStillDecodes) {
    std::string args = compound({sequence, putfh_odd, read_op}, "t");
    EXPECT_EQ(name_of(classify_call(nfs, 4, 1, bytewise_chain(args))), "nfs/4/read");
}

TEST(CallKind, GarbageCompoundsAreOther) {
    // Unknown or ILLEGAL op numbers.
    EXPECT_EQ(v4(compound({sequence, {76, {}}})), call_kind_other);
    EXPECT_EQ(v4(compound({sequence, {10044, {}}})), call_kind_other);
    EXPECT_EQ(v4(compound({{2, {}}})), call_kind_other);
    // A handle over NFS4_FHSIZE, a tag over the bound, a huge GETATTR bitmap.
    EXPECT_EQ(v4(compound({putfh, {9, {1000}}, read_op})), call_kind_other);
    EXPECT_EQ(v4(compound({sequence, {22, {129}}, read_op})), call_kind_other);
    EXPECT_EQ(v4(compound({read_op}, std::string(2000, 'x'))), call_kind_other);
    // More set-up ops than are read.
    std::vector<op> many(20, putrootfh);
    many.push_back(read_op);
    EXPECT_EQ(v4(compound(many)), call_kind_other);
    // Every truncation of a good COMPOUND is "other" (or, once its main op
    // number is in, that op): never a crash, never a read past the end.
    std::string good = compound({sequence, putfh_odd, read_op}, "abc");
    size_t main_op_end = good.size() - 7 * 4;  // READ's args follow its number
    for (size_t n = 0; n < good.size(); ++n) {
        call_kind k =
            classify_call(nfs, 4, 1, n ? chain_of(good.substr(0, n)) : core::slice_chain());
        if (n >= main_op_end)
            EXPECT_EQ(name_of(k), "nfs/4/read") << n;
        else
            EXPECT_EQ(k, call_kind_other) << "truncated at " << n;
    }
    // A numops far larger than what follows.
    std::string lying = compound({sequence});
    lying[lying.size() - 4 * 9 - 1] = char(0xff);  // numops' low byte
    EXPECT_EQ(v4(lying), call_kind_other);
}

TEST(CallKind, ReplyStatus) {
    auto rec = [](const reply_header& h) {
        core::slice framed = build_reply(h);
        return chain_of(framed.view().substr(4));  // drop the record mark
    };
    EXPECT_TRUE(reply_accepted_ok(rec(reply_header::accepted(1, accept_stat::success))));
    EXPECT_FALSE(reply_accepted_ok(rec(reply_header::accepted(1, accept_stat::garbage_args))));
    EXPECT_FALSE(reply_accepted_ok(rec(reply_header::accepted(1, accept_stat::system_err))));
    EXPECT_FALSE(reply_accepted_ok(rec(reply_header::auth_error(1, auth_stat::tooweak))));
    EXPECT_FALSE(reply_accepted_ok(rec(reply_header::prog_mismatch(1, 3, 4))));
    std::string ok = rec(reply_header::accepted(1, accept_stat::success)).to_string();
    for (size_t n = 0; n < ok.size(); ++n)
        EXPECT_FALSE(reply_accepted_ok(n ? chain_of(ok.substr(0, n)) : core::slice_chain())) << n;
    EXPECT_TRUE(reply_accepted_ok(bytewise_chain(ok)));
}

}  // namespace
}  // namespace rpcgate::rpc
