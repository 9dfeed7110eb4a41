// nines/resilience/pipeline.hpp: the policies composed around one external call, in one
// documented order.
//
// Outermost to innermost:
//
//   retry -> circuit breaker -> bulkhead -> rate limiters -> attempt timeout -> the call
//
// - retry is outermost, so every attempt passes the breaker, bulkhead and rate limiter again
//   (a retry of a call the breaker refused waits its backoff, and the breaker sees each try);
// - the breaker comes before the bulkhead and the limiter, so an open breaker costs no slot
//   and no token;
// - the attempt timeout bounds only the call itself (a process deadline scope, so whatever
//   the call awaits inside is bounded too); when it fires the attempt fails with kTimeout
//   (retryable), while the caller's own deadline still ends everything with
//   kDeadlineExceeded;
// - several rate limiters may be given (a requests-per-minute and a tokens-per-minute limit):
//   an attempt asks them in the order they were added and runs only when all admit it. A
//   refusal stops there with that limiter's error: the limiters before it keep the units
//   they gave (exactly as one limiter keeps the units of an attempt that then fails; settle
//   with RateLimiter::adjust), the ones after it are not asked. By default the refusal is the
//   attempt's failure, which the retry policy judges (a kRateLimited with retry_at is retried
//   after that time), and the breaker is not told; LimiterStep changes both (below);
// - fallback goes outside: a Fallback (fallback.hpp) whose alternatives are pipelines
//   (a provider with its own breaker and limits, then another).
//
// Every part is optional; each policy also works alone. A Pipeline is an immutable handle to
// shared policies: copy it freely and run it from any number of processes at once (the
// breaker, bulkhead, limiter and retry counters are thread-safe).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "nines/core/result.hpp"
#include "nines/resilience/bulkhead.hpp"
#include "nines/resilience/circuit_breaker.hpp"
#include "nines/resilience/rate_limiter.hpp"
#include "nines/resilience/retry.hpp"
#include "nines/runtime/process.hpp"

namespace nines {

// How the rate-limiter step behaves (Pipeline::Builder::limiter_step).
struct LimiterStep {
  // The limiters wait inside the attempt timeout (it starts before them, and a wait longer
  // than what is left of it is refused at once with kDeadlineExceeded) instead of before it.
  bool within_attempt_timeout = false;
  // A refusal ends run() at once with the limiter's error, which is then not an attempt's
  // failure: no retry, and neither the retry policy nor the breaker is told. For a caller
  // that has somewhere else to go (the model router falls back to the next model).
  bool refusal_ends_run = false;
};

// Per-run settings of the limiter step (Pipeline::run's third argument). Both must outlive
// the run's task (co_await it at once).
struct RunLimits {
  // units[i]: what the i-th limiter added takes per attempt of this run (a tokens-per-minute
  // limiter takes this call's estimate); limiters past its end take their builder units.
  std::span<const std::uint64_t> units;
  // When given: set to the limiter's error if a limiter refused the run's last attempt,
  // reset otherwise (tells a local refusal from the same kind coming from the call).
  std::optional<Error>* refused = nullptr;
};

namespace internal {
struct PipelineLimiter {
  std::shared_ptr<RateLimiter> limiter;
  std::uint64_t units = 1;
};
struct PipelineParts {
  std::optional<RetryPolicy> retry;
  std::shared_ptr<CircuitBreaker> breaker;
  std::shared_ptr<Bulkhead> bulkhead;
  std::vector<PipelineLimiter> limiters;
  LimiterStep limiter_step;
  Duration attempt_timeout = kInfinite;
};

// After an attempt ended with kDeadlineExceeded: was it the attempt timeout (its deadline
// passed, the caller's did not)? Then it is an ordinary, retryable timeout. A deadline error
// from a shorter deadline inside the call, or one a server reported, is kept as it is.
Error attempt_deadline_to_timeout(Error e, TimePoint caller_deadline, TimePoint attempt_deadline, TimePoint now,
                                  Duration attempt_timeout);

// One attempt's admission by the policies: what a run holds while its call is in flight.
struct AttemptGate {
  std::optional<CircuitBreaker::Permit> permit;
  BulkheadSlot slot;
  TimePoint caller_deadline{};
  TimePoint now{};  // read before the call when anything needs the time, else the epoch
  TimePoint attempt_deadline{};
  // Why the attempt cannot run; after a failed attempt, its error until the retry decides.
  std::optional<Error> failure;
  bool ends_run = false;  // a limiter refused and LimiterStep::refusal_ends_run

  // After the call: tells the breaker (with the call's duration when `times_calls`); `error`
  // null for a success.
  void report(Context& ctx, bool times_calls, const Error* error);
  // Lets go of the slot and the permit (an unreported permit counts as ignored).
  void leave();
};

// Before an attempt: the deadline check (without a retry policy), the breaker's permit, a
// bulkhead slot and the limiters, waiting where they must; gate.failure set when the attempt
// cannot run (and, for a limiter's refusal that ends the run, the gate already left). A
// coroutine of its own that ends before the call starts, so its frame is not held while the
// call is in flight (it completes without suspending on the common path).
Task<void> enter(Context& ctx, const PipelineParts& p, RunLimits limits, bool has_retry, bool times_calls,
                 AttemptGate& gate);

// After a failed attempt (its error in `failure`): the retry policy's decision and backoff.
// True: wait done, attempt again (`failure` reset). False: the run ends with `failure`.
Task<bool> back_off(Context& ctx, RetryCall& retry, std::optional<Error>& failure);
}  // namespace internal

class Pipeline {
 public:
  // A type-erased call, when one is needed (run() takes any callable).
  template <class T>
  using Call = std::function<Task<Result<T>>(Context&)>;

  class Builder {
   public:
    Builder& retry(RetryPolicy policy) {
      parts_.retry = std::move(policy);
      return *this;
    }
    Builder& circuit_breaker(std::shared_ptr<CircuitBreaker> breaker) {
      parts_.breaker = std::move(breaker);
      return *this;
    }
    Builder& bulkhead(std::shared_ptr<Bulkhead> bulkhead) {
      parts_.bulkhead = std::move(bulkhead);
      return *this;
    }
    // Adds a limiter: each attempt takes `units` from it (1 for a request limit; an estimate
    // of the tokens for a tokens-per-minute limit; RunLimits sets them per run). Call it again
    // for another limiter: all must admit an attempt, asked in the order added.
    Builder& rate_limiter(std::shared_ptr<RateLimiter> limiter, std::uint64_t units = 1) {
      parts_.limiters.push_back({std::move(limiter), units});
      return *this;
    }
    // Where the limiters wait and what a refusal does (LimiterStep; default: before the
    // attempt timeout, and the refusal is the attempt's failure).
    Builder& limiter_step(LimiterStep step) {
      parts_.limiter_step = step;
      return *this;
    }
    // Bounds each attempt (kInfinite: no attempt timeout, the default).
    Builder& attempt_timeout(Duration timeout) {
      parts_.attempt_timeout = timeout;
      return *this;
    }
    // kInvalidArgument for a non-positive attempt timeout, a null limiter or zero limiter units.
    Result<Pipeline> build() const;

   private:
    internal::PipelineParts parts_;
  };

  // Runs `call` through the policies. `call(ctx)` must return Task<Result<T>>. Inside a nines
  // process only; co_await it at once. The call object is moved into the returned task, so a
  // temporary is fine, and the task holds a reference to the policies: it may outlive the
  // Pipeline it came from (a process still suspended in a call when the program tears down
  // its pipelines is safe).
  //
  // Cost: one coroutine frame held through the call (plus the call's own), and one per
  // attempt for the admission that ends before the call; no lock on the common path (a closed
  // breaker, a free bulkhead slot, tokens in the bucket; see each policy), where the shared
  // writes are the task's reference count, the bulkhead's two compare-and-swaps and the
  // limiter's short critical section; one clock reading before the call when a limiter, an
  // attempt timeout, a finite process deadline or a breaker's slow-call threshold needs the
  // time (the retry policy reads it too when the deadline is finite or max_total_time is
  // set), plus one after it when the breaker has a slow-call threshold. The
  // breaker is told a call's duration only then: its slow-call counter counts only for such
  // breakers.
  template <class T, class F>
  Task<Result<T>> run(Context& ctx, F call) const {
    static_assert(std::is_same_v<std::invoke_result_t<F&, Context&>, Task<Result<T>>>,
                  "Pipeline::run<T>: the call must be callable as call(ctx) and return Task<Result<T>>");
    return run_impl<T, F>(parts_, ctx, std::move(call), RunLimits{});
  }
  // run() with per-run limiter units and/or the refusal reported (RunLimits).
  template <class T, class F>
  Task<Result<T>> run(Context& ctx, F call, RunLimits limits) const {
    static_assert(std::is_same_v<std::invoke_result_t<F&, Context&>, Task<Result<T>>>,
                  "Pipeline::run<T>: the call must be callable as call(ctx) and return Task<Result<T>>");
    return run_impl<T, F>(parts_, ctx, std::move(call), limits);
  }

 private:
  explicit Pipeline(std::shared_ptr<const internal::PipelineParts> parts) : parts_(std::move(parts)) {}

  // The run's frame is memory every call in flight holds: admission (internal::enter) and the
  // backoff (internal::back_off) are coroutines of their own, not held during the call, and
  // the call's result is read in its own task's frame rather than copied into this one.
  template <class T, class F>
  static Task<Result<T>> run_impl(std::shared_ptr<const internal::PipelineParts> parts, Context& ctx, F call,
                                  RunLimits limits) {
    const internal::PipelineParts* p = parts.get();
    std::optional<internal::RetryCall> retry;
    if (p->retry) retry.emplace(internal::retry_core(*p->retry), ctx);
    const bool times_calls = p->breaker != nullptr && p->breaker->options().slow_call_rate_threshold.has_value();
    internal::AttemptGate gate;
    for (;;) {
      if (retry) {
        gate.failure = retry->before_attempt(ctx);
        if (gate.failure) co_return std::move(*gate.failure);
      }
      co_await internal::enter(ctx, *p, limits, retry.has_value(), times_calls, gate);
      if (gate.ends_run) co_return std::move(*gate.failure);
      if (!gate.failure) {
        std::optional<Task<Result<T>>> attempt;  // owns the call's frame, and so its result
        Result<T>* result = nullptr;
        {
          DeadlineScope scope = ctx.with_deadline(gate.attempt_deadline);
          Task<Result<T>>& pending = attempt.emplace(call(ctx));  // (g++ 12 copies `*attempt` in a co_await)
          Result<T>&& r = co_await pending;
          result = &r;
        }
        if (!result->ok() && result->error().kind() == ErrorKind::kDeadlineExceeded) {
          *result = internal::attempt_deadline_to_timeout(std::move(*result).error(), gate.caller_deadline,
                                                          gate.attempt_deadline, ctx.now(), p->attempt_timeout);
        }
        gate.report(ctx, times_calls, result->ok() ? nullptr : &result->error());
        // Done with the slot and the permit before any wait: a breaker's half-open trial slot
        // must not be held through a backoff.
        gate.leave();
        if (!retry) co_return std::move(*result);
        if (result->ok()) {
          retry->on_success();
          co_return std::move(*result);
        }
        gate.failure = std::move(*result).error();
      } else {
        gate.leave();
        if (!retry) co_return std::move(*gate.failure);
      }
      if (!co_await internal::back_off(ctx, *retry, gate.failure)) co_return std::move(*gate.failure);
    }
  }

  std::shared_ptr<const internal::PipelineParts> parts_;
};

}  // namespace nines
