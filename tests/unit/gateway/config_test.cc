// The TOML config file's integer keys (gw::load_config_file): a value is read
// exactly or refused with a line that names the key. A float is not converted
// (converting one outside int64's range was undefined behaviour, found by
// tests/fuzz/config_fuzz.cc), and an integer outside its option's range is not
// narrowed into it. A refused file leaves the option at what it was.
#include "gateway/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <string>

using namespace rpcgate::gw;

namespace {

class toml_config : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/rpcgate-config-test.XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        path_ = dir_ + "/rpcgate.toml";
    }
    void TearDown() override {
        ::unlink(path_.c_str());
        ::rmdir(dir_.c_str());
    }

    // Loads a file holding `text` into cfg_; returns what load_config_file did.
    bool load(const std::string& text) {
        std::ofstream(path_) << text << "\n";
        err_.clear();
        return load_config_file(path_, &cfg_, &err_);
    }

    std::string dir_, path_, err_;
    gateway_config cfg_;
};

// A float where an integer belongs is the wrong type, whatever its value:
// neither a whole number (2.0), nor a fraction, nor one far outside int64.
TEST_F(toml_config, a_float_for_an_integer_key_is_refused_not_converted) {
    const gateway_config defaults;
    struct case_t {
        const char* line;
        const char* key;
    };
    for (const case_t& c :
         {case_t{"shards = 2.0", "shards"}, case_t{"idle_timeout = 1.5", "idle_timeout"},
          case_t{"max_record = 4.2e124", "max_record"}, case_t{"buffers = -1e300", "buffers"},
          case_t{"handshake_timeout = inf", "handshake_timeout"},
          case_t{"max_connections_per_source = nan", "max_connections_per_source"}}) {
        SCOPED_TRACE(c.line);
        EXPECT_FALSE(load(c.line));
        EXPECT_NE(err_.find(std::string("'") + c.key + "'"), std::string::npos) << err_;
        EXPECT_NE(err_.find("wrong type"), std::string::npos) << err_;
    }
    // Nothing was converted into the options.
    EXPECT_EQ(cfg_.shards, defaults.shards);
    EXPECT_EQ(cfg_.idle_timeout_s, defaults.idle_timeout_s);
    EXPECT_EQ(cfg_.max_record, defaults.max_record);
    EXPECT_EQ(cfg_.buffers, defaults.buffers);
    EXPECT_EQ(cfg_.handshake_timeout_ms, defaults.handshake_timeout_ms);
    EXPECT_EQ(cfg_.max_connections_per_source, defaults.max_connections_per_source);
}

// An integer outside the option's type is refused with the range, not cut to
// its low bits (4294967296 would have become 0 in a uint32_t option).
TEST_F(toml_config, an_out_of_range_integer_is_refused_not_narrowed) {
    const gateway_config defaults;
    struct case_t {
        const char* line;
        const char* key;
        const char* range;
    };
    for (const case_t& c :
         {case_t{"shards = 4294967296", "shards", "between 0 and 4294967295"},
          case_t{"idle_timeout = 4294967297", "idle_timeout", "between 0 and 4294967295"},
          case_t{"buffers = 9223372036854775807", "buffers", "between 0 and 4294967295"},
          case_t{"max_connections = -1", "max_connections", "between 0 and 4294967295"},
          case_t{"max_record = -4096", "max_record", "between 0 and 18446744073709551615"},
          case_t{"handshake_rate_per_source = -9223372036854775808", "handshake_rate_per_source",
                 "between 0 and 4294967295"}}) {
        SCOPED_TRACE(c.line);
        EXPECT_FALSE(load(c.line));
        EXPECT_NE(err_.find(std::string("'") + c.key + "'"), std::string::npos) << err_;
        EXPECT_NE(err_.find(c.range), std::string::npos) << err_;
        EXPECT_NE(err_.find(path_), std::string::npos) << "the error names the file: " << err_;
    }
    EXPECT_EQ(cfg_.shards, defaults.shards);
    EXPECT_EQ(cfg_.idle_timeout_s, defaults.idle_timeout_s);
    EXPECT_EQ(cfg_.buffers, defaults.buffers);
    EXPECT_EQ(cfg_.max_connections, defaults.max_connections);
    EXPECT_EQ(cfg_.max_record, defaults.max_record);
    EXPECT_EQ(cfg_.handshake_rate_per_source, defaults.handshake_rate_per_source);
}

// The edges of the range are read exactly.
TEST_F(toml_config, integers_at_the_edges_of_the_range_are_read_exactly) {
    ASSERT_TRUE(
        load("idle_timeout = 4294967295\nmax_connections = 0\nshards = 3\n"
             "max_record = 9223372036854775807"))
        << err_;
    EXPECT_EQ(cfg_.idle_timeout_s, std::numeric_limits<uint32_t>::max());
    EXPECT_EQ(cfg_.max_connections, 0u);
    EXPECT_EQ(cfg_.shards, 3u);
    EXPECT_EQ(cfg_.max_record, uint64_t(std::numeric_limits<int64_t>::max()));
}

// The other scalar keys are exact too: an integer is not a bool, a number is
// not a string.
TEST_F(toml_config, other_keys_take_their_own_type_only) {
    EXPECT_FALSE(load("alpn_strict = 1"));
    EXPECT_NE(err_.find("'alpn_strict'"), std::string::npos) << err_;
    EXPECT_FALSE(load("log_level = 3"));
    EXPECT_NE(err_.find("'log_level'"), std::string::npos) << err_;
    EXPECT_FALSE(load("shards = \"2\""));
    EXPECT_NE(err_.find("'shards'"), std::string::npos) << err_;
    EXPECT_FALSE(load("shards = true"));
    EXPECT_NE(err_.find("'shards'"), std::string::npos) << err_;
}

}  // namespace

namespace {

// require_tls_for: an array of names or numbers, or "all"; the default is NFS
// and NFS_ACL; a word that is not a program is refused with the key's name.
TEST_F(toml_config, require_tls_for_takes_programs_or_all) {
    EXPECT_TRUE(cfg_.tls_programs.contains(100003));
    EXPECT_TRUE(cfg_.tls_programs.contains(100227));
    EXPECT_FALSE(cfg_.tls_programs.contains(100005));
    ASSERT_TRUE(load("require_tls_for = [\"nfs\", \"mount\", \"100021\"]")) << err_;
    EXPECT_EQ(program_set_text(cfg_.tls_programs), "nfs,mount,nlm");
    ASSERT_TRUE(load("require_tls_for = \"all\"")) << err_;
    EXPECT_TRUE(cfg_.tls_programs.all);
    EXPECT_FALSE(load("require_tls_for = [\"nfs\", \"mountd3\"]"));
    EXPECT_NE(err_.find("require_tls_for"), std::string::npos) << err_;
    EXPECT_NE(err_.find("'mountd3' is not a program"), std::string::npos) << err_;
}

}  // namespace

namespace {

// The kTLS record options: read from the file as their types, and a record
// size outside RFC 8449's 64..16384 refused by validate() with its name.
TEST_F(toml_config, ktls_record_options_are_read_and_bounded) {
    EXPECT_FALSE(cfg_.ktls_rx_no_pad);
    EXPECT_EQ(cfg_.ktls_tx_record_size, 0u);
    ASSERT_TRUE(load("ktls_rx_no_pad = true\nktls_tx_record_size = 4096")) << err_;
    EXPECT_TRUE(cfg_.ktls_rx_no_pad);
    EXPECT_EQ(cfg_.ktls_tx_record_size, 4096u);
    EXPECT_FALSE(load("ktls_rx_no_pad = 1"));
    EXPECT_NE(err_.find("ktls_rx_no_pad"), std::string::npos) << err_;

    // A configuration that validates but for the option under test.
    auto minimal = [] {
        gateway_config c;
        endpoint ep;
        backend_route b;
        std::string e;
        EXPECT_TRUE(parse_endpoint("127.0.0.1:2049", &ep, &e)) << e;
        EXPECT_TRUE(parse_backend("nfs=127.0.0.1:2050", &b, &e)) << e;
        c.listen.push_back(ep);
        c.backends.push_back(b);
        return c;
    };
    for (uint32_t bad : {1u, 63u, 16385u, 65536u}) {
        gateway_config c = minimal();
        c.ktls_tx_record_size = bad;
        std::string err;
        EXPECT_FALSE(validate(&c, &err)) << bad;
        EXPECT_NE(err.find("--ktls-tx-record-size"), std::string::npos) << err;
    }
    for (uint32_t good : {0u, 64u, 1024u, 16384u}) {
        gateway_config c = minimal();
        c.ktls_tx_record_size = good;
        std::string err;
        EXPECT_TRUE(validate(&c, &err)) << good << ": " << err;
    }
}

}  // namespace
