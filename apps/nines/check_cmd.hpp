// `nines check FILE`: validates a service config (docs/service.md) offline.
#pragma once

#include <string>

namespace nines::cli {

struct CheckCmdOptions {
  std::string path;    // the YAML config file
  bool print = false;  // also print the resolved config (secrets redacted)
};

// Exit status: 0 valid ("FILE: ok (N models, M tools, K agents)" on stdout); 1 invalid (every
// error on stderr, one per line: file:line:column: key.path: message); 2 the file cannot be read.
int run_check(const CheckCmdOptions& options);

}  // namespace nines::cli
