// core/log: a subsystem's own file, and its reopen after a rotation.
#include "core/log.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace rpcgate::core {
namespace {

std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

class subsys_file_test : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/rpcgate-log-test.XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        path_ = dir_ + "/audit.log";
    }
    void TearDown() override {
        set_subsys_fd(log_subsys::audit, -1);  // the file's fd is left open: tests only
        std::remove((path_ + ".1").c_str());
        std::remove(path_.c_str());
        ::rmdir(dir_.c_str());
    }
    std::string dir_, path_;
};

// logrotate's way: rename the file, then SIGHUP; the next line is in a new
// file at the old name, and the renamed one keeps what it had.
TEST_F(subsys_file_test, reopen_after_rename_writes_to_a_new_file) {
    std::string err;
    ASSERT_TRUE(open_subsys_file(log_subsys::audit, path_, &err)) << err;
    RPCGATE_LOG(audit, info, "before rotation");
    ASSERT_EQ(::rename(path_.c_str(), (path_ + ".1").c_str()), 0);
    RPCGATE_LOG(audit, info, "after rename, before reopen");
    ASSERT_TRUE(open_subsys_file(log_subsys::audit, path_, &err)) << err;
    RPCGATE_LOG(audit, info, "after reopen");

    std::string old_file = slurp(path_ + ".1"), new_file = slurp(path_);
    EXPECT_NE(old_file.find("before rotation"), std::string::npos);
    EXPECT_NE(old_file.find("after rename, before reopen"), std::string::npos);
    EXPECT_EQ(old_file.find("after reopen"), std::string::npos);
    EXPECT_NE(new_file.find("audit after reopen"), std::string::npos) << new_file;
    EXPECT_EQ(new_file.find("before"), std::string::npos) << new_file;
}

// A reopen that fails (the directory is gone) leaves the lines where they went.
TEST_F(subsys_file_test, failed_reopen_keeps_the_old_file) {
    std::string err;
    ASSERT_TRUE(open_subsys_file(log_subsys::audit, path_, &err)) << err;
    EXPECT_FALSE(open_subsys_file(log_subsys::audit, dir_ + "/no/such/dir/audit.log", &err));
    EXPECT_NE(err.find("No such file"), std::string::npos) << err;
    RPCGATE_LOG(audit, info, "still here");
    EXPECT_NE(slurp(path_).find("still here"), std::string::npos);
}

}  // namespace
}  // namespace rpcgate::core
