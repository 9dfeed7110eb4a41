// Supervisor tests. Every scenario runs on the deterministic runtime (one thread, virtual time
// moved only by run_until_idle/advance) and checks the supervision events and a log of worker
// starts and stops against OTP's documented semantics (shared/reference/otp-supervision.md)
// and the contract in supervisor.hpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <any>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "nines/runtime/supervisor.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using test::Log;
using test::SimRuntime;
using Type = SupervisionEventType;

// ---------------------------------------------------------------- test workers

// Messages a test worker obeys.
struct Crash {};   // it throws std::runtime_error("boom")
struct ExitWith {  // it ends with this reason (normal: returns)
  ExitReason reason;
};

// How a worker answers its supervisor's shutdown signal.
enum class OnShutdown {
  kObey,           // does not trap exits: dies with reason shutdown
  kTrapAndIgnore,  // traps exits and ignores them: only a kill stops it
  kTrapAndExit,    // traps exits and exits at once with the signal's reason
};

// Logs "stop <id>" however the process ends (return, throw, exit, kill).
struct LogOnExit {
  Log* log;
  std::string line;
  ~LogOnExit() { log->add(line); }
};

std::string reason_text(const ExitReason& r) { return r.kind == ExitReason::Kind::kCrash ? "crash" : r.to_string(); }

// One event as a short line: "exited b crash", "exited c shutdown by_sup", "restarted a", ...
std::string describe(const SupervisionEvent& e) {
  switch (e.type) {
    case Type::kSupervisorStarted: return "sup_started";
    case Type::kSupervisorStopped: return "stopped " + reason_text(e.reason);
    case Type::kChildStarted: return "started " + e.child_id;
    case Type::kChildExited:
      return "exited " + e.child_id + " " + reason_text(e.reason) + (e.by_supervisor ? " by_sup" : "");
    case Type::kChildRestarted: return "restarted " + e.child_id;
    case Type::kRestartDelayed: return "delayed " + e.child_id;
    case Type::kChildStartFailed: return "start_failed " + e.child_id;
    case Type::kIntensityExceeded: return "intensity_exceeded";
    case Type::kEscalated: return "escalated";
    case Type::kAutoShutdown: return "auto_shutdown";
  }
  return "?";
}

using Lines = std::vector<std::string>;

// The fault points every World turns on: none, unless a test (SupervisorUnderFaults) or
// NINES_SIM_FAULTS (core/fault.hpp's parse_fault_options) sets them.
FaultOptions& world_faults() {
  static FaultOptions faults = [] {
    const char* spec = std::getenv("NINES_SIM_FAULTS");
    return spec != nullptr ? parse_fault_options(spec).value() : FaultOptions{};
  }();
  return faults;
}

// A deterministic runtime, the events it emitted, a log of worker starts/stops and the latest
// pid of every child id.
class World {
 public:
  explicit World(std::uint64_t seed = 1) : sim(seed) {
    sub_ = rt().events().subscribe([this](const SupervisionEvent& e) { events.push_back(e); });
    sim.env.set_faults(world_faults());
  }
  ~World() { rt().events().unsubscribe(sub_); }

  Runtime& rt() { return *sim.rt; }
  TimePoint now() { return sim.env.now(); }
  std::size_t mark() const { return events.size(); }

  // A worker whose start function logs "start <id>" and records its pid.
  ChildSpec worker(std::string id, RestartType restart = RestartType::kPermanent, OnShutdown mode = OnShutdown::kObey) {
    ChildSpec c;
    c.id = id;
    c.restart = restart;
    c.start = [this, id, mode](StartContext& sc) { return spawn_worker(sc, id, mode); };
    return c;
  }

  // A simple_one_for_one template: instance `n` (the int given to start_dynamic_child) is
  // logged and recorded as "w<n>".
  ChildSpec dynamic_worker(RestartType restart = RestartType::kPermanent, OnShutdown mode = OnShutdown::kObey) {
    ChildSpec c;
    c.id = "w";
    c.restart = restart;
    c.start = [this, mode](StartContext& sc) {
      return spawn_worker(sc, "w" + std::to_string(std::any_cast<int>(sc.arg())), mode);
    };
    return c;
  }

  // A child supervisor whose start is logged and whose pid is recorded like a worker's.
  ChildSpec supervisor(std::string id, SupervisorSpec spec) {
    ChildSpec c = ChildSpec::supervisor(id, std::move(spec));
    StartFn inner = std::move(c.start);
    c.start = [this, id, inner = std::move(inner)](StartContext& sc) {
      log.add("start " + id);
      auto r = inner(sc);
      if (r.ok()) pids[id] = *r;
      return r;
    };
    return c;
  }

  Behavior body(std::string id, OnShutdown mode) {
    Log* lg = &log;
    return [lg, id, mode](Context& ctx) -> Task<> {
      LogOnExit on_exit{lg, "stop " + id};
      for (;;) {
        Message m = co_await ctx.receive();
        if (m.is<Crash>()) throw std::runtime_error("boom");
        if (auto* e = m.get<ExitWith>()) {
          if (e->reason.is_normal()) co_return;
          ctx.exit(e->reason);
        }
        if (auto* x = m.get<Exit>(); x && mode == OnShutdown::kTrapAndExit) ctx.exit(x->reason);
      }
    };
  }

  // Starts a root supervisor and runs until idle.
  Pid start(const SupervisorSpec& spec) {
    auto r = start_supervisor(rt(), spec);
    EXPECT_THAT(r, IsOk());
    rt().run_until_idle();
    return r.ok() ? *r : Pid{};
  }

  // With the fault point mailbox_full on, a send may find the mailbox full: the test, like
  // any sender, tries again.
  void send(const std::string& id, std::any msg) {
    Result<void> r = rt().send_any(pids.at(id), msg);
    for (int i = 0; i < 100 && !r.ok() && r.error().kind() == ErrorKind::kMailboxFull; ++i) {
      r = rt().send_any(pids.at(id), msg);
    }
    ASSERT_THAT(r, IsOk()) << id;
    rt().run_until_idle();
  }
  void crash(const std::string& id) { send(id, Crash{}); }
  void kill(const std::string& id) {
    rt().send_exit(pids.at(id), ExitReason::kill());
    rt().run_until_idle();
  }

  // Runs `body` in a fresh process (the control functions need a Context) and advances the
  // virtual clock by `advance`; the body must have finished by then.
  void drive(std::function<Task<>(Context&)> fn, Duration advance = Duration::zero()) {
    bool done = false;
    sim.spawn([fn = std::move(fn), &done](Context& ctx) -> Task<> {
      co_await fn(ctx);
      done = true;
    });
    rt().advance(advance);
    EXPECT_TRUE(done) << "the driver did not finish";
  }

  // Events from index `from` as short lines (one supervisor).
  Lines lines(std::size_t from = 0) const {
    Lines out;
    for (std::size_t i = from; i < events.size(); ++i) out.push_back(describe(events[i]));
    return out;
  }
  // The same, prefixed with the supervisor's name (several supervisors).
  Lines tagged(std::size_t from = 0) const {
    Lines out;
    for (std::size_t i = from; i < events.size(); ++i) {
      out.push_back(events[i].supervisor_name + ": " + describe(events[i]));
    }
    return out;
  }
  int count(Type type, const std::string& sup = {}, const std::string& child = {}) const {
    return static_cast<int>(std::count_if(events.begin(), events.end(), [&](const SupervisionEvent& e) {
      return e.type == type && (sup.empty() || e.supervisor_name == sup) && (child.empty() || e.child_id == child);
    }));
  }
  const SupervisionEvent* last(Type type) const {
    for (auto it = events.rbegin(); it != events.rend(); ++it) {
      if (it->type == type) return &*it;
    }
    return nullptr;
  }

  // Declared before `sim`, so they outlive the processes (destroyed with sim) that use them.
  Log log;
  std::vector<SupervisionEvent> events;
  std::map<std::string, Pid> pids;
  SimRuntime sim;

 private:
  Result<Pid> spawn_worker(StartContext& sc, const std::string& id, OnShutdown mode) {
    log.add("start " + id);
    SpawnOptions so;
    so.trap_exit = mode != OnShutdown::kObey;
    auto r = sc.spawn_link(body(id, mode), so);
    if (r.ok()) pids[id] = *r;
    return r;
  }

  SupervisionEvents::SubscriptionId sub_ = 0;
};

SupervisorSpec make_spec(std::string name, Strategy strategy, std::vector<ChildSpec> children, int intensity = 3,
                         Duration period = 5s) {
  SupervisorSpec s;
  s.name = std::move(name);
  s.strategy = strategy;
  s.intensity = intensity;
  s.period = period;
  s.children = std::move(children);
  return s;
}

// Ids whose pid differs between two snapshots.
std::vector<std::string> changed(const std::map<std::string, Pid>& before, const std::map<std::string, Pid>& after) {
  std::vector<std::string> out;
  for (auto& [id, pid] : after) {
    auto it = before.find(id);
    if (it == before.end() || it->second != pid) out.push_back(id);
  }
  return out;
}

template <class T>
std::string param_name(const ::testing::TestParamInfo<T>& info) {
  return info.param.name;
}

// ---------------------------------------------------------------- 1. strategies

struct StrategyCase {
  std::string name;
  Strategy strategy;
  std::string crash;                 // which of a, b, c crashes
  Lines events;                      // after the crash
  Lines log;                         // worker stops and starts after the crash
  std::vector<std::string> changed;  // children with a new pid
};

class SupervisorStrategy : public ::testing::TestWithParam<StrategyCase> {};

// One strategy case: crash a child, then the events, stops and restarts are the case's.
void check_strategy_case(const StrategyCase& c) {
  World w;
  Pid sup = w.start(make_spec("s", c.strategy, {w.worker("a"), w.worker("b"), w.worker("c")}));
  auto before = w.pids;
  std::size_t from = w.mark();
  w.log.clear();

  w.crash(c.crash);

  EXPECT_EQ(w.lines(from), c.events);
  EXPECT_EQ(w.log.get(), c.log);
  EXPECT_EQ(changed(before, w.pids), c.changed);
  EXPECT_TRUE(w.rt().alive(sup));
  for (auto& [id, pid] : w.pids) EXPECT_TRUE(w.rt().alive(pid)) << id;
  EXPECT_EQ(w.rt().process_count(), 4u);
}

TEST_P(SupervisorStrategy, CrashStopsAndRestartsTheRightChildren) { check_strategy_case(GetParam()); }

INSTANTIATE_TEST_SUITE_P(
    Supervisor, SupervisorStrategy,
    ::testing::Values(StrategyCase{"one_for_one_middle",
                                   Strategy::kOneForOne,
                                   "b",
                                   {"exited b crash", "restarted b"},
                                   {"stop b", "start b"},
                                   {"b"}},
                      StrategyCase{"one_for_all_middle",
                                   Strategy::kOneForAll,
                                   "b",
                                   {"exited b crash", "exited c shutdown by_sup", "exited a shutdown by_sup",
                                    "restarted a", "restarted b", "restarted c"},
                                   {"stop b", "stop c", "stop a", "start a", "start b", "start c"},
                                   {"a", "b", "c"}},
                      StrategyCase{"one_for_all_last",
                                   Strategy::kOneForAll,
                                   "c",
                                   {"exited c crash", "exited b shutdown by_sup", "exited a shutdown by_sup",
                                    "restarted a", "restarted b", "restarted c"},
                                   {"stop c", "stop b", "stop a", "start a", "start b", "start c"},
                                   {"a", "b", "c"}},
                      StrategyCase{"rest_for_one_middle",
                                   Strategy::kRestForOne,
                                   "b",
                                   {"exited b crash", "exited c shutdown by_sup", "restarted b", "restarted c"},
                                   {"stop b", "stop c", "start b", "start c"},
                                   {"b", "c"}},
                      StrategyCase{"rest_for_one_first",
                                   Strategy::kRestForOne,
                                   "a",
                                   {"exited a crash", "exited c shutdown by_sup", "exited b shutdown by_sup",
                                    "restarted a", "restarted b", "restarted c"},
                                   {"stop a", "stop c", "stop b", "start a", "start b", "start c"},
                                   {"a", "b", "c"}},
                      StrategyCase{"rest_for_one_last",
                                   Strategy::kRestForOne,
                                   "c",
                                   {"exited c crash", "restarted c"},
                                   {"stop c", "start c"},
                                   {"c"}}),
    param_name<StrategyCase>);

// A sibling that exits by itself while the supervisor is busy stopping the group keeps its own
// exit reason (OTP's monitor_child picks up the queued EXIT) and costs no extra restart.
TEST(SupervisorStrategyRace, SiblingThatExitedByItselfKeepsItsReason) {
  World w;
  ChildSpec slow = w.worker("d", RestartType::kPermanent, OnShutdown::kTrapAndIgnore);
  slow.shutdown = ShutdownSpec::after(1s);
  Pid sup = w.start(make_spec("s", Strategy::kOneForAll, {w.worker("a"), w.worker("b"), w.worker("c"), slow}));
  std::size_t from = w.mark();
  w.crash("b");  // the supervisor starts stopping d and waits up to 1 s
  w.crash("c");  // meanwhile c dies by itself
  w.rt().advance(1s);
  EXPECT_EQ(w.lines(from),
            (Lines{"exited b crash", "exited d killed by_sup", "exited c crash", "exited a shutdown by_sup",
                   "restarted a", "restarted b", "restarted c", "restarted d"}));
  std::optional<ChildCounts> counts;
  w.drive([&](Context& ctx) -> Task<> {
    auto r = co_await count_children(ctx, sup);
    if (r.ok()) counts = *r;
  });
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(counts->restarts, 1u);
  EXPECT_EQ(counts->active, 4u);
}

// ---------------------------------------------------------------- 2. restart types x exit reasons

enum class How { kNormal, kShutdown, kShutdownDetail, kCrash, kKilled };

struct RestartCase {
  std::string name;
  RestartType restart;
  How how;
  std::string reason;  // as the supervisor reports it
  bool restarted;
};

class SupervisorRestartType : public ::testing::TestWithParam<RestartCase> {};

TEST_P(SupervisorRestartType, RestartedOnlyWhenTheTypeSaysSo) {
  const RestartCase& c = GetParam();
  World w;
  Pid sup = w.start(make_spec("s", Strategy::kOneForOne, {w.worker("x", c.restart), w.worker("sib")}));
  Pid sib = w.pids.at("sib");
  Pid old = w.pids.at("x");
  std::size_t from = w.mark();

  switch (c.how) {
    case How::kNormal: w.send("x", ExitWith{ExitReason::normal()}); break;
    case How::kShutdown: w.send("x", ExitWith{ExitReason::shutdown()}); break;
    case How::kShutdownDetail: w.send("x", ExitWith{ExitReason::shutdown("detail")}); break;
    case How::kCrash: w.crash("x"); break;
    case How::kKilled: w.kill("x"); break;
  }

  Lines expected{"exited x " + c.reason};
  if (c.restarted) expected.push_back("restarted x");
  EXPECT_EQ(w.lines(from), expected);
  EXPECT_EQ(w.rt().alive(w.pids.at("x")), c.restarted);
  EXPECT_NE(w.pids.at("x") == old, c.restarted);
  EXPECT_TRUE(w.rt().alive(sup));
  EXPECT_EQ(w.pids.at("sib"), sib);  // one_for_one: the sibling is untouched

  // A temporary child's spec is forgotten when it exits; the others keep theirs.
  std::optional<std::vector<ChildInfo>> children;
  w.drive([&](Context& ctx) -> Task<> {
    auto r = co_await which_children(ctx, sup);
    if (r.ok()) children = *r;
  });
  ASSERT_TRUE(children.has_value());
  std::vector<std::string> ids;
  for (auto& ch : *children) ids.push_back(ch.id);
  std::vector<std::string> expected_ids{"x", "sib"};
  if (c.restart == RestartType::kTemporary) expected_ids = {"sib"};
  EXPECT_EQ(ids, expected_ids);
}

INSTANTIATE_TEST_SUITE_P(
    Supervisor, SupervisorRestartType,
    ::testing::Values(RestartCase{"permanent_normal", RestartType::kPermanent, How::kNormal, "normal", true},
                      RestartCase{"permanent_shutdown", RestartType::kPermanent, How::kShutdown, "shutdown", true},
                      RestartCase{"permanent_shutdown_detail", RestartType::kPermanent, How::kShutdownDetail,
                                  "{shutdown, detail}", true},
                      RestartCase{"permanent_crash", RestartType::kPermanent, How::kCrash, "crash", true},
                      RestartCase{"permanent_killed", RestartType::kPermanent, How::kKilled, "killed", true},
                      RestartCase{"transient_normal", RestartType::kTransient, How::kNormal, "normal", false},
                      RestartCase{"transient_shutdown", RestartType::kTransient, How::kShutdown, "shutdown", false},
                      RestartCase{"transient_shutdown_detail", RestartType::kTransient, How::kShutdownDetail,
                                  "{shutdown, detail}", false},
                      RestartCase{"transient_crash", RestartType::kTransient, How::kCrash, "crash", true},
                      RestartCase{"transient_killed", RestartType::kTransient, How::kKilled, "killed", true},
                      RestartCase{"temporary_normal", RestartType::kTemporary, How::kNormal, "normal", false},
                      RestartCase{"temporary_shutdown", RestartType::kTemporary, How::kShutdown, "shutdown", false},
                      RestartCase{"temporary_shutdown_detail", RestartType::kTemporary, How::kShutdownDetail,
                                  "{shutdown, detail}", false},
                      RestartCase{"temporary_crash", RestartType::kTemporary, How::kCrash, "crash", false},
                      RestartCase{"temporary_killed", RestartType::kTemporary, How::kKilled, "killed", false}),
    param_name<RestartCase>);

// OTP: a temporary child is stopped with its group but never restarted; transient and
// permanent siblings are restarted.
struct GroupCase {
  std::string name;
  Strategy strategy;
};

class SupervisorTemporarySibling : public ::testing::TestWithParam<GroupCase> {};

TEST_P(SupervisorTemporarySibling, IsStoppedButNotRestarted) {
  World w;
  Pid sup = w.start(make_spec(
      "s", GetParam().strategy,
      {w.worker("a"), w.worker("t", RestartType::kTemporary), w.worker("r", RestartType::kTransient), w.worker("c")}));
  std::size_t from = w.mark();
  w.crash("a");
  EXPECT_EQ(w.lines(from), (Lines{"exited a crash", "exited c shutdown by_sup", "exited r shutdown by_sup",
                                  "exited t shutdown by_sup", "restarted a", "restarted r", "restarted c"}));
  EXPECT_FALSE(w.rt().alive(w.pids.at("t")));
  std::vector<std::string> ids;
  w.drive([&](Context& ctx) -> Task<> {
    auto r = co_await which_children(ctx, sup);
    if (r.ok()) {
      for (auto& ch : *r) ids.push_back(ch.id);
    }
  });
  EXPECT_EQ(ids, (std::vector<std::string>{"a", "r", "c"}));
}

INSTANTIATE_TEST_SUITE_P(Supervisor, SupervisorTemporarySibling,
                         ::testing::Values(GroupCase{"one_for_all", Strategy::kOneForAll},
                                           GroupCase{"rest_for_one", Strategy::kRestForOne}),
                         param_name<GroupCase>);

// ---------------------------------------------------------------- 3. restart intensity

struct IntensityCase {
  std::string name;
  int intensity;
  Duration period;
  std::vector<Duration> gaps;  // virtual time advanced before each crash of b
  bool gives_up;               // at the last crash (never before)
};

class SupervisorIntensity : public ::testing::TestWithParam<IntensityCase> {};

TEST_P(SupervisorIntensity, GivesUpOnlyWhenMoreThanIntensityRestartsFallInThePeriod) {
  const IntensityCase& c = GetParam();
  World w;
  Pid sup = w.start(
      make_spec("s", Strategy::kOneForOne, {w.worker("a"), w.worker("b"), w.worker("c")}, c.intensity, c.period));
  auto watch = w.rt().watch_exit(sup);
  std::size_t from = 0;
  for (std::size_t i = 0; i < c.gaps.size(); ++i) {
    w.rt().advance(c.gaps[i]);
    ASSERT_TRUE(w.rt().alive(sup)) << "gave up before crash " << i;
    from = w.mark();
    w.log.clear();
    w.crash("b");
  }
  if (!c.gives_up) {
    EXPECT_EQ(w.lines(from), (Lines{"exited b crash", "restarted b"}));
    EXPECT_EQ(w.count(Type::kIntensityExceeded), 0);
    EXPECT_TRUE(w.rt().alive(sup));
    EXPECT_EQ(w.rt().process_count(), 4u);
    return;
  }
  // Gives up: the other children stop in reverse order, then the supervisor exits with
  // `shutdown`, as OTP's does; reached_max_restart_intensity is in the report (the event).
  EXPECT_EQ(w.lines(from), (Lines{"exited b crash", "intensity_exceeded", "exited c shutdown by_sup",
                                  "exited a shutdown by_sup", "escalated", "stopped shutdown"}));
  EXPECT_EQ(w.log.get(), (Lines{"stop b", "stop c", "stop a"}));
  EXPECT_EQ(w.count(Type::kIntensityExceeded), 1);
  ASSERT_TRUE(watch->done());
  EXPECT_EQ(watch->reason(), ExitReason::shutdown());
  const SupervisionEvent* report = nullptr;
  for (const SupervisionEvent& e : w.events)
    if (e.type == Type::kIntensityExceeded) report = &e;
  ASSERT_NE(report, nullptr);
  EXPECT_EQ(report->child_id, "b");
  EXPECT_EQ(report->reason, ExitReason::shutdown("reached_max_restart_intensity"));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Supervisor, SupervisorIntensity,
    ::testing::Values(IntensityCase{"n_restarts_are_fine", 3, 5s, {0s, 0s, 0s}, false},
                      IntensityCase{"n_plus_1_gives_up", 3, 5s, {0s, 0s, 0s, 0s}, true},
                      IntensityCase{"intensity_zero_gives_up_at_once", 0, 5s, {0s}, true},
                      IntensityCase{"crowded_within_period_gives_up", 2, 1s, {0ms, 400ms, 400ms}, true},
                      // At most 2 restarts within any 1 s window: never more than intensity.
                      IntensityCase{"spread_beyond_period_never_trips",
                                    2,
                                    1s,
                                    {0ms, 600ms, 600ms, 600ms, 600ms, 600ms, 600ms, 600ms, 600ms, 600ms},
                                    false},
                      // OTP keeps a restart made at R while R >= now - period: one exactly `period` ago counts.
                      IntensityCase{"restart_exactly_period_ago_counts", 1, 5s, {0s, 5s}, true},
                      IntensityCase{"restart_just_over_period_ago_forgotten", 1, 5s, {0s, 5s + 1ns}, false}),
    param_name<IntensityCase>);

// A restart whose start function fails is retried and counts toward the intensity (OTP's
// try_again_restart), so a child that can no longer start ends in a give-up, not a loop.
TEST(SupervisorIntensityFailedRestart, FailedRestartsAreRetriedAndCounted) {
  World w;
  int starts = 0;
  ChildSpec flaky = w.worker("f");
  flaky.start = [&w, &starts, inner = flaky.start](StartContext& sc) -> Result<Pid> {
    if (++starts > 1) return Error(ErrorKind::kTransient, "cannot start now");
    return inner(sc);
  };
  Pid sup = w.start(make_spec("s", Strategy::kOneForOne, {w.worker("a"), flaky}, /*intensity=*/3));
  std::size_t from = w.mark();
  w.crash("f");
  EXPECT_EQ(w.lines(from), (Lines{"exited f crash", "start_failed f", "start_failed f", "start_failed f",
                                  "intensity_exceeded", "exited a shutdown by_sup", "escalated", "stopped shutdown"}));
  EXPECT_FALSE(w.rt().alive(sup));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

// ---------------------------------------------------------------- 4. escalation

struct EscalationCase {
  std::string name;
  int leaf_intensity, mid_intensity, root_intensity;
  int crashes;                                  // of leaf worker w2, all at the same virtual time
  int leaf_gave_up, mid_gave_up, root_gave_up;  // intensity_exceeded per supervisor
  bool root_alive;
};

class SupervisorEscalation : public ::testing::TestWithParam<EscalationCase> {};

// root (one_for_one) -> [mid (one_for_all) -> [leaf (rest_for_one) -> [w1, w2, w3], mw]]
SupervisorSpec three_levels(World& w, int leaf_intensity, int mid_intensity, int root_intensity) {
  SupervisorSpec leaf =
      make_spec("leaf", Strategy::kRestForOne, {w.worker("w1"), w.worker("w2"), w.worker("w3")}, leaf_intensity);
  SupervisorSpec mid =
      make_spec("mid", Strategy::kOneForAll, {w.supervisor("leaf", std::move(leaf)), w.worker("mw")}, mid_intensity);
  return make_spec("root", Strategy::kOneForOne, {w.supervisor("mid", std::move(mid))}, root_intensity);
}

TEST_P(SupervisorEscalation, CrashLoopEscalatesExactlyAsFarAsTheLimitsSay) {
  const EscalationCase& c = GetParam();
  World w;
  Pid root = w.start(three_levels(w, c.leaf_intensity, c.mid_intensity, c.root_intensity));
  ASSERT_EQ(w.rt().process_count(), 7u);
  for (int i = 0; i < c.crashes; ++i) {
    ASSERT_TRUE(w.rt().alive(w.pids.at("w2"))) << "crash " << i;
    w.crash("w2");
  }
  EXPECT_EQ(w.count(Type::kIntensityExceeded, "leaf"), c.leaf_gave_up);
  EXPECT_EQ(w.count(Type::kIntensityExceeded, "mid"), c.mid_gave_up);
  EXPECT_EQ(w.count(Type::kIntensityExceeded, "root"), c.root_gave_up);
  EXPECT_EQ(w.count(Type::kEscalated, "leaf"), c.leaf_gave_up);
  // Every give-up is one restart by the parent, except the one that makes the parent give up.
  EXPECT_EQ(w.count(Type::kChildRestarted, "mid", "leaf"), c.leaf_gave_up - c.mid_gave_up);
  EXPECT_EQ(w.count(Type::kChildRestarted, "root", "mid"), c.mid_gave_up - c.root_gave_up);
  EXPECT_EQ(w.rt().alive(root), c.root_alive);
  if (c.root_alive) {
    EXPECT_EQ(w.rt().process_count(), 7u);  // the whole tree runs again
    for (auto& [id, pid] : w.pids) EXPECT_TRUE(w.rt().alive(pid)) << id;
  } else {
    EXPECT_EQ(w.rt().process_count(), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Supervisor, SupervisorEscalation,
                         ::testing::Values(
                             // leaf gives up every (2 + 1) crashes; mid at its second leaf give-up (1 + 1).
                             EscalationCase{"leaf_absorbs", 2, 1, 3, 2, 0, 0, 0, true},
                             EscalationCase{"leaf_gives_up_mid_restarts_it", 2, 1, 3, 3, 1, 0, 0, true},
                             EscalationCase{"mid_absorbs_one_leaf_give_up", 2, 1, 3, 5, 1, 0, 0, true},
                             EscalationCase{"mid_gives_up_root_restarts_it", 2, 1, 3, 6, 2, 1, 0, true},
                             EscalationCase{"root_absorbs_two_mid_give_ups", 2, 1, 2, 12, 4, 2, 0, true},
                             EscalationCase{"root_gives_up", 2, 1, 1, 12, 4, 2, 1, false},
                             EscalationCase{"zero_intensities_escalate_at_once", 0, 0, 3, 1, 1, 1, 0, true}),
                         param_name<EscalationCase>);

// One leaf give-up, event by event across the levels: the leaf's {shutdown, ...} exit is a
// failure of a permanent child to mid, which restarts its whole group (one_for_all).
TEST(SupervisorEscalationEvents, LeafGiveUpIsRestartedByMidOneForAll) {
  World w;
  w.start(three_levels(w, 2, 1, 3));
  w.crash("w2");
  w.crash("w2");
  std::size_t from = w.mark();
  w.log.clear();
  w.crash("w2");
  EXPECT_EQ(w.tagged(from), (Lines{
                                "leaf: exited w2 crash",
                                "leaf: intensity_exceeded",
                                "leaf: exited w3 shutdown by_sup",
                                "leaf: exited w1 shutdown by_sup",
                                "leaf: escalated",
                                "leaf: stopped shutdown",
                                "mid: exited leaf shutdown",
                                "mid: exited mw shutdown by_sup",
                                "leaf: started w1",
                                "leaf: started w2",
                                "leaf: started w3",
                                "leaf: sup_started",
                                "mid: restarted leaf",
                                "mid: restarted mw",
                            }));
  EXPECT_EQ(w.log.get(), (Lines{"stop w2", "stop w3", "stop w1", "stop mw", "start leaf", "start w1", "start w2",
                                "start w3", "start mw"}));
}

// ---------------------------------------------------------------- 5. shutdown specs

struct ShutdownCase {
  std::string name;
  std::optional<ShutdownSpec> spec;
  OnShutdown mode;
  std::string reason;  // the child's exit as the supervisor reports it
  Duration takes;      // virtual time from the stop request until the child is gone
};

class SupervisorShutdown : public ::testing::TestWithParam<ShutdownCase> {};

TEST_P(SupervisorShutdown, ChildStopsByItsSpec) {
  const ShutdownCase& c = GetParam();
  World w;
  ChildSpec child = w.worker("x", RestartType::kPermanent, c.mode);
  child.shutdown = c.spec;
  Pid sup = w.start(make_spec("s", Strategy::kOneForOne, {child}));
  Pid x = w.pids.at("x");
  std::size_t from = w.mark();
  TimePoint t0 = w.now();

  w.rt().send_exit(sup, ExitReason::shutdown());
  w.rt().run_until_idle();
  if (c.takes > Duration::zero()) {
    w.rt().advance(c.takes - 1ns);
    EXPECT_TRUE(w.rt().alive(x)) << "stopped before its shutdown timeout";
    EXPECT_TRUE(w.rt().alive(sup));
    EXPECT_EQ(w.count(Type::kChildExited), 0);
    w.rt().advance(1ns);
  }
  EXPECT_EQ(w.lines(from), (Lines{"exited x " + c.reason + " by_sup", "stopped shutdown"}));
  const SupervisionEvent* exited = w.last(Type::kChildExited);
  ASSERT_NE(exited, nullptr);
  EXPECT_EQ((exited->at - t0).count(), c.takes.count());
  EXPECT_EQ(w.rt().process_count(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Supervisor, SupervisorShutdown,
    ::testing::Values(
        ShutdownCase{"brutal_kill", ShutdownSpec::brutal_kill(), OnShutdown::kObey, "killed", 0s},
        ShutdownCase{"brutal_kill_trapping", ShutdownSpec::brutal_kill(), OnShutdown::kTrapAndIgnore, "killed", 0s},
        ShutdownCase{"timeout_prompt", ShutdownSpec::after(1s), OnShutdown::kObey, "shutdown", 0s},
        ShutdownCase{"timeout_trapping_prompt", ShutdownSpec::after(1s), OnShutdown::kTrapAndExit, "shutdown", 0s},
        ShutdownCase{"timeout_ignored_killed_after_timeout", ShutdownSpec::after(1s), OnShutdown::kTrapAndIgnore,
                     "killed", 1s},
        ShutdownCase{"zero_timeout_ignored_killed_at_once", ShutdownSpec::after(0s), OnShutdown::kTrapAndIgnore,
                     "killed", 0s},
        ShutdownCase{"worker_default_is_5000ms", std::nullopt, OnShutdown::kTrapAndIgnore, "killed", 5000ms}),
    param_name<ShutdownCase>);

TEST(SupervisorShutdownInfinity, WaitsAsLongAsTheChildTakes) {
  World w;
  ChildSpec child = w.worker("x", RestartType::kPermanent, OnShutdown::kTrapAndIgnore);
  child.shutdown = ShutdownSpec::infinity();
  Pid sup = w.start(make_spec("s", Strategy::kOneForOne, {child}));
  std::size_t from = w.mark();
  TimePoint t0 = w.now();
  w.rt().send_exit(sup, ExitReason::shutdown());
  w.rt().advance(1h);
  EXPECT_TRUE(w.rt().alive(w.pids.at("x")));
  EXPECT_TRUE(w.rt().alive(sup));
  EXPECT_EQ(w.lines(from), Lines{});

  w.send("x", ExitWith{ExitReason::shutdown()});
  EXPECT_EQ(w.lines(from), (Lines{"exited x shutdown by_sup", "stopped shutdown"}));
  EXPECT_EQ(w.last(Type::kChildExited)->at - t0, Duration(1h));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

TEST(SupervisorShutdownOrder, ChildrenStopInReverseStartOrder) {
  World w;
  Pid sup = w.start(make_spec("s", Strategy::kOneForOne, {w.worker("a"), w.worker("b"), w.worker("c")}));
  std::size_t from = w.mark();
  w.log.clear();
  w.rt().send_exit(sup, ExitReason::shutdown());
  w.rt().run_until_idle();
  EXPECT_EQ(w.lines(from), (Lines{"exited c shutdown by_sup", "exited b shutdown by_sup", "exited a shutdown by_sup",
                                  "stopped shutdown"}));
  EXPECT_EQ(w.log.get(), (Lines{"stop c", "stop b", "stop a"}));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

// Each child gets its own timeout, one after the other (a child is gone before the next is asked).
TEST(SupervisorShutdownOrder, TimeoutsRunOneAfterAnother) {
  World w;
  std::vector<ChildSpec> children;
  for (const char* id : {"a", "b", "c"}) {
    children.push_back(w.worker(id, RestartType::kPermanent, OnShutdown::kTrapAndIgnore));
    children.back().shutdown = ShutdownSpec::after(1s);
  }
  Pid sup = w.start(make_spec("s", Strategy::kOneForOne, std::move(children)));
  std::size_t from = w.mark();
  TimePoint t0 = w.now();
  w.rt().send_exit(sup, ExitReason::shutdown());
  w.rt().advance(3s);
  EXPECT_EQ(w.lines(from),
            (Lines{"exited c killed by_sup", "exited b killed by_sup", "exited a killed by_sup", "stopped shutdown"}));
  ASSERT_EQ(w.events.size(), from + 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(w.events[from + i].at - t0, Duration(std::chrono::seconds(std::min(i + 1, 3)))) << i;
  }
}

// A child supervisor (default shutdown infinity) stops its own children before it is reported
// gone; the parent goes on with the next child only then.
TEST(SupervisorShutdownOrder, NestedSupervisorStopsDepthFirst) {
  World w;
  SupervisorSpec mid = make_spec("mid", Strategy::kOneForOne, {w.worker("m1"), w.worker("m2")});
  Pid root = w.start(
      make_spec("root", Strategy::kOneForOne, {w.worker("x"), w.supervisor("mid", std::move(mid)), w.worker("y")}));
  std::size_t from = w.mark();
  w.log.clear();
  w.rt().send_exit(root, ExitReason::shutdown());
  w.rt().run_until_idle();
  EXPECT_EQ(w.tagged(from),
            (Lines{"root: exited y shutdown by_sup", "mid: exited m2 shutdown by_sup", "mid: exited m1 shutdown by_sup",
                   "mid: stopped shutdown", "root: exited mid shutdown by_sup", "root: exited x shutdown by_sup",
                   "root: stopped shutdown"}));
  EXPECT_EQ(w.log.get(), (Lines{"stop y", "stop m2", "stop m1", "stop x"}));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

// ---------------------------------------------------------------- 6. start

TEST(SupervisorStart, ChildrenStartInOrderBeforeStartReturns) {
  World w;
  auto r =
      start_supervisor(w.rt(), make_spec("s", Strategy::kOneForOne, {w.worker("a"), w.worker("b"), w.worker("c")}));
  ASSERT_THAT(r, IsOk());
  // Synchronous: every start function ran, in order, before start_supervisor returned.
  EXPECT_EQ(w.log.get(), (Lines{"start a", "start b", "start c"}));
  EXPECT_EQ(w.lines(), (Lines{"started a", "started b", "started c", "sup_started"}));
  EXPECT_EQ(w.rt().whereis("s"), std::optional<Pid>(*r));
  w.rt().run_until_idle();
  EXPECT_EQ(w.rt().process_count(), 4u);
}

struct StartFailCase {
  std::string name;
  bool throws;  // the start function throws instead of returning an error
};

class SupervisorStartFailure : public ::testing::TestWithParam<StartFailCase> {};

TEST_P(SupervisorStartFailure, FailsNamingTheChildAndLeavesNothingRunning) {
  World w;
  ChildSpec bad;
  bad.id = "c";
  bool throws = GetParam().throws;
  bad.start = [&w, throws](StartContext&) -> Result<Pid> {
    w.log.add("start c");
    if (throws) throw std::runtime_error("no database");
    return Error(ErrorKind::kTransient, "no database");
  };
  auto r = start_supervisor(w.rt(),
                            make_spec("s", Strategy::kOneForOne, {w.worker("a"), w.worker("b"), bad, w.worker("d")}));
  ASSERT_THAT(r, StatusIs(ErrorKind::kStartFailed));
  EXPECT_THAT(r.error().message(), HasSubstr("'c'"));
  EXPECT_THAT(r.error().message(), HasSubstr("no database"));
  EXPECT_EQ(w.log.get(), (Lines{"start a", "start b", "start c"}));  // d is never tried
  // Every reported start has its reported exit (the event stream stays balanced for metrics).
  EXPECT_EQ(w.lines(),
            (Lines{"started a", "started b", "start_failed c", "exited b killed by_sup", "exited a killed by_sup"}));
  w.rt().run_until_idle();
  EXPECT_EQ(w.rt().process_count(), 0u);
  EXPECT_FALSE(w.rt().alive(w.pids.at("a")));
  EXPECT_FALSE(w.rt().alive(w.pids.at("b")));
  EXPECT_EQ(w.rt().whereis("s"), std::nullopt);  // the name is free again
}

INSTANTIATE_TEST_SUITE_P(Supervisor, SupervisorStartFailure,
                         ::testing::Values(StartFailCase{"returns_error", false}, StartFailCase{"throws", true}),
                         param_name<StartFailCase>);

// The failure of a grandchild fails every level's start; nothing of the tree is left.
TEST(SupervisorStartFailureNested, GrandchildFailureFailsTheWholeTree) {
  World w;
  ChildSpec bad = w.worker("bad");
  bad.start = [](StartContext&) -> Result<Pid> { return Error(ErrorKind::kTransient, "nope"); };
  SupervisorSpec mid = make_spec("mid", Strategy::kOneForOne, {w.worker("m1"), bad});
  auto r = start_supervisor(w.rt(), make_spec("root", Strategy::kOneForOne, {w.worker("x"), w.supervisor("mid", mid)}));
  ASSERT_THAT(r, StatusIs(ErrorKind::kStartFailed));
  EXPECT_THAT(r.error().message(), HasSubstr("'mid'"));
  EXPECT_THAT(r.error().message(), HasSubstr("'bad'"));
  w.rt().run_until_idle();
  EXPECT_EQ(w.rt().process_count(), 0u);
  EXPECT_EQ(w.rt().whereis("mid"), std::nullopt);
  EXPECT_EQ(w.rt().whereis("root"), std::nullopt);
}

// A started child supervisor is killed too when a later sibling fails; its children go with it.
TEST(SupervisorStartFailureNested, StartedChildSupervisorIsTornDown) {
  World w;
  ChildSpec bad = w.worker("bad");
  bad.start = [](StartContext&) -> Result<Pid> { return Error(ErrorKind::kTransient, "nope"); };
  SupervisorSpec mid = make_spec("mid", Strategy::kOneForOne, {w.worker("m1"), w.worker("m2")});
  auto r = start_supervisor(w.rt(), make_spec("root", Strategy::kOneForOne, {w.supervisor("mid", mid), bad}));
  ASSERT_FALSE(r.ok());
  w.rt().run_until_idle();
  EXPECT_EQ(w.rt().process_count(), 0u);
}

// A supervisor linked to its caller treats the caller as its parent: when the caller exits,
// the supervisor stops its children (reverse order) and exits with the caller's reason.
TEST(SupervisorStart, LinkedSupervisorStopsWithItsParent) {
  World w;
  SupervisorSpec spec = make_spec("s", Strategy::kOneForOne, {w.worker("a"), w.worker("b")});
  Pid sup;
  Pid parent = w.sim.spawn([&](Context& ctx) -> Task<> {
    auto r = start_supervisor_link(ctx, spec);
    EXPECT_THAT(r, IsOk());
    if (r.ok()) sup = *r;
    Message m = co_await ctx.receive();
    if (m.is<Crash>()) throw std::runtime_error("parent died");
  });
  w.rt().run_until_idle();
  ASSERT_TRUE(sup.valid());
  std::size_t from = w.mark();
  ASSERT_THAT(w.rt().send(parent, Crash{}), IsOk());
  w.rt().run_until_idle();
  EXPECT_EQ(w.lines(from), (Lines{"exited b shutdown by_sup", "exited a shutdown by_sup", "stopped crash"}));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

TEST(SupervisorStart, TakenNameIsAlreadyExists) {
  World w;
  w.start(make_spec("s", Strategy::kOneForOne, {w.worker("a")}));
  auto r = start_supervisor(w.rt(), make_spec("s", Strategy::kOneForOne, {w.worker("b")}));
  EXPECT_THAT(r, StatusIs(ErrorKind::kAlreadyExists));
  w.rt().run_until_idle();
  EXPECT_EQ(w.rt().process_count(), 2u);
}

struct InvalidCase {
  std::string name;
  std::function<void(SupervisorSpec&)> spoil;
  std::string says;  // part of the error message
};

class SupervisorInvalidSpec : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(SupervisorInvalidSpec, IsRejectedBeforeAnythingStarts) {
  const InvalidCase& c = GetParam();
  World w;
  SupervisorSpec spec = make_spec("v", Strategy::kOneForOne, {w.worker("a"), w.worker("b")});
  c.spoil(spec);
  auto r = start_supervisor(w.rt(), spec);
  EXPECT_THAT(r, StatusIs(ErrorKind::kInvalidArgument));
  if (!r.ok()) {
    EXPECT_THAT(r.error().message(), HasSubstr(c.says));
  }
  EXPECT_EQ(w.log.get(), Lines{});
  EXPECT_EQ(w.lines(), Lines{});
  EXPECT_EQ(w.rt().process_count(), 0u);
  EXPECT_EQ(w.rt().whereis("v"), std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(
    Supervisor, SupervisorInvalidSpec,
    ::testing::Values(
        InvalidCase{"duplicate_ids", [](SupervisorSpec& s) { s.children[1].id = "a"; }, "duplicate child id 'a'"},
        InvalidCase{"significant_permanent", [](SupervisorSpec& s) { s.children[0].significant = true; },
                    "significant"},
        InvalidCase{"simple_one_for_one_two_specs", [](SupervisorSpec& s) { s.strategy = Strategy::kSimpleOneForOne; },
                    "exactly one child spec"},
        InvalidCase{"simple_one_for_one_no_spec",
                    [](SupervisorSpec& s) {
                      s.strategy = Strategy::kSimpleOneForOne;
                      s.children.clear();
                    },
                    "exactly one child spec"},
        InvalidCase{"negative_intensity", [](SupervisorSpec& s) { s.intensity = -1; }, "intensity"},
        InvalidCase{"zero_period", [](SupervisorSpec& s) { s.period = 0s; }, "period"},
        InvalidCase{"empty_id", [](SupervisorSpec& s) { s.children[1].id.clear(); }, "id is empty"},
        InvalidCase{"empty_start", [](SupervisorSpec& s) { s.children[1].start = nullptr; }, "start function"},
        InvalidCase{"negative_shutdown_timeout",
                    [](SupervisorSpec& s) { s.children[0].shutdown = ShutdownSpec::after(-1ms); }, "shutdown timeout"},
        InvalidCase{"backoff_min_above_max",
                    [](SupervisorSpec& s) {
                      s.children[0].backoff = BackoffOptions{2s, 1s, 2.0, 0.2, 60s};
                    },
                    "min_delay"},
        InvalidCase{"backoff_multiplier_below_one",
                    [](SupervisorSpec& s) {
                      s.children[0].backoff = BackoffOptions{1s, 2s, 0.5, 0.2, 60s};
                    },
                    "multiplier"},
        InvalidCase{"backoff_jitter_above_one",
                    [](SupervisorSpec& s) {
                      s.children[0].backoff = BackoffOptions{1s, 2s, 2.0, 1.5, 60s};
                    },
                    "jitter"}),
    param_name<InvalidCase>);

// ---------------------------------------------------------------- 7. auto_shutdown

enum class Act { kExitNormal, kCrash, kTerminate };

struct AutoStep {
  std::string child;
  Act act;
};

struct AutoCase {
  std::string name;
  AutoShutdown mode;
  std::vector<AutoStep> steps;
  Lines events;  // after the start
  bool alive;    // the supervisor afterwards
};

class SupervisorAutoShutdown : public ::testing::TestWithParam<AutoCase> {};

// Children: s1 (significant, transient), s2 (significant, temporary), p (permanent).
TEST_P(SupervisorAutoShutdown, FiresOnlyWhenSignificantChildrenExitByThemselves) {
  const AutoCase& c = GetParam();
  World w;
  ChildSpec s1 = w.worker("s1", RestartType::kTransient);
  s1.significant = true;
  ChildSpec s2 = w.worker("s2", RestartType::kTemporary);
  s2.significant = true;
  SupervisorSpec spec = make_spec("s", Strategy::kOneForOne, {s1, s2, w.worker("p")});
  spec.auto_shutdown = c.mode;
  Pid sup = w.start(spec);
  std::size_t from = w.mark();
  for (const AutoStep& step : c.steps) {
    switch (step.act) {
      case Act::kExitNormal: w.send(step.child, ExitWith{ExitReason::normal()}); break;
      case Act::kCrash: w.crash(step.child); break;
      case Act::kTerminate:
        w.drive([&](Context& ctx) -> Task<> {
          auto r = co_await terminate_child(ctx, sup, step.child);
          EXPECT_THAT(r, IsOk());
        });
        break;
    }
  }
  EXPECT_EQ(w.lines(from), c.events);
  EXPECT_EQ(w.rt().alive(sup), c.alive);
  if (!c.alive) {
    EXPECT_EQ(w.rt().process_count(), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Supervisor, SupervisorAutoShutdown,
                         ::testing::Values(AutoCase{"never",
                                                    AutoShutdown::kNever,
                                                    {{"s1", Act::kExitNormal}, {"s2", Act::kExitNormal}},
                                                    {"exited s1 normal", "exited s2 normal"},
                                                    true},
                                           AutoCase{"any_transient_exits_normally",
                                                    AutoShutdown::kAnySignificant,
                                                    {{"s1", Act::kExitNormal}},
                                                    {"exited s1 normal", "auto_shutdown", "exited p shutdown by_sup",
                                                     "exited s2 shutdown by_sup", "stopped shutdown"},
                                                    false},
                                           AutoCase{"any_temporary_crashes",
                                                    AutoShutdown::kAnySignificant,
                                                    {{"s2", Act::kCrash}},
                                                    {"exited s2 crash", "auto_shutdown", "exited p shutdown by_sup",
                                                     "exited s1 shutdown by_sup", "stopped shutdown"},
                                                    false},
                                           AutoCase{"any_transient_crash_is_restarted",
                                                    AutoShutdown::kAnySignificant,
                                                    {{"s1", Act::kCrash}},
                                                    {"exited s1 crash", "restarted s1"},
                                                    true},
                                           AutoCase{"any_not_when_terminated_by_supervisor",
                                                    AutoShutdown::kAnySignificant,
                                                    {{"s1", Act::kTerminate}, {"s2", Act::kTerminate}},
                                                    {"exited s1 shutdown by_sup", "exited s2 shutdown by_sup"},
                                                    true},
                                           AutoCase{"all_one_of_two_exits",
                                                    AutoShutdown::kAllSignificant,
                                                    {{"s1", Act::kExitNormal}},
                                                    {"exited s1 normal"},
                                                    true},
                                           AutoCase{"all_both_exit",
                                                    AutoShutdown::kAllSignificant,
                                                    {{"s1", Act::kExitNormal}, {"s2", Act::kExitNormal}},
                                                    {"exited s1 normal", "exited s2 normal", "auto_shutdown",
                                                     "exited p shutdown by_sup", "stopped shutdown"},
                                                    false},
                                           AutoCase{"all_restarted_one_still_runs",
                                                    AutoShutdown::kAllSignificant,
                                                    {{"s1", Act::kCrash}, {"s2", Act::kExitNormal}},
                                                    {"exited s1 crash", "restarted s1", "exited s2 normal"},
                                                    true},
                                           AutoCase{"all_last_exits_after_other_terminated",
                                                    AutoShutdown::kAllSignificant,
                                                    {{"s1", Act::kTerminate}, {"s2", Act::kExitNormal}},
                                                    {"exited s1 shutdown by_sup", "exited s2 normal", "auto_shutdown",
                                                     "exited p shutdown by_sup", "stopped shutdown"},
                                                    false},
                                           AutoCase{"all_not_when_all_terminated_by_supervisor",
                                                    AutoShutdown::kAllSignificant,
                                                    {{"s1", Act::kTerminate}, {"s2", Act::kTerminate}},
                                                    {"exited s1 shutdown by_sup", "exited s2 shutdown by_sup"},
                                                    true}),
                         param_name<AutoCase>);

// ---------------------------------------------------------------- 8. simple_one_for_one

TEST(SupervisorDynamic, StartCrashRestartTerminateCount) {
  World w;
  SupervisorSpec spec = make_spec("dyn", Strategy::kSimpleOneForOne, {w.dynamic_worker()});
  Pid sup = w.start(spec);
  EXPECT_EQ(w.lines(), Lines{"sup_started"});  // no child at start

  std::size_t from = w.mark();
  w.drive([&](Context& ctx) -> Task<> {
    for (int n = 1; n <= 3; ++n) {
      auto r = co_await start_dynamic_child(ctx, sup, n);
      EXPECT_THAT(r, IsOk());
    }
  });
  EXPECT_EQ(w.lines(from), (Lines{"started w", "started w", "started w"}));
  EXPECT_EQ(w.log.get(), (Lines{"start w1", "start w2", "start w3"}));

  // A crashed instance is restarted with its own argument; the others are untouched.
  auto before = w.pids;
  from = w.mark();
  w.log.clear();
  w.crash("w2");
  EXPECT_EQ(w.lines(from), (Lines{"exited w crash", "restarted w"}));
  EXPECT_EQ(w.log.get(), (Lines{"stop w2", "start w2"}));
  EXPECT_EQ(changed(before, w.pids), std::vector<std::string>{"w2"});

  from = w.mark();
  w.drive([&](Context& ctx) -> Task<> {
    auto t = co_await terminate_child(ctx, sup, w.pids.at("w1"));
    EXPECT_THAT(t, IsOk());
    auto again = co_await terminate_child(ctx, sup, w.pids.at("w1"));
    EXPECT_THAT(again, StatusIs(ErrorKind::kNotFound));
    auto by_id = co_await terminate_child(ctx, sup, std::string("w"));
    EXPECT_THAT(by_id, StatusIs(ErrorKind::kNotFound));  // dynamic children have no id of their own

    auto which = co_await which_children(ctx, sup);
    EXPECT_THAT(which, IsOk());
    if (which.ok()) {
      std::vector<Pid> running;
      for (auto& ch : *which) running.push_back(ch.pid);
      EXPECT_EQ(running, (std::vector<Pid>{w.pids.at("w2"), w.pids.at("w3")}));
    }
    auto counts = co_await count_children(ctx, sup);
    EXPECT_THAT(counts, IsOk());
    if (counts.ok()) {
      EXPECT_EQ(counts->active, 2u);
      EXPECT_EQ(counts->workers, 2u);
      EXPECT_EQ(counts->supervisors, 0u);
      EXPECT_EQ(counts->restarts, 1u);
    }
    auto wrong = co_await start_child(ctx, sup, w.worker("static"));
    EXPECT_THAT(wrong, StatusIs(ErrorKind::kInvalidArgument));
  });
  EXPECT_EQ(w.lines(from), Lines{"exited w shutdown by_sup"});  // terminated: not restarted
  EXPECT_FALSE(w.rt().alive(w.pids.at("w1")));

  // Stopping the supervisor stops every instance.
  from = w.mark();
  w.rt().send_exit(sup, ExitReason::shutdown());
  w.rt().run_until_idle();
  EXPECT_EQ(w.lines(from), (Lines{"exited w shutdown by_sup", "exited w shutdown by_sup", "stopped shutdown"}));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

TEST(SupervisorDynamic, TransientInstanceExitingNormallyIsForgotten) {
  World w;
  Pid sup = w.start(make_spec("dyn", Strategy::kSimpleOneForOne, {w.dynamic_worker(RestartType::kTransient)}));
  w.drive([&](Context& ctx) -> Task<> {
    for (int n = 1; n <= 2; ++n) (void)co_await start_dynamic_child(ctx, sup, n);
  });
  std::size_t from = w.mark();
  w.send("w1", ExitWith{ExitReason::normal()});
  w.crash("w2");
  EXPECT_EQ(w.lines(from), (Lines{"exited w normal", "exited w crash", "restarted w"}));
  w.drive([&](Context& ctx) -> Task<> {
    auto counts = co_await count_children(ctx, sup);
    EXPECT_THAT(counts, IsOk());
    if (counts.ok()) {
      EXPECT_EQ(counts->active, 1u);
      EXPECT_EQ(counts->workers, 1u);
    }
  });
}

// Dynamic children stop all at once: one shutdown timeout for all of them, not one each.
TEST(SupervisorDynamic, InstancesShareOneShutdownTimeout) {
  World w;
  ChildSpec tmpl = w.dynamic_worker(RestartType::kPermanent, OnShutdown::kTrapAndIgnore);
  tmpl.shutdown = ShutdownSpec::after(1s);
  Pid sup = w.start(make_spec("dyn", Strategy::kSimpleOneForOne, {tmpl}));
  w.drive([&](Context& ctx) -> Task<> {
    for (int n = 1; n <= 3; ++n) (void)co_await start_dynamic_child(ctx, sup, n);
  });
  std::size_t from = w.mark();
  TimePoint t0 = w.now();
  w.rt().send_exit(sup, ExitReason::shutdown());
  w.rt().advance(1s - 1ns);
  EXPECT_EQ(w.count(Type::kChildExited), 0);
  w.rt().advance(1ns);
  EXPECT_EQ(w.lines(from),
            (Lines{"exited w killed by_sup", "exited w killed by_sup", "exited w killed by_sup", "stopped shutdown"}));
  for (std::size_t i = from; i < w.events.size(); ++i) EXPECT_EQ(w.events[i].at - t0, Duration(1s));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

// An instance that exited by itself just before the supervisor stopped keeps its own reason.
TEST(SupervisorDynamic, InstanceThatExitedByItselfKeepsItsReason) {
  World w;
  ChildSpec tmpl = w.dynamic_worker(RestartType::kPermanent, OnShutdown::kTrapAndIgnore);
  tmpl.shutdown = ShutdownSpec::after(1s);
  Pid sup = w.start(make_spec("dyn", Strategy::kSimpleOneForOne, {tmpl}));
  w.drive([&](Context& ctx) -> Task<> {
    for (int n = 1; n <= 2; ++n) (void)co_await start_dynamic_child(ctx, sup, n);
  });
  std::size_t from = w.mark();
  // terminate_child(w1) keeps the supervisor busy for 1 s; meanwhile it is asked to stop, and
  // then w2 crashes: its EXIT is queued behind the stop request.
  w.sim.spawn([&](Context& ctx) -> Task<> { (void)co_await terminate_child(ctx, sup, w.pids.at("w1")); });
  w.rt().run_until_idle();
  w.rt().send_exit(sup, ExitReason::shutdown());
  w.crash("w2");
  w.rt().advance(1s);
  EXPECT_EQ(w.lines(from), (Lines{"exited w killed by_sup", "exited w crash", "stopped shutdown"}));
  EXPECT_EQ(w.rt().process_count(), 0u);
}

// ---------------------------------------------------------------- 9. backoff

BackoffOptions test_backoff() {
  BackoffOptions b;
  b.min_delay = 100ms;
  b.max_delay = 1s;
  b.multiplier = 2.0;
  b.jitter = 0.2;
  b.reset_after = 10s;
  return b;
}

// A one_for_one supervisor whose child "w" backs off; the intensity is high enough for the loop.
Pid start_backoff_sup(World& w) {
  ChildSpec c = w.worker("w");
  c.backoff = test_backoff();
  return w.start(make_spec("s", Strategy::kOneForOne, {c}, /*intensity=*/100, 5s));
}

// Crashes "w", checks that the restart waits exactly the reported delay, returns that delay.
Duration crash_and_wait_out(World& w) {
  std::size_t from = w.mark();
  Pid old = w.pids.at("w");
  w.crash("w");
  EXPECT_EQ(w.lines(from), (Lines{"exited w crash", "delayed w"}));
  const SupervisionEvent* delayed = w.last(Type::kRestartDelayed);
  if (delayed == nullptr) return Duration::zero();
  Duration d = delayed->delay;
  TimePoint at = delayed->at;
  w.rt().advance(d - 1ns);
  EXPECT_EQ(w.pids.at("w"), old) << "restarted before its delay";
  EXPECT_EQ(w.count(Type::kChildRestarted), static_cast<int>(w.count(Type::kRestartDelayed)) - 1);
  w.rt().advance(1ns);
  EXPECT_NE(w.pids.at("w"), old);
  EXPECT_TRUE(w.rt().alive(w.pids.at("w")));
  const SupervisionEvent* restarted = w.last(Type::kChildRestarted);
  EXPECT_TRUE(restarted != nullptr && restarted->at == at + d);
  return d;
}

// Bounds for attempt n: [min * mult^n, min * mult^n * (1 + jitter)), capped at max.
void expect_in_bounds(Duration d, int n) {
  BackoffOptions b = test_backoff();
  double base = static_cast<double>(b.min_delay.count()) * std::pow(b.multiplier, n);
  double cap = static_cast<double>(b.max_delay.count());
  double got = static_cast<double>(d.count());
  if (base >= cap) {
    EXPECT_EQ(d, b.max_delay) << "attempt " << n;
  } else {
    EXPECT_GE(got, base) << "attempt " << n;
    EXPECT_LT(got, std::min(base * (1 + b.jitter), cap + 1)) << "attempt " << n;
  }
}

TEST(SupervisorBackoff, DelaysGrowByTheMultiplierWithinBounds) {
  World w;
  start_backoff_sup(w);
  std::vector<Duration> delays;
  for (int n = 0; n < 7; ++n) {
    delays.push_back(crash_and_wait_out(w));
    expect_in_bounds(delays.back(), n);
  }
  // Growth between uncapped attempts: multiplier, within the jitter.
  for (std::size_t n = 1; n < 4; ++n) {
    double ratio = static_cast<double>(delays[n].count()) / static_cast<double>(delays[n - 1].count());
    EXPECT_GT(ratio, 2.0 / 1.2) << n;
    EXPECT_LT(ratio, 2.0 * 1.2) << n;
  }
  EXPECT_EQ(w.count(Type::kIntensityExceeded), 0);
}

// The delayed restart is a timer the supervisor set for itself: a full mailbox when it fires
// (here the fault point, on for every send) does not lose it.
TEST(SupervisorBackoff, ADelayedRestartSurvivesAFullMailbox) {
  World w;
  start_backoff_sup(w);
  Pid old = w.pids.at("w");
  w.crash("w");
  const SupervisionEvent* delayed = w.last(Type::kRestartDelayed);
  ASSERT_NE(delayed, nullptr);
  const Duration d = delayed->delay;
  w.sim.env.set_faults(FaultOptions{}.set(FaultPoint::kMailboxFull, 1.0));
  w.rt().advance(d);
  w.sim.env.set_faults({});
  EXPECT_NE(w.pids.at("w"), old) << "the restart was lost";
  EXPECT_TRUE(w.rt().alive(w.pids.at("w")));
  EXPECT_EQ(w.count(Type::kChildRestarted), 1);
}

TEST(SupervisorBackoff, WithoutJitterDelaysAreExact) {
  World w;
  ChildSpec c = w.worker("w");
  c.backoff = test_backoff();
  c.backoff->jitter = 0;
  w.start(make_spec("s", Strategy::kOneForOne, {c}, /*intensity=*/100, 5s));
  std::vector<Duration> delays;
  for (int n = 0; n < 6; ++n) delays.push_back(crash_and_wait_out(w));
  EXPECT_EQ(delays, (std::vector<Duration>{100ms, 200ms, 400ms, 800ms, 1s, 1s}));
}

TEST(SupervisorBackoff, AttemptCounterResetsAfterAHealthyRun) {
  World w;
  start_backoff_sup(w);
  for (int n = 0; n < 3; ++n) expect_in_bounds(crash_and_wait_out(w), n);
  w.rt().advance(10s - 1ns);  // not quite healthy long enough: the count goes on
  expect_in_bounds(crash_and_wait_out(w), 3);
  w.rt().advance(10s);  // healthy for reset_after: back to min_delay
  expect_in_bounds(crash_and_wait_out(w), 0);
  expect_in_bounds(crash_and_wait_out(w), 1);
}

TEST(SupervisorBackoff, ChildIsShownRestartingDuringTheDelay) {
  World w;
  Pid sup = start_backoff_sup(w);
  w.crash("w");
  std::optional<ChildInfo> info;
  w.drive([&](Context& ctx) -> Task<> {
    auto r = co_await which_children(ctx, sup);
    if (r.ok() && r->size() == 1) info = r->front();
  });
  ASSERT_TRUE(info.has_value());
  EXPECT_TRUE(info->restarting);
  EXPECT_FALSE(info->pid.valid());
}

// terminate_child stops a child for good (until restart_child): a restart pending for its
// backoff delay must not bring it back.
TEST(SupervisorBackoff, TerminateChildCancelsAPendingRestart) {
  World w;
  Pid sup = start_backoff_sup(w);
  w.crash("w");
  Pid old = w.pids.at("w");
  w.drive([&](Context& ctx) -> Task<> {
    auto r = co_await terminate_child(ctx, sup, std::string("w"));
    EXPECT_THAT(r, IsOk());
  });
  w.rt().advance(2s);
  EXPECT_EQ(w.pids.at("w"), old);
  EXPECT_EQ(w.count(Type::kChildRestarted), 0);
  EXPECT_EQ(w.rt().process_count(), 1u);  // the supervisor only
}

// restart_child during the delay starts the child at once; the delay's end does not start a
// second one.
TEST(SupervisorBackoff, RestartChildDuringTheDelayStartsItOnce) {
  World w;
  Pid sup = start_backoff_sup(w);
  w.crash("w");
  w.drive([&](Context& ctx) -> Task<> {
    auto r = co_await restart_child(ctx, sup, "w");
    EXPECT_THAT(r, IsOk());
  });
  Pid now_running = w.pids.at("w");
  EXPECT_TRUE(w.rt().alive(now_running));
  w.rt().advance(2s);
  EXPECT_EQ(w.pids.at("w"), now_running);
  EXPECT_EQ(w.count(Type::kChildRestarted), 1);
  EXPECT_EQ(w.rt().process_count(), 2u);
}

// Everything random comes from the environment's seed: the same seed replays the same timeline.
std::vector<std::tuple<std::string, std::int64_t, std::int64_t, std::int64_t>> backoff_timeline(std::uint64_t seed) {
  World w(seed);
  start_backoff_sup(w);
  for (int n = 0; n < 6; ++n) {
    w.crash("w");
    if (auto* d = w.last(Type::kRestartDelayed)) w.rt().advance(d->delay);
  }
  std::vector<std::tuple<std::string, std::int64_t, std::int64_t, std::int64_t>> out;
  for (auto& e : w.events) {
    out.emplace_back(describe(e), e.at.time_since_epoch().count(), e.unix_time_ns, e.delay.count());
  }
  return out;
}

TEST(SupervisorBackoff, SameSeedGivesIdenticalTimeline) {
  auto a = backoff_timeline(7);
  auto b = backoff_timeline(7);
  EXPECT_EQ(a.size(), 1u + 1u + 6u * 3u);  // started, sup_started, (exited, delayed, restarted) x 6
  EXPECT_EQ(a, b);
  EXPECT_NE(a, backoff_timeline(8));  // the jitter does come from the seed
}

// ---------------------------------------------------------------- 10. control of a static supervisor

TEST(SupervisorControl, StartChildAddsAChildAtTheEnd) {
  World w;
  Pid sup = w.start(make_spec("s", Strategy::kRestForOne, {w.worker("a"), w.worker("b")}));
  std::size_t from = w.mark();
  w.drive([&](Context& ctx) -> Task<> {
    auto c = co_await start_child(ctx, sup, w.worker("c"));
    EXPECT_THAT(c, IsOk());
    if (c.ok()) {
      EXPECT_EQ(*c, w.pids.at("c"));
    }
    auto dup = co_await start_child(ctx, sup, w.worker("c"));
    EXPECT_THAT(dup, StatusIs(ErrorKind::kAlreadyExists));
    auto dup_static = co_await start_child(ctx, sup, w.worker("a"));
    EXPECT_THAT(dup_static, StatusIs(ErrorKind::kAlreadyExists));
    auto invalid = co_await start_child(ctx, sup, w.worker(""));
    EXPECT_THAT(invalid, StatusIs(ErrorKind::kInvalidArgument));
    ChildSpec bad = w.worker("d");
    bad.start = [](StartContext&) -> Result<Pid> { return Error(ErrorKind::kTransient, "nope"); };
    auto failed = co_await start_child(ctx, sup, bad);
    EXPECT_THAT(failed, StatusIs(ErrorKind::kStartFailed));
    auto retry = co_await start_child(ctx, sup, w.worker("d"));  // the failed spec was not kept
    EXPECT_THAT(retry, IsOk());
    auto dyn = co_await start_dynamic_child(ctx, sup, 1);
    EXPECT_THAT(dyn, StatusIs(ErrorKind::kInvalidArgument));
  });
  EXPECT_EQ(w.lines(from), (Lines{"started c", "start_failed d", "started d"}));
  // The added children are ordinary members: rest_for_one after b restarts b, c and d.
  from = w.mark();
  w.crash("b");
  EXPECT_EQ(w.lines(from), (Lines{"exited b crash", "exited d shutdown by_sup", "exited c shutdown by_sup",
                                  "restarted b", "restarted c", "restarted d"}));
}

TEST(SupervisorControl, TerminateRestartDeleteChild) {
  World w;
  Pid sup = w.start(make_spec("s", Strategy::kOneForOne, {w.worker("a"), w.worker("b"), w.worker("c")}));
  Pid b0 = w.pids.at("b");
  std::size_t from = w.mark();
  w.drive([&](Context& ctx) -> Task<> {
    auto del_running = co_await delete_child(ctx, sup, "b");
    EXPECT_FALSE(del_running.ok());  // OTP: {error, running}
    auto t = co_await terminate_child(ctx, sup, std::string("b"));
    EXPECT_THAT(t, IsOk());
    auto t_again = co_await terminate_child(ctx, sup, std::string("b"));  // already stopped: fine
    EXPECT_THAT(t_again, IsOk());
    auto t_missing = co_await terminate_child(ctx, sup, std::string("nope"));
    EXPECT_THAT(t_missing, StatusIs(ErrorKind::kNotFound));

    auto which = co_await which_children(ctx, sup);
    EXPECT_THAT(which, IsOk());
    if (which.ok()) {
      EXPECT_EQ(which->size(), 3u);  // the spec stays
      if (which->size() == 3u) {
        EXPECT_EQ((*which)[1].id, "b");
        EXPECT_FALSE((*which)[1].pid.valid());
      }
    }
    auto counts = co_await count_children(ctx, sup);
    if (counts.ok()) {
      EXPECT_EQ(counts->specs, 3u);
      EXPECT_EQ(counts->active, 2u);
    }

    auto r = co_await restart_child(ctx, sup, "b");
    EXPECT_THAT(r, IsOk());
    if (r.ok()) {
      EXPECT_NE(*r, b0);
    }
    auto r_running = co_await restart_child(ctx, sup, "b");
    EXPECT_THAT(r_running, StatusIs(ErrorKind::kAlreadyExists));
    auto r_missing = co_await restart_child(ctx, sup, "nope");
    EXPECT_THAT(r_missing, StatusIs(ErrorKind::kNotFound));

    (void)co_await terminate_child(ctx, sup, std::string("b"));
    auto del = co_await delete_child(ctx, sup, "b");
    EXPECT_THAT(del, IsOk());
    auto del_again = co_await delete_child(ctx, sup, "b");
    EXPECT_THAT(del_again, StatusIs(ErrorKind::kNotFound));
    auto r_deleted = co_await restart_child(ctx, sup, "b");
    EXPECT_THAT(r_deleted, StatusIs(ErrorKind::kNotFound));
    auto after = co_await which_children(ctx, sup);
    if (after.ok()) {
      std::vector<std::string> ids;
      for (auto& ch : *after) ids.push_back(ch.id);
      EXPECT_EQ(ids, (std::vector<std::string>{"a", "c"}));
    }
  });
  // A permanent child stopped by terminate_child is not restarted by the supervisor.
  EXPECT_EQ(w.lines(from), (Lines{"exited b shutdown by_sup", "restarted b", "exited b shutdown by_sup"}));
  EXPECT_EQ(w.rt().process_count(), 3u);
}

// OTP: terminating a temporary child also deletes its spec.
TEST(SupervisorControl, TerminatingATemporaryChildForgetsIt) {
  World w;
  Pid sup = w.start(make_spec("s", Strategy::kOneForOne, {w.worker("a"), w.worker("t", RestartType::kTemporary)}));
  w.drive([&](Context& ctx) -> Task<> {
    auto t = co_await terminate_child(ctx, sup, std::string("t"));
    EXPECT_THAT(t, IsOk());
    auto r = co_await restart_child(ctx, sup, "t");
    EXPECT_THAT(r, StatusIs(ErrorKind::kNotFound));
  });
}

// ---------------------------------------------------------------- 11. with fault points on

// Fault points (core/fault.hpp) on for the Worlds made while it lives.
class FaultsOn {
 public:
  explicit FaultsOn(const FaultOptions& o) : saved_(world_faults()) { world_faults() = o; }
  ~FaultsOn() { world_faults() = saved_; }

 private:
  FaultOptions saved_;
};

// Late timers (shutdown timeouts, sends after a delay) and full mailboxes (the test's own
// sends retry). Backoff and failed restarts are left out: their retry (RestartDue, a message
// the supervisor sends itself with send_after) is dropped by a full mailbox (see the report
// in docs/sim.md, "Fault points").
FaultOptions supervisor_faults() {
  FaultOptions o = FaultOptions{}.set(FaultPoint::kTimerLate, 0.3).set(FaultPoint::kMailboxFull, 0.3);
  o.max_delay = 20ms;
  return o;
}

// The strategy cases again, with the faults on: exactly the same events and restarts.
TEST_P(SupervisorStrategy, WithFaultsOnTheSameChildrenRestart) {
  FaultsOn on(supervisor_faults());
  check_strategy_case(GetParam());
}

// Seeded crash loops in a two-level tree, root (one_for_one) -> sup (random strategy and
// limits) -> a, b, c (random shutdown behaviour), with the fault points on. After every crash
// the OTP invariants hold: the tree is whole again (no process lost or leaked); either exactly
// the strategy's children were restarted, or sup gave up (more than `intensity` restarts
// within `period`, never fewer) and root restarted it with new children.
struct UnderFaults {
  std::uint64_t fired = 0;  // fault points fired
  int give_ups = 0;
  Lines timeline;  // the last seed's events, time-stamped
};

std::vector<std::string> crash_loop_under_faults(std::uint64_t seed, UnderFaults& tally) {
  std::vector<std::string> bad;
  auto fail = [&](const std::string& what) { bad.push_back("seed " + std::to_string(seed) + ": " + what); };
  World w(seed);
  SimEnvironment& env = w.sim.env;
  static constexpr Strategy kStrategies[] = {Strategy::kOneForOne, Strategy::kOneForAll, Strategy::kRestForOne};
  const Strategy strategy = kStrategies[env.random_below(3)];
  const int intensity = 1 + static_cast<int>(env.random_below(4));
  const Duration period = std::chrono::milliseconds(200 + env.random_below(2000));
  std::vector<ChildSpec> kids;
  for (const char* id : {"a", "b", "c"}) {
    const auto mode = static_cast<OnShutdown>(env.random_below(3));
    ChildSpec c = w.worker(id, RestartType::kPermanent, mode);
    c.shutdown = ShutdownSpec::after(std::chrono::milliseconds(10 + env.random_below(50)));
    kids.push_back(std::move(c));
  }
  w.start(make_spec("root", Strategy::kOneForOne,
                    {w.supervisor("sup", make_spec("sup", strategy, std::move(kids), intensity, period))},
                    /*intensity=*/1000, 1s));
  const std::vector<std::string> ids = {"a", "b", "c"};
  const int crashes = 1 + static_cast<int>(env.random_below(12));
  for (int k = 0; k < crashes; ++k) {
    w.rt().advance(std::chrono::milliseconds(env.random_below(200)));
    const std::string victim = ids[env.random_below(3)];
    const auto before = w.pids;
    const int gave_up_before = w.count(Type::kIntensityExceeded, "sup");
    w.crash(victim);
    w.rt().advance(300ms);  // three shutdown timeouts (at most 60 ms, and 20 ms late) and more
    const std::string at = "crash " + std::to_string(k) + " of " + victim + ": ";

    // The tree is whole.
    if (w.rt().process_count() != 5u) fail(at + std::to_string(w.rt().process_count()) + " processes, not 5");
    for (auto& [id, pid] : w.pids) {
      if (!w.rt().alive(pid)) fail(at + id + " is not running");
    }
    // Exactly the strategy's children restarted, or a give-up and a whole new sup.
    std::vector<std::string> expected;
    const bool gave_up = w.count(Type::kIntensityExceeded, "sup") != gave_up_before;
    if (gave_up) {
      expected = {"a", "b", "c", "sup"};
    } else if (strategy == Strategy::kOneForOne) {
      expected = {victim};
    } else if (strategy == Strategy::kOneForAll) {
      expected = ids;
    } else {
      for (const std::string& id : ids)
        if (id >= victim) expected.push_back(id);
    }
    if (changed(before, w.pids) != expected) fail(at + "restarted the wrong children");
  }
  // Intensity, per incarnation of sup: a give-up at T follows more than `intensity` restarts
  // (exits sup did not cause) within [T - period, T]; without a give-up, never more.
  std::vector<TimePoint> restarts;
  for (const SupervisionEvent& e : w.events) {
    if (e.supervisor_name != "sup") continue;
    if (e.type == Type::kSupervisorStarted) restarts.clear();
    if (e.type == Type::kChildExited && !e.by_supervisor) restarts.push_back(e.at);
    const auto in_window =
        std::count_if(restarts.begin(), restarts.end(), [&](TimePoint t) { return t >= e.at - period; });
    if (e.type == Type::kIntensityExceeded && in_window <= intensity) fail("gave up with too few restarts");
    if (e.type == Type::kChildRestarted && in_window > intensity) fail("restarted past its intensity");
  }
  tally.fired += env.faults_fired();
  tally.give_ups += w.count(Type::kIntensityExceeded, "sup");
  tally.timeline = w.tagged();
  for (std::size_t i = 0; i < w.events.size(); ++i) {
    tally.timeline[i] += " @" + std::to_string(w.events[i].at.time_since_epoch().count());
  }
  return bad;
}

TEST(SupervisorUnderFaults, SeededCrashLoopsKeepTheOtpInvariants) {
  FaultsOn on(supervisor_faults());
  std::vector<std::string> bad;
  UnderFaults t;
  for (std::uint64_t seed = 1; seed <= 200 && bad.size() < 10; ++seed) {
    auto b = crash_loop_under_faults(seed, t);
    bad.insert(bad.end(), b.begin(), b.end());
  }
  EXPECT_TRUE(bad.empty()) << bad.size() << " violations, first: " << bad.front();
  EXPECT_GT(t.fired, 200u);   // the faults did fire
  EXPECT_GT(t.give_ups, 20);  // and the limits were reached
}

TEST(SupervisorUnderFaults, ASeedReplaysExactly) {
  FaultsOn on(supervisor_faults());
  auto run = [](std::uint64_t seed) {
    UnderFaults t;
    EXPECT_TRUE(crash_loop_under_faults(seed, t).empty());
    t.timeline.push_back("fired " + std::to_string(t.fired));
    return t.timeline;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

}  // namespace
}  // namespace nines
