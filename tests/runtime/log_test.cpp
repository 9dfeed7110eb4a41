// The runtime's default reports (docs/logging.md): process_crashed, child_restarted,
// supervisor_gave_up, child_start_failed, as the SimEnvironment captures them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "nines/runtime/supervisor.hpp"
#include "runtime/test_util.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;

using test::SimRuntime;
using namespace std::chrono_literals;

struct Crash {};

// Waits for messages; throws on Crash.
Task<> crash_on_demand(Context& ctx) {
  for (;;) {
    Message m = co_await ctx.receive();
    if (m.is<Crash>()) throw std::runtime_error("boom");
  }
}

// Ignores shutdown signals: only a kill stops it.
Task<> stubborn(Context& ctx) {
  ctx.set_trap_exit(true);
  for (;;) co_await ctx.receive();
}

struct LogWorld {
  SimRuntime s;
  CaptureSink& logs() { return s.env.captured_logs(); }
  Runtime& rt() { return *s.rt; }
};

TEST(ProcessCrashed, ACrashIsReportedOnceWithPidNameAndReason) {
  LogWorld w;
  Pid pid = w.s.spawn(
      [](Context& ctx) -> Task<> {
        co_await ctx.sleep(1ms);
        throw std::runtime_error("disk on fire");
      },
      {.name = "worker"});
  w.rt().run_until_idle();
  EXPECT_EQ(w.logs().count("process_crashed"), 0u);
  w.rt().advance(1ms);
  auto lines = w.logs().records("process_crashed");
  ASSERT_EQ(lines.size(), 1u) << w.logs().dump();
  EXPECT_EQ(lines[0].level, LogLevel::kError);
  EXPECT_EQ(lines[0].field("pid"), pid.to_string());
  EXPECT_EQ(lines[0].field("name"), "worker");
  EXPECT_EQ(lines[0].field("reason"), "crash: std::runtime_error: disk on fire");
  EXPECT_EQ(lines[0].field("signal_from"), std::nullopt);
  EXPECT_EQ(lines[0].human, "2026-01-01T00:00:00.001Z error process_crashed: process crashed pid=" + pid.to_string() +
                                " reason=\"crash: std::runtime_error: disk on fire\" name=worker");
}

TEST(ProcessCrashed, NormalAndShutdownExitsAreNotReported) {
  LogWorld w;
  w.s.spawn([](Context&) -> Task<> { co_return; });
  w.s.spawn([](Context& ctx) -> Task<> {
    ctx.exit(ExitReason::shutdown());
    co_return;
  });
  w.s.spawn([](Context& ctx) -> Task<> {
    ctx.exit(ExitReason::shutdown("done"));
    co_return;
  });
  Pid asked = w.s.spawn(crash_on_demand);
  w.rt().run_until_idle();
  w.rt().send_exit(asked, ExitReason::shutdown());
  w.rt().run_until_idle();
  EXPECT_FALSE(w.rt().alive(asked));
  EXPECT_EQ(w.logs().size(), 0u) << w.logs().dump();
}

TEST(ProcessCrashed, AKillAndALinkedCrashAreReportedWithTheirSender) {
  LogWorld w;
  Pid victim = w.s.spawn(crash_on_demand);
  w.rt().run_until_idle();
  w.rt().send_exit(victim, ExitReason::kill());
  w.rt().run_until_idle();
  auto killed = w.logs().records("process_crashed");
  ASSERT_EQ(killed.size(), 1u) << w.logs().dump();
  EXPECT_EQ(killed[0].field("reason"), "killed");
  EXPECT_EQ(killed[0].field("signal_from"), "outside");

  w.logs().clear();
  Pid partner;
  Pid first = w.s.spawn([&partner](Context& ctx) -> Task<> {
    partner = ctx.spawn_link(crash_on_demand).value();
    co_await crash_on_demand(ctx);
  });
  w.rt().run_until_idle();
  ASSERT_THAT(w.rt().send(first, Crash{}), IsOk());
  w.rt().run_until_idle();
  auto lines = w.logs().records("process_crashed");
  ASSERT_EQ(lines.size(), 2u) << w.logs().dump();
  EXPECT_EQ(lines[0].field("pid"), first.to_string());
  EXPECT_EQ(lines[0].field("signal_from"), std::nullopt);
  EXPECT_EQ(lines[1].field("pid"), partner.to_string());
  EXPECT_EQ(lines[1].field("reason"), "crash: std::runtime_error: boom");
  EXPECT_EQ(lines[1].field("signal_from"), first.to_string());
}

TEST(ProcessCrashed, ASupervisorsKillOnShutdownIsNotACrash) {
  for (bool brutal : {true, false}) {
    LogWorld w;
    SupervisorSpec spec{.name = "sup", .strategy = Strategy::kOneForOne};
    ChildSpec obeys = ChildSpec::worker("obeys", crash_on_demand);
    ChildSpec killed = ChildSpec::worker("killed", stubborn);
    killed.shutdown = brutal ? ShutdownSpec::brutal_kill() : ShutdownSpec::after(100ms);
    spec.children = {obeys, killed};
    Pid sup = start_supervisor(w.rt(), spec).value();
    w.rt().run_until_idle();
    w.rt().send_exit(sup, ExitReason::shutdown());
    w.rt().advance(1s);
    EXPECT_FALSE(w.rt().alive(sup));
    EXPECT_EQ(w.rt().process_count(), 0u);
    EXPECT_EQ(w.logs().count("process_crashed"), 0u) << (brutal ? "brutal_kill " : "timeout ") << w.logs().dump();
  }
}

TEST(Supervisor, ARestartIsReportedWithTheReasonAndTheRestartCount) {
  LogWorld w;
  SupervisorSpec spec{.name = "shop", .strategy = Strategy::kOneForOne, .intensity = 3, .period = 5s};
  spec.children = {ChildSpec::worker("cart", crash_on_demand, {.name = "cart"})};
  start_supervisor(w.rt(), spec).value();
  w.rt().run_until_idle();
  for (int i = 1; i <= 2; ++i) {
    ASSERT_THAT(w.rt().send(*w.rt().whereis("cart"), Crash{}), IsOk());
    w.rt().run_until_idle();
  }
  EXPECT_EQ(w.logs().count("process_crashed"), 2u) << w.logs().dump();
  auto restarts = w.logs().records("child_restarted");
  ASSERT_EQ(restarts.size(), 2u) << w.logs().dump();
  EXPECT_EQ(restarts[0].level, LogLevel::kNotice);
  EXPECT_EQ(restarts[0].field("supervisor"), "shop");
  EXPECT_EQ(restarts[0].field("child"), "cart");
  EXPECT_TRUE(restarts[0].field("pid").has_value());
  EXPECT_EQ(restarts[0].field("reason"), "crash: std::runtime_error: boom");
  EXPECT_EQ(restarts[0].field("restarts"), "1");
  EXPECT_EQ(restarts[1].field("restarts"), "2");
  EXPECT_EQ(restarts[1].field("pid"), w.rt().whereis("cart")->to_string());
  EXPECT_EQ(restarts[1].field("intensity"), "3");
  EXPECT_EQ(w.logs().count("supervisor_gave_up"), 0u);
}

TEST(Supervisor, ExceedingTheIntensityIsReportedOnce) {
  LogWorld w;
  SupervisorSpec spec{.name = "flaky", .strategy = Strategy::kOneForOne, .intensity = 2, .period = 10s};
  spec.children = {ChildSpec::worker("w", crash_on_demand, {.name = "w"})};
  Pid sup = start_supervisor(w.rt(), spec).value();
  w.rt().run_until_idle();
  for (int i = 0; i < 3; ++i) {
    ASSERT_THAT(w.rt().send(*w.rt().whereis("w"), Crash{}), IsOk());
    w.rt().run_until_idle();
  }
  EXPECT_FALSE(w.rt().alive(sup));
  auto gave_up = w.logs().records("supervisor_gave_up");
  ASSERT_EQ(gave_up.size(), 1u) << w.logs().dump();
  EXPECT_EQ(gave_up[0].level, LogLevel::kError);
  EXPECT_EQ(gave_up[0].field("supervisor"), "flaky");
  EXPECT_EQ(gave_up[0].field("intensity"), "2");
  EXPECT_EQ(gave_up[0].field("period_s"), "10");
  EXPECT_EQ(gave_up[0].field("child"), "w");
  EXPECT_EQ(gave_up[0].field("reason"), "crash: std::runtime_error: boom");
  EXPECT_EQ(w.logs().count("child_restarted"), 2u);
  // The supervisor's own exit (shutdown) is no crash.
  EXPECT_EQ(w.logs().count("process_crashed"), 3u) << w.logs().dump();
}

TEST(Supervisor, AFailedStartIsReported) {
  LogWorld w;
  SupervisorSpec spec{.name = "boot"};
  ChildSpec bad;
  bad.id = "db";
  bad.start = [](StartContext&) -> Result<Pid> { return Error(ErrorKind::kTransient, "connection refused"); };
  spec.children = {bad};
  EXPECT_FALSE(start_supervisor(w.rt(), spec).ok());
  auto failed = w.logs().records("child_start_failed");
  ASSERT_EQ(failed.size(), 1u) << w.logs().dump();
  EXPECT_EQ(failed[0].field("supervisor"), "boot");
  EXPECT_EQ(failed[0].field("child"), "db");
  EXPECT_EQ(failed[0].field("error"), "transient: connection refused");
}

TEST(ProcessCrashed, ACrashStormIsRateLimitedAndCounted) {
  LogWorld w;
  constexpr int kCrashes = 10'000;
  for (int i = 0; i < kCrashes; ++i) {
    w.s.spawn([](Context&) -> Task<> {
      throw std::runtime_error("storm");
      co_return;
    });
  }
  w.rt().run_until_idle();
  EXPECT_EQ(w.rt().process_count(), 0u);
  // All at one virtual instant: the burst, then nothing but counting.
  EXPECT_EQ(w.logs().count("process_crashed"), 20u);
  EXPECT_EQ(w.s.env.logger().suppressed(), static_cast<std::uint64_t>(kCrashes - 20));
  // A second later the next crash passes, preceded by the count of what was dropped.
  w.rt().advance(1s);
  w.s.spawn([](Context&) -> Task<> {
    throw std::runtime_error("one more");
    co_return;
  });
  w.rt().run_until_idle();
  EXPECT_LE(w.logs().size(), 22u) << w.logs().dump();
  auto suppressed = w.logs().records("log_suppressed");
  ASSERT_EQ(suppressed.size(), 1u);
  EXPECT_EQ(suppressed[0].field("event"), "process_crashed");
  EXPECT_EQ(suppressed[0].field("dropped"), std::to_string(kCrashes - 20));
  EXPECT_EQ(w.logs().records().back().field("reason"), "crash: std::runtime_error: one more");
}

}  // namespace
}  // namespace nines
