// The upgrade hand-off format: what is encoded decodes to the same, and
// anything short, long, forged or of another version is refused.
#include "gateway/upgrade_wire.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/upgrade.h"

namespace rpcgate::gw::upgrade_wire {
namespace {

conn_msg sample_conn() {
    conn_msg m;
    m.id = core::conn_id{1700000000, 123456, 42};
    m.shard = 1;
    m.peer = "127.0.0.1:40000";
    m.peer_addr = std::string(16, '\x07');
    m.detach_ns = 987654321;
    m.created_ms = 1500;
    m.calls_outstanding = 3;
    m.calls_forwarded = 1000;
    m.first_bytes = false;
    m.tls_flags = 5;
    m.tls_subject = "CN=client";
    m.has_certuser = true;
    m.uid = 1000;
    m.gid = 100;
    m.gids = {4, 24, 27};
    m.client_unread = 10;
    m.links = {{0, 3, core::conn_id{1700000000, 1, 43}, 7}, {2, 4, core::conn_id{1, 2, 44}, 0}};
    m.calls = {{0x1234, 5, 111}, {0x5678, 6, 222}, {0x9abc, 0, 333}};
    m.backchannel = {{77, 2}};
    return m;
}

TEST(UpgradeWire, ConnRoundTrips) {
    conn_msg m = sample_conn();
    std::string wire = encode_conn(m);
    conn_msg back;
    std::string err;
    ASSERT_TRUE(decode_conn(wire, &back, &err)) << err;
    EXPECT_EQ(back, m);
    EXPECT_EQ(back.fd_count(), 3u);
    EXPECT_EQ(back.unread_total(), 17u);
}

// A TLS connection's session state (tls/moved_state.h) travels whole, and a
// state that does not hold together is refused as a whole.
TEST(UpgradeWire, ConnWithTlsStateRoundTrips) {
    conn_msg m = sample_conn();
    m.has_tls = true;
    tls::moved_state& t = m.tls;
    t.where = tls::moved_state::records::kernel;
    t.flags = 0x1b;
    t.suite = 0x03001302;
    t.version = "TLSv1.3";
    t.cipher = "TLS_AES_256_GCM_SHA384";
    t.alpn = "sunrpc";
    t.peer_subject = "CN=client";
    t.peer_cert = std::string(900, '\x30');
    t.tx_secret = std::string(48, 't');
    t.rx_secret = std::string(48, 'r');
    t.tx_generation = 3;
    t.rx_generation = 5;
    t.tx_seq = 1u << 20;
    t.rx_seq = 77;
    t.records_since_update = 12;
    t.own_updates = 2;
    std::string err;
    conn_msg back;
    ASSERT_TRUE(decode_conn(encode_conn(m), &back, &err)) << err;
    EXPECT_EQ(back, m);

    conn_msg bad = m, out;
    bad.tls.rx_secret = std::string(32, 'r');  // not the TX secret's length
    EXPECT_FALSE(decode_conn(encode_conn(bad), &out, &err));
    EXPECT_NE(err.find("secrets"), std::string::npos) << err;
    bad = m;
    bad.tls.where = tls::moved_state::records(9);
    EXPECT_FALSE(decode_conn(encode_conn(bad), &out, &err));
    EXPECT_NE(err.find("unknown"), std::string::npos) << err;
    bad = m;
    bad.tls.tx_secret = bad.tls.rx_secret = std::string(65, 's');  // longer than any hash
    EXPECT_FALSE(decode_conn(encode_conn(bad), &out, &err));
    // Every truncation of the TLS block is refused, never half-read.
    std::string wire = encode_conn(m);
    for (size_t cut = 1; cut < 200; cut += 7) {
        std::string shorter = wire.substr(0, wire.size() - cut);
        uint32_t len = uint32_t(shorter.size() - k_header);
        shorter[8] = char(len >> 24);
        shorter[9] = char(len >> 16);
        shorter[10] = char(len >> 8);
        shorter[11] = char(len);
        conn_msg part;
        EXPECT_FALSE(decode_conn(shorter, &part, &err)) << "cut " << cut;
    }
}

TEST(UpgradeWire, OtherMessagesRoundTrip) {
    std::string err;
    hello_msg h{4242, "1.2.3"}, h2;
    ASSERT_TRUE(decode_hello(encode_hello(h), &h2, &err)) << err;
    EXPECT_EQ(h2.pid, 4242u);
    EXPECT_EQ(h2.software, "1.2.3");

    offer_msg o, o2;
    o.totals = {1, 2, 3, 4, 5, 6};
    o.groups = {{0, 0, 2}, {1, 0, 2}, {2, 0, 1}};
    ASSERT_TRUE(decode_offer(encode_offer(o), &o2, &err)) << err;
    EXPECT_EQ(o2.totals, o.totals);
    EXPECT_EQ(o2.groups, o.groups);

    std::string why;
    ASSERT_TRUE(decode_reason(encode_reason(msg_type::refuse, "no"), &why, &err)) << err;
    EXPECT_EQ(why, "no");

    std::string_view chunk;
    std::string wire = encode_bytes("abc");
    ASSERT_TRUE(decode_bytes(wire, &chunk, &err)) << err;
    EXPECT_EQ(chunk, "abc");

    totals_msg t{{7, 8, 9, 10, 11, 12}}, t2;
    ASSERT_TRUE(decode_totals(encode_totals(msg_type::final, t), &t2, &err)) << err;
    EXPECT_EQ(t2.totals, t.totals);
}

TEST(UpgradeWire, AFullChunkFitsOneMessage) {
    std::string chunk(k_max_chunk, 'x');
    std::string wire = encode_bytes(chunk);
    EXPECT_EQ(wire.size(), k_header + k_max_body);
    std::string_view back;
    std::string err;
    ASSERT_TRUE(decode_bytes(wire, &back, &err)) << err;
    EXPECT_EQ(back.size(), k_max_chunk);
    // One byte more no longer fits: refused, not truncated.
    EXPECT_FALSE(decode_bytes(encode_bytes(chunk + "x"), &back, &err));
    // And it crosses a socket pair whole.
    int sp[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp), 0);
    ASSERT_EQ(send_message(sp[0], wire), "");
    std::string got;
    std::vector<int> fds;
    ASSERT_EQ(recv_message(sp[1], &got, &fds), "");
    EXPECT_EQ(got, wire);
    ::close(sp[0]);
    ::close(sp[1]);
}

TEST(UpgradeWire, RefusesAnotherVersion) {
    std::string wire = encode_hello({1, "x"}, k_wire_version + 1);
    hello_msg h;
    std::string err;
    EXPECT_FALSE(decode_hello(wire, &h, &err));
    EXPECT_NE(err.find("version"), std::string::npos) << err;
    // The header alone still says which version it was.
    header hd;
    ASSERT_TRUE(parse_header(wire, &hd, &err, true)) << err;
    EXPECT_EQ(hd.version, k_wire_version + 1);
}

TEST(UpgradeWire, RefusesBadMagicTypeAndLengths) {
    std::string err;
    conn_msg m;
    std::string wire = encode_conn(sample_conn());
    // Every truncation is refused, never read past.
    for (size_t n = 0; n < wire.size(); ++n) {
        conn_msg back;
        EXPECT_FALSE(decode_conn(std::string_view(wire).substr(0, n), &back, &err)) << n;
    }
    std::string bad = wire;
    bad[0] = 'X';
    EXPECT_FALSE(decode_conn(bad, &m, &err));
    EXPECT_NE(err.find("magic"), std::string::npos) << err;
    bad = wire;
    bad[7] = 99;  // type
    EXPECT_FALSE(decode_conn(bad, &m, &err));
    // Trailing bytes: the length field no longer matches.
    EXPECT_FALSE(decode_conn(wire + "x", &m, &err));
    // A header that agrees with trailing garbage inside the body.
    bad = wire + "x";
    uint32_t n = uint32_t(bad.size() - k_header);
    for (int i = 0; i < 4; ++i) bad[8 + i] = char(n >> (8 * (3 - i)));
    EXPECT_FALSE(decode_conn(bad, &m, &err));
    EXPECT_NE(err.find("trailing"), std::string::npos) << err;
    // A forged element count larger than the body is refused without allocating.
    conn_msg small;
    small.id = core::conn_id{1, 1, 1};
    wire = encode_conn(small);
    // The backchannel count is the last u32 of the body.
    for (int i = 0; i < 4; ++i) wire[wire.size() - 4 + i] = char(0xff);
    EXPECT_FALSE(decode_conn(wire, &m, &err));
    // No connection ID.
    EXPECT_FALSE(decode_conn(encode_conn(conn_msg{}), &m, &err));
}

TEST(UpgradeWire, RefusesOversizedOffer) {
    offer_msg o, back;
    o.groups = {{0, 0, 200}, {1, 0, 200}};
    std::string err;
    EXPECT_FALSE(decode_offer(encode_offer(o), &back, &err));
    o.groups = {{3, 0, 1}};
    EXPECT_FALSE(decode_offer(encode_offer(o), &back, &err));
}

TEST(UpgradeWire, SendsMessagesWithDescriptors) {
    int sp[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp), 0);
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    std::string wire = encode_conn(sample_conn());
    ASSERT_EQ(send_message(sp[0], wire, pipefd, 2), "");
    std::string got;
    std::vector<int> fds;
    ASSERT_EQ(recv_message(sp[1], &got, &fds), "");
    EXPECT_EQ(got, wire);
    ASSERT_EQ(fds.size(), 2u);
    // The received write end reaches the original read end.
    ASSERT_EQ(::write(fds[1], "z", 1), 1);
    char c = 0;
    ASSERT_EQ(::read(pipefd[0], &c, 1), 1);
    EXPECT_EQ(c, 'z');
    for (int fd : fds) ::close(fd);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    ::close(sp[0]);
    fds.clear();
    EXPECT_EQ(recv_message(sp[1], &got, &fds), "closed");
    ::close(sp[1]);
}

TEST(UpgradeArgv, ReplacesAPreviousHandOffFd) {
    // A process that came from an upgrade passes its arguments on without
    // its own --upgrade-fd, in either spelling.
    EXPECT_EQ(upgrade_argv({"rpcgate", "--listen", "x", "--upgrade-fd", "5", "--shards", "2"}, 9),
              (std::vector<std::string>{"rpcgate", "--listen", "x", "--shards", "2", "--upgrade-fd",
                                        "9"}));
    EXPECT_EQ(upgrade_argv({"rpcgate", "--upgrade-fd=7"}, 3),
              (std::vector<std::string>{"rpcgate", "--upgrade-fd", "3"}));
}

}  // namespace
}  // namespace rpcgate::gw::upgrade_wire
