// Backoff: exact sequences for the deterministic kinds, bounds of the jittered kinds over
// 1,000 seeds, determinism per seed, overflow safety, and validation messages.
#include "nines/resilience/backoff.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "nines/core/environment.hpp"
#include "support/status_matchers.hpp"

namespace nines {
namespace {
using ::nines::test::IsOk;
using ::nines::test::StatusIs;
using ::testing::HasSubstr;

std::vector<Duration> sequence(const Backoff& b, int n, Environment& env) {
  std::vector<Duration> out;
  Duration prev{0};
  for (int i = 1; i <= n; ++i) {
    prev = b.next(i, prev, env);
    out.push_back(prev);
  }
  return out;
}

struct ExactCase {
  const char* name;
  Backoff backoff;
  std::vector<Duration> expected;  // for attempts 1, 2, ...
};

TEST(Backoff, ExactSequencesForConstantAndExponential) {
  using std::chrono::milliseconds;
  const std::vector<ExactCase> cases = {
      {"constant 250ms", Backoff::constant(250ms), {250ms, 250ms, 250ms, 250ms, 250ms}},
      {"constant 0 (retry at once)", Backoff::constant(0ms), {0ms, 0ms, 0ms}},
      {"exponential x2 capped at 1s",
       Backoff::exponential(100ms, 1s),
       {100ms, 200ms, 400ms, 800ms, 1000ms, 1000ms, 1000ms}},
      {"exponential x3 capped at 1s", Backoff::exponential(100ms, 1s, 3.0), {100ms, 300ms, 900ms, 1000ms, 1000ms}},
      {"exponential x1.5", Backoff::exponential(100ms, 10s, 1.5), {100ms, 150ms, 225ms, milliseconds(337) + 500us}},
      {"exponential x1 is constant", Backoff::exponential(70ms, 1s, 1.0), {70ms, 70ms, 70ms}},
      {"exponential cap == base", Backoff::exponential(5s, 5s), {5s, 5s, 5s}},
      {"constant ignores the multiplier",
       Backoff{.kind = Backoff::Kind::kConstant, .base = 40ms, .cap = 1s, .multiplier = 9},
       {40ms, 40ms, 40ms}},
  };
  for (const auto& c : cases) {
    SimEnvironment env(1);
    std::uint64_t before = SimEnvironment(1).random_u64();
    ASSERT_THAT(c.backoff.validate(), IsOk()) << c.name;
    EXPECT_EQ(sequence(c.backoff, static_cast<int>(c.expected.size()), env), c.expected) << c.name;
    // The deterministic kinds draw no randomness: the generator is where it started.
    EXPECT_EQ(env.random_u64(), before) << c.name;
  }
}

TEST(Backoff, AttemptBelowOneCountsAsOne) {
  SimEnvironment env(1);
  Backoff b = Backoff::exponential(100ms, 1s);
  EXPECT_EQ(b.next(0, 0ns, env), 100ms);
  EXPECT_EQ(b.next(-5, 0ns, env), 100ms);
  EXPECT_EQ(b.envelope(0), 100ms);
}

TEST(Backoff, HugeAttemptNumbersSaturateAtCapWithoutOverflow) {
  SimEnvironment env(3);
  for (const Backoff& b : {Backoff::exponential(1ms, 1h), Backoff::exponential(1ms, 1h, 10.0),
                           Backoff::full_jitter(1ms, 1h, 1000.0), Backoff::equal_jitter(1ns, 1h)}) {
    for (int n : {60, 64, 100, 1000, 1 << 30}) {
      EXPECT_EQ(b.envelope(n), 1h) << to_string(b.kind) << " n=" << n;
      Duration d = b.next(n, 0ns, env);
      EXPECT_GE(d, 0ns);
      EXPECT_LE(d, 1h);
    }
  }
  // Decorrelated jitter with an enormous previous delay stays within [base, cap].
  Backoff d = Backoff::decorrelated_jitter(10ms, 1s);
  for (Duration prev :
       std::initializer_list<Duration>{Duration::max(), Duration::max() / 2, Duration::max() / 3 + 1ns, 1h}) {
    Duration got = d.next(7, prev, env);
    EXPECT_GE(got, 10ms);
    EXPECT_LE(got, 1s);
  }
}

// Bounds of one jittered delay, given the attempt and the previous delay.
struct Bounds {
  Duration lo, hi;
};

struct JitterCase {
  const char* name;
  Backoff backoff;
  Bounds (*bounds)(const Backoff& b, int attempt, Duration previous);
};

TEST(Backoff, JitteredDelaysStayWithinTheirBoundsOverAThousandSeeds) {
  const std::vector<JitterCase> cases = {
      {"full jitter: [0, min(cap, base*2^(n-1))]", Backoff::full_jitter(100ms, 5s),
       [](const Backoff& b, int n, Duration) {
         return Bounds{0ns, b.envelope(n)};
       }},
      {"full jitter x3", Backoff::full_jitter(7ms, 2s, 3.0),
       [](const Backoff& b, int n, Duration) {
         return Bounds{0ns, b.envelope(n)};
       }},
      {"equal jitter: [v/2, v]", Backoff::equal_jitter(100ms, 5s),
       [](const Backoff& b, int n, Duration) {
         Duration v = b.envelope(n);
         return Bounds{v - v / 2, v};
       }},
      {"equal jitter, odd nanoseconds", Backoff::equal_jitter(3ns, 1001ns),
       [](const Backoff& b, int n, Duration) {
         Duration v = b.envelope(n);
         return Bounds{v - v / 2, v};
       }},
      {"decorrelated: [base, min(cap, 3*prev)]", Backoff::decorrelated_jitter(100ms, 5s),
       [](const Backoff& b, int, Duration prev) {
         Duration p = prev > 0ns ? prev : b.base;
         return Bounds{b.base, std::min(b.cap, p * 3)};
       }},
      {"decorrelated, tight cap", Backoff::decorrelated_jitter(10ms, 25ms),
       [](const Backoff& b, int, Duration prev) {
         Duration p = prev > 0ns ? prev : b.base;
         return Bounds{b.base, std::min(b.cap, p * 3)};
       }},
  };
  constexpr int kSeeds = 1000;
  constexpr int kAttempts = 12;
  for (const auto& c : cases) {
    ASSERT_THAT(c.backoff.validate(), IsOk()) << c.name;
    // Per attempt: the smallest and largest delay seen and their sum, to check the spread.
    std::vector<Duration> seen_min(kAttempts + 1, Duration::max()), seen_max(kAttempts + 1, Duration::min());
    for (std::uint64_t seed = 1; seed <= kSeeds; ++seed) {
      SimEnvironment env(seed);
      Duration prev{0};
      for (int n = 1; n <= kAttempts; ++n) {
        Bounds b = c.bounds(c.backoff, n, prev);
        Duration d = c.backoff.next(n, prev, env);
        ASSERT_GE(d, b.lo) << c.name << " seed " << seed << " attempt " << n;
        ASSERT_LE(d, b.hi) << c.name << " seed " << seed << " attempt " << n;
        ASSERT_LE(d, c.backoff.cap) << c.name;
        seen_min[n] = std::min(seen_min[n], d);
        seen_max[n] = std::max(seen_max[n], d);
        prev = d;
      }
    }
    // The jitter really spreads: over 1,000 seeds the first delay covers most of its range.
    Bounds first = c.bounds(c.backoff, 1, 0ns);
    Duration span = first.hi - first.lo;
    EXPECT_LE(seen_min[1] - first.lo, span / 10) << c.name;
    EXPECT_LE(first.hi - seen_max[1], span / 10) << c.name;
  }
}

TEST(Backoff, FullJitterIsUniform) {
  // Mean of U[0, v] is v/2; over 1,000 seeds the standard error is ~0.9% of v.
  Backoff b = Backoff::full_jitter(1s, 1s);
  double sum = 0;
  for (std::uint64_t seed = 1; seed <= 1000; ++seed) {
    SimEnvironment env(seed);
    sum += to_seconds(b.next(1, 0ns, env));
  }
  EXPECT_NEAR(sum / 1000, 0.5, 0.05);
}

TEST(Backoff, DecorrelatedJitterReachesTheCap) {
  // AWS's formula min(cap, random(base, 3*prev)): once 3*prev exceeds the cap, the cap itself
  // is returned with positive probability.
  Backoff b = Backoff::decorrelated_jitter(100ms, 1s);
  int at_cap = 0;
  for (std::uint64_t seed = 1; seed <= 1000; ++seed) {
    SimEnvironment env(seed);
    if (b.next(5, 900ms, env) == 1s) ++at_cap;  // random(100ms, 2.7s): ~65% above 1s
  }
  EXPECT_GT(at_cap, 500);
  EXPECT_LT(at_cap, 800);
}

TEST(Backoff, SameSeedSameDelays) {
  for (const Backoff& b :
       {Backoff::full_jitter(100ms, 5s), Backoff::equal_jitter(100ms, 5s), Backoff::decorrelated_jitter(100ms, 5s)}) {
    SimEnvironment e1(42), e2(42), e3(43);
    auto s1 = sequence(b, 10, e1);
    EXPECT_EQ(s1, sequence(b, 10, e2)) << to_string(b.kind);
    EXPECT_NE(s1, sequence(b, 10, e3)) << to_string(b.kind);
  }
}

struct InvalidCase {
  const char* name;
  Backoff backoff;
  const char* message_part;
};

TEST(Backoff, ValidateNamesTheField) {
  const std::vector<InvalidCase> cases = {
      {"zero base", Backoff::exponential(0ns, 1s), "Backoff.base must be > 0"},
      {"negative base", Backoff::full_jitter(-1ms, 1s), "Backoff.base must be > 0"},
      {"negative constant", Backoff::constant(-1ms), "Backoff.base must be >= 0"},
      {"zero decorrelated base", Backoff::decorrelated_jitter(0ns, 1s), "Backoff.base must be > 0"},
      {"cap below base", Backoff::equal_jitter(2s, 1s), "Backoff.cap must be >= base"},
      {"constant above cap", Backoff{.kind = Backoff::Kind::kConstant, .base = 2s, .cap = 1s}, "Backoff.cap"},
      {"multiplier below 1", Backoff::exponential(1ms, 1s, 0.5), "Backoff.multiplier"},
      {"multiplier NaN", Backoff::full_jitter(1ms, 1s, std::nan("")), "Backoff.multiplier"},
      {"multiplier inf", Backoff::equal_jitter(1ms, 1s, std::numeric_limits<double>::infinity()), "Backoff.multiplier"},
      {"unknown kind", Backoff{.kind = static_cast<Backoff::Kind>(42)}, "Backoff.kind"},
  };
  for (const auto& c : cases) {
    Status s = c.backoff.validate();
    ASSERT_THAT(s, StatusIs(ErrorKind::kInvalidArgument)) << c.name;
    EXPECT_THAT(s.error().message(), HasSubstr(c.message_part)) << c.name << ": " << s.error().message();
  }
  // The defaults and every factory with sane values are valid; decorrelated ignores the multiplier.
  EXPECT_THAT(Backoff{}.validate(), IsOk());
  EXPECT_TRUE((Backoff{.kind = Backoff::Kind::kDecorrelatedJitter, .multiplier = 0.1}.validate().ok()));
}

}  // namespace
}  // namespace nines
