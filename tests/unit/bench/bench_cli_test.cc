// rpcgate-bench as a program: `serve` prints READY and exits 0 on SIGTERM with
// a summary, `run --json` prints one JSON object, bad options (of `nfs` too) and dead
// targets give a non-zero status quickly.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

// A child process with its stdout and stderr on pipes.
struct child {
    pid_t pid = -1;
    int out = -1, err = -1;
    std::string out_text, err_text;
    int status = -1;

    explicit child(std::vector<std::string> args) {
        int o[2], e[2];
        if (::pipe2(o, O_CLOEXEC) != 0 || ::pipe2(e, O_CLOEXEC) != 0) return;
        pid = ::fork();
        if (pid == 0) {
            ::dup2(o[1], 1);
            ::dup2(e[1], 2);
            std::vector<char*> argv;
            args.insert(args.begin(), RPCGATE_BENCH_BINARY);
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        ::close(o[1]);
        ::close(e[1]);
        out = o[0];
        err = e[0];
    }
    ~child() {
        if (pid > 0 && status < 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
        if (out >= 0) ::close(out);
        if (err >= 0) ::close(err);
    }

    // Reads output until `pred` holds, both pipes end, or the deadline passes.
    template <typename P>
    bool read_until(P pred, double seconds) {
        auto end = clock_type::now() + std::chrono::duration<double>(seconds);
        bool open[2] = {true, true};
        while (!pred() && (open[0] || open[1])) {
            int left =
                int(std::chrono::duration<double, std::milli>(end - clock_type::now()).count());
            if (left <= 0) return false;
            pollfd p[2] = {{open[0] ? out : -1, POLLIN, 0}, {open[1] ? err : -1, POLLIN, 0}};
            if (::poll(p, 2, left) <= 0) continue;
            for (int i = 0; i < 2; ++i) {
                if (!(p[i].revents & (POLLIN | POLLHUP))) continue;
                char buf[4096];
                ssize_t n = ::read(p[i].fd, buf, sizeof buf);
                if (n > 0)
                    (i ? err_text : out_text).append(buf, size_t(n));
                else
                    open[i] = false;
            }
        }
        return pred();
    }
    // Waits for the exit (up to `seconds`); returns the exit status or -1.
    int wait(double seconds) {
        auto end = clock_type::now() + std::chrono::duration<double>(seconds);
        while (clock_type::now() < end) {
            drain();
            int st = 0;
            pid_t r = ::waitpid(pid, &st, WNOHANG);
            if (r == pid) {
                drain();
                status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                return status;
            }
            ::poll(nullptr, 0, 10);
        }
        return -1;
    }
    void drain() {
        for (int i = 0; i < 2; ++i) {
            int fd = i ? err : out;
            for (;;) {
                pollfd p{fd, POLLIN, 0};
                if (::poll(&p, 1, 0) <= 0) break;
                char buf[4096];
                ssize_t n = ::read(fd, buf, sizeof buf);
                if (n <= 0) break;
                (i ? err_text : out_text).append(buf, size_t(n));
            }
        }
    }
};

uint16_t ready_port(child& srv) {
    srv.read_until([&] { return srv.out_text.find('\n') != std::string::npos; }, 10);
    auto at = srv.out_text.find("READY port=");
    if (at == std::string::npos) return 0;
    return uint16_t(std::stoi(srv.out_text.substr(at + 11)));
}

TEST(bench_cli, serve_run_json_and_clean_exit) {
    child srv({"serve", "--listen", "127.0.0.1:0", "--shards", "2"});
    uint16_t port = ready_port(srv);
    ASSERT_GT(port, 0) << srv.out_text << srv.err_text;

    std::string target = "127.0.0.1:" + std::to_string(port);
    child run({"run", "--target", target, "--connections", "4", "--depth", "4", "--size", "100",
               "--size-max", "70000", "--calls", "2000", "--verify", "--json", "--seed", "9"});
    ASSERT_EQ(run.wait(60), 0) << run.out_text << run.err_text;
    const std::string& j = run.out_text;
    EXPECT_EQ(j.front(), '{');
    EXPECT_EQ(j.find('\n'), j.size() - 1) << "one line";
    EXPECT_NE(j.find("\"calls\":2000,"), std::string::npos) << j;
    EXPECT_NE(j.find("\"errors\":0,"), std::string::npos) << j;
    EXPECT_NE(j.find("\"p99_us\":"), std::string::npos) << j;

    // Open loop: the JSON says so; without --depth, 64 slots per connection.
    child open({"run", "--target", target, "--connections", "2", "--size", "8", "--calls", "50",
                "--rate", "1000", "--json", "--quiet"});
    ASSERT_EQ(open.wait(30), 0) << open.out_text << open.err_text;
    EXPECT_NE(open.out_text.find("\"mode\":\"open\",\"rate\":1000.0,\"calls\":50,"),
              std::string::npos)
        << open.out_text;
    EXPECT_NE(open.out_text.find("\"depth\":64,"), std::string::npos) << open.out_text;
    EXPECT_NE(open.out_text.find("\"histogram\":{\"unit\":\"ns\",\"count\":50,"), std::string::npos)
        << open.out_text;

    child human({"run", "--target", target, "--connections", "2", "--depth", "2", "--size", "8",
                 "--duration", "0.3", "--proc", "callback", "--reconnect"});
    ASSERT_EQ(human.wait(30), 0) << human.out_text << human.err_text;
    EXPECT_NE(human.out_text.find("ops/s"), std::string::npos) << human.out_text;
    EXPECT_NE(human.out_text.find("p99"), std::string::npos) << human.out_text;
    // --reconnect reaches the run; a server that closes nothing costs no reconnect.
    EXPECT_NE(human.out_text.find(" reconnect\n"), std::string::npos) << human.out_text;
    EXPECT_NE(human.out_text.find("connects   2 (0 reconnects); server closes: 0 between calls, "
                                  "0 with calls in flight"),
              std::string::npos)
        << human.out_text;

    ASSERT_EQ(::kill(srv.pid, SIGTERM), 0);
    EXPECT_EQ(srv.wait(10), 0) << srv.err_text;
    EXPECT_NE(srv.out_text.find("calls="), std::string::npos) << srv.out_text;
}

TEST(bench_cli, bad_options_are_one_line_and_nonzero) {
    for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
             {"run", "--target", "127.0.0.1:1", "--connections", "2", "--size", "1"},  // no bound
             {"run", "--target", "nowhere", "--calls", "1"},
             {"run", "--target", "127.0.0.1:1", "--calls", "1", "--proc", "bogus"},
             {"run", "--target", "127.0.0.1:1", "--calls", "1", "--rate", "0"},
             {"serve"},
             {"frobnicate"},
             {"nfs", "--target", "127.0.0.1:1", "--mount-port", "1"},  // no bound
             {"nfs", "--target", "127.0.0.1:1", "--calls", "1", "--mix", "read=1,rename=2"},
             {"nfs", "--target", "127.0.0.1:1", "--calls", "1", "--pattern", "zigzag"},
             {"nfs", "--target", "127.0.0.1:1", "--calls", "1", "--size", "4096", "--file-size",
              "100"}}) {
        child c(args);
        int st = c.wait(10);
        EXPECT_NE(st, 0) << args[0];
        EXPECT_NE(st, -1);
        EXPECT_EQ(c.err_text.find('\n'), c.err_text.size() - 1) << c.err_text;
    }
}

TEST(bench_cli, closed_port_exits_nonzero_quickly) {
    auto t0 = clock_type::now();
    // Port 1 on loopback: nothing listens there in a test environment.
    child c({"run", "--target", "127.0.0.1:1", "--connections", "3", "--calls", "10", "--json"});
    int st = c.wait(10);
    EXPECT_NE(st, 0);
    EXPECT_NE(st, -1);
    EXPECT_LT(std::chrono::duration<double>(clock_type::now() - t0).count(), 5.0);
    EXPECT_NE(c.out_text.find("\"connect_errors\":3"), std::string::npos) << c.out_text;
}

TEST(bench_cli, nfs_without_a_server_says_where_it_stopped) {
    // MOUNT's port closed: the set-up fails before any call, status 1.
    child c({"nfs", "--target", "127.0.0.1:1", "--mount-port", "1", "--calls", "10"});
    int st = c.wait(10);
    EXPECT_EQ(st, 1);
    EXPECT_NE(c.err_text.find("rpcgate-bench nfs: MOUNT connection: connect"), std::string::npos)
        << c.err_text;
}

}  // namespace
