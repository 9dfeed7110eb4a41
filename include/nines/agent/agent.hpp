// nines/agent/agent.hpp: durable agent tasks: a model chain, a system prompt, tools and
// guards, run as workflows in supervised processes until a final answer, a failure, or a guard.
//
//   auto tools = agent::ToolRegistry::create(env, {lookup, charge}).value();
//   auto agents = agent::Agents::create(env, *engine, tools).value();
//   agents->add_agent({.name = "support", .router = router, .system_prompt = "You are ...",
//                      .tools = {"lookup", "charge"},
//                      .budget = {.max_steps = 20, .max_cost_usd = 0.50},
//                      .prices = {{"openai/gpt-4o", {.input_per_mtok = 2.5, .output_per_mtok = 10}}}});
//   // in a process:
//   agent::TaskOutcome out = co_await agents->run(ctx, "support", "ticket-42", "Refund order 42");
//   // or supervised, in a process of its own (restarted and resumed after a crash):
//   Pid sup = agents->start_supervisor(ctx).value();
//   co_await agents->start(ctx, "support", "ticket-43", "Where is order 43?");
//   agents->cancel("ticket-43");
//
// A task is one workflow (kind "agent:<name>", id = the task id, input = the user's message)
// on the WorkflowEngine. Its loop, each turn a step:
//   1. guards: cancelled? a budget spent (steps, model calls, tokens, cost, wall time)?
//   2. the prompt: the system prompt, then the conversation through the context manager
//      (fit, shorten tool outputs, summarise into a checkpoint), with the agent's tools;
//   3. step "model <n>": the router's answer (fallbacks, retries and overflow handling as
//      llm/router.hpp says). Its record holds the usage, cost, the route that served and where
//      the message is in the history; the message itself is appended to the history in the
//      same commit (stored once). A restart never calls the model again for a recorded turn;
//   4. a final answer (no tool calls) ends the task as succeeded;
//   5. every tool call is checked (agent/validation.hpp). A call that fails (unknown tool,
//      arguments not JSON, schema violation) is not executed: the model gets a tool result
//      with is_error and a JSON object naming the problem ({"error":{"kind":"schema_violation",
//      "tool":...,"path":"/qty","rule":"type","message":...}}); after max_invalid_tool_calls
//      such calls the task fails;
//   6. loop guards (LoopOptions) may stop the task here as loop_detected;
//   7. the valid calls run at once (WorkflowContext::effects), at most max_parallel_tools at a
//      time, each in its own process, each an effect in the journal with the tool's nature
//      and the journal's idempotency key. A tool's error is a tool result for the model
//      (is_error, the kind and message), except when the outcome is unknown for a tool that
//      is not safe to repeat (kUnsafe, kCheckable: a timeout or a transient failure after the
//      call may have been applied): then the run stops, and the next run resolves it by the
//      nature (check, or needs_attention: never silently run twice);
//   8. the results are appended to the history (with the next record), and the loop goes on.
//
// Budgets are checked before each model call with an estimate (the prompt's tokens plus
// max_output_tokens, priced at the most expensive route of the chain) and settled with the
// usage the model reported, so a budget is overrun by at most the one call in flight.
// RunOptions::cap caps one task's budget (the min of the two), recorded durably in its first
// record (a resumed task keeps the recorded cap); the delegate tool caps a child with what is
// left of its parent's budget.
//
// Outcomes (TaskOutcome::status): succeeded (a final answer), failed (a permanent error, the
// model kept calling tools badly, or a tool refused for good with nothing else to do),
// budget_exceeded, loop_detected (with the model's best final answer when
// LoopOptions::final_answer), needs_attention (an unsafe tool call of unknown outcome waits
// for an operator: WorkflowEngine::resolve_effect, then run the task again), cancelled.
// The outcome is the workflow's result (JSON), so a finished task returns it again.
//
// Restarts: a task whose run is interrupted (a model outage past the router's fallbacks, a
// store error, a killed process, kill -9 of the program) resumes at its last recorded step
// when run again: start() runs tasks under a simple_one_for_one supervisor that restarts a
// crashed task process with backoff, and WorkflowEngine::resume_all resumes every task left
// running after a restart of the program.
//
// Cancellation: cancel(task_id) records the request durably and kills the task's process
// (with it, its tool processes: a model call or tool call in flight is abandoned); the task is
// run again, sees the request and ends as cancelled. It cascades to the tasks it delegated
// (RunOptions::parent_task_id): they get durable cancel requests and end as cancelled too. An effect interrupted by it
// stays in the journal as an intent without an outcome (the evidence of what may have been applied).
//
// Observers get AgentEvents as they happen (from the task's process: keep them short).
//
// Durable waits: a call of a tool with ToolSpec::requires_approval waits (a step that is
// recorded only when decided) until approve() or deny() is called, across restarts; a denied
// call is not run and the model is told why. With AgentOptions::sleep_tool the model may make
// the task sleep durably.
//
// Fork: fork() copies an old task's records up to a model turn into a new task, optionally
// with another input or an edited message, and the new task runs from there.
//
// Multi-agent delegation (a sub-agent as a tool) is agent/delegate.hpp; always-on agents with
// recycling are agent/always_on.hpp.
//
// Ownership: Agents borrows the Environment and the WorkflowEngine (they must outlive it and
// every task process it started) and shares the registry and each agent's router.
// Thread-safety: every member may be called from any process or thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nines/agent/registry.hpp"
#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/llm/context.hpp"
#include "nines/llm/router.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/supervisor.hpp"
#include "nines/runtime/task.hpp"
#include "nines/workflow/workflow.hpp"

namespace nines::agent {

// Dollars per million tokens.
struct Price {
  double input_per_mtok = 0;
  double output_per_mtok = 0;
  double cached_input_per_mtok = 0;  // not reported by the llm layer yet: input is priced as uncached
};

// 0 (or kInfinite) = no limit.
struct Budget {
  std::int64_t max_steps = 50;         // model turns
  std::int64_t max_model_calls = 0;    // requests sent to models (retries and fallbacks count)
  std::int64_t max_tokens = 0;         // input + output, as reported
  double max_cost_usd = 0;             // by the agent's price table
  Duration max_wall_time = kInfinite;  // from the task's first start, across restarts
};

// Options of one task (Agents::run, Agents::start).
struct RunOptions {
  // A per-task cap on top of the agent's Budget: the task's effective budget is the
  // element-wise min of the two (a 0 / kInfinite field of either is no limit there; note that a
  // default Budget caps max_steps at 50: set it to 0 for no cap on steps). Durable: recorded in
  // the task's first record ("start"), so a resumed run (after a crash, a kill -9, by the
  // supervisor, resume_on_start or resume_all) keeps the recorded cap; a cap passed to a later
  // run of a task already started is ignored (the recorded one wins, none recorded: none).
  // Checked as the agent's budget is (before each model call with the estimate, settled
  // after); a task stopped by it ends budget_exceeded with a reason naming "the task's cap".
  std::optional<Budget> cap;
  // The task that delegated this one (agent/delegate.hpp), or empty. Recorded durably in the
  // parent's signal log before the task starts, so that cancelling the parent cancels it too.
  std::string parent_task_id;
};

struct LoopOptions {
  // The same tool with the same arguments (byte for byte, after JSON normalisation) this many
  // times in one task. 0: off.
  int max_identical_calls = 3;
  // The same call failing with the same error twice in a row.
  bool stop_on_repeated_error = true;
  // This many model turns in a row without a tool result not seen before in the task. 0: off.
  int max_turns_without_progress = 6;
  // After a loop is detected, one last model request without tools for its best final answer
  // (its text is the outcome's answer).
  bool final_answer = true;
};

struct AgentOptions {
  std::string name;                     // [a-zA-Z0-9_-]{1,64}; the workflow kind is "agent:<name>"
  std::shared_ptr<llm::Router> router;  // the model chain; required
  std::string system_prompt;
  std::vector<std::string> tools;  // names in the registry; empty: no tools
  Budget budget;
  LoopOptions loop;
  int max_invalid_tool_calls = 5;          // per task, before it fails
  std::size_t max_parallel_tools = 4;      // tool calls of one turn at once, >= 1
  std::map<std::string, Price> prices;     // by route name (Router::route_name); absent: free
  std::int64_t max_output_tokens = 4096;   // per model call, > 0
  std::int64_t context_window_tokens = 0;  // the prompt plus output the context manager fits into; 0: 128,000
  // Summarizes and fits the history before each call. Null: a default ContextManager without
  // a summarizer (fit only: shorten tool outputs, drop the oldest turns).
  std::shared_ptr<const llm::ContextManager> context;
  std::string model;  // ChatRequest::model (routes usually set their own); also picks the tokenizer
  // Gives the model a built-in `sleep` tool ({"seconds": N}, 0 < N <= max_sleep): the task
  // sleeps durably (the wake-up time is recorded first; a restart sleeps only what is left).
  bool sleep_tool = false;
  Duration max_sleep = std::chrono::hours(24);
  // How often a task waiting for an approval looks at the store for a decision made elsewhere
  // (approve() on this Agents also wakes it at once).
  Duration approval_poll = std::chrono::seconds(1);
};

// A new task from a recorded point of an old one (Agents::fork).
struct ForkOptions {
  // The new task copies the old one's turns before this model turn (their model answers and
  // tool results, replayed, never run again) and runs from it: 0 runs every turn anew.
  std::int64_t at_turn = 0;
  // A new user message (the task's input) in place of the old one.
  std::optional<std::string> input;
  // Another copied history message in place of the old one: its history position and the
  // new message (e.g. a tool result edited for a what-if). Must be before the fork point.
  std::optional<std::pair<std::int64_t, llm::Message>> edit;
};

enum class TaskStatus : std::uint8_t {
  kSucceeded,
  kFailed,
  kBudgetExceeded,
  kLoopDetected,
  kNeedsAttention,
  kCancelled,
  kInterrupted,  // the run stopped before an end and the task is left to resume (run() only)
};
std::string_view to_string(TaskStatus status);
inline void PrintTo(TaskStatus status, std::ostream* os) { *os << to_string(status); }  // gtest

struct TaskOutcome {
  TaskStatus status = TaskStatus::kInterrupted;
  std::string answer;            // the final answer (succeeded; loop_detected with final_answer)
  std::string reason;            // why it ended when not succeeded: the guard, the error
  std::int64_t steps = 0;        // model turns
  std::int64_t model_calls = 0;  // requests sent to models
  std::int64_t tool_calls = 0;   // tool calls that ran (or were replayed)
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  double cost_usd = 0;
  std::vector<std::string> models;                  // routes that served, in first-use order
  bool degraded = false;                            // a fallback model or a fallback tool served
  std::int64_t retries = 0;                         // model calls beyond one per turn (retries and fallbacks)
  std::int64_t fallbacks = 0;                       // model routes left for the next one
  std::int64_t restarts = 0;                        // runs after the first (resumes)
  std::map<std::string, std::int64_t> tool_errors;  // by kind: unknown_tool, invalid_json,
                                                    // schema_violation, transient, timeout, ...
  Duration wall_time{0};                            // from the first start to the end
};

// JSON text of an outcome (the workflow's result), and back. kInvalidArgument if malformed.
std::string encode_outcome(const TaskOutcome& outcome);
// The outcome as the service's API shows it (docs/api.md "The task object"): the same fields,
// wall time as `wall_time_s` (seconds), no format version. JSON text.
std::string outcome_api_json(const TaskOutcome& outcome);
Result<TaskOutcome> decode_outcome(std::string_view json);

struct AgentEvent {
  enum class Type : std::uint8_t {
    kTaskStarted,      // a run of the task began (detail: "attempt N")
    kStepStarted,      // a model turn begins
    kStepFinished,     // the model answered (detail: the route, tokens)
    kToolCall,         // a tool call starts (tool, detail: call id)
    kToolResult,       // it ended (tool, detail: "ok" or the error kind)
    kInvalidCall,      // a tool call was refused before running (detail: the problem kind)
    kRetry,            // the model answer took more than one call (detail: how many)
    kFallback,         // a model route was left (detail: route and reason)
    kGuard,            // a guard stopped the task (detail: which)
    kApprovalWait,     // a call waits for approve() or deny() (tool, detail: the call id)
    kApprovalDecided,  // ... and got its decision (tool, detail: "approved" or "denied: why")
    kSleep,            // the task sleeps (detail: until when, unix ns)
    kTaskFinished,     // the task ended, its outcome committed (detail: the status; needs_attention too)
  };
  Type type = Type::kTaskStarted;
  std::string task_id;
  std::string agent;
  std::int64_t step = 0;
  std::string tool;
  std::string detail;
  // kStepFinished of a turn answered live by one model call (no retry, no fallback; not a
  // replay): the turn's time from kStepStarted to its record committed, and the part of it
  // spent inside the model client. The difference is what nines adds to the call (prompt
  // building, context fitting, routing, the record's commit). Zero otherwise.
  Duration duration{0};
  Duration upstream{0};
};
std::string_view to_string(AgentEvent::Type type);
using AgentObserver = std::function<void(const AgentEvent&)>;

struct AgentsOptions {
  // The supervisor of task processes (start_supervisor): restart intensity and backoff.
  int restart_intensity = 100;
  Duration restart_period = std::chrono::seconds(10);
  Duration restart_min_delay = std::chrono::milliseconds(200);
  Duration restart_max_delay = std::chrono::seconds(30);
  // Every time a task supervisor starts (start_supervisor, supervisor_child and each restart of
  // it by its parent), a resumer process starts, under it, every task of this Agents' agents
  // that the store has as running and that no process here runs (the tasks that died with the
  // previous supervisor, or with the program), then exits. Off by default: with it, do not also
  // resume these tasks with WorkflowEngine::resume_all.
  bool resume_on_start = false;
  // Testing only: tool calls run without the effect journal (no intent, no outcome recorded,
  // run again on every resume). The whole-system simulation sets it to prove that it catches
  // effects applied twice. Never set it otherwise.
  bool unjournaled_tools_for_testing = false;
};

class Agents {
 public:
  static Result<std::unique_ptr<Agents>> create(Environment& env, WorkflowEngine& engine,
                                                std::shared_ptr<ToolRegistry> tools, AgentsOptions options = {});
  ~Agents();
  Agents(const Agents&) = delete;
  Agents& operator=(const Agents&) = delete;

  // Registers the agent (and its workflow kind). kInvalidArgument naming the field: a bad
  // name, no router, a tool not in the registry, a tool that requires approval (not yet
  // supported), bad numbers; kAlreadyExists for a name taken. Before running tasks.
  Status add_agent(AgentOptions options);
  // Hot reload: the registry (null: keep the current one) and the complete new set of agents, all
  // at once; each is checked as add_agent checks it against the new registry, and on any error
  // nothing changes. Agents not in the set are removed (new run()/start()/submit() of them are
  // refused; a task of theirs running now finishes its run on its old options, and one left in
  // the store resumes only once the agent is added again); new ones are added. A running task
  // switches at its next model turn: the new prompt, model chain (router), tools, budget (with
  // its cap on top), guards and prices apply from that turn on; a model or tool call in flight
  // finishes on the old ones. Tool calls made from then on go through the new registry (its
  // bulkheads and breakers start fresh).
  Status reconfigure(std::shared_ptr<ToolRegistry> tools, std::vector<AgentOptions> agents);

  // Called for every event of every task, in the task's process.
  void add_observer(AgentObserver observer);

  // Runs (or resumes) the task in the calling process until it ends or its run is interrupted
  // (status kInterrupted, reason: why; run it again to resume). A finished task returns its
  // recorded outcome. kNotFound-like refusals (unknown agent, a task id of another agent, a
  // task already running here) come back as kFailed with the reason, and change nothing.
  Task<TaskOutcome> run(Context& ctx, std::string agent, std::string task_id, std::string input);
  // The same with RunOptions (a per-task budget cap, the delegating parent).
  Task<TaskOutcome> run(Context& ctx, std::string agent, std::string task_id, std::string input, RunOptions options);

  // Records a new task durably without running it: its workflow (kind "agent:<agent>", the
  // input) and its first record (the start time, from which wall time counts, and
  // options.cap), in one commit. Then run it with start() or run(), or let a resumer
  // (AgentsOptions::resume_on_start, WorkflowEngine::resume_all) pick it up: a service answers
  // a submission once it is recorded this way, so a crash right after loses nothing.
  // kNotFound: no such agent; kInvalidArgument: an empty task id, or options.parent_task_id
  // set (delegation goes through start()/run()); kAlreadyExists: a task (of any agent) has
  // the id. Not inside a process (a blocking store commit).
  Status submit(std::string_view agent, std::string task_id, std::string input, RunOptions options = {});

  // Graceful stop: from now on every task of this Agents stops at its next checkpoint (before
  // its next model turn: every model turn and journaled tool call before is recorded; a
  // read-only tool call of the last turn, whose result is recorded with the next turn's
  // record, runs again on resume, as after a crash), its process exits normally (it is
  // not restarted; the task stays running in the store and resumes at the next start of the
  // program), and start() refuses new tasks. A task waiting (approval, sleep) or in a model or
  // tool call stops when that ends; kill what is left after a grace period (its committed
  // records are safe in any case). Irreversible.
  void drain();
  // Tasks run by a process of this Agents now (started with start(), or run() in progress).
  std::size_t running_count() const;
  bool running_here(std::string_view task_id) const;

  // Starts the supervisor of task processes, linked to the caller. kAlreadyExists while one
  // (started here or by supervisor_child) is alive; once it is gone, a new one may be started.
  Result<Pid> start_supervisor(Context& ctx);
  // The same supervisor as a child of a supervision tree of your own: a kSupervisor ChildSpec
  // (restart permanent) whose every start, the parent's restarts included, starts a new task
  // supervisor and makes it the one start() uses. Groups of agents, each its own Agents, go
  // under one root this way (a crash storm in one group escalates to the root only past the
  // group's intensity):
  //   SupervisorSpec root{.name = "agents", .strategy = Strategy::kOneForOne};
  //   root.children = {workers->supervisor_child("workers"), coordinators->supervisor_child("coordinators")};
  //   start_supervisor(rt, root);
  // Tasks running under a supervisor that died were killed with it: they resume when started
  // again (start(), or WorkflowEngine::resume_all after a restart of the program).
  ChildSpec supervisor_child(std::string id);
  // Starts the task in a process of its own under that supervisor: a crash (an interrupted
  // run, a killed process) restarts it with backoff and resumes it. Returns its pid.
  Task<Result<Pid>> start(Context& ctx, std::string agent, std::string task_id, std::string input);
  // The same with RunOptions; every restart of the process runs the task with them (the cap
  // recorded at the first start wins in any case).
  Task<Result<Pid>> start(Context& ctx, std::string agent, std::string task_id, std::string input, RunOptions options);
  // Waits until the task has an outcome (polling the store every `poll`), or the deadline. A
  // task start()ed here is waited for even before its process has created its workflow;
  // otherwise an unknown task is kNotFound at once.
  Task<Result<TaskOutcome>> wait(Context& ctx, std::string task_id, Duration poll = std::chrono::milliseconds(100));

  // Records a cancel request durably and kills the task's process if it runs here; the task
  // then ends as cancelled (at once when it is run or resumed). kNotFound for an unknown task;
  // ok (nothing changes) for a task already finished. Cascades: every unfinished task it
  // delegated (RunOptions::parent_task_id, recursively) gets a durable cancel request too and is
  // killed if it runs here; when the parent's run ends as cancelled it runs each such child to
  // its cancelled end, so no child is left running in the store.
  Status cancel(std::string_view task_id);

  // The recorded outcome of a finished task; kNotFound if unknown, kTransient "still running"
  // otherwise.
  Result<TaskOutcome> outcome(std::string_view task_id) const;

  // An operator's decision on a tool call that requires approval (the call id is the model's,
  // in the kApprovalWait event). Recorded durably first, so a task waiting now, later, or
  // after a restart gets it. kNotFound for an unknown task; kAlreadyExists if that call was
  // decided already; kInvalidArgument for an empty call id.
  Status approve(std::string_view task_id, std::string_view call_id);
  Status deny(std::string_view task_id, std::string_view call_id, std::string_view reason);

  // A new task `new_task_id` (of the same agent) from a recorded point of `from_task_id`
  // (ForkOptions); the old task is untouched. Run it as any task (run(), start()).
  // kNotFound for an unknown task or a turn it has not recorded; kAlreadyExists for a taken
  // id; kInvalidArgument for an edit outside the copied history. Not inside a process.
  Status fork(std::string_view from_task_id, std::string new_task_id, const ForkOptions& options);

  struct Impl;  // internal (src/agent/agent.cpp)

 private:
  explicit Agents(std::shared_ptr<Impl> impl);
  // The simple_one_for_one supervisor of the task processes.
  SupervisorSpec task_supervisor_spec() const;
  std::shared_ptr<Impl> impl_;
};

}  // namespace nines::agent
