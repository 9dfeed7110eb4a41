// Hedging policy: on the deterministic runtime (virtual time, seeded scheduling), each case
// run over several seeds with exact times; plus one concurrency test on the real scheduler
// (2 workers) whose counts are exact.
#include "nines/resilience/hedging.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "nines/runtime/runtime.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using test::SimRuntime;

constexpr std::uint64_t kSeeds[] = {1, 2, 3, 17, 4242};

Error err(ErrorKind kind, std::string message = "boom") { return Error(kind, std::move(message)); }

HedgingPolicy make_policy(HedgingOptions o) {
  auto p = HedgingPolicy::create(o);
  if (!p.ok()) ADD_FAILURE() << p.error().to_string();
  return std::move(p).value();
}

// What the n-th attempt (1-based, in the order attempts begin to run) does: wait `takes`,
// then return `outcome`.
struct Step {
  Result<int> outcome;
  Duration takes = 0ns;
};
using Script = std::function<Step(int n)>;

struct AttemptRecord {
  Pid pid;
  Duration started{};    // relative to the call's start
  TimePoint deadline{};  // ctx.deadline() inside the attempt process
  bool finished = false;
  std::shared_ptr<ExitWatch> exit;
};

struct CallRecord {
  TimePoint t0{};
  std::optional<Result<int>> result;
  Duration ended_at{};
  std::vector<AttemptRecord> attempts;
  std::vector<bool> alive_at_return;  // per attempt, Runtime::alive right after run() returned
  std::size_t processes_at_return = 0;
  std::size_t mailbox_at_return = 0;
  std::string exception;
};

// The attempt function: records itself, follows the script. Captures by value only.
std::function<Task<Result<int>>(Context&)> scripted(std::shared_ptr<CallRecord> rec, Script script) {
  return [rec, script](Context& c) -> Task<Result<int>> {
    AttemptRecord a;
    a.pid = c.self();
    a.started = c.now() - rec->t0;
    a.deadline = c.deadline();
    a.exit = c.runtime().watch_exit(c.self());
    std::size_t i = rec->attempts.size();
    rec->attempts.push_back(a);
    Step step = script(static_cast<int>(i) + 1);
    if (step.takes > 0ns) {
      Result<std::any> slept = co_await c.sleep(step.takes);
      if (!slept.ok()) co_return std::move(slept).error();
    }
    rec->attempts[i].finished = true;
    co_return std::move(step.outcome);
  };
}

// Spawns a caller that runs one hedged call under a deadline `deadline_after` from its start.
Pid spawn_call(SimRuntime& s, const HedgingPolicy& policy, std::shared_ptr<CallRecord> rec, Script script,
               Duration deadline_after = kInfinite, bool trap_exit = false) {
  return s.spawn([rec, policy, script, deadline_after, trap_exit](Context& ctx) -> Task<> {
    ctx.set_trap_exit(trap_exit);
    rec->t0 = ctx.now();
    auto scope = ctx.with_timeout(deadline_after);
    auto attempt = scripted(rec, script);
    try {
      Result<int> r = co_await policy.run<int>(ctx, attempt);
      rec->result.emplace(std::move(r));
    } catch (const std::runtime_error& e) {
      rec->exception = e.what();
    }
    rec->ended_at = ctx.now() - rec->t0;
    for (const auto& a : rec->attempts) rec->alive_at_return.push_back(ctx.runtime().alive(a.pid));
    rec->processes_at_return = ctx.runtime().process_count();
    rec->mailbox_at_return = ctx.mailbox_size();
  });
}

CallRecord run_call(const HedgingPolicy& policy, Script script, std::uint64_t seed,
                    Duration deadline_after = kInfinite) {
  SimRuntime s(seed);
  auto rec = std::make_shared<CallRecord>();
  spawn_call(s, policy, rec, std::move(script), deadline_after);
  s.rt->advance(1h);
  EXPECT_TRUE(rec->result.has_value() || !rec->exception.empty()) << "the call did not finish";
  EXPECT_EQ(s.rt->process_count(), 0u);
  // Nothing started by run() is alive when it returns; only the caller itself is.
  for (bool alive : rec->alive_at_return) EXPECT_FALSE(alive);
  EXPECT_EQ(rec->processes_at_return, 1u);
  EXPECT_EQ(rec->mailbox_at_return, 0u);
  return *rec;
}

std::vector<Duration> starts_of(const CallRecord& r) {
  std::vector<Duration> v;
  for (const auto& a : r.attempts) v.push_back(a.started);
  return v;
}

// Attempt n returns 100 + n after `takes[n - 1]`; failures as given.
Script succeed_after(std::vector<Duration> takes) {
  return [takes](int n) { return Step{100 + n, takes[static_cast<std::size_t>(n - 1)]}; };
}

// ---------------------------------------------------------------------------------------------

TEST(HedgingPolicy, FastPrimaryStartsNoHedge) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 2, .delay = 1s});
    CallRecord r = run_call(policy, succeed_after({200ms, 200ms}), seed);
    ASSERT_TRUE(r.result->ok());
    EXPECT_EQ(**r.result, 101);
    EXPECT_EQ(r.ended_at, 200ms);
    EXPECT_EQ(starts_of(r), std::vector<Duration>({0ms}));
    HedgingStats st = policy.stats();
    EXPECT_EQ(st.runs, 1u);
    EXPECT_EQ(st.attempts, 1u);
    EXPECT_EQ(st.hedges, 0u);
    EXPECT_EQ(st.cancelled, 0u);
    EXPECT_EQ(st.successes, 1u);
    EXPECT_EQ(st.wins, std::vector<std::uint64_t>({1, 0}));
  }
}

TEST(HedgingPolicy, SlowPrimaryHedgeStartsAfterDelayWinsAndPrimaryIsKilled) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 2, .delay = 1s});
    CallRecord r = run_call(policy, succeed_after({5s, 300ms}), seed);
    ASSERT_TRUE(r.result->ok());
    EXPECT_EQ(**r.result, 102);  // the hedge's value
    EXPECT_EQ(r.ended_at, 1300ms);
    EXPECT_EQ(starts_of(r), std::vector<Duration>({0ms, 1s}));
    ASSERT_EQ(r.attempts.size(), 2u);
    EXPECT_FALSE(r.attempts[0].finished);
    EXPECT_TRUE(r.attempts[1].finished);
    ASSERT_TRUE(r.attempts[0].exit->done());
    EXPECT_EQ(r.attempts[0].exit->reason().kind, ExitReason::Kind::kKilled);
    EXPECT_TRUE(r.attempts[1].exit->reason().is_normal());
    HedgingStats st = policy.stats();
    EXPECT_EQ(st.attempts, 2u);
    EXPECT_EQ(st.hedges, 1u);
    EXPECT_EQ(st.hedges_at_once, 0u);
    EXPECT_EQ(st.cancelled, 1u);
    EXPECT_EQ(st.wins, std::vector<std::uint64_t>({0, 1}));
  }
}

TEST(HedgingPolicy, EachHedgeStartsDelayAfterThePreviousOne) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 3, .delay = 400ms});
    CallRecord r = run_call(policy, succeed_after({10s, 10s, 100ms}), seed);
    ASSERT_TRUE(r.result->ok());
    EXPECT_EQ(**r.result, 103);
    EXPECT_EQ(starts_of(r), std::vector<Duration>({0ms, 400ms, 800ms}));
    EXPECT_EQ(r.ended_at, 900ms);
    EXPECT_EQ(policy.stats().cancelled, 2u);
    EXPECT_EQ(policy.stats().wins, std::vector<std::uint64_t>({0, 0, 1}));
  }
}

struct FailureCase {
  const char* name;
  HedgingOptions options;
  Error first_failure;
  std::vector<Duration> starts;  // expected
  Duration ended_at;
  std::uint64_t hedges_at_once;
};

TEST(HedgingPolicy, FailureKindDecidesWhenTheNextAttemptStarts) {
  Classifier overloaded_is_transient = [](const Error& e) {
    return e.message() == "overloaded" ? ErrorKind::kTransient : e.kind();
  };
  const std::vector<FailureCase> cases = {
      {"transient: at once", {.max_attempts = 2, .delay = 1s}, err(ErrorKind::kTransient), {0ms, 100ms}, 300ms, 1},
      {"timeout: at once", {.max_attempts = 2, .delay = 1s}, err(ErrorKind::kTimeout), {0ms, 100ms}, 300ms, 1},
      {"rate limited: keeps the schedule",
       {.max_attempts = 2, .delay = 1s},
       err(ErrorKind::kRateLimited),
       {0ms, 1s},
       1200ms,
       0},
      {"custom hedge_at_once",
       {.max_attempts = 2, .delay = 1s, .hedge_at_once = [](ErrorKind k) { return k == ErrorKind::kRateLimited; }},
       err(ErrorKind::kRateLimited),
       {0ms, 100ms},
       300ms,
       1},
      {"classifier",
       {.max_attempts = 2, .delay = 1s, .classifier = overloaded_is_transient},
       err(ErrorKind::kPermanent, "overloaded"),
       {0ms, 100ms},
       300ms,
       1},
      {"infinite delay: hedge only on failure",
       {.max_attempts = 2, .delay = kInfinite},
       err(ErrorKind::kTransient),
       {0ms, 100ms},
       300ms,
       1},
  };
  for (const auto& c : cases) {
    for (std::uint64_t seed : kSeeds) {
      SCOPED_TRACE(std::string(c.name) + ", seed " + std::to_string(seed));
      auto policy = make_policy(c.options);
      Error first = c.first_failure;
      Script script = [first](int n) { return n == 1 ? Step{first, 100ms} : Step{100 + n, 200ms}; };
      CallRecord r = run_call(policy, script, seed);
      ASSERT_TRUE(r.result->ok()) << r.result->error().to_string();
      EXPECT_EQ(**r.result, 102);
      EXPECT_EQ(starts_of(r), c.starts);
      EXPECT_EQ(r.ended_at, c.ended_at);
      EXPECT_EQ(policy.stats().hedges_at_once, c.hedges_at_once);
      EXPECT_EQ(policy.stats().cancelled, 0u);
    }
  }
}

TEST(HedgingPolicy, NotRetryableFailureEndsTheRunAndCancelsTheOthers) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 3, .delay = 1s});
    // The primary fails permanently at 1.5 s while the hedge (started at 1 s) still runs.
    Script script = [](int n) {
      return n == 1 ? Step{err(ErrorKind::kPermanent, "bad request"), 1500ms} : Step{7, 10s};
    };
    CallRecord r = run_call(policy, script, seed);
    ASSERT_FALSE(r.result->ok());
    EXPECT_THAT(*r.result, StatusIs(ErrorKind::kPermanent));
    EXPECT_EQ(r.result->error().message(), "bad request");
    EXPECT_EQ(r.ended_at, 1500ms);
    EXPECT_EQ(starts_of(r), std::vector<Duration>({0ms, 1s}));  // no third attempt
    EXPECT_EQ(policy.stats().cancelled, 1u);
    EXPECT_EQ(policy.stats().failures, 1u);
  }
}

TEST(HedgingPolicy, AllAttemptsFailReturnsTheLastErrorWithTheCount) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 3, .delay = 1s});
    Script script = [](int n) { return Step{err(ErrorKind::kTransient, "fail " + std::to_string(n)), 100ms}; };
    CallRecord r = run_call(policy, script, seed);
    ASSERT_FALSE(r.result->ok());
    EXPECT_THAT(*r.result, StatusIs(ErrorKind::kTransient));
    EXPECT_EQ(r.result->error().message(), "hedging: all 3 attempts failed: fail 3");
    EXPECT_EQ(starts_of(r), std::vector<Duration>({0ms, 100ms, 200ms}));
    EXPECT_EQ(r.ended_at, 300ms);
    HedgingStats st = policy.stats();
    EXPECT_EQ(st.failures, 1u);
    EXPECT_EQ(st.successes, 0u);
    EXPECT_EQ(st.hedges_at_once, 2u);
    EXPECT_EQ(st.cancelled, 0u);
  }
}

TEST(HedgingPolicy, ZeroDelayStartsAllAttemptsAtOnce) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 3, .delay = 0ms});
    CallRecord r = run_call(policy, succeed_after({3s, 1s, 2s}), seed);
    ASSERT_TRUE(r.result->ok());
    EXPECT_EQ(starts_of(r), std::vector<Duration>({0ms, 0ms, 0ms}));
    EXPECT_EQ(r.ended_at, 1s);
    EXPECT_EQ(policy.stats().cancelled, 2u);
    // Which process ran the 1 s script depends on the seed; exactly one attempt won.
    EXPECT_EQ(policy.stats().successes, 1u);
  }
}

// ---------------------------------------------------------------------------------------------
// Deadlines

TEST(HedgingPolicy, DeadlineCancelsEverythingAndLeavesNoProcess) {
  struct DeadlineCase {
    Duration deadline;
    std::vector<Duration> starts;
  };
  const std::vector<DeadlineCase> cases = {{1500ms, {0ms, 1s}}, {800ms, {0ms}}, {1s, {0ms}}};
  for (const auto& c : cases) {
    for (std::uint64_t seed : kSeeds) {
      SCOPED_TRACE("deadline " + std::to_string(to_millis(c.deadline)) + " ms, seed " + std::to_string(seed));
      auto policy = make_policy({.max_attempts = 3, .delay = 1s});
      CallRecord r = run_call(policy, succeed_after({10s, 10s, 10s}), seed, c.deadline);
      ASSERT_FALSE(r.result->ok());
      EXPECT_THAT(*r.result, StatusIs(ErrorKind::kDeadlineExceeded));
      EXPECT_EQ(r.ended_at, c.deadline);
      EXPECT_EQ(starts_of(r), c.starts);
      for (const auto& a : r.attempts) {
        EXPECT_EQ(a.deadline, r.t0 + c.deadline);  // each attempt runs under the caller's deadline
        EXPECT_FALSE(a.finished);
      }
      HedgingStats st = policy.stats();
      EXPECT_EQ(st.deadline_exceeded, 1u);
      EXPECT_EQ(st.failures, 1u);
    }
  }
}

TEST(HedgingPolicy, PassedDeadlineStartsNothing) {
  auto policy = make_policy({});
  SimRuntime s(1);
  auto rec = std::make_shared<CallRecord>();
  s.spawn([&](Context& ctx) -> Task<> {
    auto scope = ctx.with_deadline(ctx.now());
    auto attempt = scripted(rec, succeed_after({1ms, 1ms}));
    Result<int> r = co_await policy.run<int>(ctx, attempt);
    rec->result.emplace(std::move(r));
  });
  s.rt->run_until_idle();
  ASSERT_TRUE(rec->result.has_value());
  EXPECT_THAT(*rec->result, StatusIs(ErrorKind::kDeadlineExceeded));
  EXPECT_TRUE(rec->attempts.empty());
  EXPECT_EQ(policy.stats().attempts, 0u);
  EXPECT_EQ(s.rt->process_count(), 0u);
}

// ---------------------------------------------------------------------------------------------
// Process lifetime

TEST(HedgingPolicy, KilledCallerTakesItsAttemptsWithIt) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 2, .delay = 1s});
    SimRuntime s(seed);
    const std::size_t baseline = s.rt->process_count();
    auto rec = std::make_shared<CallRecord>();
    Pid caller = spawn_call(s, policy, rec, succeed_after({10s, 10s}));
    s.rt->advance(1500ms);
    ASSERT_EQ(rec->attempts.size(), 2u);
    EXPECT_EQ(s.rt->process_count(), baseline + 3);
    s.rt->send_exit(caller, ExitReason::kill());
    s.rt->run_until_idle();
    EXPECT_EQ(s.rt->process_count(), baseline);
    for (const auto& a : rec->attempts) {
      EXPECT_FALSE(s.rt->alive(a.pid));
      ASSERT_TRUE(a.exit->done());
      EXPECT_EQ(a.exit->reason().kind, ExitReason::Kind::kKilled);
      EXPECT_FALSE(a.finished);
    }
    EXPECT_FALSE(rec->result.has_value());
    s.rt->advance(1h);  // nothing wakes up later
    EXPECT_EQ(s.rt->process_count(), baseline);
  }
}

TEST(HedgingPolicy, TrappingCallerGetsNoExitMessages) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 3, .delay = 1s});
    SimRuntime s(seed);
    auto rec = std::make_shared<CallRecord>();
    spawn_call(s, policy, rec, succeed_after({10s, 10s, 10ms}), kInfinite, /*trap_exit=*/true);
    s.rt->advance(1h);
    ASSERT_TRUE(rec->result.has_value());
    EXPECT_EQ(**rec->result, 103);
    EXPECT_EQ(rec->mailbox_at_return, 0u);  // neither Exit nor Down nor a stale reply
    EXPECT_EQ(rec->processes_at_return, 1u);
  }
}

TEST(HedgingPolicy, ExceptionInAnAttemptIsRethrownAndTheOthersCancelled) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 2, .delay = 1s});
    SimRuntime s(seed);
    auto rec = std::make_shared<CallRecord>();
    Script script = [](int n) -> Step {
      if (n == 2) throw std::runtime_error("bug in attempt");
      return Step{1, 10s};
    };
    spawn_call(s, policy, rec, script);
    s.rt->advance(1h);
    EXPECT_FALSE(rec->result.has_value());
    EXPECT_EQ(rec->exception, "bug in attempt");
    EXPECT_EQ(rec->ended_at, 1s);
    EXPECT_EQ(rec->processes_at_return, 1u);
    EXPECT_EQ(policy.stats().cancelled, 1u);
    EXPECT_EQ(s.rt->process_count(), 0u);
  }
}

TEST(HedgingPolicy, AttemptExitingWithoutAResultCountsAsATransientFailure) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto policy = make_policy({.max_attempts = 2, .delay = 1s});
    SimRuntime s(seed);
    auto rec = std::make_shared<CallRecord>();
    std::function<Task<Result<int>>(Context&)> attempt = [rec](Context& c) -> Task<Result<int>> {
      rec->attempts.push_back(AttemptRecord{c.self(), c.now() - rec->t0, c.deadline(), false, nullptr});
      if (rec->attempts.size() == 1) {
        co_await c.sleep(50ms);
        c.exit(ExitReason::normal());  // no reply; the linked caller ignores a normal exit
      }
      co_return 5;
    };
    s.spawn([&](Context& ctx) -> Task<> {
      rec->t0 = ctx.now();
      Result<int> r = co_await policy.run<int>(ctx, attempt);
      rec->result.emplace(std::move(r));
      rec->ended_at = ctx.now() - rec->t0;
    });
    s.rt->advance(1h);
    ASSERT_TRUE(rec->result.has_value());
    ASSERT_TRUE(rec->result->ok());
    EXPECT_EQ(**rec->result, 5);
    EXPECT_EQ(starts_of(*rec), std::vector<Duration>({0ms, 50ms}));  // the next started at once
    EXPECT_EQ(policy.stats().hedges_at_once, 1u);
    EXPECT_EQ(s.rt->process_count(), 0u);
  }
}

// ---------------------------------------------------------------------------------------------
// Stale replies

TEST(HedgingPolicy, RepliesOfOtherRunsAreIgnoredAndLosersRepliesRemoved) {
  for (std::uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    // Zero delay and attempts that answer without waiting: depending on the seed, several
    // replies are queued before the caller takes the first.
    auto policy = make_policy({.max_attempts = 3, .delay = 0ms});
    SimRuntime s(seed);
    std::vector<int> values;
    std::size_t mailbox_between = 99;
    std::size_t mailbox_after = 99;
    bool foreign_kept = false;
    s.spawn([&](Context& ctx) -> Task<> {
      // A reply that belongs to no run of this call: a successful 999.
      internal::HedgeReply foreign;
      foreign.run = 0;
      foreign.value = std::make_shared<Result<int>>(999);
      Result<void> sent = ctx.try_send(ctx.self(), std::move(foreign));
      EXPECT_THAT(sent, IsOk());
      for (int round = 1; round <= 2; ++round) {
        auto attempt = [round](Context&) -> Task<Result<int>> { co_return 100 * round; };
        std::function<Task<Result<int>>(Context&)> fn = attempt;
        Result<int> r = co_await policy.run<int>(ctx, fn);
        values.push_back(r.ok() ? *r : -1);
        if (round == 1) mailbox_between = ctx.mailbox_size();
      }
      mailbox_after = ctx.mailbox_size();
      std::function<bool(const Message&)> is_foreign = [](const Message& m) {
        const auto* h = m.get<internal::HedgeReply>();
        return h != nullptr && h->run == 0;
      };
      std::optional<Message> m = co_await ctx.receive_if(is_foreign, 0ms);
      foreign_kept = m.has_value();
    });
    s.rt->advance(1h);
    EXPECT_EQ(values, std::vector<int>({100, 200}));
    EXPECT_EQ(mailbox_between, 1u);  // only the foreign reply: the losers' answers are gone
    EXPECT_EQ(mailbox_after, 1u);
    EXPECT_TRUE(foreign_kept);
    EXPECT_EQ(s.rt->process_count(), 0u);
    HedgingStats st = policy.stats();
    EXPECT_EQ(st.runs, 2u);
    EXPECT_EQ(st.attempts, 6u);
    EXPECT_EQ(st.successes, 2u);
  }
}

// ---------------------------------------------------------------------------------------------
// Options and counters

TEST(HedgingPolicy, ValidatesOptions) {
  struct Bad {
    HedgingOptions options;
    const char* field;
  };
  const std::vector<Bad> bad = {
      {{.max_attempts = 0}, "HedgingOptions.max_attempts"},
      {{.max_attempts = -3}, "HedgingOptions.max_attempts"},
      {{.max_attempts = 17}, "HedgingOptions.max_attempts"},
      {{.delay = -1ms}, "HedgingOptions.delay"},
  };
  for (const auto& b : bad) {
    auto p = HedgingPolicy::create(b.options);
    ASSERT_THAT(p, StatusIs(ErrorKind::kInvalidArgument)) << b.field;
    EXPECT_THAT(p.error().message(), HasSubstr(b.field));
  }
  auto d = HedgingPolicy::create({});
  ASSERT_THAT(d, IsOk());
  EXPECT_EQ(d->options().max_attempts, 2);
  EXPECT_EQ(d->options().delay, 1s);
  EXPECT_THAT(HedgingPolicy::create({.max_attempts = 1}), IsOk());
  EXPECT_THAT(HedgingPolicy::create({.max_attempts = 16, .delay = 0ms}), IsOk());
}

TEST(HedgingPolicy, SingleAttemptNeverHedges) {
  auto policy = make_policy({.max_attempts = 1, .delay = 10ms});
  CallRecord r = run_call(policy, succeed_after({5s}), 1);
  ASSERT_TRUE(r.result->ok());
  EXPECT_EQ(r.ended_at, 5s);
  EXPECT_EQ(starts_of(r), std::vector<Duration>({0ms}));
  CallRecord f = run_call(
      policy,
      [](int) {
        return Step{err(ErrorKind::kTransient), 10ms};
      },
      1);
  EXPECT_EQ(f.result->error().message(), "hedging: all 1 attempt failed: boom");
}

TEST(HedgingPolicy, CountersAddUpOverRunsAndAreSharedByCopies) {
  auto policy = make_policy({.max_attempts = 2, .delay = 1s});
  HedgingPolicy copy = policy;
  run_call(policy, succeed_after({100ms, 100ms}), 1);  // primary wins
  run_call(copy, succeed_after({5s, 100ms}), 2);       // hedge wins, primary cancelled
  run_call(
      policy,
      [](int) {
        return Step{err(ErrorKind::kTransient), 10ms};
      },
      3);  // both fail
  // Deadline at 2 s: the primary's own sleep ends at the same deadline (it runs under it) and
  // reports first (its timer is older), so only the hedge is still running and cancelled.
  run_call(copy, succeed_after({5s, 5s}), 4, 2s);
  for (const HedgingPolicy* p : {&policy, &copy}) {
    HedgingStats st = p->stats();
    EXPECT_EQ(st.runs, 4u);
    EXPECT_EQ(st.attempts, 7u);
    EXPECT_EQ(st.hedges, 3u);
    EXPECT_EQ(st.hedges_at_once, 1u);
    EXPECT_EQ(st.successes, 2u);
    EXPECT_EQ(st.failures, 2u);
    EXPECT_EQ(st.deadline_exceeded, 1u);
    EXPECT_EQ(st.cancelled, 2u);
    EXPECT_EQ(st.wins, std::vector<std::uint64_t>({1, 1}));
  }
}

// ---------------------------------------------------------------------------------------------
// Real scheduler: one shared policy, many callers on 2 workers (run under TSan too).

TEST(HedgingPolicy, SharedPolicyOnTheRealScheduler) {
  constexpr int kCalls = 40;
  auto env = make_real_environment({.workers = 2, .seed = 7});
  auto rt = Runtime::create(*env).value();
  auto policy = make_policy({.max_attempts = 3, .delay = 0ms});
  std::atomic<int> ok{0};
  std::atomic<int> left_alive{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int i = 0; i < kCalls; ++i) {
    auto w = rt->spawn_watched([&, i](Context& ctx) -> Task<> {
      auto pids = std::make_shared<std::vector<Pid>>();
      auto mu = std::make_shared<std::mutex>();
      auto attempt = [i, pids, mu](Context& c) -> Task<Result<int>> {
        {
          std::lock_guard l(*mu);
          pids->push_back(c.self());
        }
        if ((c.self().id + static_cast<std::uint64_t>(i)) % 3 == 0) co_await c.sleep(1ms);
        co_await c.yield();
        co_return i;
      };
      std::function<Task<Result<int>>(Context&)> fn = attempt;
      Result<int> r = co_await policy.run<int>(ctx, fn);
      if (r.ok() && *r == i) ok.fetch_add(1);
      std::lock_guard l(*mu);
      for (Pid p : *pids) {
        if (ctx.runtime().alive(p)) left_alive.fetch_add(1);
      }
    });
    ASSERT_THAT(w, IsOk());
    watches.push_back(w->exit);
  }
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  EXPECT_EQ(ok.load(), kCalls);
  EXPECT_EQ(left_alive.load(), 0);
  HedgingStats st = policy.stats();
  EXPECT_EQ(st.runs, static_cast<std::uint64_t>(kCalls));
  // With delay 0 the caller starts the next attempt unless a reply is already there (the first
  // attempt may finish on the other worker before the caller polls): 1 to 3 per run.
  EXPECT_GE(st.attempts, static_cast<std::uint64_t>(kCalls));
  EXPECT_LE(st.attempts, static_cast<std::uint64_t>(3 * kCalls));
  EXPECT_EQ(st.hedges, st.attempts - st.runs);
  EXPECT_EQ(st.successes, static_cast<std::uint64_t>(kCalls));
  std::uint64_t wins = 0;
  for (auto w : st.wins) wins += w;
  EXPECT_EQ(wins, static_cast<std::uint64_t>(kCalls));
  EXPECT_LE(st.cancelled, static_cast<std::uint64_t>(2 * kCalls));
  EXPECT_EQ(rt->process_count(), 0u);
}

}  // namespace
}  // namespace nines
