// Retry budget: a token bucket with exact (millionths) arithmetic; see retry_budget.hpp.
#include "nines/resilience/retry_budget.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace nines {
namespace {

Error invalid(std::string message) { return Error(ErrorKind::kInvalidArgument, std::move(message)); }

std::string num(double v) {
  std::string s = std::to_string(v);
  // std::to_string prints 6 decimals; trim trailing zeros ("0.200000" -> "0.2").
  if (s.find('.') != std::string::npos) {
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
  }
  return s;
}

Status check_range(const char* field, double v, double lo, double hi) {
  if (!std::isfinite(v) || v < lo || v > hi) {
    return invalid(std::string("RetryBudgetOptions.") + field + " must be finite and in [" + num(lo) + ", " + num(hi) +
                   "] (got " + num(v) + ")");
  }
  return ok_status();
}

std::int64_t to_units(double tokens) {
  return static_cast<std::int64_t>(std::llround(tokens * static_cast<double>(RetryBudget::kTokenScale)));
}

double to_tokens(std::int64_t units) {
  return static_cast<double>(units) / static_cast<double>(RetryBudget::kTokenScale);
}

}  // namespace

Result<std::unique_ptr<RetryBudget>> RetryBudget::create(Environment& env, const RetryBudgetOptions& options) {
  if (auto s = check_range("ratio", options.ratio, 0, 1000); !s.ok()) return std::move(s).error();
  if (auto s = check_range("max_tokens", options.max_tokens, 1, 1e9); !s.ok()) return std::move(s).error();
  if (auto s = check_range("initial_tokens", options.initial_tokens, 0, options.max_tokens); !s.ok()) {
    return std::move(s).error();
  }
  if (auto s = check_range("min_retries_per_second", options.min_retries_per_second, 0, 1e6); !s.ok()) {
    return std::move(s).error();
  }
  return std::unique_ptr<RetryBudget>(new RetryBudget(env, options));
}

RetryBudget::RetryBudget(Environment& env, const RetryBudgetOptions& options)
    : env_(env),
      options_(options),
      deposit_(to_units(options.ratio)),
      max_(to_units(options.max_tokens)),
      floor_max_(options.min_retries_per_second > 0 ? to_units(std::max(1.0, options.min_retries_per_second)) : 0),
      floor_per_ns_(options.min_retries_per_second * static_cast<double>(kTokenScale) / 1e9),
      tokens_(std::min(to_units(options.initial_tokens), to_units(options.max_tokens))),
      floor_tokens_(floor_max_),
      floor_refilled_at_(floor_max_ > 0 ? env.now() : TimePoint{}) {}

void RetryBudget::record_call() {
  std::lock_guard lock(mu_);
  ++stats_.calls;
  tokens_ = std::min(max_, tokens_ + deposit_);
}

void RetryBudget::refill_floor_locked(TimePoint now) {
  if (floor_max_ == 0 || now <= floor_refilled_at_) return;
  if (floor_tokens_ >= floor_max_) {
    floor_refilled_at_ = now;
    return;
  }
  double elapsed_ns = static_cast<double>((now - floor_refilled_at_).count());
  double room = static_cast<double>(floor_max_ - floor_tokens_);
  double added = std::floor(elapsed_ns * floor_per_ns_);
  if (added >= room) {
    floor_tokens_ = floor_max_;
    floor_refilled_at_ = now;
  } else if (added >= 1) {
    // The fraction of a millionth left over is dropped: the floor errs on the side of fewer
    // retries. Time only advances when something was added, so slow rates still accumulate.
    floor_tokens_ += static_cast<std::int64_t>(added);
    floor_refilled_at_ = now;
  }
}

bool RetryBudget::try_retry() {
  TimePoint now = floor_max_ > 0 ? env_.now() : TimePoint{};
  std::lock_guard lock(mu_);
  if (tokens_ >= kTokenScale) {
    tokens_ -= kTokenScale;
    ++stats_.retries_allowed;
    return true;
  }
  if (floor_max_ > 0) {
    refill_floor_locked(now);
    if (floor_tokens_ >= kTokenScale) {
      floor_tokens_ -= kTokenScale;
      ++stats_.retries_allowed;
      ++stats_.retries_from_floor;
      return true;
    }
  }
  ++stats_.retries_refused;
  return false;
}

double RetryBudget::tokens() const {
  std::lock_guard lock(mu_);
  return to_tokens(tokens_);
}

RetryBudgetStats RetryBudget::stats() const {
  std::lock_guard lock(mu_);
  RetryBudgetStats s = stats_;
  s.tokens = to_tokens(tokens_);
  s.floor_tokens = to_tokens(floor_tokens_);
  return s;
}

}  // namespace nines
