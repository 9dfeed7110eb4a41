// The workflow tests' world: a deterministic runtime, a memory store and an engine on them.
#pragma once

#include <gtest/gtest.h>

#include <pthread.h>

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "nines/store/memory_store.hpp"
#include "nines/workflow/workflow.hpp"
#include "runtime/test_util.hpp"

namespace nines::test {

// A store that forwards to another and says whether its commits are fast as told: the
// memory store's commits are fast (the engine may run them inline), which hides the
// committer thread; tests of grouping wrap it as slow.
class ForwardingStore : public Store {
 public:
  ForwardingStore(Store& inner, bool fast) : inner_(inner), fast_(fast) {}
  std::string_view backend() const override { return inner_.backend(); }
  bool fast_commits() const override { return fast_; }
  Status commit(const WriteBatch& b) override {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof name);
    if (std::string_view(name) == "nines-commit") on_committer_thread.fetch_add(1);
    return inner_.commit(b);
  }
  // Commits made on the workflow engine's committer thread (named "nines-commit").
  std::atomic<int> on_committer_thread{0};
  Result<WorkflowRecord> get_workflow(std::string_view id) override { return inner_.get_workflow(id); }
  Result<std::vector<WorkflowRecord>> list_workflows(WorkflowStatus s, std::string_view after,
                                                     std::size_t limit) override {
    return inner_.list_workflows(s, after, limit);
  }
  Result<std::vector<StepRecord>> load_steps(std::string_view id) override { return inner_.load_steps(id); }
  Result<std::vector<EffectRecord>> load_effects(std::string_view id) override { return inner_.load_effects(id); }
  Result<std::vector<EffectRecord>> load_pending_effects(std::size_t limit) override {
    return inner_.load_pending_effects(limit);
  }
  Result<HistoryView> load_history(std::string_view task, std::size_t max) override {
    return inner_.load_history(task, max);
  }
  Result<std::vector<HistoryRecord>> read_history(std::string_view task, std::int64_t from,
                                                  std::size_t limit) override {
    return inner_.read_history(task, from, limit);
  }
  Result<std::size_t> prune_finished(TimePoint older_than, std::size_t limit) override {
    return inner_.prune_finished(older_than, limit);
  }
  Result<int> schema_version() override { return inner_.schema_version(); }

 private:
  Store& inner_;
  bool fast_;
};

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

}  // namespace nines::test
