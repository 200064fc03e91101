// A child process for tests: started with its stdout on a pipe, waited on
// with deadlines, killed (and reaped) when the test ends.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace rpcgate::testing {

class child_process {
  public:
    explicit child_process(std::vector<std::string> argv) : argv_(std::move(argv)) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC) != 0) return;
        pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ == 0) {
            // If the test process dies (a crash, an abort), the child must die
            // too: an orphan holding the test's stdout would stall ctest.
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);
            ::dup2(p[1], 1);
            std::vector<char*> args;
            for (auto& a : argv_) args.push_back(a.data());
            args.push_back(nullptr);
            ::execv(args[0], args.data());
            ::_exit(127);
        }
        ::close(p[1]);
        out_ = p[0];
    }
    ~child_process() {
        kill(SIGKILL);
        if (out_ >= 0) ::close(out_);
    }
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    pid_t pid() const { return pid_; }

    // Reads stdout until a line starting with `prefix` arrives; returns the rest
    // of that line, or nullopt at EOF or after `ms`.
    std::optional<std::string> wait_line(const std::string& prefix, int ms = 10000) {
        auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
        for (;;) {
            size_t nl;
            while ((nl = buf_.find('\n')) != std::string::npos) {
                std::string line = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
            }
            int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(
                               end - std::chrono::steady_clock::now())
                               .count());
            if (left <= 0) return std::nullopt;
            pollfd pfd{out_, POLLIN, 0};
            if (::poll(&pfd, 1, left) <= 0) continue;
            char tmp[4096];
            ssize_t n = ::read(out_, tmp, sizeof tmp);
            if (n <= 0) return std::nullopt;
            buf_.append(tmp, size_t(n));
        }
    }
    // `READY port=N` -> N, or 0.
    int wait_ready(int ms = 10000) {
        auto rest = wait_line("READY port=", ms);
        return rest ? std::atoi(rest->c_str()) : 0;
    }
    // Exit status (or 128+signal), or nullopt if still running after `ms`.
    std::optional<int> wait_exit(int ms) {
        auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
        while (pid_ > 0) {
            int st = 0;
            pid_t r = ::waitpid(pid_, &st, WNOHANG);
            if (r == pid_) {
                pid_ = -1;
                status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                return status_;
            }
            if (std::chrono::steady_clock::now() >= end) return std::nullopt;
            ::usleep(2000);
        }
        return status_;
    }
    void kill(int sig) {
        if (pid_ <= 0) return;
        ::kill(pid_, sig);
        if (sig == SIGKILL) wait_exit(10000);
    }
    // Everything the child printed that was not consumed by wait_line.
    std::string drain_output() {
        char tmp[4096];
        ::fcntl(out_, F_SETFL, O_NONBLOCK);
        ssize_t n;
        while ((n = ::read(out_, tmp, sizeof tmp)) > 0) buf_.append(tmp, size_t(n));
        return buf_;
    }

  private:
    std::vector<std::string> argv_;
    pid_t pid_ = -1;
    int out_ = -1;
    int status_ = -1;
    std::string buf_;
};

// tests/tls/make_certs.sh run into a fresh temporary directory: its path, or
// "" when the script failed.
inline std::string make_fixture_certs(const char* make_certs) {
    char tmpl[] = "/tmp/rpcgate-certs.XXXXXX";
    if (!::mkdtemp(tmpl)) return {};
    child_process mk({"/bin/sh", make_certs, tmpl});
    auto st = mk.wait_exit(60000);
    return st && *st == 0 ? std::string(tmpl) : std::string();
}

}  // namespace rpcgate::testing
