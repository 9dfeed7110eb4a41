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

// After an attempt ended with kDeadlineExceeded: was it the attempt timeout (not the caller's
// deadline)? Then it is an ordinary, retryable timeout.
Error attempt_deadline_to_timeout(Error e, TimePoint caller_deadline, TimePoint now, Duration attempt_timeout);
}  // namespace internal

class Pipeline {
 public:
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

  // Runs `call` through the policies. Inside a nines process only; co_await it at once.
  // The call object is copied into the returned task, so a temporary is fine.
  template <class T>
  Task<Result<T>> run(Context& ctx, Call<T> call) const {
    if (!parts_->retry) return attempt<T>(parts_, ctx, std::move(call));
    auto once = [parts = parts_, &ctx, call = std::move(call)]() { return attempt<T>(parts, ctx, call); };
    return parts_->retry->run<T>(ctx, std::move(once));
  }

 private:
  explicit Pipeline(std::shared_ptr<const internal::PipelineParts> parts) : parts_(std::move(parts)) {}

  // One attempt: breaker -> bulkhead -> limiter -> timeout -> call. A static coroutine holding
  // its own reference to the parts.
  template <class T>
  static Task<Result<T>> attempt(std::shared_ptr<const internal::PipelineParts> p, Context& ctx, Call<T> call) {
    std::optional<CircuitBreaker::Permit> permit;
    if (p->breaker) {
      Result<CircuitBreaker::Permit> r = p->breaker->try_acquire();
      if (!r.ok()) co_return std::move(r).error();
      permit.emplace(std::move(*r));
    }
    BulkheadSlot slot;
    if (p->bulkhead) {
      Result<BulkheadSlot> s = co_await p->bulkhead->acquire(ctx);
      if (!s.ok()) co_return std::move(s).error();  // the unreported permit counts as ignored
      slot = std::move(*s);
    }
    if (p->limiter) {
      Status s = co_await p->limiter->acquire(ctx, p->limiter_units);
      if (!s.ok()) co_return std::move(s).error();
    }
    // Clock reads cost tens of nanoseconds on a VM: read it only when something needs it.
    const bool timed = p->attempt_timeout != kInfinite || permit.has_value();
    const TimePoint caller_deadline = ctx.deadline();
    const TimePoint start = timed ? ctx.now() : TimePoint{};
    Result<T> result = Error(ErrorKind::kInternal, "pipeline: call did not run");
    {
      DeadlineScope scope = ctx.with_deadline(add_saturating(start, p->attempt_timeout));
      result = co_await call(ctx);
    }
    const TimePoint end = timed ? ctx.now() : TimePoint{};
    if (!result.ok() && result.error().kind() == ErrorKind::kDeadlineExceeded) {
      result = internal::attempt_deadline_to_timeout(std::move(result).error(), caller_deadline, end,
                                                     p->attempt_timeout);
    }
    if (permit) {
      if (result.ok()) {
        permit->success(end - start);
      } else {
        permit->failure(result.error(), end - start);
      }
    }
    co_return result;
  }

  std::shared_ptr<const internal::PipelineParts> parts_;
};

}  // namespace nines
