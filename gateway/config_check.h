// What `rpcgate --check-config` checks beyond validate() (config.h), and the
// TLS options the gateway builds its contexts from (one place for both, so
// that the check loads exactly what a start would load).
//
// check_config() does everything a start does short of opening sockets and
// files for writing: it loads every certificate and key into a real OpenSSL
// context (a key that does not match its certificate is refused), reads the
// cert-user map, looks at the validity of every certificate it loaded, and
// warns where a configuration works but is likely a mistake. It writes
// nothing: no audit log is created (a start creates it), no socket is bound.
// Any thread; it reads files only.
#pragma once

#include <ctime>
#include <string>
#include <vector>

#include "gateway/config.h"
#include "tls/context.h"

namespace rpcgate::gw {

// The server-role options of the listeners (--cert, --key, --ca, --crl, ...).
tls::server_options server_tls_options(const gateway_config& cfg);
// The client-role options towards one backend (its effective upstream TLS).
tls::client_options upstream_tls_options(const gateway_config& cfg, const backend_route& r);

struct check_report {
    std::vector<std::string> errors;    // the configuration would not start
    std::vector<std::string> warnings;  // it would start; an operator should look
    std::vector<std::string> notes;     // what was checked (resolved backends, ...)
    bool ok() const noexcept { return errors.empty(); }
};

// Certificates that expire within this many days are warned about.
inline constexpr int cert_expiry_warning_days = 30;

// `cfg` has passed validate(). `now` is the time certificates are judged at.
check_report check_config(const gateway_config& cfg, std::time_t now);

}  // namespace rpcgate::gw
