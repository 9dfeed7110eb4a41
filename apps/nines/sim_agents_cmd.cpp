// `nines sim agents --seed N [--seeds K] [--trace] [--faults SPEC] [--unjournaled]`: runs the
// agent simulation (tests/agent/agent_sim.hpp) for seeds N .. N+K-1 and prints, per seed, the
// trace (with --trace: agent events, ledger applications, injected crashes and outcomes, each
// at its virtual time) and the invariant verdicts. The same seed prints the same trace.
#include "sim_agents_cmd.hpp"

#include <cstdio>
#include <string>

#include "agent/agent_sim.hpp"
#include "nines/core/fault.hpp"

namespace nines::cli {

int run_sim_agents(const SimAgentsCmdOptions& o) {
  FaultOptions faults;
  if (!o.faults.empty()) {
    Result<FaultOptions> f = parse_fault_options(o.faults);
    if (!f.ok()) {
      std::fprintf(stderr, "nines sim agents: --faults: %s\n", f.error().message().c_str());
      return 2;
    }
    faults = *f;
  }
  std::uint64_t failing = 0;
  for (std::uint64_t seed = o.seed; seed < o.seed + o.seeds; ++seed) {
    test::AgentSimResult r =
        test::run_agent_sim({.seed = seed, .unjournaled_tools = o.unjournaled, .faults = faults, .trace = o.trace});
    const std::string text = test::format_agent_sim(r);
    std::fputs(text.c_str(), stdout);
    if (!r.violations.empty()) ++failing;
  }
  if (o.seeds > 1) {
    std::printf("%llu of %llu seeds kept every invariant\n", static_cast<unsigned long long>(o.seeds - failing),
                static_cast<unsigned long long>(o.seeds));
  }
  return failing == 0 ? 0 : 1;
}

}  // namespace nines::cli
