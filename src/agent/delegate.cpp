// Multi-agent delegation (nines/agent/delegate.hpp): a tool that runs a sub-task of another
// agent as a durable child task, under what is left of the parent's budget.
#include "nines/agent/delegate.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <utility>

#include "nines/runtime/runtime.hpp"

namespace nines::agent {
namespace {

using json = nlohmann::json;

// The parent's budget left as the child's cap (negative: no limit).
struct Cap {
  double cost_usd = -1;
  std::int64_t tokens = -1;
  std::int64_t model_calls = -1;
};

struct Spent {
  double cost_usd = 0;
  std::int64_t tokens = 0;
  std::int64_t model_calls = 0;
};

// Which limit of the cap `s` has reached, if any.
std::optional<std::string> reached(const Cap& cap, const Spent& s) {
  if (cap.tokens >= 0 && s.tokens >= cap.tokens) {
    return "tokens: the sub-task spent " + std::to_string(s.tokens) + ", the parent had " + std::to_string(cap.tokens) +
           " left";
  }
  if (cap.model_calls >= 0 && s.model_calls >= cap.model_calls) {
    return "model calls: the sub-task made " + std::to_string(s.model_calls) + ", the parent had " +
           std::to_string(cap.model_calls) + " left";
  }
  if (cap.cost_usd >= 0 && s.cost_usd >= cap.cost_usd) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "cost: the sub-task spent $%.6f, the parent had $%.6f left", s.cost_usd,
                  cap.cost_usd);
    return std::string(buf);
  }
  return std::nullopt;
}

Spent spent_of(const TaskOutcome& o) {
  return {.cost_usd = o.cost_usd, .tokens = o.input_tokens + o.output_tokens, .model_calls = o.model_calls};
}

// The child's end, to the call's process.
struct ChildDone {
  std::string child_id;
  TaskOutcome outcome;
};

// The parent's budget left as the child's per-task cap (RunOptions::cap): 0 is no limit there.
Budget cap_budget(const BudgetLeft& left) {
  Budget b;
  b.max_steps = 0;
  b.max_model_calls = left.model_calls > 0 ? left.model_calls : 0;
  b.max_tokens = left.tokens > 0 ? left.tokens : 0;
  b.max_cost_usd = left.cost_usd > 0 ? left.cost_usd : 0;
  b.max_wall_time = left.wall_time > Duration::zero() ? left.wall_time : kInfinite;
  return b;
}

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

class DelegateTool final : public Tool {
 public:
  DelegateTool(Agents& agents, DelegateOptions options, ToolSpec spec)
      : agents_(agents), options_(std::move(options)), spec_(std::move(spec)) {}

  const ToolSpec& spec() const override { return spec_; }

  Task<Result<std::string>> call(Context& ctx, const ToolInvocation& inv) override {
    json args = json::parse(inv.arguments_json, nullptr, false);
    auto field = args.is_object() ? args.find(options_.input_field) : args.end();
    if (!args.is_object() || field == args.end() || !field->is_string()) {
      co_return Error(ErrorKind::kInvalidArgument,
                      "tool '" + spec_.name + "': the argument '" + options_.input_field + "' must be a string");
    }
    const std::string input = field->get<std::string>();
    const std::string child = delegate_child_id(inv.task_id, options_.agent, inv.idempotency_key);
    const Cap cap{.cost_usd = inv.budget_left.cost_usd,
                  .tokens = inv.budget_left.tokens,
                  .model_calls = inv.budget_left.model_calls};

    // A child that ended already (a parent replaying a call whose outcome was lost) answers
    // from its record; a new one is not started when the parent has nothing left.
    Result<TaskOutcome> recorded = agents_.outcome(child);
    if (recorded.ok()) co_return finish(inv, child, *recorded, cap, std::nullopt);
    if (recorded.error().kind() == ErrorKind::kNotFound) {
      std::optional<std::string> none = reached(cap, {});
      if (!none && inv.budget_left.wall_time <= Duration::zero()) none = "wall time: none left";
      if (none) {
        co_return Error(ErrorKind::kBudgetExceeded, "tool '" + spec_.name + "': sub-task '" + child +
                                                        "' not started: the parent's budget is spent (" + *none + ")");
      }
    }

    Agents* agents = &agents_;
    const std::string agent = options_.agent;
    const Pid caller = ctx.self();
    // The child checks the cap itself, before each model call (a resumed child keeps the cap
    // recorded at its first start), and is recorded as the parent's child (a cancel cascades).
    RunOptions run_options{.cap = cap_budget(inv.budget_left), .parent_task_id = inv.task_id};
    Behavior body = [agents, agent, child, input, caller, run_options](Context& c) -> Task<> {
      TaskOutcome out = co_await agents->run(c, agent, child, input, run_options);
      (void)c.try_send(caller, ChildDone{child, std::move(out)});
    };
    // Linked: when the parent's call dies (its task killed, its attempt timed out), so does
    // the child's run; the child task stays in the store and the next call resumes it.
    Result<Pid> pid = ctx.spawn_link(std::move(body));
    if (!pid.ok()) co_return std::move(pid).error().with_context("tool '" + spec_.name + "'");
    const MonitorRef ref = ctx.monitor(*pid);

    std::function<bool(const Message&)> mine = [child, ref](const Message& m) {
      if (const auto* d = m.get<ChildDone>()) return d->child_id == child;
      if (const auto* dn = m.get<Down>()) return dn->ref == ref;
      return false;
    };
    std::optional<Message> m = co_await ctx.receive_if(std::move(mine), kInfinite);
    if (m) {
      if (auto* done = m->get<ChildDone>()) {
        ctx.demonitor(ref);
        co_return finish(inv, child, done->outcome, cap, std::nullopt);
      }
      const auto* dn = m->get<Down>();
      co_return Error(ErrorKind::kTransient, "tool '" + spec_.name + "': the process of sub-task '" + child +
                                                 "' exited (" + dn->reason.to_string() + "); it resumes on retry");
    }
    // This attempt's time is up: stop the child's run (not the task) so a retry can resume it.
    ctx.unlink(*pid);
    ctx.kill_on_purpose(*pid);
    co_return Error(ErrorKind::kTimeout, "tool '" + spec_.name + "': sub-task '" + child + "' still running");
  }

 private:
  // The child's outcome as the call's result, its spend reported to the parent.
  Result<std::string> finish(const ToolInvocation& inv, const std::string& child, const TaskOutcome& out,
                             const Cap& cap, std::optional<std::string> stopped_why) const {
    if (inv.spend != nullptr && out.status != TaskStatus::kInterrupted) {
      *inv.spend = ToolSpend{.cost_usd = out.cost_usd,
                             .input_tokens = out.input_tokens,
                             .output_tokens = out.output_tokens,
                             .model_calls = out.model_calls};
    }
    const std::string who = "sub-task '" + child + "' of agent '" + options_.agent + "'";
    switch (out.status) {
      case TaskStatus::kSucceeded: return out.answer;
      case TaskStatus::kInterrupted:
        return Error(ErrorKind::kTransient, who + " was interrupted: " + out.reason + " (it resumes on retry)");
      case TaskStatus::kBudgetExceeded:
        return Error(ErrorKind::kBudgetExceeded, who + " ended budget_exceeded: " + out.reason);
      case TaskStatus::kCancelled: {
        // Cancelled for the parent's budget by an older version of this tool (its spend says so).
        if (!stopped_why) stopped_why = reached(cap, spent_of(out));
        if (stopped_why) {
          return Error(ErrorKind::kBudgetExceeded,
                       who + " ended budget_exceeded: stopped at the parent's budget left (" + *stopped_why + ")");
        }
        return Error(ErrorKind::kPermanent, who + " ended cancelled: " + out.reason);
      }
      default:
        return Error(ErrorKind::kPermanent, who + " ended " + std::string(to_string(out.status)) + ": " + out.reason);
    }
  }

  Agents& agents_;
  DelegateOptions options_;
  ToolSpec spec_;
};

}  // namespace

std::string delegate_child_id(std::string_view parent_task_id, std::string_view agent,
                              std::string_view idempotency_key) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a(idempotency_key)));
  return std::string(parent_task_id) + "." + std::string(agent) + "." + hex;
}

Result<std::shared_ptr<Tool>> make_delegate_tool(Agents& agents, DelegateOptions options) {
  if (options.agent.empty()) return Error(ErrorKind::kInvalidArgument, "delegate tool: no sub-agent (agent)");
  if (options.input_field.empty()) return Error(ErrorKind::kInvalidArgument, "delegate tool: empty input_field");
  if (options.timeout <= Duration::zero()) {
    return Error(ErrorKind::kInvalidArgument, "delegate tool '" + options.tool_name + "': timeout must be > 0");
  }
  ToolSpec spec{.name = options.tool_name,
                .description = options.description,
                .parameters_schema_json = options.parameters_schema_json,
                .nature = EffectNature::kIdempotent,
                .timeout = options.timeout};
  if (Status s = validate_tool_spec(spec); !s.ok()) return std::move(s).error().with_context("delegate tool");
  return std::shared_ptr<Tool>(std::make_shared<DelegateTool>(agents, std::move(options), std::move(spec)));
}

}  // namespace nines::agent
