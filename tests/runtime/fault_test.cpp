// The runtime's fault points (core/fault.hpp): timer_late (RuntimeCore::add_timer) and
// mailbox_full (RuntimeCore::deliver_to). Each fires when on and is counted, never when off,
// and a seed replays exactly.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/test_util.hpp"

namespace nines {
namespace {

using test::SimRuntime;
using namespace std::chrono_literals;

// How long a sleep(10 ms) takes on the virtual clock.
Duration slept(SimRuntime& sim) {
  TimePoint start = sim.env.now(), woke{};
  sim.spawn([&woke](Context& ctx) -> Task<> {
    (void)co_await ctx.sleep(10ms);
    woke = ctx.now();
  });
  sim.rt->advance(1s);
  return woke - start;
}

TEST(RuntimeFaultPoints, ALateTimerFiresAfterItsDeadline) {
  SimRuntime sim;
  EXPECT_EQ(slept(sim), 10ms);  // off: on time
  EXPECT_EQ(sim.env.fault_count(FaultPoint::kTimerLate), 0u);

  FaultOptions o = FaultOptions{}.set(FaultPoint::kTimerLate, 1.0);
  o.max_delay = 50ms;
  sim.env.set_faults(o);
  Duration late = slept(sim);
  EXPECT_GT(late, 10ms);
  EXPECT_LE(late, 60ms);
  EXPECT_EQ(sim.env.fault_count(FaultPoint::kTimerLate), 1u);

  sim.env.set_faults({});
  EXPECT_EQ(slept(sim), 10ms);
  EXPECT_EQ(sim.env.fault_count(FaultPoint::kTimerLate), 1u);
}

TEST(RuntimeFaultPoints, ALateReceiveTimeoutStillTimesOut) {
  SimRuntime sim;
  sim.env.set_faults(FaultOptions{}.set(FaultPoint::kTimerLate, 1.0));
  bool timed_out = false;
  TimePoint start = sim.env.now(), end{};
  sim.spawn([&](Context& ctx) -> Task<> {
    timed_out = !(co_await ctx.receive_for(20ms)).has_value();
    end = ctx.now();
  });
  sim.rt->advance(1s);
  EXPECT_TRUE(timed_out);
  EXPECT_GT(end - start, 20ms);
}

struct Ping {
  int n;
};

TEST(RuntimeFaultPoints, AFullMailboxRejectsASend) {
  SimRuntime sim;
  std::vector<int> got;
  Pid target = sim.spawn([&got](Context& ctx) -> Task<> {
    for (;;) {
      Message m = co_await ctx.receive();
      got.push_back(m.get<Ping>()->n);
    }
  });
  ASSERT_TRUE(sim.rt->send(target, Ping{1}).ok());
  sim.env.set_faults(FaultOptions{}.set(FaultPoint::kMailboxFull, 1.0));
  auto r = sim.rt->send(target, Ping{2});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kMailboxFull);
  EXPECT_EQ(sim.env.fault_count(FaultPoint::kMailboxFull), 1u);
  sim.env.set_faults({});
  ASSERT_TRUE(sim.rt->send(target, Ping{3}).ok());
  sim.rt->run_until_idle();
  EXPECT_EQ(got, (std::vector<int>{1, 3}));
}

// A process's own timer (send_after to itself) is its schedule: delivered over capacity and
// through the fault point, never dropped; a timer sent to another process is an ordinary send.
TEST(RuntimeFaultPoints, AProcesssOwnTimerIsDeliveredThroughAFullMailbox) {
  SimRuntime sim;
  std::vector<int> got;
  bool go = false;
  Pid other;
  Pid target = sim.spawn(
      [&](Context& ctx) -> Task<> {
        ctx.send_after(ctx.self(), 5ms, Ping{100});  // its own
        ctx.send_after(other, 5ms, Ping{200});       // to a full mailbox: dropped
        while (!go) (void)co_await ctx.sleep(1ms);
        for (;;) {
          auto m = co_await ctx.receive_for(0ms);
          if (!m) break;
          got.push_back(m->get<Ping>()->n);
        }
      },
      SpawnOptions{.mailbox_capacity = 1, .overflow = OverflowPolicy::kReject});
  std::vector<int> other_got;
  other = sim.spawn(
      [&](Context& ctx) -> Task<> {
        while (!go) (void)co_await ctx.sleep(1ms);
        for (;;) {
          auto m = co_await ctx.receive_for(0ms);
          if (!m) break;
          other_got.push_back(m->get<Ping>()->n);
        }
      },
      SpawnOptions{.mailbox_capacity = 1, .overflow = OverflowPolicy::kReject});
  sim.rt->run_until_idle();
  ASSERT_TRUE(sim.rt->send(target, Ping{1}).ok());
  ASSERT_TRUE(sim.rt->send(other, Ping{2}).ok());
  EXPECT_FALSE(sim.rt->send(target, Ping{3}).ok()) << "full";
  sim.env.set_faults(FaultOptions{}.set(FaultPoint::kMailboxFull, 1.0));
  sim.rt->advance(5ms);  // the timers fire: both mailboxes full, the fault point on
  sim.env.set_faults({});
  go = true;
  sim.rt->advance(10ms);
  EXPECT_EQ(got, (std::vector<int>{1, 100}));
  EXPECT_EQ(other_got, (std::vector<int>{2}));
}

TEST(RuntimeFaultPoints, AFullMailboxThatDropsOldestDropsOne) {
  SimRuntime sim;
  std::vector<int> got;
  bool go = false;
  Pid target = sim.spawn(
      [&](Context& ctx) -> Task<> {
        while (!go) (void)co_await ctx.sleep(1ms);
        for (;;) {
          auto m = co_await ctx.receive_for(0ms);
          if (!m) break;
          got.push_back(m->get<Ping>()->n);
        }
      },
      SpawnOptions{.mailbox_capacity = 10, .overflow = OverflowPolicy::kDropOldest});
  ASSERT_TRUE(sim.rt->send(target, Ping{1}).ok());
  ASSERT_TRUE(sim.rt->send(target, Ping{2}).ok());
  sim.env.set_faults(FaultOptions{}.set(FaultPoint::kMailboxFull, 1.0));
  ASSERT_TRUE(sim.rt->send(target, Ping{3}).ok());  // as if full: 1 makes room
  sim.env.set_faults({});
  go = true;
  sim.rt->advance(10ms);
  EXPECT_EQ(got, (std::vector<int>{2, 3}));
  EXPECT_EQ(sim.env.fault_count(FaultPoint::kMailboxFull), 1u);
}

TEST(RuntimeFaultPoints, AFullMailboxSuspendsTheSenderUntilAReceive) {
  SimRuntime sim;
  std::vector<int> got;
  bool go = false;
  Pid target = sim.spawn(
      [&](Context& ctx) -> Task<> {
        while (!go) (void)co_await ctx.sleep(1ms);
        for (;;) got.push_back((co_await ctx.receive()).get<Ping>()->n);
      },
      SpawnOptions{.mailbox_capacity = 10, .overflow = OverflowPolicy::kSuspendSender});
  sim.env.set_faults(FaultOptions{}.set(FaultPoint::kMailboxFull, 1.0));
  bool sent_first = false, sent_second = false;
  sim.spawn([&](Context& ctx) -> Task<> {
    // An empty mailbox: the point does not fire (nothing would ever make room).
    sent_first = (co_await ctx.send(target, Ping{1})).ok();
    sent_second = (co_await ctx.send(target, Ping{2})).ok();  // waits for room
  });
  sim.rt->advance(5ms);
  EXPECT_TRUE(sent_first);
  EXPECT_FALSE(sent_second);
  EXPECT_EQ(sim.env.fault_count(FaultPoint::kMailboxFull), 1u);
  sim.env.set_faults({});
  go = true;
  sim.rt->advance(10ms);
  EXPECT_TRUE(sent_second);
  EXPECT_EQ(got, (std::vector<int>{1, 2}));
}

// A run of pings and sleeps with both points at 0.3: what each process saw, and when.
std::vector<std::string> timeline(std::uint64_t seed) {
  SimRuntime sim(seed);
  sim.env.set_faults(FaultOptions::all(0.3));
  std::vector<std::string> out;
  Pid sink = sim.spawn([&out](Context& ctx) -> Task<> {
    for (;;) {
      auto m = co_await ctx.receive_for(30ms);
      out.push_back(m ? "got " + std::to_string(m->get<Ping>()->n) : "idle");
      out.back() += " @" + std::to_string((ctx.now().time_since_epoch() / 1ms));
    }
  });
  sim.spawn([&out, sink](Context& ctx) -> Task<> {
    for (int i = 0; i < 50; ++i) {
      (void)co_await ctx.sleep(std::chrono::milliseconds(1 + ctx.env().random_below(20)));
      if (!ctx.try_send(sink, Ping{i}).ok()) out.push_back("full " + std::to_string(i));
    }
  });
  sim.rt->advance(5s);
  out.push_back("late " + std::to_string(sim.env.fault_count(FaultPoint::kTimerLate)) + " full " +
                std::to_string(sim.env.fault_count(FaultPoint::kMailboxFull)));
  return out;
}

TEST(RuntimeFaultPoints, TheSameSeedGivesTheSameTimeline) {
  std::vector<std::string> a = timeline(5);
  EXPECT_EQ(a, timeline(5));
  EXPECT_NE(a, timeline(6));
  EXPECT_NE(std::find_if(a.begin(), a.end(), [](const std::string& s) { return s.starts_with("full "); }), a.end());
}

}  // namespace
}  // namespace nines
