// Stateful fuzzing of the gateway's connection state machine.
//
// One gateway runs in this process for the whole fuzzing session: one shard,
// opportunistic TLS (AUTH_TLS probe -> STARTTLS), --tls-auto, an implicit-TLS
// listener, small limits (48 KiB records, 64 KiB in flight, 64 receive
// buffers of 4 KiB, so that oversize records, flow control and buffer-ring
// pressure are reachable), in front of an echo backend on a thread of its own
// that can reset its connections or cut a reply in half on request.
//
// Each input is a script of operations on up to three client connections over
// real loopback sockets: whole, partial, multi-fragment and garbage records,
// probes followed by a TLS handshake (or not), TLS on the first byte, TLS
// KeyUpdate, close_notify, TLS garbage, half-close, FIN, RST, backend resets
// and cut replies, short waits. Every wait has a deadline of milliseconds.
//
// What must hold (a violation aborts, and libFuzzer keeps the script):
//  - the gateway never crashes (ASan/UBSan watch its threads too);
//  - everything a client receives decodes as an RPC REPLY (a cut backend
//    reply is never forwarded in part), and a reply carrying one of our xids
//    comes back on the connection that sent that xid;
//  - on a connection that only ever sent well-formed calls, every ECHO reply
//    carries the bytes sent, and every call is answered or the connection is
//    closed within 2 s of the script's end — nothing is lost silently;
//  - after the script closes its connections, the gateway's open sessions and
//    handshakes in progress return to zero within 3 s (no leaked session);
//  - a fresh connection then gets a NULL call answered (the gateway is live).
//
// Our xids are 0xA5nnnnnn and no other byte we send is 0xA5 (garbage is
// filtered), so a word with that top byte in the stream is always one of our
// xids at its place, even when garbage has shifted the record boundaries.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/log.h"
#include "gateway/config.h"
#include "gateway/gateway.h"
#include "rpc/auth_tls.h"
#include "rpc/message.h"
#include "rpc/portmap.h"
#include "tests/fuzz/fuzz_util.h"

using namespace rpcgate;
using clk = std::chrono::steady_clock;

namespace {

constexpr uint32_t k_prog = 0x20000001;
constexpr uint32_t k_tag = 0xA5000000;
constexpr size_t k_max_record = 48 * 1024;

uint32_t be32(const uint8_t* p) {
    return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}
void put32(std::string& s, uint32_t v) {
    char b[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
    s.append(b, 4);
}

void set_timeouts(int fd, int ms) {
    timeval tv{ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void reset_close(int fd) {
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd);
}

int connect_to(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    RPCGATE_FUZZ_CHECK(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_timeouts(fd, 300);
    return fd;
}

// ---- the echo backend ------------------------------------------------------

// A poll() loop on its own thread: answers NULL and ECHO of the echo program
// (PROC_UNAVAIL otherwise), reassembling multi-fragment calls. On request it
// resets every connection, or sends only half of its next reply and resets.
class echo_backend {
  public:
    uint16_t start() {
        lfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        RPCGATE_FUZZ_CHECK(::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        RPCGATE_FUZZ_CHECK(::listen(lfd_, 128) == 0);
        RPCGATE_FUZZ_CHECK(::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        std::thread([this] { run(); }).detach();
        return ntohs(a.sin_port);
    }
    void reset_all() { reset_.store(true); }
    void cut_next_reply() { cut_.store(true); }

  private:
    struct conn {
        int fd;
        std::string in, record;
    };

    void run() {
        std::vector<conn> conns;
        for (;;) {
            std::vector<pollfd> p{{lfd_, POLLIN, 0}};
            for (auto& c : conns) p.push_back({c.fd, POLLIN, 0});
            ::poll(p.data(), p.size(), 5);
            if (reset_.exchange(false)) {
                for (auto& c : conns) reset_close(c.fd);
                conns.clear();
                continue;
            }
            if (p[0].revents & POLLIN) {
                int fd = ::accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
                if (fd >= 0) {
                    set_timeouts(fd, 1000);
                    conns.push_back({fd, {}, {}});
                }
            }
            for (size_t i = 1; i < p.size(); ++i) {
                if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                conn& c = conns[i - 1];
                char buf[65536];
                ssize_t n = ::read(c.fd, buf, sizeof buf);
                if (n <= 0 || !serve(c, buf, n)) {
                    reset_close(c.fd);
                    c.fd = -1;
                }
            }
            std::erase_if(conns, [](const conn& c) { return c.fd < 0; });
        }
    }

    // False: drop the connection.
    bool serve(conn& c, const char* data, size_t n) {
        c.in.append(data, n);
        while (c.in.size() >= 4) {
            uint32_t mark = be32(reinterpret_cast<const uint8_t*>(c.in.data()));
            size_t len = mark & 0x7fffffff;
            if (len > 1024 * 1024) return false;
            if (c.in.size() < 4 + len) break;
            c.record.append(c.in, 4, len);
            c.in.erase(0, 4 + len);
            if (!(mark & 0x80000000)) continue;
            std::string rec = std::move(c.record);
            c.record.clear();
            if (!answer(c, rec)) return false;
        }
        return true;
    }

    bool answer(conn& c, const std::string& rec) {
        const auto* b = reinterpret_cast<const uint8_t*>(rec.data());
        if (rec.size() < 40 || be32(b + 4) != 0) return false;
        uint32_t prog = be32(b + 12), proc = be32(b + 20);
        size_t at = 32 + ((size_t{be32(b + 28)} + 3) & ~size_t{3});  // past the credential
        if (at + 8 > rec.size()) return false;
        at += 8 + ((size_t{be32(b + at + 4)} + 3) & ~size_t{3});  // past the verifier
        if (at > rec.size()) return false;
        std::string body;
        put32(body, be32(b));  // xid
        put32(body, 1);        // REPLY
        put32(body, 0);        // MSG_ACCEPTED
        put32(body, 0);        // AUTH_NONE verifier
        put32(body, 0);
        bool known = prog == k_prog && (proc == 0 || proc == 1);
        put32(body, known ? 0 : 3);  // SUCCESS or PROC_UNAVAIL
        if (known && proc == 1) body.append(rec, at, std::string::npos);
        std::string out;
        put32(out, 0x80000000u | uint32_t(body.size()));
        out += body;
        if (cut_.exchange(false)) {
            (void)::send(c.fd, out.data(), out.size() / 2, MSG_NOSIGNAL);
            return false;
        }
        return ::send(c.fd, out.data(), out.size(), MSG_NOSIGNAL) == ssize_t(out.size());
    }

    int lfd_ = -1;
    std::atomic<bool> reset_{false}, cut_{false};
};

template <class Pred>
bool wait_until(int ms, Pred p) {
    auto end = clk::now() + std::chrono::milliseconds(ms);
    while (!p()) {
        if (clk::now() >= end) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

// ---- the gateway, once per process -----------------------------------------

struct world {
    echo_backend backend;
    std::unique_ptr<gw::gateway> gateway;
    uint16_t port = 0, implicit_port = 0;
    SSL_CTX* client_ctx = nullptr;
    uint32_t next_xid = 1;
};

world& the_world() {
    static world* w = [] {
        signal(SIGPIPE, SIG_IGN);
        auto* w = new world;
        std::string err;
        if (!std::getenv("RPCGATE_FUZZ_LOG")) core::set_log_levels("off", &err);
        char dir[] = "/tmp/rpcgate-fuzz-certs.XXXXXX";
        RPCGATE_FUZZ_CHECK(mkdtemp(dir) != nullptr);
        std::string certs = dir;
        std::string cmd = "sh " MAKE_CERTS " " + certs + " >/dev/null 2>&1";
        RPCGATE_FUZZ_CHECK(std::system(cmd.c_str()) == 0);
        uint16_t bport = w->backend.start();

        gw::gateway_config cfg;
        gw::endpoint ep;
        RPCGATE_FUZZ_CHECK(gw::parse_endpoint("127.0.0.1:0", &ep, &err));
        cfg.listen.push_back(ep);
        cfg.implicit_tls.push_back(ep);
        gw::backend_route r;
        RPCGATE_FUZZ_CHECK(
            gw::parse_backend("536870913=127.0.0.1:" + std::to_string(bport), &r, &err));
        cfg.backends.push_back(r);
        cfg.shards = 1;
        cfg.reserved_port = false;
        cfg.tls = gw::tls_policy::opportunistic;
        cfg.tls_auto = true;
        cfg.cert = certs + "/server.pem";
        cfg.key = certs + "/server.key";
        cfg.handshake_timeout_ms = 300;
        cfg.connect_timeout_ms = 1000;
        cfg.max_record = k_max_record;
        cfg.max_inflight = 64 * 1024;
        cfg.buffers = 64;
        cfg.buffer_size = 4096;
        RPCGATE_FUZZ_CHECK(gw::validate(&cfg, &err));
        w->gateway = std::make_unique<gw::gateway>(cfg);
        std::string started = w->gateway->start();
        if (!started.empty()) std::fprintf(stderr, "gateway: %s\n", started.c_str());
        RPCGATE_FUZZ_CHECK(started.empty());
        w->port = w->gateway->port();
        w->implicit_port = w->gateway->implicit_port();
        // The shard opens its listeners on its own thread: wait for them.
        bool up = wait_until(5000, [&] {
            int fd = connect_to(w->port);
            if (fd >= 0) ::close(fd);
            return fd >= 0;
        });
        if (!up)
            std::fprintf(stderr, "gateway port %u does not accept: %s\n", w->port, strerror(errno));
        RPCGATE_FUZZ_CHECK(up);

        w->client_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(w->client_ctx, TLS1_3_VERSION);
        SSL_CTX_set_verify(w->client_ctx, SSL_VERIFY_NONE, nullptr);
        static const unsigned char alpn[] = {6, 's', 'u', 'n', 'r', 'p', 'c'};
        SSL_CTX_set_alpn_protos(w->client_ctx, alpn, sizeof alpn);
        return w;
    }();
    return *w;
}

// ---- one client connection -------------------------------------------------

struct client {
    int fd = -1;
    SSL* ssl = nullptr;
    bool dirty = false;  // sent something other than well-formed calls
    std::string in, record;
    std::set<uint32_t> sent;                  // every xid of ours sent here
    std::map<uint32_t, std::string> pending;  // clean calls: xid -> expected results

    bool open() const { return fd >= 0; }

    void drop(bool rst) {
        if (ssl) {
            SSL_free(ssl);
            ssl = nullptr;
        }
        if (fd >= 0) rst ? reset_close(fd) : (void)::close(fd);
        fd = -1;
        in.clear();
        record.clear();
        sent.clear();
        pending.clear();  // reported to the client: its connection is gone
        dirty = false;
    }

    bool write(const std::string& bytes) {
        if (!open()) return false;
        size_t at = 0;
        while (at < bytes.size()) {
            ssize_t n = ssl ? SSL_write(ssl, bytes.data() + at, int(bytes.size() - at))
                            : ::send(fd, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
            if (n <= 0) {
                // Closed by the gateway, or not read for 300 ms (flow control):
                // either way this connection is done. Reset, so that no later
                // write can follow a record cut here.
                if (ssl) ERR_clear_error();
                drop(true);
                return false;
            }
            at += size_t(n);
        }
        return true;
    }

    bool start_tls(world& w) {
        ssl = SSL_new(w.client_ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_tlsext_host_name(ssl, "localhost");
        if (SSL_connect(ssl) != 1) {
            ERR_clear_error();
            drop(true);
            return false;
        }
        return true;
    }

    // Reads what arrives within `ms` (0: only what is there) and checks it.
    // Returns false once the connection is closed.
    bool pump(int ms, uint32_t stop_at_xid = 0, bool* seen = nullptr) {
        auto end = clk::now() + std::chrono::milliseconds(ms);
        while (open()) {
            int left = int(
                std::chrono::duration_cast<std::chrono::milliseconds>(end - clk::now()).count());
            if (!(ssl && SSL_pending(ssl) > 0)) {
                pollfd p{fd, POLLIN, 0};
                if (::poll(&p, 1, std::max(left, 0)) <= 0) return true;
            }
            char buf[16384];
            int n = ssl ? SSL_read(ssl, buf, sizeof buf) : int(::recv(fd, buf, sizeof buf, 0));
            if (n <= 0) {
                if (ssl) ERR_clear_error();
                if (n < 0 && !ssl && (errno == EAGAIN || errno == EINTR)) continue;
                drop(false);
                return false;
            }
            in.append(buf, size_t(n));
            if (parse(stop_at_xid, seen)) return true;
            if (left <= 0 && !(ssl && SSL_pending(ssl) > 0)) return true;
        }
        return false;
    }

    // Takes complete records out of `in`; true once stop_at_xid was seen.
    bool parse(uint32_t stop_at_xid, bool* seen) {
        while (in.size() >= 4) {
            uint32_t mark = be32(reinterpret_cast<const uint8_t*>(in.data()));
            size_t len = mark & 0x7fffffff;
            RPCGATE_FUZZ_CHECK(len <= 2 * k_max_record);  // a reply of ours is never larger
            if (in.size() < 4 + len) return false;
            record.append(in, 4, len);
            in.erase(0, 4 + len);
            if (!(mark & 0x80000000)) continue;
            std::string rec = std::move(record);
            record.clear();
            core::slice_chain c(core::slice::copy_of(rec));
            auto r = rpc::decode_reply(c);
            if (!r)
                std::fprintf(stderr, "undecodable record of %zu bytes from the gateway\n",
                             rec.size());
            RPCGATE_FUZZ_CHECK(r.ok());
            uint32_t xid = r->header.xid;
            if ((xid & 0xff000000) == k_tag) {
                if (!sent.count(xid))
                    std::fprintf(stderr, "reply to xid %08x not sent here\n", xid);
                RPCGATE_FUZZ_CHECK(sent.count(xid));
            } else {
                RPCGATE_FUZZ_CHECK(dirty);
            }
            if (auto it = pending.find(xid); it != pending.end()) {
                bool success = r->header.stat == rpc::reply_stat::accepted &&
                               r->header.accept == rpc::accept_stat::success;
                if (success && r->results.to_string() != it->second) {
                    std::fprintf(stderr, "echo of xid %08x came back different\n", xid);
                    std::abort();
                }
                pending.erase(it);
            }
            if (stop_at_xid != 0 && xid == stop_at_xid) {
                if (seen) *seen = rpc::is_starttls_reply(r->header);
                return true;
            }
        }
        return false;
    }
};

// ---- the script ------------------------------------------------------------

class script {
  public:
    script(const uint8_t* d, size_t n) : d_(d), n_(n) {}
    bool more() const { return at_ < n_; }
    uint8_t u8() { return at_ < n_ ? d_[at_++] : 0; }
    std::string bytes(size_t n) {
        n = std::min(n, n_ - at_);
        std::string s(reinterpret_cast<const char*>(d_ + at_), n);
        at_ += n;
        for (char& c : s)
            if (uint8_t(c) == 0xA5) c = char(0xA4);  // keep 0xA5 for our xids
        return s;
    }

  private:
    const uint8_t* d_;
    size_t n_, at_ = 0;
};

std::string payload(size_t n, uint32_t seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = char((i * 7 + seed) % 0xA0);  // never 0xA5
    return s;
}

// A framed call of the echo program (or portmap), whose args are `args`.
std::string call_bytes(uint32_t xid, uint32_t prog, uint32_t vers, uint32_t proc,
                       const std::string& args, size_t max_fragment = rpc::record_max_fragment) {
    rpc::call_header h;
    h.xid = xid;
    h.prog = prog;
    h.vers = vers;
    h.proc = proc;
    return rpc::build_call(h, core::slice_chain(core::slice::copy_of(args)), max_fragment)
        .to_string();
}

std::string echo_args(size_t n, uint32_t seed) {
    std::string a;
    put32(a, uint32_t(n));
    a += payload(n, seed);
    a.append((4 - n % 4) % 4, '\0');
    return a;
}

void run_script(world& w, script& s) {
    client cl[3];
    int ops = 0;
    auto xid = [&] { return k_tag | (w.next_xid++ & 0xffffff); };
    while (s.more() && ops++ < 48) {
        uint8_t op = s.u8();
        client& c = cl[(op >> 5) % 3];
        switch (op & 31) {
            case 0:  // connect (plaintext port)
            case 1:
                c.drop(false);
                c.fd = connect_to(w.port);
                break;
            case 2:  // connect to the implicit-TLS listener and handshake
                c.drop(false);
                c.fd = connect_to(w.implicit_port);
                if (c.open()) c.start_tls(w);
                break;
            case 3:  // TLS from the first byte on the plaintext port (--tls-auto)
                c.drop(false);
                c.fd = connect_to(w.port);
                if (c.open()) c.start_tls(w);
                break;
            case 4:
            case 5:
            case 6: {  // a whole ECHO call; sizes up to ~76 KB (over the 48 KiB cap)
                if (!c.open()) break;
                uint8_t sz = s.u8();
                size_t n = (op & 31) == 6 ? size_t(sz) * 300 : sz;
                uint32_t x = xid();
                std::string args = echo_args(n, x);
                std::string rec = call_bytes(x, k_prog, 1, 1, args);
                c.sent.insert(x);
                if (rec.size() - 4 > k_max_record)
                    c.dirty = true;  // the gateway closes
                else if (!c.dirty)
                    c.pending[x] = args;
                c.write(rec);
                break;
            }
            case 7: {  // NULL call
                if (!c.open()) break;
                uint32_t x = xid();
                c.sent.insert(x);
                if (!c.dirty) c.pending[x] = "";
                c.write(call_bytes(x, k_prog, 1, 0, ""));
                break;
            }
            case 8: {  // an ECHO call in many fragments
                if (!c.open()) break;
                size_t n = s.u8() * 4;
                size_t frag = 4 + s.u8() % 64;
                uint32_t x = xid();
                std::string args = echo_args(n, x);
                c.sent.insert(x);
                if (!c.dirty) c.pending[x] = args;
                c.write(call_bytes(x, k_prog, 1, 1, args, frag));
                break;
            }
            case 9: {  // the first part of a call (the rest may never come)
                if (!c.open()) break;
                uint32_t x = xid();
                std::string rec = call_bytes(x, k_prog, 1, 1, echo_args(s.u8() * 8, x));
                c.sent.insert(x);
                c.dirty = true;
                c.write(rec.substr(0, 1 + s.u8() % (rec.size() - 1)));
                break;
            }
            case 10: {  // raw bytes
                if (!c.open()) break;
                c.dirty = true;
                c.write(s.bytes(1 + s.u8() * 2));
                break;
            }
            case 11: {  // AUTH_TLS probe; on STARTTLS, the handshake (or not)
                if (!c.open() || c.ssl) break;
                uint32_t x = xid();
                uint8_t how = s.u8();
                c.sent.insert(x);
                core::slice p = rpc::build_tls_probe_call(x, how & 1 ? rpc::pmap_prog : k_prog, 1);
                std::string probe(reinterpret_cast<const char*>(p.data()), p.size());
                if (!c.write(probe)) break;
                bool starttls = false;
                c.pump(500, x, &starttls);
                if (!starttls || !c.open()) break;
                c.pending
                    .clear();  // calls before the probe: answered before STARTTLS or lost with it
                if (how & 2) {
                    c.dirty = true;  // no handshake: the gateway cuts it at the deadline
                    if (how & 4) c.write(s.bytes(1 + (how >> 3)));
                    break;
                }
                c.start_tls(w);
                break;
            }
            case 12:  // AUTH_TLS where it is not allowed (procedure 1)
                if (!c.open()) break;
                {
                    uint32_t x = xid();
                    rpc::call_header h;
                    h.xid = x;
                    h.prog = k_prog;
                    h.vers = 1;
                    h.proc = 1;
                    h.cred.flavor = uint32_t(rpc::auth_flavor::tls);
                    c.sent.insert(x);
                    c.write(rpc::build_call(h, {}).to_string());
                }
                break;
            case 13: {  // portmap GETPORT
                if (!c.open()) break;
                uint32_t x = xid();
                c.sent.insert(x);
                rpc::pmap_mapping m{s.u8() & 1 ? k_prog : 100003, 1, rpc::pmap_ipproto_tcp, 0};
                c.write(rpc::build_getport_call(x, m).to_string());
                break;
            }
            case 14:  // TLS KeyUpdate (sent with the next write or now)
                if (!c.ssl) break;
                SSL_key_update(
                    c.ssl, s.u8() & 1 ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED);
                if (SSL_do_handshake(c.ssl) != 1) ERR_clear_error();
                break;
            case 15:  // close_notify, socket kept
                if (!c.ssl) break;
                c.dirty = true;
                if (SSL_shutdown(c.ssl) < 0) ERR_clear_error();
                break;
            case 16:  // raw bytes under TLS: a broken record
                if (!c.ssl) break;
                c.dirty = true;
                {
                    std::string b = s.bytes(1 + s.u8() % 64);
                    (void)::send(c.fd, b.data(), b.size(), MSG_NOSIGNAL);
                }
                break;
            case 17:  // half-close
                if (!c.open()) break;
                c.dirty = true;
                ::shutdown(c.fd, SHUT_WR);
                break;
            case 18:  // FIN
                c.drop(false);
                break;
            case 19:  // RST
                c.drop(true);
                break;
            case 20:  // the backend resets every connection
                w.backend.reset_all();
                for (auto& k : cl) k.dirty = true;  // calls in flight die with the gateway's close
                break;
            case 21:  // the backend's next reply is cut in half, then reset
                w.backend.cut_next_reply();
                for (auto& k : cl) k.dirty = true;
                break;
            case 22:
            case 23:  // read what is there
                c.pump(0);
                break;
            case 24:  // wait a little, reading
                c.pump(1 + s.u8() % 16);
                break;
            default:  // nothing: leaves room for the mutator
                break;
        }
    }

    // Nothing lost: every well-formed call is answered, or its connection is
    // closed (which is how a client learns of a failure).
    for (auto& c : cl) {
        if (c.dirty) continue;
        auto end = clk::now() + std::chrono::milliseconds(2000);
        while (c.open() && !c.pending.empty() && clk::now() < end) c.pump(50);
        if (c.open() && !c.pending.empty()) {
            std::fprintf(stderr,
                         "%zu call(s) neither answered nor closed within 2 s (first xid %08x)\n",
                         c.pending.size(), c.pending.begin()->first);
            std::abort();
        }
    }
    uint8_t how = s.u8();
    for (int i = 0; i < 3; ++i) cl[i].drop(how >> i & 1);

    // No session or handshake outlives its connection.
    bool idle = wait_until(3000, [&] {
        gw::gateway_totals t = w.gateway->totals();
        return t.sessions_open == 0 && t.handshakes_in_progress == 0;
    });
    if (!idle)
        std::fprintf(stderr, "gateway not idle 3 s after the script: %s\n",
                     w.gateway->totals().describe().c_str());
    RPCGATE_FUZZ_CHECK(idle);

    // Still alive.
    client probe;
    probe.fd = connect_to(w.port);
    if (!probe.open()) std::fprintf(stderr, "connect to the gateway: %s\n", strerror(errno));
    RPCGATE_FUZZ_CHECK(probe.open());
    uint32_t x = xid();
    probe.sent.insert(x);
    probe.pending[x] = "";
    probe.write(call_bytes(x, k_prog, 1, 0, ""));
    bool dummy = false;
    auto end = clk::now() + std::chrono::milliseconds(2000);
    while (probe.open() && probe.pending.count(x) && clk::now() < end) probe.pump(50, x, &dummy);
    if (probe.pending.count(x))
        std::fprintf(stderr, "a NULL call on a fresh connection got no answer\n");
    RPCGATE_FUZZ_CHECK(!probe.pending.count(x));
    probe.drop(false);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    world& w = the_world();
    script s(data, size);
    run_script(w, s);
    return 0;
}
