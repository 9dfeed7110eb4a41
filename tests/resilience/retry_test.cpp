// Retry policy and retry budget: on the deterministic runtime (virtual time, seeded
// scheduling), table-driven where it fits, with properties checked over many seeds; plus one
// concurrency test of the budget on the real scheduler (2 workers), whose counts are exact.
#include "nines/resilience/retry.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nines/resilience/retry_budget.hpp"
#include "nines/runtime/runtime.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using test::SimRuntime;

Error err(ErrorKind kind, std::string message = "boom") { return Error(kind, std::move(message)); }
Error transient(std::string message = "boom") { return err(ErrorKind::kTransient, std::move(message)); }

RetryPolicy make_policy(RetryOptions o) {
  auto p = RetryPolicy::create(o);
  if (!p.ok()) ADD_FAILURE() << p.error().to_string();
  return std::move(p).value();
}

std::unique_ptr<RetryBudget> make_budget(Environment& env, RetryBudgetOptions o) {
  auto b = RetryBudget::create(env, o);
  if (!b.ok()) ADD_FAILURE() << b.error().to_string();
  return std::move(b).value();
}

std::string ms(Duration d) {
  double v = std::chrono::duration<double, std::milli>(d).count();
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return std::string(buf) + "ms";
}

std::string describe(const RetryEvent& e) {
  if (e.type == RetryEvent::Type::kRetry) {
    return "retry #" + std::to_string(e.attempt) + " wait " + ms(e.delay) + " after " + e.error.to_string();
  }
  return "give_up #" + std::to_string(e.attempt) + " " + std::string(to_string(e.rejection)) + " " +
         std::string(to_string(e.error.kind()));
}

// What one attempt does: wait `takes` (inside the attempt), then return `outcome`.
struct Step {
  Result<int> outcome;
  Duration takes = 0ns;
};
// Attempt number (1-based) and the time it starts -> what it does.
using Script = std::function<Step(int attempt, TimePoint now)>;

struct CallRecord {
  std::optional<Result<int>> result;
  Duration ended_at{};           // relative to the call's start
  std::vector<Duration> starts;  // attempt start times, relative to the call's start
  std::vector<Error> errors;     // each failed attempt's error
  TimePoint t0{};
};

// Runs one call of `policy` in a process on `s`, under a deadline `deadline_after` from its
// start (kInfinite: none). Returns the record, filled in once the runtime has run.
std::shared_ptr<CallRecord> spawn_call(SimRuntime& s, const RetryPolicy& policy, Script script,
                                       Duration deadline_after = kInfinite) {
  auto rec = std::make_shared<CallRecord>();
  s.spawn([rec, policy, script = std::move(script), deadline_after](Context& ctx) -> Task<> {
    rec->t0 = ctx.now();
    auto scope = ctx.with_timeout(deadline_after);
    int n = 0;
    auto attempt = [&]() -> Task<Result<int>> {
      ++n;
      rec->starts.push_back(ctx.now() - rec->t0);
      Step step = script(n, ctx.now());
      if (step.takes > 0ns) {
        Result<std::any> slept = co_await ctx.sleep(step.takes);
        if (!slept.ok()) {
          rec->errors.push_back(slept.error());
          co_return std::move(slept).error();
        }
      }
      if (!step.outcome.ok()) rec->errors.push_back(step.outcome.error());
      co_return std::move(step.outcome);
    };
    Result<int> r = co_await policy.run<int>(ctx, attempt);
    rec->ended_at = ctx.now() - rec->t0;
    rec->result.emplace(std::move(r));
  });
  return rec;
}

CallRecord run_call(const RetryPolicy& policy, Script script, Duration deadline_after = kInfinite,
                    std::uint64_t seed = 1) {
  SimRuntime s(seed);
  auto rec = spawn_call(s, policy, std::move(script), deadline_after);
  s.rt->advance(24h);
  EXPECT_TRUE(rec->result.has_value()) << "the call did not finish";
  EXPECT_EQ(s.rt->process_count(), 0u);
  return *rec;
}

// Fails with `e` for the first `failures` attempts, then returns 42.
Script fail_then_succeed(int failures, Error e = transient(), Duration takes = 0ns) {
  return [failures, e, takes](int n, TimePoint) { return n <= failures ? Step{e, takes} : Step{42, takes}; };
}
Script always_fail(Error e = transient(), Duration takes = 0ns) {
  return [e, takes](int, TimePoint) { return Step{e, takes}; };
}

std::vector<Duration> millis(std::initializer_list<std::int64_t> v) {
  std::vector<Duration> out;
  for (auto x : v) out.push_back(std::chrono::milliseconds(x));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Success after transient failures, with the exact virtual-time delays.

struct SucceedCase {
  const char* name;
  int failures;
  Error error;
  Backoff backoff;
  Duration takes;                // each attempt's own duration
  std::vector<Duration> starts;  // expected attempt start times
};

TEST(RetryPolicy, SucceedsAfterTransientFailuresWithExactVirtualDelays) {
  const std::vector<SucceedCase> cases = {
      {"no failure", 0, transient(), Backoff::exponential(100ms, 1s), 0ns, millis({0})},
      {"one failure", 1, transient(), Backoff::exponential(100ms, 1s), 0ns, millis({0, 100})},
      {"three failures, x2", 3, transient(), Backoff::exponential(100ms, 1s), 0ns, millis({0, 100, 300, 700})},
      {"five failures, capped at 1s", 5, transient(), Backoff::exponential(100ms, 1s), 0ns,
       millis({0, 100, 300, 700, 1500, 2500})},
      {"attempts take 50ms", 3, transient(), Backoff::exponential(100ms, 1s), 50ms, millis({0, 150, 400, 850})},
      {"constant 1s", 2, transient(), Backoff::constant(1s), 0ns, millis({0, 1000, 2000})},
      {"constant 0: at once", 4, transient(), Backoff::constant(0ns), 0ns, millis({0, 0, 0, 0, 0})},
      {"timeout is retried", 2, err(ErrorKind::kTimeout), Backoff::constant(10ms), 0ns, millis({0, 10, 20})},
      {"rate_limited without a retry time", 2, err(ErrorKind::kRateLimited), Backoff::exponential(100ms, 1s, 3), 0ns,
       millis({0, 100, 400})},
      {"mailbox_full is retried", 1, err(ErrorKind::kMailboxFull), Backoff::constant(5ms), 0ns, millis({0, 5})},
  };
  for (const auto& c : cases) {
    std::vector<std::string> events;
    RetryPolicy policy = make_policy({.max_attempts = 10, .backoff = c.backoff, .observer = [&](const RetryEvent& e) {
                                        events.push_back(describe(e));
                                      }});
    CallRecord rec = run_call(policy, fail_then_succeed(c.failures, c.error, c.takes));
    ASSERT_TRUE(rec.result->ok()) << c.name << ": " << rec.result->error().to_string();
    EXPECT_EQ(**rec.result, 42) << c.name;
    EXPECT_EQ(rec.starts, c.starts) << c.name;
    EXPECT_EQ(rec.ended_at, c.starts.back() + c.takes) << c.name;
    RetryStats st = policy.stats();
    EXPECT_EQ(st.calls, 1u) << c.name;
    EXPECT_EQ(st.attempts, static_cast<std::uint64_t>(c.failures + 1)) << c.name;
    EXPECT_EQ(st.retries, static_cast<std::uint64_t>(c.failures)) << c.name;
    EXPECT_EQ(st.successes, 1u) << c.name;
    EXPECT_EQ(st.failures, 0u) << c.name;
    // One observer event per retry, with its number, its wait and the error.
    ASSERT_EQ(events.size(), static_cast<std::size_t>(c.failures)) << c.name;
    for (int i = 0; i < c.failures; ++i) {
      Duration wait = c.starts[i + 1] - c.starts[i] - c.takes;
      EXPECT_EQ(events[i], "retry #" + std::to_string(i + 1) + " wait " + ms(wait) + " after " + c.error.to_string())
          << c.name;
    }
  }
}

// The backoff wait suspends the process only: others run meanwhile (one worker in the sim).
TEST(RetryPolicy, WaitingDoesNotBlockOtherProcesses) {
  SimRuntime s;
  RetryPolicy policy = make_policy({.max_attempts = 2, .backoff = Backoff::constant(1s)});
  auto rec = spawn_call(s, policy, fail_then_succeed(1));
  std::vector<Duration> ticks;
  s.spawn([&](Context& ctx) -> Task<> {
    TimePoint t0 = ctx.now();
    for (int i = 0; i < 3; ++i) {
      co_await ctx.sleep(250ms);
      ticks.push_back(ctx.now() - t0);
    }
  });
  s.rt->advance(500ms);
  EXPECT_FALSE(rec->result.has_value());  // still waiting for its second attempt
  EXPECT_EQ(ticks, millis({250, 500}));
  s.rt->advance(1s);
  ASSERT_TRUE(rec->result.has_value());
  EXPECT_TRUE(rec->result->ok());
  EXPECT_EQ(rec->starts, millis({0, 1000}));
}

// ---------------------------------------------------------------------------------------------
// Nothing that is not retryable is retried.

TEST(RetryPolicy, NeverRetriesWhatIsNotRetryable) {
  const std::vector<ErrorKind> kinds = {
      ErrorKind::kPermanent,     ErrorKind::kCancelled,        ErrorKind::kBudgetExceeded, ErrorKind::kCircuitOpen,
      ErrorKind::kBulkheadFull,  ErrorKind::kDeadlineExceeded, ErrorKind::kNoProc,         ErrorKind::kInvalidArgument,
      ErrorKind::kAlreadyExists, ErrorKind::kNotFound,         ErrorKind::kStartFailed,    ErrorKind::kInternal,
  };
  for (ErrorKind kind : kinds) {
    RetryPolicy policy = make_policy({.max_attempts = 5, .backoff = Backoff::constant(100ms)});
    Error e = err(kind, "nope");
    CallRecord rec = run_call(policy, fail_then_succeed(3, e));
    ASSERT_FALSE(rec.result->ok()) << to_string(kind);
    EXPECT_EQ(rec.result->error(), e) << to_string(kind);  // returned unchanged
    EXPECT_EQ(rec.starts, millis({0})) << to_string(kind);
    EXPECT_EQ(rec.ended_at, 0ns) << to_string(kind);
    // Counted by why: a deadline that ended the attempt is a deadline give-up.
    const RetryRejection why =
        kind == ErrorKind::kDeadlineExceeded ? RetryRejection::kDeadline : RetryRejection::kNotRetryable;
    EXPECT_EQ(policy.stats().rejected(why), 1u) << to_string(kind);
    EXPECT_EQ(policy.stats().retries, 0u) << to_string(kind);
  }
}

// A classifier may re-read an error: a 429 "insufficient_quota" is permanent; an internal
// "flaky" error may be read as transient.
TEST(RetryPolicy, ClassifierDecidesTheKind) {
  Classifier classify = [](const Error& e) {
    if (e.message().find("insufficient_quota") != std::string::npos) return ErrorKind::kPermanent;
    if (e.message() == "flaky") return ErrorKind::kTransient;
    return e.kind();
  };
  RetryPolicy policy = make_policy({.max_attempts = 5, .backoff = Backoff::constant(10ms), .classifier = classify});
  Error quota = err(ErrorKind::kRateLimited, "429 insufficient_quota");
  CallRecord a = run_call(policy, always_fail(quota));
  EXPECT_EQ(a.starts.size(), 1u);
  EXPECT_EQ(a.result->error(), quota);
  CallRecord b = run_call(policy, fail_then_succeed(2, err(ErrorKind::kInternal, "flaky")));
  EXPECT_EQ(b.starts, millis({0, 10, 20}));
  EXPECT_TRUE(b.result->ok());
}

// Property: over many seeds and random mixes of failures, no attempt follows one whose error
// is not retryable.
TEST(RetryPolicy, PropertyNothingPermanentIsRetried) {
  const std::vector<ErrorKind> pool = {ErrorKind::kTransient, ErrorKind::kTimeout,   ErrorKind::kRateLimited,
                                       ErrorKind::kPermanent, ErrorKind::kCancelled, ErrorKind::kInvalidArgument};
  int permanent_seen = 0;
  for (std::uint64_t seed = 1; seed <= 300; ++seed) {
    SimEnvironment dice(seed * 7919);
    RetryPolicy policy = make_policy({.max_attempts = 8, .backoff = Backoff::full_jitter(10ms, 1s)});
    CallRecord rec = run_call(
        policy,
        [&](int, TimePoint) {
          if (dice.random_below(5) == 0) return Step{1};
          return Step{err(pool[dice.random_below(pool.size())])};
        },
        kInfinite, seed);
    for (std::size_t i = 0; i + 1 < rec.starts.size(); ++i) {
      ASSERT_LT(i, rec.errors.size());
      EXPECT_TRUE(is_retryable(rec.errors[i].kind()))
          << "seed " << seed << ": retried after " << rec.errors[i].to_string();
    }
    if (!rec.result->ok() && !is_retryable(rec.result->error().kind())) ++permanent_seen;
  }
  EXPECT_GT(permanent_seen, 50);  // the property was exercised
}

// ---------------------------------------------------------------------------------------------
// Rate limiting: the server's retry time is honoured exactly, never earlier.

struct RateCase {
  const char* name;
  Duration retry_after;  // the error's retry_at, relative to the failure; nullopt-like: kInfinite = none
  Duration max_retry_after;
  Backoff backoff;
  ErrorKind kind;
  std::vector<Duration> starts;  // expected; one entry: refused at once
};

TEST(RetryPolicy, RateLimitedRetryTimeIsHonouredOrRefusedAtOnce) {
  const std::vector<RateCase> cases = {
      {"waits for retry_at beyond the backoff", 3s, 60s, Backoff::constant(100ms), ErrorKind::kRateLimited,
       millis({0, 3000})},
      {"backoff longer than retry_at wins", 50ms, 60s, Backoff::constant(100ms), ErrorKind::kRateLimited,
       millis({0, 100})},
      {"retry_at in the past: backoff", -1s, 60s, Backoff::constant(100ms), ErrorKind::kRateLimited, millis({0, 100})},
      {"exactly max_retry_after is accepted", 60s, 60s, Backoff::constant(1ms), ErrorKind::kRateLimited,
       millis({0, 60000})},
      {"beyond max_retry_after: refused at once", 61s, 60s, Backoff::constant(1ms), ErrorKind::kRateLimited,
       millis({0})},
      {"max_retry_after 0 refuses any future time", 1ns, 0ns, Backoff::constant(1ms), ErrorKind::kRateLimited,
       millis({0})},
      {"a transient error with a retry time is honoured too", 2500ms, 60s, Backoff::constant(1ms),
       ErrorKind::kTransient, millis({0, 2500})},
      {"jittered backoff never earlier than retry_at", 700ms, 60s, Backoff::full_jitter(10ms, 200ms),
       ErrorKind::kRateLimited, millis({0, 700})},
  };
  for (const auto& c : cases) {
    RetryPolicy policy = make_policy({.max_attempts = 2, .backoff = c.backoff, .max_retry_after = c.max_retry_after});
    std::optional<Error> sent;
    CallRecord rec = run_call(policy, [&](int n, TimePoint now) {
      if (n > 1) return Step{42};
      sent = Error(c.kind, "429 slow down").with_retry_at(now + c.retry_after);
      return Step{*sent};
    });
    EXPECT_EQ(rec.starts, c.starts) << c.name;
    if (c.starts.size() == 1) {
      // Failed at once with that error: its kind and retry time kept.
      ASSERT_FALSE(rec.result->ok()) << c.name;
      EXPECT_EQ(rec.ended_at, 0ns) << c.name;
      EXPECT_THAT(*rec.result, StatusIs(c.kind)) << c.name;
      EXPECT_EQ(rec.result->error().retry_at(), sent->retry_at()) << c.name;
      EXPECT_THAT(rec.result->error().message(), HasSubstr("max_retry_after")) << c.name;
      EXPECT_EQ(policy.stats().rejected(RetryRejection::kRetryAfterTooLong), 1u) << c.name;
    } else {
      EXPECT_TRUE(rec.result->ok()) << c.name;
    }
  }
}

// Property: with random jittered backoffs and random retry times, no attempt ever starts
// before the retry time of the failure before it.
TEST(RetryPolicy, PropertyServerRetryTimeIsAlwaysHonoured) {
  const std::vector<Backoff> backoffs = {Backoff::full_jitter(10ms, 2s), Backoff::equal_jitter(10ms, 2s),
                                         Backoff::decorrelated_jitter(10ms, 2s), Backoff::exponential(10ms, 2s)};
  std::size_t honoured = 0;
  for (std::uint64_t seed = 1; seed <= 400; ++seed) {
    SimEnvironment dice(seed * 104729);
    RetryPolicy policy = make_policy({.max_attempts = 6, .backoff = backoffs[seed % backoffs.size()]});
    std::vector<TimePoint> retry_ats;
    SimRuntime s(seed);
    auto rec = spawn_call(s, policy, [&](int, TimePoint now) {
      Duration after = std::chrono::milliseconds(static_cast<std::int64_t>(dice.random_below(5000)));
      retry_ats.push_back(now + after);
      Error e = Error(ErrorKind::kRateLimited, "429").with_retry_at(now + after);
      return Step{std::move(e), std::chrono::milliseconds(static_cast<std::int64_t>(dice.random_below(100)))};
    });
    s.rt->advance(24h);
    ASSERT_TRUE(rec->result.has_value());
    ASSERT_EQ(rec->starts.size(), 6u) << "seed " << seed;
    for (std::size_t i = 1; i < rec->starts.size(); ++i) {
      EXPECT_GE(rec->t0 + rec->starts[i], retry_ats[i - 1]) << "seed " << seed << " attempt " << i + 1;
      ++honoured;
    }
  }
  EXPECT_EQ(honoured, 400u * 5);
}

// ---------------------------------------------------------------------------------------------
// Limits: attempts and total time.

TEST(RetryPolicy, MaxAttemptsEndsWithTheLastErrorKindKept) {
  for (int max : {1, 2, 5, 9}) {
    std::vector<std::string> events;
    RetryPolicy policy =
        make_policy({.max_attempts = max, .backoff = Backoff::constant(10ms), .observer = [&](const RetryEvent& e) {
                       events.push_back(describe(e));
                     }});
    int n = 0;
    CallRecord rec = run_call(policy, [&](int, TimePoint) { return Step{transient("fail " + std::to_string(++n))}; });
    ASSERT_FALSE(rec.result->ok());
    EXPECT_EQ(rec.starts.size(), static_cast<std::size_t>(max));
    EXPECT_EQ(rec.ended_at, (max - 1) * 10ms);
    const Error& e = rec.result->error();
    EXPECT_THAT(e, StatusIs(ErrorKind::kTransient));
    std::string plural = max == 1 ? " attempt" : " attempts";
    EXPECT_EQ(e.message(), "retry: gave up after " + std::to_string(max) + plural + ": fail " + std::to_string(max));
    EXPECT_EQ(policy.stats().rejected(RetryRejection::kAttemptsExhausted), 1u);
    EXPECT_EQ(events.back(), "give_up #" + std::to_string(max) + " attempts_exhausted transient");
    EXPECT_EQ(events.size(), static_cast<std::size_t>(max));  // max-1 retries + the give-up
  }
}

struct TotalTimeCase {
  const char* name;
  Duration max_total_time;
  Duration takes;
  std::vector<Duration> starts;
};

TEST(RetryPolicy, MaxTotalTimeBoundsWhenTheLastAttemptMayStart) {
  const std::vector<TotalTimeCase> cases = {
      {"3.5s", 3500ms, 0ns, millis({0, 1000, 2000, 3000})},
      {"exactly at the limit is allowed", 3s, 0ns, millis({0, 1000, 2000, 3000})},
      {"just below", 2999ms, 0ns, millis({0, 1000, 2000})},
      {"attempts take time", 3s, 400ms, millis({0, 1400, 2800})},
      {"shorter than one backoff", 999ms, 0ns, millis({0})},
  };
  for (const auto& c : cases) {
    RetryPolicy policy =
        make_policy({.max_attempts = 100, .max_total_time = c.max_total_time, .backoff = Backoff::constant(1s)});
    CallRecord rec = run_call(policy, always_fail(transient(), c.takes));
    EXPECT_EQ(rec.starts, c.starts) << c.name;
    ASSERT_FALSE(rec.result->ok()) << c.name;
    EXPECT_THAT(*rec.result, StatusIs(ErrorKind::kTransient)) << c.name;
    EXPECT_THAT(rec.result->error().message(), HasSubstr("max_total_time")) << c.name;
    EXPECT_EQ(rec.ended_at, c.starts.back() + c.takes) << c.name;  // gave up at once, no sleep
    EXPECT_EQ(policy.stats().rejected(RetryRejection::kTotalTimeExhausted), 1u) << c.name;
  }
}

// ---------------------------------------------------------------------------------------------
// The process deadline: no attempt starts and no sleep runs past it.

struct DeadlineCase {
  const char* name;
  Duration deadline;  // from the call's start
  Duration takes;
  std::vector<Duration> starts;
  Duration ended_at;
  const char* message_part;
};

TEST(RetryPolicy, NeverWaitsPastTheProcessDeadline) {
  const std::vector<DeadlineCase> cases = {
      {"fails at once instead of sleeping into it", 2500ms, 0ns, millis({0, 1000, 2000}), 2000ms,
       "gave up after 3 attempts"},
      {"an attempt would start exactly at it", 3s, 0ns, millis({0, 1000, 2000}), 2000ms, "gave up after 3 attempts"},
      {"already passed: no attempt at all", 0ns, 0ns, {}, 0ns, "before the first attempt"},
      {"an attempt runs into it", 2s, 5s, millis({0}), 2000ms, "sleep"},
      {"attempts take time", 2500ms, 600ms, millis({0, 1600}), 2200ms, "gave up after 2 attempts"},
  };
  for (const auto& c : cases) {
    RetryPolicy policy = make_policy({.max_attempts = 10, .backoff = Backoff::constant(1s)});
    CallRecord rec = run_call(policy, always_fail(transient("down"), c.takes), c.deadline);
    EXPECT_EQ(rec.starts, c.starts) << c.name;
    EXPECT_EQ(rec.ended_at, c.ended_at) << c.name;
    ASSERT_FALSE(rec.result->ok()) << c.name;
    EXPECT_THAT(*rec.result, StatusIs(ErrorKind::kDeadlineExceeded)) << c.name;
    EXPECT_THAT(rec.result->error().message(), HasSubstr(c.message_part))
        << c.name << ": " << rec.result->error().message();
    EXPECT_LE(rec.ended_at, c.deadline) << c.name;
  }
}

// The deadline error names the attempts and carries the last error.
TEST(RetryPolicy, DeadlineErrorNamesAttemptsAndLastError) {
  RetryPolicy policy = make_policy({.max_attempts = 10, .backoff = Backoff::constant(1s)});
  CallRecord rec = run_call(policy, always_fail(transient("upstream 503")), 1500ms);
  EXPECT_EQ(rec.result->error().to_string(),
            "deadline_exceeded: retry: attempt 3 would start 1s from now, past the deadline (500ms left); gave up "
            "after 2 attempts; last error: transient: upstream 503");
  EXPECT_EQ(policy.stats().rejected(RetryRejection::kDeadline), 1u);
}

// A rate-limited retry time past the deadline is a deadline failure, not a wait.
TEST(RetryPolicy, RetryTimePastTheDeadlineFailsAtOnce) {
  RetryPolicy policy = make_policy({.max_attempts = 3, .backoff = Backoff::constant(1ms)});
  CallRecord rec = run_call(
      policy, [](int, TimePoint now) { return Step{Error(ErrorKind::kRateLimited, "429").with_retry_at(now + 10s)}; },
      5s);
  EXPECT_EQ(rec.starts, millis({0}));
  EXPECT_EQ(rec.ended_at, 0ns);
  EXPECT_THAT(*rec.result, StatusIs(ErrorKind::kDeadlineExceeded));
}

// Property: random backoffs, deadlines, attempt durations and failures; no attempt starts at or
// after the deadline, no retry wait is scheduled to end at or after it, no call outlives it.
TEST(RetryPolicy, PropertyNoCallOutlivesItsDeadline) {
  const std::vector<Backoff> backoffs = {Backoff::full_jitter(50ms, 3s), Backoff::equal_jitter(50ms, 3s),
                                         Backoff::decorrelated_jitter(50ms, 3s), Backoff::exponential(50ms, 3s),
                                         Backoff::constant(300ms)};
  int deadline_failures = 0;
  for (std::uint64_t seed = 1; seed <= 400; ++seed) {
    SimEnvironment dice(seed * 31337);
    SimRuntime s(seed);
    Duration deadline = std::chrono::milliseconds(static_cast<std::int64_t>(1 + dice.random_below(8000)));
    TimePoint t0 = s.env.now();
    std::vector<std::string> violations;
    RetryPolicy policy = make_policy(
        {.max_attempts = 50, .backoff = backoffs[seed % backoffs.size()], .observer = [&](const RetryEvent& e) {
           if (e.type == RetryEvent::Type::kRetry && s.env.now() + e.delay >= t0 + deadline) {
             violations.push_back("retry wait ends past the deadline");
           }
         }});
    auto rec = spawn_call(
        s, policy,
        [&](int, TimePoint now) {
          Duration takes = std::chrono::milliseconds(static_cast<std::int64_t>(dice.random_below(700)));
          switch (dice.random_below(4)) {
            case 0: return Step{Error(ErrorKind::kRateLimited, "429").with_retry_at(now + 1s), takes};
            case 1: return Step{err(ErrorKind::kTimeout), takes};
            default: return Step{transient(), takes};
          }
        },
        deadline);
    s.rt->advance(24h);
    ASSERT_TRUE(rec->result.has_value()) << "seed " << seed;
    EXPECT_TRUE(violations.empty()) << "seed " << seed << ": " << violations.front();
    for (Duration start : rec->starts) {
      EXPECT_LT(start, deadline) << "seed " << seed;
    }
    EXPECT_LE(rec->ended_at, deadline) << "seed " << seed;
    ASSERT_FALSE(rec->result->ok());
    if (rec->result->error().kind() == ErrorKind::kDeadlineExceeded) ++deadline_failures;
  }
  EXPECT_GT(deadline_failures, 300);  // nearly every call hit its deadline before 50 attempts
}

// ---------------------------------------------------------------------------------------------
// Retry budget.

// Exact accounting with a cap: 100 successful calls fill the bucket only to max_tokens (3).
// Then each of 10 failing calls deposits 0.1 (capped) and asks for one retry: tokens go
// 3->2, 2.1->1.1, 1.2->0.2, then 0.3 .. 0.9 refused: 3 retries, 7 refusals, 0.9 left.
TEST(RetryBudget, CapLimitsSavedRetriesExactly) {
  SimRuntime s;
  auto budget = make_budget(s.env, {.ratio = 0.1, .max_tokens = 3, .initial_tokens = 0});
  RetryPolicy ok_policy = make_policy({.max_attempts = 2, .backoff = Backoff::constant(1ms), .budget = budget.get()});
  RetryPolicy policy = make_policy({.max_attempts = 2, .backoff = Backoff::constant(1ms), .budget = budget.get()});
  std::vector<std::string> outcomes;
  s.spawn([&](Context& ctx) -> Task<> {
    for (int i = 0; i < 100; ++i) {
      auto r = co_await ok_policy.run(ctx, []() -> Task<Result<int>> { co_return 1; });
      EXPECT_THAT(r, IsOk());
    }
    EXPECT_DOUBLE_EQ(budget->tokens(), 3.0);
    for (int i = 0; i < 10; ++i) {
      auto r =
          co_await policy.run(ctx, [i]() -> Task<Result<int>> { co_return transient("call " + std::to_string(i)); });
      outcomes.push_back(r.error().to_string());
    }
  });
  s.rt->advance(1min);
  ASSERT_EQ(outcomes.size(), 10u);
  std::vector<bool> retried;
  for (const auto& o : outcomes) retried.push_back(o.rfind("transient:", 0) == 0);
  EXPECT_EQ(retried, (std::vector<bool>{true, true, true, false, false, false, false, false, false, false}));
  EXPECT_EQ(outcomes[3], "budget_exceeded: retry budget exhausted after 1 attempt; last error: transient: call 3");
  RetryBudgetStats b = budget->stats();
  EXPECT_EQ(b.calls, 110u);
  EXPECT_EQ(b.retries_allowed, 3u);
  EXPECT_EQ(b.retries_refused, 7u);
  EXPECT_EQ(b.tokens, 0.9);
  EXPECT_EQ(policy.stats().retries, 3u);
  EXPECT_EQ(policy.stats().rejected(RetryRejection::kBudget), 7u);
  EXPECT_EQ(policy.stats().rejected(RetryRejection::kAttemptsExhausted), 3u);
  // One more call: its deposit makes exactly 1.0 token, which buys a retry.
  std::optional<Result<int>> last;
  s.spawn([&](Context& ctx) -> Task<> {
    last.emplace(co_await policy.run(ctx, []() -> Task<Result<int>> { co_return transient("again"); }));
  });
  s.rt->advance(1min);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->error().to_string(), "transient: retry: gave up after 2 attempts: again");
  EXPECT_EQ(budget->stats().retries_allowed, 4u);
  EXPECT_EQ(budget->tokens(), 0.0);
}

// Many concurrent simulated callers share one budget: over many seeds the retries never exceed
// initial + ratio * calls, the accounting is exact, and refusals carry the last error.
TEST(RetryBudget, PropertyManyConcurrentCallersNeverExceedTheBudget) {
  constexpr int kCallers = 200;
  constexpr int kCallsEach = 5;
  constexpr double kRatio = 0.1;
  constexpr double kInitial = 5;
  bool some_refused = false;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    SimRuntime s(seed);
    auto budget = make_budget(s.env, {.ratio = kRatio, .max_tokens = 1000, .initial_tokens = kInitial});
    RetryPolicy policy =
        make_policy({.max_attempts = 4, .backoff = Backoff::full_jitter(10ms, 500ms), .budget = budget.get()});
    std::uint64_t max_seen_excess = 0;
    int budget_errors_with_message = 0;
    int budget_errors = 0;
    for (int c = 0; c < kCallers; ++c) {
      s.spawn([&, policy, c](Context& ctx) -> Task<> {
        for (int k = 0; k < kCallsEach; ++k) {
          auto r = co_await policy.run(ctx, [&ctx, c]() -> Task<Result<int>> {
            co_await ctx.sleep(std::chrono::milliseconds(static_cast<std::int64_t>(ctx.env().random_below(20))));
            if (ctx.env().random_below(3) == 0) co_return c;  // a third of the attempts succeed
            co_return transient("caller " + std::to_string(c) + " 503");
          });
          // The invariant holds at every moment, not only at the end.
          RetryBudgetStats b = budget->stats();
          double limit = kInitial + kRatio * static_cast<double>(b.calls);
          if (static_cast<double>(b.retries_allowed) > limit + 1e-9) ++max_seen_excess;
          if (!r.ok() && r.error().kind() == ErrorKind::kBudgetExceeded) {
            ++budget_errors;
            if (r.error().message().find("transient: caller " + std::to_string(c) + " 503") != std::string::npos) {
              ++budget_errors_with_message;
            }
          }
        }
      });
    }
    s.rt->advance(1h);
    EXPECT_EQ(s.rt->process_count(), 0u);
    RetryBudgetStats b = budget->stats();
    RetryStats p = policy.stats();
    EXPECT_EQ(max_seen_excess, 0u) << "seed " << seed;
    EXPECT_EQ(b.calls, static_cast<std::uint64_t>(kCallers * kCallsEach));
    EXPECT_LE(static_cast<double>(b.retries_allowed), kInitial + kRatio * static_cast<double>(b.calls));
    EXPECT_EQ(p.retries, b.retries_allowed) << "seed " << seed;
    EXPECT_EQ(p.rejected(RetryRejection::kBudget), b.retries_refused) << "seed " << seed;
    EXPECT_EQ(p.attempts, p.calls + p.retries) << "seed " << seed;
    EXPECT_EQ(p.successes + p.failures, p.calls) << "seed " << seed;
    // Exact, in millionths: initial + ratio * calls - retries (the cap of 1000 is never reached).
    std::int64_t expected_units = 5'000'000 + 100'000 * static_cast<std::int64_t>(b.calls) -
                                  1'000'000 * static_cast<std::int64_t>(b.retries_allowed);
    EXPECT_EQ(std::llround(b.tokens * 1e6), expected_units) << "seed " << seed;
    EXPECT_EQ(budget_errors, budget_errors_with_message) << "seed " << seed;
    EXPECT_EQ(static_cast<std::uint64_t>(budget_errors), b.retries_refused) << "seed " << seed;
    if (b.retries_refused > 0) some_refused = true;
  }
  EXPECT_TRUE(some_refused);  // the budget really bit
}

// The floor: with an empty main bucket, min_retries_per_second still allows that many retries
// per second (a burst of one second's worth, full at creation), exactly.
TEST(RetryBudget, FloorAllowsMinRetriesPerSecond) {
  SimEnvironment env(1);
  auto budget = make_budget(env, {.ratio = 0, .max_tokens = 10, .initial_tokens = 0, .min_retries_per_second = 2});
  auto grab = [&] {
    int n = 0;
    while (budget->try_retry()) ++n;
    return n;
  };
  EXPECT_EQ(grab(), 2);  // the burst
  env.set_now(env.now() + 250ms);
  EXPECT_EQ(grab(), 0);  // half a token
  env.set_now(env.now() + 250ms);
  EXPECT_EQ(grab(), 1);
  env.set_now(env.now() + 10s);
  EXPECT_EQ(grab(), 2);  // capped at one second's worth
  // Slow refills in small steps still add up.
  for (int i = 0; i < 100; ++i) {
    env.set_now(env.now() + 5ms);
    if (i != 99) {
      EXPECT_FALSE(budget->try_retry()) << i;
    }
  }
  EXPECT_TRUE(budget->try_retry());  // 100 * 5ms * 2/s = 1 token
  RetryBudgetStats st = budget->stats();
  EXPECT_EQ(st.retries_allowed, 6u);
  EXPECT_EQ(st.retries_from_floor, 6u);
  // The main bucket is used first.
  auto with_main = make_budget(env, {.ratio = 1, .max_tokens = 10, .initial_tokens = 0, .min_retries_per_second = 1});
  with_main->record_call();
  EXPECT_TRUE(with_main->try_retry());
  EXPECT_EQ(with_main->stats().retries_from_floor, 0u);
  EXPECT_TRUE(with_main->try_retry());
  EXPECT_EQ(with_main->stats().retries_from_floor, 1u);
  EXPECT_FALSE(with_main->try_retry());
}

TEST(RetryBudget, RatioArithmeticIsExact) {
  SimEnvironment env(1);
  auto budget = make_budget(env, {.ratio = 0.1, .max_tokens = 100, .initial_tokens = 0});
  for (int i = 0; i < 9; ++i) budget->record_call();
  EXPECT_FALSE(budget->try_retry());  // 0.9 tokens
  budget->record_call();
  EXPECT_TRUE(budget->try_retry());  // exactly 1.0, not 0.99999...
  EXPECT_EQ(budget->tokens(), 0.0);
}

struct BudgetInvalidCase {
  const char* name;
  RetryBudgetOptions options;
  const char* field;
};

TEST(RetryBudget, CreateValidatesEveryField) {
  SimEnvironment env(1);
  const std::vector<BudgetInvalidCase> cases = {
      {"negative ratio", {.ratio = -0.1}, "RetryBudgetOptions.ratio"},
      {"NaN ratio", {.ratio = std::nan("")}, "RetryBudgetOptions.ratio"},
      {"zero max", {.max_tokens = 0, .initial_tokens = 0}, "RetryBudgetOptions.max_tokens"},
      {"initial above max", {.max_tokens = 5, .initial_tokens = 6}, "RetryBudgetOptions.initial_tokens"},
      {"negative floor", {.min_retries_per_second = -1}, "RetryBudgetOptions.min_retries_per_second"},
      {"infinite floor", {.min_retries_per_second = INFINITY}, "RetryBudgetOptions.min_retries_per_second"},
  };
  for (const auto& c : cases) {
    auto b = RetryBudget::create(env, c.options);
    ASSERT_THAT(b, StatusIs(ErrorKind::kInvalidArgument)) << c.name;
    EXPECT_EQ(b.error().message().rfind(c.field, 0), 0u) << c.name << ": " << b.error().message();
  }
  EXPECT_THAT(RetryBudget::create(env, {}), IsOk());
}

// ---------------------------------------------------------------------------------------------
// Counters, observer, options, API shape.

TEST(RetryPolicy, CountersAndObserverAcrossCalls) {
  std::vector<std::string> events;
  RetryPolicy policy =
      make_policy({.max_attempts = 3, .backoff = Backoff::exponential(100ms, 1s), .observer = [&](const RetryEvent& e) {
                     events.push_back(describe(e));
                   }});
  run_call(policy, fail_then_succeed(0));
  run_call(policy, fail_then_succeed(2, transient("a")));
  run_call(policy, always_fail(err(ErrorKind::kPermanent, "p")));
  run_call(policy, always_fail(transient("b")));
  run_call(policy, always_fail(transient("c")), 150ms);
  EXPECT_EQ(events, (std::vector<std::string>{
                        "retry #1 wait 100ms after transient: a",
                        "retry #2 wait 200ms after transient: a",
                        "give_up #1 not_retryable permanent",
                        "retry #1 wait 100ms after transient: b",
                        "retry #2 wait 200ms after transient: b",
                        "give_up #3 attempts_exhausted transient",
                        "retry #1 wait 100ms after transient: c",
                        "give_up #2 deadline deadline_exceeded",
                    }));
  RetryStats st = policy.stats();
  EXPECT_EQ(st.calls, 5u);
  EXPECT_EQ(st.attempts, 1u + 3 + 1 + 3 + 2);
  EXPECT_EQ(st.retries, 2u + 2 + 1);
  EXPECT_EQ(st.successes, 2u);
  EXPECT_EQ(st.failures, 3u);
  EXPECT_EQ(st.rejected(RetryRejection::kNotRetryable), 1u);
  EXPECT_EQ(st.rejected(RetryRejection::kAttemptsExhausted), 1u);
  EXPECT_EQ(st.rejected(RetryRejection::kDeadline), 1u);
  EXPECT_EQ(st.rejected(RetryRejection::kTotalTimeExhausted), 0u);
  EXPECT_EQ(st.rejected(RetryRejection::kRetryAfterTooLong), 0u);
  EXPECT_EQ(st.rejected(RetryRejection::kBudget), 0u);
  // Copies share the counters.
  RetryPolicy copy = policy;
  run_call(copy, fail_then_succeed(0));
  EXPECT_EQ(policy.stats().calls, 6u);
}

struct OptionsInvalidCase {
  const char* name;
  RetryOptions options;
  const char* message;
};

TEST(RetryPolicy, CreateValidatesOptionsNamingTheField) {
  const std::vector<OptionsInvalidCase> cases = {
      {"zero attempts", {.max_attempts = 0}, "RetryOptions.max_attempts must be >= 1 (got 0)"},
      {"negative attempts", {.max_attempts = -3}, "RetryOptions.max_attempts must be >= 1 (got -3)"},
      {"zero total time", {.max_total_time = 0ns}, "RetryOptions.max_total_time must be > 0"},
      {"negative retry-after", {.max_retry_after = -1s}, "RetryOptions.max_retry_after must be >= 0 (got -1s)"},
      {"bad backoff", {.backoff = Backoff::exponential(0ns, 1s)}, "RetryOptions.backoff: Backoff.base must be > 0"},
      {"backoff cap", {.backoff = Backoff::full_jitter(2s, 1s)}, "RetryOptions.backoff: Backoff.cap must be >= base"},
  };
  for (const auto& c : cases) {
    auto p = RetryPolicy::create(c.options);
    ASSERT_THAT(p, StatusIs(ErrorKind::kInvalidArgument)) << c.name;
    EXPECT_EQ(p.error().message().rfind(c.message, 0), 0u) << c.name << ": " << p.error().message();
  }
  auto p = RetryPolicy::create({});
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->options().max_attempts, 3);
  EXPECT_EQ(p->options().backoff.kind, Backoff::Kind::kFullJitter);
}

// Result<void>, a deduced T, a by-value capture (moved into the call's frame), and a task that
// outlives its policy.
TEST(RetryPolicy, ApiShapes) {
  SimRuntime s;
  std::vector<std::string> log;
  s.spawn([&](Context& ctx) -> Task<> {
    RetryPolicy policy = make_policy({.max_attempts = 3, .backoff = Backoff::constant(10ms)});
    int n = 0;
    Result<void> v = co_await policy.run<void>(ctx, [&]() -> Task<Result<void>> {
      if (++n < 2) co_return transient();
      co_return Result<void>();
    });
    log.push_back(std::string("void ") + (v.ok() ? "ok" : "failed") + " after " + std::to_string(n));

    // A closure with a non-trivial by-value capture is hit by the g++ 12 co_await temporary
    // bug like an aggregate is (double free under ASan): name it first.
    std::string long_text(200, 'x');
    auto attempt = [text = long_text, &n]() -> Task<Result<std::string>> {
      if (++n < 4) co_return transient();
      co_return text + "!";
    };
    auto got = co_await policy.run(ctx, std::move(attempt));
    log.push_back("deduced " + std::to_string(got.ok() ? got->size() : 0));

    std::optional<Task<Result<int>>> pending;
    {
      RetryPolicy short_lived = make_policy({.max_attempts = 2, .backoff = Backoff::constant(5ms)});
      pending.emplace(short_lived.run<int>(ctx, [&n]() -> Task<Result<int>> {
        if (++n < 6) co_return transient();
        co_return 7;
      }));
    }
    Result<int> late = co_await std::move(*pending);
    log.push_back("outlived " + std::to_string(late.ok() ? *late : -1));
  });
  s.rt->advance(1s);
  EXPECT_EQ(log, (std::vector<std::string>{"void ok after 2", "deduced 201", "outlived 7"}));
}

// ---------------------------------------------------------------------------------------------
// The budget on the real scheduler: 2 workers, thousands of processes, exact counts.

TEST(RetryBudget, ConcurrentProcessesOnTheRealSchedulerCountExactly) {
  constexpr int kProcesses = 4000;
  auto env = make_real_environment({.workers = 2, .seed = 99});
  auto rt = Runtime::create(*env, {.workers = 2}).value();

  // (a) ratio 1: every call deposits a token before its one retry, so every retry is allowed.
  // (b) ratio 0.25: at most a quarter are, and the books balance exactly.
  struct Scenario {
    double ratio;
    std::unique_ptr<RetryBudget> budget;
    std::optional<RetryPolicy> policy;
    std::atomic<int> ok{0}, budget_refused{0}, other{0};
  };
  Scenario a, b;
  a.ratio = 1.0;
  b.ratio = 0.25;
  for (Scenario* sc : {&a, &b}) {
    sc->budget = make_budget(*env, {.ratio = sc->ratio, .max_tokens = 1e6, .initial_tokens = 0});
    sc->policy.emplace(make_policy({.max_attempts = 2, .backoff = Backoff::constant(1ms), .budget = sc->budget.get()}));
  }
  std::vector<std::shared_ptr<ExitWatch>> watches;
  for (int i = 0; i < kProcesses; ++i) {
    Scenario* sc = i % 2 == 0 ? &a : &b;
    RetryPolicy policy = *sc->policy;
    auto watched = rt->spawn_watched([sc, policy](Context& ctx) -> Task<> {
                       int attempt = 0;
                       auto r = co_await policy.run(ctx, [&attempt, &ctx]() -> Task<Result<int>> {
                         co_await ctx.yield();
                         if (++attempt == 1) co_return transient("first attempt fails");
                         co_return attempt;
                       });
                       if (r.ok()) {
                         sc->ok.fetch_add(1);
                       } else if (r.error().kind() == ErrorKind::kBudgetExceeded) {
                         sc->budget_refused.fetch_add(1);
                       } else {
                         sc->other.fetch_add(1);
                       }
                     }).value();
    watches.push_back(watched.exit);
  }
  for (auto& w : watches) {
    ExitReason r = w->wait();
    EXPECT_TRUE(r.is_normal()) << r.to_string();
  }

  constexpr std::uint64_t kEach = kProcesses / 2;
  RetryBudgetStats sa = a.budget->stats();
  EXPECT_EQ(sa.calls, kEach);
  EXPECT_EQ(sa.retries_allowed, kEach);
  EXPECT_EQ(sa.retries_refused, 0u);
  EXPECT_EQ(sa.tokens, 0.0);
  EXPECT_EQ(a.ok.load(), static_cast<int>(kEach));
  EXPECT_EQ(b.ok.load() + b.budget_refused.load(), static_cast<int>(kEach));
  RetryStats pa = a.policy->stats();
  EXPECT_EQ(pa.calls, kEach);
  EXPECT_EQ(pa.attempts, 2 * kEach);
  EXPECT_EQ(pa.retries, kEach);
  EXPECT_EQ(pa.successes, kEach);

  RetryBudgetStats sb = b.budget->stats();
  RetryStats pb = b.policy->stats();
  EXPECT_EQ(sb.calls, kEach);
  EXPECT_EQ(sb.retries_allowed + sb.retries_refused, kEach);
  EXPECT_LE(sb.retries_allowed, kEach / 4);
  EXPECT_EQ(std::llround(sb.tokens * 4),
            static_cast<long long>(kEach) - 4 * static_cast<long long>(sb.retries_allowed));
  EXPECT_EQ(static_cast<std::uint64_t>(b.ok.load()), sb.retries_allowed);
  EXPECT_EQ(static_cast<std::uint64_t>(b.budget_refused.load()), sb.retries_refused);
  EXPECT_EQ(b.other.load(), 0);
  EXPECT_EQ(pb.retries, sb.retries_allowed);
  EXPECT_EQ(pb.attempts, kEach + sb.retries_allowed);
  EXPECT_EQ(pb.rejected(RetryRejection::kBudget), sb.retries_refused);
  EXPECT_EQ(a.other.load(), 0);
  rt.reset();
}

}  // namespace
}  // namespace nines
