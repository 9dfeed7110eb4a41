// `nines sim-server`: the simulated model over HTTP on loopback (llm/sim_server.hpp).
#pragma once

namespace nines::cli {

// argv after "sim-server". Exit status: 0 after SIGINT/SIGTERM, 2 for bad usage or config,
// 1 when the server cannot start.
int run_sim_server(int argc, char** argv);

}  // namespace nines::cli
