// nines/agent/tool.hpp: a tool an agent may call, whatever runs it (a C++ function, an HTTP
// endpoint, an MCP server's tool).
//
//   agent::ToolSpec spec{.name = "lookup_order",
//                        .description = "Looks up an order by id",
//                        .parameters_schema_json = R"({"type":"object","properties":{"id":{"type":"string"}},
//                                                      "required":["id"]})",
//                        .nature = EffectNature::kReadOnly};
//   auto tool = agent::make_native_tool(spec, [&](Context& ctx, const agent::ToolInvocation& call)
//                                                 -> Task<Result<std::string>> {
//     co_return orders.get(ctx, call.arguments_json);   // the text the model sees
//   });
//
// The spec is what the agent layer needs to call the tool safely:
//  - parameters_schema_json: the JSON Schema (draft 7) the arguments are validated against
//    before the tool runs (agent/validation.hpp). A call that fails validation never reaches
//    call(): the model gets a structured tool error instead.
//  - nature: how the effect journal resolves a call interrupted by a crash (workflow.hpp):
//    kReadOnly and kIdempotent calls run again with the same idempotency key, kCheckable calls
//    are asked about with check(), kUnsafe calls go to needs_attention. Default kUnsafe.
//  - timeout, max_concurrent, retry, breaker: the resilience policies around each call
//    (the registry composes them: retry -> breaker -> bulkhead -> timeout -> the tool).
//  - fallback: the name of another tool called with the same arguments when this one's breaker
//    is open or its retries are exhausted; the outcome is recorded as degraded.
//  - requires_approval: the task waits durably for an approve/deny decision before the call.
//
// Errors a tool returns (Result kinds, as the resilience layer classifies them):
//   kTransient, kTimeout, kRateLimited (with retry_after): retried by the tool's retry policy;
//   kPermanent, kInvalidArgument: the target refused the call (not applied), not retried; a
//     refusal for credentials or permission (HTTP 401/403, ...) is kPermanent with a message
//     starting with kAuthFailurePrefix, so that it is counted as such;
//   kCancelled, kDeadlineExceeded: the task is being cancelled or ran out of time.
// Whatever the kind, the model sees the failure as a tool result with is_error set and a
// message saying what went wrong (it may try something else); the task's outcome counts it.
//
// Thread-safety: a Tool is shared by every task of every agent that uses it: call() and
// check() may run in many processes at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/resilience/circuit_breaker.hpp"
#include "nines/resilience/retry.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"
#include "nines/store/store.hpp"

namespace nines::agent {

// Starts the message of a tool error that is a refusal for credentials or permission.
inline constexpr std::string_view kAuthFailurePrefix = "credentials or permission: ";

struct ToolSpec {
  // Unique among an agent's tools; what the model calls. [a-zA-Z0-9_-]{1,64} (the providers' rule).
  std::string name;
  std::string description;
  // A JSON Schema (draft 7) for the arguments object.
  std::string parameters_schema_json = R"({"type":"object","properties":{}})";
  EffectNature nature = EffectNature::kUnsafe;
  // Bounds each attempt of one call (> 0).
  Duration timeout = std::chrono::seconds(60);
  // Calls of this tool in flight at once across all tasks, 0: no limit. Calls beyond it wait
  // (within the task's deadline) in a queue of at most max_concurrent * 4.
  std::size_t max_concurrent = 0;
  // Retries of one call. nullopt: none for kUnsafe and kCheckable tools (a retry of an unsafe
  // call may apply it twice), 3 attempts with full jitter 100 ms .. 5 s for the others.
  std::optional<RetryOptions> retry;
  // nullopt: the default breaker (CircuitBreakerOptions{}).
  std::optional<CircuitBreakerOptions> breaker;
  // Another tool's name, called with the same arguments when this one's breaker is open or
  // its retries are exhausted. Empty: none.
  std::string fallback;
  // The task waits (durably, across restarts) for an approve or deny decision before each call.
  bool requires_approval = false;
};

// What is left of the calling task's budget when a tool is called (a delegating tool gives it
// to the sub-task it starts). Negative / kInfinite: no limit.
struct BudgetLeft {
  double cost_usd = -1;
  std::int64_t tokens = -1;
  std::int64_t model_calls = -1;
  std::int64_t steps = -1;
  Duration wall_time = kInfinite;
};

// What a tool spent on models (a delegating tool: its sub-task's spend), reported through
// ToolInvocation::spend and added to the calling task's outcome and budget. It is journaled with
// the call's outcome, so a replay counts it again without running the tool.
struct ToolSpend {
  double cost_usd = 0;
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  std::int64_t model_calls = 0;
};

// One call of a tool, as the tool sees it.
struct ToolInvocation {
  std::string task_id;
  std::string call_id;         // the model's id for the call
  std::string arguments_json;  // valid JSON that satisfies the spec's schema
  // The effect journal's key for this call: the same on every attempt and after a restart.
  // Pass it on (an Idempotency-Key header, MCP's _meta) so the target can apply it once.
  std::string idempotency_key;
  BudgetLeft budget_left;
  // Set by the agent layer: a tool that spends on models (a sub-agent) adds what it spent here.
  ToolSpend* spend = nullptr;
};

class Tool {
 public:
  virtual ~Tool() = default;
  virtual const ToolSpec& spec() const = 0;
  // One attempt of one call: the text the model sees, or an error (see the file comment).
  // Cancellation: the task's process may be killed while this is suspended; a tool that
  // started outside work (an OS process, a request) must stop it when its frame is destroyed.
  virtual Task<Result<std::string>> call(Context& ctx, const ToolInvocation& invocation) = 0;
  // kCheckable tools: was the call with this idempotency key applied? Its result if so,
  // nullopt if not, an error if the target cannot tell now. Default: kUnimplemented.
  virtual Task<Result<std::optional<std::string>>> check(Context& ctx, const ToolInvocation& invocation);
};

using NativeToolFn = std::function<Task<Result<std::string>>(Context& ctx, const ToolInvocation& invocation)>;
using NativeCheckFn =
    std::function<Task<Result<std::optional<std::string>>>(Context& ctx, const ToolInvocation& invocation)>;

// A C++ function as a tool. kInvalidArgument for a bad spec (see validate_tool_spec) or no fn;
// a kCheckable spec needs a check function.
Result<std::shared_ptr<Tool>> make_native_tool(ToolSpec spec, NativeToolFn fn, NativeCheckFn check = nullptr);

// ok, or kInvalidArgument naming the field: a name outside [a-zA-Z0-9_-]{1,64}, a schema that
// is not a JSON object or not a valid draft-7 schema, a timeout <= 0, a fallback naming itself.
Status validate_tool_spec(const ToolSpec& spec);

}  // namespace nines::agent
