#include "gateway/key_updates.h"

#include <fmt/format.h>
#include <openssl/ssl.h>

#include "gateway/control_records.h"
#include "tls/ktls.h"

namespace rpcgate::gw {

using core::bump;

void key_updates::start(tls::session& tls, uint64_t rekey_after, size_t record_size) {
    tls_ = &tls;
    // A session moved in from another process (a live upgrade) brings the
    // updates it made there: counted there already.
    userspace_seen_ = tls.own_key_updates();
    if (record_size) record_size_ = record_size;
    uint64_t limit = rekey_after;
    if (limit == 0) limit = tls.suite() ? tls::ktls::aead_record_limit(tls.suite()) : 0;
    if (!tls.kernel_tx()) {
        tls.set_rekey_after(limit);
        return;
    }
    // kTLS TX: a new key needs the secrets kept and a kernel that takes it;
    // without them the limit still holds, and ends the connection.
    limit_ = limit;
    can_rekey_ = tls.secrets() && tls::ktls::kernel_can_rekey();
    left_ = limit_;
}

void key_updates::resume(int fd) {
    // A connection moved in from another process (a live upgrade): its key
    // may have protected records there already; the kernel knows how many.
    uint64_t seq = 0;
    if (limit_ == 0 || !tls::ktls::tx_record_seq(fd, &seq)) return;
    left_ = seq < limit_ ? limit_ - seq : 0;
}

key_updates::tx_step key_updates::due(int fd, size_t bytes) {
    if (limit_ == 0 || owed_ || exhausted_) return tx_step::go_on;
    // One send() makes at most one short record plus its full ones (the
    // stream may merge sends: fewer, never more, short ones).
    uint64_t most = 1 + bytes / record_size_;
    if (most < left_) {
        left_ -= most;
        return tx_step::go_on;
    }
    uint64_t seq = 0;
    if (!tls::ktls::tx_record_seq(fd, &seq)) {
        limit_ = 0;  // cannot tell: leave the key alone
        return tx_step::go_on;
    }
    if (seq + most < limit_) {
        left_ = limit_ - seq - most;
        return tx_step::go_on;
    }
    if (!can_rekey_) {
        exhausted_ = true;
        return tx_step::close;
    }
    owed_ = true;
    return tx_step::rekey;
}

std::string key_updates::close_reason() const {
    return fmt::format(
        "the kTLS TX key has protected its {} records (--tls-rekey-after; RFC 8446 §5.5) and {} "
        "cannot take a new one: closing with close_notify",
        limit_, tls_ && !tls_->secrets() ? "half kTLS (RX in userspace)" : "this kernel");
}

bool key_updates::on_drained(int fd, gateway_counters& c, std::string* why) {
    if (!owed_) return true;
    tls::ktls::traffic_secrets* s = tls_ ? tls_->secrets() : nullptr;
    if (!s) {
        *why = "a TX rekey without traffic secrets";
        return false;
    }
    // A KeyUpdate is rare; a full socket buffer is waited for, briefly.
    if (!rekey_tx(fd, *s, 1000, why)) return false;
    bump(owed_peer_ ? c.tls_rekeys_tx_peer : c.tls_rekeys_tx_own);
    owed_ = owed_peer_ = false;
    left_ = limit_;
    return true;
}

void key_updates::count_userspace(gateway_counters& c) {
    uint64_t n = tls_ ? tls_->own_key_updates() : 0;
    if (n > userspace_seen_) bump(c.tls_rekeys_tx_own, n - userspace_seen_);
    userspace_seen_ = n;
}

std::string key_updates::generations_json() const {
    uint64_t tx = 0, rx = 0;
    if (tls_ && tls_->secrets()) {
        tx = tls_->secrets()->tx_generation();
        rx = tls_->secrets()->rx_generation();
    } else if (tls_) {
        tx = tls_->tx_generation();
        rx = tls_->rx_generation();
    }
    return fmt::format(R"({{"tx":{},"rx":{}}})", tx, rx);
}

}  // namespace rpcgate::gw
