#include "rpc/call_kind.h"

#include <array>
#include <span>

#include "rpc/xdr_codec.h"

namespace rpcgate::rpc {

namespace {

// RFC 1813 §3.3.
constexpr std::string_view nfs3_procs[] = {
    "null",    "getattr",     "setattr", "lookup", "access",   "readlink", "read",   "write",
    "create",  "mkdir",       "symlink", "mknod",  "remove",   "rmdir",    "rename", "link",
    "readdir", "readdirplus", "fsstat",  "fsinfo", "pathconf", "commit"};

// NFSv4: procedure 0 NULL, then COMPOUND by main op. Slot 1 is a COMPOUND
// with no op (numops 0); slot 2 + (op - 3) is op `op` (RFC 8881 §16.2.3,
// RFC 7862 §11.2 for 59..71, RFC 8276 §8 for 72..75).
constexpr uint32_t nfs4_first_op = 3;
constexpr uint32_t nfs4_last_op = 75;
constexpr std::string_view nfs4_procs[] = {"null",
                                           "compound",
                                           "access",
                                           "close",
                                           "commit",
                                           "create",
                                           "delegpurge",
                                           "delegreturn",
                                           "getattr",
                                           "getfh",
                                           "link",
                                           "lock",
                                           "lockt",
                                           "locku",
                                           "lookup",
                                           "lookupp",
                                           "nverify",
                                           "open",
                                           "openattr",
                                           "open_confirm",
                                           "open_downgrade",
                                           "putfh",
                                           "putpubfh",
                                           "putrootfh",
                                           "read",
                                           "readdir",
                                           "readlink",
                                           "remove",
                                           "rename",
                                           "renew",
                                           "restorefh",
                                           "savefh",
                                           "secinfo",
                                           "setattr",
                                           "setclientid",
                                           "setclientid_confirm",
                                           "verify",
                                           "write",
                                           "release_lockowner",
                                           "backchannel_ctl",
                                           "bind_conn_to_session",
                                           "exchange_id",
                                           "create_session",
                                           "destroy_session",
                                           "free_stateid",
                                           "get_dir_delegation",
                                           "getdeviceinfo",
                                           "getdevicelist",
                                           "layoutcommit",
                                           "layoutget",
                                           "layoutreturn",
                                           "secinfo_no_name",
                                           "sequence",
                                           "set_ssv",
                                           "test_stateid",
                                           "want_delegation",
                                           "destroy_clientid",
                                           "reclaim_complete",
                                           "allocate",
                                           "copy",
                                           "copy_notify",
                                           "deallocate",
                                           "io_advise",
                                           "layouterror",
                                           "layoutstats",
                                           "offload_cancel",
                                           "offload_status",
                                           "read_plus",
                                           "seek",
                                           "write_same",
                                           "clone",
                                           "getxattr",
                                           "setxattr",
                                           "listxattrs",
                                           "removexattr"};
static_assert(std::size(nfs4_procs) == 2 + nfs4_last_op - nfs4_first_op + 1);

// RFC 1813 appendix I (MOUNT v3; v1 has the same procedures).
constexpr std::string_view mount_procs[] = {"null", "mnt", "dump", "umnt", "umntall", "export"};
// NLM v4 (RFC 1813 appendix II); 16..19 are not defined.
constexpr std::string_view nlm4_procs[] = {
    "null",        "test",     "lock",     "cancel",     "unlock",
    "granted",     "test_msg", "lock_msg", "cancel_msg", "unlock_msg",
    "granted_msg", "test_res", "lock_res", "cancel_res", "unlock_res",
    "granted_res", "",         "",         "",           "",
    "share",       "unshare",  "nm_lock",  "free_all"};
// NFSACL v3 (the Linux/Solaris side protocol).
constexpr std::string_view nfsacl3_procs[] = {"null", "getacl", "setacl", "getxattrdir"};
// rpcgate-bench's echo program (docs: DESIGN, "Contract").
constexpr std::string_view echo_procs[] = {"null", "echo"};

struct program_row {
    uint32_t prog;
    uint32_t vers;
    std::string_view program;
    std::string_view version;
    std::span<const std::string_view> procs;
};

constexpr uint32_t nfs_prog = 100003;
constexpr program_row rows[] = {
    {nfs_prog, 3, "nfs", "3", nfs3_procs},    {nfs_prog, 4, "nfs", "4", nfs4_procs},
    {100005, 1, "mount", "1", mount_procs},   {100005, 3, "mount", "3", mount_procs},
    {100021, 4, "nlm", "4", nlm4_procs},      {100227, 3, "nfsacl", "3", nfsacl3_procs},
    {0x20000001, 1, "echo", "1", echo_procs},
};
constexpr size_t nrows = std::size(rows);

// First kind of each row; kind 0 is "other".
constexpr std::array<size_t, nrows + 1> make_bases() {
    std::array<size_t, nrows + 1> b{};
    b[0] = 1;
    for (size_t i = 0; i < nrows; ++i) b[i + 1] = b[i] + rows[i].procs.size();
    return b;
}
constexpr auto bases = make_bases();
constexpr size_t nfs4_row = 1;

call_kind kind_in_row(size_t row, size_t idx) noexcept {
    if (idx >= rows[row].procs.size() || rows[row].procs[idx].empty()) return call_kind_other;
    return call_kind(bases[row] + idx);
}

call_kind nfs4_op_kind(uint32_t op) noexcept {
    if (op < nfs4_first_op || op > nfs4_last_op) return call_kind_other;
    return kind_in_row(nfs4_row, 2 + (op - nfs4_first_op));
}

// RFC 8881 §18. Set-up ops choose the file or the session; bookkeeping ops
// fetch what a client caches alongside the work (libnfs and Linux send
// PUTFH GETATTR GETFH READDIR, or SEQUENCE PUTFH WRITE GETATTR). The main op
// is the first op that is neither; a COMPOUND of set-up and bookkeeping ops
// only is its first bookkeeping op (SEQUENCE PUTFH GETATTR is a GETATTR), or
// else its last set-up op (a lone SEQUENCE renews the lease). Wireshark's
// "main opcode" picks the same in these cases.
constexpr uint32_t op_getattr = 9, op_getfh = 10, op_putfh = 22, op_putpubfh = 23,
                   op_putrootfh = 24, op_restorefh = 31, op_savefh = 32, op_sequence = 53;
constexpr size_t sequence_args_bytes = 16 + 4 + 4 + 4 + 4;  // sessionid, seqid, slot, high, bool
constexpr size_t nfs4_fhsize = 128;                         // RFC 8881 §2.2
constexpr size_t max_bitmap_words = 8;                      // far more attributes than are defined
constexpr size_t max_tag = 1024;                            // a longer tag is no real client's
constexpr size_t max_prefix_ops = 8;  // set-up and bookkeeping ops read before giving up

call_kind classify_compound(const core::slice_chain& args) noexcept {
    xdr_reader r(args);
    auto tag_len = r.u32();
    if (!tag_len.ok() || *tag_len > max_tag || !r.skip(xdr_align(*tag_len)).ok())
        return call_kind_other;
    auto minor = r.u32();
    auto numops = r.u32();
    if (!minor.ok() || !numops.ok()) return call_kind_other;
    if (*numops == 0) return kind_in_row(nfs4_row, 1);
    uint32_t last_setup = 0, first_bookkeeping = 0;
    for (size_t i = 0; i < *numops && i < max_prefix_ops; ++i) {
        auto op = r.u32();
        if (!op.ok()) return call_kind_other;
        switch (*op) {
            case op_sequence:
                if (!r.skip(sequence_args_bytes).ok()) return call_kind_other;
                last_setup = *op;
                break;
            case op_putfh: {
                auto fh_len = r.u32();
                if (!fh_len.ok() || *fh_len > nfs4_fhsize || !r.skip(xdr_align(*fh_len)).ok())
                    return call_kind_other;
                last_setup = *op;
                break;
            }
            case op_putrootfh:
            case op_putpubfh:
                last_setup = *op;
                break;
            case op_getattr: {
                auto words = r.u32();
                if (!words.ok() || *words > max_bitmap_words || !r.skip(*words * 4).ok())
                    return call_kind_other;
                if (!first_bookkeeping) first_bookkeeping = *op;
                break;
            }
            case op_getfh:
            case op_savefh:
            case op_restorefh:
                if (!first_bookkeeping) first_bookkeeping = *op;
                break;
            default:
                return nfs4_op_kind(*op);
        }
    }
    if (*numops > max_prefix_ops) return call_kind_other;
    return nfs4_op_kind(first_bookkeeping ? first_bookkeeping : last_setup);
}

}  // namespace

size_t call_kind_count() noexcept {
    return bases[nrows];
}

call_kind_labels call_kind_info(call_kind k) noexcept {
    for (size_t i = 0; i < nrows; ++i) {
        if (k >= bases[i] && k < bases[i + 1])
            return {rows[i].program, rows[i].version, rows[i].procs[k - bases[i]]};
    }
    return {"other", "other", "other"};
}

call_kind classify_call(uint32_t prog, uint32_t vers, uint32_t proc,
                        const core::slice_chain& args) noexcept {
    for (size_t i = 0; i < nrows; ++i) {
        if (rows[i].prog != prog || rows[i].vers != vers) continue;
        if (i == nfs4_row && proc == 1) return classify_compound(args);
        if (i == nfs4_row && proc != 0) return call_kind_other;
        return kind_in_row(i, proc);
    }
    return call_kind_other;
}

call_kind find_call_kind(std::string_view program, std::string_view version,
                         std::string_view procedure) noexcept {
    for (size_t i = 0; i < nrows; ++i) {
        if (rows[i].program != program || rows[i].version != version) continue;
        for (size_t p = 0; p < rows[i].procs.size(); ++p)
            if (rows[i].procs[p] == procedure && !procedure.empty()) return call_kind(bases[i] + p);
    }
    return call_kind_other;
}

bool reply_accepted_ok_decoded(const core::slice_chain& record) noexcept {
    // RFC 5531 §9: xid, REPLY, MSG_ACCEPTED, verifier, accept_stat.
    xdr_reader r(record);
    auto xid = r.u32();
    auto type = r.u32();
    auto stat = r.u32();
    if (!xid.ok() || !type.ok() || !stat.ok() || *type != 1 || *stat != 0) return false;
    auto flavor = r.u32();
    auto len = r.u32();
    if (!flavor.ok() || !len.ok() || *len > 400 || !r.skip(xdr_align(*len)).ok()) return false;
    auto accept = r.u32();
    return accept.ok() && *accept == 0;
}

}  // namespace rpcgate::rpc
