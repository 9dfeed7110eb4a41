// The pipeline: policies composed in the documented order, on the virtual clock.
#include "nines/resilience/pipeline.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::IsOkAndHolds;
using ::nines::test::StatusIs;

using Call = Pipeline::Call<int>;

struct Harness {
  test::SimRuntime s;
  test::Log log;
  int calls = 0;

  // A call that fails with the given kinds in turn, then answers 42.
  Call script(std::vector<ErrorKind> failures, Duration takes = Duration::zero()) {
    return [this, failures, takes](Context& ctx) -> Task<Result<int>> {
      int n = calls++;
      log.add("call " + std::to_string(n));
      if (takes > Duration::zero()) {
        auto slept = co_await ctx.sleep(takes);
        if (!slept.ok()) co_return slept.error();
      }
      if (n < static_cast<int>(failures.size())) co_return Error(failures[static_cast<std::size_t>(n)], "scripted");
      co_return 42;
    };
  }

  // Runs the pipeline once in a process; returns its result and the virtual time it took.
  std::pair<Result<int>, Duration> run(const Pipeline& p, Call call, Duration deadline = kInfinite) {
    std::optional<Result<int>> out;
    Duration took{};
    s.spawn([&](Context& ctx) -> Task<> {
      auto scope = ctx.with_timeout(deadline);
      TimePoint t0 = ctx.now();
      out.emplace(co_await p.run<int>(ctx, call));
      took = ctx.now() - t0;
    });
    s.rt->advance(1h);
    return {std::move(*out), took};
  }
};

RetryPolicy retry3(Duration delay = 100ms) {
  return RetryPolicy::create({.max_attempts = 3, .backoff = Backoff::constant(delay)}).value();
}

TEST(Pipeline, RetriesTransientFailuresThroughEveryPolicy) {
  Harness h;
  auto breaker = CircuitBreaker::create("b", h.s.env, {.minimum_calls = 100}).value();
  auto bulkhead = Bulkhead::create("bh", h.s.env, {.max_concurrent = 1, .max_queue = 0}).value();
  auto limiter = RateLimiter::create("rl", h.s.env, {.capacity = 10, .refill_units = 10}).value();
  auto p =
      Pipeline::Builder().retry(retry3()).circuit_breaker(breaker).bulkhead(bulkhead).rate_limiter(limiter).build();
  ASSERT_THAT(p, IsOk());
  auto [r, took] = h.run(*p, h.script({ErrorKind::kTransient, ErrorKind::kTimeout}));
  ASSERT_THAT(r, IsOkAndHolds(42));
  EXPECT_EQ(h.calls, 3);
  EXPECT_EQ(took, 200ms);  // two backoffs of 100 ms
  EXPECT_EQ(breaker->counters().failures, 2u);
  EXPECT_EQ(breaker->counters().successes, 1u);
  EXPECT_EQ(limiter->counters().acquired, 3u);  // every attempt takes a token
  EXPECT_EQ(bulkhead->counters().released, 3u);
}

TEST(Pipeline, PermanentFailureIsNeitherRetriedNorCountedByTheBreaker) {
  Harness h;
  auto breaker = CircuitBreaker::create("b", h.s.env, {.minimum_calls = 1}).value();
  auto p = Pipeline::Builder().retry(retry3()).circuit_breaker(breaker).build().value();
  auto [r, took] = h.run(p, h.script({ErrorKind::kPermanent}));
  EXPECT_THAT(r, StatusIs(ErrorKind::kPermanent));
  EXPECT_EQ(h.calls, 1);
  EXPECT_EQ(breaker->counters().failures, 0u);
  EXPECT_EQ(breaker->state(), BreakerState::kClosed);
}

TEST(Pipeline, OpenBreakerRefusesBeforeBulkheadAndLimiter) {
  Harness h;
  auto breaker = CircuitBreaker::create("provider", h.s.env, {.minimum_calls = 1}).value();
  auto limiter = RateLimiter::create("rl", h.s.env, {}).value();
  breaker->isolate();
  auto p = Pipeline::Builder().retry(retry3()).circuit_breaker(breaker).rate_limiter(limiter).build().value();
  auto [r, took] = h.run(p, h.script({}));
  EXPECT_THAT(r, StatusIs(ErrorKind::kCircuitOpen));
  EXPECT_EQ(h.calls, 0);
  EXPECT_EQ(limiter->counters().acquired, 0u);  // no token spent on a refused call
}

TEST(Pipeline, AttemptTimeoutIsARetryableTimeout) {
  Harness h;
  auto p = Pipeline::Builder().retry(retry3(50ms)).attempt_timeout(500ms).build().value();
  auto [r, took] = h.run(p, h.script({}, 2s));  // every attempt takes 2 s
  ASSERT_THAT(r, StatusIs(ErrorKind::kTimeout));
  EXPECT_EQ(h.calls, 3);
  EXPECT_EQ(took, 3 * 500ms + 2 * 50ms);
}

TEST(Pipeline, AShorterDeadlineInsideTheCallIsNotMistakenForTheAttemptTimeout) {
  Harness h;
  auto p = Pipeline::Builder().retry(retry3(50ms)).attempt_timeout(10s).build().value();
  Call inner = [&h](Context& ctx) -> Task<Result<int>> {
    ++h.calls;
    auto scope = ctx.with_timeout(100ms);  // the call's own sub-deadline
    auto slept = co_await ctx.sleep(1s);
    if (!slept.ok()) co_return slept.error();
    co_return 1;
  };
  auto [r, took] = h.run(p, inner);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r, StatusIs(ErrorKind::kDeadlineExceeded));  // not "attempt timed out after 10000 ms"
  EXPECT_EQ(h.calls, 1);                                   // and not retried
  EXPECT_EQ(took, 100ms);
}

TEST(Pipeline, CallerDeadlineEndsEverythingWithoutRetry) {
  Harness h;
  auto p = Pipeline::Builder().retry(retry3()).attempt_timeout(5s).build().value();
  auto [r, took] = h.run(p, h.script({}, 10s), 1s);
  EXPECT_THAT(r, StatusIs(ErrorKind::kDeadlineExceeded));
  EXPECT_EQ(h.calls, 1);
  EXPECT_EQ(took, 1s);
}

TEST(Pipeline, RateLimitedAttemptWaitsForItsRetryTime) {
  Harness h;
  // Reject mode: an empty bucket fails with kRateLimited and a retry_at; retry honours it.
  auto limiter =
      RateLimiter::create("rl", h.s.env,
                          {.capacity = 1, .refill_units = 1, .refill_period = 1s, .mode = RateLimitMode::kReject})
          .value();
  ASSERT_THAT(limiter->try_acquire(1), IsOk());  // empty it
  auto p = Pipeline::Builder().retry(retry3(10ms)).rate_limiter(limiter).build().value();
  auto [r, took] = h.run(p, h.script({}));
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(took, 1s);  // the refill time, not the 10 ms backoff
}

TEST(Pipeline, BreakerOpensAfterRepeatedFailuresAcrossCalls) {
  Harness h;
  // Open longer than the hour each Harness::run advances.
  auto breaker =
      CircuitBreaker::create("b", h.s.env,
                             {.window_size = 4, .minimum_calls = 4, .open_duration = 24h, .max_open_duration = 24h})
          .value();
  auto p = Pipeline::Builder().circuit_breaker(breaker).build().value();
  for (int i = 0; i < 4; ++i)
    (void)h.run(p,
                h.script({ErrorKind::kTransient, ErrorKind::kTransient, ErrorKind::kTransient, ErrorKind::kTransient}));
  EXPECT_EQ(breaker->state(), BreakerState::kOpen);
  int before = h.calls;
  auto [r, took] = h.run(p, h.script({}));
  ASSERT_THAT(r, StatusIs(ErrorKind::kCircuitOpen));
  EXPECT_EQ(h.calls, before);
}

TEST(Pipeline, BuildRejectsBadOptions) {
  EXPECT_THAT(Pipeline::Builder().attempt_timeout(Duration::zero()).build(), StatusIs(ErrorKind::kInvalidArgument));
  test::SimRuntime s;
  auto limiter = RateLimiter::create("rl", s.env, {}).value();
  EXPECT_FALSE(Pipeline::Builder().rate_limiter(limiter, 0).build().ok());
  EXPECT_THAT(Pipeline::Builder().build(), IsOk());  // nothing: a pass-through
}

TEST(Pipeline, AFailedAttemptFreesItsHalfOpenTrialBeforeTheBackoff) {
  Harness h;
  CircuitBreakerOptions bo;
  bo.failure_rate_threshold.reset();
  bo.consecutive_failures = 1;
  bo.open_duration = 1s;
  auto breaker = CircuitBreaker::create("b", h.s.env, bo).value();
  // An empty bucket that refills in 10 s, and no patience: an attempt that passes the
  // breaker fails in the limiter with a retryable kRateLimited, retry_at 10 s away.
  auto limiter =
      RateLimiter::create("rl", h.s.env, {.capacity = 1, .refill_units = 1, .refill_period = 10s, .max_wait = 1ms})
          .value();
  ASSERT_THAT(limiter->try_acquire(1), IsOk());
  // Open the breaker and let the open duration pass: the next attempt gets the one
  // half-open trial permit.
  {
    auto permit = breaker->try_acquire();
    ASSERT_THAT(permit, IsOk());
    permit->failure(Error(ErrorKind::kTransient, "down"), 1ms);
  }
  ASSERT_EQ(breaker->state(), BreakerState::kOpen);
  h.s.rt->advance(2s);
  auto p = Pipeline::Builder().retry(retry3(10ms)).circuit_breaker(breaker).rate_limiter(limiter).build().value();
  std::optional<Result<int>> out;
  h.s.spawn([&](Context& ctx) -> Task<> { out.emplace(co_await p.run<int>(ctx, h.script({}))); });
  h.s.rt->advance(1s);  // the first attempt was refused by the limiter; its retry waits ~10 s
  ASSERT_FALSE(out.has_value());
  EXPECT_EQ(limiter->counters().rejected_max_wait, 1u);
  // The trial slot is free again during the wait: someone else may probe.
  auto probe = breaker->try_acquire();
  ASSERT_THAT(probe, IsOk());
  EXPECT_TRUE(probe->trial());
  probe->success(1ms);
  EXPECT_EQ(breaker->state(), BreakerState::kClosed);
  h.s.rt->advance(1h);
  ASSERT_TRUE(out.has_value());
  ASSERT_TRUE(out->ok()) << out->error().to_string();
  EXPECT_EQ(breaker->counters().ignored, 1u);  // the refused attempt's permit
}

TEST(Pipeline, SlowCallsAreTimedOnlyForBreakersWithASlowCallThreshold) {
  Harness h;
  CircuitBreakerOptions timed;
  timed.slow_call_rate_threshold = 0.9;
  timed.slow_call_duration = 1s;
  timed.minimum_calls = 100;
  auto b1 = CircuitBreaker::create("timed", h.s.env, timed).value();
  auto p1 = Pipeline::Builder().circuit_breaker(b1).build().value();
  (void)h.run(p1, h.script({}, 2s));
  EXPECT_EQ(b1->counters().slow_calls, 1u);
  auto b2 = CircuitBreaker::create("untimed", h.s.env, {.minimum_calls = 100, .slow_call_duration = 1s}).value();
  auto p2 = Pipeline::Builder().circuit_breaker(b2).build().value();
  (void)h.run(p2, h.script({}, 2s));
  EXPECT_EQ(b2->counters().successes, 1u);
  EXPECT_EQ(b2->counters().slow_calls, 0u);  // documented: not timed without the threshold
}

// Property, over many seeds and random pipelines: no call through a pipeline, nor anything
// the call awaits, outlives the caller's deadline; a nested deadline is never later than the
// outer one; every call ends.
TEST(PipelineProperty, NoCallOutlivesItsDeadline) {
  constexpr int kSeeds = 150;
  constexpr int kProcesses = 12;
  std::vector<std::string> violations;
  int finished_total = 0;
  for (std::uint64_t seed = 1; seed <= kSeeds; ++seed) {
    test::SimRuntime s(seed);
    Environment& env = s.env;
    auto between = [&env](Duration lo, Duration hi) {
      return lo +
             Duration(static_cast<Duration::rep>(env.random_below(static_cast<std::uint64_t>((hi - lo).count()) + 1)));
    };
    Pipeline::Builder b;
    if (env.random_below(4) != 0) {
      b.retry(RetryPolicy::create({.max_attempts = 1 + static_cast<int>(env.random_below(5)),
                                   .backoff = Backoff::full_jitter(between(1ms, 200ms), 2s),
                                   .max_retry_after = between(0ms, 3s)})
                  .value());
    }
    if (env.random_below(2) != 0) {
      CircuitBreakerOptions bo;
      bo.failure_rate_threshold.reset();
      bo.consecutive_failures = 1 + static_cast<std::uint32_t>(env.random_below(4));
      bo.open_duration = between(10ms, 1s);
      bo.max_open_duration = 1s;
      b.circuit_breaker(CircuitBreaker::create("b", env, bo).value());
    }
    if (env.random_below(2) != 0) {
      b.bulkhead(Bulkhead::create("bh", env,
                                  {.max_concurrent = 1 + env.random_below(3),
                                   .max_queue = env.random_below(8),
                                   .queue_timeout = between(1ms, 2s)})
                     .value());
    }
    if (env.random_below(2) != 0) {
      b.rate_limiter(
          RateLimiter::create(
              "rl", env,
              {.capacity = 1 + env.random_below(4), .refill_units = 1 + env.random_below(10), .refill_period = 1s})
              .value());
    }
    if (env.random_below(2) != 0) b.attempt_timeout(between(10ms, 2s));
    Pipeline p = b.build().value();

    int finished = 0;
    for (int i = 0; i < kProcesses; ++i) {
      const Duration budget = between(1ms, 4s);
      s.spawn([&, budget, seed, i](Context& ctx) -> Task<> {
        auto scope = ctx.with_timeout(budget);
        const TimePoint outer = ctx.deadline();
        auto call = [&, outer, seed, i](Context& c) -> Task<Result<int>> {
          if (c.deadline() > outer) {
            violations.push_back("seed " + std::to_string(seed) + " process " + std::to_string(i) +
                                 ": a nested deadline later than the caller's");
          }
          auto slept = co_await c.sleep(between(0ms, 1500ms));
          if (c.now() > outer) {
            violations.push_back("seed " + std::to_string(seed) + " process " + std::to_string(i) +
                                 ": the call ran past the caller's deadline");
          }
          if (!slept.ok()) co_return slept.error();
          switch (env.random_below(5)) {
            case 0: co_return Error(ErrorKind::kTransient, "flaky");
            case 1: co_return Error(ErrorKind::kRateLimited, "429").with_retry_at(c.now() + between(0ms, 2s));
            case 2: co_return Error(ErrorKind::kTimeout, "slow upstream");
            case 3: co_return Error(ErrorKind::kPermanent, "bad request");
            default: co_return 7;
          }
        };
        Result<int> r = co_await p.run<int>(ctx, call);
        if (ctx.now() > outer) {
          violations.push_back("seed " + std::to_string(seed) + " process " + std::to_string(i) +
                               ": the pipeline returned after the caller's deadline (" +
                               (r.ok() ? std::string("ok") : r.error().to_string()) + ")");
        }
        ++finished;
      });
    }
    s.rt->advance(1h);
    if (finished != kProcesses) {
      violations.push_back("seed " + std::to_string(seed) + ": only " + std::to_string(finished) + " of " +
                           std::to_string(kProcesses) + " calls ended");
    }
    finished_total += finished;
  }
  EXPECT_EQ(finished_total, kSeeds * kProcesses);
  EXPECT_TRUE(violations.empty()) << violations.size() << " violations; first: " << violations.front();
}

// The real scheduler, two workers, under TSan in the test command: 10,000 processes through
// one pipeline whose bulkhead is small enough that most calls queue, with failures that
// trip and close the breaker. Every slot comes back, no more calls run at once than the
// bulkhead allows, and the counts add up.
TEST(PipelineConcurrency, TenThousandCallsThroughOnePipelineOnTwoWorkers) {
  constexpr int kProcesses = 10'000;
  constexpr std::size_t kSlots = 8;
  auto env = make_real_environment({.workers = 2, .seed = 17});
  auto rt = Runtime::create(*env).value();
  CircuitBreakerOptions bo;
  bo.failure_rate_threshold.reset();
  bo.consecutive_failures = 2;
  bo.open_duration = std::chrono::microseconds(200);
  auto breaker = CircuitBreaker::create("b", *env, bo).value();
  auto bulkhead =
      Bulkhead::create("bh", *env, {.max_concurrent = kSlots, .max_queue = kProcesses, .queue_timeout = kInfinite})
          .value();
  auto limiter = RateLimiter::create("rl", *env, {.capacity = 1'000'000, .refill_units = 1'000'000}).value();
  auto retry =
      RetryPolicy::create({.max_attempts = 2, .backoff = Backoff::constant(std::chrono::microseconds(50))}).value();
  Pipeline p = Pipeline::Builder()
                   .retry(retry)
                   .circuit_breaker(breaker)
                   .bulkhead(bulkhead)
                   .rate_limiter(limiter)
                   .build()
                   .value();

  std::atomic<int> running{0}, peak{0}, calls{0}, ok{0}, failed{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  watches.reserve(kProcesses);
  for (int i = 0; i < kProcesses; ++i) {
    Behavior body = [&, i](Context& ctx) -> Task<> {
      auto call = [&, i](Context& c) -> Task<Result<int>> {
        int now_running = running.fetch_add(1) + 1;
        int seen = peak.load();
        while (now_running > seen && !peak.compare_exchange_weak(seen, now_running)) {
        }
        calls.fetch_add(1);
        co_await c.yield();
        running.fetch_sub(1);
        if (i % 3 == 0) co_return Error(ErrorKind::kTransient, "flaky");
        co_return i;
      };
      Result<int> r = co_await p.run<int>(ctx, call);
      (r.ok() ? ok : failed).fetch_add(1);
    };
    watches.push_back(rt->spawn_watched(std::move(body)).value().exit);
  }
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  EXPECT_EQ(ok.load() + failed.load(), kProcesses);
  EXPECT_LE(peak.load(), static_cast<int>(kSlots));
  BulkheadCounters bc = bulkhead->counters();
  EXPECT_EQ(bc.in_flight, 0u);
  EXPECT_EQ(bc.queued, 0u);
  EXPECT_EQ(bc.acquired, bc.released);
  EXPECT_LE(bc.peak_in_flight, kSlots);
  EXPECT_EQ(bc.acquired, static_cast<std::uint64_t>(calls.load()));  // each call held a slot
  BreakerCounters c = breaker->counters();
  EXPECT_GT(c.opened, 0u);  // one call in three fails: two in a row happen, so it tripped
  EXPECT_EQ(c.successes + c.failures + c.ignored, c.permitted);
  EXPECT_EQ(c.successes, static_cast<std::uint64_t>(ok.load()));
  RetryStats rs = retry.stats();
  EXPECT_EQ(rs.calls, static_cast<std::uint64_t>(kProcesses));
  EXPECT_EQ(rs.successes, static_cast<std::uint64_t>(ok.load()));
  EXPECT_EQ(rs.failures, static_cast<std::uint64_t>(failed.load()));
  EXPECT_EQ(limiter->counters().acquired, static_cast<std::uint64_t>(calls.load()));
}

// Several limiters: every attempt must be admitted by all, asked in the order added. One
// refusing fails the attempt with its error: the limiters before it keep the units they gave,
// the ones after it are not asked, and the call does not run.
TEST(Pipeline, SeveralLimitersMustAllAdmitAnAttempt) {
  Harness h;
  // No refill to speak of while Harness::run advances its hour.
  auto reject = [&](const char* name, std::uint64_t capacity) {
    return RateLimiter::create(
               name, h.s.env,
               {.capacity = capacity, .refill_units = capacity, .refill_period = 24h, .mode = RateLimitMode::kReject})
        .value();
  };
  auto requests = reject("requests", 10);
  auto tokens = reject("tokens", 100);
  auto third = reject("third", 10);
  auto p = Pipeline::Builder().rate_limiter(requests).rate_limiter(tokens, 60).rate_limiter(third).build().value();
  auto [first, took] = h.run(p, h.script({}));
  ASSERT_TRUE(first.ok()) << first.error().to_string();
  EXPECT_EQ(tokens->counters().acquired_units, 60u);
  auto [second, took2] = h.run(p, h.script({}));  // 40 tokens left, 60 needed
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().kind(), ErrorKind::kRateLimited);
  EXPECT_NE(second.error().message().find("tokens"), std::string::npos) << second.error().message();
  EXPECT_EQ(h.calls, 1);
  EXPECT_EQ(requests->counters().acquired, 2u);  // charged before the refusal
  EXPECT_EQ(tokens->counters().rejected_no_tokens, 1u);
  EXPECT_EQ(third->counters().acquired, 1u);  // not asked
  EXPECT_EQ(third->counters().rejected_no_tokens, 0u);
}

// Per-run units, the refusal reported, and LimiterStep: the limiters wait inside the attempt
// timeout, and a refusal ends the run at once (no retry, the breaker not told).
TEST(Pipeline, ALimiterRefusalCanEndTheRunAndIsReported) {
  Harness h;
  auto tokens =
      RateLimiter::create("tokens", h.s.env, {.capacity = 100, .refill_units = 100, .refill_period = 1min}).value();
  auto breaker = CircuitBreaker::create("b", h.s.env, {.minimum_calls = 1}).value();
  auto p = Pipeline::Builder()
               .retry(retry3(10ms))
               .circuit_breaker(breaker)
               .rate_limiter(tokens)
               .attempt_timeout(5s)
               .limiter_step({.within_attempt_timeout = true, .refusal_ends_run = true})
               .build()
               .value();
  std::optional<Error> refused;
  auto run = [&](std::uint64_t units) {
    std::optional<Result<int>> out;
    const std::uint64_t per_run[] = {units};
    h.s.spawn([&](Context& ctx) -> Task<> {
      out.emplace(co_await p.run<int>(ctx, h.script({}), RunLimits{.units = per_run, .refused = &refused}));
    });
    h.s.rt->advance(1s);  // the call takes no time; a refusal comes at once
    return std::move(*out);
  };
  ASSERT_TRUE(run(90).ok());
  EXPECT_FALSE(refused.has_value());
  // About 11 left a second later; the missing 49 take about 29 s to refill, longer than the
  // 5 s attempt timeout: refused at once.
  auto r = run(60);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kDeadlineExceeded) << r.error().to_string();
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->kind(), ErrorKind::kDeadlineExceeded);
  EXPECT_EQ(h.calls, 1);
  EXPECT_EQ(tokens->counters().rejected_deadline, 1u);  // once: not retried
  EXPECT_EQ(breaker->state(), BreakerState::kClosed);
}

}  // namespace
}  // namespace nines
