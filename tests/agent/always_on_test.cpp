// Always-on agents (agent/always_on.hpp) on the deterministic runtime with the sim model:
// recycling after N tasks and on a watermark, no accepted task lost across recycles, the bound.
#include "nines/agent/always_on.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
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
using test::StatusIs;
using ::testing::HasSubstr;

using namespace std::chrono_literals;

// One agent "desk": each task looks something up (1 s of virtual time), then answers.
struct DeskWorld {
  DeskWorld() {
    store = make_memory_store().value();
    sim = std::make_unique<SimRuntime>(7);
    engine = WorkflowEngine::create(sim->env, *store).value();
    model = llm::SimModel::from_json(R"({"seed": 9, "scenario": [
        {"tool_calls": [{"name": "lookup", "arguments": {"id": "x"}}]}, {"answer": "done"}]})")
                .value();
    auto leaked = heap;
    auto lookup = make_native_tool({.name = "lookup",
                                    .description = "Looks up a record",
                                    .parameters_schema_json = R"({"type":"object"})",
                                    .nature = EffectNature::kReadOnly},
                                   [leaked](Context& c, const ToolInvocation&) -> Task<Result<std::string>> {
                                     *leaked += 100;  // the agent's own heap accounting: it leaks
                                     auto s = co_await c.sleep(1s);
                                     if (!s.ok()) co_return s.error();
                                     co_return std::string("record");
                                   })
                      .value();
    agents = Agents::create(sim->env, *engine, ToolRegistry::create(sim->env, {lookup}).value()).value();
    llm::RouterOptions ro{.name = "chain"};
    ro.chain.push_back(llm::ModelRouteOptions{.name = "sim/desk",
                                              .model = "sim-desk",
                                              .client = std::make_shared<llm::SimChatModel>(model),
                                              .max_output_tokens = 256});
    AgentOptions a{.name = "desk",
                   .router = std::shared_ptr<llm::Router>(llm::Router::create(sim->env, ro).value()),
                   .tools = {"lookup"}};
    a.max_output_tokens = 256;
    EXPECT_THAT(agents->add_agent(a), IsOk());
  }

  std::unique_ptr<AlwaysOnAgent> make(AlwaysOnOptions o) {
    auto desk = AlwaysOnAgent::create(*agents, std::move(o)).value();
    desk->add_observer([this](const AlwaysOnEvent& e) {
      if (e.type == AlwaysOnEvent::Type::kRestart) *heap = 0;  // a fresh worker starts clean
      events.push_back(e);
    });
    return desk;
  }

  // Starts the always-on agent's supervisor under a process of its own.
  void start(AlwaysOnAgent& desk) {
    auto sup = supervisor;
    sim->spawn([&desk, sup](Context& ctx) -> Task<> {
      *sup = desk.start(ctx).value();
      (void)co_await ctx.receive();
    });
    sim->rt->advance(1ms);
  }

  std::vector<std::string> recycle_reasons() const {
    std::vector<std::string> out;
    for (const auto& e : events) {
      if (e.type == AlwaysOnEvent::Type::kRecycle) out.push_back(e.detail);
    }
    return out;
  }

  std::shared_ptr<std::int64_t> heap = std::make_shared<std::int64_t>(0);
  std::shared_ptr<Pid> supervisor = std::make_shared<Pid>();
  std::vector<AlwaysOnEvent> events;
  std::shared_ptr<llm::SimModel> model;
  std::unique_ptr<MemoryStore> store;
  std::unique_ptr<WorkflowEngine> engine;
  std::unique_ptr<Agents> agents;
  std::unique_ptr<SimRuntime> sim;
};

std::string task_id(int i) { return "t" + std::to_string(i); }

TEST(AlwaysOn, RecyclesAfterMaxTasks) {
  DeskWorld w;
  auto desk = w.make({.agent = "desk", .max_tasks = 3});
  w.start(*desk);
  for (int i = 0; i < 7; ++i) ASSERT_THAT(desk->submit(task_id(i), "help"), IsOk());
  w.sim->rt->advance(10min);
  AlwaysOnCounters c = desk->counters();
  EXPECT_EQ(c.completed, 7);
  EXPECT_EQ(c.queued, 0u);
  EXPECT_EQ(c.recycles, 2);  // after tasks 3 and 6
  EXPECT_EQ(c.recycles_by_reason["max_tasks"], 2);
  EXPECT_EQ(c.worker_starts, 3);
  EXPECT_THAT(w.recycle_reasons(), ::testing::ElementsAre(HasSubstr("max_tasks: 3"), HasSubstr("max_tasks: 3")));
  for (int i = 0; i < 7; ++i) {
    auto out = w.agents->outcome(task_id(i));
    ASSERT_THAT(out, IsOk());
    EXPECT_EQ(out->status, TaskStatus::kSucceeded);
  }
  EXPECT_TRUE(w.sim->rt->alive(*w.supervisor));
}

TEST(AlwaysOn, RecyclesWhenAnInjectedWatermarkIsCrossed) {
  DeskWorld w;
  // The agent's heap accounting grows by 100 per task (the tool leaks); recycle at 250. And a
  // resident-memory probe on the virtual clock: +1 MiB a minute, recycle at 64 MiB (not reached).
  const TimePoint t0 = w.sim->env.now();
  Environment* env = &w.sim->env;
  auto heap = w.heap;
  auto desk = w.make({.agent = "desk",
                      .max_tasks = 0,
                      .watermarks = {{.name = "rss_bytes",
                                      .probe = [env, t0] { return std::int64_t{(env->now() - t0) / 1min} << 20; },
                                      .limit = std::int64_t{64} << 20},
                                     {.name = "heap_bytes", .probe = [heap] { return *heap; }, .limit = 250}}});
  w.start(*desk);
  for (int i = 0; i < 7; ++i) ASSERT_THAT(desk->submit(task_id(i), "help"), IsOk());
  w.sim->rt->advance(10min);
  AlwaysOnCounters c = desk->counters();
  EXPECT_EQ(c.completed, 7);
  EXPECT_EQ(c.recycles, 2);  // after 3 tasks (300 >= 250), after 6
  EXPECT_EQ(c.recycles_by_reason["heap_bytes"], 2);
  EXPECT_EQ(c.recycles_by_reason.count("rss_bytes"), 0u);
  EXPECT_THAT(w.recycle_reasons(), ::testing::Each(HasSubstr("heap_bytes: 300 >= 250")));
}

TEST(AlwaysOn, NoQueuedTaskIsLostAcrossRecycles) {
  DeskWorld w;
  auto desk = w.make({.agent = "desk", .queue_capacity = 64, .max_tasks = 7, .restart_intensity = 20});
  w.start(*desk);
  // Half before the worker is busy, half while it works and recycles.
  for (int i = 0; i < 25; ++i) ASSERT_THAT(desk->submit(task_id(i), "help"), IsOk());
  w.sim->rt->advance(30s);
  for (int i = 25; i < 50; ++i) ASSERT_THAT(desk->submit(task_id(i), "help"), IsOk());
  w.sim->rt->advance(1h);
  AlwaysOnCounters c = desk->counters();
  EXPECT_EQ(c.accepted, 50);
  EXPECT_EQ(c.completed, 50);
  EXPECT_EQ(c.queued, 0u);
  EXPECT_EQ(c.recycles, 7);  // after 7, 14, ..., 49
  int task_done = 0;
  for (const auto& e : w.events) task_done += e.type == AlwaysOnEvent::Type::kTaskDone ? 1 : 0;
  EXPECT_EQ(task_done, 50);
  for (int i = 0; i < 50; ++i) {
    auto out = w.agents->outcome(task_id(i));
    ASSERT_THAT(out, IsOk()) << task_id(i);
    EXPECT_EQ(out->status, TaskStatus::kSucceeded);
    EXPECT_EQ(out->restarts, 0);  // each ran once, start to end
  }
  EXPECT_EQ(w.model->counters().calls, 100u);  // two turns per task, each exactly once
}

TEST(AlwaysOn, AKilledWorkerLosesNoTaskAndResumesTheOneItRan) {
  DeskWorld w;
  auto desk = w.make({.agent = "desk", .max_tasks = 0});
  w.start(*desk);
  for (int i = 0; i < 3; ++i) ASSERT_THAT(desk->submit(task_id(i), "help"), IsOk());
  w.sim->rt->advance(500ms);  // t0 waits in its lookup
  auto killed = std::make_shared<bool>(false);
  auto sup = w.supervisor;
  w.sim->spawn([sup, killed](Context& ctx) -> Task<> {
    auto children = co_await which_children(ctx, *sup);
    if (!children.ok() || children->size() != 1) co_return;
    ctx.send_exit((*children)[0].pid, ExitReason::kill());
    *killed = true;
  });
  w.sim->rt->advance(10min);
  ASSERT_TRUE(*killed);
  AlwaysOnCounters c = desk->counters();
  EXPECT_EQ(c.completed, 3);
  EXPECT_EQ(c.worker_starts, 2);
  EXPECT_EQ(c.recycles, 0);
  auto t0 = w.agents->outcome(task_id(0));
  ASSERT_THAT(t0, IsOk());
  EXPECT_EQ(t0->status, TaskStatus::kSucceeded);
  EXPECT_EQ(t0->restarts, 1);  // resumed, not started anew
}

TEST(AlwaysOn, TheQueueIsBounded) {
  DeskWorld w;
  auto desk = w.make({.agent = "desk", .queue_capacity = 3});
  for (int i = 0; i < 3; ++i) ASSERT_THAT(desk->submit(task_id(i), "help"), IsOk());
  EXPECT_THAT(desk->submit("t3", "help"), StatusIs(ErrorKind::kBulkheadFull, "queue is full"));
  EXPECT_THAT(desk->submit("t0", "help"), StatusIs(ErrorKind::kAlreadyExists, "queued already"));
  EXPECT_THAT(desk->submit("", "help"), StatusIs(ErrorKind::kInvalidArgument, "empty task id"));
  EXPECT_EQ(desk->counters().rejected, 2);
  EXPECT_EQ(desk->counters().queued, 3u);
  // Accepted before the start: run once the worker is there; then there is room again.
  w.start(*desk);
  w.sim->rt->advance(10min);
  EXPECT_EQ(desk->counters().completed, 3);
  EXPECT_THAT(desk->submit("t3", "help"), IsOk());
  w.sim->rt->advance(10min);
  EXPECT_EQ(desk->counters().completed, 4);
}

TEST(AlwaysOn, CreateChecksItsOptions) {
  DeskWorld w;
  EXPECT_THAT(AlwaysOnAgent::create(*w.agents, {}), StatusIs(ErrorKind::kInvalidArgument, "no agent"));
  EXPECT_THAT(AlwaysOnAgent::create(*w.agents, {.agent = "desk", .queue_capacity = 0}),
              StatusIs(ErrorKind::kInvalidArgument, "queue_capacity"));
  EXPECT_THAT(AlwaysOnAgent::create(*w.agents, {.agent = "desk", .watermarks = {{.name = "x"}}}),
              StatusIs(ErrorKind::kInvalidArgument, "probe"));
}

TEST(AlwaysOn, ProcessProbesReadThisProgram) {
  EXPECT_GT(resident_bytes_probe()(), 0);
  EXPECT_GT(open_fds_probe()(), 2);  // at least stdin, stdout, stderr
}

}  // namespace
}  // namespace nines::agent
