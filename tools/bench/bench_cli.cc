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
#include "tools/bench/handshake_load.h"
#include "tools/bench/load_client.h"
#include "tools/bench/nfs_load.h"

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

// TLS options shared by the subcommands.
struct tls_cli {
    std::string mode = "off";
    std::string ca, cert, key, server_name, ciphersuites;
    std::string max_version, ciphers, groups;

    void add(CLI::App* app, bool server) {
        app->add_option("--cert", cert,
                        server ? "server certificate (PEM)" : "client certificate (PEM, mtls)");
        app->add_option("--key", key, server ? "server key (PEM)" : "client key (PEM, mtls)");
        app->add_option("--ciphersuites", ciphersuites,
                        "TLS 1.3 cipher suites, e.g. TLS_AES_128_GCM_SHA256");
        // NIC TLS offload evaluation: TLS 1.2 and a chosen AEAD on both ends.
        // 1.2 pins the version (apply_ciphers sets min and max): what is
        // measured is TLS 1.2 even against a peer that offers 1.3.
        app->add_option("--tls-max-version", max_version,
                        "1.3 (default) or 1.2 (TLS 1.2 only: both the lowest and the highest "
                        "version; NIC offload evaluation, outside RFC 9289)")
            ->check(CLI::IsMember({"1.2", "1.3"}));
        app->add_option("--ciphers", ciphers,
                        "TLS 1.2 cipher list (OpenSSL names), e.g. ECDHE-ECDSA-AES128-GCM-SHA256");
        app->add_option("--groups", groups, "key exchange groups, e.g. X25519 or P-256:P-384");
        if (server) return;
        app->add_option("--ca", ca, "CA bundle to verify the server (default: no check)");
        app->add_option("--server-name", server_name, "name to verify and send as SNI");
    }
    tls::client_options client(const std::string& target_host) const {
        tls::client_options o;
        o.ca_file = ca;
        o.cert_file = cert;
        o.key_file = key;
        o.server_name = server_name.empty() ? target_host : server_name;
        apply_ciphers(&o.min_version, &o.ciphers);
        return o;
    }
    void apply_ciphers(int* min_version, tls::cipher_options* c) const {
        if (max_version == "1.2") {
            *min_version = TLS1_2_VERSION;
            c->max_version = TLS1_2_VERSION;
        }
        c->cipher_list = ciphers;
        c->groups = groups;
    }
};

// The host part of ADDR:PORT, as typed (for SNI and name checks).
std::string host_of(const std::string& target) {
    size_t colon = target.rfind(':');
    std::string h = colon == std::string::npos ? "" : target.substr(0, colon);
    if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
    return h.empty() ? "127.0.0.1" : h;
}

// SIGINT/SIGTERM set g_stop while installed.
struct stop_on_signal {
    struct sigaction old_int {
    }, old_term{};
    stop_on_signal() {
        g_stop.store(false);
        struct sigaction sa {};
        sa.sa_handler = on_stop_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
    }
    ~stop_on_signal() {
        sigaction(SIGINT, &old_int, nullptr);
        sigaction(SIGTERM, &old_term, nullptr);
    }
};

int handshake(handshake_options& opt, const std::string& target, bool baseline, bool json,
              const tls_cli& t) {
    if (!baseline) {
        if (target.empty()) return bad_option("handshake needs --target or --baseline");
        socket_address a;
        std::string err;
        if (!parse_address(target, false, &a, &err)) return bad_option(err);
        opt.host = host_of(target);
        opt.port = a.port();
        if (!client::parse_tls_mode(t.mode, &opt.mode) || opt.mode == client::tls_mode::off)
            return bad_option("handshake needs --tls starttls or --tls implicit");
    } else if (t.cert.empty() || t.key.empty()) {
        return bad_option("--baseline needs --cert and --key (the server side's)");
    }
    opt.tls = t.client(baseline ? "localhost" : opt.host);
    if (baseline) {
        // --cert/--key are the in-memory server's; the client side has none.
        opt.server_cert = t.cert;
        opt.server_key = t.key;
        opt.tls.cert_file.clear();
        opt.tls.key_file.clear();
    }
    opt.ciphersuites = t.ciphersuites;
    std::string err;
    stop_on_signal sig;
    handshake_report r =
        baseline ? run_baseline(opt, &err, &g_stop) : run_handshakes(opt, &err, &g_stop);
    if (!err.empty()) {
        print_line(stderr, "rpcgate-bench handshake: " + err);
        return 1;
    }
    print_line(stdout, json ? format_json(r) : format_human(r));
    return r.exit_status();
}

int serve(const std::string& listen, unsigned shards, const tls_cli& tls_opt) {
    serve_options opt;
    std::string err;
    if (!parse_address(listen, true, &opt.listen, &err)) return bad_option(err);
    std::unique_ptr<tls::context> tls_ctx;
    if (tls_opt.mode == "implicit") {
        if (tls_opt.cert.empty() || tls_opt.key.empty())
            return bad_option("serve --tls implicit needs --cert and --key");
        tls::server_options so;
        so.cert_file = tls_opt.cert;
        so.key_file = tls_opt.key;
        tls_opt.apply_ciphers(&so.min_version, &so.ciphers);
        tls_ctx = tls::context::make_server(so, &err);
        if (!tls_ctx) {
            print_line(stderr, "rpcgate-bench serve: " + err);
            return 1;
        }
        if (!tls_opt.ciphersuites.empty() &&
            !client::set_tls13_ciphersuites(*tls_ctx, tls_opt.ciphersuites, &err)) {
            print_line(stderr, "rpcgate-bench serve: " + err);
            return 1;
        }
        opt.tls = tls_ctx.get();
    } else if (tls_opt.mode != "off") {
        return bad_option("serve supports --tls off or implicit");
    }
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

// Runs `load(&err)` (SIGINT/SIGTERM end it early, with its report), prints
// the report (or the reason it could not start) and returns the exit status.
template <typename Load>
int report_run(const char* name, bool json, Load&& load) {
    std::string err;
    decltype(load(&err)) r;
    {
        stop_on_signal sig;
        r = load(&err);
    }
    if (!err.empty()) {
        print_line(stderr, fmt::format("rpcgate-bench {}: {}", name, err));
        return 1;
    }
    print_line(stdout, json ? format_json(r) : format_human(r));
    if (r.calls == 0) print_line(stderr, fmt::format("rpcgate-bench {}: no call completed", name));
    return r.exit_status();
}

int run(run_options& opt, const std::string& target, bool json, const tls_cli& t) {
    std::string err;
    if (opt.rate < 0) return bad_option("--rate must be positive");
    if (!parse_address(target, false, &opt.target, &err)) return bad_option(err);
    if (!client::parse_tls_mode(t.mode, &opt.tls)) return bad_option("bad --tls " + t.mode);
    if (t.cert.empty() != t.key.empty()) return bad_option("--cert and --key go together");
    opt.tls_options = t.client(host_of(target));
    opt.ciphersuites = t.ciphersuites;
    if (opt.duration_s <= 0 && opt.calls == 0)
        return bad_option("run needs --duration SECONDS or --calls COUNT");
    if (opt.size_max && opt.size_max < opt.size)
        return bad_option("--size-max must be at least --size");
    return report_run("run", json, [&](std::string* e) { return run_load(opt, e, &g_stop); });
}

// Options of `nfs` that need checking or converting after the parse.
struct nfs_cli {
    std::string target, mix = "read=100", pattern = "seq", stable = "unstable", mount_tls;
    std::string version = "3";
    bool json = false, quiet = false;
    double timeout_s = 10;
    tls_cli tls;
};

int nfs(nfs_options& opt, const nfs_cli& c) {
    socket_address a;
    std::string err;
    if (!parse_address(c.target, false, &a, &err)) return bad_option(err);
    opt.host = host_of(c.target);
    opt.port = a.port();
    if (!parse_nfs_mix(c.mix, opt.mix, &err)) return bad_option(err);
    if (!client::parse_tls_mode(c.tls.mode, &opt.tls)) return bad_option("bad --tls " + c.tls.mode);
    if (!c.mount_tls.empty()) {
        client::tls_mode m;
        if (!client::parse_tls_mode(c.mount_tls, &m)) return bad_option("bad --mount-tls");
        opt.mount_tls = m;
    }
    if (c.tls.cert.empty() != c.tls.key.empty()) return bad_option("--cert and --key go together");
    if (opt.duration_s <= 0 && opt.calls == 0)
        return bad_option("nfs needs --duration SECONDS or --calls COUNT");
    if (opt.file_size && opt.file_size < opt.size)
        return bad_option("--file-size must be at least --size");
    opt.tls_options = c.tls.client(opt.host);
    opt.ciphersuites = c.tls.ciphersuites;
    opt.random = c.pattern == "rand";
    opt.v4 = c.version == "4.1";
    opt.stable = c.stable == "file_sync"   ? nfs3::stable_how::file_sync
                 : c.stable == "data_sync" ? nfs3::stable_how::data_sync
                                           : nfs3::stable_how::unstable;
    opt.timeout_ms = uint32_t(c.timeout_s * 1000);
    if (c.quiet) opt.progress_interval_s = 0;
    return report_run("nfs", c.json, [&](std::string* e) { return run_nfs(opt, e, &g_stop); });
}

CLI::App* add_nfs(CLI::App& app, nfs_options& opt, nfs_cli& c) {
    CLI::App* n = app.add_subcommand("nfs", "drive NFSv3 READ/WRITE/GETATTR/LOOKUP load");
    n->add_option("--target", c.target, "ADDR:PORT of the NFS server or gateway")->required();
    n->add_option("--nfs-version", c.version,
                  "3 (default; MOUNT, CREATE when missing) or 4.1 (sessions; the file must exist)")
        ->check(CLI::IsMember({"3", "4.1"}));
    n->add_option("--mount-port", opt.mount_port,
                  "MOUNT v3 port (default: portmap GETPORT on port 111)");
    n->add_option("--export", opt.export_path, "export path to MOUNT (default /)");
    n->add_option("--file", opt.file, "test file in the export (created when missing)");
    n->add_option("--file-size", opt.file_size,
                  "bytes of the file that offsets cover (default: its size, or 16 MiB)");
    n->add_option("--size", opt.size, "bytes per READ and WRITE (default 4096)")
        ->check(CLI::Range(1u, 1024u * 1024u));
    n->add_option("--pattern", c.pattern, "offsets: seq (default) or rand")
        ->check(CLI::IsMember({"seq", "rand"}));
    n->add_option("--mix", c.mix,
                  "weights of read, write, getattr, lookup, null (default read=100)");
    n->add_option("--connections", opt.connections, "connections, one thread each")
        ->check(CLI::Range(1u, 4096u));
    n->add_option("--depth", opt.depth, "calls in flight per connection")
        ->check(CLI::Range(1u, 1024u));
    n->add_option("--duration", opt.duration_s, "seconds to run")->check(CLI::Range(0.0, 1e6));
    n->add_option("--calls", opt.calls, "calls to make in all");
    n->add_flag("--verify", opt.verify,
                "WRITEs carry the offset's pattern; every READ is checked against it");
    n->add_flag("--fill", opt.fill, "write the pattern over the file before the run");
    n->add_option("--stable", c.stable, "WRITE stability: unstable (default), data_sync, file_sync")
        ->check(CLI::IsMember({"unstable", "data_sync", "file_sync"}));
    n->add_option("--uid", opt.uid, "AUTH_SYS uid (default 0)");
    n->add_option("--gid", opt.gid, "AUTH_SYS gid (default 0)");
    n->add_option("--seed", opt.seed, "seed for the mix and random offsets");
    n->add_option("--timeout", c.timeout_s, "seconds before an unanswered call is an error")
        ->check(CLI::Range(0.001, 3600.0));
    n->add_flag("--json", c.json, "print one JSON object: figures, per-kind latency, histograms");
    n->add_option("--progress", opt.progress_interval_s,
                  "seconds between progress lines on stderr, on runs over 3 s (0: none)");
    n->add_flag("--quiet", c.quiet, "no progress lines");
    n->add_option("--tls", c.tls.mode, "off, starttls (RFC 9289 probe, then TLS 1.3) or implicit")
        ->check(CLI::IsMember({"off", "starttls", "implicit"}));
    n->add_option("--mount-tls", c.mount_tls,
                  "off, starttls or implicit for the MOUNT connection (default: as --tls)")
        ->check(CLI::IsMember({"off", "starttls", "implicit"}));
    c.tls.add(n, false);
    return n;
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
    tls_cli srv_tls;
    srv->add_option("--tls", srv_tls.mode, "off, or implicit (TLS from the first byte)")
        ->check(CLI::IsMember({"off", "implicit"}));
    srv_tls.add(srv, true);

    CLI::App* cl = app.add_subcommand("run", "drive RPC load against a server");
    run_options opt;
    std::string target, proc = "echo";
    tls_cli run_tls;
    bool json = false;
    double timeout_s = 10;
    cl->add_option("--target", target, "ADDR:PORT of the server")->required();
    cl->add_option("--connections", opt.connections, "connections")->check(CLI::Range(1u, 100000u));
    CLI::Option* depth_opt =
        cl->add_option("--depth", opt.depth,
                       "calls in flight per connection (with --rate: the most, default 64)")
            ->check(CLI::Range(1u, 65536u));
    cl->add_option("--rate", opt.rate,
                   "open loop: calls per second over all connections, latency from the "
                   "intended send time (default: closed loop)")
        ->check(CLI::Range(0.001, 1e9));
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
    cl->add_flag("--reconnect", opt.reconnect,
                 "reopen a connection the server closes mid-run (a proxy reload): its calls in "
                 "flight count as lost; connects and closes are counted (default: it ends)");
    cl->add_flag("--json", json,
                 "print one JSON object: summary figures and the latency histogram");
    cl->add_option("--seed", opt.seed, "seed for payload bytes and sizes");
    cl->add_option("--timeout", timeout_s, "seconds before an unanswered call is an error")
        ->check(CLI::Range(0.001, 3600.0));
    cl->add_option("--program", opt.program, "RPC program number (tests refusals)");
    cl->add_option("--prog-version", opt.version, "RPC program version");
    bool quiet = false;
    cl->add_option("--progress", opt.progress_interval_s,
                   "seconds between progress lines on stderr, on runs over 3 s (0: none)");
    cl->add_flag("--quiet", quiet, "no progress lines");
    cl->add_option("--tls", run_tls.mode,
                   "off, starttls (RFC 9289 probe, then TLS 1.3) or implicit")
        ->check(CLI::IsMember({"off", "starttls", "implicit"}));
    run_tls.add(cl, false);

    CLI::App* hs = app.add_subcommand("handshake",
                                      "handshake rate: connect, TLS, one NULL call, close, repeat");
    handshake_options hopt;
    std::string hs_target;
    bool hs_baseline = false, hs_json = false;
    tls_cli hs_tls;
    hs_tls.mode = "starttls";
    hs->add_option("--target", hs_target, "ADDR:PORT of the server");
    hs->add_flag("--baseline", hs_baseline,
                 "no server: two in-memory OpenSSL sessions in this process (--cert/--key are "
                 "the server side's)");
    hs->add_option("--tls", hs_tls.mode, "starttls or implicit")
        ->check(CLI::IsMember({"starttls", "implicit"}));
    hs->add_option("--connections", hopt.connections, "client threads")
        ->check(CLI::Range(1u, 4096u));
    hs->add_option("--duration", hopt.duration_s, "seconds to run")->check(CLI::Range(0.01, 1e6));
    hs->add_option("--timeout", hopt.timeout_s, "seconds per stage")
        ->check(CLI::Range(0.01, 3600.0));
    hs->add_option("--program", hopt.program, "RPC program to probe and call");
    hs->add_option("--prog-version", hopt.version, "its version");
    hs->add_flag("--json", hs_json, "print one JSON object");
    hs_tls.add(hs, false);

    nfs_options nopt;
    nfs_cli ncli;
    CLI::App* nfs_app = add_nfs(app, nopt, ncli);

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

    if (srv->parsed()) return serve(listen, shards, srv_tls);
    if (nfs_app->parsed()) return nfs(nopt, ncli);
    if (hs->parsed()) return handshake(hopt, hs_target, hs_baseline, hs_json, hs_tls);
    opt.proc = proc == "null"       ? bench_proc::null
               : proc == "callback" ? bench_proc::callback
                                    : bench_proc::echo;
    opt.timeout_ms = uint32_t(timeout_s * 1000);
    if (quiet) opt.progress_interval_s = 0;
    // Open loop: slots are only a bound, and one per connection would make the
    // client fall behind at the first slow reply.
    if (opt.rate > 0 && depth_opt->count() == 0) opt.depth = 64;
    return run(opt, target, json, run_tls);
}

}  // namespace rpcgate::bench
