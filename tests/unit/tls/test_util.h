// Shared by the tls unit tests: certificate fixtures (cert_fixtures.h) and an
// in-memory pair of sessions whose bytes are pumped from one to the other.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "core/buffer.h"
#include "tests/unit/tls/cert_fixtures.h"
#include "tls/context.h"
#include "tls/session.h"

namespace rpcgate::tls::test {

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
