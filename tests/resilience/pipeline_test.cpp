// The pipeline: policies composed in the documented order, on the virtual clock.
#include "nines/resilience/pipeline.hpp"

#include <gtest/gtest.h>

#include "runtime/test_util.hpp"

namespace nines {
namespace {

using Call = Pipeline::Call<int>;

struct Harness {
  testing::SimRuntime s;
  testing::Log log;
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
  auto p = Pipeline::Builder().retry(retry3()).circuit_breaker(breaker).bulkhead(bulkhead).rate_limiter(limiter).build();
  ASSERT_TRUE(p.ok());
  auto [r, took] = h.run(*p, h.script({ErrorKind::kTransient, ErrorKind::kTimeout}));
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(*r, 42);
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
  EXPECT_EQ(r.error().kind(), ErrorKind::kPermanent);
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
  EXPECT_EQ(r.error().kind(), ErrorKind::kCircuitOpen);
  EXPECT_EQ(h.calls, 0);
  EXPECT_EQ(limiter->counters().acquired, 0u);  // no token spent on a refused call
}

TEST(Pipeline, AttemptTimeoutIsARetryableTimeout) {
  Harness h;
  auto p = Pipeline::Builder().retry(retry3(50ms)).attempt_timeout(500ms).build().value();
  auto [r, took] = h.run(p, h.script({}, 2s));  // every attempt takes 2 s
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kTimeout);
  EXPECT_EQ(h.calls, 3);
  EXPECT_EQ(took, 3 * 500ms + 2 * 50ms);
}

TEST(Pipeline, CallerDeadlineEndsEverythingWithoutRetry) {
  Harness h;
  auto p = Pipeline::Builder().retry(retry3()).attempt_timeout(5s).build().value();
  auto [r, took] = h.run(p, h.script({}, 10s), 1s);
  EXPECT_EQ(r.error().kind(), ErrorKind::kDeadlineExceeded);
  EXPECT_EQ(h.calls, 1);
  EXPECT_EQ(took, 1s);
}

TEST(Pipeline, RateLimitedAttemptWaitsForItsRetryTime) {
  Harness h;
  // Reject mode: an empty bucket fails with kRateLimited and a retry_at; retry honours it.
  auto limiter = RateLimiter::create(
                     "rl", h.s.env,
                     {.capacity = 1, .refill_units = 1, .refill_period = 1s, .mode = RateLimitMode::kReject})
                     .value();
  ASSERT_TRUE(limiter->try_acquire(1).ok());  // empty it
  auto p = Pipeline::Builder().retry(retry3(10ms)).rate_limiter(limiter).build().value();
  auto [r, took] = h.run(p, h.script({}));
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(took, 1s);  // the refill time, not the 10 ms backoff
}

TEST(Pipeline, BreakerOpensAfterRepeatedFailuresAcrossCalls) {
  Harness h;
  // Open longer than the hour each Harness::run advances.
  auto breaker =
      CircuitBreaker::create("b", h.s.env, {.window_size = 4, .minimum_calls = 4, .open_duration = 24h, .max_open_duration = 24h}).value();
  auto p = Pipeline::Builder().circuit_breaker(breaker).build().value();
  for (int i = 0; i < 4; ++i) (void)h.run(p, h.script({ErrorKind::kTransient, ErrorKind::kTransient,
                                                         ErrorKind::kTransient, ErrorKind::kTransient}));
  EXPECT_EQ(breaker->state(), BreakerState::kOpen);
  int before = h.calls;
  auto [r, took] = h.run(p, h.script({}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kCircuitOpen);
  EXPECT_EQ(h.calls, before);
}

TEST(Pipeline, BuildRejectsBadOptions) {
  EXPECT_EQ(Pipeline::Builder().attempt_timeout(Duration::zero()).build().error().kind(), ErrorKind::kInvalidArgument);
  testing::SimRuntime s;
  auto limiter = RateLimiter::create("rl", s.env, {}).value();
  EXPECT_FALSE(Pipeline::Builder().rate_limiter(limiter, 0).build().ok());
  EXPECT_TRUE(Pipeline::Builder().build().ok());  // nothing: a pass-through
}

}  // namespace
}  // namespace nines
