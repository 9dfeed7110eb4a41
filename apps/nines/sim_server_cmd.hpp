// `nines sim-server`: the simulated model over HTTP on loopback (llm/sim_server.hpp).
#pragma once

#include <cstdint>
#include <string>

namespace nines::cli {

struct SimServerCmdOptions {
  std::string config_path;                 // the sim's JSON config (docs/sim.md); empty: no faults
  std::uint16_t port = 0;                  // 0: any free port, printed once listening
  std::string bind_address = "127.0.0.1";  // llm::SimServerOptions' default: loopback
  std::string fault_key;                   // "request" | "position": overrides the config's fault_key
};

// Serves until SIGINT or SIGTERM. Exit status: 0 after the signal, 2 for a config that cannot be
// read or is not a valid sim config, 1 when the server cannot start.
int run_sim_server(const SimServerCmdOptions& options);

}  // namespace nines::cli
