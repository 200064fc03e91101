// When the certificates in a PEM file expire: for the gateway's
// rpcgate_certificate_not_after_seconds gauge (one sample per certificate
// loaded: server, upstream client, CAs), read at start and at each reload.
// Any thread; no state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rpcgate::tls {

struct cert_expiry {
    std::string subject;    // the CN, or the whole subject when it has none
    std::string serial;     // hex
    int64_t not_after = 0;  // seconds since the epoch (UTC)
};

// Every certificate in the PEM file `path`, in file order; an empty vector
// and *err when the file cannot be read or holds none.
std::vector<cert_expiry> read_cert_expiries(const std::string& path, std::string* err);

}  // namespace rpcgate::tls
