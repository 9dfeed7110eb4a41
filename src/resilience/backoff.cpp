// Backoff formulas (AWS "Exponential Backoff And Jitter"); see backoff.hpp.
#include "nines/resilience/backoff.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace nines {
namespace {

std::string format_duration(Duration d) {
  auto n = d.count();
  if (n != 0 && n % 1'000'000'000 == 0) return std::to_string(n / 1'000'000'000) + "s";
  if (n != 0 && n % 1'000'000 == 0) return std::to_string(n / 1'000'000) + "ms";
  if (n != 0 && n % 1'000 == 0) return std::to_string(n / 1'000) + "us";
  return std::to_string(n) + "ns";
}

Error invalid(std::string message) { return Error(ErrorKind::kInvalidArgument, std::move(message)); }

// Uniform over whole nanoseconds in [lo, hi], both included. Precondition: 0 <= lo <= hi.
Duration uniform(Duration lo, Duration hi, Environment& env) {
  auto span = static_cast<std::uint64_t>(hi.count() - lo.count());
  if (span == 0) return lo;
  std::uint64_t offset =
      span == std::numeric_limits<std::uint64_t>::max() ? env.random_u64() : env.random_below(span + 1);
  return lo + Duration(static_cast<Duration::rep>(offset));
}

bool exponential_kind(Backoff::Kind k) {
  return k == Backoff::Kind::kExponential || k == Backoff::Kind::kFullJitter || k == Backoff::Kind::kEqualJitter;
}

}  // namespace

std::string_view to_string(Backoff::Kind kind) {
  switch (kind) {
    case Backoff::Kind::kConstant: return "constant";
    case Backoff::Kind::kExponential: return "exponential";
    case Backoff::Kind::kFullJitter: return "full_jitter";
    case Backoff::Kind::kEqualJitter: return "equal_jitter";
    case Backoff::Kind::kDecorrelatedJitter: return "decorrelated_jitter";
  }
  return "unknown";
}

Backoff Backoff::constant(Duration delay) {
  return Backoff{.kind = Kind::kConstant, .base = delay, .cap = delay, .multiplier = 1.0};
}

Backoff Backoff::exponential(Duration first, Duration max_delay, double growth) {
  return Backoff{.kind = Kind::kExponential, .base = first, .cap = max_delay, .multiplier = growth};
}

Backoff Backoff::full_jitter(Duration first, Duration max_delay, double growth) {
  return Backoff{.kind = Kind::kFullJitter, .base = first, .cap = max_delay, .multiplier = growth};
}

Backoff Backoff::equal_jitter(Duration first, Duration max_delay, double growth) {
  return Backoff{.kind = Kind::kEqualJitter, .base = first, .cap = max_delay, .multiplier = growth};
}

Backoff Backoff::decorrelated_jitter(Duration first, Duration max_delay) {
  return Backoff{.kind = Kind::kDecorrelatedJitter, .base = first, .cap = max_delay, .multiplier = 3.0};
}

Status Backoff::validate() const {
  switch (kind) {
    case Kind::kConstant:
    case Kind::kExponential:
    case Kind::kFullJitter:
    case Kind::kEqualJitter:
    case Kind::kDecorrelatedJitter: break;
    default: return invalid("Backoff.kind is not a known kind (" + std::to_string(static_cast<int>(kind)) + ")");
  }
  if (kind == Kind::kConstant) {
    if (base < Duration::zero())
      return invalid("Backoff.base must be >= 0 for a constant backoff (got " + format_duration(base) + ")");
  } else if (base <= Duration::zero()) {
    return invalid("Backoff.base must be > 0 for a " + std::string(to_string(kind)) + " backoff (got " +
                   format_duration(base) + ")");
  }
  if (cap < base) {
    return invalid("Backoff.cap must be >= base (got cap " + format_duration(cap) + ", base " + format_duration(base) +
                   ")");
  }
  if (exponential_kind(kind) && !(std::isfinite(multiplier) && multiplier >= 1.0)) {
    return invalid("Backoff.multiplier must be finite and >= 1 (got " + std::to_string(multiplier) + ")");
  }
  return ok_status();
}

Duration Backoff::envelope(int attempt) const {
  if (base <= Duration::zero()) return Duration::zero();
  if (attempt < 1) attempt = 1;
  // In double: base * multiplier^(n-1) may overflow any integer; compare before converting.
  double v = static_cast<double>(base.count()) * std::pow(multiplier, static_cast<double>(attempt - 1));
  if (!(v < static_cast<double>(cap.count()))) return cap;  // also catches inf and NaN
  return std::max(base, Duration(static_cast<Duration::rep>(v)));
}

Duration Backoff::next(int attempt, Duration previous, Environment& env) const {
  Duration c = std::max(cap, Duration::zero());
  Duration d{};
  switch (kind) {
    case Kind::kConstant: d = base; break;
    case Kind::kExponential: d = envelope(attempt); break;
    case Kind::kFullJitter: d = uniform(Duration::zero(), envelope(attempt), env); break;
    case Kind::kEqualJitter: {
      Duration v = envelope(attempt);
      Duration half = v / 2;
      d = (v - half) + uniform(Duration::zero(), half, env);
      break;
    }
    case Kind::kDecorrelatedJitter: {
      Duration lo = std::max(base, Duration::zero());
      Duration prev = previous > Duration::zero() ? previous : lo;
      // random(base, 3 * prev), with 3 * prev saturating, then capped: exactly AWS's formula
      // (so the capped part of the range lands on cap).
      Duration hi = prev > Duration::max() / 3 ? Duration::max() : prev * 3;
      if (hi < lo) hi = lo;
      d = std::min(c, uniform(lo, hi, env));
      break;
    }
  }
  return std::clamp(d, Duration::zero(), c);
}

}  // namespace nines
