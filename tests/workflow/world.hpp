// The workflow tests' world: a deterministic runtime, a memory store and an engine on them.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "nines/store/memory_store.hpp"
#include "nines/workflow/workflow.hpp"
#include "runtime/test_util.hpp"

namespace nines::testing {

// A deterministic runtime, a memory store and an engine on them. restart() models a crash
// and restart of the program: every process is gone, the store keeps what was committed.
struct World {
  explicit World(std::uint64_t first_seed = 1) : seed(first_seed) {
    store = make_memory_store().value();
    start();
  }
  void start() {
    sim = std::make_unique<SimRuntime>(seed++);
    engine = WorkflowEngine::create(sim->env, *store).value();
    for (auto& [kind, body] : kinds) ASSERT_TRUE(engine->register_kind(kind, body).ok());
  }
  void restart() {
    sim.reset();  // destroys every process mid-await, as kill -9 would
    engine.reset();
    store->crash();
    start();
  }
  void add_kind(const std::string& kind, WorkflowEngine::Body body) {
    kinds[kind] = body;
    ASSERT_TRUE(engine->register_kind(kind, std::move(body)).ok());
  }
  // Runs workflow `id` in a process until it ends or `time` of virtual time passes.
  std::optional<Result<std::string>> run(const std::string& kind, const std::string& id, std::string input = "",
                                         Duration time = std::chrono::hours(1)) {
    auto out = std::make_shared<std::optional<Result<std::string>>>();
    sim->spawn([this, out, kind, id, input](Context& ctx) -> Task<> {
      out->emplace(co_await engine->run(ctx, kind, id, input));
    });
    sim->rt->advance(time);
    return *out;
  }
  WorkflowRecord record(const std::string& id) { return store->get_workflow(id).value(); }

  // Destroyed bottom-up: processes (sim) before the engine they use, the store last.
  std::uint64_t seed;
  std::unique_ptr<MemoryStore> store;
  std::unique_ptr<WorkflowEngine> engine;
  std::unique_ptr<SimRuntime> sim;
  std::map<std::string, WorkflowEngine::Body> kinds;
};

}  // namespace nines::testing
