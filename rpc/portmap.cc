#include "rpc/portmap.h"

#include <charconv>

namespace rpcgate::rpc {
namespace {

// The first entry of a number is its preferred name.
constexpr program_name programs[] = {
    {"portmap", 100000},  {"rpcbind", 100000},  {"portmapper", 100000}, {"sunrpc", 100000},
    {"rstat", 100001},    {"rusers", 100002},   {"nfs", 100003},        {"ypserv", 100004},
    {"mount", 100005},    {"mountd", 100005},   {"ypbind", 100007},     {"walld", 100008},
    {"yppasswd", 100009}, {"rquota", 100011},   {"rquotad", 100011},    {"spray", 100012},
    {"nlm", 100021},      {"nlockmgr", 100021}, {"nsm", 100024},        {"status", 100024},
    {"ypxfr", 100069},    {"nfs_acl", 100227},
};

}  // namespace

result<pmap_mapping> decode_getport_args(const core::slice_chain& args) noexcept {
    xdr_reader r(args);
    pmap_mapping m;
    uint32_t* fields[] = {&m.prog, &m.vers, &m.prot, &m.port};
    for (uint32_t* f : fields) {
        auto v = r.u32();
        if (!v) return v.error();
        *f = *v;
    }
    if (r.remaining() != 0) return errc::trailing_bytes;
    return m;
}

void encode_mapping(xdr_writer& w, const pmap_mapping& m) {
    w.u32(m.prog);
    w.u32(m.vers);
    w.u32(m.prot);
    w.u32(m.port);
}

result<uint32_t> decode_getport_result(const core::slice_chain& results) noexcept {
    xdr_reader r(results);
    auto port = r.u32();
    if (port && r.remaining() != 0) return errc::trailing_bytes;
    return port;
}

core::slice build_getport_reply(uint32_t xid, uint32_t port) {
    reply_header h = reply_header::accepted(xid, accept_stat::success);
    xdr_writer w(32);
    w.u32(record_last_fragment | 28);
    encode_reply_header(w, h);
    w.u32(port);
    return w.finish_slice();
}

core::slice build_null_reply(uint32_t xid) {
    return build_reply(reply_header::accepted(xid, accept_stat::success));
}

core::slice_chain build_getport_call(uint32_t xid, const pmap_mapping& m) {
    call_header h;
    h.xid = xid;
    h.prog = pmap_prog;
    h.vers = pmap_vers;
    h.proc = static_cast<uint32_t>(pmap_proc::getport);
    xdr_writer w(16);
    encode_mapping(w, m);
    return build_call(h, w.finish());
}

std::span<const program_name> well_known_programs() noexcept {
    return programs;
}

std::optional<uint32_t> parse_program(std::string_view text) noexcept {
    for (const auto& p : programs)
        if (p.name == text) return p.number;
    int base = 10;
    if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        text.remove_prefix(2);
        base = 16;
    }
    uint32_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v, base);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return v;
}

std::string_view program_name_of(uint32_t number) noexcept {
    for (const auto& p : programs)
        if (p.number == number) return p.name;
    return {};
}

}  // namespace rpcgate::rpc
