// `nines sim agents`: the whole-system deterministic simulation of the agent layer, the one
// tests/agent/simulation_test.cpp runs (tests/agent/agent_sim.hpp), for one seed or a range.
#pragma once

#include <cstdint>
#include <string>

namespace nines::cli {

struct SimAgentsCmdOptions {
  std::uint64_t seed = 1;    // the first seed
  std::uint64_t seeds = 1;   // how many, from `seed`
  bool trace = false;        // print each seed's trace (events with virtual times) before its verdicts
  bool unjournaled = false;  // the broken variant: tool calls outside the effect journal
  std::string faults;        // engine fault points, NINES_SIM_FAULTS syntax ("store_commit_fail=0.05,...")
};

// Prints each seed's verdicts (and trace). Exit status: 0 when every invariant held on every
// seed, 1 when one did not, 2 for a bad --faults.
int run_sim_agents(const SimAgentsCmdOptions& options);

}  // namespace nines::cli
