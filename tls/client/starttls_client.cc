#include "tls/client/starttls_client.h"

#include <fmt/format.h>
#include <sys/random.h>
#include <time.h>

#include <cstring>

#include "rpc/auth_tls.h"

namespace rpcgate::client {
namespace {

// A probe reply is 36 bytes; anything far larger is not an answer to it.
constexpr size_t k_max_reply = 64 * 1024;

uint32_t random_xid() noexcept {
    uint32_t x = 0;
    if (::getrandom(&x, sizeof x, GRND_NONBLOCK) != sizeof x) {
        timespec ts;
        ::clock_gettime(CLOCK_MONOTONIC, &ts);
        x = uint32_t(ts.tv_nsec) ^ uint32_t(ts.tv_sec) * 2654435761u;
    }
    return x ? x : 1;
}

const char* accept_name(rpc::accept_stat s) noexcept {
    switch (s) {
        case rpc::accept_stat::success:
            return "SUCCESS";
        case rpc::accept_stat::prog_unavail:
            return "PROG_UNAVAIL";
        case rpc::accept_stat::prog_mismatch:
            return "PROG_MISMATCH";
        case rpc::accept_stat::proc_unavail:
            return "PROC_UNAVAIL";
        case rpc::accept_stat::garbage_args:
            return "GARBAGE_ARGS";
        case rpc::accept_stat::system_err:
            return "SYSTEM_ERR";
    }
    return "accept_stat?";
}

const char* auth_name(rpc::auth_stat s) noexcept {
    static const char* const names[] = {
        "AUTH_OK",           "AUTH_BADCRED",           "AUTH_REJECTEDCRED",    "AUTH_BADVERF",
        "AUTH_REJECTEDVERF", "AUTH_TOOWEAK",           "AUTH_INVALIDRESP",     "AUTH_FAILED",
        "AUTH_KERB_GENERIC", "AUTH_TIMEEXPIRE",        "AUTH_TKTFILE",         "AUTH_DECODE",
        "AUTH_NET_ADDR",     "RPCSEC_GSS_CREDPROBLEM", "RPCSEC_GSS_CTXPROBLEM"};
    auto i = static_cast<uint32_t>(s);
    return i <= rpc::auth_stat_max ? names[i] : "auth_stat?";
}

const char* flavor_name(uint32_t f) noexcept {
    switch (static_cast<rpc::auth_flavor>(f)) {
        case rpc::auth_flavor::none:
            return "AUTH_NONE";
        case rpc::auth_flavor::sys:
            return "AUTH_SYS";
        case rpc::auth_flavor::short_:
            return "AUTH_SHORT";
        case rpc::auth_flavor::dh:
            return "AUTH_DH";
        case rpc::auth_flavor::rpcsec_gss:
            return "RPCSEC_GSS";
        case rpc::auth_flavor::tls:
            return "AUTH_TLS";
    }
    return "flavor?";
}

// The verifier as text: printable bodies quoted, others as a byte count.
std::string describe_verifier(const rpc::opaque_auth& v) {
    std::string body;
    bool printable = true;
    for (uint32_t i = 0; i < v.len; ++i)
        if (v.body[i] < 0x20 || v.body[i] > 0x7e) printable = false;
    if (v.len == 0)
        body = "empty";
    else if (printable && v.len <= 32)
        body =
            fmt::format("\"{}\"", std::string_view(reinterpret_cast<const char*>(v.body), v.len));
    else
        body = fmt::format("{} bytes", v.len);
    return fmt::format("verifier {} {}", flavor_name(v.flavor), body);
}

}  // namespace

const char* to_string(probe_outcome o) noexcept {
    switch (o) {
        case probe_outcome::pending:
            return "pending";
        case probe_outcome::accepted:
            return "accepted";
        case probe_outcome::refused:
            return "refused";
        case probe_outcome::error:
            return "error";
    }
    return "?";
}

std::string describe_reply(const rpc::reply_header& h) {
    if (h.stat == rpc::reply_stat::denied) {
        if (h.reject == rpc::reject_stat::rpc_mismatch)
            return fmt::format("MSG_DENIED RPC_MISMATCH ({}-{})", h.mismatch_low, h.mismatch_high);
        return fmt::format("MSG_DENIED AUTH_ERROR {}", auth_name(h.auth));
    }
    std::string s = fmt::format("MSG_ACCEPTED {}", accept_name(h.accept));
    if (h.accept == rpc::accept_stat::prog_mismatch)
        s += fmt::format(" ({}-{})", h.mismatch_low, h.mismatch_high);
    return s + ", " + describe_verifier(h.verf);
}

probe_result classify_probe_reply(const rpc::reply_header& h) {
    probe_result r;
    r.got_reply = true;
    r.reply = h;
    r.reason = describe_reply(h);
    if (rpc::is_starttls_reply(h)) {
        r.outcome = probe_outcome::accepted;
        return r;
    }
    r.outcome = probe_outcome::refused;
    // Say in words what the common non-answers mean.
    if (h.stat == rpc::reply_stat::accepted && h.accept == rpc::accept_stat::success)
        r.reason += " (the server ignored AUTH_TLS: no STARTTLS token)";
    return r;
}

starttls_client::starttls_client(uint32_t xid)
    : xid_(xid ? xid : random_xid()), rr_(rpc::record_limits{k_max_reply, 64}) {}

core::slice starttls_client::start(uint32_t prog, uint32_t vers) {
    started_ = true;
    return rpc::build_tls_probe_call(xid_, prog, vers);
}

void starttls_client::fail(std::string why) {
    result_.outcome = probe_outcome::error;
    result_.reason = std::move(why);
}

probe_outcome starttls_client::on_bytes(const core::slice& data) {
    if (result_.outcome != probe_outcome::pending) {
        leftover_.push_back(data.share());
        return result_.outcome;
    }
    if (!started_) {
        fail("bytes from the server before the probe was sent");
        return result_.outcome;
    }
    auto fed = rr_.feed(data, [this](core::slice_chain&& rec) {
        auto pk = rpc::peek_message(rec);
        if (!pk || pk->type != rpc::msg_type::reply) {
            fail(pk ? "the server sent a CALL instead of a reply" : "not an RPC message");
            return false;
        }
        if (pk->xid != xid_) {
            fail(fmt::format("reply xid {:#x} does not match the probe's {:#x}", pk->xid, xid_));
            return false;
        }
        auto rep = rpc::decode_reply(rec);
        if (!rep) {
            fail(fmt::format("malformed reply: {}", rpc::to_string(rep.error())));
            return false;
        }
        result_ = classify_probe_reply(rep->header);
        return false;  // whatever follows is not RPC of ours
    });
    if (!fed) {
        fail(fmt::format("not an RPC reply ({})", rpc::to_string(fed.error())));
        return result_.outcome;
    }
    if (result_.outcome != probe_outcome::pending && *fed < data.size())
        leftover_.push_back(data.share(*fed, data.size() - *fed));
    return result_.outcome;
}

probe_outcome starttls_client::on_eof(int err) {
    if (result_.outcome == probe_outcome::pending)
        fail(err ? fmt::format("connection failed before the reply: {}", std::strerror(-err))
                 : std::string("the server closed the connection without answering the probe"));
    return result_.outcome;
}

}  // namespace rpcgate::client
