#include "gateway/upgrade.h"

#include <openssl/crypto.h>

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iterator>

#include "core/log.h"
#include "gateway/config.h"
#include "gateway/gateway.h"
#include "gateway/metrics.h"

namespace rpcgate::gw {

namespace uw = upgrade_wire;

uint64_t monotonic_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

namespace {

uint64_t monotonic_ms() noexcept {
    return monotonic_ns() / 1000000u;
}

// Waits until `sock` is readable or `deadline_ms` passes; false on timeout.
bool wait_readable(int sock, uint64_t deadline_ms) {
    for (;;) {
        uint64_t now = monotonic_ms();
        if (now >= deadline_ms) return false;
        pollfd p{sock, POLLIN, 0};
        int rc = ::poll(&p, 1, int(std::min<uint64_t>(deadline_ms - now, 200)));
        if (rc > 0) return true;
        if (rc < 0 && errno != EINTR) return true;  // let recv report it
    }
}

std::string exit_text(int status) {
    if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return fmt::format("was killed by signal {}", WTERMSIG(status));
    return "ended";
}

}  // namespace

// ---------------------------------------------------------------- pieces

moved_conn::~moved_conn() {
    for (int fd : fds)
        if (fd >= 0) ::close(fd);
}

void move_sink::put(std::unique_ptr<moved_conn> c) {
    std::lock_guard g(m_);
    q_.push_back(std::move(c));
    cv_.notify_one();
}

void move_sink::shard_done() {
    std::lock_guard g(m_);
    if (shards_left_ > 0) --shards_left_;
    cv_.notify_one();
}

std::unique_ptr<moved_conn> move_sink::next(uint64_t deadline_ms, bool* timed_out) {
    std::unique_lock g(m_);
    *timed_out = false;
    for (;;) {
        if (!q_.empty()) {
            auto c = std::move(q_.front());
            q_.pop_front();
            return c;
        }
        if (shards_left_ == 0) return nullptr;
        uint64_t now = monotonic_ms();
        if (now >= deadline_ms) {
            *timed_out = true;
            return nullptr;
        }
        cv_.wait_for(g, std::chrono::milliseconds(std::min<uint64_t>(deadline_ms - now, 100)));
    }
}

uw::upgrade_totals upgrade_counters::totals() const {
    uw::upgrade_totals t;
#define RPCGATE_X(f) t.f = f.load();
    RPCGATE_UPGRADE_TOTALS(RPCGATE_X)
#undef RPCGATE_X
    return t;
}

void upgrade_counters::set(const uw::upgrade_totals& t) {
#define RPCGATE_X(f) f.store(t.f);
    RPCGATE_UPGRADE_TOTALS(RPCGATE_X)
#undef RPCGATE_X
}

void upgrade_counters::note_pause(uint64_t ns) noexcept {
    // Adoptions run on every shard: atomic read-modify-writes (once per
    // moved connection, not per record).
    pause.buckets[latency_histogram::bucket_of(ns)].fetch_add(1, std::memory_order_relaxed);
    pause.sum_ns.fetch_add(ns, std::memory_order_relaxed);
    uint64_t cur = pause_max_ns.load(std::memory_order_relaxed);
    while (ns > cur && !pause_max_ns.compare_exchange_weak(cur, ns, std::memory_order_relaxed)) {
    }
}

void upgrade_counters::render(std::string& out) const {
    auto bi = std::back_inserter(out);
    // Two labelled families, three series each.
    struct family {
        const char *name, *label, *help;
        const std::atomic<uint64_t>* v[3];
        const char* values[3];
    };
    const family families[] = {
        {"rpcgate_upgrades_total",
         "result",
         "In-place upgrades (SIGUSR2, POST /upgrade), by outcome; carried over from the process "
         "this one took over from.",
         {&started, &completed, &failed},
         {"started", "completed", "failed"}},
        {"rpcgate_upgrade_connections_total",
         "fate",
         "Client connections at upgrades: moved to the new process, drained (ended cleanly in "
         "the old one), closed (cut at a deadline or lost).",
         {&moved, &drained, &closed},
         {"moved", "drained", "closed"}},
    };
    for (const family& f : families) {
        fmt::format_to(bi, "# HELP {} {}\n# TYPE {} counter\n", f.name, f.help, f.name);
        for (int i = 0; i < 3; ++i)
            fmt::format_to(bi, "{}{{{}=\"{}\"}} {}\n", f.name, f.label, f.values[i],
                           f.v[i]->load());
    }
    out +=
        "# HELP rpcgate_upgrade_pause_seconds Per moved connection: from its detach in the old "
        "process to its adoption in this one.\n# TYPE rpcgate_upgrade_pause_seconds histogram\n";
    uint64_t cum = 0;
    for (size_t i = 0; i < k_latency_buckets; ++i) {
        cum += pause.buckets[i].load(std::memory_order_relaxed);
        fmt::format_to(bi, "rpcgate_upgrade_pause_seconds_bucket{{le=\"{}\"}} {}\n",
                       latency_histogram::bound_seconds(i), cum);
    }
    cum += pause.buckets[k_latency_buckets].load(std::memory_order_relaxed);
    fmt::format_to(bi,
                   "rpcgate_upgrade_pause_seconds_bucket{{le=\"+Inf\"}} {}\n"
                   "rpcgate_upgrade_pause_seconds_sum {:.6f}\n"
                   "rpcgate_upgrade_pause_seconds_count {}\n",
                   cum, double(pause.sum_ns.load()) / 1e9, cum);
    out +=
        "# HELP rpcgate_upgrade_pause_max_seconds The longest pause a moved connection saw.\n"
        "# TYPE rpcgate_upgrade_pause_max_seconds gauge\n";
    fmt::format_to(bi, "rpcgate_upgrade_pause_max_seconds {:.6f}\n",
                   double(pause_max_ns.load()) / 1e9);
}

std::vector<std::string> upgrade_argv(const std::vector<std::string>& argv, int fd) {
    std::vector<std::string> out;
    for (size_t i = 0; i < argv.size(); ++i) {
        if (argv[i] == "--upgrade-fd") {
            ++i;  // and its value
            continue;
        }
        if (argv[i].rfind("--upgrade-fd=", 0) == 0) continue;
        out.push_back(argv[i]);
    }
    out.push_back("--upgrade-fd");
    out.push_back(std::to_string(fd));
    return out;
}

// ---------------------------------------------------------------- old side

upgrade_parent::upgrade_parent(gateway& gw, const gateway_config& cfg, std::string exe,
                               std::vector<std::string> argv)
    : gw_(gw), cfg_(cfg), exe_(std::move(exe)), argv_(std::move(argv)) {}

upgrade_parent::~upgrade_parent() {
    if (sock_ >= 0) ::close(sock_);
}

bool upgrade_parent::spawn(std::string* why) {
    int sp[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) {
        *why = fmt::format("socketpair: {}", std::strerror(errno));
        return false;
    }
    std::string binary = cfg_.upgrade_binary.empty() ? exe_ : cfg_.upgrade_binary;
    std::vector<std::string> args = upgrade_argv(argv_, sp[1]);
    // Everything the child needs is made before fork: after it, only
    // async-signal-safe calls until exec.
    std::vector<char*> cargv;
    for (auto& a : args) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) {
        *why = fmt::format("fork: {}", std::strerror(errno));
        ::close(sp[0]);
        ::close(sp[1]);
        return false;
    }
    if (pid == 0) {
        // The child's end survives exec; nothing else of ours does (CLOEXEC).
        ::fcntl(sp[1], F_SETFD, 0);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::execv(binary.c_str(), cargv.data());
        ::_exit(127);
    }
    ::close(sp[1]);
    sock_ = sp[0];
    // A new process that stops reading must not hang this one in sendmsg.
    timeval tv{time_t(cfg_.upgrade_timeout_ms / 1000),
               suseconds_t(cfg_.upgrade_timeout_ms % 1000 * 1000)};
    ::setsockopt(sock_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    child_ = pid;
    RPCGATE_LOG(gw, info, "upgrade: started {} as pid {}", binary, pid);
    return true;
}

bool upgrade_parent::fail(const std::string& why) {
    gw_.upgrade_stats().failed.fetch_add(1);
    if (child_ > 0) {
        int status = 0;
        pid_t r = ::waitpid(child_, &status, WNOHANG);
        if (r == 0) {
            ::kill(child_, SIGKILL);
            ::waitpid(child_, &status, 0);
        }
    }
    child_ = -1;
    if (sock_ >= 0) ::close(sock_);
    sock_ = -1;
    RPCGATE_LOG(gw, error, "upgrade failed: {}; this process goes on serving, nothing moved", why);
    return false;
}

bool upgrade_parent::await(uw::msg_type want, std::string* msg, int ms, std::string* why) {
    uint64_t deadline = monotonic_ms() + uint64_t(ms);
    if (!wait_readable(sock_, deadline)) {
        *why = fmt::format("the new process did not answer within {} ms (--upgrade-timeout)", ms);
        return false;
    }
    std::vector<int> fds;
    std::string e = uw::recv_message(sock_, msg, &fds);
    for (int fd : fds) ::close(fd);  // the new process sends none
    if (!e.empty()) {
        int status = 0;
        pid_t r = 0;
        // It closed its end: it is exiting; give it a moment to be reaped.
        for (int i = 0; i < 50 && r == 0; ++i) {
            r = ::waitpid(child_, &status, WNOHANG);
            if (r == 0) ::usleep(20000);
        }
        if (r == child_) {
            child_ = -1;
            *why = fmt::format("the new process {} before it was ready", exit_text(status));
        } else {
            *why = fmt::format("the hand-off socket: {}", e);
        }
        return false;
    }
    uw::header h;
    if (!uw::parse_header(*msg, &h, &e, want == uw::msg_type::hello)) {
        *why = "the new process sent a bad message: " + e;
        return false;
    }
    if (h.type == uw::msg_type::refuse) {
        std::string reason;
        uw::decode_reason(*msg, &reason, &e);
        *why = "the new process refused: " + reason;
        return false;
    }
    if (h.type != want) {
        *why = fmt::format("the new process sent message type {} out of turn", int(h.type));
        return false;
    }
    return true;
}

bool upgrade_parent::run() {
    t0_ns_ = monotonic_ns();
    upgrade_counters& st = gw_.upgrade_stats();
    st.started.fetch_add(1);
    std::string why, msg, e;
    if (!spawn(&why)) return fail(why);
    int timeout = int(cfg_.upgrade_timeout_ms);
    if (!await(uw::msg_type::hello, &msg, timeout, &why)) return fail(why);
    uw::header h;
    uw::parse_header(msg, &h, &e, true);
    if (h.version != uw::k_wire_version) {
        std::string refusal =
            fmt::format("the new binary speaks hand-off format version {}, this one {}", h.version,
                        uw::k_wire_version);
        uw::send_message(sock_, uw::encode_reason(uw::msg_type::refuse, refusal));
        return fail(refusal);
    }
    uw::hello_msg hello;
    if (!uw::decode_hello(msg, &hello, &e)) return fail("the new process's hello: " + e);
    RPCGATE_LOG(gw, info, "upgrade: pid {} (rpcgate {}) says hello, hand-off format {}", hello.pid,
                hello.software, h.version);

    uw::offer_msg offer;
    offer.totals = st.totals();
    std::vector<int> fds;
    if (!gw_.handoff_listeners(&offer.groups, &fds))
        return fail("a shard did not list its listeners in time");
    e = uw::send_message(sock_, uw::encode_offer(offer), fds.data(), fds.size());
    if (!e.empty()) return fail("sending the listening sockets: " + e);
    if (!await(uw::msg_type::ready, &msg, timeout, &why)) return fail(why);

    // Committed: the new process accepts on the same sockets; we stop.
    uint64_t ready_ns = monotonic_ns();
    RPCGATE_LOG(gw, info,
                "upgrade: pid {} accepts on the {} listening socket(s) ({:.1f} ms after the "
                "start); moving connections",
                child_, fds.size(), double(ready_ns - t0_ns_) / 1e6);
    move_connections(&why);
    st.completed.fetch_add(1);
    uw::totals_msg end{st.totals()};
    end.totals.moved += moved_;
    e = uw::send_message(sock_, uw::encode_totals(uw::msg_type::end, end));
    if (!e.empty()) RPCGATE_LOG(gw, error, "upgrade: telling the new process the end: {}", e);
    RPCGATE_LOG(gw, info,
                "upgrade: handed over to pid {} in {:.1f} ms: {} connection(s) moved "
                "({:.1f} KiB unread bytes carried), {} lost{}; the rest drains here",
                child_, double(monotonic_ns() - t0_ns_) / 1e6, moved_,
                double(bytes_carried_) / 1024.0, lost_, why.empty() ? "" : " (" + why + ")");
    return true;
}

bool upgrade_parent::move_connections(std::string* why) {
    auto sink = std::make_shared<move_sink>(gw_.shard_count());
    gw_.begin_move(sink, cfg_.upgrade_drain_timeout_ms);
    // The shards give up at their deadline; this one only guards against
    // a shard that never answers.
    uint64_t deadline = monotonic_ms() + cfg_.upgrade_drain_timeout_ms + 5000;
    bool ok = true;
    for (;;) {
        bool timed_out = false;
        std::unique_ptr<moved_conn> c = sink->next(deadline, &timed_out);
        if (!c) {
            if (timed_out) *why = "a shard did not finish its moves in time";
            break;
        }
        if (ok) {
            std::string enc = uw::encode_conn(c->meta);
            std::string e = uw::send_message(sock_, enc, c->fds.data(), c->fds.size());
            if (c->meta.has_tls) {
                // Traffic secrets: wiped from this process's memory once sent.
                OPENSSL_cleanse(enc.data(), enc.size());
                c->meta.tls.wipe();
            }
            for (size_t off = 0; e.empty() && off < c->unread.size(); off += uw::k_max_chunk) {
                std::string_view chunk = std::string_view(c->unread).substr(off, uw::k_max_chunk);
                e = uw::send_message(sock_, uw::encode_bytes(chunk));
            }
            if (e.empty()) {
                ++moved_;
                bytes_carried_ += c->unread.size();
                continue;  // our copies of its fds close with `c`
            }
            ok = false;
            *why = "the hand-off socket failed: " + e;
        }
        // The new process is gone: this connection cannot go anywhere.
        ++lost_;
    }
    return ok;
}

void upgrade_parent::finish(uint64_t drained, uint64_t closed) {
    uw::totals_msg fin;
    fin.totals.drained = drained;
    fin.totals.closed = closed + lost_;
    if (sock_ >= 0) uw::send_message(sock_, uw::encode_totals(uw::msg_type::final, fin));
    RPCGATE_LOG(gw, info,
                "upgrade complete: pid {} serves now; moved {}, drained {}, closed {} "
                "connection(s); {:.1f} ms from the start to this exit",
                child_, moved_, drained, closed + lost_, double(monotonic_ns() - t0_ns_) / 1e6);
}

// ---------------------------------------------------------------- new side

upgrade_child::upgrade_child(int fd) : sock_(fd) {}

upgrade_child::~upgrade_child() {
    stop();
    if (sock_ >= 0) ::close(sock_);
}

std::string upgrade_child::greet(inherited_listeners* out, uw::upgrade_totals* totals) {
    // The hand-off fd was inherited without CLOEXEC: not for our children.
    ::fcntl(sock_, F_SETFD, FD_CLOEXEC);
    uint16_t version = uw::k_wire_version;
    // Test seam (tests/gateway/upgrade_test.py): announce another format
    // version, as a binary that cannot read this one's state would.
    if (const char* v = std::getenv("RPCGATE_UPGRADE_WIRE_VERSION"); v && *v)
        version = uint16_t(std::strtoul(v, nullptr, 10));
    std::string e =
        uw::send_message(sock_, uw::encode_hello({uint32_t(::getpid()), RPCGATE_VERSION}, version));
    if (!e.empty()) return "--upgrade-fd: sending hello: " + e;
    // The old process answers at once; a generous bound in case it hangs.
    if (!wait_readable(sock_, monotonic_ms() + 600000))
        return "--upgrade-fd: the running rpcgate did not answer";
    std::string msg;
    std::vector<int> fds;
    e = uw::recv_message(sock_, &msg, &fds);
    if (!e.empty()) return "--upgrade-fd: " + e;
    uw::header h;
    if (!uw::parse_header(msg, &h, &e)) {
        for (int fd : fds) ::close(fd);
        return "--upgrade-fd: " + e;
    }
    if (h.type == uw::msg_type::refuse) {
        std::string why;
        uw::decode_reason(msg, &why, &e);
        return "the running rpcgate refused the hand-off: " + why;
    }
    uw::offer_msg offer;
    size_t want = 0;
    bool ok = uw::decode_offer(msg, &offer, &e);
    for (const auto& g : offer.groups) want += g.count;
    if (!ok || want != fds.size()) {
        for (int fd : fds) ::close(fd);
        return "--upgrade-fd: bad offer: " +
               (ok ? fmt::format("{} sockets announced, {} received", want, fds.size()) : e);
    }
    size_t k = 0;
    for (const auto& g : offer.groups) {
        std::vector<int> group(fds.begin() + long(k), fds.begin() + long(k + g.count));
        k += g.count;
        if (g.kind == 2) {
            if (!group.empty()) out->admin = group.front();
            for (size_t i = 1; i < group.size(); ++i) ::close(group[i]);
            continue;
        }
        auto& v = g.kind == 0 ? out->listen : out->implicit;
        if (v.size() <= g.index) v.resize(g.index + 1);
        v[g.index] = std::move(group);
    }
    *totals = offer.totals;
    return {};
}

void upgrade_child::refuse(const std::string& why) {
    uw::send_message(sock_, uw::encode_reason(uw::msg_type::refuse, why));
}

std::string upgrade_child::ready(gateway& gw) {
    std::string e = uw::send_message(sock_, uw::encode_reason(uw::msg_type::ready, ""));
    if (!e.empty()) return "--upgrade-fd: sending ready: " + e;
    thread_ = std::thread([this, &gw] { receive(&gw); });
    return {};
}

void upgrade_child::receive(gateway* gw) {
    upgrade_counters& st = gw->upgrade_stats();
    std::unique_ptr<moved_conn> pending;  // waiting for its unread bytes
    uint64_t adopted = 0;
    auto hand = [&] {
        if (!gw->adopt_moved(std::move(pending))) st.closed.fetch_add(1);
        ++adopted;
    };
    while (!stop_.load()) {
        pollfd p{sock_, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0) continue;
        std::string msg, e;
        std::vector<int> fds;
        e = uw::recv_message(sock_, &msg, &fds);
        if (!e.empty()) {
            if (e != "closed") RPCGATE_LOG(gw, warn, "upgrade: hand-off socket: {}", e);
            break;
        }
        uw::header h;
        if (!uw::parse_header(msg, &h, &e)) {
            for (int fd : fds) ::close(fd);
            RPCGATE_LOG(gw, error, "upgrade: {}: no more connections taken", e);
            break;
        }
        if (h.type == uw::msg_type::conn) {
            auto c = std::make_unique<moved_conn>();
            c->fds = std::move(fds);
            bool decoded = uw::decode_conn(msg, &c->meta, &e);
            OPENSSL_cleanse(msg.data(), msg.size());  // TLS traffic secrets, maybe
            if (!decoded || c->fds.size() != c->meta.fd_count()) {
                RPCGATE_LOG(gw, error, "upgrade: a connection could not be read ({}): closed",
                            e.empty() ? "descriptor count" : e);
                st.closed.fetch_add(1);
                continue;
            }
            pending = std::move(c);
            if (pending->meta.unread_total() == 0) hand();
            continue;
        }
        for (int fd : fds) ::close(fd);
        if (h.type == uw::msg_type::conn_bytes && pending) {
            std::string_view chunk;
            if (!uw::decode_bytes(msg, &chunk, &e) ||
                pending->unread.size() + chunk.size() > pending->meta.unread_total()) {
                RPCGATE_LOG(gw, error, "upgrade: conn {}: bad unread bytes: closed",
                            pending->meta.id);
                pending.reset();
                st.closed.fetch_add(1);
                continue;
            }
            pending->unread.append(chunk);
            if (pending->unread.size() == pending->meta.unread_total()) hand();
            continue;
        }
        uw::totals_msg t;
        if ((h.type == uw::msg_type::end || h.type == uw::msg_type::final) &&
            uw::decode_totals(msg, &t, &e)) {
            if (h.type == uw::msg_type::end) {
                st.started.store(t.totals.started);
                st.completed.store(t.totals.completed);
                st.failed.store(t.totals.failed);
                end_seen_.store(true);
                RPCGATE_LOG(gw, info, "upgrade: {} connection(s) adopted from the old process",
                            adopted);
            } else {
                st.drained.fetch_add(t.totals.drained);
                st.closed.fetch_add(t.totals.closed);
                break;
            }
            continue;
        }
        RPCGATE_LOG(gw, warn, "upgrade: unexpected message type {} ignored", int(h.type));
    }
    end_seen_.store(true);
    final_seen_.store(true);
}

bool upgrade_child::wait_final(int ms) {
    uint64_t deadline = monotonic_ms() + uint64_t(ms);
    while (!final_seen_.load()) {
        if (monotonic_ms() >= deadline) return false;
        ::usleep(10000);
    }
    return true;
}

void upgrade_child::stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
}

}  // namespace rpcgate::gw
