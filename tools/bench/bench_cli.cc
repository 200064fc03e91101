#include "tools/bench/bench_cli.h"

#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>

#include "core/log.h"
#include "rpc/record.h"
#include "tools/bench/echo_server.h"
#include "tools/bench/load_client.h"

namespace rpcgate::bench {
namespace {

// Largest payload: an NFS-sized 4 MiB, which with its headers still fits the
// default record cap (rpc::default_max_record) of every rpcgate peer.
constexpr size_t k_max_payload = 4 * 1024 * 1024;

std::atomic<bool> g_stop{false};

void on_stop_signal(int) {
    g_stop.store(true);
}

void print_line(FILE* f, const std::string& s) {
    std::fputs(s.c_str(), f);
    std::fputc('\n', f);
    std::fflush(f);
}

int bad_option(const std::string& what) {
    print_line(stderr, "rpcgate-bench: " + what + " (see --help)");
    return 2;
}

int serve(const std::string& listen, unsigned shards) {
    serve_options opt;
    std::string err;
    if (!parse_address(listen, true, &opt.listen, &err)) return bad_option(err);
    opt.shards = shards ? shards : std::max(1u, std::thread::hardware_concurrency());
    // Shard threads inherit the mask: the signals come to sigwait below only.
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    echo_server srv(opt);
    err = srv.start();
    if (!err.empty()) {
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        print_line(stderr, "rpcgate-bench serve: " + err);
        return 1;
    }
    RPCGATE_LOG(bench, info, "serve: listening on port {} with {} shard(s)", srv.port(),
                opt.shards);
    print_line(stdout, "READY port=" + std::to_string(srv.port()));
    int sig = 0;
    sigwait(&set, &sig);
    srv.stop();
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    serve_totals t = srv.totals();
    print_line(stdout, fmt::format("rpcgate-bench serve: calls={} null={} echo={} callback={} "
                                   "refused={} garbage_closes={} connections={} payload_bytes={}",
                                   t.calls, t.null_calls, t.echo_calls, t.callback_calls, t.refused,
                                   t.garbage_closes, t.connections, t.payload_bytes));
    return 0;
}

int run(run_options& opt, const std::string& target, bool json) {
    std::string err;
    if (!parse_address(target, false, &opt.target, &err)) return bad_option(err);
    if (opt.duration_s <= 0 && opt.calls == 0)
        return bad_option("run needs --duration SECONDS or --calls COUNT");
    if (opt.size_max && opt.size_max < opt.size)
        return bad_option("--size-max must be at least --size");
    g_stop.store(false);
    struct sigaction sa {
    }, old_int{}, old_term{};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    run_report r = run_load(opt, &err, &g_stop);
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    if (!err.empty()) {
        print_line(stderr, "rpcgate-bench run: " + err);
        return 1;
    }
    print_line(stdout, json ? format_json(r) : format_human(r));
    if (r.calls == 0) print_line(stderr, "rpcgate-bench run: no call completed");
    return r.exit_status();
}

}  // namespace

int bench_main(int argc, char** argv) {
    CLI::App app{"rpcgate-bench: ONC RPC load generator and echo server"};
    app.require_subcommand(1);
    std::string log_spec = "info";
    app.add_option("--log-level", log_spec, "e.g. info, or bench=debug,core=warn");

    CLI::App* srv = app.add_subcommand("serve", "echo RPC server (program 0x20000001 v1)");
    std::string listen;
    unsigned shards = 0;
    srv->add_option("--listen", listen, "ADDR:PORT to listen on (port 0: any)")->required();
    srv->add_option("--shards", shards, "shard threads (default: one per core)")
        ->check(CLI::Range(1u, 1024u));

    CLI::App* cl = app.add_subcommand("run", "drive RPC load against a server");
    run_options opt;
    std::string target, proc = "echo", tls = "off";
    bool json = false;
    double timeout_s = 10;
    cl->add_option("--target", target, "ADDR:PORT of the server")->required();
    cl->add_option("--connections", opt.connections, "connections")->check(CLI::Range(1u, 100000u));
    cl->add_option("--depth", opt.depth, "calls in flight per connection")
        ->check(CLI::Range(1u, 65536u));
    cl->add_option("--size", opt.size, "payload bytes per call")
        ->check(CLI::Range(size_t{0}, k_max_payload));
    cl->add_option("--size-max", opt.size_max, "random payload sizes in [size, size-max]")
        ->check(CLI::Range(size_t{0}, k_max_payload));
    cl->add_option("--duration", opt.duration_s, "seconds to run")->check(CLI::Range(0.0, 1e6));
    cl->add_option("--calls", opt.calls, "calls to make in all");
    cl->add_option("--proc", proc, "echo, null or callback")
        ->check(CLI::IsMember({"echo", "null", "callback"}));
    cl->add_option("--threads", opt.threads, "shard threads (default: min(cores, connections))")
        ->check(CLI::Range(1u, 1024u));
    cl->add_flag("--verify", opt.verify, "compare every reply byte with what was sent");
    cl->add_flag("--json", json, "print one JSON object");
    cl->add_option("--seed", opt.seed, "seed for payload bytes and sizes");
    cl->add_option("--timeout", timeout_s, "seconds before an unanswered call is an error")
        ->check(CLI::Range(0.001, 3600.0));
    cl->add_option("--program", opt.program, "RPC program number (tests refusals)");
    cl->add_option("--prog-version", opt.version, "RPC program version");
    cl->add_option("--progress", opt.progress_interval_s,
                   "seconds between progress lines (0: none)");
    cl->add_option("--tls", tls, "off (starttls and implicit are not implemented yet)")
        ->check(CLI::IsMember({"off", "starttls", "implicit"}));

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return bad_option(e.what());
    }
    std::string err;
    if (!core::set_log_levels(log_spec, &err)) return bad_option("--log-level: " + err);

    if (srv->parsed()) return serve(listen, shards);
    if (tls != "off") return bad_option("--tls " + tls + " is not implemented yet");
    opt.proc = proc == "null"       ? bench_proc::null
               : proc == "callback" ? bench_proc::callback
                                    : bench_proc::echo;
    opt.timeout_ms = uint32_t(timeout_s * 1000);
    return run(opt, target, json);
}

}  // namespace rpcgate::bench
