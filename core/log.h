// Logging: leveled, one line per event, one write(2) per line.
//
// Every subsystem has its own level (`core`, `gw`, `tls`, `admin`, ...), set
// with `--log-level info` or `--log-level tls=debug,core=warn`. Lines carry
// the connection ID when there is one. Any thread may log; a line is formatted
// into a local buffer and written with a single write(2), so lines from
// different shards never interleave. Nothing per record is logged above debug.
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <string>
#include <string_view>

namespace rpcgate::core {

enum class log_level : int { trace = 0, debug, info, warn, error, off };

enum class log_subsys : int { core = 0, gw, tls, admin, bench, audit, count_ };

// Parses "info" or "tls=debug,core=warn"; returns false with `err` set on bad input.
bool set_log_levels(std::string_view spec, std::string* err);
void set_log_level(log_subsys s, log_level l) noexcept;
// Sends log lines to this fd instead of stderr (e.g. a file).
void set_log_fd(int fd) noexcept;
// Sends the lines of one subsystem (e.g. audit) to their own fd; -1: back to
// the common one.
void set_subsys_fd(log_subsys s, int fd) noexcept;
// Sends the lines of one subsystem to the file `path` (appended, created 0640),
// or, when they already go to a file opened here, reopens `path` in its place:
// what logrotate needs after it renamed the file (rpcgate reopens the audit log
// on SIGHUP). The new file takes over the old descriptor's number (dup3), so a
// line being written on another thread at that moment lands in one file or the
// other, never on a closed or reused descriptor. On failure the lines keep
// going where they went, and `err` says why. Called by one thread at a time.
bool open_subsys_file(log_subsys s, const std::string& path, std::string* err);

extern std::atomic<int> g_log_levels[static_cast<int>(log_subsys::count_)];

inline bool log_enabled(log_subsys s, log_level l) noexcept {
    return static_cast<int>(l) >= g_log_levels[static_cast<int>(s)].load(std::memory_order_relaxed);
}

void log_write(log_subsys s, log_level l, std::string_view msg) noexcept;

template <typename... A>
void log(log_subsys s, log_level l, fmt::format_string<A...> f, A&&... a) {
    if (!log_enabled(s, l)) return;
    fmt::memory_buffer buf;
    fmt::format_to(std::back_inserter(buf), f, std::forward<A>(a)...);
    log_write(s, l, std::string_view(buf.data(), buf.size()));
}

}  // namespace rpcgate::core

#define RPCGATE_LOG(subsys, level, ...)                                           \
    do {                                                                          \
        if (::rpcgate::core::log_enabled(::rpcgate::core::log_subsys::subsys,     \
                                         ::rpcgate::core::log_level::level))      \
            ::rpcgate::core::log(::rpcgate::core::log_subsys::subsys,             \
                                 ::rpcgate::core::log_level::level, __VA_ARGS__); \
    } while (0)
