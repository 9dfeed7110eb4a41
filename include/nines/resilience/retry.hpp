// nines/resilience/retry.hpp: retrying a failed call, with backoff, inside a nines process.
//
//   RetryPolicy policy = RetryPolicy::create({.max_attempts = 4,
//                                             .backoff = Backoff::full_jitter(100ms, 5s)}).value();
//   Result<Reply> r = co_await policy.run<Reply>(ctx, [&]() -> Task<Result<Reply>> {
//     co_return co_await client.ask(ctx, question);
//   });
//
// run() calls the attempt function once per attempt and awaits the Task it returns. After a
// failed attempt it decides, in this order (retry.cpp, RetryCall::on_failure):
//  1. the classifier's kind for the error is not retryable (is_retryable in classify.hpp:
//     kPermanent, kCancelled, kDeadlineExceeded, ...): the call fails with that error,
//     unchanged. Nothing permanent is ever retried.
//  2. max_attempts attempts were made: the call fails with the last error (its kind kept,
//     "retry: gave up after N attempts" prepended).
//  3. the wait is the backoff's next delay, and for an error carrying Error::retry_at() (a
//     server's Retry-After) at least until that time, never less. A retry time further away
//     than max_retry_after fails the call at once with that error (kind and retry_at kept).
//  4. the next attempt would start at or after ctx.deadline() (the process deadline): the call
//     fails at once with kDeadlineExceeded naming the attempt count; it never sleeps into the
//     deadline. Likewise no attempt starts once the deadline has passed (not even the first).
//  5. the next attempt would start later than max_total_time after run() began: the call
//     fails with the last error (kind kept, "retry: gave up after N attempts" prepended).
//  6. the retry budget (if any) refuses: the call fails with kBudgetExceeded carrying the last
//     error's message.
//  Otherwise it counts a retry, tells the observer, and waits with co_await ctx.sleep(delay):
//  the process is suspended, no worker thread blocks.
// An exception thrown by an attempt is a bug, not a failure: it propagates out of run() at
// once (counted as a call and an attempt only).
//
// g++ 12: a lambda with non-trivial by-value captures ([text = some_string]) written inside
// the co_await expression is copied bitwise and destroyed twice, like the aggregates in the
// note in task.hpp. Name it first:
//   auto attempt = [text = std::move(text)]() -> Task<Result<Reply>> { ... };
//   auto r = co_await policy.run(ctx, std::move(attempt));
// Lambdas capturing only references or trivially copyable values are not affected.
//
// Ownership: RetryPolicy is a cheap handle (one shared_ptr) to immutable options and shared
// counters; copies share both. A Task returned by run() holds its own reference, so it may
// outlive the policy it came from. RetryOptions::budget is not owned: it must outlive every
// call that uses it. The attempt function is moved into the call's coroutine frame, so a
// lambda's by-value captures live as long as the call.
//
// Thread-safety: run() is const and may be called from any number of processes on any
// threads at once; counters are atomics; the classifier and observer are called from the
// calling process, concurrently when several processes share a policy, so they must be
// thread-safe then. A budget is thread-safe (retry_budget.hpp).
#pragma once

#include <any>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>

#include "nines/core/result.hpp"
#include "nines/core/time.hpp"
#include "nines/resilience/backoff.hpp"
#include "nines/resilience/classify.hpp"
#include "nines/resilience/retry_budget.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/task.hpp"

namespace nines {

// Why a call ended without another retry (other than success).
enum class RetryRejection : std::uint8_t {
  kNotRetryable,        // the classified kind is not retryable (permanent, cancelled, ...)
  kAttemptsExhausted,   // max_attempts attempts made
  kTotalTimeExhausted,  // the next attempt would start after max_total_time
  kRetryAfterTooLong,   // the server's retry time is further away than max_retry_after
  kDeadline,            // the next (or first) attempt would start at/after ctx.deadline(), or
                        // an attempt ended with kDeadlineExceeded
  kBudget,              // the retry budget refused
};
inline constexpr std::size_t kRetryRejectionCount = 6;
std::string_view to_string(RetryRejection r);

// What the observer sees. Valid only during the callback (it refers to the error).
struct RetryEvent {
  enum class Type : std::uint8_t {
    kRetry,   // attempt `attempt` failed; the next starts after `delay`
    kGiveUp,  // the call ends with `error` (after `attempt` attempts) because of `rejection`
  };
  Type type;
  int attempt;               // 1-based number of the attempt that failed (0: none was made)
  Duration delay;            // kRetry: the wait before the next attempt; kGiveUp: 0
  const Error& error;        // kRetry: the attempt's failure; kGiveUp: what the call returns
  RetryRejection rejection;  // kGiveUp only
};

// Counters since the policy was created, shared by its copies. Each counter is read
// atomically; a snapshot taken while calls run may mix moments.
struct RetryStats {
  std::uint64_t calls = 0;      // run() calls that started
  std::uint64_t attempts = 0;   // attempt-function calls
  std::uint64_t retries = 0;    // waits started after a failed attempt
  std::uint64_t successes = 0;  // calls that returned a value
  std::uint64_t failures = 0;   // calls that returned an error (each has one rejection)
  std::array<std::uint64_t, kRetryRejectionCount> rejections{};  // by RetryRejection
  std::uint64_t rejected(RetryRejection r) const { return rejections[static_cast<std::size_t>(r)]; }
};

struct RetryOptions {
  // Attempts in all, the first included. Default 3. Must be >= 1 (1: never retry).
  int max_attempts = 3;
  // Longest time from the start of run() to the start of the last attempt; a retry that would
  // start later is not made. It does not cut a running attempt short: bound attempts with
  // ctx.with_timeout / a timeout policy, or the whole call with ctx.with_deadline. Default
  // kInfinite (no limit). Must be > 0.
  Duration max_total_time = kInfinite;
  // Waits between attempts. Default: full jitter, 100 ms base, 10 s cap (backoff.hpp).
  Backoff backoff = {};
  // The longest server-requested wait (Error::retry_at() - now) the policy accepts; a longer
  // one fails the call at once with that rate_limited error. Default 60 s. Must be >= 0.
  Duration max_retry_after = std::chrono::seconds(60);
  // Reads each failure's kind. Default (empty): the kind the error carries.
  Classifier classifier;
  // Shared retry budget for the dependency, not owned (must outlive the calls). Default none.
  RetryBudget* budget = nullptr;
  // Called for each retry and for each give-up, from the calling process. Default none.
  std::function<void(const RetryEvent&)> observer;
};

namespace internal {

struct RetryCore;

// The non-template half of RetryPolicy::run: one call's state and every decision.
// Defined in retry.cpp.
class RetryCall {
 public:
  // Counts the call, deposits in the budget, notes the start time (when max_total_time is
  // set). `core` is not owned: it must outlive the call.
  RetryCall(RetryCore* core, Context& ctx);
  // Before each attempt: an error if it must not start (the deadline has passed); otherwise
  // counts the attempt.
  std::optional<Error> before_attempt(Context& ctx);
  void on_success();
  // After a failed attempt: the error the call ends with, or nullopt and the wait in `delay`.
  std::optional<Error> on_failure(Context& ctx, Error error, Duration& delay);
  // After the wait: an error if the sleep itself failed.
  std::optional<Error> after_sleep(const Result<std::any>& slept);

 private:
  Error give_up(RetryRejection why, Error error);

  RetryCore* core_;
  TimePoint start_;
  int attempts_ = 0;
  Duration previous_backoff_{0};     // the backoff's last delay (decorrelated jitter reads it)
  std::optional<Error> last_error_;  // the failure being retried, for later messages
};

template <class R>
struct RetryValueOf;
template <class T>
struct RetryValueOf<Task<Result<T>>> {
  using type = T;
};

}  // namespace internal

class RetryPolicy;
namespace internal {
// The policy's shared core, for composers (the Pipeline) that run RetryCall themselves.
RetryCore* retry_core(const RetryPolicy& policy);
}  // namespace internal

class RetryPolicy {
 public:
  // kInvalidArgument naming the field ("RetryOptions.max_attempts must be >= 1 (got 0)").
  static Result<RetryPolicy> create(const RetryOptions& options);

  const RetryOptions& options() const;
  RetryStats stats() const;

  // Runs attempt_fn() -> Task<Result<T>> until it succeeds or the policy gives up (see the
  // top of this file). Must be awaited inside a nines process, by the process `ctx` belongs to.
  template <class T, class F>
  Task<Result<T>> run(Context& ctx, F attempt_fn) const {
    static_assert(std::is_same_v<std::invoke_result_t<F&>, Task<Result<T>>>,
                  "RetryPolicy::run<T>: the attempt function must return Task<Result<T>>");
    return run_impl<T, F>(core_, ctx, std::move(attempt_fn));
  }

  // The same, with T deduced from the attempt function's Task<Result<T>>.
  template <class F, class T = typename internal::RetryValueOf<std::invoke_result_t<F&>>::type>
  Task<Result<T>> run(Context& ctx, F attempt_fn) const {
    return run_impl<T, F>(core_, ctx, std::move(attempt_fn));
  }

 private:
  friend internal::RetryCore* internal::retry_core(const RetryPolicy& policy);
  explicit RetryPolicy(std::shared_ptr<internal::RetryCore> core) : core_(std::move(core)) {}

  // A static coroutine: its frame holds its own reference to the core (and the function).
  template <class T, class F>
  static Task<Result<T>> run_impl(std::shared_ptr<internal::RetryCore> core, Context& ctx, F attempt_fn) {
    internal::RetryCall call(core.get(), ctx);  // `core` in this frame keeps it alive
    for (;;) {
      if (std::optional<Error> refused = call.before_attempt(ctx)) co_return std::move(*refused);
      Result<T> result = co_await attempt_fn();
      if (result.ok()) {
        call.on_success();
        co_return std::move(result);
      }
      Duration delay{};
      if (std::optional<Error> final_error = call.on_failure(ctx, std::move(result).error(), delay)) {
        co_return std::move(*final_error);
      }
      Result<std::any> slept = co_await ctx.sleep(delay);
      if (std::optional<Error> failed = call.after_sleep(slept)) co_return std::move(*failed);
    }
  }

  std::shared_ptr<internal::RetryCore> core_;
};

}  // namespace nines
