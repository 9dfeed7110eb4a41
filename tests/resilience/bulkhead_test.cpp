// Bulkhead: limits, FIFO queue, queue timeout, deadline, the timeout/hand-off race and
// abandoned waits on the virtual clock; 10,000 concurrent calls on the real 2-worker
// scheduler (run under TSan by the test command).
#include "nines/resilience/bulkhead.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
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
using test::Log;
using test::SimRuntime;
using ::testing::HasSubstr;

struct Go {};

std::shared_ptr<Bulkhead> make(Environment& env, BulkheadOptions o) {
  auto r = Bulkhead::create("test", env, o);
  EXPECT_THAT(r, IsOk());
  return std::move(r).value();
}

// A deterministic runtime that remembers when the test started.
struct Sim : SimRuntime {
  explicit Sim(std::uint64_t seed = 1) : SimRuntime(seed) {}
  TimePoint t0 = env.now();
};

// Milliseconds of virtual time since the test started.
std::int64_t ms(const Sim& s) { return to_millis(s.env.now() - s.t0); }

std::string describe(const Result<BulkheadSlot>& r) {
  return r.ok() ? std::string("slot") : std::string(to_string(r.error().kind()));
}

TEST(Bulkhead, CreateValidatesOptionsNamingTheField) {
  SimEnvironment env(1);
  auto empty = Bulkhead::create("", env, {});
  ASSERT_THAT(empty, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("name")));

  auto zero = Bulkhead::create("b", env, {.max_concurrent = 0});
  ASSERT_THAT(zero, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("max_concurrent")));

  auto negative = Bulkhead::create("b", env, {.queue_timeout = -1ms});
  ASSERT_THAT(negative, StatusIs(ErrorKind::kInvalidArgument, HasSubstr("queue_timeout")));

  auto fine = Bulkhead::create("b", env, {.max_concurrent = 1, .max_queue = 0, .queue_timeout = kInfinite});
  ASSERT_THAT(fine, IsOk());
  EXPECT_EQ((*fine)->name(), "b");
}

TEST(Bulkhead, LimitIsExactAndRejectionWithoutQueueIsImmediate) {
  Sim s;
  auto bh = make(s.env, {.max_concurrent = 3, .max_queue = 0});
  Log log;
  for (int i = 0; i < 5; ++i) {
    s.spawn([&, i](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      if (!slot.ok()) {
        log.add(std::to_string(i) + " rejected at " + std::to_string(ms(s)) + ": " + slot.error().message());
        EXPECT_THAT(slot, StatusIs(ErrorKind::kBulkheadFull));
        co_return;
      }
      log.add(std::to_string(i) + " ran");
      co_await ctx.sleep(1s);
    });
    s.rt->run_until_idle();
  }
  EXPECT_EQ(log.get(),
            (std::vector<std::string>{"0 ran", "1 ran", "2 ran",
                                      "3 rejected at 0: bulkhead 'test': full (3 of 3 calls in flight, no queue)",
                                      "4 rejected at 0: bulkhead 'test': full (3 of 3 calls in flight, no queue)"}));
  auto c = bh->counters();
  EXPECT_EQ(c.acquired, 3u);
  EXPECT_EQ(c.rejected_queue_full, 2u);
  EXPECT_EQ(c.in_flight, 3u);
  EXPECT_EQ(c.peak_in_flight, 3u);
  s.rt->advance(1s);
  c = bh->counters();
  EXPECT_EQ(c.in_flight, 0u);
  EXPECT_EQ(c.released, 3u);
  EXPECT_EQ(s.rt->process_count(), 0u);
}

TEST(Bulkhead, TryEnterTakesOnlyAFreeSlotNobodyWaitsForAndCountsNoRejection) {
  Sim s;
  auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 4, .queue_timeout = kInfinite});
  BulkheadSlot first = bh->try_enter();
  ASSERT_TRUE(first.held());
  EXPECT_FALSE(bh->try_enter().held());  // full
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    auto slot = co_await bh->acquire(ctx);
    log.add(slot.ok() ? "waiter got it" : slot.error().message());
  });
  s.rt->run_until_idle();
  EXPECT_EQ(bh->queued(), 1u);
  first.release();  // handed to the waiter, not freed: try_enter cannot overtake it
  EXPECT_EQ(bh->in_flight(), 1u);
  EXPECT_FALSE(bh->try_enter().held());
  s.rt->run_until_idle();
  EXPECT_EQ(log.get(), std::vector<std::string>{"waiter got it"});
  EXPECT_EQ(bh->in_flight(), 0u);  // the waiter's slot was released when its process ended
  BulkheadSlot again = bh->try_enter();
  EXPECT_TRUE(again.held());
  again.release();
  auto c = bh->counters();
  EXPECT_EQ(c.acquired, 3u);
  EXPECT_EQ(c.released, 3u);
  EXPECT_EQ(c.rejected_queue_full, 0u);
  EXPECT_EQ(c.peak_in_flight, 1u);
}

TEST(Bulkhead, QueueIsFifoAndEachReleaseHandsTheSlotToTheOldestWaiter) {
  Sim s;
  auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 10, .queue_timeout = kInfinite});
  Log log;
  Pid holder = s.spawn([&](Context& ctx) -> Task<> {
    auto slot = co_await bh->acquire(ctx);
    EXPECT_THAT(slot, IsOk());
    (void)co_await ctx.receive();  // Go: release
  });
  s.rt->run_until_idle();
  for (int i = 0; i < 5; ++i) {
    s.spawn([&, i](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      log.add(std::to_string(i) + " " + describe(slot) + " at " + std::to_string(ms(s)));
      co_await ctx.sleep(10ms);
    });
    s.rt->run_until_idle();  // one at a time: the queue order is the spawn order
  }
  EXPECT_EQ(bh->queued(), 5u);
  EXPECT_EQ(bh->in_flight(), 1u);
  // A newcomer while others wait is queued behind them, even right after a release.
  s.rt->advance(5ms);
  ASSERT_THAT(s.rt->send(holder, Go{}), IsOk());
  s.rt->advance(1s);
  EXPECT_EQ(log.get(),
            (std::vector<std::string>{"0 slot at 5", "1 slot at 15", "2 slot at 25", "3 slot at 35", "4 slot at 45"}));
  auto c = bh->counters();
  EXPECT_EQ(c.acquired, 6u);
  EXPECT_EQ(c.acquired_after_wait, 5u);
  EXPECT_EQ(c.released, 6u);
  EXPECT_EQ(c.peak_queued, 5u);
  EXPECT_EQ(c.peak_in_flight, 1u);
  EXPECT_EQ(c.total_wait, 5ms + 15ms + 25ms + 35ms + 45ms);
  EXPECT_EQ(c.in_flight, 0u);
  EXPECT_EQ(c.queued, 0u);
}

TEST(Bulkhead, FullQueueRejectsAtOnceSayingSo) {
  Sim s;
  auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 2, .queue_timeout = 10s});
  Log log;
  for (int i = 0; i < 4; ++i) {
    s.spawn([&, i](Context& ctx) -> Task<> {
      TimePoint start = ctx.now();
      auto slot = co_await bh->acquire(ctx);
      if (!slot.ok()) {
        EXPECT_EQ(ctx.now(), start);
        log.add(std::to_string(i) + " " + slot.error().to_string());
        co_return;
      }
      log.add(std::to_string(i) + " slot at " + std::to_string(ms(s)));
      co_await ctx.sleep(1s);
    });
    s.rt->run_until_idle();
  }
  EXPECT_EQ(log.get(), (std::vector<std::string>{
                           "0 slot at 0",
                           "3 bulkhead_full: bulkhead 'test': full (1 of 1 calls in flight, queue full: 2 of 2 "
                           "waiting)"}));
  s.rt->advance(10s);
  EXPECT_EQ(log.get().size(), 4u);
  EXPECT_EQ(log.get()[2], "1 slot at 1000");
  EXPECT_EQ(log.get()[3], "2 slot at 2000");
  auto c = bh->counters();
  EXPECT_EQ(c.rejected_queue_full, 1u);
  EXPECT_EQ(c.acquired, 3u);
}

TEST(Bulkhead, QueueTimeoutIsExactOnTheVirtualClock) {
  Sim s;
  auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 5, .queue_timeout = 100ms});
  Log log;
  Pid holder = s.spawn([&](Context& ctx) -> Task<> {
    auto slot = co_await bh->acquire(ctx);
    (void)co_await ctx.receive();
  });
  s.rt->run_until_idle();
  s.rt->advance(7ms);
  s.spawn([&](Context& ctx) -> Task<> {
    auto slot = co_await bh->acquire(ctx);
    log.add(slot.ok() ? "slot" : slot.error().to_string() + " at " + std::to_string(ms(s)));
  });
  s.rt->run_until_idle();
  s.rt->advance(99ms);
  EXPECT_TRUE(log.get().empty());
  EXPECT_EQ(bh->queued(), 1u);
  s.rt->advance(1ms);
  EXPECT_EQ(log.get(), (std::vector<std::string>{
                           "bulkhead_full: bulkhead 'test': queue wait timed out after 100 ms (1 calls in flight) "
                           "at 107"}));
  auto c = bh->counters();
  EXPECT_EQ(c.rejected_queue_timeout, 1u);
  EXPECT_EQ(c.total_wait, 100ms);
  EXPECT_EQ(c.queued, 0u);
  EXPECT_EQ(c.in_flight, 1u);
  // The holder's release finds nobody waiting: the slot goes back to the pool.
  ASSERT_THAT(s.rt->send(holder, Go{}), IsOk());
  s.rt->run_until_idle();
  EXPECT_EQ(bh->in_flight(), 0u);
  EXPECT_THAT(bh->try_acquire(), IsOk());
  EXPECT_EQ(bh->in_flight(), 0u);  // the temporary slot is released at once
}

TEST(Bulkhead, ZeroQueueTimeoutNeverWaits) {
  Sim s;
  auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 5, .queue_timeout = Duration::zero()});
  auto held = bh->try_acquire();
  ASSERT_THAT(held, IsOk());
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    auto slot = co_await bh->acquire(ctx);
    log.add(slot.ok() ? "slot" : slot.error().message());
  });
  s.rt->run_until_idle();
  EXPECT_EQ(log.get(), (std::vector<std::string>{"bulkhead 'test': full (1 of 1 calls in flight, no queue)"}));
}

TEST(Bulkhead, DeadlineBoundsTheQueueWaitAndIsReportedAsSuch) {
  Sim s;
  auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 5, .queue_timeout = 10s});
  auto held = bh->try_acquire();
  ASSERT_THAT(held, IsOk());
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    auto scope = ctx.with_timeout(30ms);
    auto slot = co_await bh->acquire(ctx);
    log.add(slot.ok() ? "slot" : slot.error().to_string() + " at " + std::to_string(ms(s)));
  });
  s.rt->run_until_idle();
  s.rt->advance(1s);
  ASSERT_EQ(log.get().size(), 1u);
  EXPECT_EQ(log.get()[0],
            "deadline_exceeded: bulkhead 'test': the deadline passed after 30 ms in the queue, before a "
            "slot was free at 30");
  // Already late: rejected at once, even with a free slot.
  held.value().release();
  EXPECT_EQ(bh->in_flight(), 0u);
  s.spawn([&](Context& ctx) -> Task<> {
    auto scope = ctx.with_deadline(ctx.now());
    auto slot = co_await bh->acquire(ctx);
    log.add(slot.ok() ? "slot" : slot.error().to_string());
  });
  s.rt->run_until_idle();
  ASSERT_EQ(log.get().size(), 2u);
  EXPECT_EQ(log.get()[1], "deadline_exceeded: bulkhead 'test': the deadline passed before acquiring a slot");
  auto c = bh->counters();
  EXPECT_EQ(c.rejected_deadline, 2u);
  EXPECT_EQ(c.in_flight, 0u);
  EXPECT_EQ(c.queued, 0u);
}

// A waiter times out at the same virtual instant as the holder releases. Whichever runs first
// (the seed decides), the slot must end up with the next waiter exactly once.
TEST(Bulkhead, TimeoutRacingAHandOffNeverLosesOrDuplicatesASlot) {
  int returned_seeds = 0;
  int plain_seeds = 0;
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    Sim s(seed);
    auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 5, .queue_timeout = 100ms});
    Log log;
    s.spawn([&](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      co_await ctx.sleep(100ms);  // released at 100 ms, when the first waiter times out
    });
    s.rt->run_until_idle();
    s.spawn([&](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      log.add("w1 " + describe(slot) + " at " + std::to_string(ms(s)));
    });
    s.rt->run_until_idle();
    s.rt->advance(50ms);
    s.spawn([&](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      log.add("w2 " + describe(slot) + " at " + std::to_string(ms(s)));
      co_await ctx.sleep(10ms);
    });
    s.rt->run_until_idle();
    s.rt->advance(1s);
    EXPECT_EQ(log.get(), (std::vector<std::string>{"w1 bulkhead_full at 100", "w2 slot at 100"})) << "seed " << seed;
    auto c = bh->counters();
    EXPECT_EQ(c.in_flight, 0u) << "seed " << seed;
    EXPECT_EQ(c.queued, 0u) << "seed " << seed;
    EXPECT_EQ(c.acquired, 2u) << "seed " << seed;
    EXPECT_EQ(c.released, 2u) << "seed " << seed;
    EXPECT_EQ(c.rejected_queue_timeout, 1u) << "seed " << seed;
    EXPECT_LE(c.handoffs_returned, 1u);
    (c.handoffs_returned == 1 ? returned_seeds : plain_seeds)++;
    // The pool is whole again: exactly one slot.
    auto a = bh->try_acquire();
    auto b = bh->try_acquire();
    EXPECT_THAT(a, IsOk());
    EXPECT_FALSE(b.ok());
  }
  // Both interleavings were exercised.
  EXPECT_GT(returned_seeds, 0);
  EXPECT_GT(plain_seeds, 0);
}

TEST(Bulkhead, AKilledWaiterLeavesTheQueueOrPassesOnItsSlot) {
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    Sim s(seed);
    auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 5, .queue_timeout = kInfinite});
    Log log;
    Pid holder = s.spawn([&](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      (void)co_await ctx.receive();
    });
    s.rt->run_until_idle();
    Pid victim = s.spawn([&](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      log.add("victim " + describe(slot));
      (void)co_await ctx.receive();  // holds it until killed
    });
    s.rt->run_until_idle();
    s.spawn([&](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      log.add("next " + describe(slot));
    });
    s.rt->run_until_idle();
    EXPECT_EQ(bh->queued(), 2u);
    // Kill the first waiter and release the holder in the same instant: the victim either
    // dies in the queue, dies holding a handed slot it never took, or takes it and dies
    // holding it. Every way, the next waiter gets the slot and nothing leaks.
    s.rt->send_exit(victim, ExitReason::kill());
    ASSERT_THAT(s.rt->send(holder, Go{}), IsOk());
    s.rt->run_until_idle();
    auto logged = log.get();
    ASSERT_FALSE(logged.empty()) << "seed " << seed;
    EXPECT_EQ(logged.back(), "next slot") << "seed " << seed;
    auto c = bh->counters();
    EXPECT_EQ(c.in_flight, 0u) << "seed " << seed;
    EXPECT_EQ(c.queued, 0u) << "seed " << seed;
    EXPECT_EQ(s.rt->process_count(), 0u);
  }
}

TEST(Bulkhead, DestroyingTheRuntimeWithWaitersLeavesTheBulkheadWhole) {
  SimEnvironment env(3);
  auto bh = make(env, {.max_concurrent = 2, .max_queue = 10, .queue_timeout = kInfinite});
  {
    auto rt = Runtime::create(env).value();
    for (int i = 0; i < 6; ++i) {
      ASSERT_TRUE(rt->spawn([bh](Context& ctx) -> Task<> {
                      auto slot = co_await bh->acquire(ctx);
                      (void)co_await ctx.receive();
                    }).ok());
    }
    rt->run_until_idle();
    EXPECT_EQ(bh->in_flight(), 2u);
    EXPECT_EQ(bh->queued(), 4u);
  }
  auto c = bh->counters();
  EXPECT_EQ(c.in_flight, 0u);
  EXPECT_EQ(c.queued, 0u);
  EXPECT_EQ(c.abandoned, 4u);
}

TEST(Bulkhead, CallRunsTheFunctionHoldingASlotAndReleasesItEveryWay) {
  Sim s;
  auto bh = make(s.env, {.max_concurrent = 1, .max_queue = 0});
  Log log;
  s.spawn([&](Context& ctx) -> Task<> {
    auto with_ctx = [&](Context& c) -> Task<Result<int>> {
      EXPECT_EQ(bh->in_flight(), 1u);
      co_await c.sleep(5ms);
      co_return 42;
    };
    Result<int> r = co_await bh->call<int>(ctx, with_ctx);
    log.add(r.ok() ? std::to_string(*r) : r.error().to_string());
    EXPECT_EQ(bh->in_flight(), 0u);

    auto failing = []() -> Task<Result<int>> { co_return Error(ErrorKind::kTransient, "503"); };
    Result<int> f = co_await bh->call<int>(ctx, failing);
    log.add(f.ok() ? "?" : f.error().to_string());

    auto status = [](Context&) -> Task<Status> { co_return ok_status(); };
    Result<void> v = co_await bh->call<void>(ctx, status);
    log.add(v.ok() ? "void ok" : v.error().to_string());

    // While the slot is held, a nested call is rejected with the bulkhead's error.
    auto held = bh->try_acquire();
    EXPECT_THAT(held, IsOk());
    Result<int> full = co_await bh->call<int>(ctx, with_ctx);
    log.add(full.ok() ? "?" : std::string(to_string(full.error().kind())));
    held.value().release();

    auto throwing = [](Context&) -> Task<Result<int>> {
      throw std::runtime_error("bug");
      co_return 0;
    };
    try {
      (void)co_await bh->call<int>(ctx, throwing);
    } catch (const std::runtime_error& e) {
      log.add(std::string("threw ") + e.what());
    }
    EXPECT_EQ(bh->in_flight(), 0u);
  });
  s.rt->advance(1s);
  EXPECT_EQ(log.get(), (std::vector<std::string>{"42", "transient: 503", "void ok", "bulkhead_full", "threw bug"}));
  auto c = bh->counters();
  EXPECT_EQ(c.acquired, 5u);
  EXPECT_EQ(c.released, 5u);
  EXPECT_EQ(c.rejected_queue_full, 1u);
}

TEST(Bulkhead, SlotIsMoveOnlyAndReleasesOnce) {
  SimEnvironment env(1);
  auto bh = make(env, {.max_concurrent = 2, .max_queue = 0});
  {
    BulkheadSlot a = bh->try_acquire().value();
    EXPECT_TRUE(a.held());
    BulkheadSlot b = std::move(a);
    EXPECT_FALSE(a.held());  // NOLINT: moved-from is empty by contract
    EXPECT_TRUE(b.held());
    EXPECT_EQ(bh->in_flight(), 1u);
    BulkheadSlot c = bh->try_acquire().value();
    EXPECT_EQ(bh->in_flight(), 2u);
    c = std::move(b);  // releases c's own slot
    EXPECT_EQ(bh->in_flight(), 1u);
    c.release();
    c.release();
    EXPECT_EQ(bh->in_flight(), 0u);
  }
  EXPECT_EQ(bh->in_flight(), 0u);
  EXPECT_EQ(bh->counters().released, 2u);
}

TEST(Bulkhead, ObserverSeesEveryEvent) {
  Sim s;
  auto events = std::make_shared<std::vector<BulkheadEvent>>();
  BulkheadOptions o{.max_concurrent = 1, .max_queue = 1, .queue_timeout = 50ms};
  o.observer = [events](const BulkheadEvent& e) { events->push_back(e); };
  auto bh = make(s.env, o);
  s.spawn([&](Context& ctx) -> Task<> {
    auto slot = co_await bh->acquire(ctx);
    co_await ctx.sleep(20ms);
  });
  s.rt->run_until_idle();
  s.spawn([&](Context& ctx) -> Task<> { auto slot = co_await bh->acquire(ctx); });
  s.rt->run_until_idle();
  s.spawn([&](Context& ctx) -> Task<> { auto slot = co_await bh->acquire(ctx); });
  s.rt->advance(1s);
  std::vector<std::string> seen;
  for (const auto& e : *events) {
    std::string t = e.type == BulkheadEventType::kAcquired   ? "acquired"
                    : e.type == BulkheadEventType::kRejected ? "rejected " + std::string(to_string(e.reason))
                    : e.type == BulkheadEventType::kReleased ? "released"
                                                             : "abandoned";
    seen.push_back(t + " waited=" + std::to_string(to_millis(e.waited)) + " in_flight=" + std::to_string(e.in_flight) +
                   " queued=" + std::to_string(e.queued));
  }
  EXPECT_EQ(seen, (std::vector<std::string>{
                      "acquired waited=0 in_flight=1 queued=0",
                      "rejected queue_full waited=0 in_flight=1 queued=1",
                      "released waited=0 in_flight=1 queued=0",  // handed to the waiter
                      "acquired waited=20 in_flight=1 queued=0",
                      "released waited=0 in_flight=0 queued=0",
                  }));
}

// 10,000 processes at once through one bulkhead on 2 real workers. The bulkhead must never
// admit more than max_concurrent, and every call must either run or get a typed rejection,
// with counters that add up exactly.
TEST(BulkheadStress, TenThousandConcurrentCallsOnTwoWorkers) {
  constexpr int kCalls = 10'000;
  constexpr std::size_t kMax = 8;
  auto env = make_real_environment({.workers = 2, .seed = 99});
  auto rt = Runtime::create(*env).value();
  auto bh = make(*env, {.max_concurrent = kMax, .max_queue = 2'000, .queue_timeout = 100ms});

  std::atomic<int> current{0};
  std::atomic<int> high_water{0};
  std::atomic<int> ran{0};
  std::atomic<int> full{0};
  std::atomic<int> timed_out{0};
  std::atomic<int> other{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  watches.reserve(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    auto pid = rt->spawn([&, i](Context& ctx) -> Task<> {
      auto work = [&, i](Context& c) -> Task<Result<int>> {
        int now = current.fetch_add(1) + 1;
        int seen = high_water.load();
        while (now > seen && !high_water.compare_exchange_weak(seen, now)) {
        }
        if (i % 50 == 0) {
          co_await c.sleep(1ms);
        } else {
          co_await c.yield();
        }
        current.fetch_sub(1);
        co_return i;
      };
      Result<int> r = co_await bh->call<int>(ctx, work);
      if (r.ok()) {
        if (*r == i)
          ran.fetch_add(1);
        else
          other.fetch_add(1);
      } else if (r.error().kind() == ErrorKind::kBulkheadFull &&
                 r.error().message().find("queue full") != std::string::npos) {
        full.fetch_add(1);
      } else if (r.error().kind() == ErrorKind::kBulkheadFull &&
                 r.error().message().find("timed out") != std::string::npos) {
        timed_out.fetch_add(1);
      } else {
        other.fetch_add(1);
      }
    });
    ASSERT_THAT(pid, IsOk());
    watches.push_back(rt->watch_exit(*pid));
  }
  // noproc: the process had already finished when it was watched (the counts below check it).
  for (auto& w : watches) {
    ExitReason r = w->wait();
    ASSERT_TRUE(r.is_normal() || r.kind == ExitReason::Kind::kNoProc) << r.to_string();
  }
  EXPECT_LE(high_water.load(), static_cast<int>(kMax));
  EXPECT_GE(high_water.load(), 1);
  EXPECT_EQ(current.load(), 0);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ran.load() + full.load() + timed_out.load(), kCalls);
  EXPECT_GT(ran.load(), 0);
  auto c = bh->counters();
  EXPECT_EQ(c.acquired, static_cast<std::uint64_t>(ran.load()));
  EXPECT_EQ(c.released, static_cast<std::uint64_t>(ran.load()));
  EXPECT_EQ(c.rejected_queue_full, static_cast<std::uint64_t>(full.load()));
  EXPECT_EQ(c.rejected_queue_timeout, static_cast<std::uint64_t>(timed_out.load()));
  EXPECT_EQ(c.rejected_deadline, 0u);
  EXPECT_EQ(c.abandoned, 0u);
  EXPECT_LE(c.peak_in_flight, kMax);
  EXPECT_LE(c.peak_queued, 2'000u);
  EXPECT_EQ(c.in_flight, 0u);
  EXPECT_EQ(c.queued, 0u);
  RecordProperty("ran", ran.load());
  RecordProperty("queue_full", full.load());
  RecordProperty("queue_timeout", timed_out.load());
}

// Every call waits its turn (queue as large as the load, no timeout): all 10,000 run, in
// at most max_concurrent at a time.
TEST(BulkheadStress, TenThousandQueuedCallsAllRunOnTwoWorkers) {
  constexpr int kCalls = 10'000;
  constexpr std::size_t kMax = 4;
  auto env = make_real_environment({.workers = 2, .seed = 5});
  auto rt = Runtime::create(*env).value();
  auto bh = make(*env, {.max_concurrent = kMax, .max_queue = kCalls, .queue_timeout = kInfinite});
  std::atomic<int> current{0};
  std::atomic<int> high_water{0};
  std::atomic<int> ran{0};
  std::atomic<int> failed{0};
  std::vector<std::shared_ptr<ExitWatch>> watches;
  watches.reserve(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    auto pid = rt->spawn([&](Context& ctx) -> Task<> {
      auto slot = co_await bh->acquire(ctx);
      if (!slot.ok()) {
        failed.fetch_add(1);
        co_return;
      }
      int now = current.fetch_add(1) + 1;
      int seen = high_water.load();
      while (now > seen && !high_water.compare_exchange_weak(seen, now)) {
      }
      co_await ctx.yield();
      current.fetch_sub(1);
      ran.fetch_add(1);
    });
    ASSERT_THAT(pid, IsOk());
    watches.push_back(rt->watch_exit(*pid));
  }
  // noproc: the process had already finished when it was watched (the counts below check it).
  for (auto& w : watches) {
    ExitReason r = w->wait();
    ASSERT_TRUE(r.is_normal() || r.kind == ExitReason::Kind::kNoProc) << r.to_string();
  }
  EXPECT_EQ(ran.load(), kCalls);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_LE(high_water.load(), static_cast<int>(kMax));
  auto c = bh->counters();
  EXPECT_EQ(c.acquired, static_cast<std::uint64_t>(kCalls));
  EXPECT_EQ(c.released, static_cast<std::uint64_t>(kCalls));
  EXPECT_EQ(c.in_flight, 0u);
  EXPECT_EQ(c.queued, 0u);
}

}  // namespace
}  // namespace nines
