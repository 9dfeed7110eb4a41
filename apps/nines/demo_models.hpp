// `nines demo models`: agents calling a flaky simulated provider through the router.
#pragma once

#include <cstddef>

namespace nines::cli {

struct ModelsDemoOptions {
  std::size_t agents = 200;          // agent processes, each making calls one after another
  std::size_t calls_per_agent = 30;  // calls per agent
  double outage_start_s = 2.0;       // when the primary provider goes down
  double outage_s = 2.5;             // for how long
};

// Runs the demo, printing live lines and a summary. 0 when every call got an answer.
int run_models_demo(const ModelsDemoOptions& options);

}  // namespace nines::cli
