// Rate limiter: exact refill over virtual time, weighted units, reject mode's retry_at,
// FIFO waiting, max_wait, deadline, max_waiters and abandoned waits on the virtual clock;
// thousands of concurrent acquires on the real 2-worker scheduler (run under TSan by the
// test command).
#include "nines/resilience/rate_limiter.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "nines/runtime/runtime.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using test::Log;
using test::SimRuntime;
using ::testing::HasSubstr;

// A deterministic runtime that remembers when the test started.
struct Sim : SimRuntime {
  explicit Sim(std::uint64_t seed = 1) : SimRuntime(seed) {}
  TimePoint t0 = env.now();
};

std::int64_t ms(const Sim& s) { return to_millis(s.env.now() - s.t0); }

std::shared_ptr<RateLimiter> make(Environment& env, RateLimiterOptions o) {
  auto r = RateLimiter::create("test", env, o);
  EXPECT_THAT(r, IsOk());
  return std::move(r).value();
}

std::string describe(const Status& s) { return s.ok() ? std::string("ok") : std::string(to_string(s.error().kind())); }

TEST(RateLimiter, CreateValidatesOptionsNamingTheField) {
  SimEnvironment env(1);
  // field is a string_view (the literals below), not a std::string: with a std::string, whose
  // construction may throw, g++ 12 at -O3 warned that the options' std::function observer "may
  // be used uninitialized" in the destructor of the Case temporaries, a false positive (the
  // observer is default-constructed, empty), apparently on the exception-cleanup path.
  struct Case {
    RateLimiterOptions options;
    std::string_view field;
  };
  std::vector<Case> cases;
  cases.push_back({{.capacity = 0}, "capacity"});
  cases.push_back({{.capacity = (std::uint64_t{1} << 40) + 1}, "capacity"});
  cases.push_back({{.refill_units = 0}, "refill_units"});
  cases.push_back({{.refill_period = Duration::zero()}, "refill_period"});
  cases.push_back({{.refill_period = -1s}, "refill_period"});
  cases.push_back({{.refill_period = kInfinite}, "refill_period"});
  cases.push_back({{.capacity = 5, .initial_units = 6}, "initial_units"});
  cases.push_back({{.max_wait = -1ms}, "max_wait"});
  cases.push_back({{.max_waiters = 0}, "max_waiters"});
  cases.push_back({{.max_waiters = (std::size_t{1} << 20) + 1}, "max_waiters"});
  for (const auto& c : cases) {
    auto r = RateLimiter::create("rl", env, c.options);
    ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument)) << c.field;
    EXPECT_THAT(r.error().message(), HasSubstr(c.field));
    EXPECT_THAT(r.error().message(), HasSubstr("'rl'"));
  }
  EXPECT_FALSE(RateLimiter::create("", env, {}).ok());
  // max_waiters does not matter when never waiting.
  EXPECT_THAT(RateLimiter::create("rl", env, {.mode = RateLimitMode::kReject, .max_waiters = 0}), IsOk());
}

TEST(RateLimiter, RefillIsExactOverVirtualTime) {
  SimEnvironment env(1);
  auto rl = make(env, {.capacity = 10, .refill_units = 10, .refill_period = 1s});
  EXPECT_EQ(rl->available(), 10);
  ASSERT_THAT(rl->try_acquire(10), IsOk());
  EXPECT_EQ(rl->available(), 0);
  TimePoint t0 = env.now();
  env.set_now(t0 + 99ms);
  EXPECT_EQ(rl->available(), 0);  // 0.99 of a unit
  env.set_now(t0 + 100ms);
  EXPECT_EQ(rl->available(), 1);
  env.set_now(t0 + 999ms);
  EXPECT_EQ(rl->available(), 9);
  env.set_now(t0 + 1s);
  EXPECT_EQ(rl->available(), 10);
  env.set_now(t0 + 1h);
  EXPECT_EQ(rl->available(), 10);  // never beyond capacity
  // Reading does not disturb: refill continues from where it was.
  ASSERT_THAT(rl->try_acquire(3), IsOk());
  env.set_now(t0 + 1h + 250ms);
  EXPECT_EQ(rl->available(), 9);  // 7 + 2.5
  env.set_now(t0 + 1h + 300ms);
  EXPECT_EQ(rl->available(), 10);
}

TEST(RateLimiter, TryTakeUsesTheGivenTimeAndCountsOnlySuccess) {
  Sim s;
  auto rl = make(s.env, {.capacity = 2, .refill_units = 1, .refill_period = 1s});
  const TimePoint t = s.env.now();
  EXPECT_TRUE(rl->try_take(2, t));
  EXPECT_FALSE(rl->try_take(1, t));  // empty
  EXPECT_FALSE(rl->try_take(3, t));  // more than the capacity: never
  s.rt->advance(1s);
  EXPECT_FALSE(rl->try_take(1, t));  // an old reading refills nothing
  EXPECT_TRUE(rl->try_take(1, s.env.now()));
  auto c = rl->counters();
  EXPECT_EQ(c.acquired, 2u);
  EXPECT_EQ(c.acquired_units, 3u);
  EXPECT_EQ(c.rejected_no_tokens + c.rejected_too_large + c.rejected_max_wait, 0u);
}

TEST(RateLimiter, RefillRatesThatDoNotDivideTimeRoundWaitsUpToTheNanosecond) {
  SimEnvironment env(1);
  auto rl = make(env, {.capacity = 7, .refill_units = 7, .refill_period = 1s, .initial_units = 0});
  TimePoint t0 = env.now();
  // One unit takes 1e9 / 7 = 142857142.86 ns: available at 142857143 ns, not a nanosecond earlier.
  EXPECT_EQ(rl->available_at(1), t0 + 142857143ns);
  env.set_now(t0 + 142857142ns);
  auto early = rl->try_acquire(1);
  ASSERT_THAT(early, StatusIs(ErrorKind::kRateLimited));
  EXPECT_EQ(early.error().retry_at(), t0 + 142857143ns);
  env.set_now(t0 + 142857143ns);
  EXPECT_THAT(rl->try_acquire(1), IsOk());
  // Seven units per second exactly, over a long stretch: no drift.
  int taken = 1;
  for (int step = 1; step <= 7000; ++step) {
    env.set_now(t0 + step * 1ms);
    while (rl->try_acquire(1).ok()) ++taken;
  }
  EXPECT_EQ(taken, 49);  // 7 s x 7 per second
}

TEST(RateLimiter, RejectModeFailsAtOnceWithAnExactRetryAt) {
  Sim s;
  auto rl = make(s.env, {.capacity = 5, .refill_units = 5, .refill_period = 1s, .mode = RateLimitMode::kReject});
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    log.add(describe(co_await rl->acquire(ctx, 5)));
    TimePoint before = ctx.now();
    Status r = co_await rl->acquire(ctx, 2);
    EXPECT_EQ(ctx.now(), before);
    log.add(r.ok() ? "?" : r.error().to_string());
    if (r.ok() || !r.error().retry_at()) co_return;
    TimePoint retry_at = *r.error().retry_at();
    log.add("retry_at +" + std::to_string(to_millis(retry_at - before)) + " ms");
    co_await ctx.sleep(retry_at - ctx.now() - 1ns);
    log.add("1 ns early: " + describe(co_await rl->acquire(ctx, 2)));
    co_await ctx.sleep(1ns);
    log.add("at retry_at: " + describe(co_await rl->acquire(ctx, 2)));
  });
  s.rt->advance(10s);
  EXPECT_EQ(log.get(), (std::vector<std::string>{"ok",
                                                 "rate_limited: rate limiter 'test': 2 units not available; "
                                                 "available in 400 ms",
                                                 "retry_at +400 ms", "1 ns early: rate_limited", "at retry_at: ok"}));
  auto c = rl->counters();
  EXPECT_EQ(c.acquired, 2u);
  EXPECT_EQ(c.acquired_units, 7u);
  EXPECT_EQ(c.rejected_no_tokens, 2u);
  EXPECT_EQ(c.waited, 0u);
}

TEST(RateLimiter, TooLargeARequestIsInvalidArgument) {
  Sim s;
  auto rl = make(s.env, {.capacity = 100, .refill_units = 100, .refill_period = 1min});
  auto r = rl->try_acquire(101);
  ASSERT_THAT(r, StatusIs(ErrorKind::kInvalidArgument));
  EXPECT_EQ(r.error().message(),
            "rate limiter 'test': 101 units requested, more than the capacity 100 (it could never succeed)");
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    log.add(describe(co_await rl->acquire(ctx, 101)));
    log.add(describe(co_await rl->acquire(ctx, ~std::uint64_t{0})));  // no overflow either
    log.add(describe(co_await rl->acquire(ctx, 100)));
    log.add(describe(co_await rl->acquire(ctx, 0)));  // nothing to take: at once
  });
  s.rt->run_until_idle();
  EXPECT_EQ(log.get(), (std::vector<std::string>{"invalid_argument", "invalid_argument", "ok", "ok"}));
  EXPECT_EQ(rl->counters().rejected_too_large, 3u);
  EXPECT_EQ(rl->available(), 0);
}

// Tokens per minute: requests weigh what they cost.
TEST(RateLimiter, WeightedUnitsWaitExactlyForTheirWeight) {
  Sim s;
  auto rl = make(s.env, {.capacity = 90'000, .refill_units = 90'000, .refill_period = 1min});
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    for (std::uint64_t units : {60'000u, 30'000u, 15'000u, 1'500u}) {
      Status r = co_await rl->acquire(ctx, units);
      log.add(std::to_string(units) + " " + describe(r) + " at " + std::to_string(ms(s)));
    }
    // The call used 500 tokens fewer than estimated: give them back.
    rl->adjust(-500);
    log.add("available " + std::to_string(rl->available()));
    // ... or 2,500 more: owed, so the next request waits for them too.
    rl->adjust(2'500);
    Status r = co_await rl->acquire(ctx, 1'000);
    log.add("1000 " + describe(r) + " at " + std::to_string(ms(s)));
  });
  s.rt->advance(1min);
  // 15,000 tokens at 1,500 per second: 10 s. Then 1,500 more: 1 s.
  // Then 500 back and 2,500 more taken: 2,000 owed, + 1,000 = 3,000 at 1,500/s: 2 s.
  EXPECT_EQ(log.get(), (std::vector<std::string>{"60000 ok at 0", "30000 ok at 0", "15000 ok at 10000",
                                                 "1500 ok at 11000", "available 500", "1000 ok at 13000"}));
  auto c = rl->counters();
  EXPECT_EQ(c.acquired, 5u);
  EXPECT_EQ(c.acquired_units, 60'000u + 30'000u + 15'000u + 1'500u + 1'000u);
  EXPECT_EQ(c.waited, 3u);
  EXPECT_EQ(c.total_wait, 10s + 1s + 2s);
}

TEST(RateLimiter, WaitersAreServedInArrivalOrderAtExactTimes) {
  Sim s;
  auto rl = make(s.env, {.capacity = 1, .refill_units = 1, .refill_period = 100ms});
  Log log;
  for (int i = 0; i < 5; ++i) {
    s.spawn([&, i](Context& ctx) -> Task<> {
      Status r = co_await rl->acquire(ctx);
      log.add(std::to_string(i) + " " + describe(r) + " at " + std::to_string(ms(s)));
    });
    s.rt->run_until_idle();  // one at a time: arrival order is spawn order
  }
  EXPECT_EQ(rl->counters().waiting, 4u);
  EXPECT_EQ(rl->available(), -4);
  s.rt->advance(1s);
  EXPECT_EQ(log.get(),
            (std::vector<std::string>{"0 ok at 0", "1 ok at 100", "2 ok at 200", "3 ok at 300", "4 ok at 400"}));
  auto c = rl->counters();
  EXPECT_EQ(c.waited, 4u);
  EXPECT_EQ(c.total_wait, 100ms + 200ms + 300ms + 400ms);
  EXPECT_EQ(c.peak_waiting, 4u);
  EXPECT_EQ(c.waiting, 0u);
}

TEST(RateLimiter, ALargeRequestIsNotOvertakenBySmallOnes) {
  Sim s;
  auto rl = make(s.env, {.capacity = 4, .refill_units = 1, .refill_period = 100ms, .initial_units = 0});
  Log log;
  auto waiter = [&](std::string name, std::uint64_t units) {
    return [&, name, units](Context& ctx) -> Task<> {
      Status r = co_await rl->acquire(ctx, units);
      log.add(name + " " + describe(r) + " at " + std::to_string(ms(s)));
    };
  };
  s.spawn(waiter("big", 4));
  s.rt->run_until_idle();
  s.rt->advance(50ms);
  s.spawn(waiter("small", 1));
  s.rt->advance(1s);
  EXPECT_EQ(log.get(), (std::vector<std::string>{"big ok at 400", "small ok at 500"}));
}

TEST(RateLimiter, MaxWaitRejectsAtOnceWithRetryAt) {
  Sim s;
  auto rl =
      make(s.env, {.capacity = 10, .refill_units = 10, .refill_period = 1s, .initial_units = 0, .max_wait = 250ms});
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    TimePoint start = ctx.now();
    Status r = co_await rl->acquire(ctx, 3);  // needs 300 ms
    EXPECT_EQ(ctx.now(), start);
    log.add(r.ok() ? "?" : r.error().to_string());
    EXPECT_EQ(r.error().retry_at(), start + 300ms);
    r = co_await rl->acquire(ctx, 2);  // needs 200 ms: waits
    log.add(describe(r) + " at " + std::to_string(ms(s)));
  });
  s.rt->advance(1s);
  EXPECT_EQ(log.get(), (std::vector<std::string>{
                           "rate_limited: rate limiter 'test': 3 units available in 300 ms, longer than max_wait "
                           "250 ms",
                           "ok at 200"}));
  auto c = rl->counters();
  EXPECT_EQ(c.rejected_max_wait, 1u);
  EXPECT_EQ(c.acquired, 1u);
}

TEST(RateLimiter, NeverWaitsPastTheProcessDeadline) {
  Sim s;
  auto rl = make(s.env, {.capacity = 10, .refill_units = 10, .refill_period = 1s, .initial_units = 0});
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    auto scope = ctx.with_timeout(150ms);
    Status r = co_await rl->acquire(ctx, 2);  // needs 200 ms: past the deadline, fails at once
    log.add((r.ok() ? std::string("?") : r.error().to_string()) + " at " + std::to_string(ms(s)));
    r = co_await rl->acquire(ctx, 1);  // needs 100 ms (the 2 were not taken)
    log.add(describe(r) + " at " + std::to_string(ms(s)));
    r = co_await rl->acquire(ctx, 1);  // needs 100 ms more, to 200 ms > 150 ms
    log.add(describe(r) + " at " + std::to_string(ms(s)));
  });
  s.rt->advance(1s);
  s.spawn([&](Context& ctx) -> Task<> {
    auto scope = ctx.with_deadline(ctx.now());
    log.add("late: " + describe(co_await rl->acquire(ctx, 1)));  // even with units in the bucket
  });
  s.rt->run_until_idle();
  EXPECT_EQ(log.get(), (std::vector<std::string>{
                           "deadline_exceeded: rate limiter 'test': 2 units available in 200 ms, after the process "
                           "deadline (in 150 ms) at 0",
                           "ok at 100", "deadline_exceeded at 100", "late: deadline_exceeded"}));
  EXPECT_EQ(rl->counters().rejected_deadline, 3u);
  EXPECT_EQ(rl->available(), 9);  // 1 taken at 100 ms, 900 ms of refill: rejections took none
}

TEST(RateLimiter, TheDeadlineItselfIsReachable) {
  Sim s;
  auto rl = make(s.env, {.capacity = 10, .refill_units = 10, .refill_period = 1s, .initial_units = 0});
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    auto scope = ctx.with_timeout(200ms);
    Status r = co_await rl->acquire(ctx, 2);  // ready exactly at the deadline
    log.add(describe(r) + " at " + std::to_string(ms(s)));
  });
  s.rt->advance(1s);
  EXPECT_EQ(log.get(), (std::vector<std::string>{"ok at 200"}));
}

TEST(RateLimiter, MaxWaitersBoundsTheSleepers) {
  Sim s;
  auto rl = make(s.env, {.capacity = 1, .refill_units = 1, .refill_period = 1s, .initial_units = 0, .max_waiters = 2});
  Log log;
  for (int i = 0; i < 3; ++i) {
    s.spawn([&, i](Context& ctx) -> Task<> {
      Status r = co_await rl->acquire(ctx);
      log.add(std::to_string(i) + " " + (r.ok() ? "ok" : r.error().message()) + " at " + std::to_string(ms(s)));
      if (!r.ok()) {
        EXPECT_THAT(r, StatusIs(ErrorKind::kRateLimited));
        EXPECT_EQ(r.error().retry_at(), ctx.now() + 3s);
      }
    });
    s.rt->run_until_idle();
  }
  s.rt->advance(10s);
  EXPECT_EQ(log.get(), (std::vector<std::string>{
                           "2 rate limiter 'test': 2 processes already waiting (max_waiters); 1 units available in "
                           "3000 ms at 0",
                           "0 ok at 1000", "1 ok at 2000"}));
  EXPECT_EQ(rl->counters().rejected_too_many_waiters, 1u);
}

TEST(RateLimiter, AKilledWaiterGivesItsUnitsBack) {
  Sim s;
  auto events = std::make_shared<std::vector<RateLimiterEvent>>();
  RateLimiterOptions o{.capacity = 10, .refill_units = 10, .refill_period = 1s, .initial_units = 0};
  o.observer = [events](const RateLimiterEvent& e) { events->push_back(e); };
  auto rl = make(s.env, o);
  Pid victim = s.spawn([&](Context& ctx) -> Task<> { (void)co_await rl->acquire(ctx, 10); });
  s.rt->run_until_idle();
  EXPECT_EQ(rl->counters().waiting, 1u);
  s.rt->advance(500ms);
  EXPECT_EQ(rl->available(), -5);
  s.rt->send_exit(victim, ExitReason::kill());
  s.rt->run_until_idle();
  EXPECT_EQ(rl->available(), 5);
  auto c = rl->counters();
  EXPECT_EQ(c.abandoned, 1u);
  EXPECT_EQ(c.waiting, 0u);
  EXPECT_EQ(c.acquired, 0u);
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ(events->at(0).type, RateLimiterEventType::kAbandoned);
  EXPECT_EQ(events->at(0).units, 10u);
}

TEST(RateLimiter, ObserverSeesAcquiresAndRejections) {
  Sim s;
  auto events = std::make_shared<std::vector<RateLimiterEvent>>();
  RateLimiterOptions o{.capacity = 2, .refill_units = 2, .refill_period = 1s, .max_wait = 1s};
  o.observer = [events](const RateLimiterEvent& e) { events->push_back(e); };
  auto rl = make(s.env, o);
  s.spawn([&](Context& ctx) -> Task<> {
    (void)co_await rl->acquire(ctx, 2);
    (void)co_await rl->acquire(ctx, 1);  // waits 500 ms
    (void)co_await rl->acquire(ctx, 2);  // would wait 1000 ms: ok (== max_wait)
    (void)rl->try_acquire(1);            // no tokens
  });
  s.rt->advance(10s);
  std::vector<std::string> seen;
  for (const auto& e : *events) {
    std::string t =
        e.type == RateLimiterEventType::kAcquired ? "acquired" : "rejected " + std::string(to_string(e.reason));
    seen.push_back(t + " units=" + std::to_string(e.units) + " waited=" + std::to_string(to_millis(e.waited)) +
                   (e.retry_at ? " retry_at" : ""));
  }
  EXPECT_EQ(seen,
            (std::vector<std::string>{"acquired units=2 waited=0", "acquired units=1 waited=500",
                                      "acquired units=2 waited=1000", "rejected no_tokens units=1 waited=0 retry_at"}));
}

// Thousands of processes on 2 real workers take from one bucket at once: exactly the
// capacity succeeds in reject mode (the refill is negligible), and in wait mode everyone
// gets through with counters that add up.
TEST(RateLimiterStress, ConcurrentAcquiresOnTwoWorkersAreExact) {
  constexpr int kCalls = 4'000;
  auto env = make_real_environment({.workers = 2, .seed = 3});
  auto rt = Runtime::create(*env).value();
  auto reject =
      make(*env, {.capacity = 1'000, .refill_units = 1, .refill_period = 24h, .mode = RateLimitMode::kReject});
  auto wait = make(*env, {.capacity = 100, .refill_units = 200'000, .refill_period = 1s, .max_waiters = kCalls});
  std::atomic<int> ok_reject{0};
  std::atomic<int> limited{0};
  std::atomic<int> ok_wait{0};
  std::atomic<int> other{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  watches.reserve(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    auto pid = rt->spawn([&](Context& ctx) -> Task<> {
      Status r = co_await reject->acquire(ctx);
      if (r.ok()) {
        ok_reject.fetch_add(1);
      } else if (r.error().kind() == ErrorKind::kRateLimited && r.error().retry_at()) {
        limited.fetch_add(1);
      } else {
        other.fetch_add(1);
      }
      Status w = co_await wait->acquire(ctx);
      (w.ok() ? ok_wait : other).fetch_add(1);
    });
    ASSERT_THAT(pid, IsOk());
    watches.push_back(rt->watch_exit(*pid));
  }
  for (auto& w : watches) {
    ExitReason r = w->wait();
    ASSERT_TRUE(r.is_normal() || r.kind == ExitReason::Kind::kNoProc) << r.to_string();
  }
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ok_reject.load(), 1'000);
  EXPECT_EQ(limited.load(), kCalls - 1'000);
  EXPECT_EQ(ok_wait.load(), kCalls);
  auto rc = reject->counters();
  EXPECT_EQ(rc.acquired, 1'000u);
  EXPECT_EQ(rc.rejected_no_tokens, static_cast<std::uint64_t>(kCalls - 1'000));
  auto wc = wait->counters();
  EXPECT_EQ(wc.acquired, static_cast<std::uint64_t>(kCalls));
  EXPECT_EQ(wc.waiting, 0u);
  EXPECT_LE(wc.waited, static_cast<std::uint64_t>(kCalls));
}

}  // namespace
}  // namespace nines
