// The whole-system deterministic simulation of the agent layer, one seed at a time: shared by
// the test (tests/agent/simulation_test.cpp) and `nines sim agents --seed N --trace`.
//
//   nines::test::AgentSimOptions o{.seed = 42, .trace = true};
//   nines::test::AgentSimResult r = nines::test::run_agent_sim(o);
//   if (!r.violations.empty()) std::fputs(nines::test::format_agent_sim(r).c_str(), stderr);
//
// One seed: a deterministic runtime (SimRuntime), a memory store, a workflow engine, three
// agents (shopper, researcher, looper) on in-process sim models with seeded faults (rate
// limits, 5xx, malformed JSON, hallucinated tools, invalid arguments, loops, hangs) behind a
// two-route router, and the simulated tools of sim_tools.hpp over a simulated ledger. 2 to 4
// tasks run at once, each supervised (Agents::start) or in a runner process (Agents::run);
// at seeded moments the simulation kills a task's process, kills the task supervisor, cancels
// a task, or crashes the whole program (every process destroyed, MemoryStore::crash(), all
// rebuilt, then WorkflowEngine::resume_all or the tasks started again). A last quiet round
// (engine fault points off) runs every task still unfinished to its end.
//
// Invariants checked (each violation is one line in AgentSimResult::violations):
//  - every task has exactly one terminal outcome (succeeded, failed, budget_exceeded,
//    loop_detected, needs_attention, cancelled), its last task_finished event agrees, and
//    running it again returns the same outcome and runs nothing;
//  - no effect applied twice: per idempotency key at most one application, and per (task,
//    model call id) no more applications than the history has calls with that id;
//  - budgets overrun by at most the one call in flight: before the task's last model turn the
//    recorded turns were within max_steps, max_model_calls, max_tokens and max_cost_usd; the
//    outcome's totals are the sums of the recorded turns (nothing counted twice);
//  - no step recorded twice: step and effect seqs unique and disjoint, "model <n>" turns
//    numbered 0.. without gaps, history seqs unique and contiguous from 0;
//  - no process left behind: the runtime's process count is back to its baseline (there are
//    no child OS processes: the tools are native code).
// The trace (agent events, ledger applications, injected crashes and outcomes, each with its
// virtual time) is hashed: the same seed gives the same hash.
//
// Not thread-safe: run one seed per thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "nines/core/fault.hpp"

namespace nines::test {

struct AgentSimOptions {
  std::uint64_t seed = 1;
  // The broken variant (AgentsOptions::unjournaled_tools_for_testing): the checker must
  // report effects applied twice.
  bool unjournaled_tools = false;
  // The engine's fault points (core/fault.hpp), on in every round but the quiet last one.
  FaultOptions faults;
  // Keep the trace's lines (AgentSimResult::trace); the hash is computed either way.
  bool trace = false;
};

struct AgentSimResult {
  std::uint64_t seed = 0;
  std::vector<std::string> violations;  // empty: every invariant held
  std::vector<std::string> trace;       // with AgentSimOptions::trace
  std::uint64_t trace_hash = 0;
  // What the seed exercised.
  int tasks = 0;
  std::map<std::string, int> outcomes;  // by status
  int program_crashes = 0, task_kills = 0, supervisor_kills = 0, cancels = 0;
  std::uint64_t tool_faults = 0, model_faults = 0, effects_checked = 0, keys_resent = 0;
  std::uint64_t engine_faults = 0;
};

AgentSimResult run_agent_sim(const AgentSimOptions& options);

// The verdicts (and the trace when kept), as printed by `nines sim agents`.
std::string format_agent_sim(const AgentSimResult& result);

// The command that replays a seed.
std::string agent_sim_replay_command(std::uint64_t seed, bool unjournaled = false);

}  // namespace nines::test
