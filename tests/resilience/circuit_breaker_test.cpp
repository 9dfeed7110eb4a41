// Circuit breaker and registry: every behaviour of the mature libraries' breaker tests
// (resilience4j, Polly, cockatiel, opossum, Failsafe; listed in breaker-behaviours.md, cited
// as [Bn] below), on the virtual clock, plus concurrency on the real scheduler.
#include "nines/resilience/circuit_breaker.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "nines/core/check.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

using test::SimRuntime;

constexpr Duration kFast = std::chrono::milliseconds(10);

Error transient_error() { return Error(ErrorKind::kTransient, "503 service unavailable"); }
Error permanent_error() { return Error(ErrorKind::kPermanent, "400 bad prompt"); }

// One call through a fresh permit; false when the breaker rejected it.
bool succeed(CircuitBreaker& b, Duration elapsed = kFast) {
  auto p = b.try_acquire();
  if (!p.ok()) return false;
  p->success(elapsed);
  return true;
}

bool fail(CircuitBreaker& b, const Error& e = transient_error(), Duration elapsed = kFast) {
  auto p = b.try_acquire();
  if (!p.ok()) return false;
  p->failure(e, elapsed);
  return true;
}

// Count-based window of `window` calls, tripping at `threshold` after `minimum` calls.
CircuitBreakerOptions rate_options(std::size_t window, std::size_t minimum, double threshold) {
  CircuitBreakerOptions o;
  o.window_size = window;
  o.minimum_calls = minimum;
  o.failure_rate_threshold = threshold;
  o.open_duration = std::chrono::seconds(10);
  return o;
}

// Trips on `n` consecutive failures only.
CircuitBreakerOptions streak_options(std::uint32_t n) {
  CircuitBreakerOptions o;
  o.failure_rate_threshold.reset();
  o.consecutive_failures = n;
  o.open_duration = std::chrono::seconds(10);
  return o;
}

struct Recorder {
  std::vector<BreakerTransition> events;
  void attach(CircuitBreaker& b) {
    b.subscribe([this](const BreakerTransition& ev) { events.push_back(ev); });
  }
};

class CircuitBreakerTest : public ::testing::Test {
 protected:
  std::shared_ptr<CircuitBreaker> make(const CircuitBreakerOptions& o, std::string name = "openai/gpt-4o") {
    auto r = CircuitBreaker::create(std::move(name), env_, o);
    EXPECT_THAT(r, IsOk());
    return std::move(r).value();
  }
  void advance(Duration d) { env_.set_now(env_.now() + d); }
  // Moves the clock to the next multiple of `width` (time-based bucket boundary).
  void align_to(Duration width) {
    auto ns = env_.now().time_since_epoch().count();
    auto rem = ns % width.count();
    if (rem != 0) advance(Duration(width.count() - rem));
  }
  // Trips a streak breaker with `n` failures.
  void trip(CircuitBreaker& b, int n) {
    for (int i = 0; i < n; ++i) ASSERT_TRUE(fail(b));
    ASSERT_EQ(b.state(), BreakerState::kOpen);
  }

  SimEnvironment env_{42};
};

// ---------------------------------------------------------------------------------------
// [B1] Open and forced-open reject at once, without running the call, counting each.

TEST_F(CircuitBreakerTest, OpenRejectsAtOnceNamingTheBreakerAndWhenItMayClose) {
  auto b = make(streak_options(3));
  trip(*b, 3);
  TimePoint until = *b->open_until();
  EXPECT_EQ(until, env_.now() + std::chrono::seconds(10));
  advance(std::chrono::milliseconds(2500));
  for (int i = 0; i < 5; ++i) {
    auto p = b->try_acquire();
    ASSERT_THAT(p, StatusIs(ErrorKind::kCircuitOpen, HasSubstr("'openai/gpt-4o'")));
    EXPECT_THAT(p.error().message(), HasSubstr("7.500 s"));
    ASSERT_TRUE(p.error().retry_at().has_value());
    EXPECT_EQ(*p.error().retry_at(), until);
  }
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.rejections, 5u);
  EXPECT_EQ(c.rejected_open, 5u);
  EXPECT_EQ(c.permitted, 3u);
  EXPECT_EQ(c.failures, 3u);
  EXPECT_EQ(c.state, BreakerState::kOpen);
}

TEST_F(CircuitBreakerTest, CallDoesNotRunTheFunctionWhenOpen) {
  SimRuntime s(7);
  auto b = CircuitBreaker::create("tool:search", s.env, streak_options(1)).value();
  int runs = 0;
  std::vector<ErrorKind> got;
  s.spawn([&](Context& ctx) -> Task<> {
    auto failing = [&]() -> Task<Result<int>> {
      ++runs;
      co_return transient_error();
    };
    for (int i = 0; i < 4; ++i) {
      Result<int> r = co_await b->call<int>(ctx, failing);
      got.push_back(r.error().kind());
    }
  });
  s.rt->run_until_idle();
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(got, (std::vector<ErrorKind>{ErrorKind::kTransient, ErrorKind::kCircuitOpen, ErrorKind::kCircuitOpen,
                                         ErrorKind::kCircuitOpen}));
  EXPECT_EQ(b->counters().rejections, 3u);
}

TEST_F(CircuitBreakerTest, IsolatedRejectsAtOnceAndCounts) {
  auto b = make(rate_options(10, 5, 0.5));
  ASSERT_TRUE(succeed(*b));
  b->isolate();
  EXPECT_EQ(b->state(), BreakerState::kForcedOpen);
  for (int i = 0; i < 3; ++i) {
    auto p = b->try_acquire();
    ASSERT_THAT(p, StatusIs(ErrorKind::kCircuitOpen, HasSubstr("isolated")));
    EXPECT_THAT(p.error().message(), HasSubstr("'openai/gpt-4o'"));
  }
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.rejections, 3u);
  EXPECT_EQ(c.rejected_forced_open, 3u);
  EXPECT_EQ(c.rejected_open, 0u);
}

// ---------------------------------------------------------------------------------------
// [B2] After the open duration, the next call request moves it to half-open (lazily).

TEST_F(CircuitBreakerTest, OpenMovesToHalfOpenOnTheFirstRequestAfterTheOpenDuration) {
  auto b = make(streak_options(2));
  Recorder rec;
  rec.attach(*b);
  trip(*b, 2);
  TimePoint opened_at = env_.now();
  advance(std::chrono::seconds(10) - Duration(1));
  EXPECT_FALSE(b->try_acquire().ok());
  advance(Duration(1));
  // Nothing happens by itself on the clock: still open until someone asks.
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  advance(std::chrono::seconds(5));
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  ASSERT_EQ(rec.events.size(), 1u);
  auto p = b->try_acquire();
  ASSERT_THAT(p, IsOk());
  EXPECT_TRUE(p->trial());
  EXPECT_EQ(b->state(), BreakerState::kHalfOpen);
  ASSERT_EQ(rec.events.size(), 2u);
  EXPECT_EQ(rec.events[1].from, BreakerState::kOpen);
  EXPECT_EQ(rec.events[1].to, BreakerState::kHalfOpen);
  EXPECT_EQ(rec.events[1].reason, BreakerReason::kOpenDurationElapsed);
  EXPECT_EQ(rec.events[1].at, opened_at + std::chrono::seconds(15));
  p->success(kFast);
  EXPECT_EQ(b->state(), BreakerState::kClosed);
}

// ---------------------------------------------------------------------------------------
// [B3] Half-open admits exactly the configured number of trials.

TEST_F(CircuitBreakerTest, HalfOpenAdmitsExactlyTheConfiguredTrials) {
  CircuitBreakerOptions o = streak_options(1);
  o.half_open_trials = 3;
  auto b = make(o);
  trip(*b, 1);
  advance(std::chrono::seconds(10));
  std::vector<CircuitBreaker::Permit> trials;
  for (int i = 0; i < 3; ++i) {
    auto p = b->try_acquire();
    ASSERT_THAT(p, IsOk());
    EXPECT_TRUE(p->trial());
    trials.push_back(std::move(*p));
  }
  auto extra = b->try_acquire();
  ASSERT_THAT(extra, StatusIs(ErrorKind::kCircuitOpen, HasSubstr("half-open")));
  // A reported trial does not free a slot: the 3 trials are the 3 calls it judges.
  trials[0].success(kFast);
  EXPECT_FALSE(b->try_acquire().ok());
  trials[1].success(kFast);
  EXPECT_FALSE(b->try_acquire().ok());
  EXPECT_EQ(b->state(), BreakerState::kHalfOpen);
  trials[2].success(kFast);
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.rejected_half_open, 3u);
  EXPECT_EQ(c.rejections, 3u);
  auto after = b->try_acquire();
  ASSERT_THAT(after, IsOk());
  EXPECT_FALSE(after->trial());
}

// ---------------------------------------------------------------------------------------
// [B4] Trials decide: success (or a trial rate below threshold) closes, failure reopens,
// and the open duration may grow on each reopening.

TEST_F(CircuitBreakerTest, SuccessfulTrialClosesFailedTrialReopens) {
  auto b = make(streak_options(1));
  trip(*b, 1);
  advance(std::chrono::seconds(10));
  ASSERT_TRUE(fail(*b));  // the trial fails
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  EXPECT_EQ(*b->open_until(), env_.now() + std::chrono::seconds(10));
  advance(std::chrono::seconds(10));
  ASSERT_TRUE(succeed(*b));
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  EXPECT_EQ(b->counters().opened, 2u);
}

TEST_F(CircuitBreakerTest, TrialFailureRateBelowThresholdClosesAtThresholdReopensEarly) {
  CircuitBreakerOptions o = rate_options(4, 4, 0.5);
  o.half_open_trials = 4;
  auto b = make(o);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(fail(*b));
  ASSERT_EQ(b->state(), BreakerState::kOpen);
  advance(std::chrono::seconds(10));
  // 1 of 4 trials fails: 0.25 < 0.5, closes once all four reported.
  ASSERT_TRUE(fail(*b));
  ASSERT_TRUE(succeed(*b));
  ASSERT_TRUE(succeed(*b));
  EXPECT_EQ(b->state(), BreakerState::kHalfOpen);
  ASSERT_TRUE(succeed(*b));
  EXPECT_EQ(b->state(), BreakerState::kClosed);

  for (int i = 0; i < 4; ++i) ASSERT_TRUE(fail(*b));
  ASSERT_EQ(b->state(), BreakerState::kOpen);
  advance(std::chrono::seconds(10));
  std::vector<CircuitBreaker::Permit> trials;
  for (int i = 0; i < 4; ++i) trials.push_back(std::move(b->try_acquire().value()));
  trials[0].failure(transient_error(), kFast);
  EXPECT_EQ(b->state(), BreakerState::kHalfOpen);
  // 2 of 4 failed: the rate over the trials is at least 0.5 whatever the others do.
  trials[1].failure(transient_error(), kFast);
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  // The late trials are counted but judge nothing.
  trials[2].success(kFast);
  trials[3].success(kFast);
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.successes, 5u);
  EXPECT_EQ(c.failures, 11u);
}

TEST_F(CircuitBreakerTest, OpenDurationGrowsOnEachReopeningUpToTheMaxAndResetsOnClose) {
  CircuitBreakerOptions o = streak_options(1);
  o.open_duration = std::chrono::seconds(1);
  o.open_duration_multiplier = 2.0;
  o.max_open_duration = std::chrono::seconds(5);
  auto b = make(o);
  Recorder rec;
  rec.attach(*b);
  trip(*b, 1);
  std::vector<Duration> open_for;
  for (int i = 0; i < 5; ++i) {
    open_for.push_back(*b->open_until() - env_.now());
    advance(open_for.back());
    ASSERT_TRUE(fail(*b));  // failed trial: reopen
  }
  using std::chrono::seconds;
  EXPECT_EQ(open_for, (std::vector<Duration>{seconds(1), seconds(2), seconds(4), seconds(5), seconds(5)}));
  EXPECT_EQ(*b->open_until() - env_.now(), seconds(5));
  advance(seconds(5));
  ASSERT_TRUE(succeed(*b));  // closes: the growth starts over
  ASSERT_TRUE(fail(*b));
  EXPECT_EQ(*b->open_until() - env_.now(), seconds(1));
  // The events carry the same durations.
  std::vector<Duration> from_events;
  for (const auto& ev : rec.events) {
    if (ev.to == BreakerState::kOpen) from_events.push_back(ev.open_for);
  }
  EXPECT_EQ(from_events, (std::vector<Duration>{seconds(1), seconds(2), seconds(4), seconds(5), seconds(5), seconds(5),
                                                seconds(1)}));
}

TEST_F(CircuitBreakerTest, GrowingOpenDurationStaysWithinJitterBounds) {
  CircuitBreakerOptions o = streak_options(1);
  o.open_duration = std::chrono::seconds(1);
  o.open_duration_multiplier = 3.0;
  o.max_open_duration = std::chrono::seconds(60);
  o.open_duration_jitter = 0.4;
  std::vector<double> fractions;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    SimEnvironment env(seed);
    auto b = CircuitBreaker::create("p", env, o).value();
    ASSERT_TRUE(fail(*b));
    double nominal = 1.0;
    for (int reopening = 0; reopening < 6; ++reopening) {
      Duration d = *b->open_until() - env.now();
      double fraction = to_seconds(d) / nominal;
      EXPECT_GE(fraction, 0.6 - 1e-9) << "seed " << seed << " reopening " << reopening;
      EXPECT_LE(fraction, 1.0) << "seed " << seed << " reopening " << reopening;
      EXPECT_LE(d, o.max_open_duration);
      fractions.push_back(fraction);
      env.set_now(env.now() + d);
      ASSERT_TRUE(fail(*b));
      nominal = std::min(nominal * 3.0, 60.0);
    }
  }
  // The jitter is real: the draws spread over the allowed range.
  auto [lo, hi] = std::minmax_element(fractions.begin(), fractions.end());
  EXPECT_LT(*lo, 0.7);
  EXPECT_GT(*hi, 0.9);
}

TEST_F(CircuitBreakerTest, FixedOpenDurationDoesNotGrow) {
  auto b = make(streak_options(1));
  trip(*b, 1);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(*b->open_until() - env_.now(), std::chrono::seconds(10));
    advance(std::chrono::seconds(10));
    ASSERT_TRUE(fail(*b));
  }
}

// ---------------------------------------------------------------------------------------
// [B5] Below the minimum number of calls the rates are undefined: it never trips.

TEST_F(CircuitBreakerTest, NeverTripsBelowTheMinimumNumberOfCalls) {
  auto b = make(rate_options(20, 10, 0.5));
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  EXPECT_EQ(b->figures().failure_rate, 1.0);
  Recorder rec;
  rec.attach(*b);
  ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  ASSERT_EQ(rec.events.size(), 1u);
  EXPECT_EQ(rec.events[0].figures.calls, 10u);
  EXPECT_EQ(rec.events[0].reason, BreakerReason::kFailureRate);
}

TEST_F(CircuitBreakerTest, MinimumCallsCountOnlyCallsStillInATimeWindow) {
  CircuitBreakerOptions o;
  o.window = BreakerWindow::kTimeBased;
  o.window_duration = std::chrono::seconds(10);
  o.window_buckets = 10;
  o.minimum_calls = 6;
  o.failure_rate_threshold = 0.5;
  auto b = make(o);
  // 100% failures, but never 6 calls within 10 s.
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(fail(*b));
    advance(std::chrono::seconds(2));
  }
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  EXPECT_EQ(b->counters().failures, 50u);
}

// ---------------------------------------------------------------------------------------
// [B6] Count-based: the last N calls. Time-based: buckets expire and wrap.

TEST_F(CircuitBreakerTest, CountWindowJudgesOnlyTheLastNCalls) {
  auto b = make(rate_options(10, 10, 0.5));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(fail(*b));
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(succeed(*b));
  BreakerFigures f = b->figures();
  EXPECT_EQ(f.calls, 10u);
  EXPECT_EQ(f.failures, 4u);
  EXPECT_DOUBLE_EQ(f.failure_rate, 0.4);
  // Each new failure pushes out the oldest call: the first four push out failures (still 4
  // of 10), the fifth pushes out a success and reaches 0.5.
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(fail(*b));
    EXPECT_EQ(b->state(), BreakerState::kClosed) << i;
    EXPECT_EQ(b->figures().failures, 4u);
  }
  Recorder rec;
  rec.attach(*b);
  ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  ASSERT_EQ(rec.events.size(), 1u);
  EXPECT_EQ(rec.events[0].figures.calls, 10u);
  EXPECT_EQ(rec.events[0].figures.failures, 5u);
  EXPECT_DOUBLE_EQ(rec.events[0].figures.failure_rate, 0.5);
}

TEST_F(CircuitBreakerTest, CountWindowWrapsAroundManyTimes) {
  auto b = make(rate_options(7, 7, 0.9));
  // Pattern F S S repeated: in any 7 consecutive calls 2 or 3 failures, never 0.9.
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(i % 3 == 0 ? fail(*b) : succeed(*b));
    BreakerFigures f = b->figures();
    std::uint64_t expected_calls = std::min(i + 1, 7);
    std::uint64_t expected_failures = 0;
    for (int k = std::max(0, i - 6); k <= i; ++k) expected_failures += k % 3 == 0;
    ASSERT_EQ(f.calls, expected_calls) << i;
    ASSERT_EQ(f.failures, expected_failures) << i;
  }
  EXPECT_EQ(b->state(), BreakerState::kClosed);
}

TEST_F(CircuitBreakerTest, TimeWindowBucketsExpireAsTimePasses) {
  CircuitBreakerOptions o;
  o.window = BreakerWindow::kTimeBased;
  o.window_duration = std::chrono::seconds(10);
  o.window_buckets = 5;  // 2 s each
  o.minimum_calls = 100;
  auto b = make(o);
  align_to(std::chrono::seconds(2));
  TimePoint t0 = env_.now();
  ASSERT_TRUE(fail(*b));
  ASSERT_TRUE(fail(*b));  // bucket [0, 2)
  env_.set_now(t0 + std::chrono::seconds(4));
  ASSERT_TRUE(succeed(*b));
  ASSERT_TRUE(succeed(*b));  // bucket [4, 6)
  ASSERT_TRUE(succeed(*b));
  env_.set_now(t0 + std::chrono::milliseconds(9999));
  EXPECT_EQ(b->figures().calls, 5u);
  EXPECT_EQ(b->figures().failures, 2u);
  // At 10 s the first bucket's slot is reused: its calls leave the window.
  env_.set_now(t0 + std::chrono::seconds(10));
  EXPECT_EQ(b->figures().calls, 3u);
  EXPECT_EQ(b->figures().failures, 0u);
  env_.set_now(t0 + std::chrono::seconds(14));
  EXPECT_EQ(b->figures().calls, 0u);
  // A gap much longer than the window empties everything at once.
  ASSERT_TRUE(fail(*b));
  env_.set_now(t0 + std::chrono::hours(5));
  EXPECT_EQ(b->figures().calls, 0u);
}

TEST_F(CircuitBreakerTest, TimeWindowWrapsAroundItsBucketsManyTimes) {
  CircuitBreakerOptions o;
  o.window = BreakerWindow::kTimeBased;
  o.window_duration = std::chrono::seconds(10);
  o.window_buckets = 10;
  o.minimum_calls = 5;
  o.failure_rate_threshold = 0.5;
  auto b = make(o);
  align_to(std::chrono::seconds(1));
  // One call a second for 200 s, one failure in three: ten calls in the window at any time.
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(i % 3 == 0 ? fail(*b) : succeed(*b));
    BreakerFigures f = b->figures();
    std::uint64_t expected_failures = 0;
    for (int k = std::max(0, i - 9); k <= i; ++k) expected_failures += k % 3 == 0;
    ASSERT_EQ(f.calls, static_cast<std::uint64_t>(std::min(i + 1, 10))) << i;
    ASSERT_EQ(f.failures, expected_failures) << i;
    advance(std::chrono::seconds(1));
  }
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  // Then a burst of failures within one bucket trips it on the rate over the whole window.
  Recorder rec;
  rec.attach(*b);
  int burst = 0;
  while (b->state() == BreakerState::kClosed && burst < 100) {
    ASSERT_TRUE(fail(*b));
    ++burst;
  }
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  ASSERT_EQ(rec.events.size(), 1u);
  EXPECT_EQ(rec.events[0].reason, BreakerReason::kFailureRate);
  EXPECT_GE(rec.events[0].figures.failure_rate, 0.5);
  EXPECT_EQ(rec.events[0].figures.calls, 9u + static_cast<std::uint64_t>(burst));
}

// ---------------------------------------------------------------------------------------
// [B7] Slow calls trip it even when every call succeeds.

TEST_F(CircuitBreakerTest, SlowCallsTripEvenWhenAllSucceed) {
  CircuitBreakerOptions o = rate_options(10, 10, 0.5);
  o.slow_call_duration = std::chrono::seconds(2);
  o.slow_call_rate_threshold = 0.6;
  auto b = make(o);
  Recorder rec;
  rec.attach(*b);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(succeed(*b, std::chrono::milliseconds(1999)));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(succeed(*b, std::chrono::seconds(2)));
  EXPECT_EQ(b->state(), BreakerState::kClosed);  // 9 calls: below the minimum
  ASSERT_TRUE(succeed(*b, std::chrono::seconds(3)));
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  ASSERT_EQ(rec.events.size(), 1u);
  EXPECT_EQ(rec.events[0].reason, BreakerReason::kSlowCallRate);
  EXPECT_EQ(rec.events[0].figures.calls, 10u);
  EXPECT_EQ(rec.events[0].figures.failures, 0u);
  EXPECT_EQ(rec.events[0].figures.slow_calls, 6u);
  EXPECT_DOUBLE_EQ(rec.events[0].figures.slow_call_rate, 0.6);
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.successes, 10u);
  EXPECT_EQ(c.slow_calls, 6u);
  EXPECT_EQ(c.failures, 0u);
}

TEST_F(CircuitBreakerTest, SlowFailuresCountAsBothAndIgnoredCallsAreNeverSlow) {
  CircuitBreakerOptions o = rate_options(10, 10, 1.0);
  o.slow_call_duration = std::chrono::seconds(1);
  auto b = make(o);
  ASSERT_TRUE(fail(*b, transient_error(), std::chrono::seconds(5)));
  ASSERT_TRUE(fail(*b, permanent_error(), std::chrono::seconds(5)));
  BreakerFigures f = b->figures();
  EXPECT_EQ(f.calls, 1u);
  EXPECT_EQ(f.failures, 1u);
  EXPECT_EQ(f.slow_calls, 1u);
  EXPECT_EQ(b->counters().slow_calls, 1u);
  EXPECT_EQ(b->counters().ignored, 1u);
}

TEST_F(CircuitBreakerTest, CallTimesTheFunctionOnTheProcessClock) {
  SimRuntime s(3);
  CircuitBreakerOptions o = rate_options(4, 4, 1.0);
  o.slow_call_duration = std::chrono::seconds(2);
  o.slow_call_rate_threshold = 1.0;
  auto b = CircuitBreaker::create("openai/gpt-4o", s.env, o).value();
  std::vector<int> values;
  s.spawn([&](Context& ctx) -> Task<> {
    auto slow = [&]() -> Task<Result<int>> {
      (void)co_await ctx.sleep(std::chrono::seconds(3));
      co_return 42;
    };
    for (int i = 0; i < 4; ++i) {
      Result<int> r = co_await b->call<int>(ctx, slow);
      values.push_back(r.ok() ? *r : -1);
    }
  });
  s.rt->advance(std::chrono::seconds(20));
  EXPECT_EQ(values, (std::vector<int>{42, 42, 42, 42}));
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  EXPECT_EQ(b->counters().slow_calls, 4u);
  EXPECT_EQ(b->counters().successes, 4u);
}

TEST_F(CircuitBreakerTest, SlowTrialsReopen) {
  CircuitBreakerOptions o = streak_options(1);
  o.slow_call_duration = std::chrono::seconds(1);
  o.slow_call_rate_threshold = 0.5;
  o.half_open_trials = 2;
  auto b = make(o);
  Recorder rec;
  rec.attach(*b);
  trip(*b, 1);
  advance(std::chrono::seconds(10));
  ASSERT_TRUE(succeed(*b, std::chrono::seconds(1)));
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  EXPECT_EQ(rec.events.back().reason, BreakerReason::kTrialsSlow);
  EXPECT_EQ(rec.events.back().figures.slow_calls, 1u);
}

// ---------------------------------------------------------------------------------------
// [B8] A consecutive-failures breaker resets its streak on any success.

TEST_F(CircuitBreakerTest, ConsecutiveFailuresResetOnAnySuccess) {
  auto b = make(streak_options(3));
  for (int round = 0; round < 50; ++round) {
    ASSERT_TRUE(fail(*b));
    ASSERT_TRUE(fail(*b));
    EXPECT_EQ(b->figures().consecutive_failures, 2u);
    ASSERT_TRUE(succeed(*b));
    EXPECT_EQ(b->figures().consecutive_failures, 0u);
  }
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  // Ignored errors neither break nor extend the streak.
  ASSERT_TRUE(fail(*b));
  ASSERT_TRUE(fail(*b, permanent_error()));
  ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  Recorder rec;
  rec.attach(*b);
  ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kOpen);
  ASSERT_EQ(rec.events.size(), 1u);
  EXPECT_EQ(rec.events[0].reason, BreakerReason::kConsecutiveFailures);
  EXPECT_EQ(rec.events[0].figures.consecutive_failures, 3u);
}

TEST_F(CircuitBreakerTest, StreakAndRateTogetherWhicheverComesFirst) {
  CircuitBreakerOptions o = rate_options(100, 50, 0.5);
  o.consecutive_failures = 5;
  auto b = make(o);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kOpen);  // 5 calls: far below the minimum of 50
}

// ---------------------------------------------------------------------------------------
// [B9] Ignored errors count as neither and release a half-open trial permit.

TEST_F(CircuitBreakerTest, PermanentErrorsNeverOpenAHealthyProvidersBreaker) {
  CircuitBreakerOptions o = rate_options(10, 1, 0.1);
  o.consecutive_failures = 1;
  auto b = make(o);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(fail(*b, permanent_error()));
  for (ErrorKind k : {ErrorKind::kCancelled, ErrorKind::kInvalidArgument, ErrorKind::kBudgetExceeded,
                      ErrorKind::kCircuitOpen, ErrorKind::kDeadlineExceeded}) {
    ASSERT_TRUE(fail(*b, Error(k, "x")));
  }
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.ignored, 1005u);
  EXPECT_EQ(c.failures, 0u);
  EXPECT_EQ(c.successes, 0u);
  EXPECT_EQ(b->figures().calls, 0u);
  // The default counted kinds each open it.
  for (ErrorKind k : {ErrorKind::kTransient, ErrorKind::kTimeout, ErrorKind::kRateLimited}) {
    b->reset();
    ASSERT_TRUE(fail(*b, Error(k, "x")));
    EXPECT_EQ(b->state(), BreakerState::kOpen) << to_string(k);
  }
}

TEST_F(CircuitBreakerTest, IgnoredTrialReleasesItsSlot) {
  auto b = make(streak_options(1));
  trip(*b, 1);
  advance(std::chrono::seconds(10));
  {
    auto p = b->try_acquire();
    ASSERT_THAT(p, IsOk());
    EXPECT_FALSE(b->try_acquire().ok());
    p->ignore();
  }
  {
    auto p = b->try_acquire();  // the slot is free again
    ASSERT_THAT(p, IsOk());
    EXPECT_TRUE(p->trial());
    p->failure(permanent_error(), kFast);  // ignored kind: releases it too
  }
  {
    auto p = b->try_acquire();
    ASSERT_THAT(p, IsOk());
    // dropped without a report: counts as ignored, releases the slot
  }
  EXPECT_EQ(b->state(), BreakerState::kHalfOpen);
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.ignored, 3u);
  EXPECT_EQ(c.rejected_half_open, 1u);
  ASSERT_TRUE(succeed(*b));
  EXPECT_EQ(b->state(), BreakerState::kClosed);
}

TEST_F(CircuitBreakerTest, UnreportedPermitCountsAsIgnoredAndReportsOnlyOnce) {
  auto b = make(streak_options(2));
  { auto p = b->try_acquire().value(); }
  auto p = b->try_acquire().value();
  EXPECT_FALSE(p.reported());
  p.failure(transient_error(), kFast);
  EXPECT_TRUE(p.reported());
  p.failure(transient_error(), kFast);  // no-op
  p.success(kFast);                     // no-op
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  CircuitBreaker::Permit moved = std::move(b->try_acquire().value());
  CircuitBreaker::Permit target = std::move(b->try_acquire().value());
  target = std::move(moved);  // the replaced permit is reported as ignored
  target.success(kFast);
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.ignored, 2u);
  EXPECT_EQ(c.failures, 1u);
  EXPECT_EQ(c.successes, 1u);
  EXPECT_EQ(c.permitted, 4u);
}

TEST_F(CircuitBreakerTest, CallThatThrowsCountsAsIgnored) {
  SimRuntime s(5);
  auto b = CircuitBreaker::create("p", s.env, streak_options(1)).value();
  bool caught = false;
  s.spawn([&](Context& ctx) -> Task<> {
    auto throws = [&]() -> Task<Result<int>> {
      co_await ctx.yield();
      throw std::runtime_error("bug in the tool adapter");
    };
    try {
      (void)co_await b->call<int>(ctx, throws);
    } catch (const std::runtime_error&) {
      caught = true;
    }
  });
  s.rt->run_until_idle();
  EXPECT_TRUE(caught);
  EXPECT_EQ(b->counters().ignored, 1u);
  EXPECT_EQ(b->state(), BreakerState::kClosed);
}

TEST_F(CircuitBreakerTest, CountedKindsAndClassifierAreConfigurable) {
  CircuitBreakerOptions o = streak_options(1);
  o.failure_kinds = {ErrorKind::kPermanent};
  auto b = make(o);
  ASSERT_TRUE(fail(*b, transient_error()));
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  ASSERT_TRUE(fail(*b, permanent_error()));
  EXPECT_EQ(b->state(), BreakerState::kOpen);

  // A classifier reads a 429 "insufficient_quota" as permanent: not the provider's health.
  CircuitBreakerOptions q = streak_options(1);
  q.classifier = [](const Error& e) {
    if (e.kind() == ErrorKind::kRateLimited && e.message().find("insufficient_quota") != std::string::npos) {
      return ErrorKind::kPermanent;
    }
    return e.kind();
  };
  auto c = make(q, "openai/o3");
  ASSERT_TRUE(fail(*c, Error(ErrorKind::kRateLimited, "429 insufficient_quota")));
  EXPECT_EQ(c->state(), BreakerState::kClosed);
  ASSERT_TRUE(fail(*c, Error(ErrorKind::kRateLimited, "429 slow down")));
  EXPECT_EQ(c->state(), BreakerState::kOpen);
}

// ---------------------------------------------------------------------------------------
// [B10] Disabled, isolated, manual close and reset.

TEST_F(CircuitBreakerTest, DisabledPassesEverythingAndRecordsNothing) {
  auto b = make(streak_options(1));
  b->disable();
  BreakerCounters before = b->counters();
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(fail(*b));
  auto p = b->try_acquire();
  ASSERT_THAT(p, IsOk());
  EXPECT_TRUE(p->reported());  // inert
  p->failure(transient_error(), kFast);
  EXPECT_EQ(b->state(), BreakerState::kDisabled);
  BreakerCounters after = b->counters();
  EXPECT_EQ(after.permitted, before.permitted);
  EXPECT_EQ(after.failures, before.failures);
  EXPECT_EQ(after.ignored, before.ignored);
  EXPECT_EQ(after.transitions, before.transitions);
  b->reset();
  EXPECT_EQ(b->figures().calls, 0u);
  ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kOpen);
}

TEST_F(CircuitBreakerTest, IsolatedNeverTransitionsByItself) {
  auto b = make(streak_options(1));
  trip(*b, 1);
  b->isolate();
  for (int i = 0; i < 10; ++i) {
    advance(std::chrono::hours(1));
    EXPECT_FALSE(b->try_acquire().ok());
    EXPECT_EQ(b->state(), BreakerState::kForcedOpen);
  }
  EXPECT_FALSE(b->open_until().has_value());
  b->close();
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  EXPECT_TRUE(succeed(*b));
}

TEST_F(CircuitBreakerTest, ResetAndCloseClearTheWindow) {
  auto b = make(rate_options(20, 10, 0.5));
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(fail(*b));
  b->reset();
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  EXPECT_EQ(b->figures().calls, 0u);
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kClosed);  // only 9 in the window
  ASSERT_TRUE(fail(*b));
  ASSERT_EQ(b->state(), BreakerState::kOpen);
  b->close();
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  EXPECT_EQ(b->figures().calls, 0u);
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(fail(*b));
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  // Counters are cumulative: reset does not clear them.
  EXPECT_EQ(b->counters().failures, 28u);
}

TEST_F(CircuitBreakerTest, PermitsFromBeforeAResetDoNotJudgeTheNewWindow) {
  auto b = make(rate_options(10, 2, 0.5));
  auto old1 = b->try_acquire().value();
  auto old2 = b->try_acquire().value();
  b->reset();
  old1.failure(transient_error(), kFast);
  old2.failure(transient_error(), kFast);
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  EXPECT_EQ(b->figures().calls, 0u);
  EXPECT_EQ(b->counters().failures, 2u);
}

// ---------------------------------------------------------------------------------------
// [B11] Every transition is an event with from, to, reason and the window's figures.

TEST_F(CircuitBreakerTest, EveryTransitionEmitsAnEventWithFigures) {
  CircuitBreakerOptions o = rate_options(10, 4, 0.5);
  o.half_open_trials = 2;
  auto b = make(o);
  Recorder rec;
  auto id = b->subscribe([&](const BreakerTransition& ev) { rec.events.push_back(ev); });
  TimePoint t0 = env_.now();
  ASSERT_TRUE(succeed(*b));
  ASSERT_TRUE(fail(*b));
  ASSERT_TRUE(fail(*b));
  ASSERT_TRUE(fail(*b));  // 3 of 4: 0.75
  advance(std::chrono::seconds(10));
  ASSERT_TRUE(fail(*b));  // trial 1 of 2 fails: 0.5 reaches 0.5, reopens
  advance(std::chrono::seconds(10));
  ASSERT_TRUE(succeed(*b));
  ASSERT_TRUE(succeed(*b));  // closes
  b->isolate();
  b->disable();
  b->reset();
  b->close();  // already closed: no event
  b->unsubscribe(id);
  b->isolate();

  struct Expect {
    BreakerState from, to;
    BreakerReason reason;
    std::uint64_t calls, failures;
    Duration at;
  };
  using std::chrono::seconds;
  std::vector<Expect> want = {
      {BreakerState::kClosed, BreakerState::kOpen, BreakerReason::kFailureRate, 4, 3, seconds(0)},
      {BreakerState::kOpen, BreakerState::kHalfOpen, BreakerReason::kOpenDurationElapsed, 4, 3, seconds(10)},
      {BreakerState::kHalfOpen, BreakerState::kOpen, BreakerReason::kTrialsFailed, 1, 1, seconds(10)},
      {BreakerState::kOpen, BreakerState::kHalfOpen, BreakerReason::kOpenDurationElapsed, 1, 1, seconds(20)},
      {BreakerState::kHalfOpen, BreakerState::kClosed, BreakerReason::kTrialsSucceeded, 2, 0, seconds(20)},
      {BreakerState::kClosed, BreakerState::kForcedOpen, BreakerReason::kIsolated, 0, 0, seconds(20)},
      {BreakerState::kForcedOpen, BreakerState::kDisabled, BreakerReason::kDisabled, 0, 0, seconds(20)},
      {BreakerState::kDisabled, BreakerState::kClosed, BreakerReason::kReset, 0, 0, seconds(20)},
  };
  ASSERT_EQ(rec.events.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    const BreakerTransition& ev = rec.events[i];
    SCOPED_TRACE("event " + std::to_string(i) + ": " + std::string(to_string(ev.from)) + " -> " +
                 std::string(to_string(ev.to)) + " (" + std::string(to_string(ev.reason)) + ")");
    EXPECT_EQ(ev.breaker, "openai/gpt-4o");
    EXPECT_EQ(ev.from, want[i].from);
    EXPECT_EQ(ev.to, want[i].to);
    EXPECT_EQ(ev.reason, want[i].reason);
    EXPECT_EQ(ev.figures.calls, want[i].calls);
    EXPECT_EQ(ev.figures.failures, want[i].failures);
    EXPECT_EQ(ev.at, t0 + want[i].at);
    EXPECT_EQ(ev.unix_time_ns, env_.unix_time_ns() - (env_.now() - ev.at).count());
    EXPECT_EQ(ev.open_for, ev.to == BreakerState::kOpen ? seconds(10) : Duration::zero());
  }
  EXPECT_DOUBLE_EQ(rec.events[0].figures.failure_rate, 0.75);
  EXPECT_DOUBLE_EQ(rec.events[0].figures.slow_call_rate, 0.0);
  EXPECT_DOUBLE_EQ(rec.events[2].figures.failure_rate, 1.0);
  EXPECT_EQ(b->counters().transitions, want.size() + 1);
  EXPECT_EQ(b->counters().opened, 2u);
  EXPECT_EQ(to_string(BreakerState::kHalfOpen), "half_open");
  EXPECT_EQ(to_string(BreakerReason::kTrialsSucceeded), "trials_succeeded");
}

TEST_F(CircuitBreakerTest, SubscribersMayCallBackIntoTheBreaker) {
  auto b = make(streak_options(1));
  std::vector<std::string> seen;
  b->subscribe([&](const BreakerTransition& ev) {
    // Called without the breaker's lock: reading (or even acting on) it does not deadlock.
    seen.push_back(std::string(to_string(ev.to)) + "/" + std::string(to_string(b->state())));
    if (ev.to == BreakerState::kOpen && b->counters().opened == 1) b->isolate();
  });
  ASSERT_TRUE(fail(*b));
  EXPECT_EQ(seen, (std::vector<std::string>{"open/open", "forced_open/forced_open"}));
  EXPECT_EQ(b->state(), BreakerState::kForcedOpen);
}

// ---------------------------------------------------------------------------------------
// Options: every bad field is refused with a message naming it.

TEST_F(CircuitBreakerTest, CreateRefusesBadOptionsNamingTheField) {
  struct Case {
    std::string field;
    std::function<void(CircuitBreakerOptions&)> mutate;
  };
  std::vector<Case> cases = {
      {"window_size", [](auto& o) { o.window_size = 0; }},
      {"minimum_calls", [](auto& o) { o.minimum_calls = 0; }},
      {"minimum_calls", [](auto& o) { o.minimum_calls = 101; }},
      {"window_duration",
       [](auto& o) {
         o.window = BreakerWindow::kTimeBased;
         o.window_duration = Duration::zero();
       }},
      {"window_buckets",
       [](auto& o) {
         o.window = BreakerWindow::kTimeBased;
         o.window_buckets = 0;
       }},
      {"window_buckets",
       [](auto& o) {
         o.window = BreakerWindow::kTimeBased;
         o.window_duration = Duration(5);
         o.window_buckets = 10;
       }},
      {"failure_rate_threshold", [](auto& o) { o.failure_rate_threshold = 0.0; }},
      {"failure_rate_threshold", [](auto& o) { o.failure_rate_threshold = 1.5; }},
      {"slow_call_rate_threshold", [](auto& o) { o.slow_call_rate_threshold = -0.1; }},
      {"slow_call_duration", [](auto& o) { o.slow_call_duration = Duration::zero(); }},
      {"no trip condition", [](auto& o) { o.failure_rate_threshold.reset(); }},
      {"open_duration", [](auto& o) { o.open_duration = Duration::zero(); }},
      {"open_duration_multiplier", [](auto& o) { o.open_duration_multiplier = 0.5; }},
      {"max_open_duration", [](auto& o) { o.max_open_duration = std::chrono::seconds(1); }},
      {"open_duration_jitter", [](auto& o) { o.open_duration_jitter = 1.5; }},
      {"half_open_trials", [](auto& o) { o.half_open_trials = 0; }},
      {"classifier", [](auto& o) { o.classifier = nullptr; }},
  };
  for (const Case& c : cases) {
    CircuitBreakerOptions o;
    c.mutate(o);
    auto r = CircuitBreaker::create("p", env_, o);
    ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument)) << c.field;
    EXPECT_THAT(r.error().message(), HasSubstr(c.field));
    EXPECT_THAT(r.error().message(), HasSubstr("'p'"));
  }
  auto unnamed = CircuitBreaker::create("", env_, CircuitBreakerOptions{});
  ASSERT_FALSE(unnamed.ok());
  EXPECT_THAT(unnamed.error().message(), HasSubstr("name"));
  EXPECT_THAT(CircuitBreaker::create("p", env_, CircuitBreakerOptions{}), IsOk());
}

TEST_F(CircuitBreakerTest, DefaultsAreDocumented) {
  CircuitBreakerOptions o;
  EXPECT_EQ(o.window, BreakerWindow::kCountBased);
  EXPECT_EQ(o.window_size, 100u);
  EXPECT_EQ(o.minimum_calls, 20u);
  EXPECT_EQ(o.failure_rate_threshold, 0.5);
  EXPECT_FALSE(o.slow_call_rate_threshold.has_value());
  EXPECT_EQ(o.consecutive_failures, 0u);
  EXPECT_EQ(o.open_duration, std::chrono::seconds(30));
  EXPECT_EQ(o.half_open_trials, 1u);
  EXPECT_EQ(o.failure_kinds,
            (std::set<ErrorKind>{ErrorKind::kTransient, ErrorKind::kTimeout, ErrorKind::kRateLimited}));
}

// ---------------------------------------------------------------------------------------
// Registry: one breaker per key.

TEST(CircuitBreakerRegistry, OneBreakerPerKeyCreatedOnFirstUse) {
  SimEnvironment env(1);
  auto reg = CircuitBreakerRegistry::create(env, streak_options(2)).value();
  EXPECT_EQ(reg->find("openai/gpt-4o"), nullptr);
  auto a = reg->get("openai/gpt-4o");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->name(), "openai/gpt-4o");
  EXPECT_EQ(reg->get("openai/gpt-4o"), a);
  EXPECT_EQ(reg->find("openai/gpt-4o"), a);
  auto t = reg->get("tool:search");
  EXPECT_NE(t, a);
  EXPECT_EQ(reg->size(), 2u);
  // Independent: tripping one leaves the other closed.
  ASSERT_TRUE(fail(*a));
  ASSERT_TRUE(fail(*a));
  EXPECT_EQ(a->state(), BreakerState::kOpen);
  EXPECT_EQ(t->state(), BreakerState::kClosed);
  auto all = reg->breakers();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0]->name(), "openai/gpt-4o");
  EXPECT_EQ(all[1]->name(), "tool:search");
  EXPECT_THROW((void)reg->get(""), CheckFailure);
}

TEST(CircuitBreakerRegistry, PerKeyOptionsApplyAtCreation) {
  SimEnvironment env(1);
  auto reg = CircuitBreakerRegistry::create(env, streak_options(5)).value();
  ASSERT_THAT(reg->configure("anthropic/claude", streak_options(1)), IsOk());
  auto bad = reg->configure("x", rate_options(10, 20, 0.5));
  ASSERT_THAT(bad, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("minimum_calls")));
  EXPECT_THAT(bad.error().message(), HasSubstr("'x'"));
  auto c = reg->get("anthropic/claude");
  EXPECT_EQ(c->options().consecutive_failures, 1u);
  EXPECT_EQ(reg->get("openai/gpt-4o")->options().consecutive_failures, 5u);
  auto late = reg->configure("anthropic/claude", streak_options(3));
  ASSERT_THAT(late, StatusIs(ErrorKind::kAlreadyExists));
  CircuitBreakerOptions invalid_defaults;
  invalid_defaults.half_open_trials = 0;
  auto r = CircuitBreakerRegistry::create(env, invalid_defaults);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), HasSubstr("half_open_trials"));
}

TEST(CircuitBreakerRegistry, SubscribersSeeTransitionsOfEveryBreaker) {
  SimEnvironment env(1);
  auto reg = CircuitBreakerRegistry::create(env, streak_options(1)).value();
  auto early = reg->get("a");
  std::vector<std::string> seen;
  auto id = reg->subscribe(
      [&](const BreakerTransition& ev) { seen.push_back(ev.breaker + ":" + std::string(to_string(ev.to))); });
  auto later = reg->get("b");
  ASSERT_TRUE(fail(*early));
  ASSERT_TRUE(fail(*later));
  reg->unsubscribe(id);
  later->reset();
  EXPECT_EQ(seen, (std::vector<std::string>{"a:open", "b:open"}));
  // A breaker may outlive its registry.
  reg.reset();
  early->reset();
  EXPECT_EQ(early->state(), BreakerState::kClosed);
}

// ---------------------------------------------------------------------------------------
// [B12] Concurrency on the real scheduler: 10,000 processes through one breaker at once.

struct TrialTally {
  std::mutex mu;
  std::map<std::uint64_t, int> admitted;  // per half-open period (permit epoch)
  std::map<std::uint64_t, int> ignored;
  // Trials of a period still in flight. A period's trials are bounded, not all trials at
  // once: a reopening ends the period, and the next one admits its own trials while the old
  // period's last ones may still be out (their outcome is then stale: counted, not judged).
  std::map<std::uint64_t, int> in_flight;
};

TEST(CircuitBreakerConcurrency, TenThousandProcessesNeverExceedTheTrialsAndCountExactly) {
  constexpr int kProcesses = 10'000;
  constexpr int kAttempts = 50;
  constexpr std::uint32_t kTrials = 3;
  auto env = make_real_environment({.workers = 2, .seed = 99});
  auto rt = Runtime::create(*env).value();

  CircuitBreakerOptions o;
  o.window_size = 20;
  o.minimum_calls = 10;
  o.failure_rate_threshold = 0.35;
  o.half_open_trials = kTrials;
  o.open_duration = std::chrono::microseconds(200);
  o.open_duration_multiplier = 2.0;
  o.max_open_duration = std::chrono::milliseconds(2);
  o.open_duration_jitter = 0.5;
  auto reg = CircuitBreakerRegistry::create(*env, o).value();

  std::mutex events_mu;
  std::vector<BreakerTransition> events;
  reg->subscribe([&](const BreakerTransition& ev) {
    std::lock_guard lock(events_mu);
    events.push_back(ev);
  });

  std::atomic<std::uint64_t> successes{0}, failures{0}, ignored{0}, rejections{0};
  std::atomic<int> max_trials_in_flight{0};  // of one half-open period
  TrialTally tally;

  std::vector<std::shared_ptr<ExitWatch>> watches;
  watches.reserve(kProcesses);
  for (int i = 0; i < kProcesses; ++i) {
    Behavior body = [&, i](Context& ctx) -> Task<> {
      std::shared_ptr<CircuitBreaker> b = reg->get("openai/gpt-4o");
      for (int attempt = 0; attempt < kAttempts; ++attempt) {
        Result<CircuitBreaker::Permit> permit = b->try_acquire();
        if (!permit.ok()) {
          rejections.fetch_add(1);
          (void)co_await ctx.sleep(std::chrono::microseconds(100));
          continue;
        }
        bool trial = permit->trial();
        if (trial) {
          std::lock_guard lock(tally.mu);
          int now_in = ++tally.in_flight[permit->epoch()];
          max_trials_in_flight.store(std::max(max_trials_in_flight.load(), now_in));
          ++tally.admitted[permit->epoch()];
        }
        co_await ctx.yield();  // the call is in flight while others run
        if (trial) {
          std::lock_guard lock(tally.mu);
          --tally.in_flight[permit->epoch()];
        }
        unsigned pick = (static_cast<unsigned>(i) * 2654435761u + static_cast<unsigned>(attempt)) % 10;
        if (pick < 4) {
          failures.fetch_add(1);
          permit->failure(transient_error(), std::chrono::milliseconds(1));
        } else if (pick == 4) {
          ignored.fetch_add(1);
          if (trial) {
            std::lock_guard lock(tally.mu);
            ++tally.ignored[permit->epoch()];
          }
          permit->failure(permanent_error(), std::chrono::milliseconds(1));
        } else {
          successes.fetch_add(1);
          permit->success(std::chrono::milliseconds(1));
        }
        co_return;
      }
    };
    watches.push_back(rt->spawn_watched(std::move(body)).value().exit);
  }
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());

  auto b = reg->find("openai/gpt-4o");
  ASSERT_NE(b, nullptr);
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.successes, successes.load());
  EXPECT_EQ(c.failures, failures.load());
  EXPECT_EQ(c.ignored, ignored.load());
  EXPECT_EQ(c.rejections, rejections.load());
  EXPECT_EQ(c.rejections, c.rejected_open + c.rejected_half_open + c.rejected_forced_open);
  EXPECT_EQ(c.permitted, c.successes + c.failures + c.ignored);
  EXPECT_LE(c.permitted, static_cast<std::uint64_t>(kProcesses));
  EXPECT_EQ(c.permitted + c.rejections, successes + failures + ignored + rejections);

  // Never more trials than permitted: at once within a half-open period, and per period (an
  // ignored trial frees its slot, so those are added back).
  EXPECT_LE(max_trials_in_flight.load(), static_cast<int>(kTrials));
  EXPECT_GT(c.opened, 0u);
  EXPECT_FALSE(tally.admitted.empty()) << "no half-open period was reached";
  for (const auto& [epoch, n] : tally.admitted) {
    EXPECT_LE(n - tally.ignored[epoch], static_cast<int>(kTrials)) << "epoch " << epoch;
  }

  // How much happened (visible with --gtest_output=json).
  ::testing::Test::RecordProperty("half_open_periods", static_cast<int>(tally.admitted.size()));
  ::testing::Test::RecordProperty("opened", static_cast<int>(c.opened));
  ::testing::Test::RecordProperty("permitted", static_cast<int>(c.permitted));
  ::testing::Test::RecordProperty("rejections", static_cast<int>(c.rejections));

  // The events form one chain, in order, and match the counters.
  std::lock_guard lock(events_mu);
  EXPECT_EQ(events.size(), c.transitions);
  BreakerState state = BreakerState::kClosed;
  for (const auto& ev : events) {
    EXPECT_EQ(ev.from, state);
    state = ev.to;
  }
  EXPECT_EQ(state, c.state);
}

TEST(CircuitBreakerConcurrency, TenThousandCallsThroughCallCountExactly) {
  constexpr int kProcesses = 10'000;
  auto env = make_real_environment({.workers = 2, .seed = 5});
  auto rt = Runtime::create(*env).value();
  CircuitBreakerOptions o;
  o.failure_rate_threshold.reset();
  o.consecutive_failures = 3;
  o.half_open_trials = 2;
  o.open_duration = std::chrono::microseconds(100);
  auto b = CircuitBreaker::create("tool:search", *env, o).value();

  std::atomic<std::uint64_t> ran_ok{0}, ran_failed{0}, refused{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  watches.reserve(kProcesses);
  for (int i = 0; i < kProcesses; ++i) {
    Behavior body = [&, i](Context& ctx) -> Task<> {
      bool fails = i % 5 < 2;
      auto fn = [&ctx, fails]() -> Task<Result<int>> {
        co_await ctx.yield();
        if (fails) co_return Error(ErrorKind::kTimeout, "no answer in time");
        co_return 1;
      };
      Result<int> r = co_await b->call<int>(ctx, fn);
      if (r.ok()) {
        ran_ok.fetch_add(1);
      } else if (r.error().kind() == ErrorKind::kTimeout) {
        ran_failed.fetch_add(1);
      } else {
        EXPECT_THAT(r, StatusIs(ErrorKind::kCircuitOpen));
        refused.fetch_add(1);
      }
    };
    watches.push_back(rt->spawn_watched(std::move(body)).value().exit);
  }
  for (auto& w : watches) EXPECT_TRUE(w->wait().is_normal());
  BreakerCounters c = b->counters();
  EXPECT_EQ(c.successes, ran_ok.load());
  EXPECT_EQ(c.failures, ran_failed.load());
  EXPECT_EQ(c.rejections, refused.load());
  EXPECT_EQ(c.ignored, 0u);
  EXPECT_EQ(c.successes + c.failures + c.rejections, static_cast<std::uint64_t>(kProcesses));
}

// ---------------------------------------------------------------------------------------
// Default reports (docs/logging.md): each transition logged once, with its figures.

TEST_F(CircuitBreakerTest, EachTransitionIsLoggedOnceWithItsFigures) {
  CaptureSink& logs = env_.captured_logs();
  auto b = make(streak_options(3));
  trip(*b, 3);
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(succeed(*b));  // rejections are not transitions
  auto opened = logs.records("breaker_opened");
  ASSERT_EQ(opened.size(), 1u) << logs.dump();
  EXPECT_EQ(opened[0].level, LogLevel::kWarning);
  EXPECT_EQ(opened[0].field("breaker"), "openai/gpt-4o");
  EXPECT_EQ(opened[0].field("from"), "closed");
  EXPECT_EQ(opened[0].field("reason"), "consecutive_failures");
  EXPECT_EQ(opened[0].field("consecutive_failures"), "3");
  EXPECT_EQ(opened[0].field("open_for_s"), "10");

  advance(std::chrono::seconds(10));
  ASSERT_TRUE(succeed(*b));  // half-open, then the trial closes it
  EXPECT_EQ(b->state(), BreakerState::kClosed);
  auto half = logs.records("breaker_half_open");
  ASSERT_EQ(half.size(), 1u) << logs.dump();
  EXPECT_EQ(half[0].level, LogLevel::kInfo);
  EXPECT_EQ(half[0].field("from"), "open");
  EXPECT_EQ(half[0].field("open_for_s"), std::nullopt);
  auto closed = logs.records("breaker_closed");
  ASSERT_EQ(closed.size(), 1u) << logs.dump();
  EXPECT_EQ(closed[0].level, LogLevel::kNotice);
  EXPECT_EQ(closed[0].field("from"), "half_open");
  EXPECT_EQ(closed[0].field("reason"), "trials_succeeded");
  EXPECT_EQ(closed[0].field("calls"), "1");
  EXPECT_EQ(logs.size(), 3u) << logs.dump();

  b->reset();  // closed -> closed: no state change, no line
  b->isolate();
  b->isolate();  // already there: no transition
  auto forced = logs.records("breaker_forced_open");
  ASSERT_EQ(forced.size(), 1u) << logs.dump();
  EXPECT_EQ(forced[0].level, LogLevel::kWarning);
  EXPECT_EQ(forced[0].field("reason"), "isolated");
  b->close();
  EXPECT_EQ(logs.count("breaker_closed"), 2u);
  EXPECT_EQ(logs.records("breaker_closed").back().field("reason"), "closed_manually");
  EXPECT_EQ(logs.size(), 5u) << logs.dump();
}

TEST_F(CircuitBreakerTest, ABreakerWithoutSubscribersLogsOnlyEnabledLevels) {
  CaptureSink& logs = env_.captured_logs();
  env_.logger().set_level(LogLevel::kNotice);  // as the real environment's default
  auto b = make(streak_options(1));
  trip(*b, 1);
  advance(std::chrono::seconds(10));
  ASSERT_TRUE(succeed(*b));
  EXPECT_EQ(logs.count("breaker_opened"), 1u);
  EXPECT_EQ(logs.count("breaker_half_open"), 0u);  // info
  EXPECT_EQ(logs.count("breaker_closed"), 1u);
  EXPECT_EQ(b->counters().transitions, 3u);
}

}  // namespace
}  // namespace nines
