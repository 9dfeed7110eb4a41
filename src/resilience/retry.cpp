// Retry: the decisions behind RetryPolicy::run (retry.hpp), kept out of the template.
#include "nines/resilience/retry.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "nines/core/striped_counters.hpp"

namespace nines {

namespace internal {

// Immutable options plus counters, shared by a policy's copies and its running calls.
struct RetryCore {
  explicit RetryCore(const RetryOptions& o) : options(o) {}
  const RetryOptions options;
  // Striped: every call of every process sharing the policy bumps them.
  enum Counter : std::size_t { kCalls, kAttempts, kRetries, kSuccesses, kFailures, kRejections };
  StripedCounters<kRejections + kRetryRejectionCount> counters;
};

}  // namespace internal

namespace {

using internal::RetryCore;

// "250ms", "1.5s", "12.346ms", "infinite": for messages only.
std::string format_duration(Duration d) {
  if (d == kInfinite) return "infinite";
  auto n = d.count();
  auto a = n < 0 ? -static_cast<double>(n) : static_cast<double>(n);
  double v = static_cast<double>(n);
  const char* unit = "ns";
  if (a >= 1e9) {
    v /= 1e9;
    unit = "s";
  } else if (a >= 1e6) {
    v /= 1e6;
    unit = "ms";
  } else if (a >= 1e3) {
    v /= 1e3;
    unit = "us";
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  std::string s(buf);
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s + unit;
}

std::string attempts_text(int n) { return std::to_string(n) + (n == 1 ? " attempt" : " attempts"); }

Error invalid(std::string message) { return Error(ErrorKind::kInvalidArgument, std::move(message)); }

}  // namespace

std::string_view to_string(RetryRejection r) {
  switch (r) {
    case RetryRejection::kNotRetryable: return "not_retryable";
    case RetryRejection::kAttemptsExhausted: return "attempts_exhausted";
    case RetryRejection::kTotalTimeExhausted: return "total_time_exhausted";
    case RetryRejection::kRetryAfterTooLong: return "retry_after_too_long";
    case RetryRejection::kDeadline: return "deadline";
    case RetryRejection::kBudget: return "budget";
  }
  return "unknown";
}

// ---- RetryPolicy ----

Result<RetryPolicy> RetryPolicy::create(const RetryOptions& options) {
  if (options.max_attempts < 1) {
    return invalid("RetryOptions.max_attempts must be >= 1 (got " + std::to_string(options.max_attempts) + ")");
  }
  if (options.max_total_time <= Duration::zero()) {
    return invalid("RetryOptions.max_total_time must be > 0 (got " + format_duration(options.max_total_time) +
                   "); use kInfinite for no limit");
  }
  if (options.max_retry_after < Duration::zero()) {
    return invalid("RetryOptions.max_retry_after must be >= 0 (got " + format_duration(options.max_retry_after) + ")");
  }
  if (Status s = options.backoff.validate(); !s.ok()) {
    return std::move(s).error().with_context("RetryOptions.backoff");
  }
  return RetryPolicy(std::make_shared<RetryCore>(options));
}

const RetryOptions& RetryPolicy::options() const { return core_->options; }

RetryStats RetryPolicy::stats() const {
  RetryStats s;
  const auto& c = core_->counters;
  s.calls = c.get(RetryCore::kCalls);
  s.attempts = c.get(RetryCore::kAttempts);
  s.retries = c.get(RetryCore::kRetries);
  s.successes = c.get(RetryCore::kSuccesses);
  s.failures = c.get(RetryCore::kFailures);
  for (std::size_t i = 0; i < kRetryRejectionCount; ++i) s.rejections[i] = c.get(RetryCore::kRejections + i);
  return s;
}

// ---- RetryCall: one call's state and decisions ----

namespace internal {

RetryCore* retry_core(const RetryPolicy& policy) { return policy.core_.get(); }

RetryCall::RetryCall(RetryCore* core, Context& ctx)
    : core_(core), start_(core->options.max_total_time != kInfinite ? ctx.now() : TimePoint{}) {
  core_->counters.add(RetryCore::kCalls);
  if (core_->options.budget != nullptr) core_->options.budget->record_call();
}

Error RetryCall::give_up(RetryRejection why, Error error) {
  core_->counters.add(RetryCore::kFailures);
  core_->counters.add(RetryCore::kRejections + static_cast<std::size_t>(why));
  if (core_->options.observer) {
    core_->options.observer(RetryEvent{RetryEvent::Type::kGiveUp, attempts_, Duration::zero(), error, why});
  }
  return error;
}

std::optional<Error> RetryCall::before_attempt(Context& ctx) {
  TimePoint deadline = ctx.deadline();
  if (deadline != TimePoint::max() && ctx.now() >= deadline) {
    std::string what = attempts_ == 0 ? std::string("retry: the deadline had passed before the first attempt")
                                      : "retry: the deadline passed before attempt " + std::to_string(attempts_ + 1) +
                                            "; gave up after " + attempts_text(attempts_);
    if (last_error_) what += "; last error: " + last_error_->to_string();
    return give_up(RetryRejection::kDeadline, Error(ErrorKind::kDeadlineExceeded, std::move(what)));
  }
  ++attempts_;
  core_->counters.add(RetryCore::kAttempts);
  return std::nullopt;
}

void RetryCall::on_success() { core_->counters.add(RetryCore::kSuccesses); }

std::optional<Error> RetryCall::on_failure(Context& ctx, Error error, Duration& delay) {
  const RetryOptions& o = core_->options;

  // 1. Nothing that cannot succeed again is retried; the error is returned as it is.
  ErrorKind kind = o.classifier ? o.classifier(error) : error.kind();
  if (!is_retryable(kind)) {
    // A deadline that ended the attempt is counted as such (the error is returned as it is).
    return give_up(kind == ErrorKind::kDeadlineExceeded ? RetryRejection::kDeadline : RetryRejection::kNotRetryable,
                   std::move(error));
  }

  // 2. Attempts.
  if (attempts_ >= o.max_attempts) {
    return give_up(RetryRejection::kAttemptsExhausted,
                   std::move(error).with_context("retry: gave up after " + attempts_text(attempts_)));
  }

  // 3. The wait: the backoff's delay, and never before the server's retry time.
  TimePoint now = ctx.now();
  Duration backoff = o.backoff.next(attempts_, previous_backoff_, ctx.env());
  Duration wait = backoff;
  if (const auto& retry_at = error.retry_at()) {
    Duration until = *retry_at - now;
    if (until > o.max_retry_after) {
      std::string what = "retry: the server asked to wait " + format_duration(until) +
                         ", longer than max_retry_after " + format_duration(o.max_retry_after) + "; gave up after " +
                         attempts_text(attempts_);
      return give_up(RetryRejection::kRetryAfterTooLong, std::move(error).with_context(what));
    }
    wait = std::max(wait, until);
  }
  TimePoint wake = add_saturating(now, wait);

  // 4. Never sleep into the process deadline: an attempt starting at it could do nothing.
  TimePoint deadline = ctx.deadline();
  if (deadline != TimePoint::max() && wake >= deadline) {
    std::string what = "retry: attempt " + std::to_string(attempts_ + 1) + " would start " + format_duration(wait) +
                       " from now, past the deadline (" + format_duration(std::max(Duration::zero(), deadline - now)) +
                       " left); gave up after " + attempts_text(attempts_) + "; last error: " + error.to_string();
    return give_up(RetryRejection::kDeadline, Error(ErrorKind::kDeadlineExceeded, std::move(what)));
  }

  // 5. Total time.
  if (o.max_total_time != kInfinite && wake > add_saturating(start_, o.max_total_time)) {
    std::string what = "retry: gave up after " + attempts_text(attempts_) +
                       " (the next would start after max_total_time " + format_duration(o.max_total_time) + ")";
    return give_up(RetryRejection::kTotalTimeExhausted, std::move(error).with_context(what));
  }

  // 6. Budget: asked last, so a token is spent only on a retry that happens.
  if (o.budget != nullptr && !o.budget->try_retry()) {
    std::string what =
        "retry budget exhausted after " + attempts_text(attempts_) + "; last error: " + error.to_string();
    return give_up(RetryRejection::kBudget, Error(ErrorKind::kBudgetExceeded, std::move(what)));
  }

  previous_backoff_ = backoff;
  core_->counters.add(RetryCore::kRetries);
  if (o.observer) {
    o.observer(RetryEvent{RetryEvent::Type::kRetry, attempts_, wait, error, RetryRejection::kNotRetryable});
  }
  last_error_ = std::move(error);
  delay = wait;
  return std::nullopt;
}

std::optional<Error> RetryCall::after_sleep(const Result<std::any>& slept) {
  if (slept.ok()) return std::nullopt;
  std::string what = "retry: waiting for attempt " + std::to_string(attempts_ + 1) + " failed after " +
                     attempts_text(attempts_) + " (" + slept.error().to_string() + ")";
  if (last_error_) what += "; last error: " + last_error_->to_string();
  bool deadline = slept.error().kind() == ErrorKind::kDeadlineExceeded;
  return give_up(deadline ? RetryRejection::kDeadline : RetryRejection::kNotRetryable,
                 Error(slept.error().kind(), std::move(what)));
}

}  // namespace internal
}  // namespace nines
