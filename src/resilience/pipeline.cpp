#include "nines/resilience/pipeline.hpp"

#include <string>

#include "nines/core/check.hpp"

namespace nines {

Result<Pipeline> Pipeline::Builder::build() const {
  if (parts_.attempt_timeout <= Duration::zero()) {
    return Error(ErrorKind::kInvalidArgument, "Pipeline.attempt_timeout must be > 0 (use kInfinite for none)");
  }
  for (const internal::PipelineLimiter& l : parts_.limiters) {
    if (!l.limiter) return Error(ErrorKind::kInvalidArgument, "Pipeline.rate_limiter is null");
    if (l.units == 0) return Error(ErrorKind::kInvalidArgument, "Pipeline.rate_limiter units must be >= 1");
  }
  return Pipeline(std::make_shared<const internal::PipelineParts>(parts_));
}

namespace internal {

Error attempt_deadline_to_timeout(Error e, TimePoint caller_deadline, TimePoint attempt_deadline, TimePoint now,
                                  Duration attempt_timeout) {
  if (attempt_timeout == kInfinite || now >= caller_deadline || now < attempt_deadline) return e;
  return Error(ErrorKind::kTimeout,
               "attempt timed out after " + std::to_string(to_millis(attempt_timeout)) + " ms (" + e.message() + ")");
}

void AttemptGate::report(Context& ctx, bool times_calls, const Error* error) {
  if (!permit) return;
  const Duration elapsed = times_calls ? ctx.now() - now : Duration::zero();
  if (error == nullptr) {
    permit->success(elapsed);
  } else {
    permit->failure(*error, elapsed);
  }
}

void AttemptGate::leave() {
  slot.release();
  if (permit) permit->ignore();
}

Task<void> enter(Context& ctx, const PipelineParts& p, RunLimits limits, bool has_retry, bool times_calls,
                 AttemptGate& gate) {
  gate.permit.reset();
  gate.failure.reset();
  gate.ends_run = false;
  // One clock reading serves the deadline check, the limiter and the attempt timeout.
  gate.caller_deadline = ctx.deadline();
  const bool need_now =
      !p.limiters.empty() || p.attempt_timeout != kInfinite || gate.caller_deadline != TimePoint::max() || times_calls;
  gate.now = need_now ? ctx.now() : TimePoint{};
  if (!has_retry && gate.now >= gate.caller_deadline) {
    gate.failure.emplace(Error(ErrorKind::kDeadlineExceeded, "pipeline: the deadline had passed before the call"));
  }
  if (!gate.failure && p.breaker) {
    Result<CircuitBreaker::Permit> r = p.breaker->try_acquire();
    if (r.ok()) {
      gate.permit.emplace(std::move(*r));
    } else {
      gate.failure.emplace(std::move(r).error());  // the unreported permit counts as ignored
    }
  }
  if (!gate.failure && p.bulkhead) {
    gate.slot = p.bulkhead->try_enter();
    if (!gate.slot.held()) {
      Result<BulkheadSlot> s = co_await p.bulkhead->acquire(ctx);
      if (s.ok()) {
        gate.slot = std::move(*s);
        if (need_now) gate.now = ctx.now();  // it may have waited
      } else {
        gate.failure.emplace(std::move(s).error());
      }
    }
  }
  if (limits.refused) limits.refused->reset();
  const bool limits_in_attempt = p.limiter_step.within_attempt_timeout;
  gate.attempt_deadline = add_saturating(gate.now, p.attempt_timeout);
  if (!gate.failure && !p.limiters.empty()) {
    DeadlineScope limiter_scope = ctx.with_deadline(limits_in_attempt ? gate.attempt_deadline : TimePoint::max());
    for (std::size_t i = 0; i < p.limiters.size(); ++i) {
      const PipelineLimiter& l = p.limiters[i];
      const std::uint64_t units = i < limits.units.size() ? limits.units[i] : l.units;
      if (l.limiter->try_take(units, gate.now)) continue;
      Status s = co_await l.limiter->acquire(ctx, units);
      if (s.ok()) {
        gate.now = ctx.now();  // it may have waited
        continue;
      }
      if (limits.refused) *limits.refused = s.error();
      gate.failure.emplace(std::move(s).error());
      break;
    }
    if (!limits_in_attempt) gate.attempt_deadline = add_saturating(gate.now, p.attempt_timeout);
    if (gate.failure && p.limiter_step.refusal_ends_run) {
      gate.leave();
      gate.ends_run = true;
    }
  }
}

Task<bool> back_off(Context& ctx, RetryCall& retry, std::optional<Error>& failure) {
  NINES_DCHECK(failure.has_value());
  Duration delay{};
  if (std::optional<Error> final_error = retry.on_failure(ctx, std::move(*failure), delay)) {
    failure = std::move(final_error);
    co_return false;
  }
  failure.reset();
  Result<std::any> slept = co_await ctx.sleep(delay);
  if (std::optional<Error> failed = retry.after_sleep(slept)) {
    failure = std::move(failed);
    co_return false;
  }
  co_return true;
}

}  // namespace internal
}  // namespace nines
