// The admin HTTP endpoint (--admin ADDR:PORT): read-only views of a running
// gateway for operators and scrapers.
//
//   GET /metrics   Prometheus text format (version 0.0.4)
//   GET /healthz   200 "ok" when every shard and the TLS control thread
//                  answer a ping within a second, else 503
//   GET /readyz    200 when the listeners are up and every route's backend
//                  accepts a connection, else 503; per route in the JSON body
//                  (readiness.h)
//   GET /connections  every client connection as JSON (asks each shard);
//                  ?top=N[&by=calls|bytes]: only the N busiest
//   GET /clients   open connections summed by source address and TLS
//                  identity, the top N (?top=N&by=calls|bytes, default 20)
//   POST /reload   re-read the TLS material, as SIGHUP does
//   POST /upgrade  hand the process over to a new binary, as SIGUSR2 does
//                  (202: started; the outcome is in the log and /metrics)
//
// It runs on its own thread with blocking sockets, off the data path: the
// shards never wait for it. What it serves is read from counters that the
// shards publish (single-writer atomics), so a scrape takes no lock and
// sends no message to a shard. One request per connection (HTTP/1.0 style),
// a 2 s read deadline and an 8 KiB request cap.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <utility>

#include "gateway/config.h"

namespace rpcgate::gw {

// `in` made safe inside a JSON string: quotes and backslashes escaped,
// control characters dropped (the /connections body).
std::string json_escape(const std::string& in);

class admin_server {
  public:
    struct handlers {
        std::function<std::string()> metrics;  // the /metrics body
        std::function<bool()> healthy;         // /healthz
        // /readyz: (ready, JSON body).
        std::function<std::pair<bool, std::string>()> ready;
        std::function<std::string()> connections;  // the /connections body (JSON)
        std::function<std::string()> reload;       // POST /reload: "" or why it failed
        // GET /clients... and GET /connections?... (the target, query
        // included): the top talkers (client_views.h), JSON.
        std::function<std::string(const std::string&)> views;
        // POST /upgrade: "" (the upgrade was started) or why not.
        std::function<std::string()> upgrade;
    };

    admin_server() = default;
    ~admin_server();
    admin_server(const admin_server&) = delete;
    admin_server& operator=(const admin_server&) = delete;

    // Binds `ep` (or, with `inherited` >= 0, serves that listening socket,
    // handed over by the process this one took over from) and starts the
    // thread. Returns "" or a one-line error.
    std::string start(const endpoint& ep, handlers h, int inherited = -1);
    // The listening socket (for an upgrade's hand-off), or -1.
    int listen_fd() const noexcept { return listen_fd_; }
    void stop();
    // Stop accepting soon (within its 200 ms poll) without waiting for it.
    void request_stop() noexcept { stop_.store(true); }
    uint16_t port() const noexcept { return port_; }

  private:
    // listen_fd_ listens: its port, and the thread.
    std::string serve_bound();
    void run();
    void serve(int fd);

    handlers h_;
    int listen_fd_ = -1;
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace rpcgate::gw
