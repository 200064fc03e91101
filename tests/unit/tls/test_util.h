// Shared by the tls unit tests: certificate fixtures and an in-memory pair of
// sessions whose bytes are pumped from one to the other.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "core/buffer.h"
#include "tls/context.h"
#include "tls/session.h"

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

// Two sessions wired back to back.
struct pair {
    std::unique_ptr<session> client, server;
    status cst = status::ok, sst = status::ok;

    pair(const context& c, const context& s) {
        std::string err;
        client = session::make(c, &err);
        server = session::make(s, &err);
    }

    // Runs both handshakes to an end (done or error on either side).
    void handshake() {
        core::slice_chain to_server, to_client;
        for (int round = 0; round < 10; ++round) {
            if (cst == status::ok) cst = client->handshake(to_server);
            server->feed(std::move(to_server));
            to_server.clear();
            if (sst == status::ok) sst = server->handshake(to_client);
            client->feed(std::move(to_client));
            to_client.clear();
            if (cst == status::error || sst == status::error) {
                // Let each side read the other's alert.
                if (cst == status::ok) cst = client->handshake(to_server);
                if (sst == status::ok) sst = server->handshake(to_client);
                return;
            }
            if (cst == status::done && sst == status::done) {
                // The client may still owe bytes (none in TLS 1.3 after Finished).
                return;
            }
        }
    }

    // Sends `plain` from one side to the other; returns what came out.
    static core::slice_chain send(session& from, session& to, const core::slice_chain& plain,
                                  core::slice_chain* back = nullptr, size_t* wire = nullptr) {
        core::slice_chain wire_bytes, out, reply;
        EXPECT_EQ(from.write(plain, wire_bytes), status::ok) << from.error_text();
        if (wire) *wire = wire_bytes.size();
        to.feed(std::move(wire_bytes));
        EXPECT_EQ(to.read(out, reply), status::ok) << to.error_text();
        if (back) *back = std::move(reply);
        return out;
    }
};

}  // namespace rpcgate::tls::test
