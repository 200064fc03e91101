// Fuzzes the operator's TOML config: gw::load_config_file then gw::validate,
// as parse_command_line runs them. The input is the file's bytes (handed over
// as a memfd, so nothing touches the disk). Both must return an answer for
// any file, never crash or throw; a refusal must say why; an accepted config
// must satisfy the rules validate promises (a listener, a backend, a power of
// two for the buffers). Every input runs, floats and huge integers for the
// integer keys included: those are read exactly or refused (see
// tests/unit/gateway/config_test.cc), never converted or narrowed.
//
// Host names in the file would go to the resolver: getaddrinfo is replaced
// below by one that accepts numeric addresses and "localhost" only, so the
// fuzzer never sends a DNS query.
#include <dlfcn.h>
#include <netdb.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "gateway/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int getaddrinfo(const char* node, const char* service, const addrinfo* hints,
                           addrinfo** res) {
    using fn = int (*)(const char*, const char*, const addrinfo*, addrinfo**);
    static fn real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, "getaddrinfo"));
    addrinfo h{};
    if (hints) h = *hints;
    if (!node || std::strcmp(node, "localhost") != 0) h.ai_flags |= AI_NUMERICHOST;
    if (node && std::strcmp(node, "localhost") == 0) node = "127.0.0.1";
    return real(node, service, &h, res);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static int fd = memfd_create("config.toml", 0);
    RPCGATE_FUZZ_CHECK(fd >= 0);
    RPCGATE_FUZZ_CHECK(ftruncate(fd, 0) == 0);
    RPCGATE_FUZZ_CHECK(pwrite(fd, data, size, 0) == ssize_t(size));
    std::string path = "/proc/self/fd/" + std::to_string(fd);

    rpcgate::gw::gateway_config cfg;
    std::string err;
    if (!rpcgate::gw::load_config_file(path, &cfg, &err)) {
        RPCGATE_FUZZ_CHECK(!err.empty());
        return 0;
    }
    if (!rpcgate::gw::validate(&cfg, &err)) {
        RPCGATE_FUZZ_CHECK(!err.empty());
        return 0;
    }
    RPCGATE_FUZZ_CHECK(!cfg.listen.empty() || !cfg.implicit_tls.empty());
    RPCGATE_FUZZ_CHECK(!cfg.backends.empty());
    RPCGATE_FUZZ_CHECK(cfg.shards >= 1);
    RPCGATE_FUZZ_CHECK(cfg.buffers != 0 && (cfg.buffers & (cfg.buffers - 1)) == 0);
    RPCGATE_FUZZ_CHECK(cfg.buffer_size >= 512 && cfg.handshake_timeout_ms >= 100);
    return 0;
}
