// Private to the handshake service (tls/handshake_service.h): one connection's
// state machine, either role, either I/O mode. handshake_service.cc runs the
// poll loop and the mailboxes; handshake_conn.cc is what one connection does
// on readiness and at its deadline. Only the service's thread touches a conn.
#pragma once

#include <poll.h>

#include <memory>
#include <optional>
#include <string>

#include "core/buffer.h"
#include "core/conn_id.h"
#include "tls/client/client_session.h"
#include "tls/handshake_service.h"

namespace rpcgate::tls {

// One handshake in progress on the service's thread: a server-role
// connection (`req_` null) or a backend connection (client role), handshaking
// over memory BIOs or on the socket. Every socket operation is non-blocking;
// the thread polls `fd_` for `events_` and calls `on_ready`, or `on_deadline`
// once `deadline_ms_` has passed.
class handshake_service::conn {
  public:
    // Server role.
    conn(handshake_service& svc, unsigned from, int fd, core::conn_id id, std::string peer)
        : svc_(svc), from_(from), fd_(fd), io_(svc.io_), id_(id), peer_(std::move(peer)) {}
    // Client role.
    conn(handshake_service& svc, unsigned from, std::unique_ptr<upstream_request> r)
        : svc_(svc),
          from_(from),
          fd_(r->fd),
          io_(svc.io_),
          id_(r->id),
          peer_(r->target),
          req_(std::move(r)) {}

    int fd() const noexcept { return fd_; }
    short events() const noexcept { return events_; }
    uint64_t deadline_ms() const noexcept { return deadline_ms_; }
    bool over() const noexcept { return phase_ == phase::over; }
    bool server() const noexcept { return !req_; }

    // Starts the handshake; `early` holds bytes the shard already read.
    void start(core::slice_chain&& early);

    // The fd is ready for `events()`: the next step of whatever phase it is in.
    void on_ready();
    // `deadline_ms()` passed: a handshake times out, a flight or a linger ends.
    void on_deadline();

    // The service is stopping: the fd is closed, the connection forgotten.
    void cut();

  private:
    enum class phase {
        handshake,  // in progress
        flushing,   // done: the last flight (memory BIOs) leaves before the hand-back
        lingering,  // refused: the alert leaves, FIN, the peer's bytes are dropped
        over,       // handed back or closed
    };
    enum class rd { data, again, eof };

    handshake_counters& counters() const noexcept;

    // ---- server role ----

    void start_server(core::slice_chain&& early);

    // RFC 9289 §5.1.1: after STARTTLS the next bytes must be a TLS handshake
    // record (content type 22); anything else is dropped. Peeked, so that the
    // byte is read again by whichever side reads the stream. False: wait or over.
    bool check_first_byte();

    void not_tls();

    void server_step();

    void server_succeed();

    void server_fail(const std::string& why);

    void hand_back_server();

    // ---- client role ----

    void start_client();

    // Readiness: bytes in for the probe (and, over memory BIOs, the
    // handshake), or a handshake step on the socket.
    void client_step();

    void client_advance(client::session_state st);

    // `count` false: already counted (a timeout).
    void client_fail(const std::string& why, bool count = false);

    void hand_back_client();

    // False when the shard's mailbox is full (nothing was handed over).
    bool post_upstream(upstream_result::kind k, std::unique_ptr<session> tls,
                       core::slice_chain&& early, const std::string& reason, int fd = -1);

    // ---- both roles ----

    // Hands `r` to the shard that asked, through its mailbox; false (and `r`
    // deleted) when the mailbox is full. A raw pointer travels: a refused
    // post must not have consumed what it carried.
    template <typename Result>
    bool post_to_shard(Result* r);

    // Socket mode: the kernel takes the record layer where it can.
    void finish_record_layer();

    // The last flight must leave before the socket changes hands.
    void flush_then_hand_back();

    // Sends what `out_` holds, as far as the socket takes it. False on a
    // socket error (`why`).
    bool flush(std::string* why);

    // Reads what the socket has (memory BIOs, the probe's reply): a copy in
    // a private heap block, since it may travel to a shard inside a session.
    rd read_some(core::slice* got, std::string* why);

    short wait_events() const noexcept { return POLLIN | (out_.empty() ? 0 : POLLOUT); }

    // A refused connection: what is queued (an alert) leaves, then FIN, then
    // the peer's bytes are read and dropped until its EOF or a short
    // deadline, so that bytes it already sent do not make the kernel reset
    // the connection and destroy the alert before the peer reads it.
    void linger();

    void linger_step();

    void close_fd();

    handshake_service& svc_;
    unsigned from_;
    int fd_;
    int fd_flags_ = 0;
    handshake_io io_;
    core::conn_id id_;
    std::string peer_;  // the client's address, or the backend as configured
    phase phase_ = phase::handshake;
    short events_ = POLLIN;
    uint64_t started_ms_ = 0;
    uint64_t deadline_ms_ = 0;
    int eof_err_ = 0;
    bool shut_ = false;
    core::slice_chain out_;  // bytes to send (memory BIOs, the probe)
    std::unique_ptr<session> tls_;
    // Server role.
    bool checked_ = false;  // the first byte was seen to be a TLS handshake record
    std::optional<identity> certuser_;
    // Client role.
    std::unique_ptr<upstream_request> req_;
    std::unique_ptr<client::client_session> cs_;
    core::slice_chain early_;  // plaintext that came with the outcome
    upstream_result::kind outcome_ = upstream_result::kind::failed;
    std::string reason_;
};

}  // namespace rpcgate::tls
