// `nines serve [-c FILE] [--port N]`: runs the agents of a config file as a service with its HTTP
// API (docs/service.md, docs/api.md) until SIGTERM or SIGINT.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace nines::cli {

struct ServeCmdOptions {
  std::string config = "nines.yaml";
  std::optional<std::uint16_t> port;  // overrides server.port (0: ephemeral; the URL is logged)
};

// Exit status: 0 after a graceful shutdown (SIGTERM, SIGINT); 1 the config is invalid (every
// error on stderr) or the service could not start (the reason on stderr); 2 the config file
// cannot be read.
int run_serve(const ServeCmdOptions& options);

}  // namespace nines::cli
