// Multi-agent delegation (nines/agent/delegate.hpp): a tool that runs a sub-task of another
// agent as a durable child task, under what is left of the parent's budget.
#include "nines/agent/delegate.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <mutex>
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

// Messages to the call's process.
struct ChildDone {
  std::string child_id;
  TaskOutcome outcome;
};
struct OverBudget {
  std::string child_id;
  std::string why;
};

// The children running now under a call of this tool, watched through the sub-agents'
// events (which come from the child's process, maybe on another thread).
struct Watches {
  struct Watch {
    Cap cap;
    Spent spent;
    bool notified = false;
    Pid caller;
    Runtime* runtime = nullptr;
  };
  std::mutex mu;
  std::map<std::string, Watch, std::less<>> by_child;
  std::map<std::string, Price> prices;

  void on_event(const AgentEvent& e) {
    Pid to;
    Runtime* rt = nullptr;
    std::string why;
    {
      std::lock_guard lock(mu);
      auto it = by_child.find(e.task_id);
      if (it == by_child.end()) return;
      Watch& w = it->second;
      switch (e.type) {
        case AgentEvent::Type::kTaskStarted: w.spent = {}; break;  // a run replays its turns again
        case AgentEvent::Type::kStepFinished: {
          // "<route> in=<n> out=<m>"
          const std::size_t in_at = e.detail.rfind(" in=");
          const std::size_t out_at = e.detail.rfind(" out=");
          if (in_at == std::string::npos || out_at == std::string::npos || out_at < in_at) break;
          const std::string route = e.detail.substr(0, in_at);
          const std::int64_t in = std::strtoll(e.detail.c_str() + in_at + 4, nullptr, 10);
          const std::int64_t out = std::strtoll(e.detail.c_str() + out_at + 5, nullptr, 10);
          w.spent.tokens += in + out;
          w.spent.model_calls += 1;
          if (auto p = prices.find(route); p != prices.end()) {
            w.spent.cost_usd += (static_cast<double>(in) * p->second.input_per_mtok +
                                 static_cast<double>(out) * p->second.output_per_mtok) /
                                1e6;
          }
          break;
        }
        case AgentEvent::Type::kRetry: {  // "<n> calls": the turn took n - 1 more
          const std::int64_t n = std::strtoll(e.detail.c_str(), nullptr, 10);
          if (n > 1) w.spent.model_calls += n - 1;
          break;
        }
        default: return;
      }
      if (w.notified) return;
      std::optional<std::string> over = reached(w.cap, w.spent);
      if (!over) return;
      w.notified = true;
      to = w.caller;
      rt = w.runtime;
      why = std::move(*over);
    }
    if (rt != nullptr) (void)rt->send(to, OverBudget{e.task_id, std::move(why)});
  }
};

// Removes the call's watch when its frame goes (a return, a killed process).
struct WatchGuard {
  std::shared_ptr<Watches> watches;
  std::string child;
  ~WatchGuard() {
    std::lock_guard lock(watches->mu);
    watches->by_child.erase(child);
  }
};

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
  DelegateTool(Agents& agents, DelegateOptions options, ToolSpec spec, std::shared_ptr<Watches> watches)
      : agents_(agents), options_(std::move(options)), spec_(std::move(spec)), watches_(std::move(watches)) {}

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

    {
      std::lock_guard lock(watches_->mu);
      watches_->by_child[child] = Watches::Watch{.cap = cap, .caller = ctx.self(), .runtime = &ctx.runtime()};
    }
    WatchGuard guard{watches_, child};

    Agents* agents = &agents_;
    const std::string agent = options_.agent;
    const Pid caller = ctx.self();
    Behavior body = [agents, agent, child, input, caller](Context& c) -> Task<> {
      TaskOutcome out = co_await agents->run(c, agent, child, input);
      (void)c.try_send(caller, ChildDone{child, std::move(out)});
    };
    // Linked: when the parent's call dies (its task killed, its attempt timed out), so does
    // the child's run; the child task stays in the store and the next call resumes it.
    Result<Pid> pid = ctx.spawn_link(std::move(body));
    if (!pid.ok()) co_return std::move(pid).error().with_context("tool '" + spec_.name + "'");
    const MonitorRef ref = ctx.monitor(*pid);

    std::function<bool(const Message&)> mine = [child, ref](const Message& m) {
      if (const auto* d = m.get<ChildDone>()) return d->child_id == child;
      if (const auto* o = m.get<OverBudget>()) return o->child_id == child;
      if (const auto* dn = m.get<Down>()) return dn->ref == ref;
      return false;
    };
    const Duration wall = inv.budget_left.wall_time;
    const bool wall_limited = wall != kInfinite && wall > Duration::zero();
    std::optional<Message> m = co_await ctx.receive_if(std::move(mine), wall_limited ? wall : kInfinite);

    if (m) {
      if (auto* done = m->get<ChildDone>()) {
        ctx.demonitor(ref);
        co_return finish(inv, child, done->outcome, cap, std::nullopt);
      }
      if (const auto* dn = m->get<Down>()) {
        co_return Error(ErrorKind::kTransient, "tool '" + spec_.name + "': the process of sub-task '" + child +
                                                   "' exited (" + dn->reason.to_string() + "); it resumes on retry");
      }
    }
    if (!m && ctx.now() >= ctx.deadline()) {
      // This attempt's time is up: stop the child's run (not the task) so a retry can resume it.
      ctx.unlink(*pid);
      ctx.kill_on_purpose(*pid);
      co_return Error(ErrorKind::kTimeout, "tool '" + spec_.name + "': sub-task '" + child + "' still running");
    }
    // Over the parent's budget (or its wall time): cancel the child, then see it end.
    std::string why = m ? m->get<OverBudget>()->why : std::string("wall time: the parent's ran out");
    // What the child spent so far, as its events said: the outcome of a task cancelled on a
    // resumed run reports no spend for its recorded turns (agent.cpp checks the cancel before
    // replaying them; see the report), and the parent must still be charged for them.
    Spent seen;
    {
      std::lock_guard lock(watches_->mu);
      if (auto it = watches_->by_child.find(child); it != watches_->by_child.end()) seen = it->second.spent;
    }
    ctx.unlink(*pid);
    Status cancelled = agents_.cancel(child);
    if (!cancelled.ok()) co_return std::move(cancelled).error().with_context("tool '" + spec_.name + "'");
    (void)co_await ctx.wait_down(ref);
    TaskOutcome out = co_await agents_.run(ctx, options_.agent, child, input);
    if (out.status == TaskStatus::kCancelled && out.input_tokens + out.output_tokens < seen.tokens) {
      out.cost_usd = std::max(out.cost_usd, seen.cost_usd);
      out.input_tokens = seen.tokens;  // the split is not in the events
      out.output_tokens = 0;
      out.model_calls = std::max(out.model_calls, seen.model_calls);
    }
    co_return finish(inv, child, out, cap, why);
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
        // Cancelled by this tool for the parent's budget (now, or before a restart: its spend says so).
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
  std::shared_ptr<Watches> watches_;
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
  auto watches = std::make_shared<Watches>();
  watches->prices = options.prices;
  agents.add_observer([watches](const AgentEvent& e) { watches->on_event(e); });
  return std::shared_ptr<Tool>(std::make_shared<DelegateTool>(agents, std::move(options), std::move(spec), watches));
}

}  // namespace nines::agent
