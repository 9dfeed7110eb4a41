// The whole-system agent simulation (agent_sim.hpp): one seed's world, its chaos, and the
// invariant checker.
#include "agent/agent_sim.hpp"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/sim_tools.hpp"
#include "nines/agent/agent.hpp"
#include "nines/llm/message.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/runtime/supervisor.hpp"
#include "nines/store/memory_store.hpp"
#include "nines/workflow/workflow.hpp"
#include "runtime/test_util.hpp"

namespace nines::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

// The plan's own draws (which tasks, which crashes, when), apart from the runtime's, so that
// the plan of a seed does not depend on how the runtime used its stream.
struct PlanRng {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : next() % n; }
  bool chance(int percent) { return below(100) < static_cast<std::uint64_t>(percent); }
};

struct AgentDef {
  std::string name;
  std::vector<std::string> tools;
  std::string scenario;  // the "scenario" JSON array of the sim config
  agent::Budget budget;
  double price_in = 0, price_out = 0;  // per Mtok, both routes
  std::int64_t max_output_tokens = 256;
  int max_invalid_tool_calls = 5;  // 0: the first invalid call fails the task
};

std::vector<AgentDef> agent_defs() {
  std::vector<AgentDef> d;
  d.push_back({.name = "shopper",
               .tools = {"lookup", "charge", "reserve", "notify"},
               .scenario = R"([
                 {"tool_calls": [{"name": "lookup", "arguments": {"id": "order-1"}}]},
                 {"tool_calls": [{"name": "charge", "arguments": {"reference": "r1", "amount": 5}},
                                 {"name": "reserve", "arguments": {"reference": "s1", "amount": 1}}]},
                 {"tool_calls": [{"name": "notify", "arguments": {"reference": "n1", "amount": 1}}]},
                 {"answer": "charged, reserved and notified"}])",
               .budget = {.max_steps = 8}});
  std::string research = "[";
  for (int i = 0; i < 8; ++i) {
    research += R"({"tool_calls": [{"name": "lookup", "arguments": {"id": "doc-)" + std::to_string(i) + R"("}}]},)";
  }
  research += R"({"answer": "the summary of eight documents"}])";
  d.push_back({.name = "researcher",
               .tools = {"lookup", "charge"},
               .scenario = research,
               .budget = {.max_steps = 20, .max_tokens = 6000, .max_cost_usd = 1.5},
               .price_in = 1000,
               .price_out = 2000,
               .max_invalid_tool_calls = 0});
  d.push_back({.name = "looper",
               .tools = {"lookup", "reserve"},
               .scenario = R"([
                 {"tool_calls": [{"name": "reserve", "arguments": {"reference": "l1", "amount": 2}}]},
                 {"tool_calls": [{"name": "lookup", "arguments": {"id": "same"}}]},
                 {"tool_calls": [{"name": "lookup", "arguments": {"id": "same"}}]},
                 {"tool_calls": [{"name": "lookup", "arguments": {"id": "same"}}]},
                 {"answer": "best guess"}])",
               .budget = {.max_steps = 10, .max_model_calls = 14}});
  return d;
}

std::string sim_config(std::uint64_t seed, const std::string& scenario, bool primary) {
  const char* faults = primary ? R"({
      "rate_limited": {"probability": 0.05, "retry_after_ms": 500},
      "server_error": {"probability": 0.04},
      "unavailable": {"probability": 0.02},
      "malformed_json": {"probability": 0.03},
      "hallucinated_tool": {"probability": 0.03},
      "invalid_tool_args": {"probability": 0.03},
      "loop": {"probability": 0.04},
      "timeout": {"probability": 0.01, "hang_ms": 30000}})"
                               : R"({
      "server_error": {"probability": 0.05},
      "hallucinated_tool": {"probability": 0.02},
      "invalid_tool_args": {"probability": 0.02},
      "loop": {"probability": 0.02}})";
  return R"({"seed": )" + std::to_string(seed) + R"(, "scenario": )" + scenario +
         R"(, "latency": {"first_byte": {"distribution": "uniform", "min_ms": 50, "max_ms": 600}}, "faults": )" +
         faults + "}";
}

struct TaskPlan {
  std::string id;
  const AgentDef* agent = nullptr;
  std::string input;
  bool supervised = true;
};

enum class Chaos { kKillTask, kKillSupervisor, kCancel };

struct Injection {
  Duration at;
  Chaos what;
  std::size_t task = 0;  // kKillTask, kCancel
};

struct Round {
  std::vector<Injection> injections;  // sorted by time
  bool resume_all = false;
  Duration crash_at{0};  // not the last round: the program crashes then
};

constexpr std::uint64_t kFnvOffset = 1469598103934665603ull;
constexpr std::uint64_t kFnvPrime = 1099511628211ull;

class Sim {
 public:
  explicit Sim(const AgentSimOptions& o) : o_(o), rng_{o.seed * 0x2545F4914F6CDD1Dull + 17} {
    r_.seed = o.seed;
    r_.trace_hash = kFnvOffset;
    store_ = make_memory_store().value();
    ledger_ = std::make_shared<SimLedger>();
    ledger_->on_apply = [this](const SimLedger::Application& a) {
      line("ledger apply " + a.tool + " task " + a.task_id + " call " + a.call_id + " key " + a.key);
    };
    tool_stats_ = std::make_shared<SimToolStats>();
    defs_ = agent_defs();
    for (std::size_t a = 0; a < defs_.size(); ++a) {
      for (int route = 0; route < 2; ++route) {
        const std::uint64_t model_seed = o.seed * 131 + a * 7 + static_cast<std::uint64_t>(route);
        models_.push_back(llm::SimModel::from_json(sim_config(model_seed, defs_[a].scenario, route == 0)).value());
      }
    }
  }

  AgentSimResult run();

 private:
  void plan();
  bool build(std::size_t round);
  void tear_down();
  Task<> driver(Context& ctx, std::size_t round);
  void spawn_keeper(std::size_t task);
  bool finished(std::size_t task) const;
  bool all_finished() const;
  void check();
  void fail(std::string what) { r_.violations.push_back("seed " + std::to_string(o_.seed) + ": " + std::move(what)); }
  void line(const std::string& text) {
    char head[48];
    const double s = std::chrono::duration<double>((sim_ ? sim_->env.now() : now_) - start_).count();
    std::snprintf(head, sizeof head, "%10.3f s  r%zu  ", s, round_);
    std::string l = head + text;
    for (unsigned char c : l) r_.trace_hash = (r_.trace_hash ^ c) * kFnvPrime;
    r_.trace_hash = (r_.trace_hash ^ '\n') * kFnvPrime;
    if (o_.trace) r_.trace.push_back(std::move(l));
  }

  const AgentSimOptions& o_;
  AgentSimResult r_;
  PlanRng rng_;
  std::vector<AgentDef> defs_;
  std::vector<TaskPlan> tasks_;
  std::vector<Round> rounds_;
  std::unique_ptr<MemoryStore> store_;
  std::shared_ptr<SimLedger> ledger_;
  std::shared_ptr<SimToolStats> tool_stats_;
  std::vector<std::shared_ptr<llm::SimModel>> models_;  // agent a, route r at 2a + r; kept across crashes
  std::size_t round_ = 0;
  TimePoint start_{};  // the first program's start (traces show the time since)
  TimePoint now_{};    // the virtual time carried across program crashes
  std::size_t baseline_processes_ = 0;
  // What ran, for the checker: task_finished events by task, events during the stability run.
  std::map<std::string, std::vector<std::string>> finished_events_;
  bool stability_run_ = false;
  int events_in_stability_run_ = 0;
  // A keeper's current child, by task (to kill it).
  std::map<std::size_t, Pid> keeper_child_;
  std::set<std::size_t> kept_;  // tasks with a keeper in this incarnation
  bool driver_done_ = false;

  // Rebuilt on every program start, destroyed by a crash (processes first).
  std::unique_ptr<WorkflowEngine> engine_;
  std::shared_ptr<agent::ToolRegistry> tools_;
  std::vector<std::shared_ptr<llm::Router>> routers_;
  std::unique_ptr<agent::Agents> agents_;
  std::unique_ptr<SimRuntime> sim_;
};

void Sim::plan() {
  const std::size_t n = 2 + rng_.below(3);
  for (std::size_t i = 0; i < n; ++i) {
    TaskPlan t;
    t.id = "t" + std::to_string(i);
    t.agent = &defs_[rng_.below(defs_.size())];
    t.input = "task " + t.id + " of seed " + std::to_string(o_.seed);
    t.supervised = rng_.chance(65);
    tasks_.push_back(std::move(t));
  }
  // Program crashes: none in about a third of the seeds; always one with fault points on (the
  // last round runs with them off, and a dead committer needs a restart).
  std::size_t crashes = rng_.below(3);
  if (o_.faults.any() && crashes == 0) crashes = 1;
  for (std::size_t k = 0; k <= crashes; ++k) {
    Round round;
    round.resume_all = k > 0 && rng_.chance(50);
    const std::size_t chaos = rng_.below(4);
    const Duration span = k < crashes ? std::chrono::milliseconds(500 + rng_.below(12000)) : 15s;
    for (std::size_t c = 0; c < chaos; ++c) {
      const std::uint64_t u = rng_.below(100);
      Injection in{.at = std::chrono::milliseconds(rng_.below(static_cast<std::uint64_t>(span / 1ms))),
                   .what = u < 60   ? Chaos::kKillTask
                           : u < 80 ? Chaos::kKillSupervisor
                                    : Chaos::kCancel,
                   .task = rng_.below(n)};
      if (in.what == Chaos::kCancel && !rng_.chance(40)) in.what = Chaos::kKillTask;  // cancels are rarer
      round.injections.push_back(in);
    }
    std::sort(round.injections.begin(), round.injections.end(),
              [](const Injection& a, const Injection& b) { return a.at < b.at; });
    round.crash_at = span;
    rounds_.push_back(std::move(round));
  }
}

bool Sim::build(std::size_t round) {
  round_ = round;
  sim_ = std::make_unique<SimRuntime>(o_.seed * 7919 + round + 1);
  if (round == 0) {
    start_ = now_ = sim_->env.now();
  } else {
    sim_->env.set_now(now_);  // the clock goes on across a crash (the wall clock of a real restart)
  }
  baseline_processes_ = sim_->rt->process_count();
  const bool last = round + 1 == rounds_.size();
  sim_->env.set_faults(last ? FaultOptions{} : o_.faults);
  engine_ = WorkflowEngine::create(sim_->env, *store_).value();
  auto registry = agent::ToolRegistry::create(sim_->env, make_sim_tools(ledger_, tool_stats_, true));
  if (!registry.ok()) {
    fail("tool registry: " + registry.error().to_string());
    return false;
  }
  tools_ = *registry;
  auto agents = agent::Agents::create(
      sim_->env, *engine_, tools_,
      {.restart_min_delay = 200ms, .restart_max_delay = 5s, .unjournaled_tools_for_testing = o_.unjournaled_tools});
  if (!agents.ok()) {
    fail("agents: " + agents.error().to_string());
    return false;
  }
  agents_ = std::move(*agents);
  agents_->add_observer([this](const agent::AgentEvent& e) {
    if (stability_run_) ++events_in_stability_run_;
    if (e.type == agent::AgentEvent::Type::kTaskFinished) finished_events_[e.task_id].push_back(e.detail);
    line("event " + e.task_id + " " + e.agent + " step " + std::to_string(e.step) + " " +
         std::string(agent::to_string(e.type)) + (e.tool.empty() ? "" : " " + e.tool) +
         (e.detail.empty() ? "" : " [" + e.detail + "]"));
  });
  routers_.clear();
  for (std::size_t a = 0; a < defs_.size(); ++a) {
    llm::RouterOptions ro{.name = defs_[a].name + "-chain"};
    for (int route = 0; route < 2; ++route) {
      llm::ModelRouteOptions r{.name = route == 0 ? "sim/primary" : "sim/backup",
                               .model = "sim",
                               .client = std::make_shared<llm::SimChatModel>(models_[2 * a + route]),
                               .context_window_tokens = 128000,
                               .max_output_tokens = 1024};
      r.retry.max_attempts = 2;
      r.retry.backoff = Backoff::full_jitter(100ms, 1s);
      r.attempt_timeout = 10s;
      ro.chain.push_back(std::move(r));
    }
    auto router = llm::Router::create(sim_->env, ro);
    if (!router.ok()) {
      fail("router: " + router.error().to_string());
      return false;
    }
    routers_.push_back(std::shared_ptr<llm::Router>(std::move(*router)));
    agent::AgentOptions ao{.name = defs_[a].name,
                           .router = routers_.back(),
                           .system_prompt = "You are the " + defs_[a].name + ".",
                           .tools = defs_[a].tools,
                           .budget = defs_[a].budget,
                           .max_invalid_tool_calls = defs_[a].max_invalid_tool_calls,
                           .max_output_tokens = defs_[a].max_output_tokens};
    if (defs_[a].price_in > 0 || defs_[a].price_out > 0) {
      for (const char* route : {"sim/primary", "sim/backup"}) {
        ao.prices[route] = {.input_per_mtok = defs_[a].price_in, .output_per_mtok = defs_[a].price_out};
      }
    }
    Status s = agents_->add_agent(ao);
    if (!s.ok()) {
      fail("add_agent: " + s.error().to_string());
      return false;
    }
  }
  keeper_child_.clear();
  kept_.clear();
  return true;
}

void Sim::tear_down() {
  if (!sim_) return;
  r_.engine_faults += sim_->env.faults_fired();
  r_.effects_checked += engine_->stats().effects_checked;
  now_ = sim_->env.now();
  sim_.reset();  // every process destroyed mid-await, as kill -9 would
  agents_.reset();
  routers_.clear();
  tools_.reset();
  engine_.reset();
}

bool Sim::finished(std::size_t task) const {
  Result<WorkflowRecord> w = store_->get_workflow(tasks_[task].id);
  return w.ok() && w->status != WorkflowStatus::kRunning;  // needs_attention included: it waits for an operator
}

bool Sim::all_finished() const {
  for (std::size_t i = 0; i < tasks_.size(); ++i) {
    if (!finished(i)) return false;
  }
  return true;
}

// A process that runs the task until it has an outcome: each run in a linked child (a tool
// crash kills the process running the workflow), run again after a crash or a refusal (another
// process runs it now) with a short pause.
void Sim::spawn_keeper(std::size_t task) {
  if (kept_.contains(task)) return;
  kept_.insert(task);
  (void)sim_->rt->spawn(
      [this, task](Context& ctx) -> Task<> {
        ctx.set_trap_exit(true);
        const TaskPlan& t = tasks_[task];
        for (int attempt = 0; attempt < 400 && !finished(task); ++attempt) {
          Result<Pid> child = ctx.spawn_link(
              [this, &t](Context& c) -> Task<> { (void)co_await agents_->run(c, t.agent->name, t.id, t.input); });
          if (!child.ok()) co_return;
          keeper_child_[task] = *child;
          for (;;) {  // until this child's exit
            Message m = co_await ctx.receive();
            const Exit* e = m.get<Exit>();
            if (e != nullptr && e->from == *child) break;
          }
          keeper_child_.erase(task);
          if (finished(task)) break;
          auto slept = co_await ctx.sleep(std::chrono::milliseconds(500 + ctx.env().random_below(1000)));
          if (!slept.ok()) co_return;
        }
      },
      {.trap_exit = true});
}

Task<> Sim::driver(Context& ctx, std::size_t round) {
  ctx.set_trap_exit(true);
  const Round& plan = rounds_[round];
  const bool last = round + 1 == rounds_.size();
  const TimePoint start = ctx.now();
  Result<Pid> sup = agents_->start_supervisor(ctx);
  if (!sup.ok()) line("start_supervisor: " + sup.error().to_string());
  if (plan.resume_all) {
    Result<Pid> resumer = engine_->resume_all(ctx);
    line(resumer.ok() ? "resume_all" : "resume_all failed: " + resumer.error().to_string());
  }
  for (std::size_t i = 0; i < tasks_.size(); ++i) {
    if (finished(i)) continue;
    const bool exists = store_->get_workflow(tasks_[i].id).ok();
    if (plan.resume_all && exists) continue;  // the resumer runs it
    if (tasks_[i].supervised && sup.ok()) {
      Result<Pid> started = co_await agents_->start(ctx, tasks_[i].agent->name, tasks_[i].id, tasks_[i].input);
      if (started.ok()) continue;
      line("start " + tasks_[i].id + ": " + started.error().to_string());
    }
    spawn_keeper(i);
  }
  bool sup_alive = sup.ok();
  std::size_t next = 0;
  bool rescued = false;
  for (;;) {
    const Duration now = ctx.now() - start;
    if (next < plan.injections.size() && plan.injections[next].at <= now) {
      const Injection& in = plan.injections[next++];
      const TaskPlan& t = tasks_[in.task];
      switch (in.what) {
        case Chaos::kKillTask: {
          if (auto it = keeper_child_.find(in.task); it != keeper_child_.end()) {
            line("chaos: kill the process running " + t.id);
            ++r_.task_kills;
            ctx.runtime().send_exit(it->second, ExitReason::kill());
          } else if (sup_alive) {
            Result<std::vector<ChildInfo>> children = co_await which_children(ctx, *sup);
            if (children.ok() && !children->empty()) {
              const std::size_t k = ctx.env().random_below(children->size());
              if ((*children)[k].pid != Pid{}) {
                line("chaos: kill supervised task process " + std::to_string(k) + " of " +
                     std::to_string(children->size()));
                ++r_.task_kills;
                ctx.runtime().send_exit((*children)[k].pid, ExitReason::kill());
              }
            }
          }
          break;
        }
        case Chaos::kKillSupervisor:
          if (sup_alive) {
            line("chaos: kill the task supervisor");
            ++r_.supervisor_kills;
            ctx.runtime().send_exit(*sup, ExitReason::kill());
          }
          break;
        case Chaos::kCancel: {
          Status s = agents_->cancel(t.id);
          line("chaos: cancel " + t.id + (s.ok() ? "" : ": " + s.error().to_string()));
          r_.cancels += s.ok();
          break;
        }
      }
      continue;
    }
    if (last && next == plan.injections.size()) {
      if (all_finished()) break;
      // Tasks nobody runs any more (a resumed run that crashed, a supervised process that
      // was refused): a keeper each, once the others had their time.
      if (!rescued && now > 2min) {
        rescued = true;
        for (std::size_t i = 0; i < tasks_.size(); ++i) {
          if (!finished(i)) {
            line("rescue " + tasks_[i].id);
            spawn_keeper(i);
          }
        }
      }
    }
    Duration wait = 1s;
    if (next < plan.injections.size()) wait = std::min(wait, plan.injections[next].at - now);
    std::optional<Message> m = co_await ctx.receive_for(std::max(wait, Duration(1ms)));
    if (!m) continue;
    if (const Exit* e = m->get<Exit>(); e != nullptr && sup_alive && e->from == *sup) {
      // Agents::start_supervisor runs once per Agents: its tasks go on in keepers.
      sup_alive = false;
      line("the task supervisor exited: " + e->reason.to_string());
      for (std::size_t i = 0; i < tasks_.size(); ++i) {
        if (tasks_[i].supervised && !finished(i)) spawn_keeper(i);
      }
    }
  }
  if (sup_alive) {
    ctx.send_exit(*sup, ExitReason::shutdown());
    for (;;) {
      std::optional<Message> m = co_await ctx.receive_for(1min);
      if (!m) break;
      if (const Exit* e = m->get<Exit>(); e != nullptr && e->from == *sup) break;
    }
  }
  driver_done_ = true;
}

AgentSimResult Sim::run() {
  plan();
  r_.tasks = static_cast<int>(tasks_.size());
  {
    std::string tasks;
    for (const TaskPlan& t : tasks_) tasks += " " + t.id + "=" + t.agent->name + (t.supervised ? "/sup" : "/run");
    line("plan:" + tasks + ", " + std::to_string(rounds_.size() - 1) + " program crashes" +
         (o_.unjournaled_tools ? ", tools unjournaled (broken variant)" : ""));
  }
  for (std::size_t round = 0; round < rounds_.size(); ++round) {
    if (round > 0) {
      line("chaos: program crash (kill -9): every process gone, the store keeps what was committed");
      ++r_.program_crashes;
      tear_down();
      store_->crash();
    }
    if (!build(round)) return r_;
    sim_->spawn([this, round](Context& ctx) -> Task<> { co_await driver(ctx, round); });
    if (round + 1 < rounds_.size()) {
      sim_->rt->advance(rounds_[round].crash_at);
      continue;
    }
    for (int i = 0; i < 24 * 60 && !driver_done_; ++i) sim_->rt->advance(1min);
    if (!driver_done_) fail("the tasks did not all end within a day of virtual time");
  }
  check();
  tear_down();
  return r_;
}

void Sim::check() {
  // Stable outcomes: running each task again returns its outcome and runs nothing.
  std::map<std::string, agent::TaskOutcome> recorded, again;
  for (const TaskPlan& t : tasks_) {
    Result<agent::TaskOutcome> o = agents_->outcome(t.id);
    if (!o.ok()) {
      fail(t.id + " has no outcome: " + o.error().to_string());
      continue;
    }
    recorded[t.id] = *o;
    ++r_.outcomes[std::string(agent::to_string(o->status))];
    line("outcome " + t.id + " " + std::string(agent::to_string(o->status)) + " steps " + std::to_string(o->steps) +
         " model_calls " + std::to_string(o->model_calls) + " tool_calls " + std::to_string(o->tool_calls) +
         (o->answer.empty() ? "" : " answer '" + o->answer + "'"));
  }
  stability_run_ = true;
  bool stable_done = false;
  sim_->spawn([this, &again, &stable_done](Context& ctx) -> Task<> {
    for (const TaskPlan& t : tasks_) again[t.id] = co_await agents_->run(ctx, t.agent->name, t.id, t.input);
    stable_done = true;
  });
  sim_->rt->advance(1min);
  stability_run_ = false;
  if (!stable_done) fail("running the finished tasks again did not return");
  if (events_in_stability_run_ != 0) {
    fail("running the finished tasks again ran something (" + std::to_string(events_in_stability_run_) + " events)");
  }
  if (sim_->rt->process_count() != baseline_processes_) {
    fail(std::to_string(sim_->rt->process_count() - baseline_processes_) + " processes left behind");
  }

  const std::set<agent::TaskStatus> terminal = {agent::TaskStatus::kSucceeded,      agent::TaskStatus::kFailed,
                                                agent::TaskStatus::kBudgetExceeded, agent::TaskStatus::kLoopDetected,
                                                agent::TaskStatus::kNeedsAttention, agent::TaskStatus::kCancelled};
  // Model call ids in each task's history, for the ledger check.
  std::map<std::pair<std::string, std::string>, int> calls_in_history;
  for (const TaskPlan& t : tasks_) {
    auto rec = recorded.find(t.id);
    if (rec == recorded.end()) continue;
    const agent::TaskOutcome& out = rec->second;
    const std::string status(agent::to_string(out.status));
    if (!terminal.contains(out.status)) fail(t.id + " ended " + status + ": " + out.reason);
    if (stable_done && (again[t.id].status != out.status || again[t.id].answer != out.answer)) {
      fail(t.id + " ran again ended " + std::string(agent::to_string(again[t.id].status)) + ", recorded " + status);
    }
    const auto& fin = finished_events_[t.id];
    if (!fin.empty() && out.status != agent::TaskStatus::kNeedsAttention && fin.back() != status) {
      fail(t.id + " last task_finished event says " + fin.back() + ", the outcome " + status);
    }

    // Steps, effects and history: nothing recorded twice.
    std::vector<StepRecord> steps = store_->load_steps(t.id).value();
    std::vector<EffectRecord> effects = store_->load_effects(t.id).value();
    std::set<std::int64_t> seqs;
    for (const StepRecord& s : steps) {
      if (!seqs.insert(s.seq).second) fail(t.id + " step " + std::to_string(s.seq) + " recorded twice");
    }
    std::set<std::string> keys;
    int attention = 0;
    for (const EffectRecord& e : effects) {
      const std::int64_t seq = std::stoll(e.effect_id.substr(0, e.effect_id.find(':')));
      if (!seqs.insert(seq).second) fail(t.id + " effect " + e.effect_id + " shares its step number");
      if (!keys.insert(e.idempotency_key).second) fail(t.id + " effect key " + e.idempotency_key + " twice");
      attention += e.state == EffectState::kNeedsAttention;
    }
    if (out.status == agent::TaskStatus::kNeedsAttention && attention == 0) {
      fail(t.id + " needs attention without an effect in needs_attention");
    }
    std::vector<HistoryRecord> history = store_->read_history(t.id, 0, 100000).value();
    for (std::size_t i = 0; i < history.size(); ++i) {
      if (history[i].seq != static_cast<std::int64_t>(i)) {
        fail(t.id + " history seq " + std::to_string(history[i].seq) + " at position " + std::to_string(i));
        break;
      }
      Result<llm::Message> m = llm::decode_message(history[i].message);
      if (!m.ok()) {
        fail(t.id + " history " + std::to_string(i) + " does not decode: " + m.error().to_string());
        continue;
      }
      for (const llm::ToolCall& c : m->tool_calls) ++calls_in_history[{t.id, c.id}];
    }

    // Budgets: within the limits before the last model turn; totals = the recorded turns.
    const agent::Budget& b = t.agent->budget;
    std::int64_t turns = 0, model_calls = 0, tokens = 0, last_calls = 0, last_tokens = 0;
    double cost = 0, last_cost = 0;
    for (const StepRecord& s : steps) {
      if (s.name.rfind("model ", 0) != 0) continue;
      if (s.name != "model " + std::to_string(turns)) fail(t.id + " turn '" + s.name + "' out of order");
      json j = json::parse(s.result, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        fail(t.id + " turn record '" + s.name + "' is not JSON");
        continue;
      }
      last_calls = j.value("attempts", std::int64_t{1});
      last_tokens = j.value("in", std::int64_t{0}) + j.value("out", std::int64_t{0});
      last_cost = j.value("cost", 0.0);
      ++turns;
      model_calls += last_calls;
      tokens += last_tokens;
      cost += last_cost;
    }
    if (turns > 0) {
      if (b.max_steps > 0 && turns > b.max_steps) fail(t.id + " made " + std::to_string(turns) + " turns");
      if (b.max_model_calls > 0 && model_calls - last_calls + 1 > b.max_model_calls) {
        fail(t.id + " started a turn after " + std::to_string(model_calls - last_calls) + " model calls");
      }
      if (b.max_tokens > 0 && tokens - last_tokens > b.max_tokens) {
        fail(t.id + " spent " + std::to_string(tokens - last_tokens) + " tokens before its last turn");
      }
      if (b.max_cost_usd > 0 && cost - last_cost > b.max_cost_usd + 1e-9) {
        fail(t.id + " spent $" + std::to_string(cost - last_cost) + " before its last turn");
      }
    }
    // The outcome's totals (when the agent wrote it: not for needs_attention or an engine
    // failure) are the sums of the recorded turns.
    if (out.status != agent::TaskStatus::kNeedsAttention && out.steps + out.model_calls > 0 &&
        (out.steps != turns || out.model_calls != model_calls || out.input_tokens + out.output_tokens != tokens ||
         std::abs(out.cost_usd - cost) > 1e-9)) {
      fail(t.id + " outcome counts " + std::to_string(out.steps) + " turns, " + std::to_string(out.model_calls) +
           " calls, " + std::to_string(out.input_tokens + out.output_tokens) + " tokens; the records " +
           std::to_string(turns) + ", " + std::to_string(model_calls) + ", " + std::to_string(tokens));
    }
  }

  // The ledger: no effect applied twice.
  std::map<std::pair<std::string, std::string>, int> applied_per_call;
  for (const SimLedger::Application& a : ledger_->applications()) ++applied_per_call[{a.task_id, a.call_id}];
  for (const auto& [key, n] : ledger_->by_key()) {
    if (n > 1) fail("applied twice: key " + key + " applied " + std::to_string(n) + " times");
  }
  for (const auto& [call, n] : applied_per_call) {
    const int asked = calls_in_history[call];
    if (n > asked) {
      fail("applied twice: task " + call.first + " call " + call.second + " applied " + std::to_string(n) +
           " times, the model asked " + std::to_string(asked));
    }
  }
  r_.keys_resent = static_cast<std::uint64_t>(ledger_->keys_resent());
  r_.tool_faults = 0;
  for (const auto& [f, n] : tool_stats_->faults) r_.tool_faults += n;
  for (const auto& m : models_) {
    llm::SimCounters c = m->counters();
    r_.model_faults += c.calls - c.of(llm::SimFault::kNone);
  }
}

}  // namespace

AgentSimResult run_agent_sim(const AgentSimOptions& options) {
  Sim sim(options);
  return sim.run();
}

std::string agent_sim_replay_command(std::uint64_t seed, bool unjournaled) {
  return "nines sim agents --seed " + std::to_string(seed) + (unjournaled ? " --unjournaled" : "") + " --trace";
}

std::string format_agent_sim(const AgentSimResult& r) {
  std::string out;
  for (const std::string& l : r.trace) out += l + "\n";
  char buf[512];
  std::string outcomes;
  for (const auto& [status, n] : r.outcomes) outcomes += " " + status + "=" + std::to_string(n);
  std::snprintf(buf, sizeof buf,
                "seed %llu: %d tasks (%s ), %d program crashes, %d task kills, %d supervisor kills, %d cancels, "
                "%llu tool faults, %llu model faults, %llu engine faults, %llu checks, %llu keys re-sent; "
                "trace %016llx\n",
                static_cast<unsigned long long>(r.seed), r.tasks, outcomes.c_str(), r.program_crashes, r.task_kills,
                r.supervisor_kills, r.cancels, static_cast<unsigned long long>(r.tool_faults),
                static_cast<unsigned long long>(r.model_faults), static_cast<unsigned long long>(r.engine_faults),
                static_cast<unsigned long long>(r.effects_checked), static_cast<unsigned long long>(r.keys_resent),
                static_cast<unsigned long long>(r.trace_hash));
  out += buf;
  const char* names[] = {"every task has exactly one terminal outcome, stable when run again",
                         "no effect applied twice", "budgets overrun by at most the call in flight",
                         "no step recorded twice", "no process left behind"};
  if (r.violations.empty()) {
    for (const char* n : names) out += std::string("  ok    ") + n + "\n";
  } else {
    for (const std::string& v : r.violations) out += "  FAIL  " + v + "\n";
  }
  return out;
}

}  // namespace nines::test
