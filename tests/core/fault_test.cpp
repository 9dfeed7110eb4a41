// Fault points (core/fault.hpp) as the environment answers them: every point fires when on
// and is counted, never when off, never in the real environment; a seed replays exactly; and
// faults leave the environment's own random stream alone. What each point does where it is
// inserted is tested in its layer (runtime, workflow, net).
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "nines/core/environment.hpp"
#include "nines/core/fault.hpp"

namespace nines {
namespace {

std::vector<FaultPoint> all_points() {
  std::vector<FaultPoint> v;
  for (std::size_t i = 0; i < kFaultPointCount; ++i) v.push_back(static_cast<FaultPoint>(i));
  return v;
}

TEST(FaultPoints, EachHasOneNameThatParsesBack) {
  std::set<std::string_view> names;
  for (FaultPoint p : all_points()) {
    std::string_view name = to_string(p);
    EXPECT_NE(name, "unknown");
    EXPECT_TRUE(names.insert(name).second) << name;
    EXPECT_EQ(parse_fault_point(name), p);
  }
  EXPECT_EQ(parse_fault_point("no_such_point"), std::nullopt);
  EXPECT_EQ(to_string(FaultPoint::kStoreCommitFail), "store_commit_fail");
  EXPECT_EQ(to_string(FaultPoint::kHttpReset), "http_reset");
}

TEST(FaultPoints, OffByDefaultInTheSimulation) {
  SimEnvironment env(1);
  EXPECT_FALSE(env.faults().any());
  for (FaultPoint p : all_points()) {
    for (int i = 0; i < 1000; ++i) EXPECT_FALSE(env.fault(p));
    EXPECT_EQ(env.fault_count(p), 0u);
  }
  EXPECT_EQ(env.faults_fired(), 0u);
}

TEST(FaultPoints, EveryPointFiresWhenOnAndIsCounted) {
  for (FaultPoint p : all_points()) {
    SimEnvironment env(7);
    env.set_faults(FaultOptions{}.set(p, 0.25));
    int fired = 0;
    for (int i = 0; i < 1000; ++i) fired += env.fault(p);
    EXPECT_GT(fired, 150) << to_string(p);
    EXPECT_LT(fired, 350) << to_string(p);
    EXPECT_EQ(env.fault_count(p), static_cast<std::uint64_t>(fired)) << to_string(p);
    EXPECT_EQ(env.faults_fired(), static_cast<std::uint64_t>(fired));
    // The other points stay off.
    for (FaultPoint q : all_points()) {
      if (q == p) continue;
      EXPECT_FALSE(env.fault(q)) << to_string(q);
      EXPECT_EQ(env.fault_count(q), 0u);
    }
  }
}

TEST(FaultPoints, ProbabilityOneAlwaysFiresAndTurningOffStopsThem) {
  SimEnvironment env(3);
  env.set_faults(FaultOptions::all(1.0));
  for (FaultPoint p : all_points()) EXPECT_TRUE(env.fault(p));
  EXPECT_EQ(env.faults_fired(), kFaultPointCount);
  env.set_faults({});
  for (FaultPoint p : all_points()) EXPECT_FALSE(env.fault(p));
  EXPECT_EQ(env.faults_fired(), kFaultPointCount);  // counts are kept
}

TEST(FaultPoints, OutOfRangeProbabilitiesAreClamped) {
  SimEnvironment env(3);
  env.set_faults(FaultOptions{}.set(FaultPoint::kTimerLate, 5.0).set(FaultPoint::kHttpStall, -1.0));
  EXPECT_EQ(env.faults().of(FaultPoint::kTimerLate), 1.0);
  EXPECT_EQ(env.faults().of(FaultPoint::kHttpStall), 0.0);
  EXPECT_TRUE(env.fault(FaultPoint::kTimerLate));
  EXPECT_FALSE(env.fault(FaultPoint::kHttpStall));
}

TEST(FaultPoints, NeverInTheRealEnvironment) {
  auto env = make_real_environment({.workers = 1, .seed = 5});
  for (FaultPoint p : all_points()) {
    for (int i = 0; i < 1000; ++i) EXPECT_FALSE(env->fault(p));
    EXPECT_EQ(env->fault_delay(p), Duration::zero());
  }
}

// The firings of one seed, point by point, interleaved with draws from the main stream.
std::vector<int> firings(std::uint64_t seed) {
  SimEnvironment env(seed);
  env.set_faults(FaultOptions::all(0.3));
  std::vector<int> out;
  for (int i = 0; i < 500; ++i) {
    FaultPoint p = static_cast<FaultPoint>(env.random_below(kFaultPointCount));
    if (env.fault(p)) out.push_back(i * 100 + static_cast<int>(env.fault_delay(p) / std::chrono::milliseconds(1)));
  }
  return out;
}

TEST(FaultPoints, TheSameSeedFiresTheSamePointsWithTheSameDelays) {
  EXPECT_EQ(firings(11), firings(11));
  EXPECT_NE(firings(11), firings(12));
}

TEST(FaultPoints, FaultsLeaveTheMainRandomStreamAsItWas) {
  SimEnvironment quiet(21), noisy(21);
  noisy.set_faults(FaultOptions::all(0.5));
  for (int i = 0; i < 200; ++i) {
    (void)noisy.fault(FaultPoint::kTimerLate);
    (void)noisy.fault_draw(10);
    EXPECT_EQ(quiet.random_u64(), noisy.random_u64());
  }
  EXPECT_GT(noisy.fault_count(FaultPoint::kTimerLate), 0u);
}

TEST(FaultPoints, DelaysAreWithinOneMillisecondAndMaxDelay) {
  SimEnvironment env(9);
  FaultOptions o = FaultOptions::all(1.0);
  o.max_delay = std::chrono::milliseconds(20);
  env.set_faults(o);
  Duration lo = Duration::max(), hi = Duration::zero();
  for (int i = 0; i < 2000; ++i) {
    Duration d = env.fault_delay(FaultPoint::kStoreCommitSlow);
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  EXPECT_EQ(lo, std::chrono::milliseconds(1));
  EXPECT_EQ(hi, std::chrono::milliseconds(20));
  for (int i = 0; i < 100; ++i) EXPECT_LT(env.fault_draw(3), 3u);
}

TEST(FaultPoints, OptionsParseFromText) {
  Result<FaultOptions> o = parse_fault_options("store_commit_fail=0.2,timer_late=1");
  ASSERT_TRUE(o.ok()) << o.error().to_string();
  EXPECT_EQ(o->of(FaultPoint::kStoreCommitFail), 0.2);
  EXPECT_EQ(o->of(FaultPoint::kTimerLate), 1.0);
  EXPECT_EQ(o->of(FaultPoint::kHttpReset), 0.0);
  o = parse_fault_options("all=0.1,http_reset=0");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->of(FaultPoint::kMailboxFull), 0.1);
  EXPECT_EQ(o->of(FaultPoint::kHttpReset), 0.0);
  EXPECT_FALSE(parse_fault_options("").value().any());
  for (const char* bad : {"timer_late", "timer_late=", "timer_late=2", "timer_late=0.5x", "nope=0.1", "=0.1"}) {
    Result<FaultOptions> r = parse_fault_options(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().kind(), ErrorKind::kInvalidArgument);
  }
}

}  // namespace
}  // namespace nines
