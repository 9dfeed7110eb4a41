// The demos' reports (docs/logging.md): a crash storm or a provider outage makes hundreds of
// process_crashed, child_restarted or model_fallback lines (rate-limited, but still many), which
// would bury the live table on the terminal. They go to a file instead, named at the end.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "nines/core/environment.hpp"

namespace nines::cli {

struct DemoLog {
  std::string path;
  std::shared_ptr<LogSink> sink;  // null: the file could not be opened; reports go to stderr
};

// A fresh file in the temporary directory: nines-<demo>-<pid>.log.
inline DemoLog open_demo_log(const char* demo) {
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
  if (ec) dir = "/tmp";
  DemoLog log;
  log.path = (dir / ("nines-" + std::string(demo) + "-" + std::to_string(::getpid()) + ".log")).string();
  auto sink = make_file_sink(log.path);
  if (sink.ok()) {
    log.sink = std::move(sink).value();
  } else {
    std::fprintf(stderr, "nines: %s; reports go to stderr\n", sink.error().to_string().c_str());
  }
  return log;
}

// The summary line naming the file (after the last suppressed counts are written to it).
inline void print_demo_log(Environment& env, const DemoLog& log) {
  if (!log.sink) return;
  env.logger().flush_suppressed();
  std::printf("  reports                   %llu lines in %s (%llu more dropped by the rate limit)\n",
              static_cast<unsigned long long>(env.logger().written()), log.path.c_str(),
              static_cast<unsigned long long>(env.logger().suppressed()));
}

}  // namespace nines::cli
