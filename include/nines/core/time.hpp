// nines/core/time.hpp: durations and monotonic time points.
//
// All time in nines is read from the Environment (environment.hpp), never from a real clock
// directly, so a deterministic environment can run it on a virtual clock.
#pragma once

#include <chrono>
#include <cstdint>

namespace nines {

using Duration = std::chrono::nanoseconds;

// A tag clock: time points of the environment's monotonic clock. It has no now(): ask the
// Environment.
struct MonotonicClock {
  using duration = Duration;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<MonotonicClock, duration>;
  static constexpr bool is_steady = true;
};

using TimePoint = MonotonicClock::time_point;

using std::chrono_literals::operator""ns;
using std::chrono_literals::operator""us;
using std::chrono_literals::operator""ms;
using std::chrono_literals::operator""s;
using std::chrono_literals::operator""min;
using std::chrono_literals::operator""h;

inline constexpr Duration kInfinite = Duration::max();

inline double to_seconds(Duration d) { return std::chrono::duration<double>(d).count(); }
inline double to_micros(Duration d) { return std::chrono::duration<double, std::micro>(d).count(); }
inline std::int64_t to_millis(Duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

// Saturating t + d (d may be kInfinite).
inline TimePoint add_saturating(TimePoint t, Duration d) {
  if (d >= TimePoint::max() - t) return TimePoint::max();
  return t + d;
}

}  // namespace nines
