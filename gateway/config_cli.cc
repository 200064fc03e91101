#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <cstdio>

#include "gateway/config.h"
#include "gateway/config_parse.h"

namespace rpcgate::gw {

using detail::parse_port_range;
using detail::parse_size;
using detail::parse_tls_policy;

int parse_command_line(int argc, char** argv, gateway_config* cfg) {
    CLI::App app{
        "rpcgate: an ONC RPC gateway that adds or removes RPC-with-TLS (RFC 9289) "
        "between NFS clients and servers.",
        "rpcgate"};
    app.get_formatter()->column_width(34);
    std::vector<std::string> listen, backends;
    std::string tls, log_level, max_record, max_inflight, buffer_size;
    gateway_config d;  // defaults, for the help text
    bool version = false, no_reserved = false, no_portmap = false, no_call_stats = false;

    app.add_option("--listen,-l", listen, "ADDR:PORT to accept clients on (repeatable)")
        ->type_name("ADDR:PORT");
    app.add_option(
           "--backend,-b", backends,
           "PROG=HOST:PORT[,vers=N,tls=MODE,name=NAME,ca=FILE,cert=FILE,key=FILE]: route program "
           "PROG (number or name: nfs, mount, nlm, nsm, portmap, nfs_acl) to a server, "
           "with its own upstream TLS settings (repeatable)")
        ->type_name("PROG=ADDR:PORT");
    auto* o_config = app.add_option("--config,-c", cfg->config_file,
                                    "TOML file with the same keys; the command line wins");
    auto* o_shards = app.add_option("--shards", cfg->shards, "engine threads (default: cores)");
    auto* o_tls = app.add_option("--tls", tls,
                                 "client-side TLS: off|opportunistic|required|mtls (required: "
                                 "the programs of --require-tls-for only in TLS)");
    std::string tls_for;
    auto* o_tls_for = app.add_option(
        "--require-tls-for", tls_for,
        "with --tls required|mtls, the programs refused in plaintext (AUTH_TOOWEAK): a list of "
        "names or numbers, or 'all' (default nfs,nfs_acl: the Linux client and knfsd protect "
        "only NFS with xprtsec=; portmap, MOUNT, NLM and NSM stay plaintext)");
    std::vector<std::string> implicit;
    app.add_option("--implicit-tls", implicit,
                   "ADDR:PORT where TLS starts with the first byte, no AUTH_TLS probe "
                   "(stunnel-style clients; repeatable)")
        ->type_name("ADDR:PORT");
    auto* o_auto = app.add_flag("--tls-auto", cfg->tls_auto,
                                "on --listen ports, also accept TLS from the first byte (told "
                                "from a record mark by the first byte)");
    auto* o_alpn = app.add_flag("--alpn-strict", cfg->alpn_strict,
                                "refuse TLS clients that offer no ALPN (the Linux kernel "
                                "client offers none)");
    auto* o_hst = app.add_option("--handshake-timeout", cfg->handshake_timeout_ms,
                                 "milliseconds for a TLS handshake (default 10000)");
    auto* o_ktls = app.add_option("--ktls", cfg->ktls,
                                  "kernel TLS for TLS connections (clients and backends): auto "
                                  "(default: when the kernel has it), off, on (socket-BIO "
                                  "handshakes even without kernel support; testing)");
    auto* o_rekey = app.add_option("--tls-rekey-after", cfg->tls_rekey_after,
                                   "records under one TLS key before the gateway sends a "
                                   "KeyUpdate (default: the AEAD's RFC 8446 limit)");
    auto* o_nopad = app.add_flag("--ktls-rx-no-pad", cfg->ktls_rx_no_pad,
                                 "kTLS: the peers do not pad TLS 1.3 records; the kernel may "
                                 "decrypt in place (TLS_RX_EXPECT_NO_PAD, Linux 6.0+)");
    auto* o_recsz = app.add_option("--ktls-tx-record-size", cfg->ktls_tx_record_size,
                                   "kTLS: most plaintext bytes per record sent, 64..16384 "
                                   "(default: the kernel's 16384; needs TLS_TX_MAX_PAYLOAD_LEN)");
    auto* o_minv = app.add_option("--tls-min-version", cfg->tls_min_version,
                                  "1.3 (default, RFC 9289) or 1.2 (evaluation of NIC offload "
                                  "only, outside RFC 9289)");
    auto* o_suites = app.add_option("--tls-ciphersuites", cfg->tls_ciphersuites,
                                    "TLS 1.3 cipher suites in order of preference, e.g. "
                                    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256 (default: "
                                    "AES-128-GCM first where the CPU has AES instructions, else "
                                    "ChaCha20-Poly1305 first; an unknown name is an error)");
    auto* o_records =
        app.add_option("--tls-record-layer", cfg->tls_record_layer,
                       "userspace TLS 1.3 data records: own (default: decrypted from the "
                       "receive buffers and encrypted into the send buffers, no copy besides "
                       "the cipher) or openssl (SSL_read/SSL_write)")
            ->check(CLI::IsMember({"own", "openssl"}));
    auto* o_map = app.add_option("--cert-user-map", cfg->cert_user_map,
                                 "FILE mapping verified client certificates (subject:... or "
                                 "san:...) to 'UID GID[,GID...]'; calls on such a connection "
                                 "carry that AUTH_SYS identity");
    auto* o_cert = app.add_option("--cert", cfg->cert, "server certificate (PEM)");
    auto* o_key = app.add_option("--key", cfg->key, "server private key (PEM)");
    auto* o_ca = app.add_option("--ca", cfg->ca, "CA bundle for client certificates");
    auto* o_crl = app.add_option("--crl", cfg->crl, "certificate revocation list");
    auto* o_admin = app.add_option(
        "--admin", cfg->admin,
        "ADDR:PORT of the admin HTTP endpoint (/metrics, /healthz, /readyz, /connections, "
        "/clients, POST /reload); no authentication: keep it on loopback");
    std::string up_tls;
    auto* o_up = app.add_option("--upstream-tls", up_tls,
                                "RPC-with-TLS towards the backends: off|opportunistic|required|"
                                "mtls (default off; a backend's tls=MODE overrides it)");
    auto* o_up_ca = app.add_option("--upstream-ca", cfg->upstream.ca,
                                   "CA bundle that verifies the backends' certificates");
    auto* o_up_cert = app.add_option("--upstream-cert", cfg->upstream.cert,
                                     "client certificate (PEM) presented to the backends");
    auto* o_up_key =
        app.add_option("--upstream-key", cfg->upstream.key, "key of --upstream-cert (PEM)");
    auto* o_up_name = app.add_option("--upstream-server-name", cfg->upstream.server_name,
                                     "name (or IP) the backends' certificates must carry "
                                     "(default: each backend's host)");
    auto* o_up_alpn = app.add_flag("--upstream-alpn-strict", cfg->upstream.alpn_strict,
                                   "refuse a backend that selects no ALPN (default: 'sunrpc' "
                                   "or none)");
    app.add_flag("--no-reserved-port", no_reserved,
                 "do not bind a source port < 1024 for backend connections (default: bind one "
                 "when the process has CAP_NET_BIND_SERVICE, as knfsd's 'secure' export option "
                 "expects)");
    auto* o_reuse = app.add_flag("--reuse-port", cfg->reuse_port,
                                 "listen even where another process already listens on the "
                                 "port, sharing its clients (SO_REUSEPORT); without it such a "
                                 "start is refused");
    std::string reserved_ports;
    auto* o_rports = app.add_option("--reserved-ports", reserved_ports,
                                    "LOW-HIGH: source ports tried for backend connections, "
                                    "from HIGH down (default 512-1023; below 1024 for knfsd's "
                                    "'secure')");
    app.add_flag("--no-portmap", no_portmap,
                 "do not answer portmap GETPORT locally (forward it if routed)");
    app.add_flag("--no-call-stats", no_call_stats,
                 "do not count and time calls per program, version and procedure (to measure "
                 "what that costs)");
    auto* o_idle = app.add_option("--idle-timeout", cfg->idle_timeout_s,
                                  fmt::format("seconds without traffic before a client is "
                                              "closed, 0 = never (default {})",
                                              d.idle_timeout_s));
    auto* o_ct = app.add_option("--connect-timeout", cfg->connect_timeout_ms,
                                "milliseconds to connect to a backend (default 5000)");
    auto* o_dt = app.add_option("--drain-timeout", cfg->drain_timeout_ms,
                                "milliseconds to finish replies in flight on SIGTERM (default "
                                "5000)");
    auto* o_ubin = app.add_option("--upgrade-binary", cfg->upgrade_binary,
                                  "binary that SIGUSR2 or POST /upgrade hands the process over to "
                                  "(default: the one it was started from)");
    auto* o_uto = app.add_option("--upgrade-timeout", cfg->upgrade_timeout_ms,
                                 "milliseconds the new binary has to start and take the "
                                 "listeners at an upgrade, else the upgrade fails (default "
                                 "10000)");
    auto* o_udt = app.add_option("--upgrade-drain-timeout", cfg->upgrade_drain_timeout_ms,
                                 "milliseconds connections have at an upgrade to reach a record "
                                 "boundary (to move) or an idle point (to close cleanly) "
                                 "(default 10000)");
    // The hand-off socket, given by the running process to the new one.
    app.add_option("--upgrade-fd", cfg->upgrade_fd)->group("");
    auto* o_maxc = app.add_option("--max-connections", cfg->max_connections,
                                  "client connections at most (default 65536)");
    auto* o_mcs = app.add_option("--max-connections-per-source", cfg->max_connections_per_source,
                                 "client connections at most from one address (IPv6: one /64), "
                                 "0 = no limit (default 0)");
    auto* o_hrs = app.add_option("--handshake-rate-per-source", cfg->handshake_rate_per_source,
                                 "TLS handshakes a second at most from one address, 0 = no "
                                 "limit (default 0)");
    auto* o_hbs = app.add_option("--handshake-burst-per-source", cfg->handshake_burst_per_source,
                                 "handshakes one address may start back to back (default: one "
                                 "second's worth of the rate)");
    auto* o_rec = app.add_option("--max-record", max_record,
                                 "largest RPC record accepted, bytes or K/M (default 4M+64K)");
    auto* o_inf = app.add_option("--max-inflight", max_inflight,
                                 "bytes queued per connection and direction before reading the "
                                 "other side pauses (default 8M)");
    auto* o_buf = app.add_option("--buffers", cfg->buffers,
                                 "receive buffers per shard, a power of two (default 512)");
    auto* o_bsz =
        app.add_option("--buffer-size", buffer_size, "bytes per receive buffer (default 32K)");
    auto* o_log = app.add_option("--log-level", log_level,
                                 "LEVEL or SUBSYS=LEVEL,... (trace debug info warn error; "
                                 "subsystems core gw tls admin audit)");
    auto* o_audit = app.add_option("--audit-log", cfg->audit_log,
                                   "FILE for the audit lines of TLS decisions (appended)");
    auto* o_iob = app.add_option("--io-backend", cfg->io_backend,
                                 "client-facing packet I/O: uring (kernel sockets, default) or "
                                 "dpdk (DPDK + lwIP, one shard; needs a build with DPDK)")
                      ->check(CLI::IsMember({"uring", "dpdk"}));
    auto* o_dpdk = app.add_option("--dpdk-args", cfg->dpdk_args,
                                  "EAL arguments for --io-backend dpdk, e.g. \"--no-huge --no-pci "
                                  "--vdev=net_af_packet0,iface=IF\"");
    app.add_flag("--check-config", cfg->check_only,
                 "load and check the configuration (certificates and keys, names, addresses) "
                 "as a start would, write nothing, and exit: 0 OK, 2 not (docs/operations.md)");
    app.add_flag("--version,-V", version, "print the version and exit");

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        std::fputs(app.help().c_str(), stdout);
        return 0;
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "rpcgate: %s (see --help)\n", e.what());
        return 2;
    }
    if (version) {
        std::printf("rpcgate %s\n", RPCGATE_VERSION);
        return 0;
    }
    std::string err;
    // The file first, then every option given on the command line on top of it.
    gateway_config merged;
    if (o_config->count() && !load_config_file(cfg->config_file, &merged, &err)) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    for (const auto& l : listen) {
        endpoint ep;
        if (!parse_endpoint(l, &ep, &err)) {
            std::fprintf(stderr, "rpcgate: --listen %s\n", err.c_str());
            return 2;
        }
        if (&l == &listen.front()) merged.listen.clear();
        merged.listen.push_back(ep);
    }
    for (const auto& b : backends) {
        backend_route r;
        if (!parse_backend(b, &r, &err)) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 2;
        }
        if (&b == &backends.front()) merged.backends.clear();
        merged.backends.push_back(r);
    }
    for (const auto& l : implicit) {
        endpoint ep;
        if (!parse_endpoint(l, &ep, &err)) {
            std::fprintf(stderr, "rpcgate: --implicit-tls %s\n", err.c_str());
            return 2;
        }
        if (&l == &implicit.front()) merged.implicit_tls.clear();
        merged.implicit_tls.push_back(ep);
    }
    if (o_alpn->count()) merged.alpn_strict = true;
    if (o_auto->count()) merged.tls_auto = true;
    if (o_hst->count()) merged.handshake_timeout_ms = cfg->handshake_timeout_ms;
    if (o_ktls->count()) merged.ktls = cfg->ktls;
    if (o_rekey->count()) merged.tls_rekey_after = cfg->tls_rekey_after;
    if (o_nopad->count()) merged.ktls_rx_no_pad = cfg->ktls_rx_no_pad;
    if (o_recsz->count()) merged.ktls_tx_record_size = cfg->ktls_tx_record_size;
    if (o_minv->count()) merged.tls_min_version = cfg->tls_min_version;
    if (o_suites->count()) merged.tls_ciphersuites = cfg->tls_ciphersuites;
    if (o_records->count()) merged.tls_record_layer = cfg->tls_record_layer;
    merged.config_file = cfg->config_file;
    merged.check_only = cfg->check_only;
    if (o_shards->count()) merged.shards = cfg->shards;
    if (o_tls->count() && !parse_tls_policy(tls, &merged.tls, &err)) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    if (o_tls_for->count() &&
        !parse_program_set(tls_for, &merged.tls_programs, &err, "--require-tls-for")) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    if (o_cert->count()) merged.cert = cfg->cert;
    if (o_map->count()) merged.cert_user_map = cfg->cert_user_map;
    if (o_key->count()) merged.key = cfg->key;
    if (o_ca->count()) merged.ca = cfg->ca;
    if (o_crl->count()) merged.crl = cfg->crl;
    if (o_admin->count()) merged.admin = cfg->admin;
    if (o_up->count() && !parse_tls_policy(up_tls, &merged.upstream.mode, &err, "--upstream-tls")) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    if (o_up_ca->count()) merged.upstream.ca = cfg->upstream.ca;
    if (o_up_cert->count()) merged.upstream.cert = cfg->upstream.cert;
    if (o_up_key->count()) merged.upstream.key = cfg->upstream.key;
    if (o_up_name->count()) merged.upstream.server_name = cfg->upstream.server_name;
    if (o_up_alpn->count()) merged.upstream.alpn_strict = true;
    if (o_reuse->count()) merged.reuse_port = true;
    if (no_reserved) merged.reserved_port = false;
    if (o_rports->count() && !parse_port_range(reserved_ports, &merged.reserved_low,
                                               &merged.reserved_high, &err, "--reserved-ports")) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    if (no_portmap) merged.answer_portmap = false;
    if (no_call_stats) merged.call_stats = false;
    if (o_idle->count()) merged.idle_timeout_s = cfg->idle_timeout_s;
    if (o_ct->count()) merged.connect_timeout_ms = cfg->connect_timeout_ms;
    if (o_dt->count()) merged.drain_timeout_ms = cfg->drain_timeout_ms;
    if (o_ubin->count()) merged.upgrade_binary = cfg->upgrade_binary;
    if (o_uto->count()) merged.upgrade_timeout_ms = cfg->upgrade_timeout_ms;
    if (o_udt->count()) merged.upgrade_drain_timeout_ms = cfg->upgrade_drain_timeout_ms;
    merged.upgrade_fd = cfg->upgrade_fd;
    if (o_maxc->count()) merged.max_connections = cfg->max_connections;
    if (o_mcs->count()) merged.max_connections_per_source = cfg->max_connections_per_source;
    if (o_hrs->count()) merged.handshake_rate_per_source = cfg->handshake_rate_per_source;
    if (o_hbs->count()) merged.handshake_burst_per_source = cfg->handshake_burst_per_source;
    if (o_buf->count()) merged.buffers = cfg->buffers;
    if (o_log->count()) merged.log_level = log_level;
    if (o_audit->count()) merged.audit_log = cfg->audit_log;
    if (o_iob->count()) merged.io_backend = cfg->io_backend;
    if (o_dpdk->count()) merged.dpdk_args = cfg->dpdk_args;
    uint64_t v = 0;
    if (o_rec->count()) {
        if (!parse_size(max_record, &v, &err, "--max-record")) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 2;
        }
        merged.max_record = v;
    }
    if (o_inf->count()) {
        if (!parse_size(max_inflight, &v, &err, "--max-inflight")) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 2;
        }
        merged.max_inflight = v;
    }
    if (o_bsz->count()) {
        if (!parse_size(buffer_size, &v, &err, "--buffer-size")) {
            std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
            return 2;
        }
        merged.buffer_size = uint32_t(v);
    }
    if (!validate(&merged, &err)) {
        std::fprintf(stderr, "rpcgate: %s\n", err.c_str());
        return 2;
    }
    *cfg = std::move(merged);
    return -1;
}

}  // namespace rpcgate::gw
