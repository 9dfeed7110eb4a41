// Task outcomes and events as text (agent/agent.hpp): the outcome is a task's durable result.
#include <nlohmann/json.hpp>

#include <string>

#include "nines/agent/agent.hpp"

namespace nines::agent {

std::string_view to_string(TaskStatus status) {
  switch (status) {
    case TaskStatus::kSucceeded: return "succeeded";
    case TaskStatus::kFailed: return "failed";
    case TaskStatus::kBudgetExceeded: return "budget_exceeded";
    case TaskStatus::kLoopDetected: return "loop_detected";
    case TaskStatus::kNeedsAttention: return "needs_attention";
    case TaskStatus::kCancelled: return "cancelled";
    case TaskStatus::kInterrupted: return "interrupted";
  }
  return "unknown";
}

std::string_view to_string(AgentEvent::Type type) {
  switch (type) {
    case AgentEvent::Type::kTaskStarted: return "task_started";
    case AgentEvent::Type::kStepStarted: return "step_started";
    case AgentEvent::Type::kStepFinished: return "step_finished";
    case AgentEvent::Type::kToolCall: return "tool_call";
    case AgentEvent::Type::kToolResult: return "tool_result";
    case AgentEvent::Type::kInvalidCall: return "invalid_tool_call";
    case AgentEvent::Type::kRetry: return "retry";
    case AgentEvent::Type::kFallback: return "fallback";
    case AgentEvent::Type::kGuard: return "guard";
    case AgentEvent::Type::kApprovalWait: return "approval_wait";
    case AgentEvent::Type::kApprovalDecided: return "approval_decided";
    case AgentEvent::Type::kSleep: return "sleep";
    case AgentEvent::Type::kTaskFinished: return "task_finished";
  }
  return "unknown";
}

namespace {

// The fields both forms share (the stored one adds a version and wall_ns, the API's wall_time_s).
nlohmann::json outcome_fields(const TaskOutcome& o) {
  return {{"status", std::string(to_string(o.status))},
          {"answer", o.answer},
          {"reason", o.reason},
          {"steps", o.steps},
          {"model_calls", o.model_calls},
          {"tool_calls", o.tool_calls},
          {"input_tokens", o.input_tokens},
          {"output_tokens", o.output_tokens},
          {"cost_usd", o.cost_usd},
          {"models", o.models},
          {"degraded", o.degraded},
          {"retries", o.retries},
          {"fallbacks", o.fallbacks},
          {"restarts", o.restarts},
          {"tool_errors", o.tool_errors}};
}

}  // namespace

std::string outcome_api_json(const TaskOutcome& o) {
  nlohmann::json j = outcome_fields(o);
  j["wall_time_s"] = std::chrono::duration<double>(o.wall_time).count();
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string encode_outcome(const TaskOutcome& o) {
  nlohmann::json j = outcome_fields(o);
  j["v"] = 1;
  j["wall_ns"] = o.wall_time.count();
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<TaskOutcome> decode_outcome(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  auto bad = [&](const std::string& what) { return Error(ErrorKind::kInvalidArgument, "task outcome JSON: " + what); };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (j.value("v", 0) != 1) return bad("unknown version");
  TaskOutcome o;
  try {
    const std::string status = j.at("status").get<std::string>();
    bool known = false;
    for (TaskStatus s :
         {TaskStatus::kSucceeded, TaskStatus::kFailed, TaskStatus::kBudgetExceeded, TaskStatus::kLoopDetected,
          TaskStatus::kNeedsAttention, TaskStatus::kCancelled, TaskStatus::kInterrupted}) {
      if (to_string(s) == status) {
        o.status = s;
        known = true;
      }
    }
    if (!known) return bad("unknown status '" + status + "'");
    o.answer = j.value("answer", "");
    o.reason = j.value("reason", "");
    o.steps = j.value("steps", std::int64_t{0});
    o.model_calls = j.value("model_calls", std::int64_t{0});
    o.tool_calls = j.value("tool_calls", std::int64_t{0});
    o.input_tokens = j.value("input_tokens", std::int64_t{0});
    o.output_tokens = j.value("output_tokens", std::int64_t{0});
    o.cost_usd = j.value("cost_usd", 0.0);
    o.models = j.value("models", std::vector<std::string>{});
    o.degraded = j.value("degraded", false);
    o.retries = j.value("retries", std::int64_t{0});
    o.fallbacks = j.value("fallbacks", std::int64_t{0});
    o.restarts = j.value("restarts", std::int64_t{0});
    o.tool_errors = j.value("tool_errors", std::map<std::string, std::int64_t>{});
    o.wall_time = Duration(j.value("wall_ns", std::int64_t{0}));
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  return o;
}

}  // namespace nines::agent
