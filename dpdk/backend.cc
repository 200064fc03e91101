// The DPDK + lwIP io_backend (see backend.h for the design).
#include "dpdk/backend.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "core/log.h"
#include "dpdk/port.h"
#include "lwip/etharp.h"
#include "lwip/init.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/tcp.h"
#include "lwip/timeouts.h"
#include "netif/ethernet.h"

// lwIP's clock (NO_SYS): milliseconds, wrapping.
extern "C" u32_t sys_now(void) {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return u32_t(uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000);
}

// LWIP_CHKSUM (lwipopts.h): the 16-bit one's complement sum of the bytes as
// they lie in memory, not complemented, as lwIP's standard routine returns it.
// Summing 32-bit words and folding gives the same result (2^16 == 1 modulo
// 2^16 - 1); an odd last byte counts as the first byte of a 16-bit word.
extern "C" unsigned short rpcgate_lwip_chksum(const void* data, int len) {
    const auto* p = static_cast<const uint8_t*>(data);
    uint64_t sum = 0;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t v;
        std::memcpy(&v, p, 8);
        sum += (v & 0xffffffffu) + (v >> 32);
    }
    if (len >= 4) {
        uint32_t v;
        std::memcpy(&v, p, 4);
        sum += v;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t v;
        std::memcpy(&v, p, 2);
        sum += v;
        p += 2;
        len -= 2;
    }
    if (len == 1) {
        uint16_t v = 0;
        std::memcpy(&v, p, 1);
        sum += v;
    }
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<unsigned short>(sum);
}

namespace rpcgate::dpdk {
namespace {

using core::bump;
using core::slice;
using core::slice_chain;

uint64_t now_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// A received frame as an lwIP pbuf that stays in its mbuf (no copy); the
// struct lives in the mbuf's private area.
struct rx_pbuf {
    pbuf_custom pc;
    void* mbuf;
};

void free_rx_pbuf(pbuf* p) {
    auto* r = reinterpret_cast<rx_pbuf*>(p);
    port::release(r->mbuf);
}

int errno_of(err_t e) {
    switch (e) {
        case ERR_RST:
            return -ECONNRESET;
        case ERR_ABRT:
            return -ECONNABORTED;
        case ERR_CLSD:
            return -ECONNRESET;
        case ERR_TIMEOUT:
            return -ETIMEDOUT;
        default:
            return -EIO;
    }
}

class tcp_backend;

struct backend_stats {
    std::atomic<uint64_t> accepts{0}, relays_started{0}, handbacks{0}, relay_bytes_in{0},
        relay_bytes_out{0}, resets{0}, closes{0}, tx_full{0};
    // Where a pass's time goes, in nanoseconds (clock reads around each stage).
    std::atomic<uint64_t> ns_rx{0};      // rx burst + lwIP input + the gateway's handlers it ran
    std::atomic<uint64_t> ns_output{0};  // tcp_output of connections written this pass
    std::atomic<uint64_t> ns_tx{0};      // handing frames to the driver
    std::atomic<uint64_t> ns_timers{0};  // lwIP timers, relays, deferred closes
};

// One TCP connection of lwIP.
class conn final : public core::stream_transport {
  public:
    enum class mode : uint8_t { relay, direct, closing, dead };

    conn(tcp_backend& be, tcp_pcb* pcb, int a, int b) : be_(be), pcb_(pcb), a_(a), b_(b) {}
    ~conn() override {
        if (a_ >= 0) ::close(a_);
    }

    size_t transmit(const slice* parts, size_t n) override;
    void consumed(size_t n) override;
    void close(int err) override;
    void detached() override;

    // lwIP callbacks (arg = conn*).
    static err_t on_recv(void* arg, tcp_pcb* pcb, pbuf* p, err_t err);
    static err_t on_sent(void* arg, tcp_pcb* pcb, u16_t len);
    static void on_err(void* arg, err_t err);

    void relay_pump();       // relay mode: A <-> lwIP
    bool relay_out();        // lwIP's bytes -> A; false once A is gone
    void push_to_client();   // to_client_ -> lwIP
    void deliver_initial();  // direct mode after a hand-back
    void finish_close();     // deferred: tcp_close outside lwIP's callbacks
    void credit(size_t n);   // tcp_recved, in u16 steps

    tcp_backend& be_;
    tcp_pcb* pcb_;
    int a_;  // ours
    int b_;  // the placeholder: the gateway's fd for this connection
    mode mode_ = mode::relay;
    core::stream* stream_ = nullptr;  // direct mode
    size_t unconsumed_ = 0;           // delivered to the stream, window not yet reopened
    size_t skip_credit_ = 0;          // bytes of initial_ whose window was reopened by the relay
    slice_chain to_relay_;            // from lwIP, not yet written to A
    slice_chain to_client_;           // read from A, not yet taken by lwIP
    slice_chain initial_;             // direct mode: to deliver before anything newer
    bool fin_seen_ = false;           // the client sent FIN
    bool fin_told_ = false;           // ... and whoever serves it was told
    bool a_eof_ = false;              // A: the other side closed
    bool want_writable_ = false;
    bool dirty_ = false;  // on the list for tcp_output
    bool fresh_ = false;  // on the list for deliver_initial
    bool relay_listed_ = false;
};

class tcp_backend final : public core::io_backend {
  public:
    explicit tcp_backend(std::unique_ptr<port> p) : port_(std::move(p)) {}
    ~tcp_backend() override = default;

    const char* name() const noexcept override { return "dpdk"; }
    std::string attach(core::shard& s) override;
    void detach(core::shard& s) override;
    bool poll(core::shard& s) override;
    void flush(core::shard& s) override;
    int listen(core::shard& s, const sockaddr* addr, socklen_t len,
               core::listener_handler* h) override;
    void close_listeners(core::shard& s) override;
    core::stream* adopt(core::shard& s, int fd, core::stream_handler* h) override;

    // Received bytes, copied out of lwIP's pbufs into shared blocks.
    slice copy_in(pbuf* p);
    void mark_dirty(conn* c) {
        if (c->dirty_) return;
        c->dirty_ = true;
        dirty_.push_back(c);
    }
    void start_relay(conn* c) {
        c->mode_ = conn::mode::relay;
        relays_[c->b_] = c;
        if (!c->relay_listed_) {
            c->relay_listed_ = true;
            relay_list_.push_back(c);
        }
    }
    void stop_relay(conn* c) {
        auto it = relays_.find(c->b_);
        if (it != relays_.end() && it->second == c) relays_.erase(it);
    }
    void queue_close(conn* c) {
        stop_relay(c);
        c->mode_ = conn::mode::closing;
        closing_.push_back(c);
    }
    void process_closes();
    std::string stats_line() const;

    struct listener {
        tcp_backend* be = nullptr;
        core::listener_handler* h = nullptr;
        tcp_pcb* pcb = nullptr;
    };
    static err_t on_accept(void* arg, tcp_pcb* pcb, err_t err);
    static err_t linkoutput(netif* nif, pbuf* p);
    static err_t netif_setup(netif* nif);

    std::unique_ptr<port> port_;
    core::shard* shard_ = nullptr;
    netif netif_{};
    bool ip_set_ = false;
    std::vector<std::unique_ptr<listener>> listeners_;
    std::unordered_map<int, conn*> relays_;  // placeholder fd -> conn, while B is elsewhere
    std::vector<conn*> relay_list_;
    std::vector<conn*> dirty_;
    std::vector<conn*> fresh_;
    std::vector<conn*> closing_;
    std::vector<conn*> all_;  // every conn not yet freed (for detach)
    slice block_;
    size_t block_used_ = 0;
    static constexpr size_t k_block = 64 * 1024;
    backend_stats stats_;
    uint64_t last_timers_ms_ = 0;
    bool dead_pending_ = false;  // dead conns still on a list: sweep again
};

tcp_backend* g_backend = nullptr;  // lwIP is one stack per process: so is this

// ---------------------------------------------------------------- conn

size_t conn::transmit(const slice* parts, size_t n) {
    size_t offered = 0;
    for (size_t i = 0; i < n; ++i) offered += parts[i].size();
    if (!pcb_) return offered;  // the connection is gone (the stream was told): drop
    // What the other side wrote before a hand-back leaves first.
    if (!to_client_.empty()) {
        push_to_client();
        if (!to_client_.empty()) {
            want_writable_ = true;
            bump(be_.stats_.tx_full);
            return 0;
        }
    }
    size_t took = 0;
    for (size_t i = 0; i < n; ++i) {
        const uint8_t* p = parts[i].data();
        size_t left = parts[i].size();
        while (left > 0) {
            size_t room = tcp_sndbuf(pcb_);
            if (room == 0) goto full;
            size_t chunk = std::min<size_t>({left, room, 0xffff});
            bool more = chunk < left || i + 1 < n;
            if (tcp_write(pcb_, p, u16_t(chunk),
                          TCP_WRITE_FLAG_COPY | (more ? TCP_WRITE_FLAG_MORE : 0)) != ERR_OK)
                goto full;
            took += chunk;
            p += chunk;
            left -= chunk;
        }
    }
    if (took) be_.mark_dirty(this);
    return took;
full:
    if (took) be_.mark_dirty(this);
    want_writable_ = true;
    bump(be_.stats_.tx_full);
    return took;
}

void conn::credit(size_t n) {
    while (n > 0 && pcb_) {
        size_t k = std::min<size_t>(n, 0xffff);
        tcp_recved(pcb_, u16_t(k));
        n -= k;
    }
}

void conn::consumed(size_t n) {
    size_t skip = std::min(n, skip_credit_);
    skip_credit_ -= skip;
    n -= skip;
    n = std::min(n, unconsumed_);
    unconsumed_ -= n;
    credit(n);
}

void conn::close(int err) {
    stream_ = nullptr;
    if (mode_ == mode::closing || mode_ == mode::dead) return;
    // Whatever was received and not read is dropped: open the window so that
    // lwIP ends with a FIN, not the RST a close with unread data means.
    credit(unconsumed_);
    unconsumed_ = 0;
    initial_.clear();
    be_.queue_close(this);
    (void)err;
}

void conn::detached() {
    // B now belongs to someone else (the TLS control thread): relay.
    stream_ = nullptr;
    credit(unconsumed_);  // those bytes went along with the fd as `unread`
    unconsumed_ = 0;
    skip_credit_ = 0;
    // A FIN that arrived while the stream was detaching reached nobody: the
    // new owner hears it from the relay (shutdown of A) after the bytes.
    fin_told_ = false;
    bump(be_.stats_.relays_started);
    be_.start_relay(this);
}

err_t conn::on_recv(void* arg, tcp_pcb* pcb, pbuf* p, err_t err) {
    auto* c = static_cast<conn*>(arg);
    if (!c) {  // closed on our side: lwIP's default behaviour
        if (p) {
            tcp_recved(pcb, p->tot_len);
            pbuf_free(p);
        }
        return ERR_OK;
    }
    if (!p) {
        c->fin_seen_ = true;
        if (c->mode_ == mode::direct && c->initial_.empty() && c->stream_) {
            c->fin_told_ = true;
            c->stream_->transport_eof(0);
        } else if (c->mode_ == mode::relay) {
            c->relay_out();
        }
        return ERR_OK;
    }
    size_t len = p->tot_len;
    slice s = c->be_.copy_in(p);
    pbuf_free(p);
    c->be_.mark_dirty(c);  // its ACK leaves in flush(), one per pass (lwipopts.h)
    switch (c->mode_) {
        case mode::relay:
            c->to_relay_.push_back(std::move(s));
            c->relay_out();
            break;
        case mode::direct:
            c->unconsumed_ += len;
            if (!c->initial_.empty() || !c->stream_) {
                c->initial_.push_back(std::move(s));
            } else {
                c->stream_->transport_received(std::move(s));
            }
            break;
        case mode::closing:
        case mode::dead:
            tcp_recved(pcb, u16_t(std::min<size_t>(len, 0xffff)));
            break;
    }
    return ERR_OK;
}

err_t conn::on_sent(void* arg, tcp_pcb*, u16_t) {
    auto* c = static_cast<conn*>(arg);
    if (!c) return ERR_OK;
    if (c->mode_ == mode::relay) {
        c->relay_pump();
    } else if (c->mode_ == mode::direct && c->want_writable_) {
        if (!c->to_client_.empty()) c->push_to_client();
        if (c->to_client_.empty()) {
            c->want_writable_ = false;
            if (c->stream_) c->stream_->transport_writable();
        }
    }
    return ERR_OK;
}

void conn::on_err(void* arg, err_t err) {
    // lwIP has freed the pcb already.
    auto* c = static_cast<conn*>(arg);
    if (!c) return;
    c->pcb_ = nullptr;
    bump(c->be_.stats_.resets);
    switch (c->mode_) {
        case mode::direct:
            if (c->stream_) c->stream_->transport_eof(errno_of(err));  // the handler closes it
            break;
        case mode::relay:
            // The other side of B learns it from a reset-like EOF.
            ::shutdown(c->a_, SHUT_RDWR);
            c->be_.queue_close(c);
            break;
        case mode::closing:
        case mode::dead:
            break;
    }
}

void conn::push_to_client() {
    while (pcb_ && !to_client_.empty()) {
        const slice& s = to_client_.part(0);
        size_t room = tcp_sndbuf(pcb_);
        size_t chunk = std::min<size_t>({s.size(), room, 0xffff});
        if (chunk == 0 || tcp_write(pcb_, s.data(), u16_t(chunk), TCP_WRITE_FLAG_COPY) != ERR_OK)
            break;
        to_client_.trim_front(chunk);
        be_.mark_dirty(this);
    }
}

bool conn::relay_out() {
    while (!to_relay_.empty()) {
        const slice& s = to_relay_.part(0);
        ssize_t n = ::send(a_, s.data(), s.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
            to_relay_.clear();  // B is gone: what is left has nobody to read it
            a_eof_ = true;
            return false;
        }
        bump(be_.stats_.relay_bytes_out, size_t(n));
        credit(size_t(n));
        to_relay_.trim_front(size_t(n));
    }
    if (fin_seen_ && !fin_told_) {
        fin_told_ = true;
        ::shutdown(a_, SHUT_WR);
    }
    return true;
}

void conn::relay_pump() {
    if (mode_ != mode::relay) return;
    relay_out();
    push_to_client();
    uint8_t buf[16 * 1024];
    while (pcb_ && !a_eof_ && to_client_.empty()) {
        size_t room = std::min<size_t>(tcp_sndbuf(pcb_), sizeof buf);
        if (room == 0) break;
        ssize_t n = ::recv(a_, buf, room, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            a_eof_ = true;
            break;
        }
        if (n < 0) break;
        bump(be_.stats_.relay_bytes_in, size_t(n));
        to_client_.push_back(slice::copy_of(buf, size_t(n)));
        push_to_client();
    }
    // B was closed (a refused or failed connection): end the TCP connection
    // once what the other side wrote is on its way.
    if ((a_eof_ || !pcb_) && to_client_.empty()) be_.queue_close(this);
}

void conn::deliver_initial() {
    fresh_ = false;
    while (mode_ == mode::direct && stream_ && !initial_.empty()) {
        slice_chain one = initial_.split_front(initial_.part(0).size());
        stream_->transport_received(one.linearize());
    }
    if (mode_ == mode::direct && stream_ && initial_.empty() && fin_seen_ && !fin_told_) {
        fin_told_ = true;
        stream_->transport_eof(0);
    }
}

void conn::finish_close() {
    if (pcb_) {
        tcp_arg(pcb_, nullptr);
        tcp_recv(pcb_, nullptr);
        tcp_sent(pcb_, nullptr);
        tcp_err(pcb_, nullptr);
        // Bytes already written still go out, then FIN (lwIP keeps the pcb).
        if (tcp_close(pcb_) != ERR_OK) tcp_abort(pcb_);
        pcb_ = nullptr;
    }
    if (a_ >= 0) {
        ::close(a_);
        a_ = -1;
    }
    mode_ = mode::dead;
    bump(be_.stats_.closes);
}

// ---------------------------------------------------------------- backend

slice tcp_backend::copy_in(pbuf* p) {
    size_t len = p->tot_len;
    if (len > k_block / 4) {
        slice s = slice::allocate(len);
        pbuf_copy_partial(p, s.mutable_data(), u16_t(len), 0);
        return s;
    }
    if (block_.empty() || block_used_ + len > k_block) {
        block_ = slice::allocate(k_block);
        block_used_ = 0;
    }
    pbuf_copy_partial(p, block_.mutable_data() + block_used_, u16_t(len), 0);
    slice s = block_.share(block_used_, len);
    block_used_ += (len + 7) & ~size_t(7);
    return s;
}

err_t tcp_backend::linkoutput(netif* nif, pbuf* p) {
    auto* be = static_cast<tcp_backend*>(nif->state);
    void* h = nullptr;
    uint8_t* dst = be->port_->tx_begin(p->tot_len, &h);
    if (!dst) return ERR_MEM;
    pbuf_copy_partial(p, dst, p->tot_len, 0);
    be->port_->tx_commit(h);
    return ERR_OK;
}

err_t tcp_backend::netif_setup(netif* nif) {
    auto* be = static_cast<tcp_backend*>(nif->state);
    nif->name[0] = 'd';
    nif->name[1] = 'p';
    nif->hwaddr_len = ETH_HWADDR_LEN;
    std::memcpy(nif->hwaddr, be->port_->mac(), ETH_HWADDR_LEN);
    nif->mtu = be->port_->mtu();
    nif->flags =
        NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET | NETIF_FLAG_LINK_UP;
    nif->output = etharp_output;
    nif->linkoutput = &tcp_backend::linkoutput;
    return ERR_OK;
}

std::string tcp_backend::attach(core::shard& s) {
    if (g_backend) return "one DPDK shard per process (lwIP is one stack)";
    std::string err = port_->attach_thread();
    if (!err.empty()) return err;
    shard_ = &s;
    g_backend = this;
    lwip_init();
    ip4_addr_t any{}, mask{}, gw{};
    if (!netif_add(&netif_, &any, &mask, &gw, this, &tcp_backend::netif_setup, ethernet_input))
        return "lwIP netif_add failed";
    netif_set_default(&netif_);
    netif_set_up(&netif_);
    netif_set_link_up(&netif_);
    RPCGATE_LOG(core, info, "shard {}: dpdk backend on {} (lwIP {})", s.index(), port_->describe(),
                LWIP_VERSION_STRING);
    return {};
}

int tcp_backend::listen(core::shard& s, const sockaddr* addr, socklen_t len,
                        core::listener_handler* h) {
    if (addr->sa_family != AF_INET) {
        RPCGATE_LOG(core, error, "dpdk: only IPv4 listen addresses are served");
        return -EAFNOSUPPORT;
    }
    auto* sin = reinterpret_cast<const sockaddr_in*>(addr);
    if (sin->sin_addr.s_addr == htonl(INADDR_ANY)) {
        RPCGATE_LOG(core, error,
                    "dpdk: --listen needs the port's own IPv4 address (it becomes the address "
                    "of the DPDK port), not 0.0.0.0");
        return -EADDRNOTAVAIL;
    }
    ip4_addr_t ip;
    ip.addr = sin->sin_addr.s_addr;
    if (!ip_set_) {
        // Every peer is taken as on-link (netmask 0): ARP for whoever talks to us.
        ip4_addr_t mask{}, gw{};
        netif_set_addr(&netif_, &ip, &mask, &gw);
        ip_set_ = true;
    } else if (ip4_addr_get_u32(netif_ip4_addr(&netif_)) != ip.addr) {
        RPCGATE_LOG(core, error, "dpdk: one IPv4 address per port ({})",
                    ip4addr_ntoa(netif_ip4_addr(&netif_)));
        return -EADDRNOTAVAIL;
    }
    tcp_pcb* pcb = tcp_new_ip_type(IPADDR_TYPE_V4);
    if (!pcb) return -ENOMEM;
    ip_addr_t bind_ip;
    ip_addr_copy_from_ip4(bind_ip, ip);
    if (tcp_bind(pcb, &bind_ip, ntohs(sin->sin_port)) != ERR_OK) {
        tcp_abort(pcb);
        return -EADDRINUSE;
    }
    u16_t port_no = pcb->local_port;
    tcp_pcb* lpcb = tcp_listen_with_backlog(pcb, TCP_DEFAULT_LISTEN_BACKLOG);
    if (!lpcb) {
        tcp_abort(pcb);
        return -ENOMEM;
    }
    auto l = std::make_unique<listener>();
    l->be = this;
    l->h = h;
    l->pcb = lpcb;
    tcp_arg(lpcb, l.get());
    tcp_accept(lpcb, &tcp_backend::on_accept);
    listeners_.push_back(std::move(l));
    RPCGATE_LOG(core, info, "shard {}: dpdk listening on {}:{}", s.index(), ip4addr_ntoa(&ip),
                port_no);
    return port_no;
}

void tcp_backend::close_listeners(core::shard&) {
    for (auto& l : listeners_) {
        if (!l->pcb) continue;
        tcp_arg(l->pcb, nullptr);
        tcp_accept(l->pcb, nullptr);
        tcp_close(l->pcb);
        l->pcb = nullptr;
    }
}

err_t tcp_backend::on_accept(void* arg, tcp_pcb* pcb, err_t err) {
    auto* l = static_cast<listener*>(arg);
    if (!l || err != ERR_OK || !pcb) return ERR_VAL;
    tcp_backend* be = l->be;
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        RPCGATE_LOG(core, warn, "dpdk: socketpair: {}: refusing a connection",
                    std::strerror(errno));
        tcp_abort(pcb);
        return ERR_ABRT;
    }
    auto* c = new conn(*be, pcb, sv[0], sv[1]);
    be->all_.push_back(c);
    bump(be->stats_.accepts);
    tcp_arg(pcb, c);
    tcp_recv(pcb, &conn::on_recv);
    tcp_sent(pcb, &conn::on_sent);
    tcp_err(pcb, &conn::on_err);
    tcp_nagle_disable(pcb);
    // Until the handler adopts B (at once, for a plaintext client), or while it
    // hands B elsewhere (implicit TLS), the connection is relayed through A.
    be->start_relay(c);
    sockaddr_storage peer{};
    auto* sin = reinterpret_cast<sockaddr_in*>(&peer);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(pcb->remote_port);
    sin->sin_addr.s_addr = ip4_addr_get_u32(ip_2_ip4(&pcb->remote_ip));
    l->h->on_accept(*be->shard_, c->b_, peer);
    return ERR_OK;
}

core::stream* tcp_backend::adopt(core::shard& s, int fd, core::stream_handler* h) {
    auto it = relays_.find(fd);
    if (it == relays_.end()) return nullptr;
    conn* c = it->second;
    relays_.erase(it);
    bump(stats_.handbacks);
    uint8_t buf[16 * 1024];
    // 1. What the other side wrote to B and the relay did not read: it goes to
    //    the client before anything the new stream sends (a handshake's last flight).
    for (int i = 0; i < 4096; ++i) {
        ssize_t n = ::recv(c->a_, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        c->to_client_.push_back(slice::copy_of(buf, size_t(n)));
    }
    c->push_to_client();
    // 2. What the relay wrote to A and nobody read from B: the client's bytes,
    //    delivered first; then what lwIP gave the relay that never reached A.
    for (int i = 0; i < 4096; ++i) {
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        c->initial_.push_back(slice::copy_of(buf, size_t(n)));
    }
    c->skip_credit_ = c->initial_.size();  // their window reopened when the relay wrote them
    c->unconsumed_ = c->to_relay_.size();
    c->initial_.append(std::move(c->to_relay_));
    c->to_relay_.clear();
    c->a_eof_ = false;
    c->fin_told_ = false;  // the FIN, if any, is now the stream's to hear
    c->mode_ = conn::mode::direct;
    c->stream_ = s.adopt_virtual(fd, c, h);
    if (!c->to_client_.empty()) c->want_writable_ = true;
    if ((!c->initial_.empty() || c->fin_seen_ || !c->pcb_) && !c->fresh_) {
        c->fresh_ = true;
        fresh_.push_back(c);
    }
    return c->stream_;
}

bool tcp_backend::poll(core::shard&) {
    uint64_t t0 = now_ns();
    rx_frame frames[32];
    unsigned n = port_->rx(frames, 32);
    for (unsigned i = 0; i < n; ++i) {
        auto* r = static_cast<rx_pbuf*>(port::priv(frames[i].handle));
        r->mbuf = frames[i].handle;
        r->pc.custom_free_function = &free_rx_pbuf;
        pbuf* p = pbuf_alloced_custom(PBUF_RAW, frames[i].len, PBUF_REF, &r->pc, frames[i].data,
                                      frames[i].len);
        if (!p || netif_.input(p, &netif_) != ERR_OK) {
            if (p)
                pbuf_free(p);
            else
                port::release(frames[i].handle);
        }
    }
    uint64_t t1 = now_ns();
    bool work = n > 0;
    // A connection whose pcb died while it was on no stream (a reset during a
    // hand-off) has no other way to be noticed.
    if (!fresh_.empty()) {
        std::vector<conn*> list;
        list.swap(fresh_);
        for (conn* c : list) {
            c->fresh_ = false;
            if (c->mode_ != conn::mode::direct) continue;
            c->deliver_initial();
            if (!c->pcb_ && c->stream_ && c->initial_.empty())
                c->stream_->transport_eof(-ECONNRESET);
        }
        work = true;
    }
    if (!relay_list_.empty()) {
        size_t keep = 0;
        for (conn* c : relay_list_) {
            if (c->mode_ == conn::mode::relay) {
                c->relay_pump();
            }
            if (c->mode_ == conn::mode::relay)
                relay_list_[keep++] = c;
            else
                c->relay_listed_ = false;
        }
        relay_list_.resize(keep);
        work = true;
    }
    uint64_t ms = sys_now();
    if (ms != last_timers_ms_) {
        last_timers_ms_ = ms;
        sys_check_timeouts();
    }
    process_closes();
    bump(stats_.ns_rx, t1 - t0);
    bump(stats_.ns_timers, now_ns() - t1);
    return work;
}

void tcp_backend::flush(core::shard&) {
    uint64_t t0 = now_ns();
    for (conn* c : dirty_) {
        c->dirty_ = false;
        if (!c->pcb_) continue;
        // Data received this pass is ACKed now, once (tcp_ack no longer
        // forces an ACK every second segment; see dpdk/CMakeLists.txt).
        if (c->pcb_->flags & TF_ACK_DELAY) tcp_set_flags(c->pcb_, TF_ACK_NOW);
        tcp_output(c->pcb_);
    }
    dirty_.clear();
    process_closes();
    uint64_t t1 = now_ns();
    if (port_->tx_pending()) port_->tx_flush();
    bump(stats_.ns_output, t1 - t0);
    bump(stats_.ns_tx, now_ns() - t1);
}

void tcp_backend::process_closes() {
    if (!closing_.empty()) {
        std::vector<conn*> list;
        list.swap(closing_);
        for (conn* c : list)
            if (c->mode_ == conn::mode::closing) c->finish_close();
        dead_pending_ = true;
    }
    if (!dead_pending_) return;
    // Free the dead ones that are on no list any more; the others next time.
    dead_pending_ = false;
    size_t keep = 0;
    for (conn* c : all_) {
        if (c->mode_ != conn::mode::dead) {
            all_[keep++] = c;
        } else if (c->dirty_ || c->fresh_ || c->relay_listed_) {
            all_[keep++] = c;
            dead_pending_ = true;
        } else {
            delete c;
        }
    }
    all_.resize(keep);
}

void tcp_backend::detach(core::shard& s) {
    close_listeners(s);
    for (conn* c : all_) {
        c->stream_ = nullptr;
        if (c->pcb_) {
            tcp_arg(c->pcb_, nullptr);
            tcp_recv(c->pcb_, nullptr);
            tcp_sent(c->pcb_, nullptr);
            tcp_err(c->pcb_, nullptr);
            tcp_abort(c->pcb_);  // the gateway is exiting: RST what is left
            c->pcb_ = nullptr;
        }
        delete c;
    }
    all_.clear();
    relays_.clear();
    relay_list_.clear();
    dirty_.clear();
    fresh_.clear();
    closing_.clear();
    port_->tx_flush();
    RPCGATE_LOG(core, info, "shard {}: dpdk: {}", s.index(), stats_line());
    netif_remove(&netif_);
    block_ = slice();
    g_backend = nullptr;
}

std::string tcp_backend::stats_line() const {
    const port_stats& p = port_->stats();
    auto rd = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    uint64_t total =
        rd(stats_.ns_rx) + rd(stats_.ns_output) + rd(stats_.ns_tx) + rd(stats_.ns_timers);
    auto pct = [&](const std::atomic<uint64_t>& a) {
        return total ? 100.0 * double(rd(a)) / double(total) : 0.0;
    };
    return fmt::format(
        "rx {} frames ({} bytes, {} bursts, {} empty polls), tx {} frames ({} bytes, {} bursts, "
        "{} deferred, {} dropped); accepts {}, relays {}, hand-backs {}, relayed {}/{} bytes "
        "in/out, resets {}, closes {}, send buffer full {}; backend time: rx+input+handlers "
        "{:.1f} ms ({:.0f}%), tcp_output {:.1f} ms ({:.0f}%), driver tx {:.1f} ms ({:.0f}%), "
        "timers/relays {:.1f} ms ({:.0f}%); {}",
        rd(p.rx_packets), rd(p.rx_bytes), rd(p.rx_bursts), rd(p.rx_empty), rd(p.tx_packets),
        rd(p.tx_bytes), rd(p.tx_bursts), rd(p.tx_deferred), rd(p.tx_dropped), rd(stats_.accepts),
        rd(stats_.relays_started), rd(stats_.handbacks), rd(stats_.relay_bytes_in),
        rd(stats_.relay_bytes_out), rd(stats_.resets), rd(stats_.closes), rd(stats_.tx_full),
        double(rd(stats_.ns_rx)) / 1e6, pct(stats_.ns_rx), double(rd(stats_.ns_output)) / 1e6,
        pct(stats_.ns_output), double(rd(stats_.ns_tx)) / 1e6, pct(stats_.ns_tx),
        double(rd(stats_.ns_timers)) / 1e6, pct(stats_.ns_timers), port_->driver_stats());
}

}  // namespace

bool available() noexcept {
    return true;
}

std::unique_ptr<core::io_backend> make_backend(const backend_options& o, std::string* err) {
    auto p = port::open(o.eal_args, uint16_t(sizeof(rx_pbuf)), err);
    if (!p) return nullptr;
    return std::make_unique<tcp_backend>(std::move(p));
}

std::string describe_stats(const core::io_backend& b) {
    auto* t = dynamic_cast<const tcp_backend*>(&b);
    return t ? t->stats_line() : std::string();
}

}  // namespace rpcgate::dpdk
