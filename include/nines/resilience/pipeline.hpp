// nines/resilience/pipeline.hpp: the policies composed around one external call, in one
// documented order.
//
// Outermost to innermost:
//
//   retry -> circuit breaker -> bulkhead -> rate limiter -> attempt timeout -> the call
//
// - retry is outermost, so every attempt passes the breaker, bulkhead and rate limiter again
//   (a retry of a call the breaker refused waits its backoff, and the breaker sees each try);
// - the breaker comes before the bulkhead and the limiter, so an open breaker costs no slot
//   and no token;
// - the attempt timeout bounds only the call itself (a process deadline scope, so whatever
//   the call awaits inside is bounded too); when it fires the attempt fails with kTimeout
//   (retryable), while the caller's own deadline still ends everything with
//   kDeadlineExceeded;
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
#include <type_traits>

#include "nines/core/result.hpp"
#include "nines/resilience/bulkhead.hpp"
#include "nines/resilience/circuit_breaker.hpp"
#include "nines/resilience/rate_limiter.hpp"
#include "nines/resilience/retry.hpp"
#include "nines/runtime/process.hpp"

namespace nines {

namespace internal {
struct PipelineParts {
  std::optional<RetryPolicy> retry;
  std::shared_ptr<CircuitBreaker> breaker;
  std::shared_ptr<Bulkhead> bulkhead;
  std::shared_ptr<RateLimiter> limiter;
  std::uint64_t limiter_units = 1;
  Duration attempt_timeout = kInfinite;
};

// After an attempt ended with kDeadlineExceeded: was it the attempt timeout (its deadline
// passed, the caller's did not)? Then it is an ordinary, retryable timeout. A deadline error
// from a shorter deadline inside the call, or one a server reported, is kept as it is.
Error attempt_deadline_to_timeout(Error e, TimePoint caller_deadline, TimePoint attempt_deadline, TimePoint now,
                                  Duration attempt_timeout);
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
    // Each attempt takes `units` from the limiter (1 for a request limit; an estimate of the
    // tokens for a tokens-per-minute limit).
    Builder& rate_limiter(std::shared_ptr<RateLimiter> limiter, std::uint64_t units = 1) {
      parts_.limiter = std::move(limiter);
      parts_.limiter_units = units;
      return *this;
    }
    // Bounds each attempt (kInfinite: no attempt timeout, the default).
    Builder& attempt_timeout(Duration timeout) {
      parts_.attempt_timeout = timeout;
      return *this;
    }
    // kInvalidArgument for a non-positive attempt timeout or zero limiter units.
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
  // Cost: one coroutine frame (plus the call's own); no lock on the common path (a closed
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
    return run_impl<T, F>(parts_, ctx, std::move(call));
  }

 private:
  explicit Pipeline(std::shared_ptr<const internal::PipelineParts> parts) : parts_(std::move(parts)) {}

  template <class T, class F>
  static Task<Result<T>> run_impl(std::shared_ptr<const internal::PipelineParts> parts, Context& ctx, F call) {
    const internal::PipelineParts* p = parts.get();
    std::optional<internal::RetryCall> retry;
    if (p->retry) retry.emplace(internal::retry_core(*p->retry), ctx);
    const bool times_calls = p->breaker != nullptr && p->breaker->options().slow_call_rate_threshold.has_value();
    for (;;) {
      if (retry) {
        if (std::optional<Error> refused = retry->before_attempt(ctx)) co_return std::move(*refused);
      }
      // One clock reading serves the deadline check, the limiter and the attempt timeout.
      const TimePoint caller_deadline = ctx.deadline();
      const bool need_now = p->limiter != nullptr || p->attempt_timeout != kInfinite ||
                            caller_deadline != TimePoint::max() || times_calls;
      TimePoint now = need_now ? ctx.now() : TimePoint{};
      std::optional<Result<T>> out;
      if (!retry && now >= caller_deadline) {
        out.emplace(Error(ErrorKind::kDeadlineExceeded, "pipeline: the deadline had passed before the call"));
      }
      std::optional<CircuitBreaker::Permit> permit;
      if (!out && p->breaker) {
        Result<CircuitBreaker::Permit> r = p->breaker->try_acquire();
        if (r.ok()) {
          permit.emplace(std::move(*r));
        } else {
          out.emplace(std::move(r).error());  // the unreported permit counts as ignored
        }
      }
      BulkheadSlot slot;
      if (!out && p->bulkhead) {
        slot = p->bulkhead->try_enter();
        if (!slot.held()) {
          Result<BulkheadSlot> s = co_await p->bulkhead->acquire(ctx);
          if (s.ok()) {
            slot = std::move(*s);
            if (need_now) now = ctx.now();  // it may have waited
          } else {
            out.emplace(std::move(s).error());
          }
        }
      }
      if (!out && p->limiter && !p->limiter->try_take(p->limiter_units, now)) {
        Status s = co_await p->limiter->acquire(ctx, p->limiter_units);
        if (s.ok()) {
          now = ctx.now();  // it may have waited
        } else {
          out.emplace(std::move(s).error());
        }
      }
      if (!out) {
        const TimePoint attempt_deadline = add_saturating(now, p->attempt_timeout);
        {
          DeadlineScope scope = ctx.with_deadline(attempt_deadline);
          out.emplace(co_await call(ctx));
        }
        if (!out->ok() && out->error().kind() == ErrorKind::kDeadlineExceeded) {
          *out = internal::attempt_deadline_to_timeout(std::move(*out).error(), caller_deadline, attempt_deadline,
                                                       ctx.now(), p->attempt_timeout);
        }
        if (permit) {
          const Duration elapsed = times_calls ? ctx.now() - now : Duration::zero();
          if (out->ok()) {
            permit->success(elapsed);
          } else {
            permit->failure(out->error(), elapsed);
          }
        }
      }
      // Done with the slot and the permit before any wait: a breaker's half-open trial slot
      // must not be held through a backoff (an unreported permit counts as ignored).
      slot.release();
      if (permit) permit->ignore();
      if (!retry) co_return std::move(*out);
      if (out->ok()) {
        retry->on_success();
        co_return std::move(*out);
      }
      Duration delay{};
      if (std::optional<Error> final_error = retry->on_failure(ctx, std::move(*out).error(), delay)) {
        co_return std::move(*final_error);
      }
      Result<std::any> slept = co_await ctx.sleep(delay);
      if (std::optional<Error> failed = retry->after_sleep(slept)) co_return std::move(*failed);
    }
  }

  std::shared_ptr<const internal::PipelineParts> parts_;
};

}  // namespace nines
