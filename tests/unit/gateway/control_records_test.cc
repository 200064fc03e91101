// What a connection does with each kTLS control record, for both roles,
// without sockets (gateway/control_records.h).
#include "gateway/control_records.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace rpcgate::gw {
namespace {

namespace k = tls::ktls;

control_read record(k::control kind, uint8_t alert = 0, bool requested = false) {
    control_read r;
    r.n = 5;
    r.record.kind = kind;
    r.record.alert_description = alert;
    r.record.update_requested = requested;
    return r;
}

control_read failed(int err) {
    control_read r;
    r.n = -err;
    return r;
}

TEST(control_records, server_answers_close_notify_with_its_own) {
    control_reaction a = react(tls_role::server, record(k::control::close_notify), true);
    EXPECT_TRUE(a.orderly);
    EXPECT_TRUE(a.peer_done);
    EXPECT_FALSE(a.no_close_notify);
    EXPECT_EQ(a.fatal_alert, 0);
    EXPECT_EQ(a.counter, &gateway_counters::tls_close_notify);
}

TEST(control_records, server_closes_cleanly_at_eof) {
    control_read eof;
    control_reaction a = react(tls_role::server, eof, true);
    EXPECT_TRUE(a.orderly);
    EXPECT_FALSE(a.peer_done);
    EXPECT_EQ(a.counter, nullptr);
}

TEST(control_records, server_sends_nothing_after_an_alert) {
    control_reaction a = react(tls_role::server, record(k::control::alert, 48), true);
    EXPECT_FALSE(a.orderly);
    EXPECT_TRUE(a.no_close_notify);
    EXPECT_EQ(a.fatal_alert, 0);
    EXPECT_EQ(a.err, -ECONNRESET);
    EXPECT_EQ(a.counter, &gateway_counters::tls_alerts_received);
    EXPECT_NE(a.what.find("(48)"), std::string::npos) << a.what;
}

TEST(control_records, server_closes_cleanly_at_a_key_update) {
    control_reaction a = react(tls_role::server, record(k::control::key_update, 0, true), true);
    EXPECT_TRUE(a.orderly);
    EXPECT_FALSE(a.peer_done);
    EXPECT_EQ(a.counter, &gateway_counters::tls_key_update_closes);
    EXPECT_NE(a.what.find("update requested"), std::string::npos) << a.what;
}

TEST(control_records, server_refuses_a_ticket_from_a_client) {
    control_reaction a = react(tls_role::server, record(k::control::new_session_ticket), true);
    EXPECT_TRUE(a.no_close_notify);
    EXPECT_EQ(a.fatal_alert, 10);  // unexpected_message
    EXPECT_EQ(a.err, -EPROTO);
    a = react(tls_role::server, record(k::control::unexpected), false);
    EXPECT_EQ(a.fatal_alert, 0);  // no kTLS TX: no alert record to send
}

TEST(control_records, server_alerts_after_a_record_that_did_not_decrypt) {
    control_reaction a = react(tls_role::server, failed(EBADMSG), true);
    EXPECT_EQ(a.fatal_alert, 20);  // bad_record_mac
    EXPECT_EQ(a.err, -EBADMSG);
    EXPECT_EQ(a.counter, &gateway_counters::tls_errors);
    EXPECT_EQ(react(tls_role::server, failed(EAGAIN), true).fatal_alert, 0);
    EXPECT_EQ(react(tls_role::server, failed(EIO), true).fatal_alert, 80);  // internal_error
}

TEST(control_records, client_consumes_a_ticket_and_goes_on) {
    control_reaction a = react(tls_role::client, record(k::control::new_session_ticket), true);
    EXPECT_TRUE(a.go_on);
    EXPECT_EQ(a.counter, &gateway_counters::upstream_tickets);
}

TEST(control_records, client_ends_at_anything_else) {
    control_reaction a = react(tls_role::client, record(k::control::key_update), true);
    EXPECT_FALSE(a.go_on);
    EXPECT_FALSE(a.no_close_notify);
    EXPECT_EQ(a.counter, &gateway_counters::tls_key_update_closes);
    EXPECT_EQ(a.err, -ECONNRESET);
    a = react(tls_role::client, record(k::control::unexpected), true);
    EXPECT_TRUE(a.no_close_notify);
    EXPECT_EQ(a.fatal_alert, 10);
    a = react(tls_role::client, record(k::control::alert, 40), true);
    EXPECT_TRUE(a.no_close_notify);
    EXPECT_EQ(a.fatal_alert, 0);
    EXPECT_EQ(a.what, "sent alert");
    control_read eof;
    EXPECT_EQ(react(tls_role::client, eof, true).what, "closed the connection");
}

}  // namespace
}  // namespace rpcgate::gw
