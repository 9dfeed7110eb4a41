// `nines demo runtime`: a live supervision tree under a crash storm.
#pragma once

#include <cstddef>

namespace nines::cli {

struct RuntimeDemoOptions {
  std::size_t workers = 100'000;  // worker processes, spread over `shards` supervisors
  std::size_t shards = 10;
  double seconds = 6.0;  // total run time
  unsigned threads = 0;  // scheduler worker threads; 0: one per core
};

// Runs the demo, printing live lines and a summary. Returns the process exit code.
int run_runtime_demo(const RuntimeDemoOptions& options);

}  // namespace nines::cli
