// The agent tests' world: a deterministic runtime, a memory store, a workflow engine, the sim
// model behind a router, native tools over a fake ledger, and Agents on them. restart() models
// kill -9 of the whole program: every process is gone, the store keeps what was committed.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nines/agent/agent.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/store/memory_store.hpp"
#include "nines/workflow/workflow.hpp"
#include "runtime/test_util.hpp"
#include "workflow/fake_ledger.hpp"

namespace nines::test {

// The tools' side effects and calls, shared across restarts (they model the outside world).
struct ToolWorld {
  FakeLedger ledger;
  std::map<std::string, int> calls;  // by tool name: call() attempts that started
  std::map<std::string, int> alive;  // by tool name: calls whose frame still exists
  std::vector<std::string> log;      // "tool(args)" in the order calls started
};

// Counts a live call frame; destroyed with the frame (a killed process's too).
struct AliveGuard {
  std::map<std::string, int>* alive;
  std::string name;
  AliveGuard(std::map<std::string, int>* a, std::string n) : alive(a), name(std::move(n)) { ++(*alive)[name]; }
  ~AliveGuard() { --(*alive)[name]; }
  AliveGuard(const AliveGuard&) = delete;
  AliveGuard& operator=(const AliveGuard&) = delete;
};

inline constexpr const char* kLookupSchema =
    R"({"type":"object","properties":{"id":{"type":"string"}},"required":["id"],"additionalProperties":false})";
inline constexpr const char* kChargeSchema =
    R"({"type":"object","properties":{"reference":{"type":"string"},"amount":{"type":"integer","minimum":1}},
        "required":["reference","amount"]})";

struct AgentWorld {
  struct Route {
    std::string sim_config;  // SimModel JSON
    std::string name;
  };

  explicit AgentWorld(std::uint64_t first_seed = 1) : seed(first_seed) { store = make_memory_store().value(); }

  // The tools every test may use: lookup (read-only, sleeps `lookup_ms` of virtual time),
  // charge (idempotent, applies on the ledger with the key), charge_unsafe (unsafe, no key),
  // slow (read-only, hangs for an hour; timeout 1 s), flaky (read-only, fails transiently).
  std::vector<std::shared_ptr<agent::Tool>> make_tools() {
    std::vector<std::shared_ptr<agent::Tool>> out;
    auto tw = tools_world;
    auto lookup_ms = lookup_delay;
    out.push_back(agent::make_native_tool(
                      {.name = "lookup",
                       .description = "Looks up a record by id",
                       .parameters_schema_json = kLookupSchema,
                       .nature = EffectNature::kReadOnly},
                      [tw, lookup_ms](Context& c, const agent::ToolInvocation& inv) -> Task<Result<std::string>> {
                        ++tw->calls["lookup"];
                        tw->log.push_back("lookup(" + inv.arguments_json + ")");
                        AliveGuard g(&tw->alive, "lookup");
                        if (lookup_ms.count() > 0) {
                          auto s = co_await c.sleep(lookup_ms);
                          if (!s.ok()) co_return s.error();
                        }
                        co_return "record for " + inv.arguments_json;
                      })
                      .value());
    out.push_back(
        agent::make_native_tool({.name = "charge",
                                 .description = "Charges an amount once per reference",
                                 .parameters_schema_json = kChargeSchema,
                                 .nature = EffectNature::kIdempotent},
                                [tw](Context& c, const agent::ToolInvocation& inv) -> Task<Result<std::string>> {
                                  ++tw->calls["charge"];
                                  tw->log.push_back("charge(" + inv.arguments_json + ")");
                                  AliveGuard g(&tw->alive, "charge");
                                  auto s = co_await c.sleep(std::chrono::milliseconds(500));
                                  if (!s.ok()) co_return s.error();
                                  co_return tw->ledger.apply_idempotent(inv.idempotency_key);
                                })
            .value());
    out.push_back(
        agent::make_native_tool({.name = "charge_unsafe",
                                 .description = "Charges an amount (no idempotency)",
                                 .parameters_schema_json = kChargeSchema,
                                 .nature = EffectNature::kUnsafe},
                                [tw](Context& c, const agent::ToolInvocation& inv) -> Task<Result<std::string>> {
                                  ++tw->calls["charge_unsafe"];
                                  AliveGuard g(&tw->alive, "charge_unsafe");
                                  auto s = co_await c.sleep(std::chrono::milliseconds(500));
                                  if (!s.ok()) co_return s.error();
                                  co_return tw->ledger.apply_unsafe(inv.task_id + "/" + inv.call_id);
                                })
            .value());
    out.push_back(agent::make_native_tool({.name = "slow",
                                           .description = "Never answers",
                                           .parameters_schema_json = R"({"type":"object"})",
                                           .nature = EffectNature::kReadOnly,
                                           .timeout = std::chrono::seconds(1),
                                           .retry = RetryOptions{.max_attempts = 1}},
                                          [tw](Context& c, const agent::ToolInvocation&) -> Task<Result<std::string>> {
                                            ++tw->calls["slow"];
                                            AliveGuard g(&tw->alive, "slow");
                                            auto s = co_await c.sleep(std::chrono::hours(1));
                                            if (!s.ok()) co_return s.error();
                                            co_return std::string("late");
                                          })
                      .value());
    out.push_back(agent::make_native_tool(
                      {.name = "flaky",
                       .description = "Always fails for now",
                       .parameters_schema_json = R"({"type":"object"})",
                       .nature = EffectNature::kReadOnly,
                       .retry = RetryOptions{.max_attempts = 2, .backoff = Backoff::constant(std::chrono::seconds(1))}},
                      [tw](Context&, const agent::ToolInvocation&) -> Task<Result<std::string>> {
                        ++tw->calls["flaky"];
                        co_return Error(ErrorKind::kTransient, "backend 503");
                      })
                      .value());
    out.push_back(
        agent::make_native_tool({.name = "refund",
                                 .description = "Refunds an amount (an operator approves each refund)",
                                 .parameters_schema_json = kChargeSchema,
                                 .nature = EffectNature::kIdempotent,
                                 .requires_approval = true},
                                [tw](Context&, const agent::ToolInvocation& inv) -> Task<Result<std::string>> {
                                  ++tw->calls["refund"];
                                  co_return tw->ledger.apply_idempotent(inv.idempotency_key);
                                })
            .value());
    for (auto& t : extra_tools) out.push_back(t);
    return out;
  }

  // Builds everything on a fresh runtime (the store is kept).
  void start() {
    sim = std::make_unique<SimRuntime>(seed++);
    engine = WorkflowEngine::create(sim->env, *store).value();
    auto registry = agent::ToolRegistry::create(sim->env, make_tools());
    ASSERT_TRUE(registry.ok()) << registry.error().to_string();
    tools = *registry;
    agents = agent::Agents::create(sim->env, *engine, tools).value();
    agents->add_observer([this](const agent::AgentEvent& e) { events.push_back(e); });
    llm::RouterOptions ro{.name = "chain"};
    for (std::size_t i = 0; i < routes.size(); ++i) {
      if (!models[i]) models[i] = llm::SimModel::from_json(routes[i].sim_config).value();  // kept across restarts
      llm::ModelRouteOptions r{.name = routes[i].name,
                               .model = "sim-" + routes[i].name,
                               .client = std::make_shared<llm::SimChatModel>(models[i]),
                               .context_window_tokens = route_window,
                               .max_output_tokens = 1024};
      r.retry.max_attempts = 3;
      r.retry.backoff = Backoff::full_jitter(std::chrono::milliseconds(100), std::chrono::seconds(2));
      ro.chain.push_back(std::move(r));
    }
    router = std::shared_ptr<llm::Router>(llm::Router::create(sim->env, ro).value());
    agent::AgentOptions a = agent_options;
    a.router = router;
    Status s = agents->add_agent(a);
    ASSERT_TRUE(s.ok()) << s.error().to_string();
  }

  void add_route(std::string name, std::string sim_config) {
    routes.push_back({std::move(sim_config), std::move(name)});
    models.emplace_back();
  }

  void restart() {
    sim.reset();  // every process destroyed mid-await, as kill -9 would
    agents.reset();
    router.reset();
    engine.reset();
    store->crash();
    start();
  }

  // Runs the task in a process until it ends or `time` of virtual time passes.
  std::optional<agent::TaskOutcome> run(const std::string& id, std::string input = "help",
                                        Duration time = std::chrono::hours(1)) {
    auto out = std::make_shared<std::optional<agent::TaskOutcome>>();
    sim->spawn([this, out, id, input](Context& ctx) -> Task<> {
      out->emplace(co_await agents->run(ctx, agent_options.name, id, input));
    });
    sim->rt->advance(time);
    return *out;
  }

  std::uint64_t model_calls(std::size_t route = 0) const { return models[route]->counters().calls; }

  std::vector<std::string> event_types() const {
    std::vector<std::string> out;
    for (const auto& e : events) out.emplace_back(agent::to_string(e.type));
    return out;
  }

  std::uint64_t seed;
  std::unique_ptr<MemoryStore> store;
  std::shared_ptr<ToolWorld> tools_world = std::make_shared<ToolWorld>();
  Duration lookup_delay = std::chrono::milliseconds(0);
  std::int64_t route_window = 128000;  // every route's context window (ModelRouteOptions)
  std::vector<std::shared_ptr<agent::Tool>> extra_tools;
  std::vector<Route> routes;
  std::vector<std::shared_ptr<llm::SimModel>> models;
  agent::AgentOptions agent_options{.name = "helper",
                                    .system_prompt = "You are a careful assistant.",
                                    .tools = {"lookup", "charge", "charge_unsafe", "slow", "flaky", "refund"}};
  std::vector<agent::AgentEvent> events;

  // Destroyed bottom-up: processes (sim) first, the store last.
  std::unique_ptr<WorkflowEngine> engine;
  std::shared_ptr<agent::ToolRegistry> tools;
  std::shared_ptr<llm::Router> router;
  std::unique_ptr<agent::Agents> agents;
  std::unique_ptr<SimRuntime> sim;
};

}  // namespace nines::test
