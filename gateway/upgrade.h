// Upgrading rpcgate in place: the running process starts the new binary and
// hands it the listening sockets and every plaintext connection at an RPC
// record boundary; what cannot move finishes in the old process
// (docs/upgrade.md says which, and the order of events).
//
// Two sides, one socket pair (SOCK_SEQPACKET, the format of upgrade_wire.h):
//
//   old (upgrade_parent, main thread)      new (upgrade_child)
//   fork + exec BINARY argv --upgrade-fd N
//                                    <-    hello (its version; config valid)
//   offer: listener sockets (fds)    ->
//                                          gateway::start adopting them
//                                    <-    ready (or refuse: why)
//   shards stop accepting, detach
//   each connection at a boundary:
//   conn (+fds) [conn_bytes...]      ->    posted to a shard, adopted
//   end (counters)                   ->
//   the rest drains; at exit:
//   final (drained, closed)          ->
//
// Anything that goes wrong before `ready` (the new binary exits, fails its
// configuration or start, speaks another format version, or does not answer
// within --upgrade-timeout) leaves the old process as it was: it logs why,
// counts rpcgate_upgrades_total{result="failed"} and goes on serving.
//
// Threads: upgrade_parent runs on the old process's main thread (it blocks
// it for the duration). The shards detach their sessions themselves
// (shard_context::begin_move) and pass them through a move_sink.
// upgrade_child runs on the new process's main thread until `ready`, then
// on a thread of its own that posts each connection to its shard.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gateway/call_stats.h"
#include "gateway/upgrade_wire.h"

namespace rpcgate::gw {

class gateway;
struct gateway_config;

// Listening sockets a new process adopts instead of binding (fds it owns).
struct inherited_listeners {
    std::vector<std::vector<int>> listen;    // per --listen endpoint
    std::vector<std::vector<int>> implicit;  // per --implicit-tls endpoint
    int admin = -1;
    bool empty() const noexcept { return listen.empty() && implicit.empty() && admin < 0; }
};

// One connection detached from its shard: what the new process needs to go
// on with it. Owns its fds until released (closes them otherwise).
struct moved_conn {
    upgrade_wire::conn_msg meta;
    std::vector<int> fds;  // client, then one per link (meta.links order)
    std::string unread;    // the client's unread bytes, then each link's
    moved_conn() = default;
    moved_conn(const moved_conn&) = delete;
    moved_conn& operator=(const moved_conn&) = delete;
    ~moved_conn();
    void release() noexcept { fds.clear(); }
};

// Shards -> the upgrade thread: detached connections and "this shard is
// done". Any thread; a mutex, off the data path (once per upgrade and
// connection).
class move_sink {
  public:
    explicit move_sink(size_t shards) : shards_left_(shards) {}
    void put(std::unique_ptr<moved_conn> c);
    void shard_done();
    // The next connection; null when every shard is done and nothing is
    // left, or at `deadline_ms` (CLOCK_MONOTONIC ms) — *timed_out says which.
    std::unique_ptr<moved_conn> next(uint64_t deadline_ms, bool* timed_out);

  private:
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::unique_ptr<moved_conn>> q_;
    size_t shards_left_;
};

// The process's upgrade figures (/metrics), carried over from the process
// it took over from. Any thread.
struct upgrade_counters {
    std::atomic<uint64_t> started{0}, completed{0}, failed{0};
    std::atomic<uint64_t> moved{0}, drained{0}, closed{0};
    latency_histogram pause;  // per moved connection: detach (old) -> adopt (new)
    std::atomic<uint64_t> pause_max_ns{0};
    upgrade_wire::upgrade_totals totals() const;
    void set(const upgrade_wire::upgrade_totals& t);
    void note_pause(uint64_t ns) noexcept;
    void render(std::string& out) const;
};

uint64_t monotonic_ns() noexcept;

// The old side. Main thread.
class upgrade_parent {
  public:
    // `exe`: the binary this process was started from; `argv`: its
    // arguments (argv[0] first).
    upgrade_parent(gateway& gw, const gateway_config& cfg, std::string exe,
                   std::vector<std::string> argv);
    ~upgrade_parent();
    // Runs one upgrade. True: the new process took over (its pid in
    // new_pid()); this one should now drain and exit (finish()). False: it
    // failed, was logged and counted, and this process goes on serving.
    bool run();
    pid_t new_pid() const noexcept { return child_; }
    // After the gateway stopped: tells the new process what drained and
    // what was closed here, and logs the upgrade's last line.
    void finish(uint64_t drained, uint64_t closed);

  private:
    bool fail(const std::string& why);
    bool spawn(std::string* why);
    bool await(upgrade_wire::msg_type want, std::string* msg, int ms, std::string* why);
    bool move_connections(std::string* why);

    gateway& gw_;
    const gateway_config& cfg_;
    std::string exe_;
    std::vector<std::string> argv_;
    int sock_ = -1;
    pid_t child_ = -1;
    uint64_t t0_ns_ = 0;
    uint64_t moved_ = 0, lost_ = 0;
    uint64_t bytes_carried_ = 0;
};

// The new side. Created when --upgrade-fd is given.
class upgrade_child {
  public:
    explicit upgrade_child(int fd);
    ~upgrade_child();
    // Main thread, before the gateway starts: hello, then the offer's
    // listening sockets. "" or why (the process then exits non-zero).
    std::string greet(inherited_listeners* out, upgrade_wire::upgrade_totals* totals);
    // The gateway could not start: say why (the old process keeps serving).
    void refuse(const std::string& why);
    // The gateway runs: ready; then a thread adopts each connection.
    std::string ready(gateway& gw);
    // True once the old process said `end` (every connection is here).
    bool moves_done() const noexcept { return end_seen_.load(); }
    // Waits up to `ms` for the old process's `final`; true if it came.
    bool wait_final(int ms);
    // Stops the thread (process exit).
    void stop();

  private:
    void receive(gateway* gw);

    int sock_;
    std::thread thread_;
    std::atomic<bool> end_seen_{false};
    std::atomic<bool> final_seen_{false};
    std::atomic<bool> stop_{false};
};

// The arguments to start the new binary with: ours, without a previous
// --upgrade-fd, plus --upgrade-fd `fd`. (Exposed for the unit test.)
std::vector<std::string> upgrade_argv(const std::vector<std::string>& argv, int fd);

}  // namespace rpcgate::gw
