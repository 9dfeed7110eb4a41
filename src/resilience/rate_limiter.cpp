// Token-bucket rate limiter. See rate_limiter.hpp for the contract.
//
// Arithmetic: the balance is kept in "unit-nanoseconds" (units x refill_period in ns), so a
// refill over `elapsed` adds exactly elapsed_ns x refill_units and nothing is ever rounded
// except a wait, which is rounded up to the next nanosecond (at the end of it the units are
// there). Values need up to ~2^125, hence __int128; the option ranges keep them in bounds.
//
// FIFO waiting is done by reservation: a waiter takes its units at once, letting the balance
// go negative (owed), and sleeps exactly until the refill has paid the debt up to and
// including its own units. A later request sees the deeper debt, so it waits behind every
// earlier waiter without any queue.
#include "nines/resilience/rate_limiter.hpp"

#include <algorithm>
#include <any>
#include <limits>
#include <mutex>

#include "nines/core/check.hpp"

namespace nines {

namespace {

__extension__ using Int128 = __int128;

constexpr std::uint64_t kMaxUnits = std::uint64_t{1} << 40;
constexpr std::size_t kMaxWaiters = std::size_t{1} << 20;

std::string ms_string(Duration d) {
  if (d == kInfinite) return "infinite";
  return std::to_string(to_millis(d)) + " ms";
}

}  // namespace

struct RateLimiter::State {
  std::mutex mu;
  Int128 period_ns = 0;    // refill_period in ns
  Int128 capacity = 0;     // capacity in unit-ns
  Int128 min_balance = 0;  // floor for adjust(), far beyond any real debt
  Int128 balance = 0;      // unit-ns in the bucket; negative when owed
  TimePoint last{};        // the balance is as of this time
  RateLimiterCounters counters;

  Int128 scaled(std::uint64_t units) const { return static_cast<Int128>(units) * period_ns; }

  // Brings the balance up to `now` (never backwards: `now` read under the lock is monotonic).
  void refill(TimePoint now, std::uint64_t refill_units) {
    if (now <= last) return;
    Int128 added = static_cast<Int128>((now - last).count()) * refill_units;
    balance = std::min(capacity, balance + added);
    last = now;
    NINES_DCHECK(balance <= capacity);
  }

  // A waiter leaves (slept, cut short or abandoned): it was counted when it reserved.
  void waiter_left() {
    NINES_CHECK_MSG(counters.waiting > 0, "rate limiter: a waiter left that was never counted");
    --counters.waiting;
  }

  // Gives a waiter's reservation back (never above capacity: a full bucket stays full).
  void give_back(Int128 need) {
    NINES_DCHECK(need >= 0);
    balance = std::min(capacity, balance + need);
  }

  // Time until `need` unit-ns are in the bucket (0 if they are), rounded up; saturates.
  Duration wait_for(Int128 need, std::uint64_t refill_units) const {
    if (balance >= need) return Duration::zero();
    Int128 deficit = need - balance;
    Int128 ns = (deficit + refill_units - 1) / refill_units;
    if (ns >= static_cast<Int128>(Duration::max().count())) return Duration::max();
    return Duration(static_cast<Duration::rep>(ns));
  }

  void count_rejection(RateLimitRejection reason) {
    switch (reason) {
      case RateLimitRejection::kNoTokens: ++counters.rejected_no_tokens; break;
      case RateLimitRejection::kMaxWait: ++counters.rejected_max_wait; break;
      case RateLimitRejection::kTooManyWaiters: ++counters.rejected_too_many_waiters; break;
      case RateLimitRejection::kDeadline: ++counters.rejected_deadline; break;
      case RateLimitRejection::kTooLarge: ++counters.rejected_too_large; break;
    }
  }
};

// Gives a sleeping waiter's units back if its coroutine frame is destroyed mid-wait.
class RateLimiter::WaitGuard {
 public:
  WaitGuard(RateLimiter& l, std::uint64_t units) : l_(l), units_(units) {}
  WaitGuard(const WaitGuard&) = delete;
  WaitGuard& operator=(const WaitGuard&) = delete;
  ~WaitGuard() {
    if (armed_) l_.abandon(units_);
  }
  void dismiss() { armed_ = false; }

 private:
  RateLimiter& l_;
  std::uint64_t units_;
  bool armed_ = true;
};

std::string_view to_string(RateLimitRejection reason) {
  switch (reason) {
    case RateLimitRejection::kNoTokens: return "no_tokens";
    case RateLimitRejection::kMaxWait: return "max_wait";
    case RateLimitRejection::kTooManyWaiters: return "too_many_waiters";
    case RateLimitRejection::kDeadline: return "deadline";
    case RateLimitRejection::kTooLarge: return "too_large";
  }
  return "unknown";
}

Result<std::shared_ptr<RateLimiter>> RateLimiter::create(std::string name, Environment& env,
                                                         const RateLimiterOptions& options) {
  if (name.empty()) return Error(ErrorKind::kInvalidArgument, "rate limiter: name must not be empty");
  std::string where = "rate limiter '" + name + "': ";
  auto invalid = [&](std::string what) { return Error(ErrorKind::kInvalidArgument, where + std::move(what)); };
  if (options.capacity == 0 || options.capacity > kMaxUnits) {
    return invalid("capacity must be between 1 and 2^40 (got " + std::to_string(options.capacity) + ")");
  }
  if (options.refill_units == 0 || options.refill_units > kMaxUnits) {
    return invalid("refill_units must be between 1 and 2^40 (got " + std::to_string(options.refill_units) + ")");
  }
  if (options.refill_period <= Duration::zero() || options.refill_period == kInfinite) {
    return invalid("refill_period must be positive and finite (got " + std::to_string(options.refill_period.count()) +
                   " ns)");
  }
  if (options.initial_units && *options.initial_units > options.capacity) {
    return invalid("initial_units must not exceed capacity (got " + std::to_string(*options.initial_units) + " > " +
                   std::to_string(options.capacity) + ")");
  }
  if (options.max_wait < Duration::zero()) {
    return invalid("max_wait must not be negative (got " + std::to_string(options.max_wait.count()) + " ns)");
  }
  if (options.mode == RateLimitMode::kWait && (options.max_waiters == 0 || options.max_waiters > kMaxWaiters)) {
    return invalid("max_waiters must be between 1 and 2^20 in wait mode (got " + std::to_string(options.max_waiters) +
                   "; use mode kReject to never wait)");
  }
  return std::shared_ptr<RateLimiter>(new RateLimiter(std::move(name), env, options));
}

RateLimiter::RateLimiter(std::string name, Environment& env, const RateLimiterOptions& options)
    : name_(std::move(name)), env_(&env), options_(options), state_(std::make_unique<State>()) {
  State& s = *state_;
  s.period_ns = options_.refill_period.count();
  s.capacity = s.scaled(options_.capacity);
  s.min_balance = -s.capacity * static_cast<Int128>(kMaxWaiters);
  s.balance = s.scaled(options_.initial_units.value_or(options_.capacity));
  s.last = env_->now();
}

RateLimiter::~RateLimiter() = default;

std::string RateLimiter::prefix() const { return "rate limiter '" + name_ + "': "; }

Error RateLimiter::too_large(std::uint64_t units) const {
  return Error(ErrorKind::kInvalidArgument, "rate limiter '" + name_ + "': " + std::to_string(units) +
                                                " units requested, more than the capacity " +
                                                std::to_string(options_.capacity) + " (it could never succeed)");
}

void RateLimiter::notify(const RateLimiterEvent& e) const {
  if (options_.observer) options_.observer(e);
}

RateLimiterCounters RateLimiter::counters() const {
  std::lock_guard lock(state_->mu);
  return state_->counters;
}

std::int64_t RateLimiter::available() const {
  State& s = *state_;
  std::lock_guard lock(s.mu);
  s.refill(env_->now(), options_.refill_units);
  Int128 q = s.balance / s.period_ns;
  if (s.balance % s.period_ns < 0) --q;  // floor, also when owed
  return static_cast<std::int64_t>(q);
}

TimePoint RateLimiter::available_at(std::uint64_t units) const {
  State& s = *state_;
  std::lock_guard lock(s.mu);
  TimePoint now = env_->now();
  s.refill(now, options_.refill_units);
  return add_saturating(now, s.wait_for(s.scaled(units), options_.refill_units));
}

void RateLimiter::adjust(std::int64_t delta_units) {
  State& s = *state_;
  std::lock_guard lock(s.mu);
  s.refill(env_->now(), options_.refill_units);
  s.balance = std::clamp(s.balance - static_cast<Int128>(delta_units) * s.period_ns, s.min_balance, s.capacity);
}

void RateLimiter::abandon(std::uint64_t units) {
  RateLimiterEvent e;
  {
    State& s = *state_;
    std::lock_guard lock(s.mu);
    s.refill(env_->now(), options_.refill_units);
    s.give_back(s.scaled(units));
    s.waiter_left();
    ++s.counters.abandoned;
  }
  e.type = RateLimiterEventType::kAbandoned;
  e.units = units;
  notify(e);
}

bool RateLimiter::try_take(std::uint64_t units, TimePoint now) {
  if (units > options_.capacity) return false;
  {
    State& s = *state_;
    std::lock_guard lock(s.mu);
    s.refill(now, options_.refill_units);
    const Int128 need = s.scaled(units);
    if (s.balance < need) return false;
    s.balance -= need;
    NINES_DCHECK(s.balance >= 0);
    ++s.counters.acquired;
    s.counters.acquired_units += units;
  }
  if (options_.observer) {
    RateLimiterEvent e;
    e.units = units;
    notify(e);
  }
  return true;
}

Status RateLimiter::try_acquire(std::uint64_t units) {
  RateLimiterEvent e;
  e.units = units;
  std::optional<Error> error;
  {
    State& s = *state_;
    std::lock_guard lock(s.mu);
    TimePoint now = env_->now();
    s.refill(now, options_.refill_units);
    const Int128 need = units > options_.capacity ? 0 : s.scaled(units);  // no overflow
    if (units > options_.capacity) {
      e.reason = RateLimitRejection::kTooLarge;
      error.emplace(too_large(units));
    } else if (units == 0 || s.balance >= need) {
      s.balance -= need;
      ++s.counters.acquired;
      s.counters.acquired_units += units;
    } else {
      Duration wait = s.wait_for(need, options_.refill_units);
      e.reason = RateLimitRejection::kNoTokens;
      e.retry_at = add_saturating(now, wait);
      std::string message = prefix() + std::to_string(units) + " units not available; available in " + ms_string(wait);
      error.emplace(Error(ErrorKind::kRateLimited, std::move(message)).with_retry_at(*e.retry_at));
    }
    if (error) {
      e.type = RateLimiterEventType::kRejected;
      s.count_rejection(e.reason);
    }
  }
  notify(e);
  if (error) return std::move(*error);
  return ok_status();
}

Task<Status> RateLimiter::acquire(Context& ctx, std::uint64_t units) {
  if (options_.mode == RateLimitMode::kReject) co_return try_acquire(units);
  std::shared_ptr<RateLimiter> self = shared_from_this();
  State& s = *state_;

  RateLimiterEvent e;
  e.units = units;
  std::optional<Error> error;
  bool wait = false;
  TimePoint start{};
  TimePoint ready_at{};
  {
    std::lock_guard lock(s.mu);
    start = env_->now();
    s.refill(start, options_.refill_units);
    const bool too_big = units > options_.capacity;
    const Int128 need = too_big ? 0 : s.scaled(units);  // no overflow
    const TimePoint deadline = ctx.deadline();
    const Duration needed = units == 0 ? Duration::zero() : s.wait_for(need, options_.refill_units);
    ready_at = add_saturating(start, needed);
    if (too_big) {
      e.reason = RateLimitRejection::kTooLarge;
      error.emplace(too_large(units));
    } else if (deadline <= start) {
      e.reason = RateLimitRejection::kDeadline;
      error.emplace(ErrorKind::kDeadlineExceeded, prefix() + "the deadline passed before acquiring");
    } else if (needed == Duration::zero()) {
      s.balance -= need;
      ++s.counters.acquired;
      s.counters.acquired_units += units;
    } else if (needed > options_.max_wait) {
      e.reason = RateLimitRejection::kMaxWait;
      e.retry_at = ready_at;
      error.emplace(Error(ErrorKind::kRateLimited, prefix() + std::to_string(units) + " units available in " +
                                                       ms_string(needed) + ", longer than max_wait " +
                                                       ms_string(options_.max_wait))
                        .with_retry_at(ready_at));
    } else if (ready_at > deadline) {
      e.reason = RateLimitRejection::kDeadline;
      error.emplace(ErrorKind::kDeadlineExceeded, prefix() + std::to_string(units) + " units available in " +
                                                      ms_string(needed) + ", after the process deadline (in " +
                                                      ms_string(deadline - start) + ")");
    } else if (s.counters.waiting >= options_.max_waiters) {
      e.reason = RateLimitRejection::kTooManyWaiters;
      e.retry_at = ready_at;
      error.emplace(Error(ErrorKind::kRateLimited,
                          prefix() + std::to_string(s.counters.waiting) + " processes already waiting (max_waiters); " +
                              std::to_string(units) + " units available in " + ms_string(needed))
                        .with_retry_at(ready_at));
    } else {
      // Reserve now (FIFO: later requests wait behind this debt), sleep until paid. Waiting
      // means the units were not there: the reservation leaves a debt.
      s.balance -= need;
      NINES_DCHECK(s.balance < 0);
      ++s.counters.waiting;
      NINES_DCHECK(s.counters.waiting <= options_.max_waiters);
      s.counters.peak_waiting = std::max(s.counters.peak_waiting, s.counters.waiting);
      wait = true;
    }
    if (error) {
      e.type = RateLimiterEventType::kRejected;
      s.count_rejection(e.reason);
    }
  }
  if (!wait) {
    notify(e);
    if (error) co_return std::move(*error);
    co_return ok_status();
  }

  WaitGuard guard(*this, units);
  Result<std::any> slept = std::any{};
  Duration left = ready_at - env_->now();
  if (left > Duration::zero()) slept = co_await ctx.sleep(left);
  guard.dismiss();

  const Duration waited = env_->now() - start;
  {
    std::lock_guard lock(s.mu);
    s.waiter_left();
    if (slept.ok()) {
      ++s.counters.acquired;
      s.counters.acquired_units += units;
      ++s.counters.waited;
      s.counters.total_wait += waited;
      e.waited = waited;
    } else {
      // Cut short (the deadline, on a real clock that moved on): give the reservation back.
      s.refill(env_->now(), options_.refill_units);
      s.give_back(s.scaled(units));
      e.type = RateLimiterEventType::kRejected;
      e.reason = slept.error().kind() == ErrorKind::kDeadlineExceeded ? RateLimitRejection::kDeadline
                                                                      : RateLimitRejection::kMaxWait;
      s.count_rejection(e.reason);
    }
  }
  notify(e);
  if (!slept.ok()) co_return std::move(slept).error().with_context("rate limiter '" + name_ + "'");
  co_return ok_status();
}

}  // namespace nines
