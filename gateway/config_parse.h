// Helpers shared by the parts of the configuration reader (config.cc, the
// TOML file in config_file.cc, the command line in config_cli.cc). Not part
// of the gateway's API: the declarations users need are in config.h.
#pragma once

#include <cstdint>
#include <string>

#include "gateway/config.h"

namespace rpcgate::gw::detail {

// "off" | "opportunistic" | "required" | "mtls"; `what` names the option in
// the error ("--tls", "--upstream-tls", "--backend tls=").
bool parse_tls_policy(const std::string& s, tls_policy* out, std::string* err,
                      const char* what = "--tls");

// A byte count with an optional K/M/G suffix (powers of two).
bool parse_size(const std::string& s, uint64_t* out, std::string* err, const char* what);

// "LOW-HIGH" with 1 <= LOW <= HIGH <= 1023: a range of reserved ports.
bool parse_port_range(const std::string& s, uint16_t* low, uint16_t* high, std::string* err,
                      const char* what);

}  // namespace rpcgate::gw::detail
