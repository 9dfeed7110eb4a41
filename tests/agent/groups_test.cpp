// Groups of agents in a supervision tree of the user's (Agents::supervisor_child): each group's
// task supervisor a child of one root, restarted by it, and a group that lost its supervisor
// starts and resumes tasks under the new one while the other group goes on. On the
// deterministic runtime with the sim model.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
using test::StatusIs;

using namespace std::chrono_literals;

// One group: an Agents with agent "slow-<name>", whose task calls `wait` (10 s) once, then
// answers. (An agent's name is unique per engine: its workflow kind is agent:<name>.)
struct Group {
  Group(SimRuntime& sim, WorkflowEngine& engine, const std::string& name, AgentsOptions options = {})
      : agent("slow-" + name) {
    auto wait = make_native_tool({.name = "wait",
                                  .description = "Waits ten seconds",
                                  .parameters_schema_json = R"({"type":"object"})",
                                  .nature = EffectNature::kReadOnly,
                                  .timeout = 1h},
                                 [](Context& c, const ToolInvocation&) -> Task<Result<std::string>> {
                                   auto s = co_await c.sleep(10s);
                                   if (!s.ok()) co_return s.error();
                                   co_return std::string("waited");
                                 })
                    .value();
    model = llm::SimModel::from_json(R"({"seed": 1, "scenario": [
      {"tool_calls": [{"name": "wait", "arguments": {}}]}, {"answer": "done"}]})")
                .value();
    llm::RouterOptions ro{.name = name + "-chain"};
    ro.chain.push_back(llm::ModelRouteOptions{
        .name = "sim/" + name, .model = "sim", .client = std::make_shared<llm::SimChatModel>(model)});
    auto router = std::shared_ptr<llm::Router>(llm::Router::create(sim.env, ro).value());
    agents = Agents::create(sim.env, engine, ToolRegistry::create(sim.env, {wait}).value(), options).value();
    EXPECT_THAT(agents->add_agent({.name = agent, .router = router, .tools = {"wait"}}), IsOk());
  }
  std::string agent;
  std::shared_ptr<llm::SimModel> model;
  std::unique_ptr<Agents> agents;
};

struct GroupsWorld {
  explicit GroupsWorld(AgentsOptions a_options = {}, std::uint64_t s = 7) : seed(s) {
    store = make_memory_store().value();
    engine = WorkflowEngine::create(sim.env, *store).value();
    a = std::make_unique<Group>(sim, *engine, "a", a_options);
    b = std::make_unique<Group>(sim, *engine, "b");
  }
  ~GroupsWorld() { sim.rt.reset(); }  // the processes go first: they use the groups
  // Starts task `id` of `g` under its current supervisor (in a process of the test's).
  Result<Pid> start(Group& g, const std::string& id) {
    auto out = std::make_shared<std::optional<Result<Pid>>>();
    sim.spawn(
        [&g, id, out](Context& ctx) -> Task<> { out->emplace(co_await g.agents->start(ctx, g.agent, id, "go")); });
    sim.rt->run_until_idle();
    if (!out->has_value()) return Error(ErrorKind::kInternal, "start did not return");
    return **out;
  }
  std::vector<ChildInfo> children(Pid sup) {
    auto out = std::make_shared<std::vector<ChildInfo>>();
    sim.spawn([sup, out](Context& ctx) -> Task<> {
      auto kids = co_await which_children(ctx, sup);
      if (kids.ok()) *out = *kids;
    });
    sim.rt->run_until_idle();
    return *out;
  }

  std::uint64_t seed;
  SimRuntime sim{seed};
  std::unique_ptr<MemoryStore> store;
  std::unique_ptr<WorkflowEngine> engine;
  std::unique_ptr<Group> a, b;
};

TEST(AgentGroups, EachGroupUnderOneRootIsRestartedAloneAndResumesItsTasks) {
  GroupsWorld w;
  SupervisorSpec root{.name = "agents", .strategy = Strategy::kOneForOne, .intensity = 3, .period = 60s};
  root.children = {w.a->agents->supervisor_child("group-a"), w.b->agents->supervisor_child("group-b")};
  Pid root_pid = start_supervisor(*w.sim.rt, root).value();
  ASSERT_THAT(w.start(*w.a, "a1"), IsOk());
  ASSERT_THAT(w.start(*w.b, "b1"), IsOk());
  w.sim.rt->advance(1s);  // both tasks wait in their tool

  std::vector<ChildInfo> kids = w.children(root_pid);
  ASSERT_EQ(kids.size(), 2u);
  const Pid group_a = kids[0].id == "group-a" ? kids[0].pid : kids[1].pid;
  w.sim.rt->send_exit(group_a, ExitReason::kill());  // group a's supervisor dies, and a1 with it
  w.sim.rt->run_until_idle();

  kids = w.children(root_pid);
  ASSERT_EQ(kids.size(), 2u);
  const Pid new_a = kids[0].id == "group-a" ? kids[0].pid : kids[1].pid;
  EXPECT_NE(new_a, group_a) << "the root restarted group a's supervisor";
  EXPECT_TRUE(w.sim.rt->alive(new_a));
  // a1 died with its supervisor; started again under the new one, it resumes.
  ASSERT_THAT(w.start(*w.a, "a1"), IsOk());
  w.sim.rt->advance(1min);

  Result<TaskOutcome> a1 = w.a->agents->outcome("a1");
  Result<TaskOutcome> b1 = w.b->agents->outcome("b1");
  ASSERT_THAT(a1, IsOk());
  ASSERT_THAT(b1, IsOk());
  EXPECT_EQ(a1->status, TaskStatus::kSucceeded) << a1->reason;
  EXPECT_EQ(a1->restarts, 1) << "resumed once, under the new supervisor";
  EXPECT_EQ(b1->status, TaskStatus::kSucceeded) << b1->reason;
  EXPECT_EQ(b1->restarts, 0) << "group b did not notice";
  EXPECT_TRUE(w.sim.rt->alive(root_pid));
}

TEST(AgentGroups, WithResumeOnStartARestartedGroupResumesItsTasksByItself) {
  GroupsWorld w({.resume_on_start = true});
  SupervisorSpec root{.name = "agents", .strategy = Strategy::kOneForOne, .intensity = 3, .period = 60s};
  root.children = {w.a->agents->supervisor_child("group-a")};
  Pid root_pid = start_supervisor(*w.sim.rt, root).value();
  ASSERT_THAT(w.start(*w.a, "a1"), IsOk());
  ASSERT_THAT(w.start(*w.a, "a2"), IsOk());
  w.sim.rt->advance(1s);
  std::vector<ChildInfo> kids = w.children(root_pid);
  ASSERT_EQ(kids.size(), 1u);
  w.sim.rt->send_exit(kids[0].pid, ExitReason::kill());
  w.sim.rt->advance(1min);  // nobody starts them: the new supervisor's resumer does
  for (const char* id : {"a1", "a2"}) {
    Result<TaskOutcome> out = w.a->agents->outcome(id);
    ASSERT_THAT(out, IsOk()) << id;
    EXPECT_EQ(out->status, TaskStatus::kSucceeded) << id << ": " << out->reason;
    EXPECT_EQ(out->restarts, 1) << id;
  }
}

// start() returns when the task's process is spawned, maybe before it has created its
// workflow: a wait() at once must wait for it, not answer not_found (seen in the example).
TEST(AgentGroups, WaitRightAfterStartWaitsForTheTask) {
  int not_found = 0;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    GroupsWorld w({}, seed);
    auto waited = std::make_shared<std::optional<Result<TaskOutcome>>>();
    Agents* agents = w.a->agents.get();
    const std::string agent = w.a->agent;
    w.sim.spawn([agents, agent, waited](Context& ctx) -> Task<> {
      Result<Pid> sup = agents->start_supervisor(ctx);
      if (!sup.ok()) co_return;
      Result<Pid> started = co_await agents->start(ctx, agent, "t", "go");
      if (!started.ok()) co_return;
      waited->emplace(co_await agents->wait(ctx, "t"));
    });
    w.sim.rt->advance(1min);
    ASSERT_TRUE(waited->has_value()) << "seed " << seed;
    if (!waited->value().ok()) {
      ++not_found;
      ADD_FAILURE() << "seed " << seed << ": " << waited->value().error().to_string();
      continue;
    }
    EXPECT_EQ(waited->value()->status, TaskStatus::kSucceeded) << "seed " << seed;
  }
  EXPECT_EQ(not_found, 0);
}

TEST(AgentGroups, StartSupervisorIsRefusedWhileOneRunsAndAllowedOnceItIsGone) {
  GroupsWorld w;
  auto first = std::make_shared<std::optional<Result<Pid>>>();
  auto second = std::make_shared<std::optional<Result<Pid>>>();
  Agents* agents = w.a->agents.get();
  Pid owner = w.sim.spawn([agents, first, second](Context& ctx) -> Task<> {
    first->emplace(agents->start_supervisor(ctx));
    second->emplace(agents->start_supervisor(ctx));
    (void)co_await ctx.receive();  // holds the link until killed
  });
  w.sim.rt->run_until_idle();
  ASSERT_TRUE(first->has_value() && second->has_value());
  ASSERT_THAT(**first, IsOk());
  EXPECT_THAT(**second, StatusIs(ErrorKind::kAlreadyExists, "runs already"));
  w.sim.rt->send_exit(owner, ExitReason::kill());  // the supervisor dies with its linked owner
  w.sim.rt->run_until_idle();
  EXPECT_FALSE(w.sim.rt->alive(***first));

  auto again = std::make_shared<std::optional<Result<Pid>>>();
  w.sim.spawn([agents, again](Context& ctx) -> Task<> {
    again->emplace(agents->start_supervisor(ctx));
    (void)co_await ctx.receive();
  });
  w.sim.rt->run_until_idle();
  ASSERT_TRUE(again->has_value());
  EXPECT_THAT(**again, IsOk());
  ASSERT_THAT(w.start(*w.a, "t1"), IsOk());
  w.sim.rt->advance(1min);
  Result<TaskOutcome> t1 = w.a->agents->outcome("t1");
  ASSERT_THAT(t1, IsOk());
  EXPECT_EQ(t1->status, TaskStatus::kSucceeded) << t1->reason;
}

}  // namespace
}  // namespace nines::agent
