// rpcgate: the gateway daemon.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "core/log.h"
#include "core/memory.h"
#include "core/sd_notify.h"
#include "gateway/config.h"
#include "gateway/config_check.h"
#include "gateway/gateway.h"
#include "rpc/portmap.h"

using namespace rpcgate;

int main(int argc, char** argv) {
    // Before any thread: large records are not given back to the kernel per call.
    core::keep_record_memory();
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
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    ::signal(SIGPIPE, SIG_IGN);

    gw::gateway gateway(cfg);
    err = gateway.start();
    if (!err.empty()) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 1;
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
    core::sd_notify("READY=1");
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
        RPCGATE_LOG(gw, info, "{}: stopping; finishing replies in flight (up to {} ms)",
                    strsignal(sig), cfg.drain_timeout_ms);
        break;
    }
    core::sd_notify("STOPPING=1");
    gateway.stop();
    gateway.wait();
    RPCGATE_LOG(gw, info, "stopped: {}", gateway.totals().describe());
    return 0;
}
