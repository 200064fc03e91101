// dpdk: rpcgate's client-facing side over DPDK and lwIP (--io-backend dpdk).
//
// What it is. A core::io_backend (core/shard.h) that serves the gateway's
// --listen addresses on a DPDK Ethernet port, with lwIP (built from Debian's
// source package by scripts/fetch-lwip.sh, options in dpdk/lwip/lwipopts.h)
// as the TCP stack. Every accepted TCP connection becomes an ordinary
// core::stream whose I/O is virtual: received bytes enter the same
// stream_handler callbacks (record marking, routing, forwarding, TLS) as an
// io_uring receive; send() goes to lwIP's tcp_write, a full send buffer maps to
// stream::full()/on_writable, FIN and RST map to on_eof. Backend connections
// stay kernel sockets on the same shard's io_uring.
//
// Process model: lwIP keeps global state (its PCB lists, timers, ARP table),
// so there is ONE stack per process and ONE DPDK shard: with --io-backend
// dpdk the gateway runs one shard, which polls the port's single RX/TX queue
// and also drives its backend sockets. Limits: one core's worth of client
// traffic per process; one IPv4 address (the --listen address becomes the
// port's address; ARP is answered for it, every peer is taken as on-link);
// no IPv6. Scaling out would be one process per shard, each with its own port
// or queue (DPDK multi-process, RSS), which net_af_packet cannot split.
//
// Placeholder fds and the TLS hand-off. The gateway's code talks about
// sockets: an accept hands the listener_handler an fd, adopt(fd) wraps it, a
// STARTTLS probe detach()es the stream and gives the fd to the TLS control
// thread, which runs the handshake on its own io_uring and hands the fd back
// (shard::adopt again). So each DPDK connection owns an AF_UNIX socketpair: B,
// the placeholder, is what the gateway sees as the connection's fd; A stays
// here. While the connection is a virtual stream (adopted), A is idle. While
// B is elsewhere (handed to the control thread, or not yet adopted), the
// backend relays: bytes from lwIP are written to A, bytes read from A go to
// lwIP, FIN/RST/close both ways. When B comes back through adopt(), the relay
// stops: what the control thread wrote and nobody relayed yet goes to the
// client first, what the relay wrote and the control thread never read is
// delivered first to the new stream, and the stream takes over. So the
// handshake code, its deadline, audit line and counters are the very same as
// for kernel sockets, and the bulk data path after it (userspace OpenSSL over
// memory BIOs, on the shard) never touches the socketpair. The cost: two fds
// per connection, and a handshake's few kilobytes cross a socketpair.
//
// Built only with -DRPCGATE_WITH_DPDK=ON; otherwise make_backend says so.
#pragma once

#include <memory>
#include <string>

#include "core/shard.h"

namespace rpcgate::dpdk {

struct backend_options {
    std::string eal_args;  // --dpdk-args, passed to rte_eal_init
};

// True when this build has DPDK.
bool available() noexcept;

// Initialises EAL and the first port (main thread, before the shard starts;
// once per process). Returns null with a one-line reason in *err.
std::unique_ptr<core::io_backend> make_backend(const backend_options& o, std::string* err);

// One line of the backend's counters (port, stack, relay), for the exit log.
std::string describe_stats(const core::io_backend& b);

}  // namespace rpcgate::dpdk
