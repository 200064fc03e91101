// Mapping a verified client certificate to an AUTH_SYS identity, in the
// manner of FreeBSD's rpc.tlsservd `-u` (tlscertuser): calls on a connection
// whose client certificate maps get their AUTH_SYS credential rewritten to the
// mapped uid/gids (the connection is flagged CERTUSER).
//
// Map file, one rule a line; `#` starts a comment, blank lines are ignored:
//
//     subject:CN=client1,O=rpcgate test   1000 1000,20,24
//     san:client1@example.org             1001 1001
//     san:host1.example.org               0 0
//
// `<match> <uid> <gid>[,<gid>...]`: the last two fields are the uid and the
// group list (the first group is the primary gid, the rest — at most 16, the
// AUTH_SYS limit, RFC 5531 appendix A — are supplementary); everything
// before them is the match, so a subject may contain spaces.
//   subject:<RFC 2253 subject>  as OpenSSL prints it with XN_FLAG_RFC2253
//   san:<value>                 a dNSName, rfc822Name (email) or URI SAN
//
// Lookup: the subject first, then each SAN in certificate order; the first
// rule that matches wins. Only a certificate that verified
// (SSL_get_verify_result == X509_V_OK) is mapped: an opportunistic
// connection with a self-signed certificate must not choose its own uid.
//
// A map is built once (load) and then only read: any thread may look up.
// Reloading makes a new map.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace rpcgate::tls {

struct identity {
    uint32_t uid = 0;
    uint32_t gid = 0;
    std::vector<uint32_t> gids;  // supplementary groups (≤ 16)

    bool operator==(const identity&) const = default;
};

class identity_map {
  public:
    // Replaces the rules with those of the file. On error returns false and
    // sets `err` to "PATH:LINE: reason"; the map is then left unchanged.
    bool load(const std::string& path, std::string* err);
    // The same from text (`origin` names it in errors).
    bool parse(std::string_view text, std::string_view origin, std::string* err);

    // The identity for the peer certificate of a completed handshake, if
    // that certificate verified and a rule matches it.
    std::optional<identity> lookup(SSL* ssl) const;
    // The identity for a certificate, without any verification check.
    std::optional<identity> lookup(X509* cert) const;

    size_t size() const noexcept { return by_subject_.size() + by_san_.size(); }
    bool empty() const noexcept { return size() == 0; }

  private:
    std::unordered_map<std::string, identity> by_subject_;
    std::unordered_map<std::string, identity> by_san_;
};

}  // namespace rpcgate::tls
