// nines/agent/registry.hpp: the tools agents may call, each behind its own policies.
//
//   auto tools = agent::ToolRegistry::create(env, {lookup_order, charge_card, keyword_search}).value();
//   std::optional<agent::ArgumentProblem> p = tools->check_call(model_call);   // before anything runs
//   agent::ToolRun r = co_await tools->invoke(ctx, "charge_card", invocation); // policies + fallback
//
// create() checks every spec (validate_tool_spec), that names are unique and that each
// fallback names another registered tool (no cycles), compiles every schema, and builds each
// tool's policies from its spec, outermost first:
//
//   retry -> circuit breaker -> bulkhead (max_concurrent) -> attempt timeout (timeout) -> call()
//
// invoke() runs one call through them. When the breaker is open or the retries are
// exhausted (a non-permanent error after the last attempt) and the tool has a fallback, the
// fallback tool is invoked with the same invocation (its own policies; its own fallback too,
// at most 4 deep) and the run is marked degraded. A permanent error (the target refused the
// call) and kCancelled / kDeadlineExceeded are returned as they are, without a fallback.
//
// Thread-safety: immutable after create(); invoke() may run in any number of processes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nines/agent/tool.hpp"
#include "nines/agent/validation.hpp"
#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/llm/message.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines::agent {

// One call's result through the policies.
struct ToolRun {
  Result<std::string> result = Error(ErrorKind::kInternal, "not run");
  std::string served_by;  // the tool that answered (a fallback's name when degraded)
  bool degraded = false;  // a fallback answered
  int attempts = 0;       // calls made, every tool and retry counted
};

// Counters of one tool (a snapshot).
struct ToolCounters {
  std::uint64_t calls = 0;      // invoke() calls that reached this tool's policies
  std::uint64_t attempts = 0;   // call() attempts
  std::uint64_t failures = 0;   // invoke() calls of it that ended with an error
  std::uint64_t fallbacks = 0;  // calls handed to its fallback
};

class ToolRegistry {
 public:
  // kInvalidArgument naming the tool and field (bad spec, duplicate name, unknown or cyclic
  // fallback, bad retry or breaker options); kInvalidArgument for a null tool.
  static Result<std::shared_ptr<ToolRegistry>> create(Environment& env, std::vector<std::shared_ptr<Tool>> tools);
  ~ToolRegistry();

  bool contains(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  // nullptr if absent.
  std::shared_ptr<Tool> find(std::string_view name) const;
  // The definitions sent to the model for these tools (all when `names` is empty); absent names
  // are skipped.
  std::vector<llm::ToolDefinition> definitions(const std::vector<std::string>& names = {}) const;

  // The call's problem (unknown tool among `allowed` (all when empty), arguments not a JSON
  // object, schema violation), or nullopt when it may run.
  std::optional<ArgumentProblem> check_call(const llm::ToolCall& call,
                                            const std::vector<std::string>& allowed = {}) const;

  // One call through the tool's policies and fallback (see the file comment). kNotFound for an
  // unknown name. Co_await at once; the invocation must outlive the call.
  Task<ToolRun> invoke(Context& ctx, std::string name, ToolInvocation invocation) const;

  ToolCounters counters(std::string_view name) const;
  // The breaker of a tool (to watch or reset it); nullptr for an unknown name.
  std::shared_ptr<CircuitBreaker> breaker(std::string_view name) const;

 private:
  struct Impl;
  explicit ToolRegistry(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nines::agent
