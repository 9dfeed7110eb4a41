// Multi-agent delegation (agent/delegate.hpp) on the deterministic runtime with the sim model:
// a coordinator delegating to two sub-agents in another group, spend aggregation, a kill -9 while
// a child runs, the parent's budget bounding the child, and groups under separate supervisors.
#include "nines/agent/delegate.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/agent/registry.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/runtime/supervisor.hpp"
#include "nines/store/memory_store.hpp"
#include "nines/workflow/workflow.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines::agent {
namespace {

using test::IsOk;
using test::SimRuntime;
using ::testing::HasSubstr;
using ::testing::Not;

using namespace std::chrono_literals;

// Two groups on one engine and store: "workers" (research, math: a lookup tool) and
// "coordinators" (coordinator: a delegate tool per worker). restart() is kill -9 of the program.
struct MultiWorld {
  struct AgentDef {
    std::string scenario;  // SimModel JSON
    bool coordinator = false;
    Budget budget;
    std::int64_t max_output_tokens = 256;
  };

  MultiWorld() { store = make_memory_store().value(); }

  std::shared_ptr<llm::Router> router_for(const std::string& name) {
    if (!models[name]) models[name] = llm::SimModel::from_json(defs[name].scenario).value();  // kept across restarts
    llm::RouterOptions ro{.name = name + "-chain"};
    llm::ModelRouteOptions r{.name = "sim/" + name,
                             .model = "sim-" + name,
                             .client = std::make_shared<llm::SimChatModel>(models[name]),
                             .max_output_tokens = 256};
    r.retry.max_attempts = 2;
    r.retry.backoff = Backoff::constant(100ms);
    ro.chain.push_back(std::move(r));
    return std::shared_ptr<llm::Router>(llm::Router::create(sim->env, ro).value());
  }

  void start() {
    sim = std::make_unique<SimRuntime>(seed++);
    engine = WorkflowEngine::create(sim->env, *store).value();
    auto delay = lookup_delay;
    auto calls = lookup_calls;
    auto lookup = make_native_tool({.name = "lookup",
                                    .description = "Looks up a record",
                                    .parameters_schema_json = R"({"type":"object"})",
                                    .nature = EffectNature::kReadOnly,
                                    .timeout = 1h},
                                   [delay, calls](Context& c, const ToolInvocation& inv) -> Task<Result<std::string>> {
                                     ++*calls;
                                     auto s = co_await c.sleep(delay);
                                     if (!s.ok()) co_return s.error();
                                     co_return "record " + inv.arguments_json;
                                   })
                      .value();
    workers =
        Agents::create(sim->env, *engine, ToolRegistry::create(sim->env, {lookup}).value(), group_options).value();
    workers->add_observer([this](const AgentEvent& e) { events.push_back(e); });
    std::vector<std::shared_ptr<Tool>> delegates;
    for (auto& [name, def] : defs) {
      if (def.coordinator) continue;
      AgentOptions a{.name = name, .router = router_for(name), .tools = {"lookup"}, .budget = def.budget};
      a.prices = prices;
      a.loop.max_turns_without_progress = 0;
      a.max_output_tokens = def.max_output_tokens;
      ASSERT_THAT(workers->add_agent(a), IsOk());
      delegates.push_back(make_delegate_tool(*workers, {.tool_name = "ask_" + name,
                                                        .description = "Gives a task to " + name,
                                                        .agent = name,
                                                        .timeout = delegate_timeout,
                                                        .prices = prices})
                              .value());
    }
    coordinators =
        Agents::create(sim->env, *engine, ToolRegistry::create(sim->env, delegates).value(), group_options).value();
    coordinators->add_observer([this](const AgentEvent& e) { events.push_back(e); });
    for (auto& [name, def] : defs) {
      if (!def.coordinator) continue;
      AgentOptions a{.name = name, .router = router_for(name), .budget = def.budget};
      for (const auto& d : delegates) a.tools.push_back(d->spec().name);
      a.max_output_tokens = def.max_output_tokens;
      a.prices = prices;
      ASSERT_THAT(coordinators->add_agent(a), IsOk());
    }
  }

  void restart() {
    sim.reset();
    coordinators.reset();
    workers.reset();
    engine.reset();
    store->crash();
    start();
  }

  std::optional<TaskOutcome> run(const std::string& agent, const std::string& id, Duration time = 1h) {
    auto out = std::make_shared<std::optional<TaskOutcome>>();
    Agents* group = defs[agent].coordinator ? coordinators.get() : workers.get();
    sim->spawn([group, out, agent, id](Context& ctx) -> Task<> {
      out->emplace(co_await group->run(ctx, agent, id, "please help"));
    });
    sim->rt->advance(time);
    return *out;
  }

  // Workflows of `kind` in the store, whatever their status.
  std::vector<WorkflowRecord> workflows(const std::string& kind) {
    std::vector<WorkflowRecord> out;
    for (WorkflowStatus st : {WorkflowStatus::kRunning, WorkflowStatus::kCompleted, WorkflowStatus::kFailed,
                              WorkflowStatus::kCancelled, WorkflowStatus::kNeedsAttention}) {
      std::vector<WorkflowRecord> page = store->list_workflows(st, "", 1000).value();
      for (auto& w : page) {
        if (w.kind == kind) out.push_back(w);
      }
    }
    return out;
  }

  std::uint64_t seed = 1;
  std::map<std::string, AgentDef> defs;
  std::map<std::string, std::shared_ptr<llm::SimModel>> models;
  std::map<std::string, Price> prices;
  Duration lookup_delay = 1s;
  Duration delegate_timeout = 2h;
  std::shared_ptr<int> lookup_calls = std::make_shared<int>(0);
  AgentsOptions group_options;
  std::vector<AgentEvent> events;

  std::unique_ptr<MemoryStore> store;
  std::unique_ptr<WorkflowEngine> engine;
  std::unique_ptr<Agents> workers;
  std::unique_ptr<Agents> coordinators;
  std::unique_ptr<SimRuntime> sim;
};

constexpr const char* kCoordinator = R"({"seed": 1, "scenario": [
  {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Find order 1"}},
                  {"name": "ask_math", "arguments": {"task": "Add 2 and 3"}}]},
  {"answer": "Order 1 is late; 2 + 3 = 5."}]})";
constexpr const char* kResearch = R"({"seed": 2, "scenario": [
  {"tool_calls": [{"name": "lookup", "arguments": {"id": "order-1"}}]},
  {"answer": "order 1 is late"}]})";
constexpr const char* kMath = R"({"seed": 3, "scenario": [{"answer": "5"}]})";

std::string long_research(int turns) {
  std::string s = R"({"seed": 4, "scenario": [)";
  for (int i = 0; i < turns; ++i) {
    s += R"({"tool_calls": [{"name": "lookup", "arguments": {"id": "item-)" + std::to_string(i) + R"("}}]},)";
  }
  return s + R"({"answer": "all items seen"}]})";
}

TEST(MultiAgent, CoordinatorDelegatesToTwoSubAgentsAndCountsTheirSpend) {
  MultiWorld w;
  w.defs["coordinator"] = {.scenario = kCoordinator, .coordinator = true};
  w.defs["research"] = {.scenario = kResearch};
  w.defs["math"] = {.scenario = kMath};
  w.prices["sim/coordinator"] = {.input_per_mtok = 1, .output_per_mtok = 2};
  w.prices["sim/research"] = {.input_per_mtok = 1, .output_per_mtok = 2};
  w.prices["sim/math"] = {.input_per_mtok = 1, .output_per_mtok = 2};
  w.start();
  auto out = w.run("coordinator", "job");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_EQ(out->answer, "Order 1 is late; 2 + 3 = 5.");
  EXPECT_EQ(out->tool_calls, 2);

  // Each sub-task is a durable task of its own, with its answer in the parent's history.
  auto research = w.workflows("agent:research");
  auto math = w.workflows("agent:math");
  ASSERT_EQ(research.size(), 1u);
  ASSERT_EQ(math.size(), 1u);
  EXPECT_THAT(research[0].id, HasSubstr("job.research."));
  auto r_out = w.workers->outcome(research[0].id);
  auto m_out = w.workers->outcome(math[0].id);
  ASSERT_THAT(r_out, IsOk());
  ASSERT_THAT(m_out, IsOk());
  EXPECT_EQ(r_out->answer, "order 1 is late");
  EXPECT_EQ(m_out->answer, "5");
  bool seen = false;
  const auto history = w.store->read_history("job", 0, 100).value();
  for (const auto& h : history) {
    if (h.message.find("order 1 is late") != std::string::npos) seen = true;
  }
  EXPECT_TRUE(seen);

  // The parent's outcome adds the children's spend to its own two turns.
  EXPECT_EQ(out->steps, 2);
  EXPECT_EQ(out->model_calls, 2 + r_out->model_calls + m_out->model_calls);
  EXPECT_EQ(r_out->model_calls, 2);
  EXPECT_EQ(m_out->model_calls, 1);
  EXPECT_GT(out->input_tokens, r_out->input_tokens + m_out->input_tokens);
  EXPECT_GT(r_out->cost_usd, 0);
  EXPECT_GT(out->cost_usd, r_out->cost_usd + m_out->cost_usd);

  // Finished: run again, nothing is called again.
  const auto calls = w.models["research"]->counters().calls;
  auto again = w.run("coordinator", "job");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->status, TaskStatus::kSucceeded);
  EXPECT_EQ(w.models["research"]->counters().calls, calls);
  EXPECT_EQ(w.workflows("agent:research").size(), 1u);
}

TEST(MultiAgent, KillNineWhileAChildRunsResumesThatChildNotASecondOne) {
  MultiWorld w;
  w.defs["coordinator"] = {.scenario = kCoordinator, .coordinator = true};
  w.defs["research"] = {.scenario = kResearch};
  w.defs["math"] = {.scenario = kMath};
  w.lookup_delay = 30s;
  w.start();
  auto first = w.run("coordinator", "job", 10s);  // the research child waits in its lookup
  EXPECT_FALSE(first.has_value());
  auto running = w.workflows("agent:research");
  ASSERT_EQ(running.size(), 1u);
  EXPECT_EQ(running[0].status, WorkflowStatus::kRunning);
  EXPECT_EQ(*w.lookup_calls, 1);

  w.restart();  // kill -9: every process gone
  auto out = w.run("coordinator", "job");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;

  // The same child, resumed (its first model turn replayed, not called again).
  auto research = w.workflows("agent:research");
  ASSERT_EQ(research.size(), 1u);
  EXPECT_EQ(research[0].id, running[0].id);
  auto r_out = w.workers->outcome(research[0].id);
  ASSERT_THAT(r_out, IsOk());
  EXPECT_EQ(r_out->status, TaskStatus::kSucceeded);
  EXPECT_GE(r_out->restarts, 1);
  EXPECT_EQ(w.models["research"]->counters().calls, 2u);
  EXPECT_EQ(w.workflows("agent:math").size(), 1u);
  EXPECT_EQ(*w.lookup_calls, 2);  // the interrupted read-only lookup ran again
}

// An attempt of the call that times out stops the child's run (not the task); the tool's retry
// resumes the same child where its records end.
TEST(MultiAgent, AnAttemptTimeoutResumesTheSameChildOnRetry) {
  MultiWorld w;
  w.defs["coordinator"] = {.scenario = R"({"seed": 1, "scenario": [
      {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Look at three items"}}]},
      {"answer": "seen"}]})",
                           .coordinator = true};
  w.defs["research"] = {.scenario = long_research(3)};
  w.lookup_delay = 3s;
  w.delegate_timeout = 5s;
  w.start();
  auto out = w.run("coordinator", "job");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  auto research = w.workflows("agent:research");
  ASSERT_EQ(research.size(), 1u);
  auto r_out = w.workers->outcome(research[0].id);
  ASSERT_THAT(r_out, IsOk());
  EXPECT_EQ(r_out->status, TaskStatus::kSucceeded);
  EXPECT_EQ(r_out->answer, "all items seen");
  EXPECT_GE(r_out->restarts, 1);                          // resumed after a timed-out attempt
  EXPECT_EQ(w.models["research"]->counters().calls, 4u);  // each turn asked once
}

bool history_has(MultiWorld& w, const std::string& task, const std::string& what) {
  const auto history = w.store->read_history(task, 0, 1000).value();
  for (const auto& h : history) {
    if (h.message.find(what) != std::string::npos) return true;
  }
  return false;
}

std::size_t model_turns(MultiWorld& w, const std::string& task) {
  std::size_t turns = 0;
  const auto steps = w.store->load_steps(task).value();
  for (const auto& s : steps) turns += s.name.rfind("model", 0) == 0 ? 1 : 0;
  return turns;
}

// The child runs under the parent's budget left as its per-task cap (RunOptions::cap): it stops
// itself before a model call that could cross it, so the parent is not overrun by more than the
// call in flight.
TEST(MultiAgent, ChildStopsItselfAtTheParentsBudgetLeft) {
  MultiWorld w;
  w.defs["coordinator"] = {.scenario = R"({"seed": 1, "scenario": [
      {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Look at every item"}}]},
      {"answer": "never"}]})",
                           .coordinator = true,
                           .budget = {.max_tokens = 3000}};
  w.defs["research"] = {.scenario = long_research(40)};  // its own budget: no token limit
  w.lookup_delay = 0s;
  w.start();
  auto out = w.run("coordinator", "job");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kBudgetExceeded) << out->reason;
  EXPECT_THAT(out->reason, HasSubstr("max_tokens"));

  auto research = w.workflows("agent:research");
  ASSERT_EQ(research.size(), 1u);
  auto r_out = w.workers->outcome(research[0].id);
  ASSERT_THAT(r_out, IsOk());
  EXPECT_EQ(r_out->status, TaskStatus::kBudgetExceeded);
  EXPECT_THAT(r_out->reason, HasSubstr("max_tokens (the task's cap)"));
  const std::size_t turns = model_turns(w, research[0].id);
  EXPECT_GE(turns, 2u);
  EXPECT_LT(turns, 40u);
  EXPECT_EQ(w.models["research"]->counters().calls, turns);
  // The parent was charged for the child's turns, and the whole stays within its budget plus
  // at most one call in flight (max_output_tokens 256 and its prompt).
  EXPECT_EQ(out->model_calls, 1 + static_cast<std::int64_t>(turns));
  EXPECT_LE(out->input_tokens + out->output_tokens, 3000 + 256 + 1000);
  EXPECT_LE(r_out->input_tokens + r_out->output_tokens, 3000);
  EXPECT_EQ(out->tool_errors["budget_exceeded"], 1);
  EXPECT_TRUE(history_has(w, "job", "ended budget_exceeded: max_tokens (the task's cap)"));
}

// The same with a cost budget and with the parent's wall time.
TEST(MultiAgent, ChildStopsItselfAtTheParentsCostAndWallTimeLeft) {
  for (const char* which : {"cost", "wall"}) {
    SCOPED_TRACE(which);
    MultiWorld w;
    Budget parent = std::string(which) == "cost" ? Budget{.max_cost_usd = 0.003} : Budget{.max_wall_time = 25s};
    w.defs["coordinator"] = {.scenario = R"({"seed": 1, "scenario": [
        {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Look at every item"}}]},
        {"answer": "never"}]})",
                             .coordinator = true,
                             .budget = parent};
    w.defs["research"] = {.scenario = long_research(40)};
    w.prices["sim/coordinator"] = {.input_per_mtok = 1, .output_per_mtok = 1};
    w.prices["sim/research"] = {.input_per_mtok = 1, .output_per_mtok = 1};
    w.lookup_delay = 10s;
    w.start();
    auto out = w.run("coordinator", "job", 2h);
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(out->status, TaskStatus::kBudgetExceeded) << out->reason;
    EXPECT_EQ(out->tool_errors["budget_exceeded"], 1);
    auto research = w.workflows("agent:research");
    ASSERT_EQ(research.size(), 1u);
    auto r_out = w.workers->outcome(research[0].id);
    ASSERT_THAT(r_out, IsOk());
    EXPECT_EQ(r_out->status, TaskStatus::kBudgetExceeded);
    EXPECT_LT(w.models["research"]->counters().calls, 40u);
    if (std::string(which) == "cost") {
      EXPECT_THAT(r_out->reason, HasSubstr("max_cost_usd (the task's cap)"));
      EXPECT_LE(out->cost_usd, 0.003 + 0.0013);  // at most the call in flight over
    } else {
      EXPECT_THAT(r_out->reason, HasSubstr("max_wall_time (the task's cap)"));
      EXPECT_LE(*w.lookup_calls, 3);  // 25 s of the parent's wall time: 10 s lookups
    }
  }
}

// A kill -9 while the child runs: the resumed child keeps the cap recorded at its first start,
// even when its resumer passes none (here: the sub-agents' run() called directly, no cap).
TEST(MultiAgent, AResumedChildKeepsItsRecordedCap) {
  MultiWorld w;
  w.defs["coordinator"] = {.scenario = R"({"seed": 1, "scenario": [
      {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Look at every item"}}]},
      {"answer": "never"}]})",
                           .coordinator = true,
                           .budget = {.max_tokens = 3000}};
  w.defs["research"] = {.scenario = long_research(40)};
  w.lookup_delay = 10s;
  w.start();
  EXPECT_FALSE(w.run("coordinator", "job", 25s).has_value());  // the child is in its third lookup
  auto research = w.workflows("agent:research");
  ASSERT_EQ(research.size(), 1u);
  const std::string child = research[0].id;
  bool recorded = false;
  const auto steps = w.store->load_steps(child).value();
  for (const auto& st : steps) {
    if (st.name == "start") recorded = st.result.find("\"cap\"") != std::string::npos;
  }
  EXPECT_TRUE(recorded);

  w.restart();  // kill -9
  auto out = std::make_shared<std::optional<TaskOutcome>>();
  Agents* workers = w.workers.get();
  w.sim->spawn([workers, out, child](Context& ctx) -> Task<> {
    RunOptions none;  // a named argument: GCC 12 mishandles temporaries in co_await
    out->emplace(co_await workers->run(ctx, "research", child, "please help", none));
  });
  w.sim->rt->advance(2h);
  ASSERT_TRUE(out->has_value());
  EXPECT_EQ((*out)->status, TaskStatus::kBudgetExceeded) << (*out)->reason;
  EXPECT_THAT((*out)->reason, HasSubstr("max_tokens (the task's cap)"));
  EXPECT_GE((*out)->restarts, 1);
  EXPECT_LE((*out)->input_tokens + (*out)->output_tokens, 3000);
  EXPECT_LT(model_turns(w, child), 40u);
}

// Agents::run with RunOptions::cap: the effective budget is the min of the agent's and the cap,
// and the cap recorded at the first start wins over one given to a later run.
TEST(MultiAgent, RunCapIsTheMinOfTheAgentBudgetAndTheRecordedCapWins) {
  MultiWorld w;
  w.defs["research"] = {.scenario = long_research(20), .budget = {.max_steps = 10}};
  w.lookup_delay = 10s;
  w.start();
  auto run_with = [&](const std::string& id, std::optional<Budget> cap, Duration time) {
    auto out = std::make_shared<std::optional<TaskOutcome>>();
    Agents* workers = w.workers.get();
    w.sim->spawn([workers, out, id, cap](Context& ctx) -> Task<> {
      RunOptions options{.cap = cap};  // a named argument: GCC 12 mishandles temporaries in co_await
      out->emplace(co_await workers->run(ctx, "research", id, "please help", options));
    });
    w.sim->rt->advance(time);
    return *out;
  };
  // A cap over the agent's limit changes nothing; under it, it stops the task and is named.
  auto loose = run_with("loose", Budget{.max_steps = 50}, 2h);
  ASSERT_TRUE(loose.has_value());
  EXPECT_EQ(loose->status, TaskStatus::kBudgetExceeded);
  EXPECT_EQ(loose->steps, 10);
  EXPECT_THAT(loose->reason, Not(HasSubstr("cap")));
  auto tight = run_with("tight", Budget{.max_steps = 3}, 2h);
  ASSERT_TRUE(tight.has_value());
  EXPECT_EQ(tight->status, TaskStatus::kBudgetExceeded);
  EXPECT_EQ(tight->steps, 3);
  EXPECT_THAT(tight->reason, HasSubstr("max_steps (the task's cap)"));

  // Started with a cap of 3 steps, killed after 2, resumed with another cap: the recorded wins.
  EXPECT_FALSE(run_with("resumed", Budget{.max_steps = 3}, 15s).has_value());
  w.restart();
  auto resumed = run_with("resumed", Budget{.max_steps = 0, .max_model_calls = 100}, 2h);
  ASSERT_TRUE(resumed.has_value());
  EXPECT_EQ(resumed->status, TaskStatus::kBudgetExceeded);
  EXPECT_EQ(resumed->steps, 3);
  EXPECT_THAT(resumed->reason, HasSubstr("max_steps (the task's cap)"));
}

TEST(MultiAgent, NoChildIsStartedWhenTheParentHasNothingLeft) {
  MultiWorld w;
  w.defs["research"] = {.scenario = kResearch};
  w.start();
  auto tool = make_delegate_tool(*w.workers, {.tool_name = "ask_research2", .agent = "research"}).value();
  EXPECT_EQ(tool->spec().nature, EffectNature::kIdempotent);
  auto result = std::make_shared<std::optional<Result<std::string>>>();
  w.sim->spawn([tool, result](Context& ctx) -> Task<> {
    ToolSpend spend;
    ToolInvocation inv{.task_id = "parent",
                       .call_id = "c1",
                       .arguments_json = R"({"task": "x"})",
                       .idempotency_key = "parent#1/3/tool",
                       .budget_left = {.tokens = 0},
                       .spend = &spend};
    result->emplace(co_await tool->call(ctx, inv));
  });
  w.sim->rt->advance(1min);
  ASSERT_TRUE(result->has_value());
  EXPECT_THAT(**result, test::StatusIs(ErrorKind::kBudgetExceeded, "not started"));
  EXPECT_TRUE(w.workflows("agent:research").empty());
  EXPECT_EQ(delegate_child_id("parent", "research", "parent#1/3/tool"),
            delegate_child_id("parent", "research", "parent#1/3/tool"));
  EXPECT_NE(delegate_child_id("parent", "research", "parent#1/3/tool"),
            delegate_child_id("parent", "research", "parent#1/4/tool"));
}

TEST(MultiAgent, ChildFailureIsAToolErrorNamingItsStatus) {
  MultiWorld w;
  w.defs["coordinator"] = {.scenario = R"({"seed": 1, "scenario": [
      {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Look at every item"}}]},
      {"answer": "the researcher could not finish"}]})",
                           .coordinator = true};
  w.defs["research"] = {.scenario = long_research(10), .budget = {.max_steps = 2}};
  w.lookup_delay = 0s;
  w.start();
  auto out = w.run("coordinator", "job");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kSucceeded) << out->reason;
  EXPECT_EQ(out->answer, "the researcher could not finish");
  EXPECT_EQ(out->tool_errors["budget_exceeded"], 1);
  bool told = false;
  const auto history = w.store->read_history("job", 0, 100).value();
  for (const auto& h : history) {
    if (h.message.find("ended budget_exceeded: max_steps") != std::string::npos) told = true;
  }
  EXPECT_TRUE(told);
}

// A task whose cancel is seen on a resumed run ends at the first guard, before its recorded
// turns are replayed: its outcome still counts them (TaskRun::account_recorded_turns), so a
// parent charged from the outcome is charged for them.
TEST(MultiAgent, CancelledTaskOutcomeCountsItsRecordedTurns) {
  MultiWorld w;
  w.defs["research"] = {.scenario = long_research(10)};
  w.lookup_delay = 10s;
  w.start();
  EXPECT_FALSE(w.run("research", "r1", 25s).has_value());  // two turns recorded, a lookup running
  ASSERT_THAT(w.workers->cancel("r1"), IsOk());
  auto out = w.run("research", "r1");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kCancelled);
  EXPECT_GE(out->steps, 2);
  EXPECT_GT(out->input_tokens, 0);
}

// Cancelling a parent cancels, durably, the child it delegated: whether the child is in a model
// call or a tool call, its outcome becomes cancelled, nothing of it keeps running, and a resume
// of the engine after a kill -9 does not start it again.
TEST(MultiAgent, CancellingAParentCancelsItsChildMidModelCallAndMidToolCall) {
  for (const char* where : {"model", "tool"}) {
    SCOPED_TRACE(where);
    const bool mid_model = std::string(where) == "model";
    MultiWorld w;
    w.defs["coordinator"] = {.scenario = R"({"seed": 1, "scenario": [
        {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Look at every item"}}]},
        {"answer": "never"}]})",
                             .coordinator = true};
    // Mid model call: each answer of the researcher takes 20 s; mid tool call: each lookup does.
    w.defs["research"] = {.scenario = mid_model ? R"({"seed": 4, "latency": {"first_byte": {"ms": 20000}},
        "scenario": [{"tool_calls": [{"name": "lookup", "arguments": {"id": "a"}}]}, {"answer": "done"}]})"
                                                : long_research(5)};
    w.lookup_delay = mid_model ? 0s : 20s;
    w.start();
    Agents* coordinators = w.coordinators.get();
    w.sim->spawn([coordinators](Context& ctx) -> Task<> {
      if (!coordinators->start_supervisor(ctx).ok()) co_return;
      (void)co_await coordinators->start(ctx, "coordinator", "job", "please help");
      (void)co_await ctx.sleep(10h);  // keeps the supervisor (linked to it) alive
    });
    w.sim->rt->advance(mid_model ? 10s : 5s);  // the child is in its first model call / lookup
    auto research = w.workflows("agent:research");
    ASSERT_EQ(research.size(), 1u);
    const std::string child = research[0].id;
    ASSERT_EQ(research[0].status, WorkflowStatus::kRunning);
    const auto calls_before = w.models["research"]->counters().calls;
    const int lookups_before = *w.lookup_calls;
    EXPECT_EQ(mid_model ? calls_before : static_cast<std::uint64_t>(lookups_before), 1u);

    ASSERT_THAT(w.coordinators->cancel("job"), IsOk());
    w.sim->rt->advance(1h);
    auto job = w.coordinators->outcome("job");
    ASSERT_THAT(job, IsOk());
    EXPECT_EQ(job->status, TaskStatus::kCancelled);
    auto c_out = w.workers->outcome(child);
    ASSERT_THAT(c_out, IsOk());
    EXPECT_EQ(c_out->status, TaskStatus::kCancelled) << c_out->reason;
    // Nothing of the child ran on: no model call or lookup after the cancel (the interrupted
    // one is not retried).
    EXPECT_EQ(w.models["research"]->counters().calls, calls_before);
    EXPECT_EQ(*w.lookup_calls, lookups_before);

    // A kill -9 and a resume of every running workflow: the child is finished, not restarted.
    w.restart();
    auto resumed = std::make_shared<std::optional<Result<std::size_t>>>();
    WorkflowEngine* engine = w.engine.get();
    w.sim->spawn(
        [engine, resumed](Context& ctx) -> Task<> { resumed->emplace(co_await engine->resume_all_and_wait(ctx)); });
    w.sim->rt->advance(1h);
    ASSERT_TRUE(resumed->has_value());
    ASSERT_THAT(**resumed, IsOk());
    EXPECT_EQ(***resumed, 0u);
    EXPECT_EQ(w.models["research"]->counters().calls, calls_before);
    EXPECT_EQ(*w.lookup_calls, lookups_before);
    EXPECT_EQ(w.workers->outcome(child)->status, TaskStatus::kCancelled);
  }
}

// A cancel of the parent when nothing runs it (after a kill -9): the child gets its own durable
// cancel request at once, so a resume of the child alone ends it as cancelled.
TEST(MultiAgent, CancelOfAParentThatIsNotRunningReachesItsChild) {
  MultiWorld w;
  w.defs["coordinator"] = {.scenario = R"({"seed": 1, "scenario": [
      {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Look at every item"}}]},
      {"answer": "never"}]})",
                           .coordinator = true};
  w.defs["research"] = {.scenario = long_research(5)};
  w.lookup_delay = 20s;
  w.start();
  EXPECT_FALSE(w.run("coordinator", "job", 5s).has_value());
  auto research = w.workflows("agent:research");
  ASSERT_EQ(research.size(), 1u);
  const std::string child = research[0].id;
  w.restart();  // kill -9: neither runs now
  ASSERT_THAT(w.coordinators->cancel("job"), IsOk());
  const int lookups = *w.lookup_calls;
  auto out = w.run("research", child);  // the child resumed alone
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, TaskStatus::kCancelled);
  EXPECT_EQ(*w.lookup_calls, lookups);
  auto job = w.run("coordinator", "job");
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->status, TaskStatus::kCancelled);
}

// Groups under their own supervisors: a crash storm in one group's task supervisor (its
// intensity exceeded) stops that group only; the other group's task runs on to its end.
TEST(MultiAgent, ACrashStormInOneGroupDoesNotStopAnother) {
  MultiWorld w;
  // "broken" never gets an answer (every call 503): each run is interrupted, its process
  // crashes and is restarted, over and over.
  w.defs["broken"] = {.scenario = R"({"seed": 5, "faults": {"unavailable": {"probability": 1.0}},
                                      "scenario": [{"answer": "never"}]})"};
  w.defs["coordinator"] = {.scenario = R"({"seed": 1, "scenario": [
      {"tool_calls": [{"name": "ask_research", "arguments": {"task": "Find order 1"}}]},
      {"answer": "order 1 is late"}]})",
                           .coordinator = true};
  w.defs["research"] = {.scenario = kResearch};
  w.lookup_delay = 60s;
  w.group_options.restart_intensity = 3;
  w.group_options.restart_period = 60s;
  w.group_options.restart_min_delay = 10ms;
  w.group_options.restart_max_delay = 10ms;
  w.start();
  // Each group's supervisor under a process of its own (a supervisor gives up by exiting,
  // which takes down what it is linked to).
  auto sups = std::make_shared<std::map<std::string, Pid>>();
  for (auto [label, group] : {std::pair{"workers", w.workers.get()}, std::pair{"coordinators", w.coordinators.get()}}) {
    std::string name = label;
    w.sim->spawn([group, sups, name](Context& ctx) -> Task<> {
      (*sups)[name] = group->start_supervisor(ctx).value();
      (void)co_await ctx.receive();  // lives as long as its supervisor
    });
  }
  w.sim->rt->advance(1ms);
  ASSERT_EQ(sups->size(), 2u);
  // The coordinator group's task: delegates to research (a worker, run by the delegate call in
  // the coordinator group's processes) and waits a minute in its lookup.
  // The worker group's storm: "broken" crashes its task process again and again.
  auto started = std::make_shared<int>(0);
  w.sim->spawn([&w, started](Context& ctx) -> Task<> {
    if ((co_await w.coordinators->start(ctx, "coordinator", "job", "go")).ok()) ++*started;
    if ((co_await w.workers->start(ctx, "broken", "storm", "go")).ok()) ++*started;
  });
  w.sim->rt->advance(30s);
  ASSERT_EQ(*started, 2);
  EXPECT_FALSE(w.sim->rt->alive(sups->at("workers")));  // gave up: intensity exceeded
  EXPECT_TRUE(w.sim->rt->alive(sups->at("coordinators")));
  w.sim->rt->advance(5min);
  auto job = w.coordinators->outcome("job");
  ASSERT_THAT(job, IsOk());
  EXPECT_EQ(job->status, TaskStatus::kSucceeded) << job->reason;
  EXPECT_EQ(job->answer, "order 1 is late");
  auto storm = w.workers->outcome("storm");  // left running: resumed when its group is started again
  ASSERT_FALSE(storm.ok());
  EXPECT_EQ(storm.error().kind(), ErrorKind::kTransient);
}

}  // namespace
}  // namespace nines::agent
