#include "tls/client/client_session.h"

#include <cstring>

namespace rpcgate::client {

const char* to_string(tls_mode m) noexcept {
    switch (m) {
        case tls_mode::off:
            return "off";
        case tls_mode::starttls:
            return "starttls";
        case tls_mode::implicit:
            return "implicit";
    }
    return "?";
}

bool parse_tls_mode(std::string_view text, tls_mode* out) noexcept {
    if (text == "off")
        *out = tls_mode::off;
    else if (text == "starttls")
        *out = tls_mode::starttls;
    else if (text == "implicit")
        *out = tls_mode::implicit;
    else
        return false;
    return true;
}

bool set_tls13_ciphersuites(tls::context& ctx, const std::string& suites, std::string* err) {
    if (!tls::check_ciphersuites(suites, err)) return false;
    if (SSL_CTX_set_ciphersuites(ctx.native(), suites.c_str()) == 1) return true;
    *err = "cipher suites '" + suites + "': " + tls::last_error();
    return false;
}

const char* to_string(session_state s) noexcept {
    switch (s) {
        case session_state::probing:
            return "probing";
        case session_state::handshaking:
            return "handshaking";
        case session_state::ready:
            return "ready";
        case session_state::refused:
            return "refused";
        case session_state::failed:
            return "failed";
        case session_state::closed:
            return "closed";
    }
    return "?";
}

client_session::client_session(const session_params& p)
    : mode_(p.mode),
      ctx_(p.ctx),
      prog_(p.prog),
      vers_(p.vers),
      socket_fd_(p.socket_fd),
      probe_(p.xid) {}

session_state client_session::fail(std::string why) {
    state_ = session_state::failed;
    error_ = std::move(why);
    return state_;
}

session_state client_session::start(core::slice_chain& out) {
    if (mode_ == tls_mode::off) return state_ = session_state::ready;
    if (!ctx_) return fail("TLS requested without a client context");
    if (mode_ == tls_mode::starttls) {
        out.push_back(probe_.start(prog_, vers_));
        return state_ = session_state::probing;
    }
    core::slice_chain none, plain;
    return begin_handshake(std::move(none), out, plain);
}

session_state client_session::begin_handshake(core::slice_chain&& input, core::slice_chain& out,
                                              core::slice_chain& plain) {
    std::string err;
    if (socket_fd_ >= 0) {
        // Bytes that came after the probe's reply (none, normally) are read first.
        tls_ = tls::session::make_on_socket(*ctx_, socket_fd_, input.to_string(), &err);
        if (!tls_) return fail("TLS session: " + err);
        return state_ = session_state::handshaking;  // the owner calls step_socket()
    }
    tls_ = tls::session::make(*ctx_, &err);
    if (!tls_) return fail("TLS session: " + err);
    state_ = session_state::handshaking;
    if (!input.empty()) tls_->feed(std::move(input));
    return step_handshake(out, plain);
}

session_state client_session::step_handshake(core::slice_chain& out, core::slice_chain& plain) {
    switch (tls_->handshake(out)) {
        case tls::status::ok:
            return state_;
        case tls::status::done:
            state_ = session_state::ready;
            // Records that came with the server's last flight (a
            // NewSessionTicket, even application data) are read at once.
            return tls_->pending_input() ? read_records(out, plain) : state_;
        case tls::status::closed:
            return fail("the server closed the connection during the TLS handshake");
        case tls::status::error:
            break;
    }
    tls_->add_flags(tls::flag_handshfail);
    const std::string& why = tls_->error_text();
    return fail("TLS handshake: " + (why.empty() ? std::string("failed") : why));
}

session_state client_session::step_socket(bool* want_write) {
    *want_write = false;
    if (state_ != session_state::handshaking || socket_fd_ < 0) return state_;
    switch (tls_->socket_handshake()) {
        case tls::ktls::step::want_read:
            return state_;
        case tls::ktls::step::want_write:
            *want_write = true;
            return state_;
        case tls::ktls::step::done:
            return state_ = session_state::ready;
        case tls::ktls::step::error:
            break;
    }
    tls_->add_flags(tls::flag_handshfail);
    const std::string& why = tls_->error_text();
    return fail("TLS handshake: " +
                (why.empty() ? std::string("the server closed the connection") : why));
}

session_state client_session::read_records(core::slice_chain& out, core::slice_chain& plain) {
    switch (tls_->read(plain, out)) {
        case tls::status::ok:
        case tls::status::done:
            return state_;
        case tls::status::closed:
            return state_ = session_state::closed;
        case tls::status::error:
            break;
    }
    const std::string& why = tls_->error_text();
    return fail("TLS: " + (why.empty() ? std::string("record error") : why));
}

session_state client_session::on_bytes(core::slice data, core::slice_chain& out,
                                       core::slice_chain& plain) {
    switch (state_) {
        case session_state::ready:
            if (!tls_) {
                plain.push_back(std::move(data));
                return state_;
            }
            tls_->feed(std::move(data));
            return read_records(out, plain);
        case session_state::handshaking:
            tls_->feed(std::move(data));
            return step_handshake(out, plain);
        case session_state::probing:
            switch (probe_.on_bytes(data)) {
                case probe_outcome::pending:
                    return state_;
                case probe_outcome::accepted:
                    return begin_handshake(probe_.take_leftover(), out, plain);
                case probe_outcome::refused:
                    state_ = session_state::refused;
                    error_ = "probe refused: " + probe_.result().reason;
                    return state_;
                case probe_outcome::error:
                    return fail("probe: " + probe_.result().reason);
            }
            return state_;
        default:
            return state_;  // refused, failed, closed: bytes are dropped
    }
}

session_state client_session::on_eof(int err) {
    switch (state_) {
        case session_state::probing:
            probe_.on_eof(err);
            return fail("probe: " + probe_.result().reason);
        case session_state::handshaking:
            return fail(err ? std::string("connection failed during the TLS handshake: ") +
                                  std::strerror(-err)
                            : "the server closed the connection during the TLS handshake");
        case session_state::ready:
            // A TLS peer that closes without close_notify may have truncated us.
            if (tls_) return fail("connection closed without close_notify");
            return state_ = session_state::closed;
        default:
            return state_;
    }
}

bool client_session::write(core::slice_chain&& plain, core::slice_chain& out) {
    if (state_ != session_state::ready) return false;
    if (!tls_) {
        out.append(std::move(plain));
        return true;
    }
    if (tls_->write(plain, out) == tls::status::error) {
        fail("TLS write: " + tls_->error_text());
        return false;
    }
    return true;
}

void client_session::shutdown(core::slice_chain& out) {
    if (tls_ && tls_->handshake_done()) tls_->shutdown(out);
}

}  // namespace rpcgate::client
