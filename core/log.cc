#include "core/log.h"

#include <fcntl.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace rpcgate::core {

std::atomic<int> g_log_levels[static_cast<int>(log_subsys::count_)] = {
    {int(log_level::info)}, {int(log_level::info)}, {int(log_level::info)},
    {int(log_level::info)}, {int(log_level::info)}, {int(log_level::info)}};

namespace {
std::atomic<int> g_log_fd{2};
std::atomic<int> g_subsys_fd[static_cast<int>(log_subsys::count_)] = {{-1}, {-1}, {-1},
                                                                      {-1}, {-1}, {-1}};

constexpr const char* k_subsys_names[] = {"core", "gw", "tls", "admin", "bench", "audit"};
constexpr const char* k_level_names[] = {"trace", "debug", "info", "warn", "error", "off"};

bool parse_level(std::string_view s, log_level* out) {
    for (int i = 0; i <= int(log_level::off); ++i) {
        if (s == k_level_names[i]) {
            *out = log_level(i);
            return true;
        }
    }
    if (s == "warning") {
        *out = log_level::warn;
        return true;
    }
    return false;
}
}  // namespace

void set_log_level(log_subsys s, log_level l) noexcept {
    g_log_levels[int(s)].store(int(l), std::memory_order_relaxed);
}

void set_log_fd(int fd) noexcept {
    g_log_fd.store(fd, std::memory_order_relaxed);
}

void set_subsys_fd(log_subsys s, int fd) noexcept {
    g_subsys_fd[int(s)].store(fd, std::memory_order_relaxed);
}

bool open_subsys_file(log_subsys s, const std::string& path, std::string* err) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        *err = fmt::format("{}: {}", path, std::strerror(errno));
        return false;
    }
    int old = g_subsys_fd[int(s)].load(std::memory_order_relaxed);
    if (old < 0) {
        set_subsys_fd(s, fd);
        return true;
    }
    // Writers hold the number, not the file: swap the file under the number.
    int rc = ::dup3(fd, old, O_CLOEXEC);
    int e = errno;
    ::close(fd);
    if (rc < 0) {
        *err = fmt::format("{}: dup3: {}", path, std::strerror(e));
        return false;
    }
    return true;
}

bool set_log_levels(std::string_view spec, std::string* err) {
    while (!spec.empty()) {
        size_t comma = spec.find(',');
        std::string_view item = spec.substr(0, comma);
        spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
        size_t eq = item.find('=');
        log_level lvl;
        if (eq == std::string_view::npos) {
            if (!parse_level(item, &lvl)) {
                *err = fmt::format("unknown log level '{}'", item);
                return false;
            }
            for (int i = 0; i < int(log_subsys::count_); ++i) set_log_level(log_subsys(i), lvl);
            continue;
        }
        std::string_view name = item.substr(0, eq);
        if (!parse_level(item.substr(eq + 1), &lvl)) {
            *err = fmt::format("unknown log level '{}'", item.substr(eq + 1));
            return false;
        }
        bool found = false;
        for (int i = 0; i < int(log_subsys::count_); ++i) {
            if (name == k_subsys_names[i]) {
                set_log_level(log_subsys(i), lvl);
                found = true;
            }
        }
        if (!found) {
            *err = fmt::format("unknown log subsystem '{}' (core, gw, tls, admin, bench, audit)",
                               name);
            return false;
        }
    }
    return true;
}

void log_write(log_subsys s, log_level l, std::string_view msg) noexcept {
    timeval tv;
    gettimeofday(&tv, nullptr);
    tm t;
    gmtime_r(&tv.tv_sec, &t);
    char line[4096];
    int n = std::snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ %-5s %-5s ",
                          t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                          long(tv.tv_usec), k_level_names[int(l)], k_subsys_names[int(s)]);
    size_t room = sizeof line - size_t(n) - 1;
    size_t len = msg.size() < room ? msg.size() : room;
    std::memcpy(line + n, msg.data(), len);
    line[n + len] = '\n';
    int fd = g_subsys_fd[int(s)].load(std::memory_order_relaxed);
    if (fd < 0) fd = g_log_fd.load(std::memory_order_relaxed);
    ssize_t r = ::write(fd, line, n + len + 1);
    (void)r;
}

}  // namespace rpcgate::core
