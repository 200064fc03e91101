// A shard started for a test: runs on its own thread, takes work through one
// mailbox, and is stopped and joined when the fixture goes out of scope.
// Handlers the test hands to the shard must outlive the fixture (declare them
// first): an exit with streams left calls their on_closed.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "core/shard.h"

namespace rpcgate::core::test {

inline sockaddr_in loopback(uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

struct running_shard {
    shard_config cfg;
    std::unique_ptr<shard> sh;
    mailbox* box = nullptr;

    explicit running_shard(shard_config c) : cfg(c), sh(std::make_unique<shard>(c)) {
        box = &sh->make_inbox();
    }
    // Starts the shard; with `l`, it listens on a loopback port (listen_port()).
    std::string start(listener_handler* l = nullptr) {
        return sh->start([this, l] {
            if (!l) return;
            sockaddr_in a = loopback(0);
            EXPECT_GT(sh->listen(reinterpret_cast<sockaddr*>(&a), sizeof a, l), 0);
        });
    }
    // Runs f on the shard thread and waits for it.
    template <typename F>
    void run(F f) {
        std::mutex m;
        std::condition_variable cv;
        bool done = false;
        ASSERT_TRUE(box->try_post([&] {
            f();
            std::lock_guard g(m);
            done = true;
            cv.notify_one();
        }));
        std::unique_lock g(m);
        ASSERT_TRUE(cv.wait_for(g, std::chrono::seconds(10), [&] { return done; }));
    }
    ~running_shard() {
        sh->request_stop();
        sh->force_exit();
        sh->join();
    }
};

}  // namespace rpcgate::core::test
