#include "gateway/upgrade_wire.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace rpcgate::gw::upgrade_wire {

namespace {

class writer {
  public:
    explicit writer(msg_type t, uint16_t version = k_wire_version) {
        u32(k_magic);
        u16(version);
        u16(uint16_t(t));
        u32(0);  // length, set by finish()
    }
    void u8(uint8_t v) { out_.push_back(char(v)); }
    void u16(uint16_t v) {
        for (int i = 1; i >= 0; --i) out_.push_back(char(v >> (8 * i)));
    }
    void u32(uint32_t v) {
        for (int i = 3; i >= 0; --i) out_.push_back(char(v >> (8 * i)));
    }
    void u64(uint64_t v) {
        for (int i = 7; i >= 0; --i) out_.push_back(char(v >> (8 * i)));
    }
    void bytes(std::string_view b) {
        u32(uint32_t(b.size()));
        out_.append(b);
    }
    void id(const core::conn_id& c) {
        u64(uint64_t(c.sec));
        u32(uint32_t(c.usec));
        u64(c.seq);
    }
    std::string finish() {
        uint32_t n = uint32_t(out_.size() - k_header);
        for (int i = 0; i < 4; ++i) out_[8 + i] = char(n >> (8 * (3 - i)));
        return std::move(out_);
    }

  private:
    std::string out_;
};

// Checked reads: every one fails (and stays failed) once the body runs out.
class reader {
  public:
    explicit reader(std::string_view body) : b_(body) {}
    bool ok() const noexcept { return ok_; }
    bool done() const noexcept { return ok_ && pos_ == b_.size(); }
    uint64_t un(size_t n) {
        if (!ok_ || b_.size() - pos_ < n) {
            ok_ = false;
            return 0;
        }
        uint64_t v = 0;
        for (size_t i = 0; i < n; ++i) v = (v << 8) | uint8_t(b_[pos_ + i]);
        pos_ += n;
        return v;
    }
    uint8_t u8() { return uint8_t(un(1)); }
    uint16_t u16() { return uint16_t(un(2)); }
    uint32_t u32() { return uint32_t(un(4)); }
    uint64_t u64() { return un(8); }
    std::string_view bytes(size_t max) {
        uint32_t n = u32();
        if (!ok_ || n > max || b_.size() - pos_ < n) {
            ok_ = false;
            return {};
        }
        std::string_view v = b_.substr(pos_, n);
        pos_ += n;
        return v;
    }
    core::conn_id id() {
        core::conn_id c;
        c.sec = int64_t(u64());
        c.usec = int32_t(u32());
        c.seq = u64();
        return c;
    }
    // A count of items of at least `min_each` bytes: refused when the body
    // cannot hold that many (no allocation from a forged count).
    uint32_t count(size_t min_each) {
        uint32_t n = u32();
        if (!ok_ || (min_each && n > (b_.size() - pos_) / min_each)) {
            ok_ = false;
            return 0;
        }
        return n;
    }

  private:
    std::string_view b_;
    size_t pos_ = 0;
    bool ok_ = true;
};

bool body_of(std::string_view msg, msg_type want, std::string_view* body, std::string* err) {
    header h;
    if (!parse_header(msg, &h, err)) return false;
    if (h.type != want) {
        *err = fmt::format("expected message type {}, got {}", int(want), int(h.type));
        return false;
    }
    *body = msg.substr(k_header);
    return true;
}

bool finish(const reader& r, std::string* err, const char* what) {
    if (r.done()) return true;
    *err =
        fmt::format("{} message: {}", what, r.ok() ? "trailing bytes" : "truncated or bad length");
    return false;
}

void put_totals(writer& w, const upgrade_totals& t) {
#define RPCGATE_X(f) w.u64(t.f);
    RPCGATE_UPGRADE_TOTALS(RPCGATE_X)
#undef RPCGATE_X
}

upgrade_totals get_totals(reader& r) {
    upgrade_totals t;
#define RPCGATE_X(f) t.f = r.u64();
    RPCGATE_UPGRADE_TOTALS(RPCGATE_X)
#undef RPCGATE_X
    return t;
}

}  // namespace

bool parse_header(std::string_view msg, header* h, std::string* err, bool any_version) {
    if (msg.size() < k_header) {
        *err = fmt::format("message of {} bytes: shorter than its header", msg.size());
        return false;
    }
    reader r(msg.substr(0, k_header));
    uint32_t magic = r.u32();
    h->version = r.u16();
    uint16_t type = r.u16();
    h->length = r.u32();
    if (magic != k_magic) {
        *err = fmt::format("bad magic {:#010x}: not an rpcgate hand-off", magic);
        return false;
    }
    if (h->version != k_wire_version && !any_version) {
        *err = fmt::format("hand-off format version {}, this binary speaks {}", h->version,
                           k_wire_version);
        return false;
    }
    if (h->length > k_max_body || h->length != msg.size() - k_header) {
        *err = fmt::format("message length {} does not match the {} bytes received", h->length,
                           msg.size() - k_header);
        return false;
    }
    if (type < uint16_t(msg_type::hello) || type > uint16_t(msg_type::final)) {
        *err = fmt::format("unknown message type {}", type);
        return false;
    }
    h->type = msg_type(type);
    return true;
}

std::string encode_hello(const hello_msg& m, uint16_t version) {
    writer w(msg_type::hello, version);
    w.u32(m.pid);
    w.bytes(m.software);
    return w.finish();
}

bool decode_hello(std::string_view msg, hello_msg* m, std::string* err) {
    std::string_view body;
    if (!body_of(msg, msg_type::hello, &body, err)) return false;
    reader r(body);
    m->pid = r.u32();
    m->software = std::string(r.bytes(256));
    return finish(r, err, "hello");
}

std::string encode_offer(const offer_msg& m) {
    writer w(msg_type::offer);
    put_totals(w, m.totals);
    w.u32(uint32_t(m.groups.size()));
    for (const listener_group& g : m.groups) {
        w.u8(g.kind);
        w.u32(g.index);
        w.u32(g.count);
    }
    return w.finish();
}

bool decode_offer(std::string_view msg, offer_msg* m, std::string* err) {
    std::string_view body;
    if (!body_of(msg, msg_type::offer, &body, err)) return false;
    reader r(body);
    m->totals = get_totals(r);
    uint32_t n = r.count(9);
    size_t fds = 0;
    for (uint32_t i = 0; i < n && r.ok(); ++i) {
        listener_group g;
        g.kind = r.u8();
        g.index = r.u32();
        g.count = r.u32();
        if (g.kind > 2 || g.count > k_max_fds) {
            *err = fmt::format("offer message: bad listener group (kind {}, {} sockets)", g.kind,
                               g.count);
            return false;
        }
        fds += g.count;
        m->groups.push_back(g);
    }
    if (fds > k_max_fds) {
        *err = fmt::format("offer message: {} sockets, more than {}", fds, k_max_fds);
        return false;
    }
    return finish(r, err, "offer");
}

std::string encode_reason(msg_type t, std::string_view why) {
    writer w(t);
    w.bytes(why.substr(0, 1024));
    return w.finish();
}

bool decode_reason(std::string_view msg, std::string* why, std::string* err) {
    header h;
    if (!parse_header(msg, &h, err)) return false;
    if (h.type != msg_type::ready && h.type != msg_type::refuse) {
        *err = fmt::format("expected ready or refuse, got message type {}", int(h.type));
        return false;
    }
    reader r(msg.substr(k_header));
    *why = std::string(r.bytes(1024));
    return finish(r, err, "ready/refuse");
}

std::string encode_conn(const conn_msg& m) {
    writer w(msg_type::conn);
    w.id(m.id);
    w.u32(m.shard);
    w.bytes(m.peer);
    w.bytes(m.peer_addr);
    w.u64(m.detach_ns);
    w.u64(m.created_ms);
    w.u64(m.calls_outstanding);
    w.u64(m.calls_forwarded);
    w.u8(m.first_bytes ? 1 : 0);
    w.u32(m.tls_flags);
    w.bytes(m.tls_subject);
    w.u8(m.has_certuser ? 1 : 0);
    w.u32(m.uid);
    w.u32(m.gid);
    w.u32(uint32_t(m.gids.size()));
    for (uint32_t g : m.gids) w.u32(g);
    w.u32(m.client_unread);
    w.u32(uint32_t(m.links.size()));
    for (const link_state& l : m.links) {
        w.u32(l.route);
        w.u32(l.vers);
        w.id(l.id);
        w.u32(l.unread);
    }
    w.u32(uint32_t(m.calls.size()));
    for (const call_in_flight& c : m.calls) {
        w.u32(c.xid);
        w.u16(c.kind);
        w.u64(c.received_ns);
    }
    w.u32(uint32_t(m.backchannel.size()));
    for (const backchannel_call& b : m.backchannel) {
        w.u32(b.xid);
        w.u32(b.route);
    }
    w.u8(m.has_tls ? 1 : 0);
    if (m.has_tls) {
        const tls::moved_state& t = m.tls;
        w.u8(uint8_t(t.where));
        w.u32(t.flags);
        w.u32(t.suite);
        w.bytes(t.version);
        w.bytes(t.cipher);
        w.bytes(t.alpn);
        w.bytes(t.peer_subject);
        w.bytes(t.peer_cert);
        w.bytes(t.tx_secret);
        w.bytes(t.rx_secret);
        w.u64(t.tx_generation);
        w.u64(t.rx_generation);
        w.u64(t.tx_seq);
        w.u64(t.rx_seq);
        w.u64(t.records_since_update);
        w.u64(t.own_updates);
    }
    return w.finish();
}

bool decode_conn(std::string_view msg, conn_msg* m, std::string* err) {
    std::string_view body;
    if (!body_of(msg, msg_type::conn, &body, err)) return false;
    reader r(body);
    m->id = r.id();
    m->shard = r.u32();
    m->peer = std::string(r.bytes(256));
    m->peer_addr = std::string(r.bytes(sizeof(sockaddr_storage)));
    m->detach_ns = r.u64();
    m->created_ms = r.u64();
    m->calls_outstanding = r.u64();
    m->calls_forwarded = r.u64();
    m->first_bytes = r.u8() != 0;
    m->tls_flags = r.u32();
    m->tls_subject = std::string(r.bytes(4096));
    m->has_certuser = r.u8() != 0;
    m->uid = r.u32();
    m->gid = r.u32();
    uint32_t ng = r.count(4);
    for (uint32_t i = 0; i < ng && r.ok(); ++i) m->gids.push_back(r.u32());
    m->client_unread = r.u32();
    uint32_t nl = r.count(32);
    if (nl + 1 > k_max_fds) {
        *err = fmt::format("conn message: {} backend links", nl);
        return false;
    }
    for (uint32_t i = 0; i < nl && r.ok(); ++i) {
        link_state l;
        l.route = r.u32();
        l.vers = r.u32();
        l.id = r.id();
        l.unread = r.u32();
        m->links.push_back(l);
    }
    uint32_t nc = r.count(14);
    for (uint32_t i = 0; i < nc && r.ok(); ++i) {
        call_in_flight c;
        c.xid = r.u32();
        c.kind = r.u16();
        c.received_ns = r.u64();
        m->calls.push_back(c);
    }
    uint32_t nb = r.count(8);
    for (uint32_t i = 0; i < nb && r.ok(); ++i) {
        backchannel_call b;
        b.xid = r.u32();
        b.route = r.u32();
        m->backchannel.push_back(b);
    }
    m->has_tls = r.u8() != 0;
    if (m->has_tls) {
        tls::moved_state& t = m->tls;
        uint8_t where = r.u8();
        t.where = tls::moved_state::records(where);
        t.flags = r.u32();
        t.suite = r.u32();
        t.version = std::string(r.bytes(32));
        t.cipher = std::string(r.bytes(128));
        t.alpn = std::string(r.bytes(255));
        t.peer_subject = std::string(r.bytes(4096));
        t.peer_cert = std::string(r.bytes(32 * 1024));
        t.tx_secret = std::string(r.bytes(64));
        t.rx_secret = std::string(r.bytes(64));
        t.tx_generation = r.u64();
        t.rx_generation = r.u64();
        t.tx_seq = r.u64();
        t.rx_seq = r.u64();
        t.records_since_update = r.u64();
        t.own_updates = r.u64();
        if (r.ok() && where != uint8_t(tls::moved_state::records::own) &&
            where != uint8_t(tls::moved_state::records::kernel)) {
            *err = fmt::format("conn message: TLS records kept by {}, unknown", where);
            return false;
        }
        if (r.ok() && (t.tx_secret.empty() || t.tx_secret.size() != t.rx_secret.size())) {
            *err = "conn message: TLS traffic secrets of different or no length";
            return false;
        }
    }
    if (!finish(r, err, "conn")) return false;
    if (!m->id.valid()) {
        *err = "conn message: no connection ID";
        return false;
    }
    return true;
}

std::string encode_bytes(std::string_view chunk) {
    writer w(msg_type::conn_bytes);
    w.bytes(chunk);
    return w.finish();
}

bool decode_bytes(std::string_view msg, std::string_view* chunk, std::string* err) {
    std::string_view body;
    if (!body_of(msg, msg_type::conn_bytes, &body, err)) return false;
    reader r(body);
    *chunk = r.bytes(k_max_body);
    return finish(r, err, "conn_bytes");
}

std::string encode_totals(msg_type t, const totals_msg& m) {
    writer w(t);
    put_totals(w, m.totals);
    return w.finish();
}

bool decode_totals(std::string_view msg, totals_msg* m, std::string* err) {
    header h;
    if (!parse_header(msg, &h, err)) return false;
    if (h.type != msg_type::end && h.type != msg_type::final) {
        *err = fmt::format("expected end or final, got message type {}", int(h.type));
        return false;
    }
    reader r(msg.substr(k_header));
    m->totals = get_totals(r);
    return finish(r, err, "totals");
}

std::string send_message(int sock, std::string_view msg, const int* fds, size_t nfds) {
    if (nfds > k_max_fds) return fmt::format("{} descriptors, more than {}", nfds, k_max_fds);
    iovec iov{const_cast<char*>(msg.data()), msg.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> control;
    if (nfds) {
        control.resize(CMSG_SPACE(sizeof(int) * nfds));
        mh.msg_control = control.data();
        mh.msg_controllen = control.size();
        cmsghdr* c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    for (;;) {
        ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
        if (n == ssize_t(msg.size())) return {};
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return std::strerror(errno);
        return "short send";
    }
}

std::string recv_message(int sock, std::string* msg, std::vector<int>* fds) {
    msg->resize(k_header + k_max_body + 1);
    iovec iov{msg->data(), msg->size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * k_max_fds));
    mh.msg_control = control.data();
    mh.msg_controllen = control.size();
    ssize_t n;
    do {
        n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return std::strerror(errno);
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            fds->push_back(fd);
        }
    }
    if (n == 0 && fds->empty()) return "closed";
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return "message or descriptors truncated";
    msg->resize(size_t(n));
    return {};
}

}  // namespace rpcgate::gw::upgrade_wire
