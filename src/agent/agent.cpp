// Durable agent tasks (agent/agent.hpp): the task loop as a workflow, its guards, the task
// supervisor, cancellation.
#include "nines/agent/agent.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "nines/core/check.hpp"
#include "nines/core/log.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/runtime/supervisor.hpp"

namespace nines::agent {

using llm::Message;

namespace {

using nlohmann::json;

constexpr std::string_view kKindPrefix = "agent:";
constexpr std::string_view kSignalsSuffix = "#signals";
constexpr std::size_t kMaxToolResultBytes = std::size_t{1} << 20;  // what one tool result may put in the history
constexpr std::int64_t kStoreCancelCheckTurns = 8;  // how often a running task reads cancels from the store

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

bool valid_name(std::string_view n) {
  if (n.empty() || n.size() > 64) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

// Wakes a task waiting for an approval decision (the decision itself is in the store).
struct ApprovalPoke {
  std::string task_id;
};

// What one model turn recorded (the step's result): where its message is, what it cost.
struct TurnRecord {
  std::int64_t seq = 0;  // history seq of the assistant message
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  double cost_usd = 0;
  std::string route;
  bool degraded = false;
  std::int64_t attempts = 1;
  std::vector<std::string> left;  // routes left before, with the reason: "route: reason"
};

std::string encode_turn(const TurnRecord& t) {
  return dump(json{{"seq", t.seq},
                   {"in", t.input_tokens},
                   {"out", t.output_tokens},
                   {"cost", t.cost_usd},
                   {"route", t.route},
                   {"degraded", t.degraded},
                   {"attempts", t.attempts},
                   {"left", t.left}});
}

Result<TurnRecord> decode_turn(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error(ErrorKind::kPermanent, "agent turn record: not a JSON object");
  TurnRecord t;
  try {
    t.seq = j.at("seq").get<std::int64_t>();
    t.input_tokens = j.value("in", std::int64_t{0});
    t.output_tokens = j.value("out", std::int64_t{0});
    t.cost_usd = j.value("cost", 0.0);
    t.route = j.value("route", "");
    t.degraded = j.value("degraded", false);
    t.attempts = j.value("attempts", std::int64_t{1});
    t.left = j.value("left", std::vector<std::string>{});
  } catch (const json::exception& e) {
    return Error(ErrorKind::kPermanent, std::string("agent turn record: ") + e.what());
  }
  return t;
}

// The "start" step: the first start's time (unix ns) and the task's cap (RunOptions::cap).
// Without a cap it is the plain integer (as before caps existed).
struct StartRecord {
  std::int64_t at_ns = 0;
  std::optional<Budget> cap;
};

std::string encode_start(std::int64_t at_ns, const std::optional<Budget>& cap) {
  if (!cap) return std::to_string(at_ns);
  return dump(
      json{{"at_ns", at_ns},
           {"cap",
            {{"max_steps", cap->max_steps},
             {"max_model_calls", cap->max_model_calls},
             {"max_tokens", cap->max_tokens},
             {"max_cost_usd", cap->max_cost_usd},
             {"max_wall_time_ns", cap->max_wall_time == kInfinite ? std::int64_t{0} : cap->max_wall_time.count()}}}});
}

Result<StartRecord> decode_start(std::string_view text) {
  StartRecord r;
  if (text.empty() || text.front() != '{') {
    Result<std::int64_t> at = Codec<std::int64_t>::decode(text);
    if (!at.ok()) return std::move(at).error().with_context("agent start record");
    r.at_ns = *at;
    return r;
  }
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error(ErrorKind::kPermanent, "agent start record: not a JSON object");
  try {
    r.at_ns = j.at("at_ns").get<std::int64_t>();
    if (j.contains("cap")) {
      const json& c = j.at("cap");
      Budget b;
      b.max_steps = c.value("max_steps", std::int64_t{0});
      b.max_model_calls = c.value("max_model_calls", std::int64_t{0});
      b.max_tokens = c.value("max_tokens", std::int64_t{0});
      b.max_cost_usd = c.value("max_cost_usd", 0.0);
      const std::int64_t wall = c.value("max_wall_time_ns", std::int64_t{0});
      b.max_wall_time = wall > 0 ? Duration(wall) : kInfinite;
      r.cap = b;
    }
  } catch (const json::exception& e) {
    return Error(ErrorKind::kPermanent, std::string("agent start record: ") + e.what());
  }
  return r;
}

// Adds the spend of the model turns recorded for the task (steps "model 0", "model 1", ...) to
// `out`: the counts of an outcome not built by a run (needs_attention). Best effort: a store
// error leaves them as they are.
void count_recorded_turns(Store& store, std::string_view task_id, TaskOutcome& out) {
  Result<std::vector<StepRecord>> steps = store.load_steps(task_id);
  if (!steps.ok()) return;
  for (std::int64_t n = 0;; ++n) {
    const std::string name = "model " + std::to_string(n);
    auto it = std::find_if(steps->begin(), steps->end(),
                           [&](const StepRecord& st) { return st.name == name && st.status == StepStatus::kOk; });
    if (it == steps->end()) return;
    Result<TurnRecord> t = decode_turn(it->result);
    if (!t.ok()) return;
    ++out.steps;
    out.model_calls += t->attempts;
    out.retries += std::max<std::int64_t>(0, t->attempts - 1);
    out.fallbacks += static_cast<std::int64_t>(t->left.size());
    out.input_tokens += t->input_tokens;
    out.output_tokens += t->output_tokens;
    out.cost_usd += t->cost_usd;
    out.degraded = out.degraded || t->degraded;
    if (!t->route.empty() && std::find(out.models.begin(), out.models.end(), t->route) == out.models.end()) {
      out.models.push_back(t->route);
    }
  }
}

// A tool call's outcome as the journal keeps it: the text for the model, or the error it saw.
struct ToolOutcome {
  bool ok = false;
  std::string text;        // ok: the tool's result
  std::string error_kind;  // !ok: to_string(ErrorKind), or a validation problem's kind
  std::string message;     // !ok
  std::string served_by;
  bool degraded = false;
  std::int64_t attempts = 0;
  ToolSpend spend;  // a sub-agent's spend, counted into the task's
};

std::string encode_tool_outcome(const ToolOutcome& o) {
  json j = {{"ok", o.ok}, {"by", o.served_by}, {"degraded", o.degraded}, {"attempts", o.attempts}};
  if (o.spend.model_calls > 0 || o.spend.cost_usd > 0 || o.spend.input_tokens > 0 || o.spend.output_tokens > 0) {
    j["spend"] = {{"cost", o.spend.cost_usd},
                  {"in", o.spend.input_tokens},
                  {"out", o.spend.output_tokens},
                  {"calls", o.spend.model_calls}};
  }
  if (o.ok) {
    j["text"] = o.text;
  } else {
    j["kind"] = o.error_kind;
    j["message"] = o.message;
  }
  return dump(j);
}

ToolOutcome decode_tool_outcome(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  ToolOutcome o;
  if (j.is_discarded() || !j.is_object()) {
    // An outcome written by an operator (resolve_effect) may be plain text: the tool's result.
    o.ok = true;
    o.text = std::string(text);
    return o;
  }
  o.ok = j.value("ok", false);
  o.text = j.value("text", "");
  o.error_kind = j.value("kind", "");
  o.message = j.value("message", "");
  o.served_by = j.value("by", "");
  o.degraded = j.value("degraded", false);
  o.attempts = j.value("attempts", std::int64_t{0});
  if (auto sp = j.find("spend"); sp != j.end() && sp->is_object()) {
    o.spend.cost_usd = sp->value("cost", 0.0);
    o.spend.input_tokens = sp->value("in", std::int64_t{0});
    o.spend.output_tokens = sp->value("out", std::int64_t{0});
    o.spend.model_calls = sp->value("calls", std::int64_t{0});
  }
  return o;
}

// Errors after which a call is known not to have been applied (refused before or by the target).
bool certainly_not_applied(ErrorKind k) {
  switch (k) {
    case ErrorKind::kCircuitOpen:
    case ErrorKind::kBulkheadFull:
    case ErrorKind::kRateLimited:
    case ErrorKind::kPermanent:
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kNotFound:
    case ErrorKind::kStartFailed: return true;
    default: return false;
  }
}

std::string tool_error_json(std::string_view kind, std::string_view tool, std::string_view message,
                            std::string_view path = {}, std::string_view rule = {}) {
  json e = {{"kind", kind}, {"tool", tool}, {"message", message}};
  if (!path.empty() || rule.size()) e["path"] = path;
  if (!rule.empty()) e["rule"] = rule;
  return dump(json{{"error", e}});
}

// The canonical text of a call for loop detection: the name and the arguments re-serialized
// (object keys sorted, whitespace gone); arguments that are not JSON as they are.
std::string call_key(const llm::ToolCall& call) {
  json j = json::parse(call.arguments_json, nullptr, false);
  return call.name + '\x1f' + (j.is_discarded() ? call.arguments_json : dump(j));
}

std::string error_kind_name(ErrorKind k) {
  std::string s(to_string(k));
  return s;
}

}  // namespace

// ---- Impl ----------------------------------------------------------------------------------

struct Agents::Impl : std::enable_shared_from_this<Agents::Impl> {
  Environment& env;
  WorkflowEngine& engine;
  std::shared_ptr<ToolRegistry> tools;
  AgentsOptions options;

  mutable std::mutex mu;
  std::mutex signal_mu;  // one signal writer at a time
  std::map<std::string, std::shared_ptr<const AgentOptions>, std::less<>> agents;
  std::vector<AgentObserver> observers;
  std::map<std::string, Pid, std::less<>> running;  // task id -> the process running it now
  std::set<std::string, std::less<>> cancelled;     // tasks cancel() was called for, here
  // RunOptions::cap given to run() for a task, until its body has read it (the body records it
  // in the "start" step the first time; a recorded cap wins over it).
  std::map<std::string, std::optional<Budget>, std::less<>> pending_caps;
  Runtime* runtime = nullptr;
  Pid supervisor;
  // drain(): every task stops at its next checkpoint (before its next model turn), its process
  // exits normally (not restarted), and start() refuses new tasks.
  std::atomic<bool> draining{false};
  // What a run() in progress learns from the task's code: whether it ran (body) and how it ended
  // (TaskRun::finish: the status and steps); run() emits kTaskFinished from it after the commit.
  // Registered by run() for its duration (gone with its frame, also when its process is
  // killed); a body run without it (WorkflowEngine::resume_all) emits kTaskFinished itself.
  struct RunFlags {
    bool ran = false;
    std::optional<std::pair<std::string, std::int64_t>> finished;
  };
  std::map<std::string, RunFlags*, std::less<>> run_flags;
  // Task processes started by start() that ended before start() could register them (bounded).
  std::deque<Pid> ended_before_registered;
  // submit(): its check that the id is free and its commit are one step for concurrent
  // submits here (the store has no create-if-absent-else-fail).
  std::mutex submit_mu;

  Impl(Environment& e, WorkflowEngine& w, std::shared_ptr<ToolRegistry> t, AgentsOptions o)
      : env(e), engine(w), tools(std::move(t)), options(o) {}

  void emit(AgentEvent ev) const {
    std::vector<AgentObserver> obs;
    {
      std::lock_guard lock(mu);
      obs = observers;
    }
    for (const auto& o : obs) o(ev);
  }

  Status register_agent_kind(const std::shared_ptr<const AgentOptions>& agent);

  std::shared_ptr<ToolRegistry> tools_now() const {
    std::lock_guard lock(mu);
    return tools;
  }

  std::shared_ptr<const AgentOptions> agent(std::string_view name) const {
    std::lock_guard lock(mu);
    auto it = agents.find(name);
    return it == agents.end() ? nullptr : it->second;
  }

  std::string signals_id(std::string_view task_id) const { return std::string(task_id) + std::string(kSignalsSuffix); }

  // The task's signal log (cancel, approve, deny), oldest first.
  Result<std::vector<json>> signals(std::string_view task_id) const {
    Result<std::vector<HistoryRecord>> r = engine.store().read_history(signals_id(task_id), 0, 4096);
    if (!r.ok()) return std::move(r).error();
    std::vector<json> out;
    for (const HistoryRecord& h : *r) {
      json j = json::parse(h.message, nullptr, false);
      if (!j.is_discarded() && j.is_object()) out.push_back(std::move(j));
    }
    return out;
  }

  // Appends a signal durably (one writer at a time in this process: the next free seq).
  // Another Agents on the same store (a delegated child's group recording the child in its
  // parent's log) may take the same seq at the same time: the store keeps the first write of a
  // seq, so the signal is read back and written again at the next seq if it was not kept.
  Status add_signal(std::string_view task_id, const json& signal) {
    std::lock_guard lock(signal_mu);
    const std::string text = dump(signal);
    for (int attempt = 0; attempt < 8; ++attempt) {
      Result<std::vector<HistoryRecord>> r = engine.store().read_history(signals_id(task_id), 0, 4096);
      if (!r.ok()) return std::move(r).error();
      if (r->size() >= 4096)
        return Error(ErrorKind::kBudgetExceeded, "task '" + std::string(task_id) + "': too many signals");
      const auto seq = static_cast<std::int64_t>(r->size());
      WriteBatch b;
      b.append_history(signals_id(task_id), seq, text);
      if (Status s = engine.store().commit(b); !s.ok()) return s;
      Result<std::vector<HistoryRecord>> back = engine.store().read_history(signals_id(task_id), seq, 1);
      if (!back.ok()) return std::move(back).error();
      if (!back->empty() && back->front().message == text) return ok_status();
    }
    return Error(ErrorKind::kTransient, "task '" + std::string(task_id) + "': a signal lost 8 races for its place");
  }

  // A decision recorded for the call: "approved", "denied: <reason>", or nullopt.
  Result<std::optional<std::string>> decision(std::string_view task_id, std::string_view call_id) const {
    Result<std::vector<json>> sigs = signals(task_id);
    if (!sigs.ok()) return std::move(sigs).error();
    for (const json& j : *sigs) {
      if (j.value("call_id", "") != call_id) continue;
      const std::string kind = j.value("signal", "");
      if (kind == "approve") return std::optional<std::string>("approved");
      if (kind == "deny") return std::optional<std::string>("denied: " + j.value("reason", ""));
    }
    return std::optional<std::string>();
  }

  Status decide(std::string_view task_id, std::string_view call_id, bool approved, std::string_view reason);

  bool cancelled_here(std::string_view task_id) const {
    std::lock_guard lock(mu);
    return cancelled.find(task_id) != cancelled.end();
  }

  Result<bool> cancel_requested(std::string_view task_id) const {
    Result<std::vector<json>> sigs = signals(task_id);
    if (!sigs.ok()) return std::move(sigs).error();
    for (const json& j : *sigs) {
      if (j.value("signal", "") == "cancel") return true;
    }
    return false;
  }

  // The tasks this one delegated (RunOptions::parent_task_id), as its signal log records them.
  Result<std::vector<std::string>> children(std::string_view task_id) const {
    Result<std::vector<json>> sigs = signals(task_id);
    if (!sigs.ok()) return std::move(sigs).error();
    std::vector<std::string> out;
    for (const json& j : *sigs) {
      if (j.value("signal", "") != "child") continue;
      std::string c = j.value("task_id", "");
      if (!c.empty() && std::find(out.begin(), out.end(), c) == out.end()) out.push_back(std::move(c));
    }
    return out;
  }

  // Records `child` as delegated by `parent` (once).
  Status add_child(std::string_view parent, std::string_view child) {
    Result<std::vector<std::string>> known = children(parent);
    if (!known.ok()) return std::move(known).error();
    if (std::find(known->begin(), known->end(), child) != known->end()) return ok_status();
    return add_signal(parent, json{{"signal", "child"}, {"task_id", child}, {"at_ns", env.unix_time_ns()}});
  }

  // Cancel requests for the unfinished tasks `task_id` delegated, recursively (bounded depth);
  // kills those running here.
  void cancel_children(std::string_view task_id, int depth = 0);

  // Runs the unfinished children of a task that ends cancelled to their (cancelled) end.
  Task<> finish_children(Context& ctx, std::string task_id);

  Task<Result<std::string>> body(WorkflowContext& wf, std::shared_ptr<const AgentOptions> agent);
};

// ---- one task's run ------------------------------------------------------------------------

namespace {

// The state of one run of one task: the conversation, what was spent, what the guards track.
class TaskRun {
 public:
  TaskRun(Agents::Impl& impl, WorkflowContext& wf, std::shared_ptr<const AgentOptions> agent, std::optional<Budget> cap)
      : impl_(impl), wf_(wf), agent_(std::move(agent)), cap_(std::move(cap)), budget_(agent_->budget) {
    out_.restarts = wf.attempt() - 1;
    adopt_prices();
    tools_ = impl_.tools_now();
  }

  Task<Result<std::string>> run();

 private:
  // Appends messages the code makes at history position hist_: on a replay they are stored
  // already (and skipped); otherwise staged with the next record.
  Task<Status> append(std::vector<Message> messages);
  Result<Message> message_at(std::int64_t seq) const;
  void emit(AgentEvent::Type type, std::string tool = {}, std::string detail = {}) const {
    impl_.emit(AgentEvent{.type = type,
                          .task_id = wf_.id(),
                          .agent = agent_->name,
                          .step = out_.steps,
                          .tool = std::move(tool),
                          .detail = std::move(detail)});
  }
  std::string finish(TaskStatus status, std::string reason, std::string answer = {});
  // A budget that the next call would cross, if any.
  std::optional<std::string> budget_refusal();
  // What is left of each budget now (for a tool that starts a sub-task).
  BudgetLeft budget_left() const;
  // Accounts the model turns recorded in the store beyond those this run replayed (a task ended
  // before its replay reached them: its outcome still counts their spend).
  void account_recorded_turns();
  Task<Result<TurnRecord>> model_turn();
  Task<Result<std::string>> final_answer(const std::string& why);
  bool is_sleep(const llm::ToolCall& call) const { return agent_->sleep_tool && call.name == "sleep"; }
  std::optional<ArgumentProblem> check_sleep(const llm::ToolCall& call) const;
  // The built-in sleep: the wake-up time is recorded, then slept to (what is left of it).
  Task<Result<std::string>> sleep_call(const llm::ToolCall& call, const std::string& where);
  // A step recorded only when decided: "approved" or "denied: <reason>".
  Task<Result<std::string>> wait_for_approval(const llm::ToolCall& call, const std::string& where);
  void account(const TurnRecord& t);
  // The effective budget: the agent's, capped by cap_ (recorded in the "start" step).
  void apply_cap();
  // The most expensive route prices the estimate of a call not yet made.
  void adopt_prices() {
    max_in_price_ = 0;
    max_out_price_ = 0;
    for (const auto& [route, price] : agent_->prices) {
      max_in_price_ = std::max(max_in_price_, price.input_per_mtok);
      max_out_price_ = std::max(max_out_price_, price.output_per_mtok);
    }
  }
  // Before each model turn: the agent's options as they are now (Agents::update_agent) and the
  // tool registry (Agents::set_tools). A removed agent's task keeps the options it had.
  void refresh() {
    if (std::shared_ptr<const AgentOptions> now = impl_.agent(agent_->name); now && now != agent_) {
      agent_ = std::move(now);
      adopt_prices();
      apply_cap();
    }
    tools_ = impl_.tools_now();
  }
  // " (the task's cap)" when the limit `field` of budget_ comes from the cap.
  const char* cap_tag(int field) const { return capped_[field] ? " (the task's cap)" : ""; }

  Agents::Impl& impl_;
  WorkflowContext& wf_;
  std::shared_ptr<const AgentOptions> agent_;
  std::shared_ptr<ToolRegistry> tools_;
  std::optional<Budget> cap_;  // given to run(); replaced by the recorded one
  Budget budget_;
  bool capped_[5] = {false, false, false, false, false};  // steps, calls, tokens, cost, wall
  std::optional<llm::Conversation> conv_;
  std::shared_ptr<const llm::ContextManager> context_;
  std::int64_t hist_ = 0;           // history messages the code has made so far
  std::int64_t started_ns_ = 0;     // the task's first start (unix ns)
  std::int64_t pending_bytes_ = 0;  // bytes added to the history since the last model call
  Duration turn_upstream_{0};       // the live turn's time inside the model client (one call), else 0
  std::int64_t last_input_tokens_ = 0;
  double max_in_price_ = 0, max_out_price_ = 0;
  int invalid_calls_ = 0;
  std::map<std::string, int> identical_;           // call_key -> times called
  std::map<std::string, std::string> last_error_;  // call_key -> its last error, the turn before
  std::set<std::string> seen_results_;
  int turns_without_progress_ = 0;
  std::int64_t turns_this_run_ = 0;  // loop iterations of this run (replayed ones included)
  TaskOutcome out_;
};

Task<Status> TaskRun::append(std::vector<Message> messages) {
  const auto n = static_cast<std::int64_t>(messages.size());
  for (const Message& m : messages) pending_bytes_ += static_cast<std::int64_t>(m.text().size());
  if (hist_ + n <= conv_->next_seq()) {  // replay: these are stored already
    hist_ += n;
    co_return ok_status();
  }
  NINES_CHECK_MSG(hist_ == conv_->next_seq(), "agent history out of step with the recorded steps");
  Status s = co_await conv_->append(wf_.ctx(), std::move(messages));
  if (s.ok()) hist_ += n;
  co_return s;
}

Result<Message> TaskRun::message_at(std::int64_t seq) const {
  for (const llm::HistoryEntry& e : conv_->tail()) {
    if (e.seq == seq) return e.message;
  }
  Result<std::vector<HistoryRecord>> r = impl_.engine.store().read_history(wf_.id(), seq, 1);
  if (!r.ok()) return std::move(r).error();
  if (r->empty() || r->front().seq != seq) {
    return Error(ErrorKind::kPermanent,
                 "task '" + wf_.id() + "': history message " + std::to_string(seq) + " is missing from the store");
  }
  return llm::decode_message(r->front().message);
}

std::string TaskRun::finish(TaskStatus status, std::string reason, std::string answer) {
  out_.status = status;
  out_.reason = std::move(reason);
  out_.answer = std::move(answer);
  const std::int64_t now_ns = wf_.ctx().env().unix_time_ns();
  out_.wall_time = Duration(std::max<std::int64_t>(0, now_ns - started_ns_));
  if (status == TaskStatus::kBudgetExceeded || status == TaskStatus::kLoopDetected) {
    emit(AgentEvent::Type::kGuard, {}, std::string(to_string(status)) + ": " + out_.reason);
  }
  // kTaskFinished is emitted by Agents::run once the outcome is committed (a client that sees
  // the event and then reads the task finds it ended); without a run() around this body, here.
  bool deferred = false;
  {
    std::lock_guard lock(impl_.mu);
    if (auto it = impl_.run_flags.find(wf_.id()); it != impl_.run_flags.end()) {
      it->second->finished.emplace(std::string(to_string(status)), out_.steps);
      deferred = true;
    }
  }
  if (!deferred) emit(AgentEvent::Type::kTaskFinished, {}, std::string(to_string(status)));
  return encode_outcome(out_);
}

std::optional<std::string> TaskRun::budget_refusal() {
  const Budget& b = budget_;
  if (b.max_steps > 0 && out_.steps >= b.max_steps) {
    return std::string("max_steps") + cap_tag(0) + ": " + std::to_string(out_.steps) +
           " model turns made, the limit is " + std::to_string(b.max_steps);
  }
  if (b.max_model_calls > 0 && out_.model_calls + 1 > b.max_model_calls) {
    return std::string("max_model_calls") + cap_tag(1) + ": " + std::to_string(out_.model_calls) +
           " made, the limit is " + std::to_string(b.max_model_calls);
  }
  // The next call's estimate: the last prompt plus what was added since (about 3 bytes a
  // token), plus the whole output it may produce.
  const std::int64_t est_in = last_input_tokens_ + pending_bytes_ / 3 + 16;
  const std::int64_t est_out = agent_->max_output_tokens;
  const std::int64_t spent = out_.input_tokens + out_.output_tokens;
  if (b.max_tokens > 0 && spent + est_in + est_out > b.max_tokens) {
    return std::string("max_tokens") + cap_tag(2) + ": " + std::to_string(spent) +
           " spent and the next call may take about " + std::to_string(est_in + est_out) + ", the limit is " +
           std::to_string(b.max_tokens);
  }
  const double est_cost =
      (static_cast<double>(est_in) * max_in_price_ + static_cast<double>(est_out) * max_out_price_) / 1e6;
  if (b.max_cost_usd > 0 && out_.cost_usd + est_cost > b.max_cost_usd) {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "max_cost_usd%s: $%.6f spent and the next call may cost up to $%.6f, the limit is $%.6f", cap_tag(3),
                  out_.cost_usd, est_cost, b.max_cost_usd);
    return std::string(buf);
  }
  if (b.max_wall_time != kInfinite && b.max_wall_time > Duration::zero()) {
    const std::int64_t elapsed = wf_.ctx().env().unix_time_ns() - started_ns_;
    if (elapsed >= b.max_wall_time.count()) {
      return std::string("max_wall_time") + cap_tag(4) + ": " + std::to_string(elapsed / 1'000'000) +
             " ms since the task started, the limit is " + std::to_string(b.max_wall_time.count() / 1'000'000) + " ms";
    }
  }
  return std::nullopt;
}

BudgetLeft TaskRun::budget_left() const {
  const Budget& b = budget_;
  BudgetLeft left;
  if (b.max_cost_usd > 0) left.cost_usd = std::max(0.0, b.max_cost_usd - out_.cost_usd);
  if (b.max_tokens > 0) left.tokens = std::max<std::int64_t>(0, b.max_tokens - out_.input_tokens - out_.output_tokens);
  if (b.max_model_calls > 0) left.model_calls = std::max<std::int64_t>(0, b.max_model_calls - out_.model_calls);
  if (b.max_steps > 0) left.steps = std::max<std::int64_t>(0, b.max_steps - out_.steps);
  if (b.max_wall_time != kInfinite && b.max_wall_time > Duration::zero()) {
    const std::int64_t elapsed = wf_.ctx().env().unix_time_ns() - started_ns_;
    left.wall_time = std::max(Duration::zero(), b.max_wall_time - Duration(elapsed));
  }
  return left;
}

void TaskRun::account_recorded_turns() {
  Result<std::vector<StepRecord>> steps = impl_.engine.store().load_steps(wf_.id());
  if (!steps.ok()) return;  // the outcome then counts what was replayed only
  for (std::int64_t n = out_.steps;; ++n) {
    const std::string name = "model " + std::to_string(n);
    auto it = std::find_if(steps->begin(), steps->end(),
                           [&](const StepRecord& st) { return st.name == name && st.status == StepStatus::kOk; });
    if (it == steps->end()) return;
    Result<TurnRecord> t = decode_turn(it->result);
    if (!t.ok()) return;
    account(*t);
  }
}

void TaskRun::apply_cap() {
  budget_ = agent_->budget;
  if (!cap_) return;
  const Budget& c = *cap_;
  auto lim = [](auto& mine, auto cap, bool& capped) {
    if (cap > 0 && (mine <= 0 || cap < mine)) {
      mine = cap;
      capped = true;
    }
  };
  lim(budget_.max_steps, c.max_steps, capped_[0]);
  lim(budget_.max_model_calls, c.max_model_calls, capped_[1]);
  lim(budget_.max_tokens, c.max_tokens, capped_[2]);
  lim(budget_.max_cost_usd, c.max_cost_usd, capped_[3]);
  if (c.max_wall_time != kInfinite && c.max_wall_time > Duration::zero() &&
      (budget_.max_wall_time == kInfinite || budget_.max_wall_time <= Duration::zero() ||
       c.max_wall_time < budget_.max_wall_time)) {
    budget_.max_wall_time = c.max_wall_time;
    capped_[4] = true;
  }
}

void TaskRun::account(const TurnRecord& t) {
  ++out_.steps;
  out_.model_calls += t.attempts;
  out_.retries += std::max<std::int64_t>(0, t.attempts - 1);
  out_.fallbacks += static_cast<std::int64_t>(t.left.size());
  out_.input_tokens += t.input_tokens;
  out_.output_tokens += t.output_tokens;
  out_.cost_usd += t.cost_usd;
  out_.degraded = out_.degraded || t.degraded;
  if (!t.route.empty() && std::find(out_.models.begin(), out_.models.end(), t.route) == out_.models.end()) {
    out_.models.push_back(t.route);
  }
  last_input_tokens_ = t.input_tokens;
  pending_bytes_ = 0;
}

Task<Result<TurnRecord>> TaskRun::model_turn() {
  const std::string name = "model " + std::to_string(out_.steps);
  auto fn = [this](Context& c) -> Task<Result<std::string>> {
    std::vector<Message> live_tail;
    if (!agent_->system_prompt.empty()) live_tail.push_back(Message::system(agent_->system_prompt));
    const llm::PromptBudget budget{
        .model = agent_->model,
        .budget_tokens = std::max<std::int64_t>(1, agent_->context_window_tokens - agent_->max_output_tokens)};
    Result<llm::Prepared> prepared = co_await context_->prepare(c, *conv_, live_tail, budget);
    if (!prepared.ok()) co_return std::move(prepared).error();
    llm::ChatRequest req{.model = agent_->model,
                         .messages = std::move(prepared->fit.messages),
                         .tools = tools_->definitions(agent_->tools),
                         .max_output_tokens = agent_->max_output_tokens};
    if (agent_->tools.empty()) req.tools.clear();
    if (agent_->sleep_tool) {
      req.tools.push_back({.name = "sleep",
                           .description = "Pauses this task for the given number of seconds (it resumes on its own, "
                                          "also after a restart).",
                           .parameters_schema_json =
                               R"({"type":"object","properties":{"seconds":{"type":"number","exclusiveMinimum":0}},)"
                               R"("required":["seconds"]})"});
    }
    llm::Router::StreamHooks hooks;
    hooks.compactor = [this, live_tail](Context& cc, const llm::ChatRequest& r, std::int64_t budget_tokens,
                                        bool) -> Task<Result<llm::ChatRequest>> {
      const llm::PromptBudget b{.model = agent_->model, .budget_tokens = budget_tokens};
      Result<llm::Prepared> p = co_await context_->compact(cc, *conv_, live_tail, b);
      if (!p.ok()) co_return std::move(p).error();
      llm::ChatRequest smaller = r;
      smaller.messages = std::move(p->fit.messages);
      co_return smaller;
    };
    Result<llm::RoutedResponse> routed = co_await agent_->router->route(c, req, hooks);
    if (!routed.ok()) co_return std::move(routed).error();
    turn_upstream_ = routed->attempts == 1 && routed->fallbacks.empty() ? routed->upstream : Duration::zero();
    TurnRecord t;
    t.seq = hist_;
    t.input_tokens = routed->response.usage.input_tokens;
    t.output_tokens = routed->response.usage.output_tokens;
    t.route = routed->served_by;
    t.degraded = routed->degraded;
    t.attempts = static_cast<std::int64_t>(std::max<std::size_t>(1, routed->attempts));
    for (const llm::RouteFailure& f : routed->fallbacks) {
      t.left.push_back(f.route + ": " + std::string(llm::to_string(f.reason)));
    }
    if (auto price = agent_->prices.find(t.route); price != agent_->prices.end()) {
      t.cost_usd = (static_cast<double>(t.input_tokens) * price->second.input_per_mtok +
                    static_cast<double>(t.output_tokens) * price->second.output_per_mtok) /
                   1e6;
    }
    Message reply = std::move(routed->response.message);
    reply.role = llm::Role::kAssistant;
    std::vector<Message> msgs;
    msgs.push_back(std::move(reply));
    Status s = co_await append(std::move(msgs));
    if (!s.ok()) co_return std::move(s).error();
    co_return encode_turn(t);
  };
  // The wall-time budget also bounds the call in flight.
  Duration left = kInfinite;
  if (budget_.max_wall_time != kInfinite && budget_.max_wall_time > Duration::zero()) {
    const std::int64_t left_ns = started_ns_ + budget_.max_wall_time.count() - wf_.ctx().env().unix_time_ns();
    left = Duration(std::max<std::int64_t>(0, left_ns));
  }
  auto wall = wf_.ctx().with_timeout(left);
  const std::int64_t before = hist_;
  Result<std::string> rec = co_await wf_.step<std::string>(name, std::move(fn));
  if (!rec.ok()) co_return std::move(rec).error();
  Result<TurnRecord> t = decode_turn(*rec);
  if (!t.ok()) co_return t;
  if (hist_ == before) {  // replayed: the message is stored already
    NINES_CHECK_MSG(t->seq == hist_, "agent turn record names another history position");
    hist_ = t->seq + 1;
  }
  co_return t;
}

Task<Result<std::string>> TaskRun::final_answer(const std::string& why) {
  auto fn = [this, why](Context& c) -> Task<Result<std::string>> {
    std::vector<Message> live_tail;
    if (!agent_->system_prompt.empty()) live_tail.push_back(Message::system(agent_->system_prompt));
    live_tail.push_back(
        Message::user("Stop calling tools (" + why + "). Give your best final answer now from what you have found."));
    const llm::PromptBudget budget{
        .model = agent_->model,
        .budget_tokens = std::max<std::int64_t>(1, agent_->context_window_tokens - agent_->max_output_tokens)};
    Result<llm::Prepared> prepared = co_await context_->prepare(c, *conv_, live_tail, budget);
    if (!prepared.ok()) co_return std::move(prepared).error();
    llm::ChatRequest req{.model = agent_->model,
                         .messages = std::move(prepared->fit.messages),
                         .max_output_tokens = agent_->max_output_tokens};
    Result<llm::RoutedResponse> routed = co_await agent_->router->route(c, req);
    if (!routed.ok()) co_return std::move(routed).error();
    co_return routed->response.message.text();
  };
  co_return co_await wf_.step<std::string>("final answer", std::move(fn));
}

std::optional<ArgumentProblem> TaskRun::check_sleep(const llm::ToolCall& call) const {
  json j = json::parse(call.arguments_json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return ArgumentProblem{.kind = ArgumentProblemKind::kNotJson,
                           .message = "arguments must be a JSON object like {\"seconds\": 60}"};
  }
  const double max_s = std::chrono::duration<double>(agent_->max_sleep).count();
  auto it = j.find("seconds");
  if (it == j.end() || !it->is_number() || it->get<double>() <= 0 || it->get<double>() > max_s) {
    return ArgumentProblem{
        .kind = ArgumentProblemKind::kSchemaViolation,
        .path = "/seconds",
        .rule = it == j.end() ? "required" : "maximum",
        .message = "seconds must be a number in (0, " + std::to_string(static_cast<long long>(max_s)) + "]"};
  }
  return std::nullopt;
}

Task<Result<std::string>> TaskRun::sleep_call(const llm::ToolCall& call, const std::string& where) {
  const double seconds = json::parse(call.arguments_json).at("seconds").get<double>();
  auto until_fn = [seconds](Context& c) -> Task<Result<std::int64_t>> {
    co_return c.env().unix_time_ns() + static_cast<std::int64_t>(seconds * 1e9);
  };
  Result<std::int64_t> until = co_await wf_.step<std::int64_t>("sleep until " + where, std::move(until_fn));
  if (!until.ok()) co_return std::move(until).error();
  emit(AgentEvent::Type::kSleep, "sleep", std::to_string(*until));
  const std::int64_t wake = *until;
  auto sleep_fn = [wake](Context& c) -> Task<Result<std::string>> {
    const std::int64_t left = wake - c.env().unix_time_ns();
    if (left > 0) {
      auto slept = co_await c.sleep(Duration(left));
      if (!slept.ok()) co_return slept.error();
    }
    co_return std::string("slept until unix time ") + std::to_string(wake / 1'000'000'000) + " s";
  };
  co_return co_await wf_.step<std::string>("sleep " + where, std::move(sleep_fn));
}

Task<Result<std::string>> TaskRun::wait_for_approval(const llm::ToolCall& call, const std::string& where) {
  Agents::Impl* impl = &impl_;
  const TaskRun* self = this;
  auto wait_fn = [impl, self, call](Context& c) -> Task<Result<std::string>> {
    const std::string task = self->wf_.id();
    bool announced = false;
    for (;;) {
      Result<std::optional<std::string>> d = impl->decision(task, call.id);
      if (!d.ok()) co_return std::move(d).error();
      if (*d) co_return **d;
      Result<bool> cancelled = impl->cancel_requested(task);
      if (!cancelled.ok()) co_return std::move(cancelled).error();
      if (*cancelled)
        co_return Error(ErrorKind::kCancelled, "task '" + task + "' cancelled while waiting for approval");
      if (!announced) {
        self->emit(AgentEvent::Type::kApprovalWait, call.name, call.id);
        announced = true;
      }
      // Woken by approve()/deny() here, or looks again after approval_poll (a decision made
      // by another process on the same store).
      // Named first (g++ 12: a capturing lambda temporary inside co_await is destroyed twice).
      std::function<bool(const nines::Message&)> is_poke = [task](const nines::Message& m) {
        const auto* poke = m.get<ApprovalPoke>();
        return poke != nullptr && poke->task_id == task;
      };
      (void)co_await c.receive_if(std::move(is_poke), self->agent_->approval_poll);
      if (c.deadline() <= c.now()) {
        co_return Error(ErrorKind::kDeadlineExceeded, "task '" + task + "': the deadline passed waiting for approval");
      }
    }
  };
  Result<std::string> decided = co_await wf_.step<std::string>("approval " + where, std::move(wait_fn));
  if (decided.ok()) emit(AgentEvent::Type::kApprovalDecided, call.name, *decided);
  co_return decided;
}

Task<Result<std::string>> TaskRun::run() {
  // The context manager: the agent's, or one that only fits.
  context_ = agent_->context;
  if (!context_) {
    auto cm = llm::ContextManager::create({}, nullptr, nullptr);
    if (!cm.ok()) co_return std::move(cm).error();
    context_ = std::shared_ptr<const llm::ContextManager>(std::move(*cm));
  }
  // History writes are staged: durable with the next step record, never ahead of it.
  WorkflowContext* wf = &wf_;
  llm::CommitFn staging = [wf](Context&, WriteBatch batch) -> Task<Status> {
    wf->stage(std::move(batch));
    co_return ok_status();
  };
  Result<llm::Conversation> conv = llm::Conversation::load(impl_.engine.store(), wf_.id(), staging);
  if (!conv.ok()) co_return std::move(conv).error();
  conv_.emplace(std::move(*conv));

  // The first start's time and the task's cap (RunOptions::cap): recorded once, so every
  // resumed run has the same ones. A plain integer (no cap) is the old format too.
  std::optional<Budget> given = cap_;
  auto start_fn = [given](Context& c) -> Task<Result<std::string>> {
    const std::int64_t now = c.env().unix_time_ns();
    if (!given) co_return std::to_string(now);
    co_return encode_start(now, given);
  };
  Result<std::string> started = co_await wf_.step<std::string>("start", std::move(start_fn));
  if (!started.ok()) co_return std::move(started).error();
  Result<StartRecord> start_rec = decode_start(*started);
  if (!start_rec.ok()) co_return std::move(start_rec).error().with_context("task '" + wf_.id() + "'");
  started_ns_ = start_rec->at_ns;
  cap_ = start_rec->cap;
  apply_cap();
  emit(AgentEvent::Type::kTaskStarted, {}, "attempt " + std::to_string(wf_.attempt()));
  {
    std::vector<Message> first;
    first.push_back(Message::user(wf_.input()));
    Status s = co_await append(std::move(first));
    if (!s.ok()) co_return std::move(s).error();
  }

  for (;;) {
    refresh();
    // 1. Guards before the call.
    // A cancel made here is known at once; one made elsewhere on the store (another process)
    // is read from the store on the first turn of a run and every kStoreCancelCheckTurns.
    bool cancelled = impl_.cancelled_here(wf_.id());
    if (!cancelled && turns_this_run_++ % kStoreCancelCheckTurns == 0) {
      Result<bool> in_store = impl_.cancel_requested(wf_.id());
      if (!in_store.ok()) co_return std::move(in_store).error();
      cancelled = *in_store;
    }
    if (!cancelled && impl_.draining.load(std::memory_order_acquire)) {
      // Every turn before this one is recorded: the next run (after the service's restart)
      // resumes here.
      co_return Error(ErrorKind::kTransient,
                      "task '" + wf_.id() + "' stopped at a checkpoint: the agents are draining");
    }
    if (cancelled) {
      account_recorded_turns();  // a cancel seen before the replay still counts what was spent
      co_await impl_.finish_children(wf_.ctx(), wf_.id());
      co_return finish(TaskStatus::kCancelled, "cancelled on request");
    }
    if (std::optional<std::string> over = budget_refusal()) co_return finish(TaskStatus::kBudgetExceeded, *over);

    // 2-3. The model's turn.
    emit(AgentEvent::Type::kStepStarted);
    const TimePoint turn_started = wf_.ctx().now();
    turn_upstream_ = Duration::zero();
    Result<TurnRecord> turn = co_await model_turn();
    if (!turn.ok()) {
      const ErrorKind k = turn.error().kind();
      if (k == ErrorKind::kDeadlineExceeded && budget_refusal()) {
        co_return finish(TaskStatus::kBudgetExceeded, *budget_refusal());
      }
      if (k == ErrorKind::kPermanent || k == ErrorKind::kInvalidArgument || k == ErrorKind::kContextOverflow) {
        co_return finish(TaskStatus::kFailed, "the model call failed for good: " + turn.error().to_string());
      }
      co_return std::move(turn).error();  // interrupted: resumed at this turn
    }
    account(*turn);
    if (turn->attempts > 1) emit(AgentEvent::Type::kRetry, {}, std::to_string(turn->attempts) + " calls");
    for (const std::string& left : turn->left) emit(AgentEvent::Type::kFallback, {}, left);
    {
      AgentEvent finished{.type = AgentEvent::Type::kStepFinished,
                          .task_id = wf_.id(),
                          .agent = agent_->name,
                          .step = out_.steps,
                          .detail = turn->route + " in=" + std::to_string(turn->input_tokens) +
                                    " out=" + std::to_string(turn->output_tokens)};
      if (turn_upstream_ > Duration::zero()) {  // live, one call
        finished.duration = wf_.ctx().now() - turn_started;
        finished.upstream = turn_upstream_;
      }
      impl_.emit(std::move(finished));
    }
    Result<Message> reply = message_at(turn->seq);
    if (!reply.ok()) co_return std::move(reply).error();

    // 4. A final answer.
    if (reply->tool_calls.empty()) co_return finish(TaskStatus::kSucceeded, "", reply->text());

    // 5. Check every call; 6. loop guards.
    const std::vector<llm::ToolCall>& calls = reply->tool_calls;
    std::vector<std::optional<std::string>> refused(calls.size());  // the tool result of a refused call
    std::vector<std::size_t> valid;
    std::optional<std::string> loop;
    for (std::size_t i = 0; i < calls.size(); ++i) {
      std::optional<ArgumentProblem> p =
          is_sleep(calls[i]) ? check_sleep(calls[i]) : tools_->check_call(calls[i], agent_->tools);
      if (p) {
        ++invalid_calls_;
        ++out_.tool_errors[std::string(to_string(p->kind))];
        refused[i] = tool_error_json(to_string(p->kind), calls[i].name, p->message, p->path, p->rule);
        emit(AgentEvent::Type::kInvalidCall, calls[i].name, std::string(to_string(p->kind)));
        continue;
      }
      const std::string key = call_key(calls[i]);
      const int times = ++identical_[key];
      if (agent_->loop.max_identical_calls > 0 && times >= agent_->loop.max_identical_calls && !loop) {
        loop = "tool '" + calls[i].name + "' called " + std::to_string(times) + " times with the same arguments";
      }
      valid.push_back(i);
    }
    if (invalid_calls_ > agent_->max_invalid_tool_calls) {
      co_return finish(TaskStatus::kFailed, "the model made " + std::to_string(invalid_calls_) +
                                                " invalid tool calls (the limit is " +
                                                std::to_string(agent_->max_invalid_tool_calls) + ")");
    }
    if (loop) {
      // Every call of the turn gets its result (providers refuse a prompt with unanswered calls).
      std::vector<Message> not_run;
      for (std::size_t i = 0; i < calls.size(); ++i) {
        not_run.push_back(Message::tool_result(
            calls[i].id,
            refused[i] ? *refused[i] : tool_error_json("loop_detected", calls[i].name, "not run: " + *loop), true));
      }
      Status appended = co_await append(std::move(not_run));
      if (!appended.ok()) co_return std::move(appended).error();
      if (!agent_->loop.final_answer) co_return finish(TaskStatus::kLoopDetected, *loop);
      Result<std::string> answer = co_await final_answer(*loop);
      if (!answer.ok() && answer.error().kind() != ErrorKind::kPermanent &&
          answer.error().kind() != ErrorKind::kInvalidArgument) {
        co_return std::move(answer).error();
      }
      co_return finish(TaskStatus::kLoopDetected, *loop, answer.ok() ? *answer : std::string());
    }

    // 7. Durable waits first (an approval, a sleep), in the order of the calls; then the calls
    // that may run, at once, each an effect.
    std::map<std::size_t, ToolOutcome> done;  // call index -> its outcome (sleeps, denials)
    std::vector<std::size_t> runnable;
    for (std::size_t i : valid) {
      const std::string where = std::to_string(out_.steps) + "/" + std::to_string(i);
      if (is_sleep(calls[i])) {
        Result<std::string> slept = co_await sleep_call(calls[i], where);
        if (!slept.ok()) co_return std::move(slept).error();
        done[i] = ToolOutcome{.ok = true, .text = *slept, .served_by = "sleep"};
        continue;
      }
      if (tools_->find(calls[i].name)->spec().requires_approval) {
        Result<std::string> decided = co_await wait_for_approval(calls[i], where);
        if (!decided.ok()) {
          Result<bool> cancelled_now = impl_.cancel_requested(wf_.id());
          if (cancelled_now.ok() && *cancelled_now) {
            co_await impl_.finish_children(wf_.ctx(), wf_.id());
            co_return finish(TaskStatus::kCancelled, "cancelled on request");
          }
          co_return std::move(decided).error();
        }
        if (*decided != "approved") {
          done[i] = ToolOutcome{.ok = false, .error_kind = "denied", .message = "an operator " + *decided};
          continue;
        }
      }
      runnable.push_back(i);
    }
    std::vector<EffectOptions> effects;
    std::vector<llm::ToolCall> to_run;
    for (std::size_t i : runnable) {
      std::shared_ptr<Tool> tool = tools_->find(calls[i].name);
      NINES_CHECK(tool != nullptr);
      EffectOptions eo{
          .name = "tool:" + calls[i].name, .nature = tool->spec().nature, .arguments = calls[i].arguments_json};
      if (tool->spec().nature == EffectNature::kCheckable) {
        eo.check = [tool, task = wf_.id(), call = calls[i]](
                       Context& c, const std::string& key) -> Task<Result<std::optional<std::string>>> {
          ToolInvocation inv{
              .task_id = task, .call_id = call.id, .arguments_json = call.arguments_json, .idempotency_key = key};
          // Bounded as a call of the tool is: a target that never answers the question is asked
          // again on the next run (kTimeout is not final), it does not hang the task.
          const TimePoint outer = c.deadline();
          auto bounded = c.with_timeout(tool->spec().timeout);
          Result<std::optional<std::string>> r = co_await tool->check(c, inv);
          if (!r.ok() && r.error().kind() == ErrorKind::kDeadlineExceeded && c.now() < outer) {
            r = Error(ErrorKind::kTimeout, "tool '" + tool->spec().name + "': check timed out");
          }
          if (!r.ok() || !*r) co_return r;
          ToolOutcome o{.ok = true, .text = **r, .served_by = tool->spec().name};
          co_return std::optional<std::string>(encode_tool_outcome(o));
        };
      }
      effects.push_back(std::move(eo));
      to_run.push_back(calls[i]);
      ++out_.tool_calls;
      emit(AgentEvent::Type::kToolCall, calls[i].name, calls[i].id);
    }
    std::shared_ptr<ToolRegistry> registry = tools_;
    const BudgetLeft left = budget_left();
    WorkflowContext::ConcurrentEffectFn run_tool = [registry, task = wf_.id(), to_run, left](
                                                       std::size_t i, Context& c,
                                                       const std::string& key) -> Task<Result<std::string>> {
      const llm::ToolCall& call = to_run[i];
      auto spend = std::make_shared<ToolSpend>();
      ToolInvocation inv{.task_id = task,
                         .call_id = call.id,
                         .arguments_json = call.arguments_json,
                         .idempotency_key = key,
                         .budget_left = left,
                         .spend = spend.get()};
      ToolRun r = co_await registry->invoke(c, call.name, std::move(inv));
      ToolOutcome o{.served_by = r.served_by, .degraded = r.degraded, .attempts = r.attempts, .spend = *spend};
      if (r.result.ok()) {
        o.ok = true;
        o.text = std::move(*r.result);
        if (o.text.size() > kMaxToolResultBytes) {
          o.text.resize(kMaxToolResultBytes);
          o.text += "\n[... cut at " + std::to_string(kMaxToolResultBytes) + " bytes]";
        }
        co_return encode_tool_outcome(o);
      }
      const ErrorKind k = r.result.error().kind();
      std::shared_ptr<Tool> tool = registry->find(call.name);
      const EffectNature nature = tool ? tool->spec().nature : EffectNature::kUnsafe;
      const bool repeatable = nature == EffectNature::kReadOnly || nature == EffectNature::kIdempotent;
      if (k == ErrorKind::kCancelled || k == ErrorKind::kDeadlineExceeded ||
          (!repeatable && !certainly_not_applied(k))) {
        co_return std::move(r.result).error();  // outcome unknown: the journal decides on the next run
      }
      o.ok = false;
      o.error_kind = error_kind_name(k);
      o.message = r.result.error().message();
      if (o.message.rfind(kAuthFailurePrefix, 0) == 0) o.error_kind = "auth";
      co_return encode_tool_outcome(o);
    };
    std::vector<Result<std::string>> results;
    if (impl_.options.unjournaled_tools_for_testing) {
      // The broken variant the simulation must catch: no journal, so a resume runs them again.
      for (std::size_t i = 0; i < to_run.size(); ++i) {
        // Named: the task refers to the key until it is awaited.
        const std::string key = wf_.id() + "/unjournaled/" + std::to_string(wf_.attempt()) + "/" + std::to_string(i);
        Task<Result<std::string>> t = run_tool(i, wf_.ctx(), key);
        results.push_back(co_await std::move(t));
      }
    } else if (!effects.empty()) {
      results = co_await wf_.effects(std::move(effects), std::move(run_tool),
                                     std::max<std::size_t>(1, agent_->max_parallel_tools));
    }
    for (const Result<std::string>& r : results) {
      if (!r.ok()) co_return r.error();  // the run stopped (unknown outcome, needs_attention, a store error)
    }

    // 8. The results, in the order of the calls, into the history.
    std::vector<Message> messages;
    bool progress = false;
    bool repeated_error = false;
    std::map<std::string, std::string> errors_now;
    for (std::size_t k = 0; k < runnable.size(); ++k) done[runnable[k]] = decode_tool_outcome(*results[k]);
    for (std::size_t i = 0; i < calls.size(); ++i) {
      if (refused[i]) {
        messages.push_back(Message::tool_result(calls[i].id, *refused[i], true));
        continue;
      }
      NINES_CHECK(done.contains(i));
      ToolOutcome o = std::move(done[i]);
      out_.degraded = out_.degraded || o.degraded;
      out_.cost_usd += o.spend.cost_usd;
      out_.input_tokens += o.spend.input_tokens;
      out_.output_tokens += o.spend.output_tokens;
      out_.model_calls += o.spend.model_calls;
      const std::string key = call_key(calls[i]);
      if (o.ok) {
        emit(AgentEvent::Type::kToolResult, calls[i].name, "ok");
        if (seen_results_.insert(calls[i].name + '\x1f' + o.text).second) progress = true;
        messages.push_back(Message::tool_result(calls[i].id, std::move(o.text)));
      } else {
        ++out_.tool_errors[o.error_kind];
        emit(AgentEvent::Type::kToolResult, calls[i].name, o.error_kind);
        auto last = last_error_.find(key);
        if (last != last_error_.end() && last->second == o.message) repeated_error = true;
        errors_now[key] = o.message;
        messages.push_back(
            Message::tool_result(calls[i].id, tool_error_json(o.error_kind, calls[i].name, o.message), true));
      }
    }
    last_error_ = std::move(errors_now);
    Status s = co_await append(std::move(messages));
    if (!s.ok()) co_return std::move(s).error();
    turns_without_progress_ = progress ? 0 : turns_without_progress_ + 1;
    std::optional<std::string> stuck;
    if (agent_->loop.stop_on_repeated_error && repeated_error) {
      stuck = "the same tool call failed with the same error twice in a row";
    } else if (agent_->loop.max_turns_without_progress > 0 &&
               turns_without_progress_ >= agent_->loop.max_turns_without_progress) {
      stuck = std::to_string(turns_without_progress_) + " model turns without a new tool result";
    }
    if (stuck) {
      if (!agent_->loop.final_answer) co_return finish(TaskStatus::kLoopDetected, *stuck);
      Result<std::string> answer = co_await final_answer(*stuck);
      if (!answer.ok() && answer.error().kind() != ErrorKind::kPermanent &&
          answer.error().kind() != ErrorKind::kInvalidArgument) {
        co_return std::move(answer).error();
      }
      co_return finish(TaskStatus::kLoopDetected, *stuck, answer.ok() ? *answer : std::string());
    }
  }
}

// The argument of a task process under the task supervisor.
struct TaskStart {
  std::string agent;
  std::string task_id;
  std::string input;
  RunOptions options;
  bool by_start = false;  // start() registers the process in `running` once it has its pid
};

}  // namespace

Task<Result<std::string>> Agents::Impl::body(WorkflowContext& wf, std::shared_ptr<const AgentOptions> agent) {
  // Where the task runs now: cancel() kills it there, approve() and deny() wake it.
  struct Running {
    Impl& impl;
    std::string id;
    Pid self;
    Running(Impl& i, std::string task, Context& ctx) : impl(i), id(std::move(task)), self(ctx.self()) {
      std::lock_guard lock(impl.mu);
      impl.running[id] = self;
      impl.runtime = &ctx.runtime();
    }
    ~Running() {
      std::lock_guard lock(impl.mu);
      auto it = impl.running.find(id);
      if (it != impl.running.end() && it->second == self) impl.running.erase(it);
    }
  } here(*this, wf.id(), wf.ctx());
  {
    std::lock_guard lock(mu);
    if (auto it = run_flags.find(wf.id()); it != run_flags.end()) it->second->ran = true;
  }
  std::optional<Budget> cap;
  {
    std::lock_guard lock(mu);
    if (auto it = pending_caps.find(wf.id()); it != pending_caps.end()) cap = it->second;
  }
  TaskRun run(*this, wf, std::move(agent), std::move(cap));
  co_return co_await run.run();
}

Status Agents::Impl::decide(std::string_view task_id, std::string_view call_id, bool approved,
                            std::string_view reason) {
  if (call_id.empty()) return Error(ErrorKind::kInvalidArgument, "an approval decision needs the call id");
  Result<WorkflowRecord> w = engine.store().get_workflow(task_id);
  if (!w.ok()) return std::move(w).error();
  Result<std::optional<std::string>> already = decision(task_id, call_id);
  if (!already.ok()) return std::move(already).error();
  if (*already) {
    return Error(ErrorKind::kAlreadyExists, "call '" + std::string(call_id) + "' of task '" + std::string(task_id) +
                                                "' was decided already (" + **already + ")");
  }
  json signal = {{"signal", approved ? "approve" : "deny"}, {"call_id", call_id}, {"at_ns", env.unix_time_ns()}};
  if (!approved) signal["reason"] = reason;
  if (Status s = add_signal(task_id, signal); !s.ok()) return s;
  Pid pid;
  Runtime* rt = nullptr;
  {
    std::lock_guard lock(mu);
    if (auto it = running.find(task_id); it != running.end()) pid = it->second;
    rt = runtime;
  }
  if (pid != Pid{} && rt != nullptr) (void)rt->send(pid, ApprovalPoke{std::string(task_id)});
  return ok_status();
}

// ---- Agents --------------------------------------------------------------------------------

Agents::Agents(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Agents::~Agents() = default;

Result<std::unique_ptr<Agents>> Agents::create(Environment& env, WorkflowEngine& engine,
                                               std::shared_ptr<ToolRegistry> tools, AgentsOptions options) {
  if (!tools) return Error(ErrorKind::kInvalidArgument, "agents: no tool registry");
  if (options.restart_intensity < 1)
    return Error(ErrorKind::kInvalidArgument, "agents: restart_intensity must be >= 1");
  auto impl = std::make_shared<Impl>(env, engine, std::move(tools), options);
  return std::unique_ptr<Agents>(new Agents(std::move(impl)));
}

namespace {

// add_agent's checks (with the registry the agent's tools must be in); fills defaults.
Status validate_agent(AgentOptions& o, const ToolRegistry& tools) {
  auto bad = [&](const std::string& what) {
    return Error(ErrorKind::kInvalidArgument, "agent '" + o.name.substr(0, 64) + "': " + what);
  };
  if (!valid_name(o.name)) return bad("name must be 1 to 64 letters, digits, '_' or '-'");
  if (!o.router) return bad("no router (model chain)");
  for (const std::string& t : o.tools) {
    std::shared_ptr<Tool> tool = tools.find(t);
    if (!tool) return bad("tool '" + t + "' is not in the registry");
  }
  if (o.max_parallel_tools < 1) return bad("max_parallel_tools must be >= 1");
  if (o.sleep_tool && tools.contains("sleep")) return bad("sleep_tool: a registered tool is named 'sleep'");
  if (o.max_sleep <= Duration::zero()) return bad("max_sleep must be > 0");
  if (o.approval_poll <= Duration::zero()) return bad("approval_poll must be > 0");
  if (o.max_invalid_tool_calls < 0) return bad("max_invalid_tool_calls must be >= 0");
  if (o.max_output_tokens <= 0) return bad("max_output_tokens must be > 0");
  if (o.context_window_tokens == 0) o.context_window_tokens = 128000;
  if (o.context_window_tokens <= o.max_output_tokens) return bad("context_window_tokens must be > max_output_tokens");
  if (o.budget.max_steps < 0 || o.budget.max_model_calls < 0 || o.budget.max_tokens < 0 || o.budget.max_cost_usd < 0) {
    return bad("budget limits must not be negative");
  }
  if (o.loop.max_identical_calls < 0 || o.loop.max_turns_without_progress < 0) {
    return bad("loop limits must not be negative");
  }
  for (const auto& [route, price] : o.prices) {
    if (price.input_per_mtok < 0 || price.output_per_mtok < 0 || price.cached_input_per_mtok < 0) {
      return bad("the price of '" + route + "' is negative");
    }
  }
  return ok_status();
}

}  // namespace

Status Agents::Impl::register_agent_kind(const std::shared_ptr<const AgentOptions>& agent) {
  std::weak_ptr<Impl> weak = weak_from_this();
  return engine.register_kind(std::string(kKindPrefix) + agent->name,
                              [weak, agent](WorkflowContext& wf) -> Task<Result<std::string>> {
                                std::shared_ptr<Impl> impl = weak.lock();
                                if (!impl) co_return Error(ErrorKind::kCancelled, "agents are gone");
                                // The options as they are now (update_agent); the registered
                                // ones if the agent was removed.
                                std::shared_ptr<const AgentOptions> now = impl->agent(agent->name);
                                co_return co_await impl->body(wf, now ? now : agent);
                              });
}

Status Agents::add_agent(AgentOptions o) {
  if (Status v = validate_agent(o, *impl_->tools_now()); !v.ok()) return v;
  auto agent = std::make_shared<const AgentOptions>(std::move(o));
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->agents.contains(agent->name)) {
      return Error(ErrorKind::kAlreadyExists, "agent '" + agent->name + "' is registered already");
    }
  }
  Status s = impl_->register_agent_kind(agent);
  if (!s.ok()) return s;
  std::lock_guard lock(impl_->mu);
  impl_->agents.emplace(agent->name, agent);
  return ok_status();
}

Status Agents::reconfigure(std::shared_ptr<ToolRegistry> tools, std::vector<AgentOptions> agents) {
  std::shared_ptr<ToolRegistry> registry = tools ? std::move(tools) : impl_->tools_now();
  std::map<std::string, std::shared_ptr<const AgentOptions>, std::less<>> next;
  for (AgentOptions& o : agents) {
    if (Status v = validate_agent(o, *registry); !v.ok()) return v;
    if (next.contains(o.name)) return Error(ErrorKind::kInvalidArgument, "agent '" + o.name + "' is given twice");
    std::string name = o.name;
    next.emplace(std::move(name), std::make_shared<const AgentOptions>(std::move(o)));
  }
  // New agents' workflow kinds (an agent removed and added again keeps its registration: its body
  // looks the options up by name).
  for (const auto& [name, agent] : next) {
    if (impl_->agent(name)) continue;
    Status s = impl_->register_agent_kind(agent);
    if (!s.ok() && s.error().kind() != ErrorKind::kAlreadyExists) return s;
  }
  std::lock_guard lock(impl_->mu);
  impl_->tools = std::move(registry);
  impl_->agents = std::move(next);
  return ok_status();
}

void Agents::add_observer(AgentObserver observer) {
  std::lock_guard lock(impl_->mu);
  impl_->observers.push_back(std::move(observer));
}

Task<TaskOutcome> Agents::run(Context& ctx, std::string agent, std::string task_id, std::string input) {
  // Not a coroutine: the callee's frame takes the arguments.
  return run(ctx, std::move(agent), std::move(task_id), std::move(input), RunOptions{});
}

Task<TaskOutcome> Agents::run(Context& ctx, std::string agent, std::string task_id, std::string input,
                              RunOptions options) {
  TaskOutcome out;
  if (!impl_->agent(agent)) {
    out.status = TaskStatus::kFailed;
    out.reason = "no agent named '" + agent + "'";
    co_return out;
  }
  if (!options.parent_task_id.empty()) {
    // Known to the parent before it exists: cancelling the parent finds it.
    if (Status s = impl_->add_child(options.parent_task_id, task_id); !s.ok()) {
      out.status = TaskStatus::kInterrupted;
      out.reason = "recording the child of '" + options.parent_task_id + "': " + s.error().to_string();
      co_return out;
    }
  }
  struct PendingCap {
    Impl& impl;
    std::string id;
    bool set = false;
    ~PendingCap() {
      if (!set) return;
      std::lock_guard lock(impl.mu);
      impl.pending_caps.erase(id);
    }
  } pending{*impl_, task_id};
  if (options.cap) {
    std::lock_guard lock(impl_->mu);
    pending.set = impl_->pending_caps.try_emplace(task_id, options.cap).second;
  }
  struct Flags {
    Impl& impl;
    std::string id;
    Impl::RunFlags flags;
    bool registered = false;
    Flags(Impl& i, std::string t) : impl(i), id(std::move(t)) {
      std::lock_guard lock(impl.mu);
      registered = impl.run_flags.try_emplace(id, &flags).second;
    }
    ~Flags() {
      if (!registered) return;
      std::lock_guard lock(impl.mu);
      impl.run_flags.erase(id);
    }
    Flags(const Flags&) = delete;
    Flags& operator=(const Flags&) = delete;
  } flags(*impl_, task_id);
  WorkflowOutcome w = co_await impl_->engine.run_outcome(ctx, std::string(kKindPrefix) + agent, task_id, input);
  bool ran = false;
  std::optional<std::pair<std::string, std::int64_t>> finished;
  {
    std::lock_guard lock(impl_->mu);
    ran = flags.registered && flags.flags.ran;
    finished = flags.flags.finished;
  }
  switch (w.end) {
    case RunEnd::kCompleted: {
      Result<TaskOutcome> o = decode_outcome(*w.result);
      if (o.ok()) {
        out = std::move(*o);
      } else {
        out.status = TaskStatus::kFailed;
        out.reason = o.error().to_string();
      }
      break;
    }
    case RunEnd::kNeedsAttention: out.status = TaskStatus::kNeedsAttention; break;
    case RunEnd::kCancelled: out.status = TaskStatus::kCancelled; break;
    case RunEnd::kFailed:
    case RunEnd::kRefused: out.status = TaskStatus::kFailed; break;
    case RunEnd::kInterrupted: out.status = TaskStatus::kInterrupted; break;
  }
  if (w.end != RunEnd::kCompleted) {
    out.reason = w.result.ok() ? *w.result : w.result.error().to_string();
    if (out.status == TaskStatus::kNeedsAttention) count_recorded_turns(impl_->engine.store(), task_id, out);
  }
  // The task's end, now that it is committed: once, by the run that ran its code to that end
  // (a run that only read a recorded outcome emits nothing).
  if (ran && w.end != RunEnd::kInterrupted && w.end != RunEnd::kRefused) {
    impl_->emit(AgentEvent{.type = AgentEvent::Type::kTaskFinished,
                           .task_id = task_id,
                           .agent = agent,
                           .step = finished ? finished->second : out.steps,
                           .detail = finished ? finished->first : std::string(to_string(out.status))});
  }
  co_return out;
}

namespace {

// AgentsOptions::resume_on_start: starts, under `sup`, every task of impl's agents the store
// has as running and no process here runs; pages through the running workflows. A task whose
// process is still here may be dying with the old supervisor: it is started once that process
// is down, if it goes down within kDyingGrace; otherwise it runs elsewhere and is left alone.
constexpr Duration kDyingGrace = std::chrono::seconds(1);

void spawn_resumer(Runtime& rt, const std::weak_ptr<Agents::Impl>& weak, Pid sup) {
  Behavior resumer = [weak, sup](Context& ctx) -> Task<> {
    std::string after;
    std::size_t started = 0;
    for (;;) {
      std::vector<TaskStart> page;
      std::vector<std::pair<TaskStart, Pid>> busy;  // run by a process here (maybe dying)
      bool more = false;
      {
        std::shared_ptr<Agents::Impl> impl = weak.lock();
        if (!impl) co_return;
        Result<std::vector<WorkflowRecord>> listed =
            impl->engine.store().list_workflows(WorkflowStatus::kRunning, after, 256);
        if (!listed.ok()) {
          NINES_LOG(ctx.env().logger(), LogLevel::kError, "agent_resume_failed",
                    "could not list the tasks to resume: " + listed.error().to_string());
          co_return;
        }
        more = listed->size() == 256;
        std::lock_guard lock(impl->mu);
        for (WorkflowRecord& w : *listed) {
          after = w.id;
          if (w.kind.rfind(kKindPrefix, 0) != 0) continue;
          std::string agent = w.kind.substr(kKindPrefix.size());
          if (impl->agents.find(agent) == impl->agents.end()) continue;
          auto here = impl->running.find(w.id);
          const Pid runner = here == impl->running.end() ? Pid{} : here->second;
          TaskStart t{.agent = std::move(agent), .task_id = std::move(w.id), .input = std::move(w.input)};
          if (runner == Pid{}) {
            page.push_back(std::move(t));
          } else {
            busy.emplace_back(std::move(t), runner);
          }
        }
      }
      const TimePoint grace_end = add_saturating(ctx.now(), kDyingGrace);
      for (auto& [t, runner] : busy) {
        MonitorRef mon = ctx.monitor(runner);
        const TimePoint now = ctx.now();
        std::optional<Down> down = co_await ctx.wait_down(mon, now < grace_end ? grace_end - now : Duration::zero());
        if (!down) {
          ctx.demonitor(mon);
          continue;
        }
        page.push_back(std::move(t));
      }
      for (TaskStart& t : page) {
        std::any arg = std::move(t);
        Result<Pid> pid = co_await start_dynamic_child(ctx, sup, std::move(arg));
        if (!pid.ok()) co_return;  // the supervisor is gone; the next one resumes them
        ++started;
      }
      if (!more) break;
    }
    if (started > 0) {
      NINES_LOG(ctx.env().logger(), LogLevel::kNotice, "agent_tasks_resumed", "resumed the tasks left running",
                {"tasks", static_cast<std::uint64_t>(started)});
    }
  };
  (void)rt.spawn(std::move(resumer));  // a spawn refused (runtime stopping) resumes nothing
}

}  // namespace

ChildSpec Agents::supervisor_child(std::string id) {
  std::weak_ptr<Impl> weak = impl_;
  ChildSpec child = ChildSpec::supervisor(std::move(id), task_supervisor_spec());
  StartFn start = std::move(child.start);
  child.start = [weak, start = std::move(start)](StartContext& sc) -> Result<Pid> {
    Result<Pid> sup = start(sc);
    if (!sup.ok()) return sup;
    if (std::shared_ptr<Impl> impl = weak.lock()) {
      {
        std::lock_guard lock(impl->mu);
        impl->supervisor = *sup;
        impl->runtime = &sc.runtime();
      }
      if (impl->options.resume_on_start) spawn_resumer(sc.runtime(), weak, *sup);
    }
    return sup;
  };
  return child;
}

Result<Pid> Agents::start_supervisor(Context& ctx) {
  SupervisorSpec spec = task_supervisor_spec();
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->supervisor != Pid{} && impl_->runtime != nullptr && impl_->runtime->alive(impl_->supervisor)) {
      return Error(ErrorKind::kAlreadyExists, "agents: the task supervisor runs already");
    }
  }
  Result<Pid> sup = start_supervisor_link(ctx, spec);
  if (!sup.ok()) return sup;
  {
    std::lock_guard lock(impl_->mu);
    impl_->supervisor = *sup;
    impl_->runtime = &ctx.runtime();
  }
  if (impl_->options.resume_on_start) spawn_resumer(ctx.runtime(), impl_, *sup);
  return sup;
}

SupervisorSpec Agents::task_supervisor_spec() const {
  std::weak_ptr<Impl> weak = impl_;
  ChildSpec tmpl;
  tmpl.id = "task";
  tmpl.restart = RestartType::kTransient;
  tmpl.backoff =
      BackoffOptions{.min_delay = impl_->options.restart_min_delay, .max_delay = impl_->options.restart_max_delay};
  tmpl.start = [weak](StartContext& sc) -> Result<Pid> {
    const TaskStart* arg = std::any_cast<TaskStart>(&sc.arg());
    if (arg == nullptr) return Error(ErrorKind::kInvalidArgument, "agents: a task process needs a TaskStart");
    TaskStart start = *arg;
    Behavior behavior = [weak, start](Context& c) -> Task<> {
      std::shared_ptr<Impl> impl = weak.lock();
      if (!impl) co_return;
      // start() registered this process as the task's runner (so that wait() knows the task
      // before its workflow exists); the registration goes with the process, however it ends.
      struct Registered {
        Impl& impl;
        std::string id;
        Pid self;
        bool by_start;
        ~Registered() {
          std::lock_guard lock(impl.mu);
          auto it = impl.running.find(id);
          if (it != impl.running.end() && it->second == self) {
            impl.running.erase(it);
          } else if (by_start) {
            // Ended before start() registered it (a quick task): start() must not register it.
            impl.ended_before_registered.push_back(self);
            if (impl.ended_before_registered.size() > 1024) impl.ended_before_registered.pop_front();
          }
        }
      } registered{*impl, start.task_id, c.self(), start.by_start};
      Agents view(impl);
      TaskOutcome out = co_await view.run(c, start.agent, start.task_id, start.input, start.options);
      // An interrupted run crashes the process: the supervisor restarts it (with backoff) and
      // the task resumes where its records end.
      // While draining, an interrupted run (stopped at its checkpoint) exits normally instead:
      // the task stays running in the store for the next start of the program.
      if (out.status == TaskStatus::kInterrupted && !impl->draining.load(std::memory_order_acquire)) {
        c.exit(ExitReason::crash("nines::agent::Interrupted", out.reason));
      }
    };
    return sc.spawn_link(std::move(behavior));
  };
  SupervisorSpec spec{.name = "",
                      .strategy = Strategy::kSimpleOneForOne,
                      .intensity = impl_->options.restart_intensity,
                      .period = impl_->options.restart_period};
  spec.children.push_back(std::move(tmpl));
  return spec;
}

Task<Result<Pid>> Agents::start(Context& ctx, std::string agent, std::string task_id, std::string input) {
  // Not a coroutine: the callee's frame takes the arguments.
  return start(ctx, std::move(agent), std::move(task_id), std::move(input), RunOptions{});
}

Task<Result<Pid>> Agents::start(Context& ctx, std::string agent, std::string task_id, std::string input,
                                RunOptions options) {
  Pid sup;
  {
    std::lock_guard lock(impl_->mu);
    sup = impl_->supervisor;
  }
  if (sup == Pid{}) co_return Error(ErrorKind::kInvalidArgument, "agents: start_supervisor() first");
  if (impl_->draining.load(std::memory_order_acquire)) {
    co_return Error(ErrorKind::kCancelled, "agents: draining, no new task processes");
  }
  if (!impl_->agent(agent)) co_return Error(ErrorKind::kNotFound, "no agent named '" + agent + "'");
  const std::string id = task_id;
  std::any arg = TaskStart{.agent = std::move(agent),
                           .task_id = std::move(task_id),
                           .input = std::move(input),
                           .options = std::move(options),
                           .by_start = true};
  Result<Pid> pid = co_await start_dynamic_child(ctx, sup, std::move(arg));
  if (pid.ok()) {
    // Known as running from now on, before its process has created the workflow: wait() and
    // cancel() find it (the process removes the entry when it ends) -- unless it has ended
    // already, which its process recorded.
    std::lock_guard lock(impl_->mu);
    auto& ended = impl_->ended_before_registered;
    if (auto it = std::find(ended.begin(), ended.end(), *pid); it != ended.end()) {
      ended.erase(it);
    } else {
      impl_->running.try_emplace(id, *pid);
    }
  }
  co_return pid;
}

Task<Result<TaskOutcome>> Agents::wait(Context& ctx, std::string task_id, Duration poll) {
  for (;;) {
    Result<TaskOutcome> o = outcome(task_id);
    bool pending = !o.ok() && o.error().kind() == ErrorKind::kTransient;
    if (!o.ok() && o.error().kind() == ErrorKind::kNotFound) {
      // Started (start()) but its process has not created the workflow yet.
      std::lock_guard lock(impl_->mu);
      pending = impl_->running.contains(task_id);
    }
    if (!pending) co_return o;
    auto slept = co_await ctx.sleep(poll);
    if (!slept.ok()) co_return slept.error();
  }
}

Status Agents::cancel(std::string_view task_id) {
  Store& store = impl_->engine.store();
  Result<WorkflowRecord> w = store.get_workflow(task_id);
  if (!w.ok()) return std::move(w).error();
  if (is_finished(w->status)) return ok_status();
  // The request is durable before the process is stopped: whatever runs the task next sees it.
  if (Status s = impl_->add_signal(task_id, json{{"signal", "cancel"}, {"at_ns", impl_->env.unix_time_ns()}});
      !s.ok()) {
    return s;
  }
  Pid pid;
  Runtime* rt = nullptr;
  {
    std::lock_guard lock(impl_->mu);
    impl_->cancelled.emplace(task_id);
    if (auto it = impl_->running.find(task_id); it != impl_->running.end()) pid = it->second;
    rt = impl_->runtime;
  }
  // Killed, its supervisor restarts it, and the new run ends as cancelled.
  if (pid != Pid{} && rt != nullptr) rt->send_exit(pid, ExitReason::kill());
  impl_->cancel_children(task_id);
  return ok_status();
}

void Agents::Impl::cancel_children(std::string_view task_id, int depth) {
  if (depth > 16) return;  // bounded: delegation trees are shallow
  Result<std::vector<std::string>> kids = children(task_id);
  if (!kids.ok()) return;  // the parent's run cascades when it ends cancelled
  for (const std::string& child : *kids) {
    Result<WorkflowRecord> w = engine.store().get_workflow(child);
    if (w.ok() && is_finished(w->status)) continue;
    Result<bool> already = cancel_requested(child);
    if (!already.ok() || !*already) {
      (void)add_signal(child, json{{"signal", "cancel"}, {"at_ns", env.unix_time_ns()}, {"by", task_id}});
    }
    Pid pid;
    Runtime* rt = nullptr;
    {
      std::lock_guard lock(mu);
      cancelled.emplace(child);
      if (auto it = running.find(child); it != running.end()) pid = it->second;
      rt = runtime;
    }
    if (pid != Pid{} && rt != nullptr) rt->send_exit(pid, ExitReason::kill());
    cancel_children(child, depth + 1);
  }
}

Task<> Agents::Impl::finish_children(Context& ctx, std::string task_id) {
  Result<std::vector<std::string>> kids = children(task_id);
  if (!kids.ok()) co_return;
  for (const std::string& child : *kids) {
    Result<WorkflowRecord> w = engine.store().get_workflow(child);
    if (!w.ok() || is_finished(w->status)) continue;  // not started yet (it never will be), or done
    Result<bool> asked = cancel_requested(child);
    if (asked.ok() && !*asked) {
      (void)add_signal(child, json{{"signal", "cancel"}, {"at_ns", env.unix_time_ns()}, {"by", task_id}});
    }
    // The child's kind is registered on the engine (by its own Agents): its run sees the cancel
    // request first thing, cascades to its own children, and ends cancelled.
    (void)co_await engine.run_outcome(ctx, w->kind, child, w->input);
  }
}

void Agents::drain() { impl_->draining.store(true, std::memory_order_release); }

std::size_t Agents::running_count() const {
  std::lock_guard lock(impl_->mu);
  return impl_->running.size();
}

bool Agents::running_here(std::string_view task_id) const {
  std::lock_guard lock(impl_->mu);
  return impl_->running.find(task_id) != impl_->running.end();
}

Status Agents::submit(std::string_view agent, std::string task_id, std::string input, RunOptions options) {
  if (!impl_->agent(std::string(agent)))
    return Error(ErrorKind::kNotFound, "no agent named '" + std::string(agent) + "'");
  if (task_id.empty()) return Error(ErrorKind::kInvalidArgument, "submit: the task needs an id");
  if (!options.parent_task_id.empty()) {
    return Error(ErrorKind::kInvalidArgument, "submit: a delegated task (parent_task_id) is started with start()");
  }
  Store& store = impl_->engine.store();
  std::lock_guard submitting(impl_->submit_mu);
  if (store.get_workflow(task_id).ok()) {
    return Error(ErrorKind::kAlreadyExists, "submit: a task '" + task_id + "' exists already");
  }
  const TimePoint now = impl_->engine.store_now();
  WriteBatch b;
  b.create_workflow(task_id, std::string(kKindPrefix) + std::string(agent), std::move(input), now);
  // The first step of every run is "start" (seq 1): recorded here, replayed by the run.
  b.put_step(task_id, 1, "start", StepStatus::kOk, encode_start(impl_->env.unix_time_ns(), options.cap), now);
  return store.commit(b);
}

Status Agents::fork(std::string_view from_task_id, std::string new_task_id, const ForkOptions& options) {
  Store& store = impl_->engine.store();
  Result<WorkflowRecord> from = store.get_workflow(from_task_id);
  if (!from.ok()) return std::move(from).error().with_context("fork");
  if (from->kind.rfind(kKindPrefix, 0) != 0) {
    return Error(ErrorKind::kInvalidArgument, "fork: '" + std::string(from_task_id) + "' is not an agent task");
  }
  if (new_task_id.empty()) return Error(ErrorKind::kInvalidArgument, "fork: the new task needs an id");
  if (store.get_workflow(new_task_id).ok()) {
    return Error(ErrorKind::kAlreadyExists, "fork: a task '" + new_task_id + "' exists already");
  }
  if (options.at_turn < 0) return Error(ErrorKind::kInvalidArgument, "fork: at_turn must be >= 0");
  Result<std::vector<StepRecord>> steps = store.load_steps(from_task_id);
  if (!steps.ok()) return std::move(steps).error();
  Result<std::vector<EffectRecord>> effects = store.load_effects(from_task_id);
  if (!effects.ok()) return std::move(effects).error();
  // The fork point: the step of model turn `at_turn` (and the history before its message).
  std::int64_t cut_seq = -1;
  std::int64_t hist_cut = 1;  // the user's message
  const std::string turn_name = "model " + std::to_string(options.at_turn);
  for (const StepRecord& st : *steps) {
    if (st.name == "start" && options.at_turn == 0) cut_seq = st.seq + 1;
    if (st.name == turn_name && options.at_turn > 0) {
      Result<TurnRecord> t = decode_turn(st.result);
      if (!t.ok()) return std::move(t).error().with_context("fork");
      cut_seq = st.seq;
      hist_cut = t->seq;
    }
  }
  if (cut_seq < 0) {
    return Error(ErrorKind::kNotFound, "fork: task '" + std::string(from_task_id) + "' has not recorded turn " +
                                           std::to_string(options.at_turn));
  }
  Result<std::vector<HistoryRecord>> history = store.read_history(from_task_id, 0, static_cast<std::size_t>(hist_cut));
  if (!history.ok()) return std::move(history).error();
  if (options.edit && (options.edit->first < 0 || options.edit->first >= hist_cut)) {
    return Error(ErrorKind::kInvalidArgument, "fork: the edited message " + std::to_string(options.edit->first) +
                                                  " is not in the copied history [0, " + std::to_string(hist_cut) +
                                                  ")");
  }
  const TimePoint now = impl_->engine.store_now();
  WriteBatch b;
  b.create_workflow(new_task_id, from->kind, options.input.value_or(from->input), now);
  for (const StepRecord& st : *steps) {
    if (st.seq >= cut_seq) continue;
    // The new task's wall time starts now; it keeps the old task's cap.
    std::string result = st.result;
    if (st.name == "start") {
      Result<StartRecord> old_start = decode_start(st.result);
      result = encode_start(impl_->env.unix_time_ns(), old_start.ok() ? old_start->cap : std::nullopt);
    }
    b.put_step(new_task_id, st.seq, st.name, st.status, std::move(result), now);
  }
  for (const EffectRecord& e : *effects) {
    const std::int64_t seq = std::strtoll(e.effect_id.c_str(), nullptr, 10);
    if (seq >= cut_seq) continue;
    // Copied with their keys and outcomes: replayed by the new task, never applied again.
    b.put_effect_intent({.workflow_id = new_task_id,
                         .effect_id = e.effect_id,
                         .idempotency_key = e.idempotency_key,
                         .nature = e.nature,
                         .arguments = e.arguments,
                         .recorded_at = e.intent_at});
    if (e.state != EffectState::kIntent) b.put_effect_outcome(new_task_id, e.effect_id, e.state, e.outcome, now);
  }
  for (const HistoryRecord& h : *history) {
    if (h.seq >= hist_cut) continue;
    std::string message = h.message;
    if (h.seq == 0 && options.input) message = llm::encode_message(Message::user(*options.input));
    if (options.edit && options.edit->first == h.seq) message = llm::encode_message(options.edit->second);
    b.append_history(new_task_id, h.seq, std::move(message));
  }
  return store.commit(b);
}

Status Agents::approve(std::string_view task_id, std::string_view call_id) {
  return impl_->decide(task_id, call_id, true, {});
}

Status Agents::deny(std::string_view task_id, std::string_view call_id, std::string_view reason) {
  return impl_->decide(task_id, call_id, false, reason);
}

Result<TaskOutcome> Agents::outcome(std::string_view task_id) const {
  Result<WorkflowRecord> w = impl_->engine.store().get_workflow(task_id);
  if (!w.ok()) return std::move(w).error();
  switch (w->status) {
    case WorkflowStatus::kRunning:
      return Error(ErrorKind::kTransient, "task '" + std::string(task_id) + "' is still running");
    case WorkflowStatus::kCompleted: return decode_outcome(w->result);
    case WorkflowStatus::kNeedsAttention: {
      TaskOutcome o;
      o.status = TaskStatus::kNeedsAttention;
      std::optional<Error> e = decode_error(w->result);
      o.reason = e ? e->message() : w->result;
      count_recorded_turns(impl_->engine.store(), task_id, o);
      return o;
    }
    case WorkflowStatus::kFailed:
    case WorkflowStatus::kCancelled: {
      TaskOutcome o;
      o.status = w->status == WorkflowStatus::kFailed ? TaskStatus::kFailed : TaskStatus::kCancelled;
      // The recorded error (encode_error's form): its message, not the encoding.
      std::optional<Error> e = decode_error(w->result);
      o.reason = e ? e->message() : w->result;
      return o;
    }
  }
  return Error(ErrorKind::kInternal, "unknown workflow status");
}

}  // namespace nines::agent
