// `nines check FILE [--print]`: loads the config as `nines serve` will (environment variables
// included: ${VAR}, api_key_env and auth tokens must resolve) and reports every error at once.
#include "check_cmd.hpp"

#include <cstdio>

#include "nines/service/config.hpp"

namespace nines::cli {

int run_check(const CheckCmdOptions& o) {
  service::ConfigResult r = service::load_config(o.path);
  if (!r.ok()) {
    for (const service::ConfigError& e : r.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return r.unreadable ? 2 : 1;
  }
  const service::ServiceConfig& c = *r.config;
  if (o.print) std::fputs(service::debug_string(c).c_str(), stdout);
  std::printf("%s: ok (%zu models, %zu tools, %zu agents)\n", o.path.c_str(), c.models.size(), c.tools.size(),
              c.agents.size());
  return 0;
}

}  // namespace nines::cli
