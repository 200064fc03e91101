#include "tls/session.h"

#include <gtest/gtest.h>
#include <openssl/ssl.h>

#include <random>

#include "test_util.h"

namespace rpcgate::tls {
namespace {

using test::cert;
using test::pair;

std::unique_ptr<context> server_ctx(server_options o = test::server_opts()) {
    std::string err;
    auto c = context::make_server(o, &err);
    EXPECT_TRUE(c) << err;
    return c;
}

std::unique_ptr<context> client_ctx(client_options o = test::client_opts()) {
    std::string err;
    auto c = context::make_client(o, &err);
    EXPECT_TRUE(c) << err;
    return c;
}

server_options mtls() {
    auto o = test::server_opts();
    o.require_client_cert = true;
    o.crl_file = cert("crl.pem");
    return o;
}

bool has(uint32_t flags, uint32_t f) {
    return (flags & f) == f;
}

TEST(TlsSession, HandshakeWithAlpn) {
    auto s = server_ctx();
    auto c = client_ctx();
    pair p(*c, *s);
    p.handshake();
    ASSERT_EQ(p.cst, status::done) << p.client->error_text();
    ASSERT_EQ(p.sst, status::done) << p.server->error_text();
    EXPECT_EQ(p.server->alpn(), "sunrpc");
    EXPECT_EQ(p.client->alpn(), "sunrpc");
    EXPECT_EQ(p.server->version(), "TLSv1.3");
    EXPECT_FALSE(p.server->cipher().empty());
    // The client sent no certificate; the server's verified against the CA.
    EXPECT_EQ(p.server->flags(), flag_handshake) << flags_text(p.server->flags());
    EXPECT_EQ(p.client->flags(), flag_handshake | flag_gotcert | flag_verified)
        << flags_text(p.client->flags());
    EXPECT_EQ(p.client->peer_subject(), "CN=localhost");
    EXPECT_EQ(p.server->pending_input(), 0u);
}

TEST(TlsSession, ClientWithoutAlpn) {
    auto s = server_ctx();
    auto c = client_ctx();
    SSL_CTX_set_alpn_protos(c->native(), nullptr, 0);
    pair p(*c, *s);
    p.handshake();
    ASSERT_EQ(p.sst, status::done) << p.server->error_text();
    ASSERT_EQ(p.cst, status::done) << p.client->error_text();
    EXPECT_EQ(p.server->alpn(), "");

    auto so = test::server_opts();
    so.alpn_strict = true;
    auto strict = server_ctx(so);
    pair q(*c, *strict);
    q.handshake();
    EXPECT_EQ(q.sst, status::error);
    EXPECT_EQ(q.cst, status::error);
    EXPECT_TRUE(has(q.server->flags(), flag_handshfail));
    EXPECT_NE(q.server->error_text().find("no application protocol"), std::string::npos)
        << q.server->error_text();
    EXPECT_NE(q.client->error_text().find("no application protocol"), std::string::npos)
        << q.client->error_text();
}

TEST(TlsSession, ClientOfferingOnlyH2IsRefused) {
    auto s = server_ctx();
    auto c = client_ctx();
    static const unsigned char h2[] = {2, 'h', '2'};
    ASSERT_EQ(SSL_CTX_set_alpn_protos(c->native(), h2, sizeof(h2)), 0);
    pair p(*c, *s);
    p.handshake();
    EXPECT_EQ(p.sst, status::error);
    EXPECT_EQ(p.cst, status::error);
    EXPECT_EQ(p.server->flags(), flag_handshfail);
    EXPECT_NE(p.server->error_text().find("no application protocol"), std::string::npos)
        << p.server->error_text();
    EXPECT_NE(p.client->error_text().find("alert received: no application protocol"),
              std::string::npos)
        << p.client->error_text();
}

TEST(TlsSession, AlpnListWithSunrpcLast) {
    auto s = server_ctx();
    auto c = client_ctx();
    static const unsigned char list[] = {2, 'h', '2', 6, 's', 'u', 'n', 'r', 'p', 'c'};
    ASSERT_EQ(SSL_CTX_set_alpn_protos(c->native(), list, sizeof(list)), 0);
    pair p(*c, *s);
    p.handshake();
    ASSERT_EQ(p.sst, status::done) << p.server->error_text();
    EXPECT_EQ(p.client->alpn(), "sunrpc");
}

TEST(TlsSession, Tls12OnlyClientIsRefused) {
    auto s = server_ctx();
    auto co = test::client_opts();
    co.min_version = TLS1_2_VERSION;
    auto c = client_ctx(co);
    SSL_CTX_set_max_proto_version(c->native(), TLS1_2_VERSION);
    pair p(*c, *s);
    p.handshake();
    EXPECT_EQ(p.sst, status::error);
    EXPECT_EQ(p.cst, status::error);
    EXPECT_NE(p.server->error_text().find("unsupported protocol"), std::string::npos)
        << p.server->error_text();
    EXPECT_NE(p.server->error_text().find("alert sent: protocol version"), std::string::npos)
        << p.server->error_text();
}

TEST(TlsSession, ClientRequiresAlpn) {
    // A server that selects nothing (plain OpenSSL context, no ALPN callback).
    std::string err;
    auto so = test::server_opts();
    auto s = server_ctx(so);
    SSL_CTX_set_alpn_select_cb(s->native(), nullptr, nullptr);
    auto co = test::client_opts();
    co.require_alpn = true;
    auto c = client_ctx(co);
    pair p(*c, *s);
    p.handshake();
    EXPECT_EQ(p.cst, status::error);
    EXPECT_NE(p.client->error_text().find("ALPN"), std::string::npos) << p.client->error_text();
}

TEST(TlsSession, ClientChecksServerName) {
    auto s = server_ctx();
    auto co = test::client_opts();
    co.server_name = "127.0.0.1";  // the IP SAN
    auto ok = client_ctx(co);
    pair p(*ok, *s);
    p.handshake();
    EXPECT_EQ(p.cst, status::done) << p.client->error_text();

    co.server_name = "otherhost";
    auto bad = client_ctx(co);
    pair q(*bad, *s);
    q.handshake();
    EXPECT_EQ(q.cst, status::error);
    EXPECT_NE(q.client->error_text().find("hostname mismatch"), std::string::npos)
        << q.client->error_text();
}

TEST(TlsSession, MtlsValidClient) {
    auto s = server_ctx(mtls());
    auto c = client_ctx(test::client_opts("client"));
    pair p(*c, *s);
    p.handshake();
    ASSERT_EQ(p.sst, status::done) << p.server->error_text();
    ASSERT_EQ(p.cst, status::done) << p.client->error_text();
    EXPECT_EQ(p.server->flags(), flag_handshake | flag_gotcert | flag_verified)
        << flags_text(p.server->flags());
    EXPECT_EQ(p.server->peer_subject(), "CN=client1,O=rpcgate test");
}

struct refusal {
    const char* who;
    const char* reason;
    uint32_t flags;
};
// ctest lists the test by this, not by the struct's bytes.
void PrintTo(const refusal& r, std::ostream* os) {
    *os << r.who;
}

class TlsMtlsRefusal : public testing::TestWithParam<refusal> {};

TEST_P(TlsMtlsRefusal, IsRefusedAndFlagged) {
    const refusal& r = GetParam();
    auto s = server_ctx(mtls());
    auto c = client_ctx(test::client_opts(r.who));
    pair p(*c, *s);
    p.handshake();
    EXPECT_EQ(p.sst, status::error);
    // TLS 1.3: the client is done before the server judges its certificate, and
    // learns of the refusal from the alert on its next read.
    ASSERT_EQ(p.cst, status::done) << p.client->error_text();
    core::slice_chain plain, out;
    EXPECT_EQ(p.client->read(plain, out), status::error);
    EXPECT_NE(p.client->error_text().find("alert"), std::string::npos) << p.client->error_text();
    EXPECT_EQ(p.server->flags(), r.flags) << flags_text(p.server->flags());
    EXPECT_NE(p.server->error_text().find(r.reason), std::string::npos) << p.server->error_text();
    EXPECT_EQ(p.server->peer_subject(), std::string("CN=") + r.who);
}

INSTANTIATE_TEST_SUITE_P(
    Certs, TlsMtlsRefusal,
    testing::Values(
        refusal{"expired", "certificate has expired", flag_handshfail | flag_gotcert},
        refusal{"selfsigned", "self-signed", flag_handshfail | flag_gotcert | flag_selfsigned},
        refusal{"revoked", "certificate revoked", flag_handshfail | flag_gotcert},
        refusal{"untrusted", "unable to get local issuer", flag_handshfail | flag_gotcert}),
    [](const testing::TestParamInfo<refusal>& i) { return std::string(i.param.who); });

TEST(TlsSession, MtlsWithoutCertificate) {
    auto s = server_ctx(mtls());
    auto c = client_ctx();
    pair p(*c, *s);
    p.handshake();
    // TLS 1.3: the client finishes first and learns of the refusal on its next read.
    EXPECT_EQ(p.sst, status::error);
    EXPECT_EQ(p.server->flags(), flag_handshfail);
    EXPECT_NE(p.server->error_text().find("did not return a certificate"), std::string::npos)
        << p.server->error_text();
    // TLS 1.3's certificate_required (116), which OpenSSL 3.0 calls "unknown".
    EXPECT_NE(p.server->error_text().find("alert sent: certificate required"), std::string::npos)
        << p.server->error_text();
}

TEST(TlsSession, OpportunisticSelfSigned) {
    auto so = test::server_opts();
    so.crl_file = cert("crl.pem");
    auto s = server_ctx(so);
    auto c = client_ctx(test::client_opts("selfsigned"));
    pair p(*c, *s);
    p.handshake();
    ASSERT_EQ(p.sst, status::done) << p.server->error_text();
    EXPECT_EQ(p.server->flags(), flag_handshake | flag_gotcert | flag_selfsigned)
        << flags_text(p.server->flags());
    EXPECT_NE(SSL_get_verify_result(p.server->native()), X509_V_OK);
}

TEST(TlsSession, OpportunisticRevokedIsNotVerified) {
    auto so = test::server_opts();
    so.crl_file = cert("crl.pem");
    auto s = server_ctx(so);
    auto c = client_ctx(test::client_opts("revoked"));
    pair p(*c, *s);
    p.handshake();
    ASSERT_EQ(p.sst, status::done) << p.server->error_text();
    EXPECT_EQ(p.server->flags(), flag_handshake | flag_gotcert) << flags_text(p.server->flags());
}

// Every data test runs four ways: each side's records by rpcgate's own
// record layer or by OpenSSL (bit 0: the client uses OpenSSL's, bit 1: the
// server does), so that each layer is checked against the other as a peer.
class TlsData : public testing::TestWithParam<int> {
  protected:
    void SetUp() override {
        auto so = test::server_opts();
        so.ciphers.openssl_records = (GetParam() & 2) != 0;
        auto co = test::client_opts();
        co.ciphers.openssl_records = (GetParam() & 1) != 0;
        s_ = server_ctx(so);
        c_ = client_ctx(co);
        p_ = std::make_unique<pair>(*c_, *s_);
        p_->handshake();
        ASSERT_EQ(p_->sst, status::done) << p_->server->error_text();
        ASSERT_EQ(p_->cst, status::done) << p_->client->error_text();
        ASSERT_EQ(p_->client->own_records(), !co.ciphers.openssl_records)
            << p_->client->records_note();
        ASSERT_EQ(p_->server->own_records(), !so.ciphers.openssl_records)
            << p_->server->records_note();
    }

    // Random bytes in slices of varying sizes.
    static core::slice_chain make_chain(size_t n, std::mt19937& rng, std::string* copy) {
        core::slice_chain c;
        copy->clear();
        while (copy->size() < n) {
            size_t len = std::min<size_t>(n - copy->size(), 1 + rng() % 70000);
            core::slice s = core::slice::allocate(len);
            for (size_t i = 0; i < len; ++i) s.mutable_data()[i] = static_cast<uint8_t>(rng());
            copy->append(s.view());
            c.push_back(std::move(s));
        }
        return c;
    }

    std::unique_ptr<context> s_, c_;
    std::unique_ptr<pair> p_;
};

std::string records_name(const testing::TestParamInfo<int>& i) {
    static const char* names[] = {"OwnBoth", "OpensslClient", "OpensslServer", "OpensslBoth"};
    return names[i.param];
}
INSTANTIATE_TEST_SUITE_P(Records, TlsData, testing::Values(0, 1, 2, 3), records_name);

TEST_P(TlsData, BothWaysManySizes) {
    std::mt19937 rng(42);
    std::string expect;
    for (size_t n : {size_t(0), size_t(1), size_t(100), size_t(16383), size_t(16384), size_t(16385),
                     size_t(65536), size_t(100000), size_t(1 << 20), size_t(2 << 20)}) {
        core::slice_chain in = make_chain(n, rng, &expect);
        auto got = pair::send(*p_->client, *p_->server, in);
        ASSERT_EQ(got.size(), n);
        EXPECT_TRUE(got == expect) << "client->server " << n;
        in = make_chain(n, rng, &expect);
        got = pair::send(*p_->server, *p_->client, in);
        ASSERT_EQ(got.size(), n);
        EXPECT_TRUE(got == expect) << "server->client " << n;
    }
}

TEST_P(TlsData, ByteAtATimeFeeding) {
    std::string expect(50000, 'x');
    for (size_t i = 0; i < expect.size(); ++i) expect[i] = static_cast<char>(i * 7);
    core::slice_chain wire, plain, reply;
    ASSERT_EQ(p_->client->write(core::slice_chain(core::slice::copy_of(expect)), wire), status::ok);
    std::string wire_bytes = wire.to_string();
    for (char ch : wire_bytes) {
        p_->server->feed(core::slice::copy_of(&ch, 1));
        ASSERT_EQ(p_->server->read(plain, reply), status::ok) << p_->server->error_text();
    }
    EXPECT_TRUE(plain == expect);
}

// Records that arrive cut into slices of every small size (a record spans up
// to thousands of them) and across a KeyUpdate, each cut on a fresh pair.
TEST_P(TlsData, RecordsAcrossSlicesAndAKeyUpdate) {
    for (size_t cut : {size_t(1), size_t(2), size_t(3), size_t(7), size_t(16), size_t(4093)}) {
        pair p(*c_, *s_);
        p.handshake();
        ASSERT_EQ(p.cst, status::done);
        std::string expect = std::string(300, 'a') + std::string(20000, 'b');
        core::slice_chain wire;
        ASSERT_EQ(
            p.client->write(core::slice_chain(core::slice::copy_of(expect.substr(0, 300))), wire),
            status::ok);
        ASSERT_EQ(p.client->key_update(false, wire), status::ok);
        ASSERT_EQ(
            p.client->write(core::slice_chain(core::slice::copy_of(expect.substr(300))), wire),
            status::ok);
        std::string bytes = wire.to_string();
        core::slice_chain plain, reply;
        for (size_t at = 0; at < bytes.size(); at += cut) {
            p.server->feed(
                core::slice::copy_of(bytes.data() + at, std::min(cut, bytes.size() - at)));
            if (at / cut % 5 == 4) {  // read now and then: partial records stay queued
                ASSERT_EQ(p.server->read(plain, reply), status::ok) << p.server->error_text();
            }
        }
        ASSERT_EQ(p.server->read(plain, reply), status::ok) << p.server->error_text();
        EXPECT_TRUE(plain == expect) << "cut " << cut;
        EXPECT_EQ(reply.size(), 0u) << "an update not requested is not answered";
        EXPECT_EQ(p.server->rx_generation(), 1u);
    }
}

TEST_P(TlsData, TinySlicesAreCoalesced) {
    core::slice_chain in;
    std::string expect;
    for (int i = 0; i < 1000; ++i) {
        char b[4] = {char(i), char(i >> 8), 'a', 'b'};
        in.push_back(core::slice::copy_of(b, 4));
        expect.append(b, 4);
    }
    size_t wire = 0;
    auto got = pair::send(*p_->client, *p_->server, in, nullptr, &wire);
    EXPECT_TRUE(got == expect);
    // One record: 5 header + 1 type + 16 tag.
    EXPECT_LE(wire, expect.size() + 32) << wire;

    // A record mark then a large payload: full records, not a 4-byte one.
    core::slice_chain rec;
    rec.push_back(core::slice::copy_of("\x80\x01\x00\x00", 4));
    rec.push_back(core::slice::copy_of(std::string(65536, 'p')));
    got = pair::send(*p_->client, *p_->server, rec, nullptr, &wire);
    EXPECT_EQ(got.size(), 65540u);
    EXPECT_LE(wire, 65540u + 5 * 22) << wire;
}

TEST_P(TlsData, OutputIsFewSlices) {
    core::slice_chain in(core::slice::copy_of(std::string(64 * 1024, 'z')));
    core::slice_chain wire;
    ASSERT_EQ(p_->client->write(in, wire), status::ok);
    EXPECT_EQ(wire.count(), 1u);
}

TEST_P(TlsData, CloseNotify) {
    core::slice_chain wire, plain, reply;
    p_->client->shutdown(wire);
    EXPECT_GT(wire.size(), 0u);
    p_->server->feed(std::move(wire));
    EXPECT_EQ(p_->server->read(plain, reply), status::closed);
    EXPECT_TRUE(plain.empty());
}

TEST_P(TlsData, DataThenCloseNotifyInOneFeed) {
    core::slice_chain wire, plain, reply;
    ASSERT_EQ(p_->server->write(core::slice_chain(core::slice::copy_of("last words")), wire),
              status::ok);
    p_->server->shutdown(wire);
    p_->client->feed(std::move(wire));
    EXPECT_EQ(p_->client->read(plain, reply), status::closed);
    EXPECT_TRUE(plain == "last words");
}

TEST_P(TlsData, KeyUpdateKeepsDataFlowing) {
    for (auto* side : {p_->client.get(), p_->server.get()}) {
        session* other = side == p_->client.get() ? p_->server.get() : p_->client.get();
        core::slice_chain update;
        ASSERT_EQ(side->key_update(true, update), status::ok) << side->error_text();
        ASSERT_GT(update.size(), 0u);
        other->feed(std::move(update));
        core::slice_chain reply;
        auto got =
            pair::send(*side, *other, core::slice_chain(core::slice::copy_of("after")), &reply);
        EXPECT_TRUE(got == "after");
        // The peer answers the request with its own KeyUpdate.
        EXPECT_GT(reply.size(), 0u);
        core::slice_chain plain, none;
        side->feed(std::move(reply));
        EXPECT_EQ(side->read(plain, none), status::ok) << side->error_text();
        EXPECT_TRUE(plain.empty());
        for (int i = 0; i < 3; ++i) {
            got = pair::send(*other, *side, core::slice_chain(core::slice::copy_of("back")));
            EXPECT_TRUE(got == "back");
            got = pair::send(*side, *other, core::slice_chain(core::slice::copy_of("forth")));
            EXPECT_TRUE(got == "forth");
        }
    }
}

// A KeyUpdate the session answers is a new TX key: the records sent under
// the old one no longer count towards its own limit (--tls-rekey-after), and
// both key generations move, in either record layer. (OpenSSL writes its
// answer inside SSL_read, where only its message callback sees it.)
TEST_P(TlsData, AnsweredKeyUpdateStartsTheOwnCountAgain) {
    session& s = *p_->server;
    session& c = *p_->client;
    s.set_rekey_after(4);
    auto one = [&] {
        return pair::send(s, c, core::slice_chain(core::slice::copy_of("x"))) == "x";
    };
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(one());  // three records under the first key
    core::slice_chain update, plain, reply, none;
    ASSERT_EQ(c.key_update(true, update), status::ok) << c.error_text();
    s.feed(std::move(update));
    ASSERT_EQ(s.read(plain, reply), status::ok) << s.error_text();
    ASSERT_GT(reply.size(), 0u) << "the request is answered";
    c.feed(std::move(reply));
    ASSERT_EQ(c.read(plain, none), status::ok) << c.error_text();
    EXPECT_EQ(s.tx_generation(), 1u);
    EXPECT_EQ(s.rx_generation(), 1u);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(one());  // four under the new key: the limit
    EXPECT_EQ(s.own_key_updates(), 0u) << "the records under the old key were counted too";
    ASSERT_TRUE(one());  // the fifth goes under a key of its own making
    EXPECT_EQ(s.own_key_updates(), 1u);
    EXPECT_EQ(s.tx_generation(), 2u);
    EXPECT_EQ(s.rx_generation(), 1u);
}

TEST_P(TlsData, GarbageIsAnError) {
    core::slice_chain plain, reply;
    p_->server->feed(core::slice::copy_of(std::string(64, '\x17')));
    EXPECT_EQ(p_->server->read(plain, reply), status::error);
    EXPECT_FALSE(p_->server->error_text().empty());
    EXPECT_GT(reply.size(), 0u);  // the alert to send
}

TEST_P(TlsData, ReleaseBuffersWhenIdle) {
    auto got = pair::send(*p_->client, *p_->server,
                          core::slice_chain(core::slice::copy_of(std::string(5000, 'q'))));
    got.clear();
    p_->client->release_buffers();
    p_->server->release_buffers();
    got = pair::send(*p_->client, *p_->server,
                     core::slice_chain(core::slice::copy_of(std::string(7000, 'r'))));
    EXPECT_TRUE(got == std::string(7000, 'r'));
    // Both ways, again and again: the record sequence goes on across releases
    // (own records load their keys again, at the same sequence number).
    for (int i = 0; i < 3; ++i) {
        p_->client->release_buffers();
        p_->server->release_buffers();
        EXPECT_TRUE(pair::send(*p_->server, *p_->client,
                               core::slice_chain(core::slice::copy_of("down"))) == "down");
        p_->server->release_buffers();
        EXPECT_TRUE(pair::send(*p_->client, *p_->server,
                               core::slice_chain(core::slice::copy_of("up"))) == "up");
    }
}

// A session is lean (OpenSSL's buffers given back after each record
// operation) until k_busy_reads reads have yielded data, then keeps its
// buffers until release_buffers(); the bytes are the same either way, and
// OpenSSL's mode follows the flag.
TEST_P(TlsData, LeanUntilBusyAndAgainAfterRelease) {
    session& srv = *p_->server;
    if (srv.own_records()) {
        // OpenSSL holds no record buffer at all once the own layer runs.
        for (int i = 0; i < 100; ++i) {
            auto got = pair::send(*p_->client, srv, core::slice_chain(core::slice::copy_of("x")));
            ASSERT_TRUE(got == "x") << i;
        }
        EXPECT_TRUE(srv.lean());
        return;
    }
    auto lean_mode = [&] { return (SSL_get_mode(srv.native()) & SSL_MODE_RELEASE_BUFFERS) != 0; };
    EXPECT_TRUE(srv.lean());
    EXPECT_TRUE(lean_mode());
    for (uint32_t i = 1; i <= session::k_busy_reads; ++i) {
        std::string msg = "call " + std::to_string(i);
        auto got = pair::send(*p_->client, srv, core::slice_chain(core::slice::copy_of(msg)));
        ASSERT_TRUE(got == msg) << i;
        ASSERT_EQ(srv.lean(), i < session::k_busy_reads) << i;
    }
    EXPECT_FALSE(lean_mode());
    // A read that yields nothing does not count.
    core::slice_chain plain, out;
    EXPECT_EQ(srv.read(plain, out), status::ok);
    srv.release_buffers();
    EXPECT_TRUE(srv.lean());
    EXPECT_TRUE(lean_mode());
    auto got = pair::send(*p_->client, srv, core::slice_chain(core::slice::copy_of("after")));
    EXPECT_TRUE(got == "after");
    EXPECT_TRUE(srv.lean());
}

// A live upgrade: a session whose records are its own moves to a new
// session object (in the next process, from moved_state alone) in the middle
// of the stream -- after key updates both ways, with half a record fed -- and
// goes on with the same peer: data both ways, key updates, close_notify.
// OpenSSL's records cannot move, and say why.
TEST_P(TlsData, MovesToARestoredSession) {
    session& c = *p_->client;
    std::string why = p_->server->move_blocker();
    if (!p_->server->own_records()) {
        EXPECT_NE(why.find("OpenSSL"), std::string::npos) << why;
        moved_state st;
        EXPECT_FALSE(p_->server->save(&st, &why));
        return;
    }
    ASSERT_EQ(why, "");
    // Traffic and key updates before the move, asked both ways.
    EXPECT_TRUE(pair::send(c, *p_->server, core::slice_chain(core::slice::copy_of("one"))) ==
                "one");
    for (auto* side : {&c, p_->server.get()}) {
        session* other = side == &c ? p_->server.get() : &c;
        core::slice_chain update, reply, plain, none;
        ASSERT_EQ(side->key_update(true, update), status::ok);
        other->feed(std::move(update));
        ASSERT_EQ(other->read(plain, reply), status::ok) << other->error_text();
        side->feed(std::move(reply));
        ASSERT_EQ(side->read(plain, none), status::ok) << side->error_text();
    }
    const uint64_t tx_gen = p_->server->tx_generation(), rx_gen = p_->server->rx_generation();
    // Each request is answered: two new keys each way.
    ASSERT_EQ(tx_gen, 2u);
    ASSERT_EQ(rx_gen, 2u);
    // A record and a half from the client: the half stays in the session's input.
    core::slice_chain wire;
    ASSERT_EQ(c.write(core::slice_chain(core::slice::copy_of(std::string(20000, 'm'))), wire),
              status::ok);
    std::string bytes = wire.to_string();
    const size_t cut = 16384 + 22 + 700;  // one full record, then part of the next
    p_->server->feed(core::slice::copy_of(bytes.substr(0, cut)));
    core::slice_chain before, out;
    ASSERT_EQ(p_->server->read(before, out), status::ok);
    EXPECT_EQ(before.size(), 16384u);

    moved_state st;
    ASSERT_TRUE(p_->server->save(&st, &why)) << why;
    core::slice_chain carried = p_->server->take_input();
    EXPECT_EQ(carried.size(), cut - 16384 - 22);
    EXPECT_EQ(st.where, moved_state::records::own);
    EXPECT_EQ(st.tx_generation, 2u);
    EXPECT_EQ(st.version, "TLSv1.3");
    EXPECT_EQ(st.cipher, p_->server->cipher());
    EXPECT_EQ(st.alpn, p_->server->alpn());
    EXPECT_EQ(st.peer_subject, p_->server->peer_subject());
    EXPECT_EQ(st.flags, p_->server->flags());
    EXPECT_EQ(st.peer_cert.empty(), p_->server->peer_certificate() == nullptr);
    const std::string subject = p_->server->peer_subject();
    p_->server.reset();  // the old process lets go

    std::unique_ptr<session> moved = session::restore(st, true, &why);
    ASSERT_TRUE(moved) << why;
    EXPECT_EQ(moved->native(), nullptr);
    EXPECT_TRUE(moved->own_records());
    EXPECT_EQ(moved->peer_subject(), subject);
    EXPECT_EQ(moved->version(), "TLSv1.3");
    EXPECT_EQ(moved->suite(), st.suite);
    EXPECT_EQ(moved->tx_generation(), tx_gen);
    EXPECT_EQ(moved->rx_generation(), rx_gen);
    if (!st.peer_cert.empty()) {
        EXPECT_NE(moved->peer_certificate(), nullptr);
    }
    // The rest of the cut record, then the remainder, under the moved keys.
    moved->feed(std::move(carried));
    moved->feed(core::slice::copy_of(bytes.substr(cut)));
    core::slice_chain after;
    ASSERT_EQ(moved->read(after, out), status::ok) << moved->error_text();
    EXPECT_TRUE(after == std::string(20000 - 16384, 'm'));
    // Both ways, more key updates both ways, then close_notify.
    EXPECT_TRUE(pair::send(*moved, c, core::slice_chain(core::slice::copy_of("down"))) == "down");
    for (auto* side : {&c, moved.get()}) {
        session* other = side == &c ? moved.get() : &c;
        core::slice_chain update, reply, plain, none;
        ASSERT_EQ(side->key_update(true, update), status::ok) << side->error_text();
        other->feed(std::move(update));
        ASSERT_EQ(other->read(plain, reply), status::ok) << other->error_text();
        side->feed(std::move(reply));
        ASSERT_EQ(side->read(plain, none), status::ok) << side->error_text();
        EXPECT_TRUE(pair::send(*side, *other, core::slice_chain(core::slice::copy_of("kk"))) ==
                    "kk");
    }
    EXPECT_EQ(moved->tx_generation(), 4u);
    EXPECT_EQ(moved->rx_generation(), 4u);
    moved->release_buffers();  // and once more after an idle release
    EXPECT_TRUE(pair::send(c, *moved, core::slice_chain(core::slice::copy_of("up"))) == "up");
    core::slice_chain bye, plain, none;
    moved->shutdown(bye);
    c.feed(std::move(bye));
    EXPECT_EQ(c.read(plain, none), status::closed);
}

// A moved state that does not hold together is refused, not half-used.
TEST(TlsSession, RestoreRefusesBadState) {
    std::string why;
    moved_state st;
    st.suite = TLS1_3_CK_AES_128_GCM_SHA256;
    st.tx_secret = std::string(32, 'a');
    st.rx_secret = std::string(48, 'b');  // SHA-256 suites have 32-byte secrets
    EXPECT_EQ(session::restore(st, true, &why), nullptr);
    EXPECT_NE(why.find("secrets"), std::string::npos) << why;
    st.rx_secret = std::string(32, 'b');
    st.suite = 0xc02f;  // a TLS 1.2 suite
    EXPECT_EQ(session::restore(st, true, &why), nullptr);
    st.suite = TLS1_3_CK_AES_128_GCM_SHA256;
    st.peer_cert = "not DER";
    EXPECT_EQ(session::restore(st, true, &why), nullptr);
    EXPECT_NE(why.find("certificate"), std::string::npos) << why;
    st.peer_cert.clear();
    auto ok = session::restore(st, true, &why);
    ASSERT_NE(ok, nullptr) << why;
    EXPECT_EQ(ok->move_blocker(), "");
}

// drop_openssl: own records go on without the SSL object; what the gateway
// reads of the session stays the same.
TEST_P(TlsData, DropOpensslKeepsTheSession) {
    session& srv = *p_->server;
    const std::string version = srv.version(), cipher = srv.cipher(), alpn = srv.alpn(),
                      subject = srv.peer_subject();
    const uint32_t suite = srv.suite();
    const bool had_cert = srv.peer_certificate() != nullptr;
    srv.drop_openssl();
    if (!srv.own_records()) {
        EXPECT_NE(srv.native(), nullptr) << "OpenSSL's records need OpenSSL";
        return;
    }
    EXPECT_EQ(srv.native(), nullptr);
    EXPECT_EQ(srv.version(), version);
    EXPECT_EQ(srv.cipher(), cipher);
    EXPECT_EQ(srv.alpn(), alpn);
    EXPECT_EQ(srv.peer_subject(), subject);
    EXPECT_EQ(srv.suite(), suite);
    EXPECT_EQ(srv.peer_certificate() != nullptr, had_cert);
    srv.release_buffers();
    EXPECT_TRUE(pair::send(*p_->client, srv, core::slice_chain(core::slice::copy_of("a"))) == "a");
    EXPECT_TRUE(pair::send(srv, *p_->client, core::slice_chain(core::slice::copy_of("b"))) == "b");
    core::slice_chain update, reply, plain;
    ASSERT_EQ(srv.key_update(true, update), status::ok);
    p_->client->feed(std::move(update));
    ASSERT_EQ(p_->client->read(plain, reply), status::ok);
    srv.feed(std::move(reply));
    ASSERT_EQ(srv.read(plain, update), status::ok) << srv.error_text();
    EXPECT_TRUE(pair::send(*p_->client, srv, core::slice_chain(core::slice::copy_of("c"))) == "c");
}

TEST(TlsSession, WriteBeforeHandshakeIsAnError) {
    auto s = server_ctx();
    std::string err;
    auto ss = session::make(*s, &err);
    core::slice_chain out;
    EXPECT_EQ(ss->write(core::slice_chain(core::slice::copy_of("x")), out), status::error);
}

TEST(TlsSession, SessionTicketsWhenAsked) {
    auto so = test::server_opts();
    so.session_tickets = true;
    auto s = server_ctx(so);
    auto c = client_ctx();
    pair p(*c, *s);
    p.handshake();
    ASSERT_EQ(p.sst, status::done);
    // OpenSSL sent the tickets under the application keys: the server keeps
    // OpenSSL's records, and says why.
    EXPECT_FALSE(p.server->own_records());
    EXPECT_NE(p.server->records_note().find("tickets"), std::string::npos)
        << p.server->records_note();
    // The tickets went to the client with the server's last flight; its own
    // record layer reads and drops them, and data flows both ways after them.
    EXPECT_TRUE(p.client->own_records()) << p.client->records_note();
    core::slice_chain plain, out;
    EXPECT_EQ(p.client->read(plain, out), status::ok) << p.client->error_text();
    EXPECT_TRUE(plain.empty());
    EXPECT_TRUE(pair::send(*p.client, *p.server, core::slice_chain(core::slice::copy_of("up"))) ==
                "up");
    EXPECT_TRUE(pair::send(*p.server, *p.client, core::slice_chain(core::slice::copy_of("down"))) ==
                "down");
}

// The own record layer against records a bug or an attacker would make.
class TlsRecords : public testing::Test {
  protected:
    std::unique_ptr<pair> fresh() {
        auto p = std::make_unique<pair>(*c_, *s_);
        p->handshake();
        EXPECT_EQ(p->sst, status::done);
        EXPECT_TRUE(p->server->own_records()) << p->server->records_note();
        return p;
    }
    std::unique_ptr<context> s_ = server_ctx(), c_ = client_ctx();
};

// Any bit flipped anywhere in a record: never the data. In the ciphertext or
// the tag: bad_record_mac and an alert to send; in the header: a refusal or,
// for a longer length, a wait for bytes that are not the record's.
TEST_F(TlsRecords, EveryBitFlipIsRefused) {
    std::string bytes;
    {
        auto p = fresh();
        core::slice_chain wire;
        ASSERT_EQ(p->client->write(core::slice_chain(core::slice::copy_of("hello")), wire),
                  status::ok);
        bytes = wire.to_string();
    }
    ASSERT_EQ(bytes.size(), 5u + 5 + 1 + 16);
    for (size_t pos = 0; pos < bytes.size(); ++pos) {
        for (int bit : {0, 7}) {
            auto p = fresh();
            core::slice_chain wire;
            ASSERT_EQ(p->client->write(core::slice_chain(core::slice::copy_of("hello")), wire),
                      status::ok);
            std::string b = wire.to_string();
            b[pos] = static_cast<char>(b[pos] ^ (1 << bit));
            p->server->feed(core::slice::copy_of(b));
            core::slice_chain plain, reply;
            status st = p->server->read(plain, reply);
            EXPECT_TRUE(plain.empty()) << pos;
            if (pos == 3 || pos == 4) {
                // The length: too long to be allowed, longer (not complete
                // yet: a wait), or shorter (the tag does not match).
                EXPECT_TRUE(st == status::ok || st == status::error) << pos;
                continue;
            }
            EXPECT_EQ(st, status::error) << "byte " << pos << " bit " << bit;
            EXPECT_GT(reply.size(), 0u) << pos;  // the alert
            if (pos >= 5) {
                EXPECT_NE(p->server->error_text().find("bad_record_mac"), std::string::npos)
                    << p->server->error_text();
            }
        }
    }
}

TEST_F(TlsRecords, OversizeRecordIsRefusedAtItsHeader) {
    auto p = fresh();
    core::slice_chain plain, reply;
    p->server->feed(core::slice::copy_of(std::string("\x17\x03\x03\x41\x00", 5)));  // 16,640
    EXPECT_EQ(p->server->read(plain, reply), status::ok) << "the most a peer may send";
    auto q = fresh();
    q->server->feed(core::slice::copy_of(std::string("\x17\x03\x03\x41\x01", 5)));  // one more
    EXPECT_EQ(q->server->read(plain, reply), status::error);
    EXPECT_NE(q->server->error_text().find("16641"), std::string::npos) << q->server->error_text();
    EXPECT_GT(reply.size(), 0u);
}

TEST_F(TlsRecords, PlaintextRecordAfterTheHandshakeIsRefused) {
    auto p = fresh();
    core::slice_chain plain, reply;
    // An unprotected alert (what a TLS 1.2 stack or a broken peer might send).
    p->server->feed(core::slice::copy_of(std::string("\x15\x03\x03\x00\x02\x02\x28", 7)));
    EXPECT_EQ(p->server->read(plain, reply), status::error);
    EXPECT_NE(p->server->error_text().find("unprotected"), std::string::npos)
        << p->server->error_text();
}

// After a fatal error nothing more is sealed or opened.
TEST_F(TlsRecords, DeadAfterAnError) {
    auto p = fresh();
    core::slice_chain plain, reply, wire;
    p->server->feed(core::slice::copy_of(std::string(64, '\x17')));
    EXPECT_EQ(p->server->read(plain, reply), status::error);
    EXPECT_EQ(p->server->write(core::slice_chain(core::slice::copy_of("x")), wire), status::error);
    EXPECT_EQ(wire.size(), 0u);
}

TEST(TlsSession, FlagsText) {
    EXPECT_EQ(flags_text(flag_handshake | flag_gotcert | flag_verified),
              "HANDSHAKE|GOTCERT|VERIFIED");
    EXPECT_EQ(flags_text(flag_handshfail), "HANDSHFAIL");
    EXPECT_EQ(flags_text(0), "");
}

}  // namespace
}  // namespace rpcgate::tls
