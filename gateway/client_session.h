// One client connection (a "session": the word means this and nothing else
// in the gateway) and the backend links it opened.
//
// The life of a record: the shard hands received bytes to on_data; in TLS
// they are decrypted first (userspace: tls::session; kTLS: the kernel
// did it). The record reassembler cuts them into records; on_client_record
// decides with decide_call (router.h) whether a CALL is forwarded to the
// backend link of its route, answered here (portmap, PROG_UNAVAIL, AUTH
// errors ...) or starts TLS. Records from a backend come back through
// on_backend_record and go out through send_to_client (encrypted once per
// batch in userspace TLS). A REPLY from the client goes to the backend whose
// backchannel CALL had its xid.
//
// Flow control: a link that is full pauses the client's receive; a client
// that is full pauses every link's receive; each resumes on_writable.
//
// Ends: terminate() (an error, logged) or finish_client() (orderly:
// close_notify in TLS, then close once sent). The session deletes itself
// (maybe_free) once the client stream and every link stream are gone.
//
// Shard thread only. Created by shard_context (accept, or back from a
// handshake); listed in its session_list.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/conn_id.h"
#include "core/shard.h"
#include "gateway/admission.h"
#include "gateway/backend_link.h"
#include "gateway/call_stats.h"
#include "gateway/client_views.h"
#include "gateway/key_updates.h"
#include "gateway/metrics.h"
#include "gateway/shard_context.h"
#include "rpc/message.h"
#include "rpc/record.h"
#include "tls/identity_map.h"
#include "tls/ktls.h"
#include "tls/session.h"

namespace rpcgate::gw {

class client_session final : public core::stream_handler, public session_list::node {
  public:
    // A plaintext connection just accepted from `peer`, which holds `slot`
    // and a slot of its source's limit (given back when the session ends).
    client_session(shard_context& ctx, core::stream* client, const sockaddr_storage& peer,
                   connection_slot slot);
    // Back from a handshake thread: same connection ID as before.
    client_session(shard_context& ctx, core::stream* client, handshake_result&& r,
                   const sockaddr_storage& peer, connection_slot slot);
    // Moved in from the process this one took over from (upgrade.h): same
    // connection ID, its backend links adopted from `c`'s fds; then
    // resume_moved(c) feeds the bytes that were received but not parsed.
    // `tls`: its TLS session restored (tls::session::restore), or null.
    client_session(shard_context& ctx, core::stream* client, const moved_conn& c,
                   std::unique_ptr<tls::session> tls, const sockaddr_storage& peer,
                   connection_slot slot);
    ~client_session() override;

    // ---- core::stream_handler (the client stream)
    void on_data(core::stream& s, core::slice data) override;
    void on_eof(core::stream& s, int err) override;
    void on_writable(core::stream&) override;
    void on_closed(core::stream&, int err) override;

    // ---- for shard_context and the gateway
    // Decrypts what the TLS session holds and forwards the records in it.
    void pump_tls();
    // Encrypts what is queued for the client (userspace TLS).
    void flush_tls();
    // Stop reading, finish the calls in flight, then close.
    void begin_drain();
    // Ends the session for `why` (logged once) with error `err`.
    void terminate(const std::string& why, int err);
    // After a CRL reload: true if this TLS client's certificate is now
    // revoked; the connection is then closed with an audit line.
    bool close_if_revoked(const std::vector<X509_CRL*>& crls);
    // ---- upgrade (upgrade.h; the old process)
    // The move begins: a session that can move (plaintext; TLS 1.3 whose
    // records are rpcgate's own or the kernel's both ways: tls::session::
    // move_blocker) asks to move at its next record boundary; any other
    // closes at its next idle point (no call in flight), with close_notify
    // in TLS.
    void upgrade_begin();
    // Moves now if at a boundary in both directions with nothing queued.
    void try_move();
    // The move deadline passed without a boundary: close between records.
    void give_up_move();
    // The old process stops: what is still here ends and is counted.
    void upgrade_leftover();
    // The new process: the unread bytes of a moved connection.
    void resume_moved(const moved_conn& c);
    // One JSON object for /connections.
    std::string describe_json() const;
    // For the top talkers and /clients (client_views.h).
    client_view view() const;

    // ---- for its backend links
    core::conn_id id() const noexcept { return id_; }
    bool terminating() const noexcept { return terminating_; }
    bool client_gone() const noexcept { return client_ == nullptr; }
    void touch() noexcept;  // activity: the idle timer starts again
    // A record from a backend; false to stop reading that backend now.
    bool on_backend_record(backend_link& l, core::slice_chain&& rec);
    // A link has room again: resume the client unless another is full.
    void maybe_resume_client();
    // A TLS link holds calls to encrypt at the end of this receive batch.
    void links_need_flush() noexcept { links_tls_dirty_ = true; }
    // Deletes the session once no stream is left (may delete the caller).
    void maybe_free();

  private:
    // `moved`: from the process this one took over from (not a new TLS session).
    client_session(shard_context& ctx, core::stream* client, core::conn_id id, std::string peer,
                   std::unique_ptr<tls::session> tls, const sockaddr_storage& peer_addr,
                   connection_slot slot, bool moved = false);

    void flush_links();
    void feed_plain(const core::slice& data);
    bool on_client_record(core::slice_chain&& rec);
    bool forward_backchannel_reply(core::slice_chain&& rec, uint32_t xid);
    core::slice_chain with_certuser_cred(const rpc::call_header& h, core::slice_chain&& args);
    core::slice_chain frame(core::slice_chain&& rec);
    void send_to_client(core::slice_chain&& bytes);
    void reply_local(core::slice reply);
    void start_tls(uint32_t xid);
    void hand_off();
    void answer_portmap(const rpc::call_message& call);
    backend_link* link_for(size_t route, uint32_t vers);
    void finish_client(bool linger = true);
    void close_all(int err);
    void kernel_close_notify();
    void send_kernel_alert(uint8_t level, uint8_t description);
    void on_control_record();
    // kTLS: the socket is detached (queued sends leave first), our TX key
    // changes if owed (key_updates::on_drained), and it is adopted again
    // with a fresh receive.
    void readopt();
    static void on_idle_timer(core::timer* t, void* arg);
    // Detaches the client and every link stream and sends them on.
    void start_move();
    std::string move_wait() const;
    // Upgrade, a session that cannot move: close it if no call is in flight.
    void maybe_close_idle();

    struct bc_call {
        uint32_t xid;
        size_t route;
    };
    static constexpr size_t k_max_bc_calls = 1024;
    static constexpr uint64_t k_tls_quiet_ms = 2000;
    static constexpr size_t k_tls_batch = 256 * 1024;

    shard_context& ctx_;
    core::stream* client_;
    core::conn_id id_;
    std::string peer_;
    sockaddr_storage peer_addr_{};  // AF_UNSPEC when unknown: never counted
    connection_slot slot_;          // --max-connections, until handed to a handshake thread
    gauge_slot open_;               // counters().sessions_open
    gauge_slot tls_open_;           // counters().tls_open
    gauge_slot prot_open_[2];       // counters().tls_protection_open[dir][mode]
    uint16_t own_port_;
    rpc::record_reassembler rr_;
    std::vector<std::unique_ptr<backend_link>> links_;  // by route, opened on first use
    std::vector<bc_call> bc_calls_;
    calls_in_flight in_flight_;  // forwarded calls awaiting a reply (call_stats.h)
    core::timer idle_timer_;
    core::timer tls_quiet_timer_;
    uint64_t last_activity_ = 0;
    uint64_t created_ms_ = 0;
    uint64_t calls_outstanding_ = 0;
    uint64_t calls_forwarded_ = 0;  // over the session's life (client_views.h)
    std::unique_ptr<tls::session> tls_;
    tls::ktls::protection prot_;    // where tls_'s crypto runs, per direction
    core::timer ktls_close_timer_;  // close_notify waits for the send queue
    uint64_t ktls_close_deadline_ = 0;
    std::optional<tls::identity> certuser_;
    core::slice_chain tls_pending_;  // plaintext for the client, encrypted per batch
    core::slice_chain early_;        // bytes after a probe, for the handshake thread
    bool terminating_ = false;
    bool draining_ = false;
    bool client_full_ = false;
    bool starttls_ = false;
    bool first_bytes_ = true;
    bool tls_shut_ = false;
    bool links_tls_dirty_ = false;  // a TLS backend link holds calls to encrypt
    bool peer_done_ = false;        // the client said it sends no more (close_notify)
    bool close_linger_ = true;      // finish_client's choice, for kernel_close_notify
    key_updates keys_;              // TLS 1.3 key updates
    bool readopting_ = false;       // a readopt's detach is under way (one at a time)
    // Upgrade (the old process): wants to move at its next boundary; its
    // streams are detaching; the client was paused at a boundary for it;
    // it stays and closes at an idle point; it is counted when it ends.
    bool want_move_ = false;
    bool moving_ = false;
    bool paused_for_move_ = false;
    bool upgrade_drain_ = false;
    bool leftover_ = false;
    bool cut_ = false;  // ended by a deadline or an error, not cleanly
};

template <typename F>
void session_list::for_each(F&& f) {
    for (node* n = head_; n;) {
        node* next = n->next_in_shard;
        f(static_cast<client_session&>(*n));
        n = next;
    }
}

}  // namespace rpcgate::gw
