// rpcgate: the gateway daemon.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "core/log.h"
#include "core/memory.h"
#include "core/sd_notify.h"
#include "gateway/config.h"
#include "gateway/config_check.h"
#include "gateway/gateway.h"
#include "gateway/upgrade.h"
#include "rpc/portmap.h"

using namespace rpcgate;

namespace {

// The binary this process was started from, for SIGUSR2: read now, while
// /proc/self/exe still names it (a package upgrade replaces the file).
std::string own_binary() {
    char buf[4096];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return "/proc/self/exe";
    return std::string(buf, size_t(n));
}

}  // namespace

int main(int argc, char** argv) {
    // Before any thread: large records are not given back to the kernel per call.
    core::keep_record_memory();
    std::string exe = own_binary();
    std::vector<std::string> args(argv, argv + argc);
    gw::gateway_config cfg;
    int rc = gw::parse_command_line(argc, argv, &cfg);
    if (rc >= 0) return rc;
    std::string err;
    if (!core::set_log_levels(cfg.log_level, &err)) {
        std::fprintf(stderr, "rpcgate: --log-level: %s\n", err.c_str());
        return 2;
    }
    if (cfg.check_only) {
        // Before anything is opened for writing: a check writes nothing.
        gw::check_report r = gw::check_config(cfg, std::time(nullptr));
        for (const auto& n : r.notes) std::printf("rpcgate: %s\n", n.c_str());
        for (const auto& w : r.warnings) std::fprintf(stderr, "rpcgate: warning: %s\n", w.c_str());
        for (const auto& e : r.errors) std::fprintf(stderr, "rpcgate: error: %s\n", e.c_str());
        if (!r.ok()) {
            std::fprintf(stderr, "rpcgate: configuration NOT OK: %zu error(s)\n", r.errors.size());
            return 2;
        }
        size_t upstream = 0;
        for (const auto& b : cfg.backends) upstream += b.tls.mode != gw::tls_policy::off;
        std::printf(
            "rpcgate: configuration OK: %zu listener(s), %zu backend(s), %u shard(s), "
            "tls %s, upstream tls on %zu backend(s), %zu warning(s)\n",
            cfg.listen.size() + cfg.implicit_tls.size(), cfg.backends.size(), cfg.shards,
            gw::tls_policy_name(cfg.tls), upstream, r.warnings.size());
        return 0;
    }
    if (!cfg.audit_log.empty() &&
        !core::open_subsys_file(core::log_subsys::audit, cfg.audit_log, &err)) {
        std::fprintf(stderr, "rpcgate: --audit-log %s\n", err.c_str());
        return 2;
    }
    // One fd per client and one per backend link: lift the soft fd limit to the
    // hard one, as daemons do, and say so if it is still low.
    rlimit nofile{};
    if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &nofile);
    }
    // Each client can hold a backend connection per route: keep --max-connections
    // within what the fd limit allows, so accepts never fail with EMFILE.
    if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
        uint64_t per_client = 1 + std::max<size_t>(1, cfg.backends.size());
        uint64_t allowed = nofile.rlim_cur > 128 ? (nofile.rlim_cur - 128) / per_client : 1;
        if (cfg.max_connections > allowed) {
            RPCGATE_LOG(gw, info, "max connections {} (fd limit {}, {} fds per client)", allowed,
                        uint64_t(nofile.rlim_cur), per_client);
            cfg.max_connections = uint32_t(allowed);
        }
    }

    // Signals are taken synchronously by this thread; the shards never see them.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    ::signal(SIGPIPE, SIG_IGN);

    gw::gateway gateway(cfg);
    // Started by a running rpcgate that hands itself over (upgrade.h): its
    // listening sockets first, then its connections once we run.
    std::unique_ptr<gw::upgrade_child> from_old;
    if (cfg.upgrade_fd >= 0) {
        from_old = std::make_unique<gw::upgrade_child>(cfg.upgrade_fd);
        gw::inherited_listeners inherited;
        gw::upgrade_wire::upgrade_totals totals;
        err = from_old->greet(&inherited, &totals);
        if (!err.empty()) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 1;
        }
        gateway.inherit(std::move(inherited));
        gateway.upgrade_stats().set(totals);
    }
    gateway.set_upgrade_trigger([] {
        ::kill(::getpid(), SIGUSR2);  // the main thread runs it
        return std::string();
    });
    err = gateway.start();
    if (!err.empty()) {
        if (from_old) from_old->refuse(err);
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 1;
    }
    if (from_old) {
        err = from_old->ready(gateway);
        if (!err.empty()) RPCGATE_LOG(gw, error, "upgrade: {}", err);
    }
    std::string routes;
    for (const auto& b : cfg.backends) {
        auto name = rpc::program_name_of(b.prog);
        routes += fmt::format(" {}({})->{}{}", name.empty() ? "prog" : name, b.prog, b.target.text,
                              b.tls.mode == gw::tls_policy::off
                                  ? ""
                                  : fmt::format(" [tls {}]", gw::tls_policy_name(b.tls.mode)));
    }
    RPCGATE_LOG(gw, info, "rpcgate {} listening on port {} ({} shard(s), tls {}); routes:{}",
                RPCGATE_VERSION, gateway.port(), gateway.config().shards,
                gw::tls_policy_name(cfg.tls), routes);

    // systemd: ready now; with a watchdog, a keep-alive only while every shard
    // and the control thread answer a ping (a stuck loop stops the keep-alives).
    // After an upgrade this process is the service's main one now.
    core::sd_notify(from_old ? fmt::format("MAINPID={}\nREADY=1", ::getpid()) : "READY=1");
    std::unique_ptr<gw::upgrade_parent> handed_over;
    uint64_t watchdog_us = core::sd_watchdog_usec();
    for (;;) {
        int sig = 0;
        if (watchdog_us) {
            timespec ts{time_t(watchdog_us / 2 / 1000000), long(watchdog_us / 2 % 1000000 * 1000)};
            sig = sigtimedwait(&set, nullptr, &ts);
            if (sig < 0) {
                if (gateway.ping_all(1000))
                    core::sd_notify("WATCHDOG=1");
                else
                    RPCGATE_LOG(gw, error, "watchdog: a shard or the TLS thread did not answer");
                continue;
            }
        } else if (sigwait(&set, &sig) != 0) {
            continue;
        }
        if (sig == SIGHUP) {
            // logrotate moved the audit log away and sends SIGHUP: a new file.
            if (!cfg.audit_log.empty() &&
                !core::open_subsys_file(core::log_subsys::audit, cfg.audit_log, &err))
                RPCGATE_LOG(gw, error,
                            "SIGHUP: cannot reopen the audit log ({}): it goes on in the old file",
                            err);
            std::string why = gateway.reload();
            if (!why.empty()) RPCGATE_LOG(gw, error, "SIGHUP: {}", why);
            continue;
        }
        if (sig == SIGUSR2) {
            // Hand over to a new binary. The previous hand-off must have
            // ended (its old process's last word, with what it drained).
            if (from_old && !from_old->wait_final(2000)) {
                RPCGATE_LOG(gw, warn,
                            "SIGUSR2: the previous upgrade's old process is still draining; "
                            "try again once it has exited");
                continue;
            }
            if (from_old) from_old->stop();
            auto up = std::make_unique<gw::upgrade_parent>(gateway, cfg, exe, args);
            if (!up->run()) continue;  // failed: logged, counted, still serving
            core::sd_notify(fmt::format("MAINPID={}", up->new_pid()));
            handed_over = std::move(up);
            break;
        }
        RPCGATE_LOG(gw, info, "{}: stopping; finishing replies in flight (up to {} ms)",
                    strsignal(sig), cfg.drain_timeout_ms);
        break;
    }
    if (!handed_over) core::sd_notify("STOPPING=1");  // else the new process is the service
    gateway.stop();
    gateway.wait();
    if (handed_over) {
        uint64_t drained = 0, closed = 0;
        gateway.upgrade_leftovers(&drained, &closed);
        handed_over->finish(drained, closed);
    }
    if (from_old) from_old->stop();
    RPCGATE_LOG(gw, info, "stopped: {}", gateway.totals().describe());
    return 0;
}
