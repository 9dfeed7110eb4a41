// nines/resilience/retry_budget.hpp: a retry budget per dependency, so that retries cannot
// multiply an outage.
//
// A token bucket in the manner of gRPC's retry throttling, Finagle's RetryBudget and Envoy's
// retry budget: every call to the dependency deposits `ratio` tokens, every retry must
// withdraw one whole token, and the bucket holds at most `max_tokens`. So over any stretch
// of time
//     retries <= tokens at its start + ratio * calls in it      (never more than max_tokens saved)
// whatever the number of callers: a thousand agents hammering a failing model API retry at
// most `ratio` times as often as they call it, not `max_attempts` times. An optional floor,
// `min_retries_per_second`, lets a dependency with little traffic retry a little anyway: when
// the main bucket is empty, a retry may take a token from a second bucket that refills at that
// rate and holds one second's worth (at least one token), full at creation. With the floor,
//     retries <= initial_tokens + ratio * calls + floor_burst + min_retries_per_second * seconds.
//
// Token arithmetic is exact: tokens are kept as integers in millionths (ratio 0.1 deposits
// exactly 100000 of them), so ten calls at ratio 0.1 buy exactly one retry.
//
// RetryPolicy (retry.hpp) uses a budget through RetryOptions::budget: one record_call() per
// run(), one try_retry() before each retry (a refusal ends the call with kBudgetExceeded).
//
// Ownership: the creator owns the budget (create() returns a unique_ptr) and keeps it alive as
// long as any policy or process uses it; it keeps a reference to the Environment it was created
// with (for the floor's clock), which must outlive it. Thread-safety: every member may be called
// from any thread; one mutex guards the buckets, held only for a few arithmetic operations.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "nines/core/environment.hpp"
#include "nines/core/result.hpp"
#include "nines/core/time.hpp"

namespace nines {

struct RetryBudgetOptions {
  // Tokens each call deposits: retries may be at most this fraction of calls. Default 0.2
  // (Finagle's and Envoy's 20%). Must be finite, in [0, 1000].
  double ratio = 0.2;
  // Most tokens the bucket holds (retries that may be saved up for a burst). Default 100.
  // Must be finite, in [1, 1e9].
  double max_tokens = 100;
  // Tokens at creation, so a fresh dependency can retry before it has seen calls. Default 10.
  // Must be finite, in [0, max_tokens].
  double initial_tokens = 10;
  // Floor: retries per second allowed even when the main bucket is empty. Default 0 (none).
  // Must be finite, in [0, 1e6].
  double min_retries_per_second = 0;
};

// Counters since creation. A consistent snapshot (taken under the lock).
struct RetryBudgetStats {
  std::uint64_t calls = 0;               // record_call()
  std::uint64_t retries_allowed = 0;     // try_retry() that returned true (floor included)
  std::uint64_t retries_from_floor = 0;  // of those, paid by the floor bucket
  std::uint64_t retries_refused = 0;     // try_retry() that returned false
  double tokens = 0;                     // main bucket now
  double floor_tokens = 0;               // floor bucket at its last refill
};

class RetryBudget {
 public:
  // Millionths of a token: the unit of the budget's exact arithmetic.
  static constexpr std::int64_t kTokenScale = 1'000'000;

  // kInvalidArgument naming the field when an option is out of range.
  static Result<std::unique_ptr<RetryBudget>> create(Environment& env, const RetryBudgetOptions& options = {});

  RetryBudget(const RetryBudget&) = delete;
  RetryBudget& operator=(const RetryBudget&) = delete;

  const RetryBudgetOptions& options() const { return options_; }

  // One call to the dependency (retries of it are not calls): deposits `ratio` tokens.
  void record_call();
  // Asks for one retry: withdraws a token (main bucket first, then the floor) and returns
  // true, or returns false and counts a refusal.
  bool try_retry();

  // Tokens in the main bucket now.
  double tokens() const;
  RetryBudgetStats stats() const;

 private:
  RetryBudget(Environment& env, const RetryBudgetOptions& options);
  void refill_floor_locked(TimePoint now);

  Environment& env_;
  const RetryBudgetOptions options_;
  const std::int64_t deposit_;    // ratio, in millionths
  const std::int64_t max_;        // max_tokens, in millionths
  const std::int64_t floor_max_;  // floor bucket capacity, in millionths; 0: no floor
  const double floor_per_ns_;     // floor refill, millionths per nanosecond

  mutable std::mutex mu_;
  std::int64_t tokens_;        // main bucket, in millionths
  std::int64_t floor_tokens_;  // floor bucket, in millionths
  TimePoint floor_refilled_at_;
  RetryBudgetStats stats_;  // counters only; tokens filled in by stats()
};

}  // namespace nines
