// The bounded per-client views of the admin endpoint (gateway/client_views.h).
#include "gateway/client_views.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace rpcgate::gw {
namespace {

client_view conn(std::string src, std::string id, uint64_t calls, uint64_t bytes, std::string tag) {
    return {std::move(src), std::move(id), calls, bytes, 0, "{\"id\":\"" + tag + "\"}"};
}

TEST(client_views, query) {
    EXPECT_EQ(parse_view_query("/clients").top, 20u);
    view_query q = parse_view_query("/clients?top=3&by=bytes");
    EXPECT_EQ(q.top, 3u);
    EXPECT_TRUE(q.by_bytes);
    EXPECT_EQ(parse_view_query("/clients?top=0").top, 20u);
    EXPECT_EQ(parse_view_query("/clients?top=99999").top, 20u);
    EXPECT_EQ(parse_view_query("/clients?top=5x&by=nonsense").top, 20u);
    EXPECT_FALSE(parse_view_query("/clients?by=calls&junk").by_bytes);
}

TEST(client_views, source_drops_the_port) {
    EXPECT_EQ(source_of("10.0.0.7:812"), "10.0.0.7");
    EXPECT_EQ(source_of("[::1]:812"), "::1");
    EXPECT_EQ(source_of("unix"), "unix");
}

TEST(client_views, top_connections_are_the_busiest_first_and_bounded) {
    std::vector<client_view> v = {conn("a", "", 5, 900, "1"), conn("b", "", 50, 10, "2"),
                                  conn("c", "", 7, 100, "3")};
    EXPECT_EQ(top_connections_json(v, {2, false}), "[{\"id\":\"2\"},\n{\"id\":\"3\"}]\n");
    EXPECT_EQ(top_connections_json(v, {1, true}), "[{\"id\":\"1\"}]\n");
    EXPECT_EQ(top_connections_json({}, {5, false}), "[]\n");
}

TEST(client_views, clients_group_by_source_and_identity) {
    std::vector<client_view> v = {
        conn("10.0.0.1", "", 5, 100, "1"), conn("10.0.0.1", "", 6, 100, "2"),
        conn("10.0.0.1", "alice", 1, 5000, "3"), conn("10.0.0.2", "", 2, 1, "4")};
    std::string out = clients_json(v, {2, false});
    EXPECT_EQ(out.rfind(R"({"clients":3,"connections":4,"by":"calls","top":[)", 0), 0u) << out;
    EXPECT_NE(
        out.find(
            R"({"source":"10.0.0.1","identity":"","connections":2,"calls":11,"bytes_in":200,"bytes_out":0})"),
        std::string::npos)
        << out;
    EXPECT_NE(out.find(R"("source":"10.0.0.2")"), std::string::npos) << out;
    EXPECT_EQ(out.find("alice"), std::string::npos) << out;  // third by calls: cut
    out = clients_json(v, {1, true});
    EXPECT_NE(out.find(R"("identity":"alice")"), std::string::npos) << out;
    EXPECT_EQ(out.find("10.0.0.2"), std::string::npos) << out;
}

}  // namespace
}  // namespace rpcgate::gw
