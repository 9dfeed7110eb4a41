// The hooks a service needs from Agents: submit() (a task recorded before anything runs it),
// drain() (every task stops at its next checkpoint, its process exits normally, start() refuses
// new tasks), running_count() and running_here(). On the deterministic runtime with a scripted
// model (each turn takes a given virtual time) and the memory store.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/agent/registry.hpp"
#include "nines/llm/model.hpp"
#include "nines/llm/router.hpp"
#include "nines/runtime/events.hpp"
#include "nines/runtime/supervisor.hpp"
#include "nines/store/memory_store.hpp"
#include "nines/workflow/workflow.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines::agent {
namespace {

using test::IsOk;
using test::SimRuntime;
using test::StatusIs;
using ::testing::HasSubstr;

using namespace std::chrono_literals;

// One turn of the scripted model: it takes `takes` of virtual time, then asks for `calls` (or,
// without calls, answers `answer`).
struct Turn {
  Duration takes = 1s;
  std::vector<llm::ToolCall> calls;
  std::string answer = "done";
};

Turn tool_turn(const std::string& tool, const std::string& id, Duration takes) {
  return Turn{
      .takes = takes,
      .calls = {llm::ToolCall{.id = "call-" + id, .name = tool, .arguments_json = R"({"id":")" + id + R"("})"}}};
}
Turn lookup_turn(const std::string& id, Duration takes = 1s) { return tool_turn("lookup", id, takes); }
Turn charge_turn(const std::string& id, Duration takes = 1s) { return tool_turn("charge", id, takes); }

// Plays its script by call number (across tasks and restarts: it models the provider), then
// answers "done" forever. Counts its calls.
class ScriptedModel final : public llm::ChatModel {
 public:
  explicit ScriptedModel(std::vector<Turn> script) : script_(std::move(script)) {}

  Task<llm::ChatOutcome> complete(Context& ctx, const llm::ChatRequest& req, llm::TextSink) override {
    const std::size_t n = calls_.fetch_add(1);
    const Turn turn = n < script_.size() ? script_[n] : Turn{};
    auto slept = co_await ctx.sleep(turn.takes);
    if (!slept.ok()) co_return llm::ChatOutcome{slept.error(), std::nullopt};
    llm::ChatResponse r;
    r.model = req.model;
    r.message = llm::Message::assistant(turn.calls.empty() ? turn.answer : std::string(), turn.calls);
    r.finish_reason = turn.calls.empty() ? llm::FinishReason::kStop : llm::FinishReason::kToolCalls;
    r.usage = {.input_tokens = 50, .output_tokens = 5};
    co_return llm::ChatOutcome{std::move(r), std::nullopt};
  }

  std::size_t calls() const { return calls_.load(); }

 private:
  std::vector<Turn> script_;
  std::atomic<std::size_t> calls_{0};
};

// A program: runtime, engine, Agents with agents "helper" and "other" (both on the scripted
// model, tools "lookup" (read-only) and "charge" (idempotent: journaled before it runs)), on a store that outlives
// restart() (kill -9 of the program).
struct World {
  explicit World(std::vector<Turn> script, AgentsOptions options = {}, std::uint64_t first_seed = 11)
      : seed(first_seed), model(std::make_shared<ScriptedModel>(std::move(script))) {
    store = make_memory_store().value();
    boot(options);
  }

  void boot(AgentsOptions options) {
    sim = std::make_unique<SimRuntime>(seed++);
    engine = WorkflowEngine::create(sim->env, *store).value();
    auto calls = lookups;
    auto lookup = make_native_tool({.name = "lookup",
                                    .description = "Looks up a record by id",
                                    .parameters_schema_json = R"({"type":"object"})",
                                    .nature = EffectNature::kReadOnly},
                                   [calls](Context&, const ToolInvocation& inv) -> Task<Result<std::string>> {
                                     ++*calls;
                                     co_return "record for " + inv.arguments_json;
                                   })
                      .value();
    auto charged = charges;
    auto charge = make_native_tool({.name = "charge",
                                    .description = "Charges once per id",
                                    .parameters_schema_json = R"({"type":"object"})",
                                    .nature = EffectNature::kIdempotent},
                                   [charged](Context&, const ToolInvocation& inv) -> Task<Result<std::string>> {
                                     ++*charged;
                                     co_return "charged " + inv.arguments_json;
                                   })
                      .value();
    llm::RouterOptions ro{.name = "chain"};
    ro.chain.push_back(llm::ModelRouteOptions{.name = "scripted", .model = "scripted", .client = model});
    router = std::shared_ptr<llm::Router>(llm::Router::create(sim->env, ro).value());
    agents =
        Agents::create(sim->env, *engine, ToolRegistry::create(sim->env, {lookup, charge}).value(), options).value();
    for (const char* name : {"helper", "other"}) {
      Status s = agents->add_agent(
          {.name = name, .router = router, .tools = {"lookup", "charge"}, .budget = {.max_steps = 20}});
      ASSERT_TRUE(s.ok()) << s.error().to_string();
    }
  }

  // kill -9 of the program, then a new one (not draining) on the same store.
  void restart(AgentsOptions options = {}) {
    sim.reset();
    agents.reset();
    router.reset();
    engine.reset();
    store->crash();
    boot(options);
  }

  // Starts the task supervisor, linked to a process that lives until the runtime goes.
  Pid start_supervisor() {
    auto sup = std::make_shared<std::optional<Result<Pid>>>();
    Agents* a = agents.get();
    sim->spawn([a, sup](Context& ctx) -> Task<> {
      sup->emplace(a->start_supervisor(ctx));
      (void)co_await ctx.receive();  // holds the link
    });
    sim->rt->run_until_idle();
    EXPECT_TRUE(sup->has_value() && sup->value().ok());
    return sup->has_value() && sup->value().ok() ? ***sup : Pid{};
  }

  // Agents::start in a process of the test's.
  Result<Pid> start(const std::string& id, const std::string& input = "help", RunOptions options = {}) {
    auto out = std::make_shared<std::optional<Result<Pid>>>();
    Agents* a = agents.get();
    sim->spawn([a, id, input, options, out](Context& ctx) -> Task<> {
      out->emplace(co_await a->start(ctx, "helper", id, input, options));
    });
    sim->rt->run_until_idle();
    if (!out->has_value()) return Error(ErrorKind::kInternal, "start did not return");
    return **out;
  }

  // Agents::run in a process of the test's; the outcome is there once it returns.
  std::shared_ptr<std::optional<TaskOutcome>> run_async(const std::string& id, const std::string& input = "help") {
    auto out = std::make_shared<std::optional<TaskOutcome>>();
    Agents* a = agents.get();
    sim->spawn(
        [a, id, input, out](Context& ctx) -> Task<> { out->emplace(co_await a->run(ctx, "helper", id, input)); });
    sim->rt->run_until_idle();
    return out;
  }

  std::vector<std::string> step_names(const std::string& id) {
    std::vector<std::string> out;
    const std::vector<StepRecord> steps = store->load_steps(id).value();
    for (const StepRecord& s : steps) out.push_back(s.name);
    return out;
  }

  std::uint64_t seed = 11;
  std::shared_ptr<ScriptedModel> model;
  std::shared_ptr<int> lookups = std::make_shared<int>(0);  // calls of each tool (the outside world's)
  std::shared_ptr<int> charges = std::make_shared<int>(0);
  // Destroyed bottom-up: the processes (sim) first, the store last.
  std::unique_ptr<MemoryStore> store;
  std::unique_ptr<WorkflowEngine> engine;
  std::shared_ptr<llm::Router> router;
  std::unique_ptr<Agents> agents;
  std::unique_ptr<SimRuntime> sim;
};

TEST(AgentServiceHooks, SubmitRecordsTheTaskAndRunsNothingUntilStarted) {
  World w({lookup_turn("a"), Turn{.answer = "found a"}});
  ASSERT_THAT(w.agents->submit("helper", "s1", "Find record a"), IsOk());

  Result<WorkflowRecord> rec = w.store->get_workflow("s1");
  ASSERT_THAT(rec, IsOk());
  EXPECT_EQ(rec->status, WorkflowStatus::kRunning);
  EXPECT_EQ(rec->kind, "agent:helper");
  EXPECT_EQ(rec->input, "Find record a");
  std::vector<StepRecord> steps = w.store->load_steps("s1").value();
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(steps[0].name, "start");
  EXPECT_EQ(steps[0].seq, 1);
  EXPECT_THAT(w.agents->outcome("s1"), StatusIs(ErrorKind::kTransient));

  // Nothing runs it: no model call however long we wait.
  w.sim->rt->advance(30s);
  EXPECT_EQ(w.model->calls(), 0u);
  EXPECT_EQ(w.agents->running_count(), 0u);
  EXPECT_FALSE(w.agents->running_here("s1"));

  w.start_supervisor();
  ASSERT_THAT(w.start("s1", "Find record a"), IsOk());
  w.sim->rt->advance(1min);
  Result<TaskOutcome> out = w.agents->outcome("s1");
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_EQ(out->answer, "found a");
  EXPECT_EQ(out->steps, 2);
  EXPECT_EQ(out->restarts, 0) << "the first run of a submitted task is not a resume";
  EXPECT_EQ(w.model->calls(), 2u);
  EXPECT_EQ(*w.lookups, 1);
  // Wall time counts from the submission (30 s before the start), not from the first run.
  EXPECT_GE(out->wall_time, 30s);
  EXPECT_LT(out->wall_time, 40s);
  // The submitted input is the conversation's first message.
  auto history = w.store->read_history("s1", 0, 100).value();
  ASSERT_FALSE(history.empty());
  EXPECT_THAT(history[0].message, HasSubstr("Find record a"));
}

TEST(AgentServiceHooks, SubmittedCapHoldsForARunWithoutOne) {
  World w({lookup_turn("a"), lookup_turn("b"), lookup_turn("c"), lookup_turn("d"), Turn{.answer = "all found"}});
  ASSERT_THAT(w.agents->submit("helper", "capped", "Find them all", RunOptions{.cap = Budget{.max_steps = 2}}), IsOk());
  w.start_supervisor();
  ASSERT_THAT(w.start("capped", "Find them all"), IsOk());  // no cap given here
  w.sim->rt->advance(1min);
  Result<TaskOutcome> out = w.agents->outcome("capped");
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ(out->status, TaskStatus::kBudgetExceeded) << out->reason;
  EXPECT_THAT(out->reason, HasSubstr("the task's cap"));
  EXPECT_EQ(out->steps, 2);
  EXPECT_EQ(w.model->calls(), 2u);
}

TEST(AgentServiceHooks, SubmitRefusesATakenIdAnUnknownAgentAndBadOptions) {
  World w({});
  ASSERT_THAT(w.agents->submit("helper", "t1", "first"), IsOk());
  const std::string first_start = w.store->load_steps("t1").value().at(0).result;
  w.sim->rt->advance(5s);

  EXPECT_THAT(w.agents->submit("helper", "t1", "second", RunOptions{.cap = Budget{.max_steps = 1}}),
              StatusIs(ErrorKind::kAlreadyExists, "t1"));
  EXPECT_THAT(w.agents->submit("other", "t1", "third"), StatusIs(ErrorKind::kAlreadyExists));  // of any agent
  Result<WorkflowRecord> rec = w.store->get_workflow("t1");
  ASSERT_THAT(rec, IsOk());
  EXPECT_EQ(rec->kind, "agent:helper");
  EXPECT_EQ(rec->input, "first");
  std::vector<StepRecord> steps = w.store->load_steps("t1").value();
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(steps[0].result, first_start) << "the first record (start time, no cap) is unchanged";

  EXPECT_THAT(w.agents->submit("nobody", "t2", "x"), StatusIs(ErrorKind::kNotFound, "nobody"));
  EXPECT_THAT(w.agents->submit("helper", "", "x"), StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_THAT(w.agents->submit("helper", "t3", "x", RunOptions{.parent_task_id = "t1"}),
              StatusIs(ErrorKind::kInvalidArgument, "parent_task_id"));
  EXPECT_THAT(w.store->get_workflow("t2"), StatusIs(ErrorKind::kNotFound));
  EXPECT_THAT(w.store->get_workflow("t3"), StatusIs(ErrorKind::kNotFound));
  EXPECT_EQ(w.model->calls(), 0u);
}

TEST(AgentServiceHooks, SubmittedTasksArePickedUpByResumeOnStart) {
  World w({}, AgentsOptions{.resume_on_start = true});
  ASSERT_THAT(w.agents->submit("helper", "r1", "one"), IsOk());
  ASSERT_THAT(w.agents->submit("helper", "r2", "two"), IsOk());
  w.sim->rt->advance(5s);
  EXPECT_EQ(w.model->calls(), 0u);
  w.start_supervisor();  // its resumer starts them; nobody calls start()
  w.sim->rt->advance(1min);
  for (const char* id : {"r1", "r2"}) {
    Result<TaskOutcome> out = w.agents->outcome(id);
    ASSERT_THAT(out, IsOk()) << id;
    EXPECT_EQ(out->status, TaskStatus::kSucceeded) << id << ": " << out->reason;
    EXPECT_EQ(out->answer, "done") << id;
  }
  EXPECT_EQ(w.model->calls(), 2u);
}

TEST(AgentServiceHooks, SubmittedTasksArePickedUpByResumeAll) {
  // Without its cap the task would make three turns and succeed.
  World w({lookup_turn("a"), lookup_turn("b"), Turn{.answer = "found"}});
  ASSERT_THAT(w.agents->submit("helper", "ra", "find a and b", RunOptions{.cap = Budget{.max_steps = 1}}), IsOk());
  WorkflowEngine* engine = w.engine.get();
  auto resumed = std::make_shared<std::optional<Result<std::size_t>>>();
  w.sim->spawn(
      [engine, resumed](Context& ctx) -> Task<> { resumed->emplace(co_await engine->resume_all_and_wait(ctx)); });
  w.sim->rt->advance(1min);
  ASSERT_TRUE(resumed->has_value());
  EXPECT_THAT(**resumed, test::IsOkAndHolds(1u));
  Result<TaskOutcome> out = w.agents->outcome("ra");
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ(out->status, TaskStatus::kBudgetExceeded) << out->reason;
  EXPECT_THAT(out->reason, HasSubstr("the task's cap")) << "the recorded cap holds for the resumer's run";
  EXPECT_EQ(out->steps, 1);
  EXPECT_EQ(out->restarts, 0);
  EXPECT_EQ(w.model->calls(), 1u);
}

// A scripted model whose second turn takes 10 s: drain() while it is in flight.
TEST(AgentServiceHooks, DrainStopsATaskAtItsNextCheckpointAndANewProgramResumesIt) {
  World w({lookup_turn("a"), charge_turn("b", 10s), Turn{.answer = "found a, charged b"}});
  const Pid sup = w.start_supervisor();
  std::vector<SupervisionEvent> events;
  w.sim->rt->events().subscribe([&events](const SupervisionEvent& e) { events.push_back(e); });
  Result<Pid> pid = w.start("d", "Find a and b");
  ASSERT_THAT(pid, IsOk());
  w.sim->rt->advance(5s);  // turn 1 (1 s) and its lookup done; turn 2 in flight until ~11 s
  ASSERT_EQ(w.model->calls(), 2u);
  EXPECT_EQ(w.agents->running_count(), 1u);
  EXPECT_TRUE(w.agents->running_here("d"));
  const std::size_t processes = w.sim->rt->process_count();

  w.agents->drain();
  w.sim->rt->advance(10min);

  EXPECT_EQ(w.model->calls(), 2u) << "turn 3 never started";
  EXPECT_EQ(*w.lookups, 1);
  EXPECT_EQ(*w.charges, 1) << "turn 2 was finished: its tool call ran";
  EXPECT_FALSE(w.sim->rt->alive(*pid));
  EXPECT_TRUE(w.sim->rt->alive(sup));
  EXPECT_EQ(w.sim->rt->process_count(), processes - 1) << "the task process is gone and nothing replaced it";
  int exits = 0;
  for (const SupervisionEvent& e : events) {
    EXPECT_NE(e.type, SupervisionEventType::kChildRestarted);
    EXPECT_NE(e.type, SupervisionEventType::kRestartDelayed);
    if (e.type == SupervisionEventType::kChildExited && e.child == *pid) {
      ++exits;
      EXPECT_TRUE(e.reason.is_normal()) << to_string(e.reason.kind) << " " << e.reason.detail;
    }
  }
  EXPECT_EQ(exits, 1);
  EXPECT_EQ(w.agents->running_count(), 0u);
  EXPECT_FALSE(w.agents->running_here("d"));

  Result<WorkflowRecord> rec = w.store->get_workflow("d");
  ASSERT_THAT(rec, IsOk());
  EXPECT_EQ(rec->status, WorkflowStatus::kRunning);
  EXPECT_EQ(w.step_names("d"), (std::vector<std::string>{"start", "model 0", "model 1"}))
      << "turns 1-2 recorded, and nothing after";
  EXPECT_THAT(w.agents->outcome("d"), StatusIs(ErrorKind::kTransient));

  // No new tasks while draining.
  EXPECT_THAT(w.start("late"), StatusIs(ErrorKind::kCancelled, "draining"));
  EXPECT_THAT(w.store->get_workflow("late"), StatusIs(ErrorKind::kNotFound));

  // The next program (not draining) resumes it: only turn 3 calls the model.
  w.restart();
  auto out = w.run_async("d", "Find a and b");
  w.sim->rt->advance(1min);
  ASSERT_TRUE(out->has_value());
  EXPECT_EQ((*out)->status, TaskStatus::kSucceeded) << (*out)->reason;
  EXPECT_EQ((*out)->answer, "found a, charged b");
  EXPECT_EQ((*out)->steps, 3);
  EXPECT_EQ((*out)->tool_calls, 2);
  EXPECT_EQ((*out)->restarts, 1);
  EXPECT_EQ(w.model->calls(), 3u);
  // Turn 1's lookup was recorded with turn 2's record; turn 2's charge is in the journal. (A
  // read-only call of the last turn before the checkpoint would run again: its record is
  // committed with the next one, which a drained run never makes.)
  EXPECT_EQ(*w.lookups, 1) << "recorded tool results are replayed";
  EXPECT_EQ(*w.charges, 1) << "the journaled charge is not run again";
}

// The same for a task run() in a process of the caller's: the run returns interrupted.
TEST(AgentServiceHooks, DrainInterruptsARunInProgress) {
  World w({lookup_turn("a", 10s), Turn{.answer = "never"}});
  auto out = w.run_async("r", "Find a");
  w.sim->rt->advance(5s);
  ASSERT_FALSE(out->has_value());
  w.agents->drain();
  w.sim->rt->advance(1min);
  ASSERT_TRUE(out->has_value());
  EXPECT_EQ((*out)->status, TaskStatus::kInterrupted);
  EXPECT_THAT((*out)->reason, HasSubstr("draining"));
  EXPECT_EQ(w.model->calls(), 1u);
  EXPECT_EQ(w.step_names("r"), (std::vector<std::string>{"start", "model 0"}));
  EXPECT_EQ(w.agents->running_count(), 0u);
}

TEST(AgentServiceHooks, RunningHereAndRunningCountFollowTheTasks) {
  // Every call takes 10 s, so the tasks are seen mid-turn.
  World w(std::vector<Turn>(4, Turn{.takes = 10s, .answer = "slow"}));
  EXPECT_EQ(w.agents->running_count(), 0u);
  w.start_supervisor();
  ASSERT_THAT(w.start("a"), IsOk());
  EXPECT_TRUE(w.agents->running_here("a")) << "known as running from start() on";
  auto b = w.run_async("b");
  w.sim->rt->advance(5s);
  EXPECT_EQ(w.agents->running_count(), 2u);
  EXPECT_TRUE(w.agents->running_here("a"));
  EXPECT_TRUE(w.agents->running_here("b")) << "a run() in progress counts";
  EXPECT_FALSE(w.agents->running_here("c"));

  w.sim->rt->advance(1min);
  ASSERT_TRUE(b->has_value());
  EXPECT_EQ((*b)->status, TaskStatus::kSucceeded) << (*b)->reason;
  Result<TaskOutcome> a = w.agents->outcome("a");
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->status, TaskStatus::kSucceeded) << a->reason;
  EXPECT_EQ(w.agents->running_count(), 0u);
  EXPECT_FALSE(w.agents->running_here("a"));
  EXPECT_FALSE(w.agents->running_here("b"));
}

TEST(AgentServiceHooks, AQuickTaskEndedBeforeStartReturnsIsNotLeftRunning) {
  // With an instant model a task process may end before start() has its pid back (the seed
  // decides the order); start() must not register it then, or it counts as running for good
  // (a graceful stop would wait its whole grace period for it).
  for (std::uint64_t seed = 1; seed <= 200; ++seed) {
    World w({Turn{.takes = Duration::zero(), .answer = "quick"}}, {}, seed);
    w.start_supervisor();
    ASSERT_THAT(w.start("q"), IsOk());
    w.sim->rt->advance(1s);
    Result<TaskOutcome> o = w.agents->outcome("q");
    ASSERT_THAT(o, IsOk()) << "seed " << seed;
    EXPECT_EQ(o->status, TaskStatus::kSucceeded) << "seed " << seed;
    EXPECT_EQ(w.agents->running_count(), 0u) << "seed " << seed;
    EXPECT_FALSE(w.agents->running_here("q")) << "seed " << seed;
  }
}

}  // namespace
}  // namespace nines::agent
