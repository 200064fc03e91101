// Certificate fixtures of tests/tls/make_certs.sh for the tls tests and the
// TLS micro-benchmarks (no GoogleTest here). The including target defines
// RPCGATE_MAKE_CERTS, the script's path.
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <string>

#include "tls/context.h"

namespace rpcgate::tls::test {

// The directory holding the fixtures of tests/tls/make_certs.sh. ctest makes
// it once (RPCGATE_TLS_CERTS); a test binary run by hand makes a fresh one.
inline const std::string& cert_dir() {
    static const std::string dir = [] {
        if (const char* env = std::getenv("RPCGATE_TLS_CERTS"); env && *env) {
            std::string d = env;
            std::string cmd = "sh '" RPCGATE_MAKE_CERTS "' '" + d + "'";
            if (std::system(cmd.c_str()) == 0) return d;
        }
        char tmpl[] = "/tmp/rpcgate-tls-certs.XXXXXX";
        const char* d = mkdtemp(tmpl);
        if (!d) return std::string();
        std::string cmd = std::string("sh '" RPCGATE_MAKE_CERTS "' '") + d + "'";
        return std::system(cmd.c_str()) == 0 ? std::string(d) : std::string();
    }();
    return dir;
}

inline std::string cert(const std::string& name) {
    return cert_dir() + "/" + name;
}

inline server_options server_opts() {
    server_options o;
    o.cert_file = cert("server.pem");
    o.key_file = cert("server.key");
    o.ca_file = cert("ca.pem");
    return o;
}

inline client_options client_opts(const std::string& who = "") {
    client_options o;
    o.ca_file = cert("ca.pem");
    o.server_name = "localhost";
    if (!who.empty()) {
        o.cert_file = cert(who + ".pem");
        o.key_file = cert(who + ".key");
    }
    return o;
}

}  // namespace rpcgate::tls::test
