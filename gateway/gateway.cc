#include "gateway/gateway.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <iterator>
#include <mutex>

#include "core/log.h"
#include "dpdk/backend.h"
#include "gateway/admin.h"
#include "gateway/client_session.h"
#include "gateway/config_check.h"
#include "gateway/privileges.h"
#include "gateway/readiness.h"
#include "gateway/shard_context.h"
#include "rpc/portmap.h"
#include "tls/cert_expiry.h"
#include "tls/handshake_service.h"
#include "tls/ktls.h"

namespace rpcgate::gw {

using core::bump;

// ---------------------------------------------------------------- gateway

gateway::gateway(gateway_config cfg) : cfg_(std::move(cfg)) {}

gateway::~gateway() {
    stop();
    wait();
}

namespace {

// The shards' listeners share their port with SO_REUSEPORT, which would as
// well let a second rpcgate (same user) join a port that a running one holds
// and silently take part of its clients. A bind without SO_REUSEPORT first
// finds such a holder: any socket listening on the port conflicts with it
// (SO_REUSEADDR only passes over TIME_WAIT leftovers of a previous run).
std::string check_port_free(const endpoint& ep) {
    if (ep.port() == 0) return {};
    int fd = ::socket(ep.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return {};
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len);
    int e = errno;
    ::close(fd);
    if (rc == 0 || e != EADDRINUSE) return {};
    return fmt::format(
        "cannot listen on {}: the port is already in use (another rpcgate?); give --reuse-port "
        "to share it with that process on purpose",
        ep.text);
}

// The certificates in effect: the server's and its CA (when the gateway
// terminates TLS), each route's upstream client certificate and CA.
// Unreadable files are skipped: the contexts that use them already loaded.
std::vector<loaded_cert> collect_loaded_certs(const gateway_config& cfg, bool tls_used) {
    std::vector<loaded_cert> out;
    std::vector<std::pair<std::string, std::string>> seen;  // (role, path)
    auto add = [&](const char* role, const std::string& path) {
        if (path.empty()) return;
        for (const auto& [r, p] : seen)
            if (r == role && p == path) return;
        seen.emplace_back(role, path);
        std::string err;
        for (tls::cert_expiry& e : tls::read_cert_expiries(path, &err))
            out.push_back({role, std::move(e.subject), std::move(e.serial), e.not_after});
    };
    if (tls_used) {
        add("server", cfg.cert);
        add("ca", cfg.ca);
    }
    for (const backend_route& r : cfg.backends) {
        if (r.tls.mode == tls_policy::off) continue;
        add("upstream_client", r.tls.cert);
        add("upstream_ca", r.tls.ca);
    }
    return out;
}

// A route's name in metric labels: the program's ("nfs"), "/vN" when the
// route takes one version only.
std::string route_name(const backend_route& r) {
    std::string_view known = rpc::program_name_of(r.prog);
    std::string name = known.empty() ? std::to_string(r.prog) : std::string(known);
    if (r.vers) name += "/v" + std::to_string(r.vers);
    return name;
}

// "host:port" ("[v6]:port") as written, without the spec's TLS options.
std::string route_address(const backend_route& r) {
    bool v6 = r.host.find(':') != std::string::npos;
    return fmt::format("{}{}{}:{}", v6 ? "[" : "", r.host, v6 ? "]" : "", r.target.port());
}

}  // namespace

std::string gateway::start() {
    if (cfg_.io_backend == "uring" && !cfg_.reuse_port && inherited_.empty()) {
        for (const auto* eps : {&cfg_.listen, &cfg_.implicit_tls})
            for (const endpoint& ep : *eps) {
                std::string err = check_port_free(ep);
                if (!err.empty()) return err;
            }
    }
    if (cfg_.reserved_port) {
        std::string why;
        if (can_bind_port(cfg_.reserved_low, &why)) {
            RPCGATE_LOG(gw, info, "backend source ports: reserved, {} down to {} ({})",
                        cfg_.reserved_high, cfg_.reserved_low, why);
        } else {
            RPCGATE_LOG(gw, warn,
                        "backend source ports: ephemeral, {}; a 'secure' export (knfsd's "
                        "default) refuses them",
                        why);
            cfg_.reserved_port = false;
        }
    }
    if (cfg_.io_backend == "dpdk") {
        // One TCP stack per process (lwIP): one shard, which polls the port.
        std::string err;
        io_backend_ = dpdk::make_backend(dpdk::backend_options{cfg_.dpdk_args}, &err);
        if (!io_backend_) return "--io-backend dpdk: " + err;
        cfg_.ktls = "off";  // a DPDK connection has no kernel socket to put kTLS on
        if (cfg_.shards != 1)
            RPCGATE_LOG(gw, info, "--io-backend dpdk: 1 shard instead of {}", cfg_.shards);
        cfg_.shards = 1;
    }
    bool tls_used = cfg_.tls != tls_policy::off || !cfg_.implicit_tls.empty();
    if (tls_used) {
        tls::server_options o = server_tls_options(cfg_);
        if (cfg_.tls_min_version == "1.2") {
            RPCGATE_LOG(tls, warn,
                        "--tls-min-version 1.2: clients may use TLS 1.2. This is OUTSIDE RFC 9289 "
                        "(§5.1: TLS 1.3 or later), for evaluating NIC TLS offload only; do not "
                        "use it in production");
        }
        if (cfg_.tls >= tls_policy::required)
            RPCGATE_LOG(tls, info,
                        "--tls {}: TLS demanded for {}; other programs are served in plaintext "
                        "too (--require-tls-for)",
                        tls_policy_name(cfg_.tls), program_set_text(cfg_.tls_programs));
        RPCGATE_LOG(tls, info, "TLS 1.3 cipher suites, in this order: {}{}", o.ciphers.ciphersuites,
                    cfg_.tls_ciphersuites.empty()
                        ? (tls::cpu_has_aes() ? " (default: the CPU has AES instructions)"
                                              : " (default: the CPU has no AES instructions)")
                        : "");
        RPCGATE_LOG(tls, info, "userspace TLS 1.3 records: {} (--tls-record-layer)",
                    cfg_.tls_record_layer == "own"
                        ? "rpcgate's own, from the receive buffers to the send buffers"
                        : "OpenSSL's SSL_read/SSL_write");
        std::string err;
        tls_ctx_ = tls::context::make_server(o, &err);
        if (!tls_ctx_) return "TLS: " + err;
        hs_ = std::make_unique<handshake_service>(tls_ctx_.get(), cfg_.handshake_timeout_ms,
                                                  &open_connections_);
        if (!cfg_.cert_user_map.empty()) {
            identities_ = std::make_unique<tls::identity_map>();
            if (!identities_->load(cfg_.cert_user_map, &err)) return "--cert-user-map: " + err;
            hs_->set_identity_map(identities_.get());
        }
    }
    // RFC 9289 client role: one client context per route that wants TLS.
    std::string up_err = make_upstream_contexts(&upstream_ctx_);
    if (!up_err.empty()) return up_err;
    upstream_live_.reset(new std::atomic<const tls::context*>[cfg_.backends.size()]);
    {
        std::lock_guard g(certs_mu_);
        certs_ = collect_loaded_certs(cfg_, tls_used);
    }
    bool upstream_used = false;
    for (size_t r = 0; r < cfg_.backends.size(); ++r) {
        upstream_live_[r].store(upstream_ctx_[r].get());
        upstream_used |= upstream_ctx_[r] != nullptr;
    }
    if (upstream_used && !hs_)
        hs_ = std::make_unique<handshake_service>(nullptr, cfg_.handshake_timeout_ms,
                                                  &open_connections_);
    if (hs_) {
        bool kernel = cfg_.ktls != "off" && tls::ktls::kernel_has_ktls();
        if (cfg_.ktls == "on" || kernel) {
            // Before any handshake runs: TLS 1.3 RX needs the keylog hook.
            if (tls_ctx_) tls::ktls::prepare_context(tls_ctx_->native());
            for (const auto& c : upstream_ctx_)
                if (c) tls::ktls::prepare_context(c->native());
            hs_->use_socket_io(cfg_.ktls_rx);
        }
        if (kernel) {
            RPCGATE_LOG(tls, info,
                        "kernel TLS: on (--ktls {}): handshakes on the socket, then "
                        "the kernel encrypts and decrypts where it can",
                        cfg_.ktls);
            if (cfg_.ktls_tx_record_size && !tls::ktls::kernel_has_tx_max_payload())
                RPCGATE_LOG(tls, warn,
                            "--ktls-tx-record-size {}: this kernel has no TLS_TX_MAX_PAYLOAD_LEN; "
                            "kTLS records stay at up to 16384 bytes",
                            cfg_.ktls_tx_record_size);
            if (cfg_.ktls_rx_no_pad)
                RPCGATE_LOG(tls, info,
                            "--ktls-rx-no-pad: the kernel decrypts TLS 1.3 records in place; a "
                            "padded record costs a second decryption (TlsRxNoPadViolation)");
        } else if (hs_->socket_io()) {
            RPCGATE_LOG(tls, info,
                        "kernel TLS: this kernel has none; --ktls on: handshakes on "
                        "the socket, the record layer stays in userspace");
        } else {
            RPCGATE_LOG(tls, info,
                        "kernel TLS: off ({}): TLS runs in userspace (OpenSSL on the "
                        "shards)",
                        cfg_.ktls == "off" ? "--ktls off" : "this kernel has no kTLS");
        }
    }
    // Every shard exists (and is wired to the control thread) before any starts.
    for (unsigned i = 0; i < cfg_.shards; ++i) {
        core::shard_config sc;
        sc.index = i;
        sc.buffer_count = cfg_.buffers;
        sc.buffer_size = cfg_.buffer_size;
        sc.send_high_water = cfg_.max_inflight;
        sc.send_low_water = cfg_.max_inflight / 4;
        auto sh = std::make_unique<core::shard>(sc);
        if (io_backend_) sh->set_io_backend(io_backend_.get());
        auto ctx = std::make_unique<shard_context>(cfg_, *sh, open_connections_);
        shard_context* c = ctx.get();
        sh->set_on_stop([c] { c->on_stop(); });
        c->set_upstream_contexts(upstream_live_.get());
        c->use_handshakers(hs_.get());
        if (hs_) {
            hs_->attach(
                *sh, [c](handshake_result&& r) { c->deliver(std::move(r)); },
                [c](upstream_result&& r) { c->deliver_upstream(std::move(r)); });
        }
        main_inboxes_.push_back(&sh->make_inbox(64));
        upgrade_inboxes_.push_back(&sh->make_inbox(256));
        shards_.push_back(std::move(sh));
        contexts_.push_back(std::move(ctx));
    }
    if (hs_) main_to_control_ = &hs_->make_inbox();
    if (hs_) {
        std::string err = hs_->start();
        if (!err.empty()) return "TLS control thread: " + err;
    }
    // Inherited sockets (an upgrade): their ports are the endpoints' ports,
    // and shard i takes every group's sockets i, i + shards, ...; a shard
    // left without one (the old process ran fewer shards) joins the group
    // with a socket of its own (SO_REUSEPORT).
    auto inherited_port = [](const std::vector<std::vector<int>>& groups, size_t e, endpoint* ep) {
        if (e >= groups.size() || groups[e].empty()) return;
        endpoint bound;
        socklen_t len = sizeof bound.addr;
        if (::getsockname(groups[e].front(), reinterpret_cast<sockaddr*>(&bound.addr), &len) == 0)
            ep->set_port(bound.port());
    };
    for (size_t e = 0; e < cfg_.listen.size(); ++e)
        inherited_port(inherited_.listen, e, &cfg_.listen[e]);
    for (size_t e = 0; e < cfg_.implicit_tls.size(); ++e)
        inherited_port(inherited_.implicit, e, &cfg_.implicit_tls[e]);
    unsigned nshards = cfg_.shards;
    for (unsigned i = 0; i < cfg_.shards; ++i) {
        core::shard* raw = shards_[i].get();
        shard_context* c = contexts_[i].get();
        auto open_all = [raw, c, i, nshards](std::vector<endpoint>& eps,
                                             const std::vector<std::vector<int>>& inherited,
                                             core::listener_handler* h) {
            for (size_t e = 0; e < eps.size(); ++e) {
                endpoint& ep = eps[e];
                bool adopted = false;
                if (e < inherited.size()) {
                    for (size_t k = i; k < inherited[e].size(); k += nshards) {
                        int rc = raw->listen_fd(inherited[e][k], h);
                        if (rc < 0) {
                            c->start_error() = fmt::format("cannot adopt the listener of {}: {}",
                                                           ep.text, std::strerror(-rc));
                            return;
                        }
                        adopted = true;
                    }
                }
                if (adopted) continue;
                int rc = raw->listen(reinterpret_cast<const sockaddr*>(&ep.addr), ep.len, h);
                if (rc < 0) {
                    c->start_error() =
                        fmt::format("cannot listen on {}: {}", ep.text, std::strerror(-rc));
                    return;
                }
                // Port 0: the first shard picks it, the others share it (SO_REUSEPORT).
                if (ep.port() == 0) ep.set_port(uint16_t(rc));
            }
        };
        std::string err = raw->start([&] {
            open_all(cfg_.listen, inherited_.listen, c);
            if (c->start_error().empty())
                open_all(cfg_.implicit_tls, inherited_.implicit, &c->implicit_listener());
        });
        if (err.empty() && !c->start_error().empty()) err = c->start_error();
        if (!err.empty()) {
            stop();
            wait();
            return err;
        }
        if (i == 0) {
            if (!cfg_.listen.empty()) port_ = cfg_.listen.front().port();
            if (!cfg_.implicit_tls.empty()) implicit_port_ = cfg_.implicit_tls.front().port();
            RPCGATE_LOG(core, info, "io_uring features: {}", raw->features().describe());
        }
    }
    // Inherited sockets of addresses the new configuration no longer has:
    // closed (the process they came from stops accepting on them too).
    auto close_unused = [](std::vector<std::vector<int>>& groups, size_t used) {
        for (size_t e = used; e < groups.size(); ++e)
            for (int fd : groups[e]) ::close(fd);
    };
    close_unused(inherited_.listen, cfg_.listen.size());
    close_unused(inherited_.implicit, cfg_.implicit_tls.size());
    if (cfg_.admin.empty() && inherited_.admin >= 0) ::close(inherited_.admin);
    if (cfg_.admin.empty()) inherited_.admin = -1;
    if (!cfg_.admin.empty()) {
        endpoint ep;
        std::string err;
        if (!parse_endpoint(cfg_.admin, &ep, &err)) return "--admin " + err;
        admin_ = std::make_unique<admin_server>();
        admin_server::handlers h;
        h.metrics = [this] { return metrics_text(); };
        h.healthy = [this] { return !stopping_.load() && ping_all(1000); };
        h.ready = [this] {
            readiness r = check_ready();
            return std::pair<bool, std::string>{r.ready(), r.json(cfg_.backends)};
        };
        h.connections = [this] { return connections_json(); };
        h.reload = [this] { return reload(); };
        h.views = [this](const std::string& t) { return views_json(t); };
        h.upgrade = [this] {
            return upgrade_trigger_ ? upgrade_trigger_()
                                    : std::string("upgrade is not available in this program");
        };
        err = admin_->start(ep, std::move(h), inherited_.admin);
        inherited_.admin = -1;
        if (!err.empty()) return err;
        RPCGATE_LOG(admin, info,
                    "admin endpoint on port {} (/metrics, /healthz, /readyz, /clients)",
                    admin_->port());
    }
    return {};
}

uint16_t gateway::admin_port() const noexcept {
    return admin_ ? admin_->port() : 0;
}

namespace {

// Every CRL in a PEM file; the shared pointer frees them with the last user.
std::shared_ptr<std::vector<X509_CRL*>> load_crls(const std::string& path, std::string* err) {
    auto crls = std::shared_ptr<std::vector<X509_CRL*>>(new std::vector<X509_CRL*>,
                                                        [](std::vector<X509_CRL*>* v) {
                                                            for (X509_CRL* c : *v) X509_CRL_free(c);
                                                            delete v;
                                                        });
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f) {
        *err = fmt::format("{}: {}", path, std::strerror(errno));
        return nullptr;
    }
    while (X509_CRL* c = PEM_read_X509_CRL(f, nullptr, nullptr, nullptr)) crls->push_back(c);
    std::fclose(f);
    ERR_clear_error();  // the read that ends the loop leaves "no start line"
    if (crls->empty()) {
        *err = fmt::format("{}: no CRL in it", path);
        return nullptr;
    }
    return crls;
}

}  // namespace

std::string gateway::make_upstream_contexts(std::vector<std::unique_ptr<tls::context>>* out) const {
    out->clear();
    for (const backend_route& r : cfg_.backends) {
        if (r.tls.mode == tls_policy::off) {
            out->emplace_back();
            continue;
        }
        tls::client_options o = upstream_tls_options(cfg_, r);
        std::string err;
        auto c = tls::context::make_client(o, &err);
        if (!c) return fmt::format("backend '{}': upstream TLS: {}", r.spec, err);
        RPCGATE_LOG(tls, info, "backend {}: upstream TLS {} (server name {}, CA {}{})", r.spec,
                    tls_policy_name(r.tls.mode), o.server_name, o.ca_file,
                    o.cert_file.empty() ? "" : ", client certificate " + o.cert_file);
        out->push_back(std::move(c));
    }
    return {};
}

std::string gateway::reload_locked() {
    // A config file that no longer parses or validates stops the reload: the
    // daemon keeps serving with what it has. (Listeners and routes need a
    // restart; the TLS files are re-read at the paths in effect.)
    if (!cfg_.config_file.empty()) {
        gateway_config probe;
        std::string err;
        if (!load_config_file(cfg_.config_file, &probe, &err) || !validate(&probe, &err))
            return "reload failed, keeping the old configuration: " + err;
    }
    bool upstream_used = false;
    for (const auto& c : upstream_ctx_) upstream_used |= c != nullptr;
    if (!tls_ctx_ && !upstream_used) return "nothing to reload: TLS is not configured";
    // Upstream client contexts (CA, client certificate) are re-read too.
    std::vector<std::unique_ptr<tls::context>> fresh_up;
    if (upstream_used) {
        std::string why = make_upstream_contexts(&fresh_up);
        if (!why.empty()) return "reload failed, keeping the old TLS material: " + why;
    }
    // Shards read the live pointers; the contexts they replace stay alive.
    if (hs_ && hs_->socket_io())
        for (const auto& c : fresh_up)
            if (c) tls::ktls::prepare_context(c->native());
    auto commit_upstream = [&] {
        for (size_t r = 0; r < fresh_up.size(); ++r) {
            upstream_live_[r].store(fresh_up[r].get());
            if (upstream_ctx_[r]) old_contexts_.push_back(std::move(upstream_ctx_[r]));
            upstream_ctx_[r] = std::move(fresh_up[r]);
        }
    };
    if (!tls_ctx_) {
        commit_upstream();
        RPCGATE_LOG(gw, info, "reloaded upstream TLS material");
        return {};
    }
    tls::server_options o = tls_ctx_->server();
    std::string err;
    auto fresh = tls::context::make_server(o, &err);
    if (!fresh) return "reload failed, keeping the old TLS material: " + err;
    if (hs_->socket_io()) tls::ktls::prepare_context(fresh->native());
    std::unique_ptr<tls::identity_map> ids;
    if (!cfg_.cert_user_map.empty()) {
        ids = std::make_unique<tls::identity_map>();
        if (!ids->load(cfg_.cert_user_map, &err))
            return "reload failed, keeping the old TLS material: --cert-user-map: " + err;
    }
    std::shared_ptr<std::vector<X509_CRL*>> crls;
    if (!cfg_.crl.empty()) {
        crls = load_crls(cfg_.crl, &err);
        if (!crls) return "reload failed, keeping the old TLS material: " + err;
    }
    // Commit: new handshakes use the new contexts from now on.
    commit_upstream();
    hs_->set_context(fresh.get());
    old_contexts_.push_back(std::move(tls_ctx_));
    tls_ctx_ = std::move(fresh);
    if (ids) {
        hs_->set_identity_map(ids.get());
        if (identities_) old_identities_.push_back(std::move(identities_));
        identities_ = std::move(ids);
    }
    // FreeBSD's rpc.tlsservd -r: a client the new CRL revokes is closed.
    if (crls) {
        for (size_t i = 0; i < main_inboxes_.size(); ++i) {
            shard_context* c = contexts_[i].get();
            main_inboxes_[i]->try_post([c, crls] {
                c->sessions().for_each([&](client_session& s) { s.close_if_revoked(*crls); });
            });
        }
    }
    RPCGATE_LOG(gw, info, "reloaded TLS material: cert {}, CA {}, CRL {} ({} list(s))", o.cert_file,
                o.ca_file.empty() ? "-" : o.ca_file, o.crl_file.empty() ? "-" : o.crl_file,
                crls ? crls->size() : 0);
    return {};
}

std::string gateway::reload() {
    // SIGHUP (main thread) and POST /reload (admin thread) take turns; that
    // also keeps each shard's main inbox single-producer.
    std::lock_guard serial(producer_mu_);
    std::string why = reload_locked();
    bump(why.empty() ? reloads_ : reload_failures_);
    if (why.empty()) {
        std::vector<loaded_cert> certs = collect_loaded_certs(cfg_, tls_ctx_ != nullptr);
        std::lock_guard g(certs_mu_);
        certs_ = std::move(certs);
    }
    return why;
}

namespace {

// A reply from another thread, waited for with a deadline. Shared, so that a
// reply arriving after the waiter gave up has somewhere to go.
template <typename T>
struct rendezvous {
    std::mutex m;
    std::condition_variable cv;
    std::vector<T> got;
    size_t expected = 0;

    void put(T v) {
        std::lock_guard g(m);
        got.push_back(std::move(v));
        cv.notify_one();
    }
    bool wait(int ms) {
        std::unique_lock g(m);
        return cv.wait_for(g, std::chrono::milliseconds(ms),
                           [&] { return got.size() >= expected; });
    }
};

}  // namespace

readiness gateway::check_ready() {
    readiness r;
    // The shards own the listeners: up while they run and answer.
    r.listeners_up = !stopping_.load() && ping_all(500);
    r.backends = probe_backends(cfg_.backends, 500);
    return r;
}

bool gateway::ping_all(int ms) {
    auto r = std::make_shared<rendezvous<int>>();
    {
        std::lock_guard serial(producer_mu_);
        r->expected = main_inboxes_.size() + (main_to_control_ ? 1 : 0);
        for (core::mailbox* box : main_inboxes_)
            if (!box->try_post([r] { r->put(1); })) return false;
        if (main_to_control_ && !main_to_control_->try_post([r] { r->put(1); })) return false;
    }
    return r->wait(ms);
}

std::string gateway::connections_json() {
    auto r = std::make_shared<rendezvous<std::string>>();
    std::unique_lock serial(producer_mu_);
    r->expected = main_inboxes_.size();
    for (size_t i = 0; i < main_inboxes_.size(); ++i) {
        shard_context* c = contexts_[i].get();
        main_inboxes_[i]->try_post([r, c] {
            std::string part;
            c->sessions().for_each([&](client_session& s) {
                if (!part.empty()) part += ",\n";
                part += s.describe_json();
            });
            r->put(std::move(part));
        });
    }
    serial.unlock();
    bool complete = r->wait(1000);
    std::lock_guard g(r->m);
    std::string out = "[";
    for (const std::string& part : r->got) {
        if (part.empty()) continue;
        if (out.size() > 1) out += ",\n";
        out += part;
    }
    out += "]\n";
    if (!complete) RPCGATE_LOG(admin, warn, "/connections: a shard did not answer within 1 s");
    return out;
}

std::string gateway::views_json(const std::string& target) {
    // Each shard snapshots its sessions; the ranking is done here, off the
    // data path.
    auto r = std::make_shared<rendezvous<std::vector<client_view>>>();
    std::unique_lock serial(producer_mu_);
    r->expected = main_inboxes_.size();
    for (size_t i = 0; i < main_inboxes_.size(); ++i) {
        shard_context* c = contexts_[i].get();
        main_inboxes_[i]->try_post([r, c] {
            std::vector<client_view> part;
            c->sessions().for_each([&](client_session& s) { part.push_back(s.view()); });
            r->put(std::move(part));
        });
    }
    serial.unlock();
    bool complete = r->wait(1000);
    std::vector<client_view> all;
    {
        std::lock_guard g(r->m);
        for (auto& part : r->got)
            for (auto& v : part) all.push_back(std::move(v));
    }
    if (!complete) RPCGATE_LOG(admin, warn, "{}: a shard did not answer within 1 s", target);
    view_query q = parse_view_query(target);
    if (target.rfind("/clients", 0) == 0) return clients_json(all, q);
    return top_connections_json(std::move(all), q);
}

std::string gateway::metrics_text() const {
    std::string out;
    std::vector<const gateway_counters*> counters;
    std::vector<const backend_health*> health;
    for (const auto& c : contexts_) {
        counters.push_back(&c->counters());
        health.push_back(c->health());
    }
    render_gateway_counters(out, counters);
    std::vector<const call_stats*> calls;
    for (const auto& c : contexts_)
        if (c->calls()) calls.push_back(c->calls());
    if (!calls.empty()) render_call_stats(out, calls);
    auto rd = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    std::vector<uint64_t> v(contexts_.size());
    auto per_shard = [&](const char* name, const char* type, const char* help, auto value) {
        for (size_t i = 0; i < contexts_.size(); ++i) v[i] = value(i);
        render_per_shard(out, name, type, help, v);
    };
    if (!contexts_.empty() && contexts_[0]->admit().limits()) {
#define RPCGATE_SOURCE_FAMILY(name, type, field, help) \
    per_shard("rpcgate_source_" name, type, help,      \
              [&](size_t i) { return rd(contexts_[i]->admit().limits()->counters().field); })
        RPCGATE_SOURCE_FAMILY("refused_connections_total", "counter", refused_connections,
                              "Connections refused: their source was at its connection cap.");
        RPCGATE_SOURCE_FAMILY("refused_handshakes_total", "counter", refused_handshakes,
                              "Connections closed: their source was over its handshake rate.");
        RPCGATE_SOURCE_FAMILY("table_full_total", "counter", table_full,
                              "Connections refused: no room to track a new source.");
        RPCGATE_SOURCE_FAMILY("evictions_total", "counter", evictions,
                              "Idle sources forgotten to make room.");
        RPCGATE_SOURCE_FAMILY("tracked", "gauge", tracked, "Sources tracked now.");
#undef RPCGATE_SOURCE_FAMILY
    }
#define RPCGATE_CORE_COUNTER(name, field, help) \
    per_shard("rpcgate_" name, "counter", help, \
              [&](size_t i) { return rd(shards_[i]->stats().field); })
    RPCGATE_CORE_COUNTER("engine_receives_total", recv_completions, "Receive completions.");
    RPCGATE_CORE_COUNTER("engine_received_bytes_total", recv_bytes,
                         "Bytes received by the engine.");
    RPCGATE_CORE_COUNTER("engine_sends_total", send_calls, "sendmsg operations.");
    RPCGATE_CORE_COUNTER("engine_sent_bytes_total", send_bytes, "Bytes sent by the engine.");
    RPCGATE_CORE_COUNTER("engine_enobufs_total", enobufs,
                         "Receives that found the buffer ring empty.");
    RPCGATE_CORE_COUNTER("engine_pressure_copies_total", pressure_copies,
                         "Receives copied out of a ring running low.");
    RPCGATE_CORE_COUNTER("engine_loop_passes_total", loop_passes, "Event loop passes.");
#undef RPCGATE_CORE_COUNTER
    per_shard("rpcgate_engine_buffers_free", "gauge", "Receive buffers the kernel can use now.",
              [&](size_t i) { return rd(shards_[i]->stats().buffers_free); });
    std::vector<std::string> labels;
    for (const backend_route& r : cfg_.backends)
        labels.push_back(backend_labels(route_name(r), route_address(r)));
    render_backend_health(out, labels, health);
    render_kernel_tls_stat(out, tls::ktls::read_tls_stat());
    render_build_info(out, RPCGATE_VERSION, io_backend_ ? "dpdk" : "uring");
    {
        std::lock_guard g(certs_mu_);
        render_cert_expiry(out, certs_);
    }
    render_tls_protection(out, counters);
    upgrade_.render(out);
    render_one(out, "rpcgate_reloads_total", "counter",
               "Reloads (SIGHUP, POST /reload) that took effect.", rd(reloads_));
    render_one(out, "rpcgate_reload_failures_total", "counter",
               "Reloads refused for a bad file; the old material stays.", rd(reload_failures_));
    if (hs_) {
        const handshake_counters& h = hs_->counters();
        {
            // Handshake latency histogram (cumulative buckets, as Prometheus wants).
            out +=
                "# HELP rpcgate_tls_handshake_seconds Time from hand-off to a completed "
                "handshake.\n# TYPE rpcgate_tls_handshake_seconds histogram\n";
            uint64_t cum = 0;
            for (size_t i = 0; i < handshake_counters::k_buckets; ++i) {
                cum += rd(h.latency_buckets[i]);
                fmt::format_to(std::back_inserter(out),
                               "rpcgate_tls_handshake_seconds_bucket{{le=\"{}\"}} {}\n",
                               double(handshake_counters::k_bucket_ms[i]) / 1000.0, cum);
            }
            fmt::format_to(std::back_inserter(out),
                           "rpcgate_tls_handshake_seconds_bucket{{le=\"+Inf\"}} {}\n"
                           "rpcgate_tls_handshake_seconds_sum {:.6f}\n"
                           "rpcgate_tls_handshake_seconds_count {}\n",
                           rd(h.succeeded), double(rd(h.latency_us_sum)) / 1e6, rd(h.succeeded));
        }
        auto one = [&](const char* name, const char* type, const char* help, uint64_t v) {
            render_one(out, name, type, help, v);
        };
        one("rpcgate_tls_handshakes_ok_total", "counter", "Handshakes that completed.",
            rd(h.succeeded));
        one("rpcgate_tls_handshakes_failed_total", "counter",
            "Handshakes refused by TLS or policy.", rd(h.failed));
        one("rpcgate_tls_handshakes_timed_out_total", "counter", "Handshakes cut at the deadline.",
            rd(h.timed_out));
        one("rpcgate_tls_handshakes_not_tls_total", "counter",
            "Probes followed by bytes that were no TLS.", rd(h.not_tls));
        one("rpcgate_tls_handshakes_in_progress", "gauge", "Handshakes running now.",
            rd(h.in_progress));
        const handshake_counters& u = hs_->upstream_counters();
        one("rpcgate_upstream_handshakes_ok_total", "counter",
            "Client-role handshakes towards backends that completed.", rd(u.succeeded));
        one("rpcgate_upstream_handshakes_failed_total", "counter",
            "Client-role probes or handshakes that failed.", rd(u.failed));
        one("rpcgate_upstream_handshakes_timed_out_total", "counter",
            "Client-role probes or handshakes cut at the deadline.", rd(u.timed_out));
        one("rpcgate_upstream_probes_refused_total", "counter",
            "AUTH_TLS probes a backend refused (opportunistic: plaintext).",
            hs_->upstream_refused());
    }
    return out;
}

void gateway::stop() {
    stopping_.store(true);
    for (auto& s : shards_) s->request_stop();
}

void gateway::wait() {
    for (auto& s : shards_) s->join();
    if (admin_) admin_->stop();
    if (hs_) {
        hs_->stop();
        hs_->wait();
    }
}

gateway_totals gateway::totals() const {
    gateway_totals t;
    for (const auto& c : contexts_) t.add(c->counters());
    if (hs_) {
        const handshake_counters& h = hs_->counters();
        t.handshakes_ok = h.succeeded.load(std::memory_order_relaxed);
        t.handshakes_failed = h.failed.load(std::memory_order_relaxed);
        t.handshakes_timed_out = h.timed_out.load(std::memory_order_relaxed);
        t.handshakes_not_tls = h.not_tls.load(std::memory_order_relaxed);
        t.handshakes_busy = h.rejected_busy.load(std::memory_order_relaxed);
        t.handshakes_in_progress = h.in_progress.load(std::memory_order_relaxed);
    }
    return t;
}

// ---------------------------------------------------------------- upgrade

bool gateway::handoff_listeners(std::vector<upgrade_wire::listener_group>* groups,
                                std::vector<int>* fds) {
    if (io_backend_) return false;  // DPDK listeners are no kernel sockets
    auto r = std::make_shared<rendezvous<std::pair<unsigned, std::vector<int>>>>();
    {
        std::lock_guard serial(producer_mu_);
        r->expected = shards_.size();
        for (size_t i = 0; i < shards_.size(); ++i) {
            core::shard* sh = shards_[i].get();
            if (!main_inboxes_[i]->try_post([r, sh] { r->put({sh->index(), sh->listener_fds()}); }))
                return false;
        }
    }
    if (!r->wait(5000)) return false;
    std::vector<std::vector<int>> per_shard(shards_.size());
    {
        std::lock_guard g(r->m);
        for (auto& [i, v] : r->got) per_shard[i] = std::move(v);
    }
    // Each shard opened the --listen endpoints, then the --implicit-tls
    // ones, in configuration order: endpoint e is every shard's e-th.
    size_t n_listen = cfg_.listen.size(), n_all = n_listen + cfg_.implicit_tls.size();
    for (size_t e = 0; e < n_all; ++e) {
        upgrade_wire::listener_group g;
        g.kind = e < n_listen ? 0 : 1;
        g.index = uint32_t(e < n_listen ? e : e - n_listen);
        for (const auto& v : per_shard) {
            if (v.size() != n_all) return false;
            fds->push_back(v[e]);
            ++g.count;
        }
        groups->push_back(g);
    }
    if (admin_ && admin_->listen_fd() >= 0) {
        groups->push_back({2, 0, 1});
        fds->push_back(admin_->listen_fd());
    }
    return true;
}

void gateway::begin_move(std::shared_ptr<move_sink> sink, uint32_t drain_ms) {
    {
        std::lock_guard serial(producer_mu_);
        for (size_t i = 0; i < contexts_.size(); ++i) {
            shard_context* c = contexts_[i].get();
            // A full inbox: the shard is stuck; it then counts as done late
            // (the upgrade thread's own deadline).
            if (!main_inboxes_[i]->try_post([c, sink, drain_ms] { c->begin_move(sink, drain_ms); }))
                sink->shard_done();
        }
    }
    // The new process serves the admin endpoint on the same socket; ours
    // stops at its next poll (joined in wait(), not here: the moves go on).
    if (admin_) admin_->request_stop();
}

bool gateway::adopt_moved(std::unique_ptr<moved_conn> c) {
    if (contexts_.empty()) return false;
    size_t i = c->meta.shard % contexts_.size();
    shard_context* ctx = contexts_[i].get();
    upgrade_counters* st = &upgrade_;
    // The payload is the owning pointer itself: a refused post hands it back.
    auto box = std::make_unique<std::unique_ptr<moved_conn>>(std::move(c));
    for (int tries = 0; tries < 5000; ++tries) {
        box = upgrade_inboxes_[i]->post(std::move(box), [ctx, st](std::unique_ptr<moved_conn>&& m) {
            if (!ctx->adopt_moved(std::move(m), *st)) st->closed.fetch_add(1);
        });
        if (!box) return true;
        ::usleep(1000);  // the shard is busy: it drains its inbox every pass
    }
    c = std::move(*box);
    RPCGATE_LOG(gw, error, "upgrade: shard {} took no connection for 5 s: conn {} closed", i,
                c->meta.id);
    return false;
}

void gateway::upgrade_leftovers(uint64_t* drained, uint64_t* closed) const {
    *drained = *closed = 0;
    for (const auto& c : contexts_) {
        *drained += c->upgrade_drained.load();
        *closed += c->upgrade_closed.load();
    }
}

}  // namespace rpcgate::gw
