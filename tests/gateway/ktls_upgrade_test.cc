// TLS connections across a live upgrade (issue 16, docs/upgrade.md) with the
// real daemon: an independent OpenSSL client (ktls_client.h) -> `rpcgate
// --tls required` (a child process) -> the bench echo server (in this
// process). SIGUSR2 makes rpcgate start its own binary again and hand over;
// the test waits (conditions with deadlines) until the new process serves
// and the old one has exited, then goes on on the SAME client connections.
//
// What must happen depends on where a connection's TLS records live:
//   kernel      --ktls on, TLS 1.3, TX and RX in the kernel: the connection
//               moves (same socket; the kernel keeps the record state, the
//               traffic secrets and key generations travel): zero
//               reconnects, zero failed calls, fate="moved" == N. After the
//               move a KeyUpdate from the client is followed where the
//               kernel can rekey (Linux 6.14+), and closes cleanly with
//               close_notify where it cannot (6.1, as before a move).
//   kernel_tls12  --ktls on, TLS 1.2 (both ways in the kernel, but no
//               TLS 1.3 secrets to rekey with): drains -- close_notify at
//               the first idle point in the old process, fate="drained" == N.
//   userspace   --ktls off, rpcgate's own record layer: moves (the record
//               sequence numbers and secrets travel).
//   openssl     --ktls off --tls-record-layer openssl: OpenSSL holds the
//               record state: drains.
// The kernel modes need kTLS (the qemu guest of tests/vm: RPCGATE_REQUIRE_KTLS=1
// makes a kernel without it a failure); elsewhere they skip.
//
// The daemon is RPCGATE_BIN, or the build's rpcgate. The test makes itself a
// child subreaper, so that the new process (a child of the old one) becomes
// its own once the old one exits: it reaps and kills every process it started
// or inherited.
#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/gateway/ktls_client.h"
#include "tests/gateway/ktls_gateway_fixture.h"
#include "tests/unit/tls/ktls_test_util.h"
#include "tls/ktls.h"
#include "tools/bench/echo_server.h"

using namespace rpcgate;
namespace k = rpcgate::tls::ktls;
using namespace rpcgate::tls::ktls::test;  // have_ktls, require_ktls, certs, random_bytes
using namespace rpcgate::test_gw;          // client, call_record, eventually

namespace {

// A process start (exec, certificates, shards) under TCG on a loaded 2-core
// host can take many seconds: every wait for one allows a minute.
constexpr int k_start_ms = 60000;
// --upgrade-drain-timeout: the old process exits at most twice this after
// the new one is ready.
constexpr int k_drain_ms = 20000;
// Connections per test: 3 STARTTLS, 1 implicit TLS.
constexpr int k_conns = 4;

struct mode_param {
    const char* name;
    bool kernel;               // --ktls on (needs kTLS), else --ktls off
    int version;               // the one TLS version the client offers
    const char* record_layer;  // --tls-record-layer ("" = the default, own)
    bool moves;                // the connections move (else they drain)
};
void PrintTo(const mode_param& m, std::ostream* os) {
    *os << m.name;
}

std::string rpcgate_binary() {
    const char* e = std::getenv("RPCGATE_BIN");
    return e && *e ? e : RPCGATE_BINARY;
}

uint16_t free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    uint16_t port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &al) == 0)
        port = ntohs(a.sin_port);
    ::close(fd);
    return port;
}

uint16_t local_port(int fd) {
    sockaddr_in a{};
    socklen_t al = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &al);
    return ntohs(a.sin_port);
}

// GET `path` from the admin endpoint (HTTP/1.0, it closes after the answer):
// the body, or "" when it did not answer (between two processes, say).
std::string http_get(uint16_t port, const std::string& path) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
        if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == ssize_t(req.size())) {
            char buf[16384];
            ssize_t n;
            while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, size_t(n));
        }
    }
    ::close(fd);
    size_t body = out.find("\r\n\r\n");
    if (out.rfind("HTTP/1.0 200", 0) != 0 || body == std::string::npos) return "";
    return out.substr(body + 4);
}

// The sum of a metric family's samples whose labels contain `labels`
// (e.g. `fate="moved"`), or -1 when the family is not in `text`.
double metric(const std::string& text, const std::string& name, const std::string& labels = "") {
    double sum = -1;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(name, 0) != 0) continue;
        char next = line.size() > name.size() ? line[name.size()] : '\0';
        if (next != ' ' && next != '{') continue;
        size_t sp = line.rfind(' ');
        if (!labels.empty()) {
            size_t close = line.find('}');
            if (close == std::string::npos ||
                line.substr(0, close).find(labels) == std::string::npos)
                continue;
        }
        sum = (sum < 0 ? 0 : sum) + std::strtod(line.c_str() + sp + 1, nullptr);
    }
    return sum;
}

// One connection's object in /connections, found by the client's port.
std::string connection_json(const std::string& conns, uint16_t client_port) {
    std::string peer = fmt::format(R"("peer":"127.0.0.1:{}")", client_port);
    size_t at = conns.find(peer);
    if (at == std::string::npos) return "";
    size_t begin = conns.rfind(R"({"id":)", at);
    size_t end = conns.find(R"({"id":)", at);
    if (begin == std::string::npos) return "";
    return conns.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

std::string json_field(const std::string& obj, const std::string& key) {
    std::regex re("\"" + key + "\":\"([^\"]*)\"");
    std::smatch m;
    return std::regex_search(obj, m, re) ? m[1].str() : "";
}

// The daemon under test and the processes that take its place.
class daemon_chain {
  public:
    ~daemon_chain() { stop(); }

    // Starts rpcgate with `args` (plus the ports), its stdout and stderr
    // appended to a log file that its successors share.
    void start(const std::vector<std::string>& args) {
        char tmpl[] = "/tmp/rpcgate-upgrade.XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        log_ = dir_ + "/rpcgate.log";
        port_ = free_port();
        implicit_port_ = free_port();
        admin_port_ = free_port();
        ASSERT_TRUE(port_ && implicit_port_ && admin_port_);
        std::vector<std::string> argv = {rpcgate_binary(),
                                         "--listen",
                                         fmt::format("127.0.0.1:{}", port_),
                                         "--implicit-tls",
                                         fmt::format("127.0.0.1:{}", implicit_port_),
                                         "--admin",
                                         fmt::format("127.0.0.1:{}", admin_port_)};
        argv.insert(argv.end(), args.begin(), args.end());
        std::string cmd;
        for (const auto& a : argv) cmd += a + " ";
        std::printf("[gw-upgrade] %s\n", cmd.c_str());
        int logfd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        ASSERT_GE(logfd, 0);
        pid_t parent = ::getpid();
        pid_t pid = ::fork();
        if (pid == 0) {
            // The first process dies with the test; its successors are
            // killed by stop() (they are ours once it exits).
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);
            int null = ::open("/dev/null", O_RDONLY);
            ::dup2(null, 0);
            ::dup2(logfd, 1);
            ::dup2(logfd, 2);
            std::vector<char*> a;
            for (auto& s : argv) a.push_back(s.data());
            a.push_back(nullptr);
            ::execv(a[0], a.data());
            ::_exit(127);
        }
        ::close(logfd);
        ASSERT_GT(pid, 0);
        pid_ = pid;
        known_.push_back(pid);
        bool up = eventually([&] { return !metrics().empty() || exited(pid_); }, k_start_ms);
        ASSERT_TRUE(up && !exited(pid_)) << "rpcgate did not start";
    }

    // Stops every process of the chain: SIGTERM, then SIGKILL.
    void stop() {
        for (pid_t p : known_)
            if (!exited(p)) ::kill(p, SIGTERM);
        for (pid_t p : known_) {
            if (!eventually([&] { return exited(p); }, 20000)) {
                ::kill(p, SIGKILL);
                eventually([&] { return exited(p); }, 10000);
            }
        }
        known_.clear();
        if (!dir_.empty()) {
            std::remove(log_.c_str());
            ::rmdir(dir_.c_str());
            dir_.clear();
        }
    }

    // True once `p` has ended (reaped here, its status kept).
    bool exited(pid_t p) {
        if (status_.count(p)) return true;
        int st = 0;
        pid_t r = ::waitpid(p, &st, WNOHANG);
        if (r == p) {
            status_[p] = st;
            return true;
        }
        return r < 0 && errno == ECHILD && ::kill(p, 0) != 0;
    }
    // The wait status of an ended process, or -1.
    int status(pid_t p) const {
        auto it = status_.find(p);
        return it == status_.end() ? -1 : it->second;
    }

    // The pid of the `n`-th process the chain started ("upgrade: started
    // BINARY as pid N" lines in the shared log), or 0 if none yet.
    pid_t started(size_t n) const {
        std::string text = log_text();
        std::regex re("upgrade: started \\S+ as pid (\\d+)");
        size_t i = 0;
        for (auto it = std::sregex_iterator(text.begin(), text.end(), re);
             it != std::sregex_iterator(); ++it)
            if (++i == n) return pid_t(std::stol((*it)[1].str()));
        return 0;
    }

    // The value of `label=N` in the `n`-th exit line ("stopped: ...": the
    // counters of a process that ended), or -1.
    int64_t exit_count(size_t n, const std::string& label) const {
        std::string text = log_text();
        std::regex re("stopped: .*\\b" + label + "=(\\d+)");
        size_t i = 0;
        for (auto it = std::sregex_iterator(text.begin(), text.end(), re);
             it != std::sregex_iterator(); ++it)
            if (++i == n) return std::stoll((*it)[1].str());
        return -1;
    }

    // SIGUSR2 to the serving process, then waits until the new one has taken
    // over: the old one exited with status 0, the new one counts the upgrade
    // completed and has the old one's final counts of what moved or drained.
    // `meanwhile` runs once the new process has started, before the wait for
    // the old one's exit. *ms: from the signal to the old process's exit.
    void upgrade(int conns, int64_t* ms, const std::function<void()>& meanwhile = {}) {
        const pid_t old = pid_;
        ++upgrades_;
        auto t0 = clock_type::now();
        ASSERT_EQ(::kill(old, SIGUSR2), 0);
        pid_t next = 0;
        ASSERT_TRUE(eventually([&] { return (next = started(upgrades_)) != 0; }, k_start_ms))
            << "no new process started";
        known_.push_back(next);
        if (meanwhile) {
            meanwhile();
            if (::testing::Test::HasFatalFailure()) return;
        }
        ASSERT_TRUE(eventually([&] { return exited(old); }, k_start_ms + 2 * k_drain_ms))
            << "the old process (pid " << old << ") did not exit";
        *ms = ms_since(t0);
        int st = status(old);
        ASSERT_TRUE(st == -1 || (WIFEXITED(st) && WEXITSTATUS(st) == 0))
            << "the old process ended with wait status " << st;
        ASSERT_FALSE(exited(next)) << "the new process (pid " << next << ") is gone";
        pid_ = next;
        ASSERT_TRUE(eventually(
            [&] {
                std::string m = metrics();
                return metric(m, "rpcgate_upgrades_total", R"(result="completed")") == upgrades_ &&
                       fates(m) >= conns;
            },
            k_start_ms))
            << "the new process does not count the upgrade completed with " << conns
            << " connection(s) moved, drained or closed:\n"
            << metrics();
    }
    static double fates(const std::string& m) {
        double n = 0;
        for (const char* f : {"moved", "drained", "closed"})
            n += std::max(0.0, metric(m, "rpcgate_upgrade_connections_total",
                                      fmt::format(R"(fate="{}")", f)));
        return n;
    }

    // The new process of the last upgrade took the listeners ("upgrade: pid
    // N accepts on ..."): connections that cannot move drain from here on.
    bool new_process_ready() const {
        return log_text().find(fmt::format("upgrade: pid {} accepts on", started(upgrades_))) !=
               std::string::npos;
    }

    std::string metrics() const { return http_get(admin_port_, "/metrics"); }
    std::string connections() const { return http_get(admin_port_, "/connections"); }
    double metric_now(const std::string& name, const std::string& labels = "") const {
        return metric(metrics(), name, labels);
    }
    std::string log_text() const {
        std::ifstream f(log_);
        std::stringstream s;
        s << f.rdbuf();
        return s.str();
    }

    pid_t pid() const { return pid_; }
    uint16_t port() const { return port_; }
    uint16_t implicit_port() const { return implicit_port_; }

  private:
    std::string dir_, log_;
    uint16_t port_ = 0, implicit_port_ = 0, admin_port_ = 0;
    pid_t pid_ = -1;
    size_t upgrades_ = 0;
    std::vector<pid_t> known_;
    std::map<pid_t, int> status_;
};

class gateway_upgrade : public ktls_gateway_fixture,
                        public ::testing::WithParamInterface<mode_param> {
  protected:
    // The fixture's certificates and echo server; no in-process gateway.
    void SetUp() override {
        ktls_gateway_fixture::SetUp();
        if (HasFatalFailure()) return;
        if (GetParam().kernel && !have_ktls())
            GTEST_SKIP() << "kTLS needs a kernel with it (tests/vm)";
        ASSERT_EQ(::access(rpcgate_binary().c_str(), X_OK), 0)
            << rpcgate_binary() << " is not executable (RPCGATE_BIN)";
        // The new rpcgate is a child of the old one: ours once the old exits.
        ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
        // Asked once, here: the question sets up a throw-away kTLS socket,
        // which must not fall between two readings of /proc/net/tls_stat.
        if (GetParam().kernel) (void)k::kernel_can_rekey();
    }
    void TearDown() override {
        clients_.clear();
        // The log of every process of the chain (they share it), once.
        if (HasFailure()) std::printf("---- rpcgate log\n%s----\n", daemon_.log_text().c_str());
        daemon_.stop();
        ktls_gateway_fixture::TearDown();
    }

    // rpcgate in this test's mode; `rekey_after` > 0: --tls-rekey-after.
    void start_gateway(uint64_t rekey_after = 0) {
        const mode_param& p = GetParam();
        std::vector<std::string> a = {"--backend",
                                      fmt::format("{}=127.0.0.1:{}", k_echo_prog, echo_->port()),
                                      "--shards",
                                      "1",
                                      "--buffers",
                                      "64",
                                      "--no-reserved-port",
                                      "--tls",
                                      "required",
                                      "--cert",
                                      certs().cert,
                                      "--key",
                                      certs().key,
                                      "--ktls",
                                      p.kernel ? "on" : "off",
                                      "--upgrade-timeout",
                                      std::to_string(k_start_ms),
                                      "--upgrade-drain-timeout",
                                      std::to_string(k_drain_ms)};
        if (p.version == TLS1_2_VERSION) a.insert(a.end(), {"--tls-min-version", "1.2"});
        if (*p.record_layer) a.insert(a.end(), {"--tls-record-layer", p.record_layer});
        if (rekey_after) a.insert(a.end(), {"--tls-rekey-after", std::to_string(rekey_after)});
        daemon_.start(a);
        if (p.kernel) {
            ASSERT_NE(daemon_.log_text().find("kernel TLS: on"), std::string::npos)
                << "rpcgate did not turn kernel TLS on";
        }
    }

    // A client of the daemon through STARTTLS (or implicit TLS), kept until
    // the test ends.
    client* connect_client(bool implicit) {
        auto c = open_client(implicit ? daemon_.implicit_port() : daemon_.port(), implicit,
                             GetParam().version);
        if (!c) return nullptr;
        clients_.push_back(std::move(c));
        return clients_.back().get();
    }

    // Where the crypto of the connection from `c` runs, per /connections.
    std::string protection(const std::string& conns, const client& c) {
        std::string o = connection_json(conns, local_port(c.fd()));
        return json_field(o, "tx") + "/" + json_field(o, "rx");
    }
    std::string expect_protection() const {
        return GetParam().kernel ? "ktls-sw/ktls-sw" : "userspace/userspace";
    }

    // The kernel's kTLS follows a client's KeyUpdate only from Linux 6.14.
    bool follows_key_updates() const { return !GetParam().kernel || k::kernel_can_rekey(); }

    daemon_chain daemon_;
    std::vector<std::unique_ptr<client>> clients_;
};

// N connections, verified calls of mixed sizes, SIGUSR2, and the same
// connections after it: moved (no reconnect, no failed call, the
// connection IDs and protection kept, a KeyUpdate before the move counted
// in the new process's key generations, one after it followed) or drained
// (each ended with close_notify while idle; a new connection is served by
// the new process).
// The tests that go on with a connection after its move: the modes in
// which it moves only (in the others it drains, and there is nothing to go
// on with).
class gateway_upgrade_moving : public gateway_upgrade {};

TEST_P(gateway_upgrade, connections_across_an_upgrade) {
    const mode_param& p = GetParam();
    start_gateway();
    ASSERT_FALSE(HasFatalFailure());
    std::vector<client*> cs;
    for (int i = 0; i < k_conns; ++i) {
        client* c = connect_client(i == k_conns - 1);
        ASSERT_NE(c, nullptr) << "connection " << i;
        cs.push_back(c);
    }
    const std::vector<size_t> sizes = {0, 1, 100, 5000, 16384, 70000, 300000};
    uint32_t xid = 1;
    for (size_t round = 0; round < 2; ++round)
        for (size_t i = 0; i < cs.size(); ++i)
            for (size_t n : sizes)
                ASSERT_EQ(cs[i]->echo(xid++, random_bytes(n + i)), "")
                    << "before the upgrade: connection " << i << ", " << n + i << " bytes";
    // A key update before the move where this kernel (or userspace) follows
    // one: its generation must reach the new process with the connection.
    const bool rekeys = follows_key_updates() && p.version == TLS1_3_VERSION;
    if (rekeys) {
        ASSERT_EQ(SSL_key_update(cs[0]->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
        ASSERT_EQ(cs[0]->echo(xid++, random_bytes(20000)), "") << "after the first KeyUpdate";
    }
    std::string before = daemon_.connections();
    std::map<client*, std::string> ids;
    for (client* c : cs) {
        std::string o = connection_json(before, local_port(c->fd()));
        ids[c] = json_field(o, "id");
        ASSERT_FALSE(ids[c].empty())
            << "connection on port " << local_port(c->fd()) << " not in /connections: " << before;
        EXPECT_EQ(protection(before, *c), expect_protection()) << o;
    }
    if (rekeys && p.kernel) {
        EXPECT_NE(connection_json(before, local_port(cs[0]->fd()))
                      .find(R"("key_generation":{"tx":1,"rx":1})"),
                  std::string::npos)
            << before;
    }
    const double handshakes_before = daemon_.metric_now("rpcgate_tls_handshakes_ok_total");
    const auto stat_before = k::read_tls_stat();

    // Where the connections drain, each client reads its close_notify and
    // closes, as a real one would, while the old process waits for them (a
    // lingering close: without the client's FIN it waits seconds more).
    std::vector<std::string> ends(cs.size());
    std::vector<int> replies(cs.size(), -1);
    auto read_the_ends = [&] {
        ASSERT_TRUE(eventually([&] { return daemon_.new_process_ready(); }, k_start_ms))
            << "the new process did not take the listeners";
        for (size_t i = 0; i < cs.size(); ++i) {
            ends[i] = cs[i]->wait_close(&replies[i]);
            ::shutdown(cs[i]->fd(), SHUT_RDWR);
        }
    };
    int64_t took = 0;
    daemon_.upgrade(k_conns, &took, p.moves ? std::function<void()>() : read_the_ends);
    ASSERT_FALSE(HasFatalFailure());
    std::string m = daemon_.metrics();
    double moved = metric(m, "rpcgate_upgrade_connections_total", R"(fate="moved")");
    double drained = metric(m, "rpcgate_upgrade_connections_total", R"(fate="drained")");
    double closed = metric(m, "rpcgate_upgrade_connections_total", R"(fate="closed")");
    double pause_max = metric(m, "rpcgate_upgrade_pause_max_seconds");
    std::printf(
        "[gw-upgrade] %s: SIGUSR2 to the old process's exit %lld ms; moved %.0f, drained %.0f, "
        "closed %.0f; pause max %.1f ms (%.0f handshakes before)\n",
        p.name, (long long)took, moved, drained, closed, 1000 * pause_max, handshakes_before);
    EXPECT_EQ(closed, 0);

    if (!p.moves) {
        EXPECT_EQ(drained, k_conns);
        EXPECT_EQ(moved, 0);
        // Each was idle: the old process ended it with close_notify, before
        // anything else (no half reply, no reset).
        for (size_t i = 0; i < cs.size(); ++i) {
            EXPECT_EQ(ends[i], "close_notify") << "connection " << i;
            EXPECT_EQ(replies[i], 0) << "connection " << i;
        }
        client* fresh = connect_client(false);
        ASSERT_NE(fresh, nullptr);
        ASSERT_EQ(fresh->echo(xid++, random_bytes(70000)), "") << "a new connection";
        EXPECT_EQ(daemon_.metric_now("rpcgate_tls_handshakes_ok_total"), 1)
            << "the new process should have done exactly the new connection's handshake";
        return;
    }

    EXPECT_EQ(moved, k_conns);
    EXPECT_EQ(drained, 0);
    // The same connections: every call answered, byte for byte.
    for (size_t round = 0; round < 2; ++round)
        for (size_t i = 0; i < cs.size(); ++i)
            for (size_t n : sizes)
                ASSERT_EQ(cs[i]->echo(xid++, random_bytes(n + i)), "")
                    << "after the upgrade: connection " << i << ", " << n + i << " bytes";
    if (p.kernel) {
        // The kernel kept each socket's TLS context: none was set up again
        // (TlsTxSw, TlsRxSw count set-ups; the new process sets up one TX
        // context of its own, on a throw-away socket, when it first asks
        // whether the kernel can rekey: tls::ktls::kernel_can_rekey) and
        // none closed (TlsCurr*: the open ones).
        const auto stat_after = k::read_tls_stat();
        EXPECT_LE(k::stat_value(stat_after, "TlsTxSw"), k::stat_value(stat_before, "TlsTxSw") + 1);
        EXPECT_EQ(k::stat_value(stat_after, "TlsRxSw"), k::stat_value(stat_before, "TlsRxSw"));
        for (const char* name : {"TlsCurrTxSw", "TlsCurrRxSw"})
            EXPECT_EQ(k::stat_value(stat_after, name), k::stat_value(stat_before, name)) << name;
        EXPECT_GE(k::stat_value(stat_after, "TlsCurrRxSw"), uint64_t(k_conns));
    }
    // No reconnect: the new process accepted nothing and made no handshake;
    // it shows the same connections under the same IDs.
    m = daemon_.metrics();
    EXPECT_EQ(metric(m, "rpcgate_connections_accepted_total"), 0);
    EXPECT_EQ(metric(m, "rpcgate_tls_handshakes_ok_total"), 0);
    EXPECT_EQ(metric(m, "rpcgate_connections_open"), k_conns);
    std::string after = daemon_.connections();
    for (client* c : cs) {
        std::string o = connection_json(after, local_port(c->fd()));
        EXPECT_EQ(json_field(o, "id"), ids[c]) << after;
        EXPECT_EQ(protection(after, *c), expect_protection()) << o;
    }
    if (rekeys && p.kernel) {
        EXPECT_NE(connection_json(after, local_port(cs[0]->fd()))
                      .find(R"("key_generation":{"tx":1,"rx":1})"),
                  std::string::npos)
            << "the key generations did not travel: " << after;
    }

    // A KeyUpdate with update_requested from each client after the move.
    if (!follows_key_updates()) {
        // Linux < 6.14: as before a move, the kernel cannot take the next
        // key: the new process ends that connection cleanly.
        ASSERT_EQ(SSL_key_update(cs[0]->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
        ASSERT_TRUE(cs[0]->write(call_record(xid++, 1, 0, "after")));
        EXPECT_EQ(cs[0]->wait_close(), "close_notify");
        EXPECT_TRUE(eventually(
            [&] { return daemon_.metric_now("rpcgate_tls_key_update_closes_total") == 1; },
            k_start_ms));
        for (size_t i = 1; i < cs.size(); ++i)
            ASSERT_EQ(cs[i]->echo(xid++, random_bytes(5000)), "") << "connection " << i;
        std::printf(
            "[gw-upgrade] %s: this kernel cannot rekey: a KeyUpdate after the move "
            "closed cleanly\n",
            p.name);
    } else if (p.version == TLS1_3_VERSION) {
        for (size_t i = 0; i < cs.size(); ++i) {
            ASSERT_EQ(SSL_key_update(cs[i]->ssl(), SSL_KEY_UPDATE_REQUESTED), 1);
            for (size_t n : {size_t(10), size_t(40000)})
                ASSERT_EQ(cs[i]->echo(xid++, random_bytes(n)), "")
                    << "after a KeyUpdate after the move: connection " << i;
        }
        m = daemon_.metrics();
        EXPECT_EQ(metric(m, "rpcgate_tls_key_update_closes_total"), 0);
        if (p.kernel) {
            EXPECT_EQ(metric(m, "rpcgate_tls_rekeys_rx_peer_total"), k_conns);
            EXPECT_EQ(metric(m, "rpcgate_tls_rekeys_tx_peer_total"), k_conns);
            std::string conns = daemon_.connections();
            for (size_t i = 0; i < cs.size(); ++i) {
                std::string want = fmt::format(R"("key_generation":{{"tx":{},"rx":{}}})",
                                               i == 0 ? 2 : 1, i == 0 ? 2 : 1);
                EXPECT_NE(connection_json(conns, local_port(cs[i]->fd())).find(want),
                          std::string::npos)
                    << want << " not in " << conns;
            }
        }
        std::printf("[gw-upgrade] %s: a KeyUpdate from each client after the move followed\n",
                    p.name);
    }
    // Ends as any connection does: our close_notify answered with the gateway's.
    for (size_t i = 0; i < cs.size(); ++i) {
        if (!cs[i]->why_closed().empty()) continue;  // closed above
        SSL_shutdown(cs[i]->ssl());
        EXPECT_EQ(cs[i]->wait_close(), "close_notify") << "connection " << i;
    }
    EXPECT_TRUE(eventually([&] { return daemon_.metric_now("rpcgate_connections_open") == 0; },
                           k_start_ms));
}

// A call cut by the upgrade: half of its RPC record (several TLS records)
// reaches the old process before SIGUSR2, the rest only once the new process
// has taken the listeners. The connection is not at a record boundary when
// the move begins: it moves once the call is whole (within
// --upgrade-drain-timeout), the reply comes back intact, and calls go on.
TEST_P(gateway_upgrade_moving, a_call_cut_by_the_upgrade) {
    const mode_param& p = GetParam();
    start_gateway();
    ASSERT_FALSE(HasFatalFailure());
    client* c = connect_client(false);
    ASSERT_NE(c, nullptr);
    ASSERT_EQ(c->echo(1, random_bytes(1000)), "");
    const std::string payload = random_bytes(100000);
    const std::string call = call_record(2, 1, 0, payload);
    const size_t half = call.size() / 2;
    auto bytes_in = [&] {
        std::string o = connection_json(daemon_.connections(), local_port(c->fd()));
        std::smatch m;
        return std::regex_search(o, m, std::regex(R"("bytes_in":(\d+))")) ? std::stoull(m[1].str())
                                                                          : 0ull;
    };
    const uint64_t before = bytes_in();
    ASSERT_TRUE(c->write(call.substr(0, half)));
    // The old process has read the first half: the call is half-read there.
    ASSERT_TRUE(eventually([&] { return bytes_in() >= before + half; }, k_start_ms))
        << "the gateway did not read the first half of the call";
    int64_t took = 0;
    int64_t cut_ms = 0;
    daemon_.upgrade(1, &took, [&] {
        ASSERT_TRUE(eventually([&] { return daemon_.new_process_ready(); }, k_start_ms))
            << "the new process did not take the listeners";
        auto t0 = clock_type::now();
        ASSERT_TRUE(c->write(call.substr(half)));
        std::string r;
        ASSERT_TRUE(c->read_record(r)) << c->why_closed();
        cut_ms = ms_since(t0);
        ASSERT_GE(r.size(), 28u + payload.size());
        EXPECT_EQ(get32(r, 0), 2u);
        EXPECT_EQ(r.compare(r.size() - payload.size(), payload.size(), payload), 0)
            << "the echoed bytes differ";
    });
    ASSERT_FALSE(HasFatalFailure());
    std::string m = daemon_.metrics();
    std::printf(
        "[gw-upgrade] %s: a call cut by the upgrade answered %lld ms after its second half; "
        "SIGUSR2 to the old process's exit %lld ms\n",
        p.name, (long long)cut_ms, (long long)took);
    EXPECT_EQ(metric(m, "rpcgate_upgrade_connections_total", R"(fate="moved")"), 1);
    EXPECT_EQ(metric(m, "rpcgate_upgrade_connections_total", R"(fate="closed")"), 0);
    for (uint32_t xid = 3; xid < 6; ++xid)
        ASSERT_EQ(c->echo(xid, random_bytes(30000)), "") << "call " << xid << " after the move";
    EXPECT_EQ(metric(daemon_.metrics(), "rpcgate_tls_handshakes_ok_total"), 0);
    SSL_shutdown(c->ssl());
    EXPECT_EQ(c->wait_close(), "close_notify");
}

// --tls-rekey-after 50 across a move: the record count under the current
// TX key goes on in the new process. Where the TX key can change (Linux
// 6.14+, userspace), the gateway's own KeyUpdates go on after the move, and
// the client's OpenSSL saw exactly the generations of both processes. Where
// it cannot (6.1), the key is used up after the same number of replies as
// without a move (not 50 records after it): close_notify, counted.
TEST_P(gateway_upgrade_moving, own_key_updates_across_an_upgrade) {
    const mode_param& p = GetParam();
    constexpr uint64_t k_after = 50;
    start_gateway(k_after);
    ASSERT_FALSE(HasFatalFailure());
    client* c = connect_client(false);
    ASSERT_NE(c, nullptr);
    uint64_t received = 0;
    SSL_set_msg_callback(c->ssl(), count_key_updates);
    SSL_set_msg_callback_arg(c->ssl(), &received);
    const std::string payload = random_bytes(32768);
    int64_t took = 0;
    uint32_t xid = 1;

    if (p.kernel && !k::kernel_can_rekey()) {
        // 2 or 3 records a reply of 32 KiB: 14 replies are 28-42 records,
        // under the 50; the key runs out 3-11 replies after the move.
        for (; xid <= 14; ++xid) ASSERT_EQ(c->echo(xid, payload), "") << "call " << xid;
        daemon_.upgrade(1, &took);
        ASSERT_FALSE(HasFatalFailure());
        ASSERT_EQ(daemon_.metric_now("rpcgate_upgrade_connections_total", R"(fate="moved")"), 1);
        std::string e;
        uint32_t replies = 14;
        while (replies < 100 && (e = c->echo(replies + 1, payload)).empty()) ++replies;
        EXPECT_EQ(e, "no reply (close_notify)") << "after " << replies << " replies";
        EXPECT_TRUE(eventually(
            [&] { return daemon_.metric_now("rpcgate_tls_key_exhausted_closes_total") == 1; },
            k_start_ms));
        std::printf(
            "[gw-upgrade] %s: this kernel cannot rekey: closed with close_notify after %u replies "
            "of 32 KiB, 14 of them before the move (--tls-rekey-after %llu; upgrade %lld ms)\n",
            p.name, replies, (unsigned long long)k_after, (long long)took);
        // The same bounds as without a move (ktls_rekey_test.cc); a count
        // started again in the new process would reach 14 + 16 or more.
        EXPECT_GE(replies, k_after / 3 - 1);
        EXPECT_LE(replies, k_after / 2 + 1);
        EXPECT_EQ(daemon_.metric_now("rpcgate_tls_rekeys_tx_own_total"), 0);
        return;
    }

    constexpr uint32_t k_before = 60, k_after_move = 140;
    for (; xid <= k_before; ++xid) ASSERT_EQ(c->echo(xid, payload), "") << "call " << xid;
    daemon_.upgrade(1, &took);
    ASSERT_FALSE(HasFatalFailure());
    ASSERT_EQ(daemon_.metric_now("rpcgate_upgrade_connections_total", R"(fate="moved")"), 1);
    // What the old process did: the TX generation the connection arrived with.
    std::string conns = daemon_.connections();
    std::smatch g;
    std::string obj = connection_json(conns, local_port(c->fd()));
    uint64_t gen_moved = 0;
    if (p.kernel) {
        ASSERT_TRUE(std::regex_search(obj, g, std::regex(R"("key_generation":\{"tx":(\d+))")))
            << conns;
        gen_moved = std::stoull(g[1].str());
    }
    // The old process's own KeyUpdates: its exit line, which counts them all.
    const int64_t old_own = daemon_.exit_count(1, "rekeys_tx_own");
    ASSERT_GE(old_own, 0) << "no exit line of the old process with rekeys_tx_own";
    for (; xid <= k_before + k_after_move; ++xid)
        ASSERT_EQ(c->echo(xid, payload), "") << "call " << xid << " after the move";
    SSL_shutdown(c->ssl());
    EXPECT_EQ(c->wait_close(), "close_notify");  // reads what the gateway sent last
    // Every KeyUpdate the client received was sent and counted by one of the
    // two processes, once (a KeyUpdate counted again in the new process, or
    // one it made without counting, breaks this).
    double own = 0;
    bool adds_up = eventually(
        [&] {
            own = daemon_.metric_now("rpcgate_tls_rekeys_tx_own_total");
            return uint64_t(old_own) + uint64_t(own) == received;
        },
        10000);
    std::printf(
        "[gw-upgrade] %s: %u replies of 32 KiB, %u after the move (upgrade %lld ms): KeyUpdates "
        "from the old process %lld%s, from the new one %.0f; the client received %llu\n",
        p.name, k_before + k_after_move, k_after_move, (long long)took, (long long)old_own,
        p.kernel ? fmt::format(" (TX generation {} on arrival)", gen_moved).c_str() : "", own,
        (unsigned long long)received);
    EXPECT_TRUE(adds_up) << "the client received " << received << " KeyUpdates; the old process "
                         << "counts " << old_own << ", the new one " << own;
    // 60 replies before the move, 140 after: 120-180 and 280-420 records,
    // 2-3 and 5-8 KeyUpdates (one less where the count is looked at once per
    // batch, one more where one was due at the move).
    EXPECT_GE(old_own, 2 * k_before / k_after - 1);
    EXPECT_LE(old_own, 3 * k_before / k_after + 1);
    EXPECT_GE(own, 2 * k_after_move / k_after - 1);
    EXPECT_LE(own, 3 * k_after_move / k_after + 1);
    if (p.kernel) {
        EXPECT_EQ(gen_moved, uint64_t(old_own)) << "the TX generation did not travel";
    }
    EXPECT_EQ(metric(daemon_.metrics(), "rpcgate_tls_key_exhausted_closes_total"), 0);

    // The same calls on a connection that never moved: the key changes after
    // the same records, so the client receives as many KeyUpdates (a record
    // count started again in the new process would make fewer on the moved one).
    client* ref = connect_client(false);
    ASSERT_NE(ref, nullptr);
    uint64_t ref_received = 0;
    SSL_set_msg_callback(ref->ssl(), count_key_updates);
    SSL_set_msg_callback_arg(ref->ssl(), &ref_received);
    for (xid = 1; xid <= k_before + k_after_move; ++xid)
        ASSERT_EQ(ref->echo(xid, payload), "") << "call " << xid << " without a move";
    SSL_shutdown(ref->ssl());
    EXPECT_EQ(ref->wait_close(), "close_notify");
    std::printf(
        "[gw-upgrade] %s: the same %u replies on a connection that never moved: %llu "
        "KeyUpdates\n",
        p.name, k_before + k_after_move, (unsigned long long)ref_received);
    EXPECT_EQ(received, ref_received)
        << "the moved connection changed its key at other records than one that never moved";
}

INSTANTIATE_TEST_SUITE_P(
    modes, gateway_upgrade,
    ::testing::Values(mode_param{"kernel", true, TLS1_3_VERSION, "", true},
                      mode_param{"kernel_tls12", true, TLS1_2_VERSION, "", false},
                      mode_param{"userspace", false, TLS1_3_VERSION, "", true},
                      mode_param{"openssl", false, TLS1_3_VERSION, "openssl", false}),
    [](const auto& info) { return std::string(info.param.name); });
INSTANTIATE_TEST_SUITE_P(modes, gateway_upgrade_moving,
                         ::testing::Values(mode_param{"kernel", true, TLS1_3_VERSION, "", true},
                                           mode_param{"userspace", false, TLS1_3_VERSION, "",
                                                      true}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
