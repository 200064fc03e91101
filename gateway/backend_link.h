// One backend connection of a client session (a "link": the word means this
// and nothing else in the gateway).
//
// A session opens one link per route it uses, on first use, on its own
// shard. Records are reassembled and handed to the session whole
// (client_session::on_backend_record). With upstream TLS (RFC 9289 client
// role) a link goes connecting -> (handshake thread: probe, handshake) ->
// ready; calls wait in `pending_` until then. In TLS, calls are encrypted
// once per client receive batch (flush); with kTLS TX the kernel does it.
//
// Owned by its session (client_session::links_); shard thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/conn_id.h"
#include "core/shard.h"
#include "gateway/key_updates.h"
#include "gateway/metrics.h"
#include "gateway/shard_context.h"
#include "rpc/record.h"
#include "tls/ktls.h"
#include "tls/session.h"

namespace rpcgate::gw {

class client_session;

class backend_link final : public core::stream_handler, public upstream_waiter {
  public:
    backend_link(client_session& owner, shard_context& ctx, size_t route, uint32_t vers);
    // A connected plaintext link moved in from the process this one took
    // over from (upgrade.h): adopts `fd` and is ready at once.
    backend_link(client_session& owner, shard_context& ctx, size_t route, uint32_t vers,
                 core::conn_id id, int fd);
    ~backend_link() override;

    // Starts connecting; false (the session is terminated) when no socket
    // could be made.
    bool open();

    // A framed record for the backend: queued until ready, encrypted per batch.
    void send_record(core::slice_chain&& framed);
    // Encrypts what send_record queued (userspace TLS).
    void flush();
    // Above its limit the client stops being read.
    bool full() const;
    // Connected or connecting, or with a handshake thread.
    bool alive() const { return s_ != nullptr || handing_; }
    // Has a stream (for the session's flow control and end).
    bool has_stream() const { return s_ != nullptr; }
    void pause_receive() {
        if (s_) s_->pause_receive();
    }
    void resume_receive() {
        if (s_) s_->resume_receive();
    }
    // This link was full when the client was paused for it.
    bool blocks_client() const { return blocking_client_; }
    void set_blocks_client() { blocking_client_ = true; }
    // Ends this backend connection: close_notify first when in TLS and the
    // end is orderly (err == 0).
    void close(int err);

    size_t route_index() const { return route_; }
    uint32_t vers() const { return vers_; }
    core::conn_id id() const { return id_; }
    // Upgrade: true when this link could move now — plaintext, connected,
    // no call waiting, no record half-read, nothing queued to send.
    bool can_move() const;
    // Upgrade: hands the socket over (no loss counted, no close).
    void detach_for_move(core::stream::detach_fn done);
    // Bytes received from the backend before a move, not yet parsed.
    void feed_unread(const core::slice& data) { receive_plain(data); }
    // When calls started to reach the backend (connected, and through the
    // upstream handshake), by the shard's clock; 0 before. Calls forwarded
    // earlier waited for it: their backend time starts there.
    uint64_t ready_ns() const { return ready_ns_; }
    const std::string& target() const;
    // For /connections: one JSON object when the link is in TLS, else "".
    std::string tls_json() const;

    // core::stream_handler
    void on_connected(core::stream& s, int err) override;
    void on_data(core::stream& s, core::slice data) override;
    void on_eof(core::stream& s, int err) override;
    void on_writable(core::stream&) override;
    void on_closed(core::stream& s, int err) override;
    // upstream_waiter
    void on_upstream(upstream_result&& r) override;

  private:
    const backend_route& route() const { return ctx_.config().backends[route_]; }
    void start_upstream_tls();
    void fail_upstream(const std::string& why);
    void receive_plain(const core::slice& data);
    void receive_tls();
    // The record a kTLS RX receive stopped at (control_records.h).
    void on_control_record(core::stream& s);
    // kTLS: detach `s` (queued sends leave first), change our TX key if
    // owed (key_updates::on_drained), adopt the socket again.
    void readopt(core::stream& s);
    void count_lost();

    static constexpr size_t k_tls_batch = 256 * 1024;
    client_session& owner_;
    shard_context& ctx_;
    size_t route_;
    uint32_t vers_;
    core::conn_id id_;
    core::stream* s_ = nullptr;
    rpc::record_reassembler rr_;
    core::timer connect_timer_;
    gauge_slot open_;                    // health(route).open while connected
    std::unique_ptr<tls::session> tls_;  // upstream TLS, once established
    core::slice_chain pending_;          // framed calls waiting for the upstream handshake
    core::slice_chain tls_out_;          // framed records to encrypt at the next flush
    uint64_t token_ = 0;                 // registered with the shard while handing_
    uint64_t ready_ns_ = 0;              // see ready_ns()
    bool blocking_client_ = false;
    bool ready_ = true;
    bool handing_ = false;  // a handshake thread has the socket
    bool tls_shut_ = false;
    bool closed_by_us_ = false;   // close() ran: its on_closed is no loss
    bool readopting_ = false;     // a readopt's detach is under way (one at a time)
    key_updates keys_;            // TLS 1.3 key updates (upstream TLS)
    tls::ktls::protection prot_;  // upstream TLS: where its crypto runs
};

}  // namespace rpcgate::gw
