// nines/resilience/backoff.hpp: how long a retry waits before its next attempt.
//
// Backoff is a small value type (kind + base + cap + multiplier). next() computes one delay;
// the jittered kinds draw their randomness from the Environment only (random_u64), so a
// deterministic environment gives the same delays for the same seed.
//
// The formulas follow AWS's "Exponential Backoff And Jitter" (Marc Brooker, 2015). With n the
// number of the attempt that just failed (1 for the wait before the second attempt) and
//   v(n) = min(cap, base * multiplier^(n-1))        (the capped exponential envelope)
// the kinds are:
//   kConstant            base                                   (never more than cap)
//   kExponential         v(n)                                   (no randomness)
//   kFullJitter          uniform in [0, v(n)]
//   kEqualJitter         v(n)/2 + uniform in [0, v(n)/2]        (so within [v(n)/2, v(n)])
//   kDecorrelatedJitter  min(cap, uniform in [base, 3 * previous]),  previous = base at first;
//                        it ignores n and the multiplier (AWS uses the fixed factor 3)
// Random values are uniform over whole nanoseconds, both ends included.
//
// Ownership: a plain value; no references to anything. Thread-safety: next() is const and
// touches only the Environment passed in (whose members are thread-safe), so one Backoff may
// be used from any number of threads.
#pragma once

#include <cstdint>
#include <string_view>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"

namespace nines {

struct Backoff {
  enum class Kind : std::uint8_t {
    kConstant,
    kExponential,
    kFullJitter,
    kEqualJitter,
    kDecorrelatedJitter,
  };

  // Default: full jitter, the AWS recommendation against synchronized retries.
  Kind kind = Kind::kFullJitter;
  // First delay (kConstant: every delay; kDecorrelatedJitter: the lower bound of every delay).
  // Default 100 ms. Must be > 0, except for kConstant, where 0 means "retry at once".
  Duration base = std::chrono::milliseconds(100);
  // Upper bound of every delay. Default 10 s. Must be >= base.
  Duration cap = std::chrono::seconds(10);
  // Growth per attempt of the exponential kinds (kExponential, kFullJitter, kEqualJitter);
  // ignored by kConstant and kDecorrelatedJitter. Default 2. Must be finite and >= 1.
  double multiplier = 2.0;

  static Backoff constant(Duration delay);
  static Backoff exponential(Duration first, Duration max_delay, double growth = 2.0);
  static Backoff full_jitter(Duration first, Duration max_delay, double growth = 2.0);
  static Backoff equal_jitter(Duration first, Duration max_delay, double growth = 2.0);
  static Backoff decorrelated_jitter(Duration first, Duration max_delay);

  // kInvalidArgument naming the field ("Backoff.cap must be >= base ...") when the values
  // break the rules above.
  Status validate() const;

  // v(n) above: min(cap, base * multiplier^(n-1)); n < 1 counts as 1. Saturates at cap for
  // any n (no overflow).
  Duration envelope(int attempt) const;

  // The wait after failed attempt number `attempt` (1-based; < 1 counts as 1). `previous` is
  // the delay this backoff returned for the attempt before (<= 0 when there was none); only
  // kDecorrelatedJitter reads it. The jittered kinds draw from env.random_u64(); kConstant and
  // kExponential draw nothing. Precondition: validate() is ok (otherwise the result is
  // clamped to [0, cap] but otherwise meaningless).
  Duration next(int attempt, Duration previous, Environment& env) const;
};

std::string_view to_string(Backoff::Kind kind);

}  // namespace nines
