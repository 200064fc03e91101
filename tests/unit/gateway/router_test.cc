// The routing and call policy of a client session, without sockets: which
// route a call takes by program and version, and every exit of decide_call.
#include "gateway/router.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "rpc/portmap.h"

namespace rpcgate::gw {
namespace {

constexpr uint32_t nfs = 100003, mount = 100005, nlm = 100021, nsm = 100024, nfs_acl = 100227;

backend_route route_to(uint32_t prog, uint32_t vers, std::string spec) {
    backend_route r;
    r.prog = prog;
    r.vers = vers;
    r.spec = std::move(spec);
    return r;
}

rpc::call_header call(uint32_t prog, uint32_t vers, uint32_t proc = 1) {
    rpc::call_header h;
    h.xid = 7;
    h.prog = prog;
    h.vers = vers;
    h.proc = proc;
    h.cred.flavor = uint32_t(rpc::auth_flavor::sys);
    return h;
}

rpc::call_header probe(uint32_t prog, uint32_t vers) {
    rpc::call_header h = call(prog, vers, 0);
    h.cred.flavor = uint32_t(rpc::auth_flavor::tls);
    return h;
}

TEST(router, every_version_goes_to_the_route_of_its_program) {
    std::vector<backend_route> b{route_to(nfs, 0, "nfs=a:2049"), route_to(mount, 0, "mount=b:1")};
    router r(b);
    EXPECT_EQ(r.route(nfs, 3), 0u);
    EXPECT_EQ(r.route(nfs, 4), 0u);
    EXPECT_EQ(r.route(mount, 3), 1u);
    EXPECT_EQ(r.route(nlm, 4), router::no_route);
    EXPECT_TRUE(r.routes(nfs));
    EXPECT_FALSE(r.routes(nlm));
    uint32_t lo = 0, hi = 0;
    EXPECT_FALSE(r.version_range(nfs, &lo, &hi));  // a route takes every version
}

TEST(router, a_route_for_one_version_wins_over_the_route_for_all) {
    std::vector<backend_route> b{route_to(nfs, 0, "nfs=a:2049"),
                                 route_to(nfs, 4, "nfs=b:2049,vers=4")};
    router r(b);
    EXPECT_EQ(r.route(nfs, 3), 0u);
    EXPECT_EQ(r.route(nfs, 4), 1u);
}

TEST(router, versions_routed_one_by_one_leave_the_others_unrouted) {
    std::vector<backend_route> b{route_to(nfs, 3, "nfs=a:2049,vers=3"),
                                 route_to(nfs, 4, "nfs=b:2049,vers=4")};
    router r(b);
    EXPECT_EQ(r.route(nfs, 3), 0u);
    EXPECT_EQ(r.route(nfs, 4), 1u);
    EXPECT_EQ(r.route(nfs, 2), router::no_route);
    uint32_t lo = 0, hi = 0;
    ASSERT_TRUE(r.version_range(nfs, &lo, &hi));
    EXPECT_EQ(lo, 3u);
    EXPECT_EQ(hi, 4u);
}

// One row per exit of decide_call.
struct policy_case {
    const char* name;
    rpc::call_header h;
    bool in_tls;
    bool tls_offered;
    tls_policy policy;
    bool answer_portmap;
    call_verdict want;
    size_t want_route;
    // --require-tls-for: "" = the default (nfs,nfs_acl).
    const char* tls_for = "";
    bool want_plaintext_allowed = false;
};

void PrintTo(const policy_case& c, std::ostream* os) {
    *os << c.name;
}

class call_policy : public testing::TestWithParam<policy_case> {};

TEST_P(call_policy, decides) {
    const policy_case& c = GetParam();
    std::vector<backend_route> b{route_to(nfs, 0, "nfs=a:2049"),
                                 route_to(nlm, 4, "nlm=b:4045,vers=4"),
                                 route_to(mount, 0, "mount=a:20048"), route_to(nsm, 0, "nsm=a:662"),
                                 route_to(nfs_acl, 0, "nfs_acl=a:2049")};
    router r(b);
    program_set tls_for = default_tls_programs();
    std::string err;
    if (*c.tls_for) {
        ASSERT_TRUE(parse_program_set(c.tls_for, &tls_for, &err, "test")) << err;
    }
    call_decision d = decide_call(c.h, c.in_tls, c.tls_offered, listener_policy{c.policy, &tls_for},
                                  c.answer_portmap, r);
    EXPECT_EQ(call_verdict_name(d.verdict), std::string(call_verdict_name(c.want)));
    EXPECT_EQ(d.plaintext_allowed, c.want_plaintext_allowed);
    if (c.want == call_verdict::forward) {
        EXPECT_EQ(d.route, c.want_route);
    }
    if (c.want == call_verdict::prog_mismatch) {
        EXPECT_EQ(d.low, 4u);
        EXPECT_EQ(d.high, 4u);
    }
}

constexpr size_t none = router::no_route;
const policy_case policy_cases[] = {
    {"forward_plaintext", call(nfs, 3), false, true, tls_policy::opportunistic, true,
     call_verdict::forward, 0},
    {"forward_by_version", call(nlm, 4), false, false, tls_policy::off, true, call_verdict::forward,
     1},
    {"forward_in_tls_when_required", call(nfs, 4), true, true, tls_policy::required, true,
     call_verdict::forward, 0},
    {"probe_starts_tls", probe(nfs, 3), false, true, tls_policy::opportunistic, true,
     call_verdict::starttls, none},
    {"probe_refused_when_tls_off", probe(nfs, 3), false, false, tls_policy::off, true,
     call_verdict::refuse_probe, none},
    {"probe_inside_tls_is_misuse", probe(nfs, 3), true, true, tls_policy::required, true,
     call_verdict::auth_tls_misuse, none},
    {"plaintext_too_weak_when_required", call(nfs, 3), false, true, tls_policy::required, true,
     call_verdict::too_weak, none},
    {"plaintext_too_weak_with_mtls", call(nfs, 3), false, true, tls_policy::mtls, true,
     call_verdict::too_weak, none},
    {"portmap_answered_here", call(rpc::pmap_prog, 2, 3), false, false, tls_policy::off, true,
     call_verdict::portmap, none},
    {"portmap_unavail_when_not_answered", call(rpc::pmap_prog, 2, 3), false, false, tls_policy::off,
     false, call_verdict::prog_unavail, none},
    {"unrouted_program", call(100011, 1), false, false, tls_policy::off, true,
     call_verdict::prog_unavail, none},
    // --tls required / mtls, per program: by default NFS and NFS_ACL need TLS,
    // while portmap, MOUNT, NLM and NSM are served in plaintext (an NFSv3 mount).
    {"required_nfs_acl_plaintext_too_weak", call(nfs_acl, 3), false, true, tls_policy::required,
     true, call_verdict::too_weak, none},
    {"required_mount_plaintext_forwarded", call(mount, 3), false, true, tls_policy::required, true,
     call_verdict::forward, 2, "", true},
    {"required_nlm_plaintext_forwarded", call(nlm, 4), false, true, tls_policy::required, true,
     call_verdict::forward, 1, "", true},
    {"mtls_nsm_plaintext_forwarded", call(nsm, 1), false, true, tls_policy::mtls, true,
     call_verdict::forward, 3, "", true},
    {"required_portmap_plaintext_answered", call(rpc::pmap_prog, 2, 3), false, true,
     tls_policy::required, true, call_verdict::portmap, none, "", true},
    {"required_mount_in_tls_not_counted", call(mount, 3), true, true, tls_policy::required, true,
     call_verdict::forward, 2},
    {"opportunistic_mount_not_counted", call(mount, 3), false, true, tls_policy::opportunistic,
     true, call_verdict::forward, 2},
    {"required_for_mount_too", call(mount, 3), false, true, tls_policy::required, true,
     call_verdict::too_weak, none, "nfs,nfs_acl,mount"},
    {"required_for_listed_number", call(nlm, 4), false, true, tls_policy::required, true,
     call_verdict::too_weak, none, "100021"},
    {"required_for_all", call(rpc::pmap_prog, 2, 3), false, true, tls_policy::required, true,
     call_verdict::too_weak, none, "all"},
    {"required_for_mount_only_lets_nfs_through", call(nfs, 3), false, true, tls_policy::required,
     true, call_verdict::forward, 0, "mount", true},
    {"unrouted_version", call(nlm, 1), false, false, tls_policy::off, true,
     call_verdict::prog_mismatch, none},
};

TEST(program_set, parses_names_numbers_and_all) {
    program_set s;
    std::string err;
    ASSERT_TRUE(parse_program_set("nfs,mount,0x186b8", &s, &err, "--require-tls-for")) << err;
    EXPECT_TRUE(s.contains(nfs));
    EXPECT_TRUE(s.contains(mount));
    EXPECT_TRUE(s.contains(100024));
    EXPECT_FALSE(s.contains(nlm));
    EXPECT_EQ(program_set_text(s), "nfs,mount,nsm");
    ASSERT_TRUE(parse_program_set("all", &s, &err, "--require-tls-for"));
    EXPECT_TRUE(s.contains(nlm));
    EXPECT_EQ(program_set_text(s), "all");
    EXPECT_EQ(program_set_text(default_tls_programs()), "nfs,nfs_acl");
    EXPECT_FALSE(parse_program_set("nfs,bogus", &s, &err, "--require-tls-for"));
    EXPECT_NE(err.find("'bogus' is not a program"), std::string::npos) << err;
    EXPECT_FALSE(parse_program_set("", &s, &err, "--require-tls-for"));
    EXPECT_FALSE(parse_program_set("nfs,", &s, &err, "--require-tls-for"));
}

INSTANTIATE_TEST_SUITE_P(exits, call_policy, testing::ValuesIn(policy_cases),
                         [](const testing::TestParamInfo<policy_case>& i) {
                             return std::string(i.param.name);
                         });

}  // namespace
}  // namespace rpcgate::gw

namespace rpcgate::gw {
namespace {

TEST(router_config, a_backend_may_name_the_version_it_serves) {
    backend_route r;
    std::string err;
    ASSERT_TRUE(parse_backend("nfs=127.0.0.1:2049,vers=4", &r, &err)) << err;
    EXPECT_EQ(r.prog, 100003u);
    EXPECT_EQ(r.vers, 4u);
    backend_route all;
    ASSERT_TRUE(parse_backend("nfs=127.0.0.1:2049", &all, &err)) << err;
    EXPECT_EQ(all.vers, 0u);  // every version
    EXPECT_FALSE(parse_backend("nfs=127.0.0.1:2049,vers=0", &r, &err));
    EXPECT_FALSE(parse_backend("nfs=127.0.0.1:2049,vers=four", &r, &err));
}

TEST(router_config, one_program_twice_only_for_different_versions) {
    gateway_config cfg;
    std::string err;
    endpoint ep;
    ASSERT_TRUE(parse_endpoint("127.0.0.1:0", &ep, &err)) << err;
    cfg.listen.push_back(ep);
    backend_route a, b;
    ASSERT_TRUE(parse_backend("nfs=127.0.0.1:2049,vers=3", &a, &err)) << err;
    ASSERT_TRUE(parse_backend("nfs=127.0.0.2:2049,vers=4", &b, &err)) << err;
    cfg.backends = {a, b};
    EXPECT_TRUE(validate(&cfg, &err)) << err;
    cfg.backends = {a, a};
    EXPECT_FALSE(validate(&cfg, &err));
    EXPECT_NE(err.find("routed twice"), std::string::npos) << err;
}

// --tls-ciphersuites (and the TOML key) with one unknown name among known
// ones is a configuration error naming it, not a silently shorter list.
TEST(router_config, an_unknown_tls13_suite_is_a_configuration_error) {
    std::string err;
    gateway_config cfg;
    cfg.listen.resize(1);
    cfg.backends.resize(1);
    ASSERT_TRUE(parse_endpoint("127.0.0.1:0", &cfg.listen[0], &err)) << err;
    ASSERT_TRUE(parse_backend("nfs=127.0.0.1:2049", &cfg.backends[0], &err)) << err;
    cfg.tls_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
    EXPECT_TRUE(validate(&cfg, &err)) << err;
    cfg.tls_ciphersuites = "TLS_CHACHA20_POLY1305_SHA256:TLS_CHACHA20_POLY1305";
    EXPECT_FALSE(validate(&cfg, &err));
    EXPECT_NE(err.find("--tls-ciphersuites"), std::string::npos) << err;
    EXPECT_NE(err.find("'TLS_CHACHA20_POLY1305'"), std::string::npos) << err;
}

}  // namespace
}  // namespace rpcgate::gw
