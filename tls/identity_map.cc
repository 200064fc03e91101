#include "tls/identity_map.h"

#include <openssl/x509v3.h>

#include <charconv>
#include <fstream>
#include <sstream>

#include "tls/verify_state.h"

namespace rpcgate::tls {
namespace {

constexpr size_t max_supplementary = 16;  // AUTH_SYS gids<16>

std::string_view trim(std::string_view s) {
    constexpr std::string_view ws = " \t\r";
    size_t b = s.find_first_not_of(ws);
    if (b == std::string_view::npos) return {};
    return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// Splits off the last whitespace-separated field of `s`.
std::string_view pop_field(std::string_view& s) {
    s = trim(s);
    size_t sp = s.find_last_of(" \t");
    std::string_view f = sp == std::string_view::npos ? s : s.substr(sp + 1);
    s = sp == std::string_view::npos ? std::string_view() : s.substr(0, sp);
    return f;
}

bool parse_id(std::string_view s, uint32_t* v) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
    return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

// The SAN values a rule may name, as text.
std::string san_text(const GENERAL_NAME* gn) {
    int type = 0;
    const ASN1_STRING* v = static_cast<const ASN1_STRING*>(GENERAL_NAME_get0_value(gn, &type));
    if (!v || (type != GEN_DNS && type != GEN_EMAIL && type != GEN_URI)) return {};
    return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(v)),
                       static_cast<size_t>(ASN1_STRING_length(v)));
}

}  // namespace

bool identity_map::load(const std::string& path, std::string* err) {
    std::ifstream f(path);
    if (!f) {
        if (err) *err = path + ": cannot open";
        return false;
    }
    std::ostringstream text;
    text << f.rdbuf();
    return parse(text.str(), path, err);
}

bool identity_map::parse(std::string_view text, std::string_view origin, std::string* err) {
    std::unordered_map<std::string, identity> subjects, sans;
    size_t lineno = 0;
    while (!text.empty()) {
        ++lineno;
        size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
        if (size_t hash = line.find('#'); hash != std::string_view::npos) {
            line = line.substr(0, hash);
        }
        line = trim(line);
        if (line.empty()) continue;

        auto bad = [&](std::string_view why) {
            if (err) {
                *err = std::string(origin) + ":" + std::to_string(lineno) + ": " + std::string(why);
            }
            return false;
        };
        std::string_view groups = pop_field(line);
        std::string_view uid_text = pop_field(line);
        std::string_view match = trim(line);
        if (match.empty()) return bad("expected '<match> <uid> <gid>[,<gid>...]'");

        identity id;
        if (!parse_id(uid_text, &id.uid)) return bad("bad uid '" + std::string(uid_text) + "'");
        bool first = true;
        while (true) {
            size_t comma = groups.find(',');
            std::string_view g = groups.substr(0, comma);
            uint32_t v = 0;
            if (!parse_id(g, &v)) return bad("bad gid '" + std::string(g) + "'");
            if (first) {
                id.gid = v;
                first = false;
            } else {
                id.gids.push_back(v);
            }
            if (comma == std::string_view::npos) break;
            groups = groups.substr(comma + 1);
        }
        if (id.gids.size() > max_supplementary) {
            return bad("more than 16 supplementary gids (AUTH_SYS limit)");
        }

        std::unordered_map<std::string, identity>* table = nullptr;
        if (match.starts_with("subject:")) {
            match.remove_prefix(8);
            table = &subjects;
        } else if (match.starts_with("san:")) {
            match.remove_prefix(4);
            table = &sans;
        } else {
            return bad("match must start with 'subject:' or 'san:'");
        }
        match = trim(match);
        if (match.empty()) return bad("empty match");
        if (!table->emplace(std::string(match), std::move(id)).second) {
            return bad("duplicate rule for '" + std::string(match) + "'");
        }
    }
    by_subject_ = std::move(subjects);
    by_san_ = std::move(sans);
    return true;
}

std::optional<identity> identity_map::lookup(SSL* ssl) const {
    X509* peer = ssl ? SSL_get0_peer_certificate(ssl) : nullptr;
    if (!peer || SSL_get_verify_result(ssl) != X509_V_OK) return std::nullopt;
    return lookup(peer);
}

std::optional<identity> identity_map::lookup(X509* cert) const {
    if (!cert || empty()) return std::nullopt;
    if (!by_subject_.empty()) {
        if (auto it = by_subject_.find(subject_text(cert)); it != by_subject_.end()) {
            return it->second;
        }
    }
    if (by_san_.empty()) return std::nullopt;
    auto* names =
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    std::optional<identity> found;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names) && !found; ++i) {
        std::string v = san_text(sk_GENERAL_NAME_value(names, i));
        if (v.empty()) continue;
        if (auto it = by_san_.find(v); it != by_san_.end()) found = it->second;
    }
    GENERAL_NAMES_free(names);
    return found;
}

}  // namespace rpcgate::tls
