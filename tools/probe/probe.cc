#include "tools/probe/probe.h"

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/x509.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <chrono>
#include <cstdio>

#include "rpc/message.h"
#include "rpc/portmap.h"
#include "tls/client/blocking_client.h"
#include "tls/session.h"

namespace rpcgate::probe {
namespace {

using clock = std::chrono::steady_clock;

std::string bio_text(BIO* b) {
    char* p = nullptr;
    long n = BIO_get_mem_data(b, &p);
    std::string s(p ? p : "", n > 0 ? size_t(n) : 0);
    BIO_free(b);
    return s;
}

std::string name_text(const X509_NAME* n) {
    BIO* b = BIO_new(BIO_s_mem());
    X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253);
    return bio_text(b);
}

std::string time_text(const ASN1_TIME* t) {
    BIO* b = BIO_new(BIO_s_mem());
    ASN1_TIME_print(b, t);
    return bio_text(b);
}

// Certificate and verification details straight from OpenSSL.
void describe_peer(const tls::session& s, bool verifying, probe_report& r) {
    X509* cert = SSL_get1_peer_certificate(s.native());
    if (cert) {
        r.peer_subject = name_text(X509_get_subject_name(cert));
        r.peer_issuer = name_text(X509_get_issuer_name(cert));
        r.not_before = time_text(X509_get0_notBefore(cert));
        r.not_after = time_text(X509_get0_notAfter(cert));
        X509_free(cert);
    }
    if (!verifying) {
        r.verify = "not checked (no --ca)";
        return;
    }
    long v = SSL_get_verify_result(s.native());
    r.verify = v == X509_V_OK ? "ok" : X509_verify_cert_error_string(v);
}

void null_over_tls(client::blocking_client& c, const probe_options& opt, probe_report& r) {
    rpc::call_header h;
    h.xid = c.probe().reply.xid + 1;
    h.prog = opt.prog;
    h.vers = opt.vers;
    h.proc = 0;
    auto t0 = clock::now();
    auto timeout = std::chrono::milliseconds(int64_t(opt.timeout_s * 1000));
    core::slice_chain rec = c.call(rpc::build_call(h, {}), timeout);
    r.null_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    if (rec.empty()) {
        r.null_result = c.error().empty() ? "no reply" : c.error();
        // The client library says "... in time" / "... timed out" for a
        // deadline; anything else is the peer ending the connection (EOF,
        // reset, close_notify).
        bool timed_out = c.error().empty() || c.error().find("in time") != std::string::npos ||
                         c.error().find("timed out") != std::string::npos;
        r.null_failure = timed_out ? "no reply" : "closed";
        return;
    }
    auto rep = rpc::decode_reply(rec);
    if (!rep) {
        r.null_result = std::string("malformed reply: ") + rpc::to_string(rep.error());
        return;
    }
    if (rep->header.xid != h.xid) {
        r.null_result = fmt::format("reply xid {:#x} for call {:#x}", rep->header.xid, h.xid);
        return;
    }
    r.null_result = client::describe_reply(rep->header);
    r.null_ok = rep->header.stat == rpc::reply_stat::accepted &&
                rep->header.accept == rpc::accept_stat::success;
    if (!r.null_ok)
        r.null_failure = rep->header.stat == rpc::reply_stat::accepted &&
                                 (rep->header.accept == rpc::accept_stat::prog_unavail ||
                                  rep->header.accept == rpc::accept_stat::prog_mismatch)
                             ? "not served"
                             : "error";
}

void json_string(std::string& out, std::string_view key, std::string_view v) {
    out += fmt::format("\"{}\":\"", key);
    for (char ch : v) {
        if (ch == '"' || ch == '\\') {
            out += '\\';
            out += ch;
        } else if (uint8_t(ch) < 0x20) {
            out += fmt::format("\\u{:04x}", unsigned(uint8_t(ch)));
        } else {
            out += ch;
        }
    }
    out += "\",";
}

int bad_option(const std::string& what) {
    std::fprintf(stderr, "rpcgate-probe: %s (see --help)\n", what.c_str());
    return exit_usage;
}

// "host:port", "[v6]:port"; false on anything else.
bool split_target(std::string_view text, std::string* host, uint16_t* port) {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    std::string_view h = text.substr(0, colon), p = text.substr(colon + 1);
    if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
    unsigned v = 0;
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (p.empty() || ec != std::errc() || end != p.data() + p.size() || v == 0 || v > 65535)
        return false;
    *host = std::string(h);
    *port = uint16_t(v);
    return true;
}

}  // namespace

probe_report run_probe(const probe_options& opt) {
    probe_report r;
    r.target = fmt::format("{}:{}", opt.host, opt.port);
    r.implicit = opt.implicit;
    r.prog = opt.prog;
    r.vers = opt.vers;
    auto timeout = std::chrono::milliseconds(int64_t(opt.timeout_s * 1000));
    client::blocking_client c = client::blocking_client::open(
        opt.host, opt.port, opt.implicit ? client::tls_mode::implicit : client::tls_mode::starttls,
        opt.prog, opt.vers, opt.tls, timeout);
    const client::connect_stage st = c.failed_at();
    r.connected = st != client::connect_stage::options && st != client::connect_stage::connect;
    r.connect_ms = c.connect_ms;
    if (!r.connected) {
        r.connect_error = c.error();
        r.exit_status = st == client::connect_stage::options ? exit_usage : exit_connect;
        r.verdict =
            (st == client::connect_stage::options ? "bad TLS options: " : "no connection: ") +
            c.error();
        return r;
    }
    if (opt.implicit) {
        r.probe_outcome = "skipped";
    } else {
        const client::probe_result& p = c.probe();
        r.probe_outcome = client::to_string(p.outcome);
        r.probe_reply = p.reason;
        r.probe_xid = p.reply.xid;
        r.probe_ms = c.probe_ms;
        if (p.outcome != client::probe_outcome::accepted) {
            r.exit_status = exit_probe;
            r.verdict = p.outcome == client::probe_outcome::refused
                            ? "the server does not offer RPC-with-TLS on this program"
                            : "no usable answer to the AUTH_TLS probe";
            return r;
        }
    }
    if (tls::session* s = c.tls()) {
        r.flags = tls::flags_text(s->flags());
        if (s->handshake_done()) {
            r.version = s->version();
            r.cipher = s->cipher();
            r.alpn = s->alpn();
        }
        describe_peer(*s, !opt.tls.ca_file.empty(), r);
    }
    if (st != client::connect_stage::none) {
        r.handshake_error = c.error();
        r.exit_status = exit_handshake;
        r.verdict = "the TLS handshake failed";
        return r;
    }
    r.handshake_ok = true;
    r.handshake_ms = c.handshake_ms;
    if (r.version != "TLSv1.3") {
        r.exit_status = exit_handshake;
        r.verdict = "negotiated " + r.version + ", RFC 9289 requires TLS 1.3";
        return r;
    }
    null_over_tls(c, opt, r);
    c.close();
    if (!r.null_ok) {
        r.exit_status = exit_no_reply;
        if (r.null_failure == "closed")
            r.verdict =
                "TLS is up, but the connection was closed at the NULL call: behind a gateway, "
                "the backend of this program is unreachable";
        else if (r.null_failure == "not served")
            r.verdict = fmt::format(
                "TLS is up, but program {} version {} is not served here: behind a gateway, it "
                "is not routed",
                r.prog, r.vers);
        else
            r.verdict = "TLS is up but the NULL call over it failed";
        return r;
    }
    r.verdict = opt.implicit ? "implicit TLS works" : "RFC 9289 RPC-with-TLS works";
    return r;
}

std::string format_human(const probe_report& r) {
    std::string s;
    auto line = [&s](std::string_view stage, const std::string& text) {
        s += fmt::format("{:<10}{}\n", stage, text);
    };
    line("target", fmt::format("{} prog {} vers {}{}", r.target, r.prog, r.vers,
                               r.implicit ? " (implicit TLS)" : ""));
    line("connect",
         r.connected ? fmt::format("ok ({:.1f} ms)", r.connect_ms) : "FAILED: " + r.connect_error);
    if (!r.connected) return s + fmt::format("{:<10}{}", "result", r.verdict);
    if (!r.implicit)
        line("probe", fmt::format("{} — {} (xid {:#x}, {:.1f} ms)", r.probe_outcome, r.probe_reply,
                                  r.probe_xid, r.probe_ms));
    if (r.exit_status != exit_probe) {
        if (r.handshake_ok)
            line("tls", fmt::format("{} {} ALPN {} ({:.1f} ms)", r.version, r.cipher,
                                    r.alpn.empty() ? "none" : r.alpn, r.handshake_ms));
        else
            line("tls", "FAILED: " + r.handshake_error);
        if (!r.peer_subject.empty()) {
            line("peer", "subject " + r.peer_subject);
            line("", "issuer  " + r.peer_issuer);
            line("", "valid   " + r.not_before + " .. " + r.not_after);
        }
        if (!r.verify.empty())
            line("verify", r.verify + (r.flags.empty() ? "" : " [" + r.flags + "]"));
        if (r.handshake_ok && r.version == "TLSv1.3")
            line("null",
                 fmt::format("{} ({:.1f} ms)",
                             r.null_ok ? r.null_result : "FAILED: " + r.null_result, r.null_ms));
    }
    s += fmt::format("{:<10}{}", "result", r.verdict);
    return s;
}

std::string format_json(const probe_report& r) {
    std::string o = "{";
    json_string(o, "target", r.target);
    o += fmt::format(
        "\"prog\":{},\"vers\":{},\"implicit\":{},\"connected\":{},\"connect_ms\":{:.3f},", r.prog,
        r.vers, r.implicit, r.connected, r.connect_ms);
    json_string(o, "connect_error", r.connect_error);
    json_string(o, "probe", r.probe_outcome);
    json_string(o, "probe_reply", r.probe_reply);
    o += fmt::format(
        "\"probe_xid\":{},\"probe_ms\":{:.3f},\"handshake_ok\":{},"
        "\"handshake_ms\":{:.3f},",
        r.probe_xid, r.probe_ms, r.handshake_ok, r.handshake_ms);
    json_string(o, "handshake_error", r.handshake_error);
    json_string(o, "version", r.version);
    json_string(o, "cipher", r.cipher);
    json_string(o, "alpn", r.alpn);
    json_string(o, "peer_subject", r.peer_subject);
    json_string(o, "peer_issuer", r.peer_issuer);
    json_string(o, "not_before", r.not_before);
    json_string(o, "not_after", r.not_after);
    json_string(o, "verify", r.verify);
    json_string(o, "flags", r.flags);
    o += fmt::format("\"null_ok\":{},\"null_ms\":{:.3f},", r.null_ok, r.null_ms);
    json_string(o, "null_result", r.null_result);
    json_string(o, "null_failure", r.null_failure);
    json_string(o, "verdict", r.verdict);
    o += fmt::format("\"exit_status\":{}}}", r.exit_status);
    return o;
}

int probe_main(int argc, char** argv) {
    CLI::App app{"rpcgate-probe: does a server speak RPC-with-TLS (RFC 9289)?"};
    std::string target, prog = "nfs";
    bool json = false;
    probe_options opt;
    app.add_option("target", target, "HOST:PORT of the server")->required();
    app.add_option("--prog", prog, "program number or name (nfs, mount, nlm, ...)");
    app.add_option("--vers", opt.vers, "program version");
    app.add_option("--ca", opt.tls.ca_file, "CA bundle to verify the server (default: no check)");
    app.add_option("--cert", opt.tls.cert_file, "client certificate (mtls)");
    app.add_option("--key", opt.tls.key_file, "client key (mtls)");
    app.add_option("--server-name", opt.tls.server_name,
                   "name to send as SNI and verify (default: HOST)");
    app.add_flag("--implicit", opt.implicit, "TLS from the first byte, no AUTH_TLS probe");
    app.add_flag("--json", json, "print one JSON object");
    app.add_option("--timeout", opt.timeout_s, "seconds per stage")
        ->check(CLI::Range(0.01, 3600.0));
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return bad_option(e.what());
    }
    if (!split_target(target, &opt.host, &opt.port))
        return bad_option("bad target '" + target + "': expected HOST:PORT");
    auto p = rpc::parse_program(prog);
    if (!p) return bad_option("unknown program '" + prog + "'");
    opt.prog = *p;
    if (opt.tls.cert_file.empty() != opt.tls.key_file.empty())
        return bad_option("--cert and --key go together");
    if (opt.tls.server_name.empty()) opt.tls.server_name = opt.host;
    probe_report r = run_probe(opt);
    std::string text = json ? format_json(r) : format_human(r);
    std::fputs(text.c_str(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    return r.exit_status;
}

}  // namespace rpcgate::probe
